"""The DICOM reader's header pass (`cmrsdk.io.dicom._read_header`, `cmrsdk.io._dataset.check_decodable`).

Reading a 3,000-file disc's headers decoded every element of every header, and `inspect` read
them twice (19.8 s on this machine). Now what could fail to decode is decoded when a file is read,
the rest when used; what the files of a folder repeat byte for byte is decoded once; `inspect`
reads the headers once. These tests pin the results on the real Sunnybrook cines, the error a
corrupt element gives (what decoding every element gives, compared on seeded random damage), and
the structure that makes it fast, so that a return to decoding everything fails here without a
timed test (`benchmarks/dicom_headers.py` times it).
"""

from __future__ import annotations

import io
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import RawDataElement
from pydicom.uid import generate_uid

from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import dicom, dispatch, inspect, read_dicom_study, scan_dicom_series
from cmrsdk.io._dataset import _PLAIN_NUMBERS, Decoded, check_decodable, settle_character_set

#: the two Sunnybrook cines: (folder, files, SeriesInstanceUID, slices, first and last slice
#: position along the normal (mm), slice step (mm), first trigger times (ms, mean over slices))
CINES = {
    "SCD0000101": (
        240, "2.16.124.113543.6006.99.08975550791105350405", 12, -148.90388675443046, -38.90416663817739,
        10.000004287392997, (19.13922467, 57.41767342, 95.69612375),
    ),
    "SCD0000201": (
        260, "2.16.124.113543.6006.99.3477960238558994630", 13, -141.82516142567314, -21.82607355027709,
        9.999976248745881, (17.47451768, 52.42355378, 87.37258909),
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def disc(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three series of one study: SCD0000201 twice (SeriesNumber 1 and 3) and SCD0000101 (2), as a disc holds them."""
    root = tmp_path_factory.mktemp("disc")
    study = generate_uid()
    for number, case in ((1, "SCD0000201"), (2, "SCD0000101"), (3, "SCD0000201")):
        series = generate_uid()
        (root / f"s{number}").mkdir()
        for file in sorted((shared_data / "sunnybrook" / case).glob("*.dcm")):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Sunnybrook's invalid UIDs
                dataset = pydicom.dcmread(file)
                dataset.SeriesInstanceUID, dataset.SOPInstanceUID = series, generate_uid()
                dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
                dataset.StudyInstanceUID, dataset.PatientID, dataset.SeriesNumber = study, "DISC", number
                dataset.save_as(root / f"s{number}" / file.name)
    return root


@pytest.mark.parametrize("case", sorted(CINES))
def test_the_sunnybrook_cines_read_as_before(shared_data: Path, case: str) -> None:
    """The values the reader gave before the header pass changed (commit 0f1a47b), exactly."""
    files, uid, slices, first, last, step, times = CINES[case]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = read_dicom_study(shared_data / "sunnybrook" / case)
    assert not caught, [str(w.message) for w in caught]  # pydicom's own (invalid UIDs) silenced, as before
    ed = study.phases[0]
    assert study.info.series_uid == uid and len(study.phases) == 20 and study.ed_index == 0
    assert ed.shape == (slices, 256, 256) and slices * 20 == files
    assert ed.spacing == (step, 1.367188, 1.367188)
    positions, trigger_times = ed.slice_positions, study.trigger_times_ms
    assert positions is not None and positions[0] == first and positions[-1] == last
    assert trigger_times is not None
    np.testing.assert_allclose(trigger_times[:3], times, rtol=1e-8)
    assert len(ed.source_files) == slices and ed.phase == "ED"


def test_a_disc_of_three_series_reads_as_before(disc: Path) -> None:
    """The later of two copies of the cine with the most slices is read (SeriesNumber 3), the others
    named in the warning."""
    with pytest.warns(CmrWarning, match=r"3 short-axis cine series; reading .* SeriesNumber 3, 260 images\), not "):
        study = read_dicom_study(disc)
    files, _, slices, first, last, step, _ = CINES["SCD0000201"]
    ed = study.phases[0]
    assert [Path(f).parent.name for f in ed.source_files] == ["s3"] * slices
    assert ed.shape == (slices, 256, 256) and len(study.phases) == 20 and ed.spacing == (step, 1.367188, 1.367188)
    positions = ed.slice_positions
    assert positions is not None and positions[0] == first and positions[-1] == last
    summaries = scan_dicom_series(disc)
    assert [s.series_number for s in summaries] == [3, 1, 2]
    assert [(s.n_images, s.n_positions, s.n_phases) for s in summaries] == [(260, 13, 20), (260, 13, 20), (240, 12, 20)]


def test_pixels_are_decoded_for_the_series_read_alone(disc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[Path] = []
    original = dicom._decode

    def counted(path: Path) -> np.ndarray:
        decoded.append(path)
        return original(path)

    monkeypatch.setattr(dicom, "_decode", counted)
    with pytest.warns(CmrWarning):
        read_dicom_study(disc)
    assert len(decoded) == 260 and {p.parent.name for p in decoded} == {"s3"}


def test_unused_header_elements_are_left_undecoded(disc: Path) -> None:
    """The header pass decodes what could fail and what the reader uses; the rest stays as read
    (RawDataElement). Decoding every element, as before, took two thirds of the time."""
    images, _ = dicom._collect(disc)
    for image in (images[0], images[-1]):
        header = image.header
        raw = [keyword_for_tag(e.tag) for e in header.elements() if isinstance(e, RawDataElement)]
        assert len(raw) > len(header) / 2, raw  # 95 elements, 50 to 60 left as read
        assert {"StudyDescription", "ManufacturerModelName", "SoftwareVersions"} <= set(raw)
        assert not isinstance(header.get_item("ImagePositionPatient"), RawDataElement)


def test_elements_repeated_across_files_are_decoded_once(disc: Path) -> None:
    """Two files of a series with the same bytes in an element share its decoded element."""
    images, _ = dicom._collect(disc)
    a, b = images[0].header, images[1].header  # s1/1.dcm and s1/10.dcm
    for keyword in ("SeriesInstanceUID", "ImageOrientationPatient", "PixelSpacing", "Rows"):
        assert a[keyword] is b[keyword], keyword
    assert a["SOPInstanceUID"] is not b["SOPInstanceUID"]


def test_inspect_reads_each_header_once(disc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`inspect` reads the study and lists its series from one reading of the headers (it read them twice)."""
    read: list[Path] = []
    original = dicom._read_header

    def counted(path: Path, decoded: object = None) -> object:
        read.append(path)
        return original(path, decoded)  # type: ignore[arg-type]

    monkeypatch.setattr(dicom, "_read_header", counted)
    with pytest.warns(CmrWarning, match="3 short-axis cine series"):
        report = inspect(disc)
    assert len(read) == len(set(read)) == 760
    assert [s["images"] for s in report["series"]] == [260, 260, 240]
    assert report["slices"] == 13 and report["phases"] == 20 and report["warnings"]
    read.clear()  # outside `inspect`, each reader call reads the folder, as before
    with pytest.warns(CmrWarning):
        read_dicom_study(disc)
    scan_dicom_series(disc)
    assert len(read) == 2 * 760


def _outcome(decode: Callable[[pydicom.Dataset], None], data: bytes) -> str:
    """What reading ``data`` and decoding its header with ``decode`` raises ("" where nothing),
    and whether iterating it afterwards raises: nothing may be left to fail at first use."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            settle_character_set(header)
        except Exception as exc:
            return f"read: {type(exc).__name__}"
        try:
            decode(header)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        try:
            for _ in header:
                pass
        except Exception as exc:  # what check_decodable let through
            return f"later: {type(exc).__name__}: {exc}"
    return ""


def _decode_every_element(header: pydicom.Dataset) -> None:
    for _ in header:
        pass


#: replacement values of elements, as corrupt or odd files hold them
_ODD_VALUES = [
    b"1e999", b"-1e999", b"inf", b"nan", b"1.5", b"n/a", b"99999999999999999999", b"1e308\\1e999", b"\\\\", b"\x00",
    b"\xff\xfe", b"1 2", b"+-1", b".5", b"1e-999", b"0x10", b"\x1b$B", b"\xc3\x28",
]  # fmt: skip


def test_a_corrupt_element_raises_what_decoding_every_element_raises(shared_data: Path) -> None:
    """Seeded random damage to a real header: its value bytes (random bytes, odd text), its VR
    (another VR, or none that exists) or its length. `check_decodable` (sharing what the intact
    file decoded) raises exactly what decoding every element raises, or nothing, and then nothing
    is left to fail at first use."""
    source = shared_data / "sunnybrook" / "SCD0000101" / "1.dcm"
    raw = source.read_bytes()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elements = [
            e for e in pydicom.dcmread(source, stop_before_pixels=True).elements() if isinstance(e, RawDataElement)
        ]
    shared: Decoded = {}  # what the intact file decoded: its damaged copies' other elements are not decoded again
    assert _outcome(lambda header: check_decodable(header, shared), raw) == "" and shared
    rng = np.random.default_rng(47)
    vrs = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
           b"SQ", b"SS", b"ST", b"TM", b"UI", b"UL", b"US", b"UT", b"OB", b"UN", b"U@", b"zz"]  # fmt: skip
    raised = 0
    for trial in range(600):
        element = elements[int(rng.integers(len(elements)))]
        if element.tag.group == 0x7FE0 or element.VR in ("SQ", "OB", "OW", "UN", "UT"):
            continue  # long VRs: a 4-byte length; their value keeps its place below
        at = element.value_tell
        data = bytearray(raw)
        kind = trial % 3
        if kind == 0 and element.length:  # its bytes, the same length
            if rng.random() < 0.5:
                odd = _ODD_VALUES[int(rng.integers(len(_ODD_VALUES)))]
                value = (odd * element.length)[: element.length]
            else:
                value = rng.integers(0, 256, element.length, dtype=np.uint8).tobytes()
            data[at : at + element.length] = value
        elif kind == 1:  # its VR (two-byte length kept: a long VR reads a misplaced length, or fails to read)
            data[at - 4 : at - 2] = vrs[int(rng.integers(len(vrs)))]
        else:  # its length, one or two bytes short, the rest of the header read as it then parses
            data[at - 2 : at] = max(element.length - int(rng.integers(1, 3)), 0).to_bytes(2, "little")
        want = _outcome(_decode_every_element, bytes(data))
        got = _outcome(lambda header: check_decodable(header, shared), bytes(data))
        assert got == want, (trial, element.tag, element.VR, kind)
        raised += bool(want) and not want.startswith("read:")
    assert raised > 20  # the damage is found, not only read past


@pytest.mark.parametrize(
    "vr", ["AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"]
)
@pytest.mark.parametrize("charset", ["", "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87", "GB18030", "NOT A CHARSET"])
def test_text_decodes_whatever_its_bytes(vr: str, charset: str) -> None:
    """What `check_decodable` leaves undecoded, pydicom decodes without raising: text of any
    bytes in any character set (seeded random bytes, escapes, backslashes)."""
    rng = np.random.default_rng([47, len(charset), ord(vr[0]), ord(vr[1])])
    for _ in range(40):
        value = rng.integers(0, 256, int(rng.integers(1, 40)), dtype=np.uint8).tobytes()
        value = value.replace(b"\x7f", b"\\") + b"\x1b$B" * int(rng.integers(0, 2))
        dataset = pydicom.Dataset()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unknown character set, invalid values: said, not raised
            dataset.set_original_encoding(False, True, pydicom.charset.convert_encodings(charset or "ISO_IR 6"))
            dataset[0x00091010] = RawDataElement(pydicom.tag.Tag(0x00091010), vr, len(value), value, 0, False, True)
            dataset[0x00091010]  # raises, if anything


@pytest.mark.parametrize("vr", ["IS", "DS"])
def test_plain_numbers_decode_whatever_their_size(vr: str) -> None:
    """An IS or DS that `check_decodable` leaves undecoded (`_PLAIN_NUMBERS`: up to 16 digits
    either side of the point, a two-digit exponent, several values) decodes without raising;
    one beyond it ('1e999', OverflowError in an IS) is decoded when read."""
    rng = np.random.default_rng([47, ord(vr[0])])

    def digits(most: int) -> str:
        return "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(1, most + 1))))

    for _ in range(300):
        values = []
        for _ in range(int(rng.integers(1, 4))):
            number = f"{rng.choice(['', '+', '-'])}{digits(16)}"
            number += f".{digits(16)}" if rng.random() < 0.5 else ""
            number += f"{rng.choice(['e', 'E'])}{rng.choice(['', '+', '-'])}{digits(2)}" if rng.random() < 0.5 else ""
            values.append(number)
        value = "\\".join(values).encode()
        value += b" " * (len(value) % 2)
        element = RawDataElement(pydicom.tag.Tag(0x00091010), vr, len(value), value, 0, False, True)
        assert _PLAIN_NUMBERS.fullmatch(value), value
        dataset = pydicom.Dataset()
        dataset[0x00091010] = element
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset[0x00091010]  # raises, if anything
    assert not _PLAIN_NUMBERS.fullmatch(b"1e999") and not _PLAIN_NUMBERS.fullmatch(b"1\\")


def test_a_host_s_strict_pydicom_gets_every_element_decoded(shared_data: Path) -> None:
    """Where a host made pydicom raise on invalid values, every element is decoded when read, as before."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(shared_data / "sunnybrook" / "SCD0000101" / "1.dcm", stop_before_pixels=True)
    config = pydicom.config.settings
    mode = config.reading_validation_mode
    config.reading_validation_mode = pydicom.config.RAISE
    try:
        with pytest.raises(ValueError, match="Invalid value for VR UI"):  # Sunnybrook's UIDs
            check_decodable(header)
    finally:
        config.reading_validation_mode = mode


def test_a_corrupt_element_in_a_disc_is_a_read_error(disc: Path, tmp_path: Path) -> None:
    """A file of another series with an IS of '1e999' (OverflowError when decoded) is refused
    naming it, as when every element was decoded."""
    folder = tmp_path / "disc"
    shutil.copytree(disc, folder)
    file = folder / "s2" / "7.dcm"  # SCD0000101: not the series read
    data = file.read_bytes()
    at = data.index(b"\x18\x00\x91\x00IS")  # (0018,0091) EchoTrainLength, never used by the reader
    length = int.from_bytes(data[at + 6 : at + 8], "little")
    file.write_bytes(data[: at + 6] + b"\x06\x001e999 " + data[at + 8 + length :])
    with pytest.raises(ReadError, match=r"s2/7\.dcm: DICOM header cannot be read \(OverflowError: "):
        read_dicom_study(folder)
    with pytest.raises(ReadError, match=r"s2/7\.dcm: DICOM header cannot be read \(OverflowError: "):
        dispatch.inspect(folder)


def test_rows_of_two_values_is_refused_naming_the_file(shared_data: Path, tmp_path: Path) -> None:
    """Sweep 42: a Rows (0028,0010) holding two US values (VM 1) ended `inspect` and `segment` in a
    TypeError traceback (0.14.6 too): one ReadError naming the file and the values."""
    folder = tmp_path / "rows"
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(sorted((shared_data / "sunnybrook" / "SCD0000101").glob("*.dcm"))[0])
        header.add_new(0x00280010, "US", [256, 256])
        header.save_as(folder / "1.dcm")
    with pytest.raises(ReadError, match=r"1\.dcm: 'Rows' x 'Columns' .* value \[256, 256\] x 256 is not one number"):
        read_dicom_study(folder)
