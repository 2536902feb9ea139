"""Fuzz harness of cmrsdk's NIfTI and DICOM readers (cmrsdk.io).

Each input writes one small study to a scratch folder and reads it back:
- NIfTI: an image (and sometimes a label map) made by nibabel with fuzzed shape (1-D to 5-D),
  dtype, voxel sizes (zero, negative, NaN, huge), affine, scl_slope/inter and label values,
  then sometimes gzipped, truncated or overwritten at fuzzed offsets; or the fuzzer's raw bytes
  as the file. Read with ``read_nifti_stack`` under a fuzzed label convention.
- DICOM: one to four single-frame MR files made by pydicom with fuzzed transfer syntax, Rows,
  Columns, Bits Allocated/Stored, Pixel Representation, Samples per Pixel, Number of Frames,
  Pixel Spacing, Image Orientation/Position (as strings: non-numeric, NaN, wrong lengths),
  Rescale Slope/Intercept, Trigger Time, series UIDs and Pixel Data length, then sometimes
  truncated or overwritten; or raw bytes. Read with ``scan_dicom_series`` and
  ``read_dicom_study``.

A finding is any exception other than cmrsdk's own (:class:`~cmrsdk.errors.CmrError`), a crash,
or a study that breaks the data model's promises (non-float32 or non-finite pixels, spacing
not finite and positive, labels outside 0..3). Findings already reported are listed in ``KNOWN``.

Run: ``[CMRSDK_FUZZ_KNOWN=1] python fuzz/fuzz_readers.py [libFuzzer flags, e.g. -runs=100000 corpus_dir]``.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import sys
import tempfile
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's cmrsdk
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import atheris
except ImportError:  # the test suite drives TestOneInput without atheris
    atheris = None

# cmrsdk's code only is instrumented (fast to start); without atheris, plain imports
with atheris.instrument_imports(include=["cmrsdk"]) if atheris is not None else contextlib.nullcontext():
    from cmrsdk.errors import CmrError
    from cmrsdk.io import read_dicom_study, read_nifti_stack, scan_dicom_series

import nibabel as nib
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
)

from _data import Data

pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE  # write what is asked
logging.getLogger("nibabel").setLevel(logging.CRITICAL)  # its header fix-up notes, once per input

#: one scratch folder per process, in memory where the system has one
SCRATCH = Path(tempfile.mkdtemp(prefix="cmrsdk-fuzz-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))

NIFTI_DTYPES = [np.uint8, np.int16, np.uint16, np.int32, np.float32, np.float64, np.int8, np.complex64, np.int64]
STRINGS = [
    "1",
    "1.5",
    "0",
    "-1",
    "nan",
    "inf",
    "1e309",
    "abc",
    "",
    "1\\2",
    "0.7\\0.7",
    "1\\0\\0\\0\\1\\0",
    "1\\0\\0\\0\\0\\1",
    "0\\0\\0\\0\\0\\0",
    "-10\\20\\30",
    "1e-320",
    " 2 ",
    "1,5",
]
SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    RLELossless,
]


def corrupt(d: Data, raw: bytes) -> bytes:
    """Truncate, or overwrite a few bytes at fuzzed offsets, or leave alone."""
    kind = d.int(0, 3)
    if kind == 0 or not raw:
        return raw
    if kind == 1:
        return raw[: d.int(0, len(raw))]
    out = bytearray(raw)
    for _ in range(d.int(1, 8)):
        out[d.int(0, len(out) - 1)] = d.int(0, 255)
    return bytes(out)


def float_value(d: Data) -> float:
    return d.pick([1.0, 1.5, 10.0, 0.0, -1.0, np.nan, np.inf, 1e30, 1e-30]) if d.int(0, 3) == 0 else d.float()


def nifti_file(d: Data, path: Path, labels: bool) -> None:
    """Writes a fuzzed NIfTI file to path; nothing when nibabel refuses to make it."""
    try:
        raw = nifti_bytes(d, path, labels)
    except Exception:  # nibabel's own refusals while making the file are not findings
        return
    path.write_bytes(raw)


def nifti_bytes(d: Data, path: Path, labels: bool) -> bytes:
    if d.int(0, 9) == 0:
        return d.take(d.int(0, 600))
    ndim = d.pick([3, 3, 3, 4, 2, 5, 1])
    shape = tuple(d.int(1, 9) if i < 3 else d.int(1, 3) for i in range(ndim))
    dtype = np.dtype(np.uint8 if labels and d.bool() else d.pick(NIFTI_DTYPES))
    n = int(np.prod(shape))
    array = np.frombuffer(d.rest(n * dtype.itemsize), dtype=dtype).reshape(shape).copy()
    if labels and dtype.kind in "iu" and d.bool():
        array = (array.astype(np.int64) % 5).astype(dtype)
    affine = np.eye(4)
    if d.bool():
        affine[:3, :4] = np.array([float_value(d) for _ in range(12)]).reshape(3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = nib.Nifti1Image(array, affine)
        if d.bool():
            image.header.set_zooms(tuple(abs(float_value(d)) for _ in range(ndim)))
        if d.bool():
            image.header["pixdim"][1:4] = [float_value(d) for _ in range(3)]
        if d.int(0, 3) == 0:
            image.header["scl_slope"], image.header["scl_inter"] = float_value(d), float_value(d)
        if d.int(0, 3) == 0:
            image.header["sform_code"], image.header["qform_code"] = d.int(0, 4), d.int(0, 4)
        raw = image.to_bytes()
    raw = corrupt(d, raw)
    if path.name.endswith(".gz"):
        raw = gzip.compress(raw, compresslevel=1)
        if d.int(0, 3) == 0:
            raw = raw[: d.int(0, len(raw))]
    return raw


def check_nifti(d: Data) -> None:
    suffix = d.pick([".nii", ".nii.gz"])
    image_path = SCRATCH / f"image{suffix}"
    nifti_file(d, image_path, labels=False)
    label_path = None
    if d.bool():
        label_path = SCRATCH / f"labels{d.pick(['.nii', '.nii.gz'])}"
        nifti_file(d, label_path, labels=True)
    convention = d.pick(["canonical", "acdc", "mnms", "canonical", "bogus"])
    try:
        stack = read_nifti_stack(image_path, label_path, convention=convention)  # type: ignore[arg-type]
    except CmrError:
        return
    check_stack(stack)


def dicom_file(d: Data, path: Path, series: list[str], index: int) -> None:
    """Writes a fuzzed DICOM file to path; nothing when pydicom refuses to make it."""
    try:
        make_dicom(d, path, series, index)
    except Exception:  # pydicom's own refusals while making the file are not findings
        path.unlink(missing_ok=True)


def set_text(ds: FileDataset, keyword: str, text: str) -> None:
    """Sets a tag from text; what pydicom will not hold in the tag's VR (DS "abc") goes in as
    UN bytes, which the reader decodes with the dictionary's VR, as it would a vendor's file."""
    try:
        setattr(ds, keyword, text)
    except Exception:
        raw = text.encode("latin-1", "replace")
        ds.add(DataElement(tag_for_keyword(keyword), "UN", raw + b" " * (len(raw) % 2)))


def make_dicom(d: Data, path: Path, series: list[str], index: int) -> None:
    if d.int(0, 15) == 0:
        path.write_bytes(d.take(d.int(0, 600)))
        return
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = f"1.2.3.{index}"
    meta.TransferSyntaxUID = d.pick(SYNTAXES) if d.int(0, 3) == 0 else ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = d.pick(series)
    ds.Modality = "MR"
    if d.bool():
        ds.SeriesDescription = d.pick(["sax", "SA cine", "4ch", "", "short axis"])
    rows, cols = d.pick([d.int(1, 8), 0, d.int(1, 8), 65535]), d.pick([d.int(1, 8), 0, d.int(1, 8)])
    ds.Rows, ds.Columns = rows, cols
    bits = d.pick([16, 16, 8, 32, 12, 1, 0])
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, d.pick([bits, bits, 12, 0]), max(bits - 1, 0)
    ds.PixelRepresentation = d.pick([0, 1, 0, 2])
    ds.SamplesPerPixel = d.pick([1, 1, 1, 3, 0])
    ds.PhotometricInterpretation = d.pick(["MONOCHROME2", "MONOCHROME1", "RGB", "PALETTE COLOR"])
    if d.int(0, 7) == 0:
        set_text(ds, "NumberOfFrames", d.pick(["1", "2", "0", "x"]))
    for keyword, default in (
        ("PixelSpacing", "1.5\\1.5"),
        ("ImageOrientationPatient", "1\\0\\0\\0\\1\\0"),
        ("ImagePositionPatient", f"0\\0\\{10 * (index % 3)}"),
    ):
        if d.int(0, 5):
            setattr(ds, keyword, default)
        elif d.bool():
            set_text(ds, keyword, d.pick(STRINGS))
    if d.int(0, 3) == 0:
        set_text(ds, "RescaleSlope", d.pick(STRINGS))
        set_text(ds, "RescaleIntercept", d.pick(STRINGS))
    if d.int(0, 3):
        set_text(ds, "TriggerTime", d.pick([str(40 * (index // 3)), "0", "nan", "abc", "", "1\\2"]))
    if d.bool():
        set_text(ds, "InstanceNumber", d.pick([str(index), "1", "x", "", "1\\2"]))
    for keyword in ("SliceThickness", "SpacingBetweenSlices", "MagneticFieldStrength", "PatientSize", "PatientWeight"):
        if d.int(0, 7) == 0:
            set_text(ds, keyword, d.pick(STRINGS))
    frame = max(rows, 0) * max(cols, 0) * max(bits, 8) // 8 * max(ds.SamplesPerPixel, 1)
    size = frame if d.int(0, 3) else d.int(0, frame + 16)
    if rows < 100:  # not the 65535-row header, whose frame would be large
        ds.PixelData = d.rest(size)
    ds.save_as(str(path), enforce_file_format=True)
    if d.int(0, 3) == 0:
        path.write_bytes(corrupt(d, path.read_bytes()))


def check_dicom(d: Data) -> None:
    folder = SCRATCH / "dicom"
    folder.mkdir()
    series = ["1.2.826.0.1.1", "1.2.826.0.1.2", "not a uid"]
    for index in range(d.int(1, 4) if d.int(0, 3) == 0 else d.int(3, 7)):
        dicom_file(d, folder / f"{index:03d}.dcm", series, index)
    try:
        scan_dicom_series(folder)
    except CmrError:
        pass
    try:
        study = read_dicom_study(folder, series_uid=d.pick([None, None, None, series[0], "1.9"]))
    except CmrError:
        return
    for stack in study.phases:
        check_stack(stack)


def check_stack(stack: object) -> None:
    pixels = stack.pixels  # type: ignore[attr-defined]
    assert pixels.dtype == np.float32 and pixels.ndim == 3, (pixels.dtype, pixels.shape)
    assert np.isfinite(pixels).all(), "non-finite pixels in a study that was read"
    spacing = np.asarray(stack.spacing)  # type: ignore[attr-defined]
    assert spacing.shape == (3,) and np.isfinite(spacing).all() and (spacing > 0).all(), spacing
    labels = stack.labels  # type: ignore[attr-defined]
    if labels is not None:
        assert labels.dtype == np.uint8 and labels.shape == pixels.shape and labels.max(initial=0) <= 3


#: Findings already reported (fuzz/RESULTS.md), in cmrsdk.io files that another branch is
#: rewriting; tests/test_fuzz.py holds a reproducer of each. With CMRSDK_FUZZ_KNOWN=1 the harness
#: counts them instead of stopping, so that a long run can look for new ones.
KNOWN = {
    "R1": "nifti._load: a 4-D image with one volume is sliced outside the try (nibabel's ValueError, HeaderDataError)",
    "R2": "dicom: pydicom decodes elements lazily; a corrupt element (unknown VR, odd byte length) raises "
    "at first access, outside _read_header's try",
    "R3": "dicom: a multi-valued TriggerTime, InstanceNumber or RescaleSlope/Intercept is passed to "
    "float()/int() (TypeError)",
}
KNOWN_SEEN: Counter[str] = Counter()
INPUTS = [0]  # inputs run by this process


def known(exc: BaseException) -> str | None:
    """Which known finding an exception is, by the innermost cmrsdk.io frame and its cause."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f"cmrsdk{os.sep}io{os.sep}" in f.filename]
    if not ours:
        return None
    last = ours[-1]
    if last.filename.endswith("nifti.py") and last.name == "_load":
        return "R1"
    if last.filename.endswith("dicom.py"):
        if any("pydicom" in f.filename and f.name in ("convert_raw_data_element", "raw_element_value") for f in frames):
            return "R2"
        if isinstance(exc, TypeError) and "MultiValue" in str(exc):
            return "R3"
    return None


def report_known() -> None:
    if KNOWN_SEEN:
        print(
            f"known findings counted (CMRSDK_FUZZ_KNOWN=1) in {INPUTS[0]} inputs: {dict(sorted(KNOWN_SEEN.items()))}",
            file=sys.stderr,
            flush=True,
        )


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    INPUTS[0] += 1
    if INPUTS[0] % 1000 == 0:
        report_known()  # libFuzzer ends the process with exit(), which skips Python's atexit
    d = Data(data)
    for entry in SCRATCH.iterdir():
        shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            (check_nifti if d.bool() else check_dicom)(d)
    except Exception as exc:
        kind = known(exc)
        if kind is None or os.environ.get("CMRSDK_FUZZ_KNOWN") != "1":
            raise
        KNOWN_SEEN[kind] += 1


def main() -> None:
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install 'cmrsdk[fuzz]'")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
