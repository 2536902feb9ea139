"""The fuzz harnesses (fuzz/) in the test suite: seeded inputs, a short atheris run, and the
reproducers of what the long runs found (fuzz/RESULTS.md).

The harnesses' own oracles decide: an exception other than cmrsdk's, or a broken invariant
(see the docstrings of fuzz/fuzz_kernels.py and fuzz/fuzz_readers.py), fails the test.
"""

from __future__ import annotations

import gzip
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from cmrsdk.errors import ReadError

ROOT = Path(__file__).resolve().parents[1]


def harness(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """fuzz/NAME.py imported without atheris (its TestOneInput needs none)."""
    monkeypatch.setitem(sys.modules, "atheris", None)  # type: ignore[arg-type]
    monkeypatch.syspath_prepend(str(ROOT / "fuzz"))
    return importlib.import_module(name)


def seeded_inputs(seed: int, count: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(0, 3000)), dtype=np.uint8).tobytes() for _ in range(count)]


def test_kernel_harness_on_seeded_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    kernels = harness("fuzz_kernels", monkeypatch)
    for data in seeded_inputs(1, 200):
        kernels.TestOneInput(data)


def test_reader_harness_on_seeded_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    readers = harness("fuzz_readers", monkeypatch)
    monkeypatch.setenv("CMRSDK_FUZZ_KNOWN", "1")  # the known findings below are xfail tests
    for data in seeded_inputs(2, 30):
        readers.TestOneInput(data)


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris not installed (pip install -e '.[fuzz]')"
)
@pytest.mark.parametrize("name,runs", [("kernels", 1000), ("readers", 40)])
def test_short_atheris_run(name: str, runs: int, tmp_path: Path) -> None:
    env = dict(os.environ, CMRSDK_FUZZ_KNOWN="1", OMP_NUM_THREADS="1")
    child = subprocess.run(
        [
            sys.executable,
            str(ROOT / "fuzz" / f"fuzz_{name}.py"),
            f"-runs={runs}",
            "-seed=1",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = child.stderr[-3000:]
    assert child.returncode == 0, log
    assert f"Done {runs} runs" in child.stderr, log


# --- reproducers of the findings in cmrsdk.io (fuzz/RESULTS.md R1-R3) ------------------------------
# cmrsdk/io/dicom.py and nifti.py are being rewritten on issue 13's branch; these tests say what a
# fix must do, and turn into XPASS once it does (then drop the mark).

known_io_finding = pytest.mark.xfail(strict=False, reason="finding of fuzz/fuzz_readers.py, see fuzz/RESULTS.md")


def test_r1_truncated_4d_nifti_with_one_volume_is_a_read_error(tmp_path: Path) -> None:
    nib = pytest.importorskip("nibabel")
    raw = nib.Nifti1Image(np.ones((4, 4, 3, 1), np.int16), np.eye(4)).to_bytes()
    path = tmp_path / "image.nii.gz"
    path.write_bytes(gzip.compress(raw[:-40]))
    from cmrsdk.io import read_nifti_stack

    with pytest.raises(ReadError, match="image.nii.gz"):
        read_nifti_stack(path)


def _dicom_folder(tmp_path: Path, **tags: str) -> Path:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset

    folder = tmp_path / "dicom"
    folder.mkdir()
    for index in range(3):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = f"1.2.3.{index}"
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = FileDataset(str(folder), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.Modality = "1.2.826.0.1.1", "MR"
        ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 4, 4, 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel, ds.PhotometricInterpretation = 0, 1, "MONOCHROME2"
        ds.PixelSpacing, ds.ImageOrientationPatient = "1.5\\1.5", "1\\0\\0\\0\\1\\0"
        ds.ImagePositionPatient = f"0\\0\\{10 * index}"
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.PixelData = bytes(32)
        ds.save_as(str(folder / f"{index}.dcm"), enforce_file_format=True)
    return folder


def test_r2_an_undecodable_element_is_a_read_error(tmp_path: Path) -> None:
    folder = _dicom_folder(tmp_path)
    path = folder / "1.dcm"
    raw = path.read_bytes()
    rows = b"\x28\x00\x10\x00US"  # (0028,0010) Rows, explicit VR "US"
    assert raw.count(rows) == 1
    path.write_bytes(raw.replace(rows, b"\x28\x00\x10\x00U@"))  # a VR that does not exist
    from cmrsdk.io import read_dicom_study

    with pytest.raises(ReadError, match="1.dcm"):
        read_dicom_study(folder)


@pytest.mark.parametrize("keyword", ["TriggerTime", "InstanceNumber", "RescaleSlope"])
def test_r3_a_multi_valued_number_is_refused_or_tolerated_by_name(keyword: str, tmp_path: Path) -> None:
    """Never a TypeError: a ReadError naming the tag, or a read with a warning naming it."""
    import warnings

    folder = _dicom_folder(tmp_path, **{keyword: "1\\2"})
    from cmrsdk.io import read_dicom_study

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            read_dicom_study(folder)
        except ReadError as exc:
            assert keyword in str(exc)
            return
    if keyword != "InstanceNumber":  # InstanceNumber only breaks ties in the sort: unusable, it is ignored
        assert any(keyword in str(w.message) for w in caught), [str(w.message) for w in caught]
