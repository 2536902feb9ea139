"""NIfTI readers: geometry against nibabel, label conventions, the shared cases, bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import read_acdc_patient, read_mnms_subject, read_nifti_stack


def _affine_xyz() -> np.ndarray:
    """An oblique RAS+ affine with voxel sizes (1.25, 1.5, 8) mm along (i, j, k)."""
    rng = np.random.default_rng(3)
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.array([1.25, 1.5, 8.0])
    affine[:3, 3] = [10.0, -20.0, 35.0]
    return affine


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, _affine_xyz() if affine is None else affine), str(path))
    return path


def test_plain_stack_geometry_matches_nibabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data_xyz = rng.integers(-100, 900, size=(20, 16, 6)).astype(np.int16)
    labels_xyz = rng.integers(0, 4, size=(20, 16, 6)).astype(np.float64)  # M&Ms stores floats
    image = _save(tmp_path / "img.nii.gz", data_xyz)
    label = _save(tmp_path / "lab.nii.gz", labels_xyz)
    stack = read_nifti_stack(image, label, convention="acdc", phase="ED")
    assert stack.shape == (6, 16, 20) and stack.pixels.dtype == np.float32 and stack.phase == "ED"
    np.testing.assert_array_equal(stack.pixels, data_xyz.transpose(2, 1, 0).astype(np.float32))
    np.testing.assert_allclose(stack.spacing, (8.0, 1.5, 1.25), rtol=1e-6)
    # voxel (z, y, x) of the stack lands where nibabel puts voxel (x, y, z)
    rng_index = rng.integers(0, [6, 16, 20], size=(10, 3))
    for z, y, x in rng_index:
        np.testing.assert_allclose(stack.affine @ [z, y, x, 1], _affine_xyz() @ [x, y, z, 1], atol=1e-5)
    # ACDC 1 RV, 2 MYO, 3 LV -> canonical 3, 2, 1
    expected = np.array([0, 3, 2, 1], dtype=np.uint8)[labels_xyz.astype(int).transpose(2, 1, 0)]
    np.testing.assert_array_equal(stack.labels, expected)
    # slice positions: consecutive slices dz apart along the normal
    np.testing.assert_allclose(np.abs(np.diff(stack.slice_positions)), 8.0, rtol=1e-5)


def test_unit_sform_is_rescaled_to_pixdim(tmp_path: Path) -> None:
    """ACDC files carry a unit-length sform with pixdim 1.5625 x 1.5625 x 10: spacing wins."""
    image = nib.Nifti1Image(np.zeros((8, 6, 3), dtype=np.int16), np.diag([-1.0, -1.0, 1.0, 1.0]))
    image.header.set_zooms((1.5625, 1.5625, 10.0))
    image.set_sform(np.diag([-1.0, -1.0, 1.0, 1.0]), code=2)
    nib.save(image, str(tmp_path / "acdc.nii.gz"))
    stack = read_nifti_stack(tmp_path / "acdc.nii.gz")
    np.testing.assert_allclose(stack.affine[:3, :3], [[0, 0, -1.5625], [0, -1.5625, 0], [10, 0, 0]])
    assert stack.spacing == (10.0, 1.5625, 1.5625)


def test_acdc_patient_001(shared_data: Path) -> None:
    folder = shared_data / "acdc" / "training" / "patient001"
    study = read_acdc_patient(folder)
    assert (study.ed_index, study.es_index) == (0, 1)
    assert study.info.patient_id == "patient001" and study.info.group == "DCM"
    assert study.info.height_cm == 184.0 and study.info.weight_kg == 95.0
    raw = np.asarray(nib.load(str(folder / "patient001_frame12_gt.nii.gz")).dataobj)
    es = study.es
    assert es.shape == raw.shape[::-1] == (10, 256, 216) and es.phase == "ES"
    assert es.spacing == (10.0, 1.5625, 1.5625)
    for stored, canonical in [(1, 3), (2, 2), (3, 1)]:
        assert np.count_nonzero(es.labels == canonical) == np.count_nonzero(raw == stored) > 0
    np.testing.assert_allclose(es.slice_positions, np.arange(10) * 10.0)


def test_every_shared_nifti_case_reads(shared_data: Path) -> None:
    for folder in sorted((shared_data / "acdc" / "training").glob("patient*")):
        study = read_acdc_patient(folder)
        for stack in study.phases:
            header = nib.load(stack.source).header
            assert stack.shape == header.get_data_shape()[::-1]
            np.testing.assert_allclose(stack.spacing, header.get_zooms()[::-1], rtol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(stack.affine[:3, :3], axis=0), stack.spacing, rtol=1e-6)
            assert stack.labels is not None and set(np.unique(stack.labels)) == {0, 1, 2, 3}, folder.name
    for folder in sorted(p for p in (shared_data / "mnms").iterdir() if p.is_dir()):
        study = read_mnms_subject(folder)
        assert study.info.manufacturer in {"Siemens", "Philips"}
        for stack in study.phases:
            image = nib.load(stack.source)
            np.testing.assert_allclose(stack.affine @ [2, 3, 4, 1], image.affine @ [4, 3, 2, 1], atol=1e-4)
            assert set(np.unique(stack.labels)) == {0, 1, 2, 3}


# --- bad input: each gives a ReadError naming the file and the problem ---------------------------


def test_wrong_number_of_dimensions(tmp_path: Path) -> None:
    path = _save(tmp_path / "four.nii.gz", np.zeros((4, 4, 3, 2), dtype=np.int16))
    with pytest.raises(ReadError, match=r"four\.nii\.gz: NIfTI image must be 3-D .* got shape \(4, 4, 3, 2\)"):
        read_nifti_stack(path)


def test_shape_mismatch(tmp_path: Path) -> None:
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    label = _save(tmp_path / "lab.nii.gz", np.zeros((8, 6, 4), dtype=np.uint8))
    with pytest.raises(
        ReadError,
        match=r"lab\.nii\.gz: label map shape \(8, 6, 4\) .* differs from image img\.nii\.gz shape \(8, 6, 3\)",
    ):
        read_nifti_stack(image, label)


def test_nan_pixels(tmp_path: Path) -> None:
    data = np.ones((8, 6, 3), dtype=np.float32)
    data[1, 2, 0] = np.nan
    with pytest.raises(ReadError, match=r"nan\.nii\.gz: image holds 1 NaN or infinite pixel values"):
        read_nifti_stack(_save(tmp_path / "nan.nii.gz", data))


def test_label_values_outside_convention(tmp_path: Path) -> None:
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    labels = np.zeros((8, 6, 3), dtype=np.uint8)
    labels[0, 0, 0] = 4
    with pytest.raises(ReadError, match=r"lab\.nii\.gz: label values \[4\] are outside the 'mnms' convention"):
        read_nifti_stack(image, _save(tmp_path / "lab.nii.gz", labels), convention="mnms")


def test_non_integral_float_labels(tmp_path: Path) -> None:
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    labels = np.zeros((8, 6, 3), dtype=np.float32)
    labels[0, 0, 0] = 1.5
    with pytest.raises(ReadError, match=r"lab\.nii\.gz: float label map is not integral \(values such as \[1\.5\]\)"):
        read_nifti_stack(image, _save(tmp_path / "lab.nii.gz", labels))


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.nii.gz", np.arange(8 * 6 * 30, dtype=np.float32).reshape(8, 6, 30))
    blob = gzip.decompress(good.read_bytes())
    truncated = tmp_path / "cut.nii"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ReadError, match=r"cut\.nii: NIfTI data cannot be read"):
        read_nifti_stack(truncated)
    text = tmp_path / "text.nii.gz"
    text.write_text("not a nifti")
    with pytest.raises(ReadError, match=r"text\.nii\.gz: not a readable NIfTI file"):
        read_nifti_stack(text)
    with pytest.raises(ReadError, match=r"absent\.nii\.gz: no such NIfTI file"):
        read_nifti_stack(tmp_path / "absent.nii.gz")
    with pytest.raises(ReadError, match=r"unknown, expected one of \['acdc', 'canonical', 'mnms'\]"):
        read_nifti_stack(good, convention="kaggle")  # type: ignore[arg-type]


def test_acdc_folder_problems(tmp_path: Path) -> None:
    folder = tmp_path / "patient900"
    folder.mkdir()
    with pytest.raises(ReadError, match=r"Info\.cfg: ACDC Info\.cfg not found"):
        read_acdc_patient(folder)
    (folder / "Info.cfg").write_text("ED: 1\nES: 7\n")
    _save(folder / "patient900_frame01.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    with pytest.raises(
        ReadError, match=r"patient900: ES image patient900_frame07\.nii\.gz \(frame 7 from Info\.cfg\) not found"
    ):
        read_acdc_patient(folder)
    (folder / "Info.cfg").write_text("ED: one\n")
    with pytest.raises(ReadError, match=r"'ED' value 'one' is not a frame number"):
        read_acdc_patient(folder)
    # two patients' frames in one folder: no code to go by, so the folder's name, and the files named
    (folder / "Info.cfg").write_text("ED: 1\nES: 7\n")
    _save(folder / "patient901_frame07.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    with pytest.raises(
        ReadError,
        match=r"ES image patient900_frame07\.nii\.gz .* not found \(the folder holds: "
        r"patient900_frame01\.nii\.gz, patient901_frame07\.nii\.gz\)",
    ):
        read_acdc_patient(folder)


def test_renamed_subject_folders_read_by_their_files_codes(shared_data: Path, tmp_path: Path) -> None:
    """A cohort copies subjects into folders of its own names (sweep 10): an ACDC patient in
    ``copy_of_002/`` failed ("patient ... copy_of_002_frame01 not found" beside
    patient002_frame01), an M&Ms subject in ``mnms_B5F8L9/`` became two one-phase studies."""
    import shutil

    from cmrsdk.io import detect_format, expand_inputs, read_study

    acdc = tmp_path / "cohort" / "copy_of_002"
    shutil.copytree(shared_data / "acdc" / "training" / "patient002", acdc)
    mnms = tmp_path / "cohort" / "mnms_B5F8L9"
    shutil.copytree(shared_data / "mnms" / "B5F8L9", mnms)
    shutil.copy(shared_data / "mnms" / "info.csv", tmp_path / "cohort" / "info.csv")
    assert expand_inputs(tmp_path / "cohort") == [acdc, mnms]
    assert (detect_format(acdc), detect_format(mnms)) == ("acdc", "mnms")
    for folder, original, code in [
        (acdc, read_acdc_patient(shared_data / "acdc" / "training" / "patient002"), "patient002"),
        (mnms, read_mnms_subject(shared_data / "mnms" / "B5F8L9"), "B5F8L9"),
    ]:
        study = read_study(folder)
        assert study.info.patient_id == code and (study.ed_index, study.es_index) == (0, 1)
        assert study.info.manufacturer == original.info.manufacturer
        for got, want in zip(study.phases, original.phases):
            np.testing.assert_array_equal(got.pixels, want.pixels)
            np.testing.assert_array_equal(got.labels, want.labels)


def test_a_4d_cine_reads_a_phase_per_frame_and_segments_as_the_patient(shared_data: Path, tmp_path: Path) -> None:
    """ACDC patient001's ED and ES frames as one 4-D file (as UK Biobank and ACDC's *_4d ship a
    cine): a phase per frame, the 3-D geometry, times from pixdim[4]; segmented, the same
    measures as the patient folder, whose ED and ES are named."""
    import json

    from cmrsdk.cli import main
    from cmrsdk.io import read_study

    folder = shared_data / "acdc" / "training" / "patient001"
    ed, es = (nib.load(str(folder / f"patient001_frame{n}.nii.gz")) for n in ("01", "12"))
    cine = nib.Nifti1Image(
        np.stack([np.asanyarray(ed.dataobj), np.asanyarray(es.dataobj)], axis=-1), ed.affine, ed.header
    )
    cine.header.set_xyzt_units("mm", "msec")
    cine.header["pixdim"][4] = 35.0
    path = tmp_path / "patient001_4d.nii.gz"
    nib.save(cine, str(path))
    study = read_study(path)
    patient = read_acdc_patient(folder)
    assert len(study.phases) == 2 and study.ed_index == 0 and study.es_index is None
    np.testing.assert_allclose(study.trigger_times_ms, [0.0, 35.0])
    for got, want in zip(study.phases, (patient.ed, patient.es)):
        np.testing.assert_array_equal(got.pixels, want.pixels)
        np.testing.assert_allclose(got.affine, want.affine)
        assert got.spacing == want.spacing and got.labels is None
    fast = ["--mode", "baseline", "--no-overlay", "--no-report-html"]
    assert main(["segment", str(path), "-o", str(tmp_path / "cine"), *fast]) == 0
    assert main(["segment", str(folder), "-o", str(tmp_path / "patient"), *fast]) == 0
    cine_report, patient_report = (json.loads((tmp_path / n / "report.json").read_text()) for n in ("cine", "patient"))
    assert (cine_report["ed_index"], cine_report["es_index"]) == (0, 1)  # from the LV volume curve
    assert cine_report["measures"] == patient_report["measures"]
    with pytest.raises(ReadError, match=r"must be 3-D \(X, Y, Z\) for one phase, got shape \(\d+, \d+, \d+, 2\)"):
        read_nifti_stack(path)  # one phase asked for (with a label map, say): refused as before


def _mnms_release_subject(shared_data: Path, root: Path, *, ed: int = 4, es: int = 1, frames: int = 6) -> Path:
    """A shared M&Ms subject written as the challenge released it: ``Training/Labeled/SUBJECT/``
    holding one 4-D cine and a 4-D label map labelled at its ED and ES frames only, and the
    subject table at the root."""
    name = "H1N8S6"
    source = shared_data / "mnms" / name
    ed_image, es_image = (nib.load(str(source / f"{name}_sa_{p}.nii.gz")) for p in ("ED", "ES"))
    ed_gt, es_gt = (np.asarray(nib.load(str(source / f"{name}_sa_{p}_gt.nii.gz")).dataobj) for p in ("ED", "ES"))
    ed_px, es_px = np.asarray(ed_image.dataobj), np.asarray(es_image.dataobj)
    cine = np.stack([(ed_px + es_px) / 2] * frames, axis=-1).astype(np.float32)
    cine[..., ed], cine[..., es] = ed_px, es_px
    gt = np.zeros(cine.shape, dtype=np.float64)  # float64, as M&Ms stores its labels
    gt[..., ed], gt[..., es] = ed_gt, es_gt
    folder = root / "Training" / "Labeled" / name
    folder.mkdir(parents=True)
    nib.save(nib.Nifti1Image(cine, ed_image.affine, ed_image.header), str(folder / f"{name}_sa.nii.gz"))
    nib.save(nib.Nifti1Image(gt, ed_image.affine), str(folder / f"{name}_sa_gt.nii.gz"))
    (root / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv").write_text(
        f"External code,VendorName,Vendor,Centre,ED,ES\n{name},Philips,B,2,{ed},{es}\n"
    )
    return folder


def test_mnms_release_layout_gives_the_labelled_frames(shared_data: Path, tmp_path: Path) -> None:
    from cmrsdk.io import detect_format, expand_inputs

    folder = _mnms_release_subject(shared_data, tmp_path, ed=4, es=1)  # ES labelled before ED
    assert detect_format(folder) == "mnms"
    assert expand_inputs(folder.parent) == [folder]
    study = read_mnms_subject(folder)
    split = read_mnms_subject(shared_data / "mnms" / "H1N8S6")
    assert (study.ed_index, study.es_index) == (0, 1) and study.info.manufacturer == "Philips"
    assert [s.phase for s in study.phases] == ["ED", "ES"] and study.ed.source.endswith("(frame 4)")
    for got, want in zip(study.phases, split.phases, strict=True):
        np.testing.assert_array_equal(got.pixels, want.pixels)
        np.testing.assert_array_equal(got.labels, want.labels)
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-5)
        assert got.spacing == pytest.approx(want.spacing)


def test_mnms_release_layout_refusals_and_no_labels(shared_data: Path, tmp_path: Path) -> None:
    folder = _mnms_release_subject(shared_data, tmp_path / "one", ed=0, es=0)  # ES overwrote ED: one frame
    with pytest.raises(ReadError, match=r"H1N8S6_sa_gt\.nii\.gz: labelled frames \[0\]: .* exactly two frames"):
        read_mnms_subject(folder)
    (folder / "H1N8S6_sa_gt.nii.gz").unlink()
    study = read_mnms_subject(folder)  # no contours: the whole cine, ED/ES left to the LV curve
    assert len(study.phases) == 6 and study.es_index is None and study.phases[0].labels is None


def test_slices_stored_first_read_as_the_xyz_file(tmp_path: Path) -> None:
    """numpy's and SimpleITK's (Z, Y, X) order, the affine permuted to match: the same stack, warned."""
    rng = np.random.default_rng(1)
    data_xyz = rng.integers(0, 900, size=(20, 16, 6)).astype(np.int16)
    labels_xyz = rng.integers(0, 4, size=(20, 16, 6)).astype(np.uint8)
    expected = read_nifti_stack(_save(tmp_path / "xyz.nii.gz", data_xyz), _save(tmp_path / "xyz_gt.nii.gz", labels_xyz))
    zyx_affine = _affine_xyz()[:, [2, 1, 0, 3]]
    image = _save(tmp_path / "zyx.nii.gz", data_xyz.transpose(2, 1, 0).copy(), zyx_affine)
    label = _save(tmp_path / "zyx_gt.nii.gz", labels_xyz.transpose(2, 1, 0).copy(), zyx_affine)
    with pytest.warns(
        CmrWarning, match=r"zyx\.nii\.gz: the slice axis is array axis 1 \(voxel sizes \[8\.0, 1\.5, 1\.25\]"
    ):
        stack = read_nifti_stack(image, label)
    np.testing.assert_array_equal(stack.pixels, expected.pixels)
    np.testing.assert_array_equal(stack.labels, expected.labels)
    np.testing.assert_allclose(stack.affine, expected.affine, atol=1e-5)
    assert stack.spacing == pytest.approx(expected.spacing)


def test_nifti2_reads_as_nifti1(tmp_path: Path) -> None:
    data = np.arange(8 * 6 * 3, dtype=np.int16).reshape(8, 6, 3)
    one = read_nifti_stack(_save(tmp_path / "one.nii.gz", data))
    nib.save(nib.Nifti2Image(data, _affine_xyz()), str(tmp_path / "two.nii.gz"))
    two = read_nifti_stack(tmp_path / "two.nii.gz")
    np.testing.assert_array_equal(two.pixels, one.pixels)
    np.testing.assert_allclose(two.affine, one.affine)


def test_labels_on_another_grid_are_refused(tmp_path: Path) -> None:
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    moved = _affine_xyz()
    moved[0, 3] += 40.0
    label = _save(tmp_path / "lab.nii.gz", np.zeros((8, 6, 3), dtype=np.uint8), moved)
    with pytest.raises(
        ReadError, match=r"lab\.nii\.gz: label map affine differs from image img\.nii\.gz's by up to 40"
    ):
        read_nifti_stack(image, label)


def test_float_labels_a_rounding_off_whole_read_as_whole(tmp_path: Path) -> None:
    """nibabel writes uint8 labels from float data with an automatic scl_slope: 2 reads back 2.00000004."""
    image = _save(tmp_path / "img.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    labels = np.zeros((8, 6, 3), dtype=np.float64)
    labels[2:5, 1:4, :] = 2.0
    labels[0, 0, 0] = 3.0 * 0.9999
    stack = read_nifti_stack(image, _save(tmp_path / "lab.nii.gz", labels), convention="mnms")
    assert stack.labels[0, 0, 0] == 3 and (stack.labels == 2).sum() == 27


def test_sform_edited_without_its_pixdim_gives_the_affines_sizes(tmp_path: Path) -> None:
    image = nib.Nifti1Image(np.zeros((8, 6, 3), dtype=np.int16), np.diag([0.6, 0.6, 9.6, 1.0]))
    image.header.set_zooms((1.2, 1.2, 9.6))  # stale: the sform was halved in-plane after
    nib.save(image, str(tmp_path / "stale.nii.gz"))
    with pytest.warns(
        CmrWarning, match=r"pixdim\[1:4\] \[1\.2, 1\.2, 9\.6\] mm disagrees with the affine's voxel sizes"
    ):
        stack = read_nifti_stack(tmp_path / "stale.nii.gz")
    assert stack.spacing == pytest.approx((9.6, 0.6, 0.6))


def test_compression_and_name_disagree_say_how_to_rename(tmp_path: Path) -> None:
    good = _save(tmp_path / "good.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    (tmp_path / "gz.nii").write_bytes(good.read_bytes())
    with pytest.raises(ReadError, match=r"gz\.nii: the file is gzip-compressed but its name ends in \.nii: rename it"):
        read_nifti_stack(tmp_path / "gz.nii")
    (tmp_path / "plain.nii.gz").write_bytes(gzip.decompress(good.read_bytes()))
    with pytest.raises(ReadError, match=r"plain\.nii\.gz: the file is an uncompressed NIfTI but its name ends in \.gz"):
        read_nifti_stack(tmp_path / "plain.nii.gz")


def test_info_cfg_with_a_byte_order_mark(tmp_path: Path) -> None:
    folder = tmp_path / "patient901"
    folder.mkdir()
    (folder / "Info.cfg").write_bytes("ED: 1\r\nES: 2\r\nGroup: NOR\r\n".encode("utf-8-sig"))
    for frame in (1, 2):
        _save(folder / f"patient901_frame{frame:02d}.nii.gz", np.zeros((8, 6, 3), dtype=np.int16))
    study = read_acdc_patient(folder)
    assert [s.phase for s in study.phases] == ["ED", "ES"] and study.info.group == "NOR"


def test_an_analyze_pair_is_named_as_such(tmp_path: Path) -> None:
    from cmrsdk.io import read_study

    nib.save(nib.Nifti1Pair(np.zeros((8, 6, 3), dtype=np.int16), _affine_xyz()), str(tmp_path / "image.hdr"))
    for path in (tmp_path, tmp_path / "image.hdr"):
        with pytest.raises(
            ReadError, match=r"image\.(hdr|img): an Analyze / NIfTI-1 pair \(\.hdr \+ \.img\) is not read"
        ):
            read_study(path)


def test_a_cine_with_spare_trailing_axes_reads_and_a_5d_one_is_named_as_such(tmp_path: Path) -> None:
    """(X, Y, Z, T, 1), as some converters write a cine, was refused as not 3-D."""
    from cmrsdk.io import read_study

    volume = np.random.default_rng(0).normal(100, 20, (32, 32, 4)).astype(np.float32)
    cine = np.stack([volume, volume * 0.9, volume * 1.1], -1)
    nib.save(nib.Nifti1Image(cine[..., None], np.diag([1.5, 1.5, 8.0, 1.0])), tmp_path / "spare.nii.gz")
    study = read_study(tmp_path / "spare.nii.gz")
    assert len(study.phases) == 3 and study.phases[2].shape == (4, 32, 32)
    np.testing.assert_allclose(study.phases[1].pixels, volume.transpose(2, 1, 0) * 0.9, rtol=1e-6)
    nib.save(nib.Nifti1Image(np.stack([cine, cine], -1), np.diag([1.5, 1.5, 8.0, 1.0])), tmp_path / "five.nii.gz")
    with pytest.raises(
        ReadError, match=r"for one phase or 4-D \(X, Y, Z, T\) for a cine, got shape \(32, 32, 4, 3, 2\)"
    ):
        read_study(tmp_path / "five.nii.gz")


def test_spatial_units_other_than_mm_are_converted_or_named(tmp_path: Path) -> None:
    """xyzt_units 'micron' or 'meter' were ignored: a header in metres with sizes in mm read as
    mm silently, one whose sizes were in its stated unit was refused as 'mm outside 0.05..20'."""
    pixels = np.random.default_rng(0).normal(100, 20, (32, 32, 4)).astype(np.float32)
    for unit, per_mm in (("micron", 1000.0), ("meter", 0.001)):
        zooms = np.array([1.25, 1.25, 8.0]) * per_mm
        image = nib.Nifti1Image(pixels, np.diag([*zooms, 1.0]))
        image.header.set_xyzt_units(unit)
        image.header.set_zooms(tuple(zooms))
        nib.save(image, tmp_path / f"{unit}.nii.gz")
        np.testing.assert_allclose(read_nifti_stack(tmp_path / f"{unit}.nii.gz").spacing, (8.0, 1.25, 1.25), rtol=1e-6)
        wrong = nib.Nifti1Image(pixels, np.diag([1.25, 1.25, 8.0, 1.0]))  # sizes in mm, unit says otherwise
        wrong.header.set_xyzt_units(unit)
        nib.save(wrong, tmp_path / f"{unit}_wrong.nii.gz")
        with pytest.raises(ReadError, match=f"outside 0.3..20.0 mm: .*\\(its xyzt_units say '{unit}'\\)"):
            read_nifti_stack(tmp_path / f"{unit}_wrong.nii.gz")


def test_labels_of_a_stack_with_a_missing_slice_stay_where_they_were_acquired(tmp_path) -> None:
    """Slices at 0, 8, 24 and 32 mm (the 16 mm slice left out of the series): written evenly, the
    last two sat 8 mm from their images (Sunnybrook SCD0000101 without slice 5: five slices 10 mm
    off). Now an empty slice fills the gap and each label slice lies at its own position."""
    from cmrsdk.io import write_nifti_labels
    from cmrsdk.types import Stack

    affine = np.diag([8.0, 1.5, 1.5, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    positions = np.array([0.0, 8.0, 24.0, 32.0])
    stack = Stack(np.ones((4, 6, 5), np.float32), (8.0, 1.5, 1.5), affine=affine, slice_positions=positions)
    labels = np.zeros((4, 6, 5), np.uint8)
    for z in range(4):
        labels[z, : z + 1] = 1 + z % 3
    image = nib.load(str(write_nifti_labels(tmp_path / "labels.nii.gz", labels, stack)))
    data = np.asarray(image.dataobj).transpose(2, 1, 0)  # (Z, Y, X)
    assert data.shape == (5, 6, 5) and not data[2].any()
    np.testing.assert_array_equal(data[[0, 1, 3, 4]], labels)
    for z, position in zip((0, 1, 3, 4), positions):  # each slice's first voxel where it was acquired
        np.testing.assert_allclose(image.affine @ [0, 0, z, 1], [10.0 + position, -20.0, 5.0, 1.0])
    regular = Stack(
        np.ones((4, 6, 5), np.float32), (8.0, 1.5, 1.5), affine=affine, slice_positions=np.array([0.0, 8.0, 16.0, 24.0])
    )
    again = nib.load(str(write_nifti_labels(tmp_path / "regular.nii.gz", labels, regular)))
    assert again.shape == (5, 6, 4)  # a regular stack is written as it is
