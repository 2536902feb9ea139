"""The public API's contracts as an integrator relies on them (sweep 48): a Stack built in Python
written as NIfTI keeps its voxel size, the SR writer refuses measures it would drop or could not
be real, the volume metrics keep a Stack's geometry bounds, an array in (Y, X, Z) order is
refused, and a ventricle not found is NaN in the API's measures as it is null in report.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrsdk import DEMO_BUNDLE, Pipeline, Stack, Study
from cmrsdk.errors import CmrWarning, InputError
from cmrsdk.io import write_dicom_series, write_json, write_measurement_report, write_nifti_labels
from cmrsdk.metrics import CardiacMeasures, cardiac_measures, quality_flags, volumes_ml
from cmrsdk.synth import synthetic_study

SPACING = (10.0, 1.5625, 1.5625)


def _heart(n: int = 6) -> np.ndarray:
    """uint8 (n, 64, 64): an LV blood pool disc of radius 12 px ringed by myocardium, an RV beside it."""
    yy, xx = np.mgrid[:64, :64]
    r = np.hypot(yy - 32, xx - 28)
    one = np.zeros((64, 64), np.uint8)
    one[r < 16] = 2
    one[r < 12] = 1
    one[(np.hypot(yy - 32, xx - 50) < 9) & (one == 0)] = 3
    return np.repeat(one[None], n, axis=0)


# ---- 1. write_nifti_labels: the voxel size of a Stack built in Python ------------------------------
def test_a_python_stack_written_as_nifti_keeps_its_voxel_size(tmp_path: Path):
    """Before: the default affine (the identity) rewrote pixdim, the file said 1 x 1 x 1 mm and
    every reader measured the LV 24 times too small (12.1 mL for 295.5)."""
    labels = _heart()
    stack = Stack(np.ones(labels.shape, np.float32), SPACING)
    np.testing.assert_array_equal(np.diag(stack.affine), [*SPACING, 1.0])
    path = write_nifti_labels(tmp_path / "labels.nii.gz", labels, stack)
    image = nib.load(path)  # as a viewer or another tool measures it
    assert image.header.get_zooms() == pytest.approx(SPACING[::-1])
    voxel_ml = abs(np.linalg.det(image.affine[:3, :3])) / 1000.0
    got = float((np.asarray(image.dataobj) == 1).sum()) * voxel_ml
    assert got == pytest.approx(volumes_ml(labels, SPACING)["LVBP"]) == 6 * (labels[0] == 1).sum() * 0.0244140625


def test_an_affine_that_disagrees_with_the_spacing_is_written_at_the_spacing_with_a_warning(tmp_path: Path):
    labels = _heart()
    stack = Stack(np.ones(labels.shape, np.float32), SPACING, affine=np.eye(4))
    with pytest.warns(CmrWarning, match=r"affine has voxels of 1 x 1 x 1 mm and its spacing 10 x 1\.5625 x 1\.5625"):
        path = write_nifti_labels(tmp_path / "labels.nii.gz", labels, stack)
    image = nib.load(path)
    assert image.header.get_zooms() == pytest.approx(SPACING[::-1])
    np.testing.assert_allclose(np.linalg.norm(image.affine[:3, :3], axis=0), SPACING[::-1])


# ---- 2. write_measurement_report: measures dropped or impossible -----------------------------------
@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("sr48") / "series"
    return write_dicom_series(folder, synthetic_study(seed=5, n_slices=4, shape=(32, 32), n_phases=2))[:4]


@pytest.mark.parametrize(
    "measures, message",
    [
        ({"lvedv_ml": 187.2, "lvef": 55.0}, r"measure\(s\) \['lvef'\] are not coded in the SR"),
        ({"lvedv_ml": 187.2, "lv_mass_g": "122.9"}, r"measure 'lv_mass_g' must be a number or None, got '122\.9'"),
        ({"lvedv_ml": 187.2, "lvef_pct": True}, r"measure 'lvef_pct' must be a number or None, got True"),
        ({"lvedv_ml": -3.0}, r"measure 'lvedv_ml' is -3 ml, outside 0-inf ml"),
        ({"lvedv_ml": 187.2, "lvef_pct": 150.0}, r"measure 'lvef_pct' is 150 %, outside 0-100 %"),
    ],
)
def test_the_sr_refuses_measures_it_would_drop_or_that_cannot_be_real(sources, tmp_path: Path, measures, message):
    with pytest.raises(InputError, match=message):
        write_measurement_report(tmp_path / "sr.dcm", measures, sources)
    assert not (tmp_path / "sr.dcm").exists()


def test_the_sr_takes_cardiac_measures_and_numpy_numbers(sources, tmp_path: Path):
    """``result.measures`` as it is (before: AttributeError 'items'), and a numpy float32 (before:
    left out without a word)."""
    import highdicom as hd

    measures = CardiacMeasures(150.0, 60.0, 90.0, 60.0, 120.0, 160.0, float("nan"), float("nan"), float("nan"))
    path = write_measurement_report(tmp_path / "sr.dcm", measures, sources)
    written = {
        item.name.value: float(item.value)
        for group in hd.sr.srread(path).content.get_image_measurement_groups()
        for item in group.get_measurements()
    }
    assert written["8821-1"] == 150.0 and written["8811-2"] == 60.0 and written["8822-9"] == 160.0
    assert "8824-5" not in written  # the unknown RVESV left out
    path = write_measurement_report(tmp_path / "sr32.dcm", {"lvedv_ml": np.float32(151.5)}, sources)
    groups = hd.sr.srread(path).content.get_image_measurement_groups()
    assert [float(m.value) for g in groups for m in g.get_measurements()] == [151.5]


# ---- 3. the volume metrics keep a Stack's geometry bounds ------------------------------------------
def test_volumes_refuse_positions_and_spacings_a_stack_refuses():
    labels = _heart()
    positions = np.arange(6) * 10.0
    assert volumes_ml(labels, SPACING, positions)["LVBP"] == pytest.approx(volumes_ml(labels, SPACING)["LVBP"])
    with pytest.raises(InputError, match=r"'slice_positions' are 1 mm apart \(median\) but 'spacing' dz is 10 mm"):
        volumes_ml(labels, SPACING, positions / 10)  # cm beside mm: 10 times too small before
    with pytest.raises(InputError, match=r"0 mm apart \(median\), outside"):
        volumes_ml(labels, SPACING, np.zeros(6))  # every slice at one place: 0 mL before
    with pytest.raises(InputError, match=r"'spacing' \(dy, dx\) \[0\.0015625, 0\.0015625\] mm is outside"):
        volumes_ml(labels, (0.01, 0.0015625, 0.0015625))  # metres
    with pytest.raises(InputError, match=r"0 mm apart \(median\), outside"):
        cardiac_measures(labels, labels, SPACING, ed_positions=positions, es_positions=np.zeros(6))


@pytest.mark.parametrize("value", [-1, 300])
def test_volumes_refuse_labels_that_are_not_canonical(value: int):
    labels = _heart().astype(np.int16)
    labels[0, 0, 0] = value
    with pytest.raises(InputError, match=rf"canonical labels 0\.\.3 .* got values {min(value, 0)}\.\.{max(value, 3)}"):
        volumes_ml(labels, SPACING)
    with pytest.raises(InputError, match=r"canonical labels 0\.\.3"):
        quality_flags(labels)


def test_a_stack_of_no_slices_gives_no_volume_and_no_ventricle_not_a_numpy_error():
    empty = np.zeros((0, 64, 64), np.uint8)
    assert all(math.isnan(v) for v in volumes_ml(empty, SPACING, np.zeros(0)).values())
    assert quality_flags(empty) == ["no_lv", "no_rv"]


# ---- 4. an array in (Y, X, Z) order ------------------------------------------------------------------
def test_a_stack_in_y_x_z_order_is_refused_naming_the_axes():
    """Before: 256 'slices' of 216 x 10 pixels, segmented to LVEDV 0.0 mL with no flag."""
    with pytest.raises(InputError, match=r"256 slices of 216 x 10 pixels.*was the array \(Y, X, Z\)\? np\.moveaxis"):
        Stack(np.zeros((256, 216, 10), np.float32), SPACING)
    assert Stack(np.zeros((30, 216, 256), np.float32), SPACING).shape == (30, 216, 256)  # a long stack is one


# ---- 5. NaN measures: JSON and the API ---------------------------------------------------------------
def test_cardiac_measures_as_json_write_where_as_dict_is_refused(tmp_path: Path):
    one_phase = cardiac_measures(_heart(), None, SPACING)
    assert math.isnan(one_phase.as_dict()["lvef_pct"])
    assert one_phase.as_json()["lvef_pct"] is None and one_phase.as_json()["lvedv_ml"] == one_phase.lvedv_ml
    write_json(tmp_path / "m.json", one_phase.as_json())
    assert json.loads((tmp_path / "m.json").read_text())["lvesv_ml"] is None


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return Pipeline(DEMO_BUNDLE, backend="onnx", threads=1)


def test_a_ventricle_not_found_is_nan_in_the_api_measures_as_null_in_the_report(demo):
    """Blank images: no heart. Before, ``result.measures`` gave LVEDV 0.0 mL and LVEF NaN where
    report.json gave null and ``lv_not_found``."""
    from cmrsdk.report import study_report

    blank = [Stack(np.zeros((8, 128, 128), np.float32), (8.0, 1.5, 1.5), phase=p) for p in ("ED", "ES")]
    result = demo.segment_study(Study(tuple(blank), ed_index=0, es_index=1))
    assert not any(np.any(seg.labels) for seg in result.phases)
    assert all(math.isnan(v) for v in result.measures.as_dict().values())
    assert result.measured.lvedv_ml == 0.0  # as measured from the (empty) masks
    report = study_report(result)
    assert {"lv_not_found", "rv_not_found"} <= set(report["flags"])
    assert report["measures"] == result.measures.as_json()


def test_a_non_callable_progress_is_refused_before_any_work(demo):
    stack = Stack(np.zeros((2, 64, 64), np.float32), (8.0, 1.5, 1.5))
    with pytest.raises(InputError, match=r"'progress' must be callable \(phases done, phases planned\), got int"):
        demo.segment_study(Study((stack, stack), ed_index=0, es_index=1), progress=5)


# ---- sweep 49: what the checks above refused that is legitimate -------------------------------------
def test_volumes_take_positions_further_apart_than_a_slice_thickness_given_as_dz():
    """A 4 mm slice every 10 mm: dz given as the slice thickness, the positions count (0.14.11 gave
    this; the first form of the check refused it "both in mm?")."""
    labels, positions = _heart(), np.arange(6) * 10.0
    assert volumes_ml(labels, (4.0, *SPACING[1:]), positions) == volumes_ml(labels, SPACING, positions)
    with pytest.raises(InputError, match=r"volumes_ml 'slice_positions' are 1 mm apart \(median\) but 'spacing' dz"):
        volumes_ml(labels, SPACING, positions / 10)  # centimetres are still refused


def test_a_gap_filled_on_a_fine_grid_is_written_and_the_slice_bound_is_taken_at_its_value(tmp_path: Path):
    """One pair of slices 1 mm apart, the rest 10 mm: write_nifti_labels fills the gaps on a 1 mm
    grid, 102 slices of 96 x 96, which the (Y, X, Z) rule refused in its first form."""
    positions = np.array([0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 101], float)
    stack = Stack(np.ones((12, 96, 96), np.float32), (10.0, 1.8, 1.8), slice_positions=positions)
    labels = np.zeros(stack.shape, np.uint8)
    labels[:, 30:50, 30:50] = 1
    assert nib.load(write_nifti_labels(tmp_path / "gap.nii.gz", labels, stack)).shape == (96, 96, 102)
    # SLICE_RANGE_MM's 0.05 mm, reached through float rounding of the positions' steps
    thin = Stack(np.ones((10, 64, 64), np.float32), (0.05, 1.5, 1.5), slice_positions=np.arange(10) * 0.05 + 3.1)
    assert thin.spacing[0] == 0.05


# ---- sweep 51: a typo of a label, an affine with no grid ---------------------------------------------
@pytest.mark.parametrize("label", [9, 0, "LV", True, 2.0])
def test_dice_refuses_a_label_that_is_no_structure(label):
    """A typo scored NaN ("absent from both masks"), a NaN in a table."""
    from cmrsdk.metrics import dice, slice_dice

    labels = _heart()
    assert dice(labels, labels, 1) == 1.0
    with pytest.raises(InputError, match=r"'label' must be 1 \(LVBP\), 2 \(LVM\) or 3 \(RVBP\), got"):
        dice(labels, labels, label)
    with pytest.raises(InputError, match=r"'label' must be 1 \(LVBP\)"):
        slice_dice(labels, labels, labels=(1, label))


def test_a_stack_affine_that_spans_no_grid_is_refused_before_any_segmentation():
    """Accepted before, and refused only by the NIfTI writer, after the networks' time."""
    pixels = np.ones((4, 64, 64), np.float32)
    with pytest.raises(InputError, match=r"Stack 'affine' axes \(z, y, x\) have lengths \[0\.0, 0\.0, 0\.0\] mm"):
        Stack(pixels, SPACING, affine=np.zeros((4, 4)))
    flat = np.diag([10.0, 1.5, 1.5, 1.0])
    flat[:3, 0] = flat[:3, 1]  # z along y: a plane
    with pytest.raises(InputError, match=r"span no grid"):
        Stack(pixels, SPACING, affine=flat)
    broken = np.diag([10.0, 1.5, 1.5, 1.0])
    broken[1, 3] = np.nan
    with pytest.raises(InputError, match=r"must be finite, got non-finite values at \[\(1, 3\)\]"):
        Stack(pixels, SPACING, affine=broken)
