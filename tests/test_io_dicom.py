"""DICOM reader and writers: synthetic round trips, Sunnybrook, SEG, inspect, the bad-input corpus."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import ReadError, WriteError
from cmrsdk.io import (
    inspect,
    read_dicom_study,
    read_nifti_stack,
    read_study,
    read_sunnybrook,
    write_acdc_patient,
    write_dicom_seg,
    write_dicom_series,
    write_json,
    write_nifti_labels,
)
from cmrsdk.io.sunnybrook import polygon_mask
from cmrsdk.synth import synthetic_study


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    study = synthetic_study(7, n_slices=6, shape=(48, 56), n_phases=3, apex_first=True)
    folder = tmp_path_factory.mktemp("dicom") / "series"
    write_dicom_series(folder, study)
    return folder, study


def test_dicom_round_trip_geometry_and_pixels(series: tuple[Path, object]) -> None:
    folder, study = series
    read = read_dicom_study(folder)
    assert len(read.phases) == 3 and read.ed_index == 0 and read.es_index is None
    for got, want in zip(read.phases, study.phases):
        assert got.shape == want.shape and len(got.source_files) == want.shape[0]
        np.testing.assert_allclose(got.spacing, want.spacing, rtol=1e-9)
        # the reader sorts slices ascending along the DICOM normal, whatever the file order
        assert np.all(np.diff(got.slice_positions) > 0)
        flipped = float(got.affine[:3, 0] @ want.affine[:3, 0]) < 0
        last = want.shape[0] - 1
        for z, y, x in [(0, 0, 0), (last, 5, 9), (2, 47, 55)]:
            np.testing.assert_allclose(
                got.affine @ [z, y, x, 1], want.affine @ [last - z if flipped else z, y, x, 1], atol=1e-6
            )
        expected = want.pixels[::-1] if flipped else want.pixels
        step = (want.pixels.max() - want.pixels.min()) / 65535
        np.testing.assert_allclose(got.pixels, expected, atol=step)
    np.testing.assert_allclose(read.trigger_times_ms, study.trigger_times_ms)
    assert read_study(folder).info.series_uid == read.info.series_uid


def test_series_selection_prefers_the_cine(series: tuple[Path, object], tmp_path: Path) -> None:
    folder, study = series
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed / "cine")
    single = synthetic_study(8, n_slices=1, shape=(40, 40))
    write_dicom_series(mixed / "localizer", single)
    chosen = read_dicom_study(mixed)
    assert chosen.ed.shape == study.ed.shape and len(chosen.phases) == 3
    other_uid = pydicom.dcmread(next((mixed / "localizer").iterdir())).SeriesInstanceUID
    assert read_dicom_study(mixed, series_uid=other_uid).ed.shape == (1, 40, 40)
    with pytest.raises(ReadError, match=r"series_uid '1\.2\.3' not found"):
        read_dicom_study(mixed, series_uid="1.2.3")


def test_writers_read_back_identical(series: tuple[Path, object], tmp_path: Path) -> None:
    folder, study = series
    source = read_dicom_study(folder).ed
    labels = study.ed.labels[::-1].copy()  # any label map on the source grid
    write_nifti_labels(tmp_path / "labels.nii.gz", labels, source)
    back = read_nifti_stack(tmp_path / "labels.nii.gz", tmp_path / "labels.nii.gz")
    np.testing.assert_array_equal(back.labels, labels)
    np.testing.assert_allclose(back.affine, source.affine, atol=1e-4)

    import highdicom as hd

    write_dicom_seg(tmp_path / "seg.dcm", labels, source)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["LVBP", "LVM", "RVBP"]
    sop_uids = [pydicom.dcmread(f).SOPInstanceUID for f in source.source_files]
    volume = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, combine_segments=True)
    np.testing.assert_array_equal(volume, labels)
    raw = pydicom.dcmread(tmp_path / "seg.dcm")
    assert (
        raw.Modality == "SEG"
        and raw.ReferencedSeriesSequence[0].SeriesInstanceUID
        == pydicom.dcmread(source.source_files[0]).SeriesInstanceUID
    )

    write_json(tmp_path / "report.json", {"ef": np.float32(0.5), "volumes": np.arange(3)})
    assert json.loads((tmp_path / "report.json").read_text()) == {"ef": 0.5, "volumes": [0, 1, 2]}
    with pytest.raises(WriteError, match=r"report\.json: report cannot be written as JSON"):
        write_json(tmp_path / "report.json", {"bad": float("nan")})
    assert json.loads((tmp_path / "report.json").read_text())["ef"] == 0.5  # the old file survives
    assert not list(tmp_path.glob(".*tmp*"))


def test_acdc_layout_and_inspect(tmp_path: Path) -> None:
    study = synthetic_study(9, n_slices=7, shape=(50, 50))
    write_acdc_patient(tmp_path / "patient900", study)
    report = inspect(tmp_path / "patient900")
    assert report["format"] == "acdc" and report["slices"] == 7 and report["ed_index"] == 0 and report["es_index"] == 1
    np.testing.assert_allclose(report["spacing_mm"], np.round(study.ed.spacing, 4))
    back = read_study(tmp_path / "patient900")
    np.testing.assert_array_equal(back.es.labels, study.es.labels)


def test_sunnybrook_reads_with_contours(shared_data: Path) -> None:
    root = shared_data / "sunnybrook"
    for patient, contours, n_slices in [("SCD0000101", "SC-HF-I-1", 12), ("SCD0000201", "SC-HF-I-2", 13)]:
        study = read_sunnybrook(root / patient, root / "contours" / contours)
        assert len(study.phases) == 20 and study.ed.shape == (n_slices, 256, 256)
        np.testing.assert_allclose(study.ed.spacing[1:], 1.367188)
        assert study.ed.spacing[0] == pytest.approx(10.0, abs=0.01)
        assert np.all(np.diff(study.trigger_times_ms) > 0)
        # geometry: each slice's first pixel is where its file's ImagePositionPatient says (LPS -> RAS)
        for z in (0, n_slices - 1):
            ipp = np.array(pydicom.dcmread(study.ed.source_files[z]).ImagePositionPatient, dtype=float)
            np.testing.assert_allclose(study.ed.affine @ [z, 0, 0, 1], [-ipp[0], -ipp[1], ipp[2], 1], atol=0.01)
        ed = study.ed.labels
        assert np.count_nonzero(ed == 1) > 5000 and np.count_nonzero(ed == 2) > 3000
        assert study.es.labels is not None and np.count_nonzero(study.es.labels == 1) < np.count_nonzero(ed == 1)
        assert inspect(root / patient)["phases"] == 20


def test_polygon_mask_against_analytic_square() -> None:
    square = np.array([[2.5, 1.5], [6.5, 1.5], [6.5, 4.5], [2.5, 4.5]])  # x 3..6, y 2..4
    expected = np.zeros((8, 9), dtype=bool)
    expected[2:5, 3:7] = True
    np.testing.assert_array_equal(polygon_mask(square, (8, 9)), expected)


# --- bad input corpus -----------------------------------------------------------------------------


def _copy(series: tuple[Path, object], tmp_path: Path) -> tuple[Path, list[Path]]:
    target = tmp_path / "copy"
    shutil.copytree(series[0], target)
    return target, sorted(target.iterdir())


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ReadError, match=r"no DICOM image files found \(0 files searched\)"):
        read_dicom_study(tmp_path)


def test_non_image_and_non_dicom(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.11", pydicom.uid.generate_uid()  # basic text SR
    ds.PatientID = "X"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    with pytest.raises(ReadError, match=r"report\.dcm: DICOM file without image data"):
        read_dicom_study(tmp_path)


def test_truncated_file(series: tuple[Path, object], tmp_path: Path) -> None:
    folder, files = _copy(series, tmp_path)
    data = files[3].read_bytes()
    files[3].write_bytes(data[: len(data) - 500])
    with pytest.raises(ReadError, match=rf"{files[3].name}: pixel data cannot be decoded"):
        read_dicom_study(folder)
    files[4].write_bytes(data[:300])
    with pytest.raises(
        ReadError, match=rf"{files[4].name}: (DICOM header cannot be read|image header .* truncated file\?)"
    ):
        read_dicom_study(folder)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: delattr(ds, "PixelSpacing"), r"'PixelSpacing' \(0028,0030\) is missing"),
        (
            lambda ds: setattr(ds, "PixelSpacing", [2.0, 2.0]),
            r"mixed pixel sizes in one series: 'PixelSpacing' \[2\.0, 2\.0\]",
        ),
        (lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), r"mixed orientations in one series"),
    ],
)
def test_broken_geometry(series: tuple[Path, object], tmp_path: Path, change, message: str) -> None:
    folder, files = _copy(series, tmp_path)
    ds = pydicom.dcmread(files[2])
    change(ds)
    ds.save_as(files[2])
    with pytest.raises(ReadError, match=message):
        read_dicom_study(folder)


def test_duplicate_slice_positions(series: tuple[Path, object], tmp_path: Path) -> None:
    folder, files = _copy(series, tmp_path)
    ds = pydicom.dcmread(files[1])
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "dup.dcm")
    with pytest.raises(ReadError, match=r"differing numbers of phases|duplicate slice position"):
        read_dicom_study(folder)
    for f in files[6:]:  # keep one phase only: then the copy is a plain duplicate
        f.unlink()
    with pytest.raises(ReadError, match=r"duplicate slice position: 2 images at the same position"):
        read_dicom_study(folder)
