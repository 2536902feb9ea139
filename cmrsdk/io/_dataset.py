"""Reading one DICOM file, with or without the Part 10 preamble.

A DICOM file proper starts with a 128-byte preamble, ``DICM`` and the file meta information.
Some older systems, gateways and research archives write the bare data set instead (it starts at
its first element, usually group 0008): pydicom reads that only when forced, and forcing it on
every file would take any text or JPEG for a data set. So a file without ``DICM`` is read as a
bare data set only when its first tag is a little-endian group 0002 or 0008 tag, and its
transfer syntax (implicit or explicit VR little endian, as the parser found it) is written into
its file meta so that its pixel data decodes.
"""

from __future__ import annotations

import re
import struct
import zlib
from operator import attrgetter
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.charset import convert_encodings, python_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from ..errors import ReadError
from .._warn import quiet

__all__ = [
    "LOSSY_SYNTAXES",
    "MAX_INFLATED_BYTES",
    "Decoded",
    "check_decodable",
    "decode_elements",
    "is_bare_dataset",
    "is_lossy",
    "read_dataset",
    "settle_character_set",
]

#: text VRs whose bytes follow SpecificCharacterSet
_TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN"})


def _squashed(name: str) -> str:
    return "".join(c for c in name.upper() if c.isalnum())


#: SpecificCharacterSet as written by hand or by non-conforming software ("UTF-8", "ISO_IR_192",
#: "iso-ir 100") to the defined term it means; pydicom would decode such text as ASCII/Latin-1
_TERMS = {_squashed(term): term for term in python_encoding if term} | {
    "UTF8": "ISO_IR 192",
    "LATIN1": "ISO_IR 100",
    "ISO88591": "ISO_IR 100",
}


def is_bare_dataset(path: str | Path) -> bool:
    """True when ``path`` starts with a little-endian group 0002 or 0008 tag: a DICOM data set
    written without the preamble (its first element: file meta, or SpecificCharacterSet,
    ImageType, SOPClassUID, ...)."""
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x1000


#: most bytes a deflated data set (Deflated Explicit VR Little Endian) may inflate to: the
#: largest series the DICOM reader takes (2 x `cmrsdk.io.dicom.MAX_SERIES_PIXELS`: 400 M pixels
#: at 16 bits), as one enhanced multi-frame file would hold it. pydicom inflates such a file
#: whole before any header can be checked: a 2 MB file holding a 2 GiB private element of zeros
#: took 4.3 GB and 38 s (sweep 30)
MAX_INFLATED_BYTES = 800_000_000

_DEFLATED = "1.2.840.10008.1.2.1.99"

#: explicit VRs whose length takes 4 bytes (after 2 reserved), and those whose length takes 2
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())


def _meta_ends_within(head: bytes, position: int) -> bool:
    """True where the file meta (group 0002) from ``position`` parses as explicit VR little
    endian, as pydicom parses it, and ends within ``head``; anything unusual is False."""
    while position + 8 <= len(head):
        group, vr = struct.unpack_from("<H", head, position)[0], head[position + 4 : position + 6]
        if group != 0x0002:
            return True
        if vr in _SHORT_VRS:
            position += 8 + struct.unpack_from("<H", head, position + 6)[0]
        elif vr in _LONG_VRS and position + 12 <= len(head):
            position += 12 + struct.unpack_from("<I", head, position + 8)[0]
        else:
            return False
    return position == len(head)  # the file ends with its meta


def _refuse_deflate_bomb(path: str | Path, limit: int) -> None:
    """Inflate a deflated data set in pieces, keeping none, and refuse it where it inflates
    beyond ``limit`` bytes; any other file is left to pydicom, which says what is wrong."""
    with open(path, "rb") as f:
        head = f.read(1 << 13)  # a file meta is a few hundred bytes
        start = 132 if head[128:132] == b"DICM" else 0 if head[:2] == b"\x02\x00" else None
        if start is None:
            return  # no file meta (a bare data set starts with it): no transfer syntax to inflate by
        if _DEFLATED.encode() not in head and _meta_ends_within(head, start):
            return  # the whole meta is here, and names no deflated syntax: pydicom's parse not needed
        from pydicom import filereader

        f.seek(0)
        try:  # as pydicom finds where the data set starts: preamble (or none), meta, command set
            filereader.read_preamble(f, True)
            syntax = filereader._read_file_meta_info(f).get("TransferSyntaxUID")
            if syntax != _DEFLATED:
                return
            getattr(filereader, "_read_command_set_elements", lambda f: None)(f)
        except Exception:  # not DICOM, or a broken meta: pydicom's own read raises it
            return
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = 0
        while chunk := f.read(1 << 20):
            while chunk:
                try:
                    inflated += len(inflater.decompress(chunk, 1 << 22))  # at most 4 MiB at a time
                except zlib.error:
                    return  # a corrupt stream: pydicom's own read raises it
                if inflated > limit:
                    raise ReadError(
                        path,
                        f"its deflated data set (transfer syntax {_DEFLATED}) inflates to more than {limit} bytes, "
                        "over the limit for one file: refused before reading it",
                    )
                chunk = inflater.unconsumed_tail
            if inflater.eof:
                return


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """The DICOM data set in ``path`` (pydicom), with or without the Part 10 preamble.

    Raises
    ------
    ReadError : a deflated data set that inflates beyond :data:`MAX_INFLATED_BYTES`.
    pydicom.errors.InvalidDicomError : not DICOM at all (no ``DICM``, not a bare data set).
    Anything pydicom raises for a truncated or corrupt file.
    """
    _refuse_deflate_bomb(path, MAX_INFLATED_BYTES)
    with quiet():  # invalid UIDs (Sunnybrook) and other vendor quirks
        try:
            return pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels)
        except InvalidDicomError:
            if not is_bare_dataset(path):
                raise
        dataset = pydicom.dcmread(str(path), stop_before_pixels=stop_before_pixels, force=True)
    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = dataset.original_encoding[0] if dataset.original_encoding else True
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return dataset


#: VRs pydicom decodes whatever the bytes, given its defaults (`_decoding_is_pydicom_default`):
#: text, decoded with replacement where it is not in its character set, and bytes kept as bytes
_DECODED_ANYHOW = frozenset("AE AS CS DA DT LO LT PN SH ST TM UC UI UR UT OB OD OF OL OV OW".split())

#: binary numbers and their size: decoded by `struct` where the length is a whole number of values
#: (else pydicom raises BytesLengthException)
_NUMBER_SIZES = {"FD": 8, "FL": 4, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}

#: the values of an IS or DS that pydicom decodes without raising: numbers of digits, a point and
#: a short exponent, separated by backslashes (an IS of '1e999' raises OverflowError: such values
#: are decoded while the file is read)
_PLAIN = rb"[ \x00]*[+-]?[0-9]{1,16}(?:\.[0-9]{0,16})?(?:[eE][+-]?[0-9]{1,2})?[ \x00]*"
_PLAIN_NUMBERS = re.compile(_PLAIN + rb"(?:\\" + _PLAIN + rb")*")


def _decoding_is_pydicom_default() -> bool:
    """pydicom 3's element decoding as shipped (no hooks or callbacks of the host's, validation
    warning rather than raising, no numpy or datetime values): what `_decodes_anyhow` rests on."""
    try:
        from pydicom import config, hooks
    except ImportError:  # pydicom 2: decoded the old way, every element
        return False
    return (
        hooks.hooks.raw_element_vr is hooks.raw_element_vr
        and hooks.hooks.raw_element_value is hooks.raw_element_value
        and config.data_element_callback is None
        and config.settings.reading_validation_mode != config.RAISE
        and not config.datetime_conversion
        and not config.use_DS_numpy
        and not config.use_IS_numpy
    )


def _decodes_anyhow(element: RawDataElement) -> bool:
    """True where pydicom decodes ``element`` without raising whatever its bytes hold; False
    where it might raise (an unknown VR, a binary number of a wrong length, a sequence, a tag, an
    implicit or UN VR looked up in the dictionary, an IS or DS that is not a plain number)."""
    vr, value = element.VR, element.value
    if not isinstance(value, bytes) or vr is None:
        return False
    if vr in _DECODED_ANYHOW:
        return True
    size = _NUMBER_SIZES.get(vr)
    if size is not None:
        return len(value) % size == 0
    if vr in ("IS", "DS"):
        return _PLAIN_NUMBERS.fullmatch(value) is not None
    return False


_tag_of = attrgetter("tag")

#: SpecificCharacterSet (0008,0005): decoded in the default character set, whatever the data set's
_SPECIFIC_CHARACTER_SET = 0x00080005

#: elements decoded while a folder's files are read, by what their decoding depends on
#: (`_decoding_key`): the files of one series repeat most of their header, byte for byte
Decoded = dict[tuple[object, ...], DataElement]


def _decoding_key(dataset: Dataset, element: RawDataElement) -> tuple[object, ...] | None:
    """What pydicom's decoding of ``element`` depends on where that is its tag, explicit VR,
    bytes, byte order and character set alone; None where it depends on more (an implicit or UN
    VR is looked up, for private tags in the data set's private creators), or the data set's
    character set is not settled yet (SpecificCharacterSet itself)."""
    encoding = dataset.original_character_set
    if element.VR in (None, "UN") or not isinstance(element.value, bytes) or not encoding:
        return None
    if element.tag == _SPECIFIC_CHARACTER_SET:
        return None
    charset = tuple(encoding) if isinstance(encoding, list) else encoding
    return (element.tag, element.VR, element.is_little_endian, charset, element.value)


def check_decodable(dataset: Dataset, decoded: Decoded | None = None) -> None:
    """Decode now every top-level element of ``dataset`` whose decoding could fail, so that a
    corrupt element raises here, while its file is read, not at first use: the first that cannot
    be decoded raises what iterating the data set would raise at it.

    pydicom decodes an element's bytes when the element is first used. Decoding all of them, as
    iterating does, took 2.2 of the 3.2 ms a GE cine header took to read (95 elements, most of them
    text the reader never uses): the elements pydicom decodes whatever their bytes
    (`_decodes_anyhow`: text, whole binary numbers, plain numbers in IS and DS) are left to be
    decoded when used, and an element whose very bytes were decoded in another file (``decoded``,
    filled here) is not decoded again. Where pydicom's decoding is not its default (a host's
    hooks, validation that raises, pydicom 2), every element is decoded, as iterating does.
    """
    if not _decoding_is_pydicom_default():
        for _ in dataset:
            pass
        return
    for element in sorted(dataset.values(), key=_tag_of):  # in tag order, as iterating decodes them
        if not isinstance(element, RawDataElement) or _decodes_anyhow(element):
            continue
        key = None if decoded is None else _decoding_key(dataset, element)
        if key is None or decoded is None:
            dataset[element.tag]  # decoded and kept, as iterating does
        elif key not in decoded:  # else decoded without error in another file: decoded when used
            decoded[key] = dataset[element.tag]


def decode_elements(dataset: Dataset, keywords: tuple[str, ...], decoded: Decoded | None = None) -> None:
    """Decode ``keywords`` of ``dataset`` (those it holds) now, as their first use would; an
    element whose bytes were decoded in another file (``decoded``, filled here) takes that file's
    decoded element, shared (the values are not changed once read). Sequences are not shared."""
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        element = None if tag is None else dataset.get_item(tag)
        if not isinstance(element, RawDataElement):
            continue  # absent, or decoded already
        key = None if decoded is None or element.VR == "SQ" else _decoding_key(dataset, element)
        if key is None or decoded is None:
            dataset[tag]
        elif key in decoded:
            dataset[tag] = decoded[key]
        else:
            decoded[key] = dataset[tag]


def settle_character_set(dataset: Dataset) -> str | None:
    """Name the character set ``dataset``'s text is in, before its text is decoded.

    A SpecificCharacterSet that misspells a defined term ("UTF-8", "ISO_IR_192") is replaced by
    the term; where there is none and some top-level text holds 8-bit bytes, it is set to UTF-8
    (ISO_IR 192) where all such bytes are valid UTF-8, else Latin-1 (ISO_IR 100), the two sets
    undeclared text is written in. Returns what was done, for a warning, or None.
    """
    value = dataset.get("SpecificCharacterSet")
    if value not in (None, ""):
        values = [str(v) for v in value] if not isinstance(value, str) else [value]
        named = [v if v in python_encoding else _TERMS.get(_squashed(v), v) for v in values]
        if named == values:
            return None
        _name(dataset, named[0] if len(named) == 1 else named)
        return f"'SpecificCharacterSet' (0008,0005) value {chr(92).join(values)!r} read as {chr(92).join(named)!r}"
    eight_bit = []
    for element in dataset.elements():
        if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
            continue
        try:
            vr = element.VR or dictionary_VR(element.tag)
        except KeyError:  # a private tag in implicit VR: its bytes are not known to be text
            continue
        if vr in _TEXT_VRS and not element.value.isascii():
            eight_bit.append(element.value)
    if not eight_bit:
        return None
    try:
        for text in eight_bit:
            text.decode("utf-8")
        _name(dataset, "ISO_IR 192")
        name = "UTF-8 (ISO_IR 192)"
    except UnicodeDecodeError:
        _name(dataset, "ISO_IR 100")
        name = "Latin-1 (ISO_IR 100)"
    return f"no 'SpecificCharacterSet' (0008,0005), and 8-bit text: read as {name}"


def _name(dataset: Dataset, terms: str | list[str]) -> None:
    """Set SpecificCharacterSet, and the encoding pydicom decodes the text read with (it keeps the
    one the file was read with)."""
    dataset.SpecificCharacterSet = terms
    dataset.set_original_encoding(dataset.read_implicit_vr, dataset.read_little_endian, convert_encodings(terms))


#: transfer syntaxes whose pixels lost detail to their compression (JPEG baseline and extended,
#: JPEG-LS near-lossless)
LOSSY_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81"})

#: JPEG 2000 and HTJ2K syntaxes that allow either: the codestream's wavelet says which
_J2K_EITHER = frozenset({"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"})

_J2K_SOC_SIZ, _J2K_COD, _J2K_SOT = b"\xff\x4f\xff\x51", b"\xff\x52", b"\xff\x90"


def is_lossy(header: Dataset, path: str | Path | None = None) -> bool:
    """True where the image's pixels were compressed with loss: a lossy transfer syntax, its own
    LossyImageCompression '01', or JPEG 2000 coded with the irreversible 9-7 wavelet (read from
    ``path`` where ``header`` was read without its pixels)."""
    meta = getattr(header, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    if syntax in LOSSY_SYNTAXES or str(header.get("LossyImageCompression", "") or "").strip() == "01":
        return True
    return syntax in _J2K_EITHER and _irreversible_wavelet(header, path)


def _irreversible_wavelet(header: Dataset, path: str | Path | None) -> bool:
    """True where the first frame's JPEG 2000 codestream declares the 9-7 irreversible wavelet
    (COD marker, SPcod transformation 0), which no decoder can undo exactly (ISO 15444-1 A.6.1)."""
    try:
        if "PixelData" not in header:
            if path is None:
                return False
            header = pydicom.dcmread(str(path), force=True)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        frame = next(generate_frames(header.PixelData, number_of_frames=frames))
    except (OSError, ValueError, TypeError, StopIteration, InvalidDicomError):
        return False  # the pixel reader names what is wrong with the data
    position = frame.find(_J2K_SOC_SIZ)
    if position < 0:
        return False
    position += 2  # marker segments follow SOC until the first tile (SOT)
    while position + 14 <= len(frame):
        marker = frame[position : position + 2]
        if marker == _J2K_COD:
            # marker, Lcod, Scod, SGcod (4 bytes), levels, code-block width, height and style
            return frame[position + 13] == 0
        if marker == _J2K_SOT or marker[0] != 0xFF:
            return False
        position += 2 + int.from_bytes(frame[position + 2 : position + 4], "big")
    return False
