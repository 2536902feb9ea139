"""Sweep 51, the readers: unreadable files, contours outside their image, NIfTI scaling and header
faults, DICOM header faults misdiagnosed, garbage .dcm files dropped unsaid, an ACDC folder
without Info.cfg, and messages that named the wrong thing."""

from __future__ import annotations

import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.evaluation_sunnybrook import sunnybrook_cases
from cmrsdk.io import (
    expand_inputs,
    read_acdc_patient,
    read_dicom_study,
    read_nifti_stack,
    read_study,
    write_acdc_patient,
    write_dicom_series,
)
from cmrsdk.io import nifti as nifti_module
from cmrsdk.io.archive import unpacked
from cmrsdk.io.nifti import read_acdc_info
from cmrsdk.io.sunnybrook import read_contour, read_sunnybrook
from cmrsdk.synth import synthetic_study


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = synthetic_study(7, n_slices=6, shape=(48, 56), n_phases=3, apex_first=True)
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_dicom_series(folder, study)
    return folder


def _copy(series: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    target = tmp_path / "copy"
    shutil.copytree(series, target)
    return target, sorted(target.iterdir())


def _nifti(path: Path, *, zooms=(1.5, 1.5, 8.0), affine: np.ndarray | None = None, units: str = "mm") -> Path:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 1000, size=(32, 32, 6)).astype(np.int16)
    image = nib.Nifti1Image(data, np.diag([*zooms, 1.0]) if affine is None else affine)
    image.header.set_zooms(zooms)
    image.header.set_xyzt_units(units)
    nib.save(image, path)
    return path


def _patch(path: Path, offset: int, fmt: str, value: float) -> None:
    """Write ``value`` into an uncompressed .nii header at ``offset``, as nibabel would not."""
    raw = bytearray(path.read_bytes())
    raw[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(raw))


def _no_runtime_warnings(caught: list[warnings.WarningMessage]) -> None:
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)], [str(w.message) for w in caught]


# --- finding 2: files that cannot be read ---------------------------------------------------------


def test_unreadable_nifti_is_one_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nib.load's PermissionError was raised again by the fallback's open(), outside any handler."""
    path = _nifti(tmp_path / "x.nii")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(nifti_module.nib, "load", denied)
    monkeypatch.setattr(nifti_module, "open", denied, raising=False)
    with pytest.raises(ReadError, match=r"x\.nii: cannot be read \(permission denied\)"):
        read_nifti_stack(path)


def test_unreadable_info_cfg_is_one_read_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "Info.cfg"
    cfg.write_text("ED: 1\nES: 12\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(ReadError, match=r"Info\.cfg: cannot be read \(permission denied\)"):
        read_acdc_info(cfg)


def test_a_folder_where_a_contour_file_should_be(tmp_path: Path) -> None:
    folder = tmp_path / "IM-0001-0048-icontour-manual.txt"
    folder.mkdir()
    with pytest.raises(ReadError, match=r"icontour-manual\.txt: cannot be read \(is a directory\)"):
        read_contour(folder)


# --- finding 4: a Sunnybrook contour outside its image --------------------------------------------


def _contours(shared_data: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    root = shared_data / "sunnybrook"
    contours = tmp_path / "SC-HF-I-1"
    shutil.copytree(root / "contours" / "SC-HF-I-1", contours)
    return root / "SCD0000101", contours, contours / "i-contours" / "IM-0001-0048-icontour-manual.txt"


def _lvbp_voxels(study) -> int:
    return sum(int((stack.labels == 1).sum()) for stack in study.phases if stack.labels is not None)


@pytest.mark.parametrize(
    "shift, said",
    [
        (5000.0, r"contour encloses no pixel centre of image 48\.dcm \(256 x 256\): left out of the scores"),
        (120.0, r"contour point \(\d+\.\d, [\d.]+\) lies outside image 48\.dcm's 256 x 256 pixels .*clipped"),
    ],
)
def test_a_contour_outside_its_image_is_warned(shared_data: Path, tmp_path: Path, shift: float, said: str) -> None:
    """Moved wholly outside (5000 px) the image was dropped from the score; partly (120 px) it was
    clipped and scored against a truncated truth; both without a word. Now warned, naming the
    file; the series' other contours are read (one annotation error refuses nothing)."""
    series, contours, file = _contours(shared_data, tmp_path)
    whole = _lvbp_voxels(read_sunnybrook(series, contours))
    points = np.loadtxt(file, ndmin=2)
    np.savetxt(file, points + [shift, 0.0], fmt="%.2f")
    with pytest.warns(CmrWarning, match=r"IM-0001-0048-icontour-manual\.txt: " + said):
        study = read_sunnybrook(series, contours)
    assert 0 < _lvbp_voxels(study) < whole


def test_a_contour_that_encloses_no_pixel_is_left_out_and_warned(shared_data: Path, tmp_path: Path) -> None:
    series, contours, file = _contours(shared_data, tmp_path)
    file.write_text("100.6 100.6\n100.7 100.6\n100.7 100.7\n")
    with pytest.warns(CmrWarning, match=r"contour encloses no pixel centre of image 48\.dcm"):
        read_sunnybrook(series, contours)


# --- findings 7, 10, 13, 21: NIfTI headers ---------------------------------------------------------


def test_negative_scl_slope_is_refused(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "neg.nii")
    _patch(path, 112, "<f", -1.0)
    with pytest.raises(ReadError, match=r"neg\.nii: NIfTI 'scl_slope' value -1 is negative"):
        read_nifti_stack(path)


def test_infinite_scl_slope_is_warned_nan_is_not(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "inf.nii")
    _patch(path, 112, "<f", float("inf"))
    with pytest.warns(
        CmrWarning, match=r"inf\.nii: NIfTI 'scl_slope' value inf is not a finite number; the data are read"
    ):
        read_nifti_stack(path)
    nan = _nifti(tmp_path / "nan.nii")
    _patch(nan, 112, "<f", float("nan"))  # NIfTI: "no scaling", what nibabel writes
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)
        read_nifti_stack(nan)


def test_overflowing_scl_slope_is_named_without_numpy_warnings(tmp_path: Path) -> None:
    path = _nifti(tmp_path / "huge.nii")
    _patch(path, 112, "<f", 1e38)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ReadError, match=r"NaN or infinite pixel values \(after NIfTI 'scl_slope' 1e\+38"):
            read_nifti_stack(path)
    _no_runtime_warnings(caught)


def test_dim0_out_of_range_is_named(tmp_path: Path) -> None:
    """nibabel read the header byte-swapped and blamed 'vox offset'."""
    path = _nifti(tmp_path / "dim0.nii")
    _patch(path, 40, "<h", 9)
    with pytest.raises(
        ReadError, match=r"NIfTI header 'dim\[0\]' \(the number of dimensions\) is 9 .* expected 1\.\.7"
    ):
        read_nifti_stack(path)


@pytest.mark.parametrize("form", ["sform", "qform"])
def test_degenerate_affine_names_its_form(tmp_path: Path, form: str) -> None:
    path = tmp_path / f"{form}.nii"
    data = np.random.default_rng(0).integers(0, 1000, size=(32, 32, 6)).astype(np.int16)
    fresh = nib.Nifti1Image(data, None)
    fresh.header.set_zooms((1.5, 1.5, 8.0))
    broken = np.eye(4)
    broken[:3, :3] = 0.0
    if form == "sform":
        fresh.header.set_sform(broken, code=1)
        fresh.header.set_qform(np.diag([1.5, 1.5, 8.0, 1.0]), code=0)
    else:
        fresh.header.set_sform(None, code=0)
        fresh.header.set_qform(np.diag([1.5, 1.5, 8.0, 1.0]), code=1)
    nib.save(fresh, path)
    if form == "qform":
        _patch(path, 256, "<f", float("nan"))  # quatern_b: no rotation to be had
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ReadError, match=rf"NIfTI affine from the {form}: .* is degenerate .*; correct the {form}"):
            read_nifti_stack(path)
    _no_runtime_warnings(caught)


def test_metre_units_with_unit_columns_read_as_pixdim(tmp_path: Path) -> None:
    """pixdim 0.0015625 m and an identity sform (ACDC's) was refused as 'pixdim 1000 mm'."""
    path = _nifti(tmp_path / "m.nii", zooms=(0.0015625, 0.0015625, 0.01), affine=np.eye(4), units="meter")
    stack = read_nifti_stack(path)
    np.testing.assert_allclose(stack.spacing, (10.0, 1.5625, 1.5625), rtol=1e-5)


def test_one_mm_voxels_in_metres_are_warned(tmp_path: Path) -> None:
    """0.001 m reads 1.00000005 mm: the exact == 1.0 test let it pass without the warning."""
    path = _nifti(tmp_path / "one.nii", zooms=(0.001, 0.001, 0.001), affine=np.eye(4), units="meter")
    with pytest.warns(CmrWarning, match=r"NIfTI voxel sizes are 1 x 1 x 1 mm"):
        read_nifti_stack(path)


# --- findings 8, 9, 14, 18: DICOM ----------------------------------------------------------------


def _every(files: list[Path], **values) -> None:
    for f in files:
        ds = pydicom.dcmread(f)
        for key, value in values.items():
            setattr(ds, key, value)
        ds.save_as(f)


def test_parallel_orientation_is_named_not_blamed_on_time(series: Path, tmp_path: Path) -> None:
    folder, files = _copy(series, tmp_path)
    _every(files, ImageOrientationPatient=[1, 0, 0, 1, 0, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(
            ReadError,
            match=r"'ImageOrientationPatient' \(0020,0037\) value \[1\.0, 0\.0, 0\.0, 1\.0, 0\.0, 0\.0\] gives "
            r"no slice direction: its row and column directions are parallel",
        ):
            read_dicom_study(folder)
    _no_runtime_warnings(caught)


def test_rows_that_disagree_with_the_pixel_data_are_named(series: Path, tmp_path: Path) -> None:
    folder, files = _copy(series, tmp_path)
    _every(files, Rows=24)  # the pixel data holds 48 rows
    with pytest.raises(
        ReadError,
        match=r"'Rows' x 'Columns' \(0028,0010\)/\(0028,0011\) value 24 x 56 with 16 bits allocated is 2688 "
        r"bytes, but the pixel data holds 5376 .* a header error",
    ):
        read_dicom_study(folder)


def test_one_pixel_spacing_value_is_counted_not_called_text(series: Path, tmp_path: Path) -> None:
    folder, files = _copy(series, tmp_path)
    _every(files, PixelSpacing="1.367188")
    with pytest.raises(
        ReadError, match=r"'PixelSpacing' \(0028,0030\) value '1\.367188' holds 1 number\(s\), expected 2"
    ):
        read_dicom_study(folder)


def test_garbage_named_dcm_is_warned_notes_are_not(series: Path, tmp_path: Path) -> None:
    folder, files = _copy(series, tmp_path)
    rng = np.random.default_rng(1)
    end_slice = [f for f in files if f.name.endswith("_005.dcm")]  # PHASE_SLICE.dcm: one slice's 3 phases
    for f in end_slice:
        f.write_bytes(rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not DICOM, and named so")
    with pytest.warns(CmrWarning) as caught:
        assert read_dicom_study(folder).ed.shape[0] == 5
    said = [str(w.message) for w in caught]
    wanted = f"{end_slice[0]}: named like a DICOM image but not DICOM (no DICM preamble, no data set that parses): skipped; 2 more"
    assert any(m.startswith(wanted) and end_slice[1].name in m for m in said), said
    assert not any("notes.txt" in m for m in said)


# --- finding 15: an ACDC folder without Info.cfg --------------------------------------------------


def test_acdc_folder_without_info_cfg_is_refused(tmp_path: Path) -> None:
    patient = write_acdc_patient(tmp_path / "data" / "patient900", synthetic_study(9, n_slices=7, shape=(50, 50)))
    read_acdc_patient(patient)  # as written
    (patient / "Info.cfg").unlink()
    assert expand_inputs(patient) == [patient]  # not its frames, one one-phase study each
    assert expand_inputs(tmp_path / "data") == [patient]
    with pytest.raises(
        ReadError,
        match=r"patient900: an ACDC patient folder \(patient900_frame\d+, patient900_frame\d+\) "
        r"that has no Info\.cfg, which gives the ED and ES frame numbers: add Info\.cfg",
    ):
        read_study(patient)


# --- findings 19, 20 -----------------------------------------------------------------------------


def test_a_zip_inside_a_zip_says_so(tmp_path: Path) -> None:
    inner = tmp_path / "inner.zip"
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("a.txt", "x")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.write(inner, "inner.zip")
    with pytest.raises(ReadError, match=r"outer\.zip!inner\.zip: a ZIP archive inside a ZIP archive is not unpacked"):
        with unpacked(outer) as u:
            read_study(u.path)


def test_empty_link_csv_is_named(tmp_path: Path) -> None:
    (tmp_path / "contours").mkdir()
    (tmp_path / "link.csv").write_text("")
    with pytest.raises(ReadError, match=r"link\.csv: is empty: expected the header 'patient_id,original_id'"):
        sunnybrook_cases(tmp_path)
    (tmp_path / "link.csv").write_text("patient_id,original_id\n")
    with pytest.raises(ReadError, match=r"link\.csv: holds no rows under its header 'patient_id,original_id'"):
        sunnybrook_cases(tmp_path)
