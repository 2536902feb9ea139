"""The same studies as researchers' converters write them (sweep 28, docs/RESULTS.md Session 44):
dcm2niix, SimpleITK and nibabel re-saves; each test checked to fail without its fix."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrsdk.errors import ReadError


def _cine_files(folder: Path, spacing: tuple[float, ...], label_spacing: tuple[float, ...], flip_image: bool):
    """An oblique image (X, Y, Z) = (256, 60, 8), its columns stored in the other order where
    ``flip_image`` (as dcm2niix stores DICOM rows), and a label map written by another tool."""
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, (256, 60, 8)).astype(np.float32)
    labels = np.zeros(image.shape, np.uint8)
    labels[120:140, 20:40, 2:6] = 2
    labels[124:136, 24:36, 2:6] = 1
    rotation, _ = np.linalg.qr(np.array([[0.77, -0.15, 0.62], [0.62, 0.41, -0.67], [0.16, -0.90, -0.41]]))

    def affine(zooms):
        a = np.eye(4)
        a[:3, :3] = rotation * np.array(zooms)
        a[:3, 3] = [76.8, 147.4, -220.4]
        return a

    folder.mkdir(parents=True, exist_ok=True)
    image_file = nib.Nifti1Image(image, affine(spacing))
    if flip_image:
        image_file = image_file.as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))
    nib.save(image_file, folder / "cine.nii.gz")
    nib.save(nib.Nifti1Image(labels, affine(label_spacing)), folder / "cine_gt.nii.gz")
    return folder / "cine.nii.gz", folder / "cine_gt.nii.gz"


def test_a_label_map_on_the_same_grid_rounded_otherwise_is_read(tmp_path: Path) -> None:
    """A label map in the other column order whose pixel size another tool rounded 2e-5 mm apart:
    the far corner 0.005 mm away, refused before as "another grid" (sweep 28: dcm2niix's frames
    beside the DICOM run's labels), with the gap of the order as stored (313 mm there)."""
    from cmrsdk.io.nifti import read_nifti_stack

    image, labels = _cine_files(tmp_path / "a", (1.36719, 1.36719, 10.0), (1.36721, 1.36719, 10.0), True)
    with pytest.warns(match="another voxel order; reoriented"):
        stack = read_nifti_stack(image, labels)
    assert int((stack.labels == 1).sum()) == 12 * 12 * 4
    # half a millimetre is another grid, and the message gives that gap, not the stored order's
    image, labels = _cine_files(tmp_path / "b", (1.36719, 1.36719, 10.0), (1.36719, 1.36719, 10.0625), True)
    with pytest.raises(ReadError, match=r"by up to 0\.\d+ \(mm or direction\)"):
        read_nifti_stack(image, labels)


@pytest.mark.parametrize("suffix, name", [(".nrrd", "NRRD"), (".mha", "MetaImage"), (".mgz", "FreeSurfer MGH")])
def test_other_image_formats_are_named_not_searched_for_dicom(tmp_path: Path, suffix: str, name: str) -> None:
    """SimpleITK's and dcm2niix's other outputs read "no DICOM image files found" (sweep 28)."""
    from cmrsdk.io import read_study

    folder = tmp_path / "converted"
    folder.mkdir()
    (folder / f"cine{suffix}").write_bytes(b"\x00" * 64)
    with pytest.raises(ReadError, match=rf"{name} file .* is not read; convert it to NIfTI"):
        read_study(folder)
    with pytest.raises(ReadError, match=rf"{name} file .* is not read; convert it to NIfTI"):
        read_study(folder / f"cine{suffix}")


def test_a_re_save_that_lost_the_voxel_sizes_is_said(shared_data: Path, tmp_path: Path) -> None:
    """ACDC re-saved as nib.Nifti1Image(array, img.affine): ACDC's affine has unit columns, so the
    file says 1 x 1 x 1 mm; measured with it, LVEDV 11.8 mL for 290.4, only an LVEDV flag (sweep 28).
    Now a reader warning, and the phase flagged thin_slices."""
    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.study import segment_one
    from cmrsdk.pipeline import Pipeline

    source = shared_data / "acdc" / "training" / "patient001" / "patient001_frame01.nii.gz"
    original = nib.load(source)
    resaved = tmp_path / "patient001_frame01.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(original.dataobj), original.affine), resaved)
    assert nib.load(resaved).header.get_zooms()[:3] == (1.0, 1.0, 1.0)
    report = segment_one(Pipeline(DEMO_BUNDLE), resaved, tmp_path / "out", overlay=False, report_html=False)
    assert any("voxel sizes are 1 x 1 x 1 mm" in w for w in report["warnings"])
    assert "thin_slices" in report["phases"][0]["quality_flags"]


def test_a_converters_nifti_is_segmented_as_its_dicom(shared_data: Path, tmp_path: Path) -> None:
    """dcm2niix stores DICOM rows bottom-up; the U-Nets are not flip-invariant, so its NIfTI of
    Sunnybrook SCD0000201 measured RVEF 41.8 % where the DICOM gives 18.2 (sweep 28). With its
    sidecar's ImageOrientationPatientDICOM the NIfTI is segmented in the DICOM's layout: the same
    masks, stored in the NIfTI's own row order."""
    import json

    import pydicom

    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.io import read_study
    from cmrsdk.io.nifti import read_nifti_stack
    from cmrsdk.pipeline import Pipeline

    study = read_study(shared_data / "sunnybrook" / "SCD0000201")
    stack = study.phases[0]
    rows = stack.pixels.shape[1]
    flipped = np.asarray(stack.affine, dtype=np.float64).copy()  # (z, y, x) -> RAS with y reversed
    flipped[:3, 3] += flipped[:3, 1] * (rows - 1)
    flipped[:3, 1] *= -1
    image = tmp_path / "sb201.nii.gz"
    nib.save(nib.Nifti1Image(stack.pixels[:, ::-1, :].transpose(2, 1, 0), flipped[:, [2, 1, 0, 3]]), image)
    pipeline = Pipeline(DEMO_BUNDLE)
    as_stored = pipeline.segment(read_nifti_stack(image)).labels[:, ::-1, :]
    orientation = [float(v) for v in pydicom.dcmread(stack.source_files[0]).ImageOrientationPatient]
    image.with_name("sb201.json").write_text(json.dumps({"ImageOrientationPatientDICOM": orientation}))
    converted = read_nifti_stack(image)
    assert converted.dicom_turn == (False, True, False)
    as_dicom = pipeline.segment(converted).labels[:, ::-1, :]
    dicom = pipeline.segment(stack).labels
    assert np.array_equal(as_dicom, dicom)
    assert np.count_nonzero(as_stored != dicom) > 100  # what the layout alone moved


@pytest.mark.parametrize(
    "sidecar, said",
    [
        ('{"ImageOrientationPatientDICOM": [0.77, 0.6', "is not readable JSON"),
        ('{"ImageOrientationPatientDICOM": [1e308, "abc", null, 0, 1, 0]}', "is not 6 numbers"),
        ('{"ImageOrientationPatientDICOM": [1, 0, 0, 0, 1]}', "is not 6 numbers"),
        ('{"ImageOrientationPatientDICOM": [1, 0, 0, 0, 0.94, 0.34]}', "is not the image's plane"),
        ('{"Modality": "MR"}', None),
    ],
)
def test_a_sidecar_whose_orientation_cannot_be_used_is_said(tmp_path: Path, sidecar: str, said: str | None) -> None:
    """Sweep 29: a broken, short or mismatched orientation was ignored without a word, and the
    NIfTI segmented as stored (LVEF 35.3 % where its DICOM gives 31.7)."""
    import warnings

    from cmrsdk.errors import CmrWarning
    from cmrsdk.io.nifti import read_nifti_stack

    image = tmp_path / "cine.nii.gz"
    affine = np.diag([1.4, 1.4, 8.0, 1.0])
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(100, 10, (40, 48, 6)).astype(np.float32), affine), image)
    (tmp_path / "cine.json").write_text(sidecar)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stack = read_nifti_stack(image)
    messages = [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]
    assert stack.dicom_turn is None
    if said is None:
        assert not [m for m in messages if "sidecar" in m or "cine.json" in m]
    else:
        assert any(said in m and "segmented as stored" in m for m in messages), messages


def test_batch_counts_a_niftis_sidecar_among_its_inputs(tmp_path: Path) -> None:
    """Sweep 29: a changed sidecar kept the earlier result ("1 from earlier runs"), and a copy
    with another sidecar was skipped as byte-identical; the sidecar can turn the layout."""
    from cmrsdk.cohort.discover import StudySource
    from cmrsdk.cohort.worker import content_sha256, inputs_fingerprint

    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), tmp_path / f"{name}.nii.gz")
    (tmp_path / "a.json").write_text('{"ImageOrientationPatientDICOM": [1, 0, 0, 0, 1, 0]}')
    (tmp_path / "b.json").write_text('{"ImageOrientationPatientDICOM": [1, 0, 0, 0, -1, 0]}')
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    assert content_sha256(a) != content_sha256(b)
    before = inputs_fingerprint(StudySource("a", str(a)))
    (tmp_path / "a.json").write_text('{"Modality": "MR"}')
    assert inputs_fingerprint(StudySource("a", str(a))) != before
    (tmp_path / "a.json").unlink()
    (tmp_path / "b.json").unlink()
    assert content_sha256(a) == content_sha256(b)
