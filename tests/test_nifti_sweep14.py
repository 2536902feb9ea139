"""A researcher's own label maps and files (runs/redteam14, sweep 14): the NIfTI readers' part.

Label maps coded the other way round (F2), a label map given as an image (F11), slice sizes only
in the sform (F13), an Analyze pair in a case folder (F14), a label map stored in another voxel
order or without a position (F12).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from cmrsdk.cli import main
from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import read_acdc_patient, read_nifti_stack, read_study

#: in-plane and slice voxel sizes of the synthetic heart (mm)
PIXEL_MM, SLICE_MM = 1.5, 8.0


def _heart(shape: tuple[int, int, int] = (64, 64, 4), lv: int = 3, rv: int = 1) -> np.ndarray:
    """uint8 (X, Y, Z) label map: an LV blood pool (``lv``) inside a myocardial ring (2), an RV
    blood pool (``rv``) beside it, touching the ring on its septal side only (ACDC codes by default)."""
    x, y = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, dtype=np.uint8)
    r_lv = np.hypot(x - 32, y - 26)
    r_rv = np.hypot(x - 32, y - 44)
    for z in range(shape[2]):
        labels[..., z][(r_lv >= 8) & (r_lv < 12)] = 2
        labels[..., z][r_lv < 8] = lv
        labels[..., z][(r_rv < 8) & (r_lv >= 12)] = rv
    return labels


def _affine() -> np.ndarray:
    return np.diag([PIXEL_MM, PIXEL_MM, SLICE_MM, 1.0])


def _image(shape: tuple[int, int, int] = (64, 64, 4), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100.0, 20.0, size=shape).astype(np.float32)


def _acdc_folder(root: Path, lv: int, rv: int) -> Path:
    """An ACDC patient folder (Info.cfg, ED frame 1, ES frame 2) whose _gt maps code LV as ``lv``, RV as ``rv``."""
    folder = root / "patient001"
    folder.mkdir(parents=True)
    (folder / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\nHeight: 180\nWeight: 80\n")
    for frame in (1, 2):
        nib.save(nib.Nifti1Image(_image(seed=frame), _affine()), str(folder / f"patient001_frame{frame:02d}.nii.gz"))
        nib.save(
            nib.Nifti1Image(_heart(lv=lv, rv=rv), _affine()), str(folder / f"patient001_frame{frame:02d}_gt.nii.gz")
        )
    return folder


def test_blood_pools_coded_the_other_way_round_are_refused_naming_file_and_remedy(tmp_path: Path) -> None:
    folder = _acdc_folder(tmp_path, lv=1, rv=3)  # M&Ms codes in an ACDC folder
    with pytest.raises(
        ReadError, match=r"patient001_frame01_gt\.nii\.gz: label map looks coded the other way round"
    ) as info:
        read_acdc_patient(folder)
    message = str(info.value)
    assert "'acdc' convention" in message and "--label-convention mnms" in message
    assert "stored as 1, read as RV blood pool, is ringed by myocardium on 100 %" in message

    study = read_study(folder, convention="mnms")  # said: read as coded
    lv_ml = np.count_nonzero(study.ed.labels == 1) * PIXEL_MM**2 * SLICE_MM / 1000
    assert lv_ml == pytest.approx(np.count_nonzero(_heart() == 3) * PIXEL_MM**2 * SLICE_MM / 1000)
    assert np.count_nonzero(study.ed.labels == 3) == np.count_nonzero(_heart() == 1)


def test_blood_pools_coded_as_the_layout_says_read_unchanged(tmp_path: Path) -> None:
    study = read_acdc_patient(_acdc_folder(tmp_path, lv=3, rv=1))
    assert np.count_nonzero(study.ed.labels == 1) == np.count_nonzero(_heart() == 3)  # canonical 1: LV


def test_every_shared_label_map_passes_the_side_check(shared_data: Path) -> None:
    """The rule's margin was measured on these (SIDES_MARGIN): none may be refused."""
    folders = sorted((shared_data / "acdc" / "training").glob("patient*")) + sorted(
        p for p in (shared_data / "mnms").iterdir() if p.is_dir()
    )
    for folder in folders:
        study = read_study(folder)
        assert study.ed.labels is not None and study.ed.labels.max() == 3, folder


def test_segment_label_convention_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _acdc_folder(tmp_path / "in", lv=1, rv=3)
    assert main(["segment", str(folder), "-o", str(tmp_path / "refused"), "--no-overlay", "--no-report-html"]) == 1
    assert "--label-convention mnms" in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "said"
    assert main(["segment", str(folder), "-o", str(out), "--label-convention", "mnms", "--no-overlay"]) == 0
    assert json.loads((out / "report.json").read_text())["study"]["source"] == str(folder)


def test_batch_label_convention_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The batch reads a cohort's label maps as segment does: refused, then read when told how."""
    _acdc_folder(tmp_path / "cohort", lv=1, rv=3)
    out = tmp_path / "out"
    args = ["batch", str(tmp_path / "cohort"), "-o", str(out), "--workers", "1", "--no-progress", "--no-overlay"]
    assert main(args) == 1
    assert "--label-convention mnms (cmrsdk segment, batch, evaluate)" in capsys.readouterr().err
    # the convention decides whether a study is read, not its numbers: the failure is kept until retried
    assert main([*args, "--label-convention", "mnms", "--retry-failed"]) == 0
    rows = (out / "measures.csv").read_text().splitlines()
    assert len(rows) == 2 and ",ok," in rows[1]


def test_a_label_map_given_as_an_image_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "case001_ES_label.nii.gz"
    nib.save(nib.Nifti1Image(_heart().astype(np.float32), _affine()), str(path))
    with pytest.raises(
        ReadError, match=r"case001_ES_label\.nii\.gz: holds only the values \[0, 1, 2, 3\]: a label map"
    ):
        read_study(path)
    blank = tmp_path / "blank.nii.gz"  # one value: a blank image, read (and found empty downstream)
    nib.save(nib.Nifti1Image(np.zeros((64, 64, 4), np.float32), _affine()), str(blank))
    assert read_study(blank).phases[0].pixels.max() == 0
    few = tmp_path / "six_values.nii.gz"  # six grey values: an image
    nib.save(nib.Nifti1Image((np.arange(64 * 64 * 4) % 6).reshape(64, 64, 4).astype(np.int16), _affine()), str(few))
    assert read_study(few).phases[0].pixels.max() == 5


def test_slice_axis_found_from_the_sform_where_pixdim_is_unit(tmp_path: Path) -> None:
    """Slices on array axis 0, pixdim 1 1 1, the sizes only in the sform (F13): read as the stack."""
    data = np.moveaxis(_image(), 2, 0)  # (Z, Y, X) stored as (i, j, k)
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = SLICE_MM, PIXEL_MM, PIXEL_MM, 1.0
    image = nib.Nifti1Image(data, affine)
    image.header.set_zooms((1.0, 1.0, 1.0))
    path = tmp_path / "axis0.nii.gz"
    nib.save(image, str(path))
    with pytest.warns(CmrWarning, match="the slice axis is array axis 1"):
        stack = read_nifti_stack(path)
    assert stack.shape == (4, 64, 64)
    assert stack.spacing == pytest.approx((SLICE_MM, PIXEL_MM, PIXEL_MM))


def test_a_label_map_in_another_voxel_order_or_without_position_is_taken_on_the_image_grid(tmp_path: Path) -> None:
    image = tmp_path / "img.nii.gz"
    affine = _affine()
    affine[:3, 3] = [-40.0, 10.0, 5.0]
    nib.save(nib.Nifti1Image(_image(), affine), str(image))
    expected = read_nifti_stack(
        image, _save_labels(tmp_path / "same.nii.gz", nib.Nifti1Image(_heart(), affine)), convention="acdc"
    )

    flipped = nib.Nifti1Image(_heart(), affine).as_reoriented(np.array([[0, -1], [1, 1], [2, 1]]))
    with pytest.warns(CmrWarning, match="in another voxel order; reoriented"):
        stack = read_nifti_stack(image, _save_labels(tmp_path / "flipped.nii.gz", flipped), convention="acdc")
    np.testing.assert_array_equal(stack.labels, expected.labels)

    unplaced = nib.Nifti1Image(_heart(), None)
    unplaced.header.set_zooms((PIXEL_MM, PIXEL_MM, SLICE_MM))
    unplaced.header.set_sform(None, code=0)
    unplaced.header.set_qform(None, code=0)
    with pytest.warns(CmrWarning, match=r"no position \(sform and qform codes 0\)"):
        stack = read_nifti_stack(image, _save_labels(tmp_path / "unplaced.nii.gz", unplaced), convention="acdc")
    np.testing.assert_array_equal(stack.labels, expected.labels)

    moved = nib.Nifti1Image(_heart(), affine + _shift(20.0))
    with pytest.raises(ReadError, match=r"moved\.nii\.gz: label map affine differs .* by up to 20"):
        read_nifti_stack(image, _save_labels(tmp_path / "moved.nii.gz", moved))


def _shift(mm: float) -> np.ndarray:
    shift = np.zeros((4, 4))
    shift[0, 3] = mm
    return shift


def _save_labels(path: Path, image: nib.Nifti1Image) -> Path:
    nib.save(image, str(path))
    return path


def test_an_analyze_pair_in_a_case_folder_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "patient001"
    folder.mkdir()
    (folder / "Info.cfg").write_text("ED: 1\nES: 2\n")
    nib.save(nib.Nifti1Pair(_image(), _affine()), str(folder / "patient001_frame01.hdr"))
    with pytest.raises(
        ReadError, match=r"Analyze / NIfTI-1 pair\(s\) \(\.hdr \+ \.img\) such as patient001_frame01\.hdr"
    ):
        read_acdc_patient(folder)


def test_labels_are_written_in_the_voxel_order_of_their_source(tmp_path: Path) -> None:
    """A source with its slices on array axis 0 (F15): labels_*.nii.gz holds the same array order,
    so it compares voxel by voxel with the user's own maps, and reads back as the stack's labels."""
    from cmrsdk.io import write_nifti_labels

    heart = _heart()
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2], affine[3, 3] = SLICE_MM, PIXEL_MM, PIXEL_MM, 1.0
    source = tmp_path / "zyx.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(_image(), 2, 0), affine), str(source))
    users = tmp_path / "zyx_gt.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(heart, 2, 0), affine), str(users))
    with pytest.warns(CmrWarning, match="slice axis"):
        stack = read_nifti_stack(source, users, convention="acdc")
    written = write_nifti_labels(tmp_path / "labels.nii.gz", stack.labels, stack)
    image = nib.load(str(written))
    assert image.shape == (4, 64, 64)
    np.testing.assert_allclose(image.affine, affine, atol=1e-5)
    canonical = np.asarray(image.dataobj)
    np.testing.assert_array_equal(canonical == 1, np.moveaxis(heart, 2, 0) == 3)  # LV where the user's map has it
    with pytest.warns(CmrWarning, match="slice axis"):
        again = read_nifti_stack(source, written)
    np.testing.assert_array_equal(again.labels, stack.labels)


def test_evaluate_label_convention_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _acdc_folder(tmp_path / "in", lv=1, rv=3)
    args = ["evaluate", "--data", str(folder), "--modes", "baseline"]
    assert main([*args, "-o", str(tmp_path / "refused")]) == 2
    assert "--label-convention mnms" in capsys.readouterr().err
    assert main([*args, "-o", str(tmp_path / "said"), "--label-convention", "mnms"]) == 0
    assert (tmp_path / "said" / "report.md").is_file()


def test_label_convention_leaves_dicom_and_cines_read_as_they_are(tmp_path: Path) -> None:
    """--label-convention was handed to every input: a DICOM series was refused ("options
    ['convention'] do not apply") and a 4-D cine read as one 3-D stack and refused (review 16)."""
    from cmrsdk.io import write_dicom_series
    from cmrsdk.phantom import cine_phantom

    truth = cine_phantom(seed=1, n_phases=5)
    write_dicom_series(tmp_path / "dicom", truth)
    frames = np.stack([np.moveaxis(p.pixels, 0, 2) for p in truth.phases], axis=-1)  # (X?, Y?, Z, T) order
    nib.save(nib.Nifti1Image(frames.astype(np.float32), np.diag([1.5, 1.5, 8.0, 1.0])), str(tmp_path / "cine.nii.gz"))
    argv = ["segment", str(tmp_path / "dicom"), str(tmp_path / "cine.nii.gz"), "-o", str(tmp_path / "out")]
    assert main([*argv, "--label-convention", "acdc", "--no-overlay", "--no-report-html"]) == 0
    report = json.loads((tmp_path / "out" / "cine" / "report.json").read_text())
    assert len(report["phases"]) == 5  # still a cine


def test_a_volume_curve_of_zeros_draws_an_empty_chart() -> None:
    """A cine in which no heart was found: the chart divided by its top, 0 (review 16)."""
    from cmrsdk.report_html import volume_curve_svg

    svg = volume_curve_svg([0.0] * 5, [0.0] * 5, None, 0, 2)
    assert svg.startswith("<svg") and "nan" not in svg
