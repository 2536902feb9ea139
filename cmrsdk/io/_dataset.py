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

import struct
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = ["is_bare_dataset", "read_dataset"]


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


def read_dataset(path: str | Path, *, stop_before_pixels: bool = False) -> Dataset:
    """The DICOM data set in ``path`` (pydicom), with or without the Part 10 preamble.

    Raises
    ------
    pydicom.errors.InvalidDicomError : not DICOM at all (no ``DICM``, not a bare data set).
    Anything pydicom raises for a truncated or corrupt file.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs (Sunnybrook) and other vendor quirks
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
