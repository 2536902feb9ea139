"""DICOM reader and writers: synthetic round trips, Sunnybrook, SEG, inspect, the bad-input corpus."""

from __future__ import annotations

import warnings

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import CmrWarning, ReadError, WriteError
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
    # the first phase is the R-wave frame; segment measures where the LV volume curve says
    assert inspect(folder)["ed_es_from"] == "lv_volume"
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
    import nibabel as nib

    written = nib.load(str(tmp_path / "labels.nii.gz"))  # an image on the labels' grid, to read them with
    image = np.random.default_rng(0).normal(100, 10, written.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, written.affine, written.header), str(tmp_path / "image.nii.gz"))
    back = read_nifti_stack(tmp_path / "image.nii.gz", tmp_path / "labels.nii.gz")
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
    assert report["ed_es_from"] == "input"
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
    with pytest.raises(ReadError, match=r"report\.dcm: DICOM file that is no image to segment"):
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


@pytest.mark.parametrize("syntax", ["JPEGLSLossless", "JPEG2000Lossless", "RLELossless"])
def test_a_damaged_compressed_frame_is_refused(series: tuple[Path, object], tmp_path: Path, syntax: str) -> None:
    """A JPEG-LS frame cut to half or a JPEG 2000 frame zeroed after 200 bytes decodes without an
    error, half the rows or all of them wrong (the sweep of session 38: LVEF 29.5 -> 41.8 %);
    such a frame is refused naming the file. Intact compressed files read as the originals."""
    from pydicom.encaps import encapsulate, generate_frames

    folder, files = _copy(series, tmp_path)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(getattr(pydicom.uid, syntax))
        ds.save_as(f, enforce_file_format=True)
    intact = read_dicom_study(folder)
    np.testing.assert_array_equal(intact.ed.pixels, read_dicom_study(series[0]).ed.pixels)
    ds = pydicom.dcmread(files[3])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    damaged = frame[: len(frame) // 2] if syntax == "JPEGLSLossless" else frame[:200] + bytes(len(frame) - 200)
    ds.PixelData = encapsulate([damaged])
    ds.save_as(files[3], enforce_file_format=True)
    message = "is damaged: its frame does not end with the end-of-image marker FF D9"
    if syntax == "RLELossless":  # RLE has no end marker: its decoder finds the damage itself
        message = "pixel data cannot be decoded"
    with pytest.raises(ReadError, match=rf"{files[3].name}: .*{message}"):
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


# -- enhanced multi-frame MR ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def enhanced(series: tuple[Path, object], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic series as highdicom's Legacy Converted Enhanced MR, and as an Enhanced MR
    Image with its frames shuffled and timing and rescale in the scanner's functional groups."""
    from _enhanced import as_enhanced_mr, legacy_converted

    folder, _ = series
    files = sorted(folder.glob("*.dcm"))
    root = tmp_path_factory.mktemp("enhanced")
    legacy = legacy_converted(files, root / "legacy" / "cine.dcm")
    scanner = root / "scanner" / "cine.dcm"
    scanner.parent.mkdir()
    shutil.copy(legacy, scanner)
    scanner = as_enhanced_mr(scanner, shuffle_seed=3)
    # Philips keeps the pixel measures and orientation in each frame's groups, not the shared one
    philips = root / "philips" / "cine.dcm"
    philips.parent.mkdir()
    ds = pydicom.dcmread(scanner)
    shared = ds.SharedFunctionalGroupsSequence[0]
    for group in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
        for item in ds.PerFrameFunctionalGroupsSequence:
            setattr(item, group, copy.deepcopy(shared[group].value))
        delattr(shared, group)
    ds.save_as(philips)
    return {"legacy": legacy, "scanner": scanner, "philips": philips}


@pytest.mark.parametrize("kind", ["legacy", "scanner"])
def test_enhanced_multiframe_reads_as_the_classic_series(series, enhanced, kind: str) -> None:
    folder, _ = series
    classic = read_dicom_study(folder)
    multi = read_dicom_study(enhanced[kind].parent)
    assert len(multi.phases) == len(classic.phases) == 3
    np.testing.assert_allclose(multi.trigger_times_ms, classic.trigger_times_ms)
    assert multi.info.study_uid == classic.info.study_uid
    source = pydicom.dcmread(enhanced[kind])
    frames = source.pixel_array
    transform = (
        source.PerFrameFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
        or source.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    )[0]
    for got, want in zip(multi.phases, classic.phases):
        np.testing.assert_array_equal(got.pixels, want.pixels)  # same stored values, same rescale
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-6)
        np.testing.assert_allclose(got.slice_positions, want.slice_positions, atol=1e-6)
        assert got.spacing == pytest.approx(want.spacing)
        assert got.source_files == (str(enhanced[kind]),) * got.shape[0]
        assert len(set(got.source_frames)) == got.shape[0]
        # each slice names the frame its pixels came from
        for z, frame in enumerate(got.source_frames):
            stored = frames[frame - 1].astype(np.float32)
            expected = stored * np.float32(transform.RescaleSlope) + np.float32(transform.RescaleIntercept)
            np.testing.assert_array_equal(got.pixels[z], expected)
    assert [s.n_images for s in __import__("cmrsdk.io", fromlist=["x"]).scan_dicom_series(enhanced[kind])] == [18]


def _concatenation(source: Path, folder: Path, parts: int, *, keep: int | None = None, untimed: bool = False) -> None:
    """``source``'s frames split over ``parts`` files of one concatenation (PS3.3 C.7.6.16.2.2.4),
    as Siemens XA and Philips store big series; only the first ``keep`` parts written."""
    ds = pydicom.dcmread(source)
    frames = ds.pixel_array
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    if untimed:  # no trigger delay, no TemporalPositionIndex: ordered by frame number alone
        for group in groups:
            for item in group.get("UnassignedPerFrameConvertedAttributesSequence", []):
                if "TriggerTime" in item:
                    del item.TriggerTime
    bounds = np.linspace(0, len(groups), parts + 1).astype(int)
    folder.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]), start=1):
        if keep is not None and n > keep:
            break
        part = copy.deepcopy(ds)
        part.PerFrameFunctionalGroupsSequence = groups[a:b]
        part.NumberOfFrames = int(b - a)
        part.PixelData = np.ascontiguousarray(frames[a:b]).tobytes()
        part.ConcatenationUID, part.SOPInstanceUIDOfConcatenationSource = uid, ds.SOPInstanceUID
        part.InConcatenationNumber, part.InConcatenationTotalNumber = n, parts
        part.ConcatenationFrameOffsetNumber = int(a)
        part.SOPInstanceUID = part.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        part.save_as(folder / f"IM{n:06d}")


def test_a_concatenation_reads_whole_refused_with_a_part_missing(series, enhanced, tmp_path: Path) -> None:
    """A concatenation lacking a part was measured on the parts there (8 of 12 slices: LVEF 39.1 %
    for 31.7, exit 0), and one without timing refused as copies (its parts share one
    InstanceNumber) (sweep 39)."""
    folder, _ = series
    classic = read_dicom_study(folder)
    _concatenation(enhanced["legacy"], tmp_path / "whole", 3)
    _concatenation(enhanced["legacy"], tmp_path / "untimed", 3, untimed=True)
    for name in ("whole", "untimed"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CmrWarning)
            study = read_dicom_study(tmp_path / name)
        assert len(study.phases) == len(classic.phases) == 3
        for got, want in zip(study.phases, classic.phases):
            np.testing.assert_array_equal(got.pixels, want.pixels)
    _concatenation(enhanced["legacy"], tmp_path / "short", 3, keep=2)
    with pytest.raises(ReadError, match=r"part\(s\) 3 of the 3 files of concatenation .* are missing"):
        read_dicom_study(tmp_path / "short")


def test_a_screen_save_in_the_cines_series_is_left_out(series, tmp_path: Path) -> None:
    """A Secondary Capture without geometry stored in the cine's own series zeroed that series'
    geometry: the cine vanished and a one-slice long-axis series was measured, exit 0 (sweep 39)."""
    folder, _ = series
    for file in folder.glob("*.dcm"):
        shutil.copy(file, tmp_path / file.name)
    screen = pydicom.dcmread(next(folder.glob("*.dcm")))
    screen.SOPClassUID = screen.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    screen.SOPInstanceUID = screen.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient"):
        delattr(screen, keyword)
    screen.save_as(tmp_path / "screen_save.dcm")
    with pytest.warns(CmrWarning, match=r"screen_save\.dcm: 1 Secondary Capture image\(s\) without .* left out"):
        study = read_dicom_study(tmp_path)
    classic = read_dicom_study(folder)
    assert len(study.phases) == len(classic.phases) == 3
    np.testing.assert_array_equal(study.phases[0].pixels, classic.phases[0].pixels)


def test_enhanced_files_of_one_frame_without_timing_keep_their_files_order(series, enhanced, tmp_path: Path) -> None:
    """One frame per file, no trigger delay and no TemporalPositionIndex (an export that dropped
    them): each frame's number restarted at 1, and the series was refused as copies of its files
    (sweep 38); the files' own InstanceNumbers order the phases, as for classic images."""
    folder, _ = series
    classic = read_dicom_study(folder)
    ds = pydicom.dcmread(enhanced["scanner"])
    frames = ds.pixel_array
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    delays = sorted({float(g.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime) for g in groups})
    for i, group in enumerate(groups):
        one = copy.deepcopy(ds)
        phase = delays.index(float(group.CardiacSynchronizationSequence[0].NominalCardiacTriggerDelayTime))
        del group.CardiacSynchronizationSequence
        one.PerFrameFunctionalGroupsSequence = [group]
        one.NumberOfFrames = 1
        one.PixelData = np.ascontiguousarray(frames[i]).tobytes()
        one.InstanceNumber = phase * 100 + i + 1  # the phase order, as a scanner numbers its images
        one.SOPInstanceUID = one.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        one.save_as(tmp_path / f"IM_{i:04d}")
    with pytest.warns(CmrWarning, match="phases ordered by InstanceNumber"):
        split = read_dicom_study(tmp_path)
    assert len(split.phases) == len(classic.phases) == 3
    for got, want in zip(split.phases, classic.phases):
        np.testing.assert_array_equal(got.pixels, want.pixels)


@pytest.mark.parametrize("kind", ["scanner", "philips"])
def test_enhanced_multiframe_seg_references_each_slices_own_frame(series, enhanced, tmp_path: Path, kind: str) -> None:
    """ "philips": the geometry in each frame's groups, where highdicom does not look (sweep 38:
    "'Dataset' object has no attribute 'PixelMeasuresSequence'", and every output lost)."""
    import highdicom as hd

    _, study = series
    source = read_dicom_study(enhanced[kind])
    for t in (0, 2):
        stack = source.phases[t]
        labels = study.phases[t].labels[::-1].copy()  # the reader stacks apex last: any label map will do
        write_dicom_seg(tmp_path / f"seg{t}.dcm", labels, stack)
        seg = hd.seg.segread(tmp_path / f"seg{t}.dcm")
        uid = pydicom.dcmread(enhanced[kind], stop_before_pixels=True).SOPInstanceUID
        back = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=uid, source_frame_numbers=list(stack.source_frames), combine_segments=True
        )
        np.testing.assert_array_equal(back, labels)
        own = set(stack.source_frames)
        for item in seg.PerFrameFunctionalGroupsSequence:
            references = item.DerivationImageSequence[0].SourceImageSequence
            assert len(references) == 1 and int(references[0].ReferencedFrameNumber) in own
    if shutil.which("dciodvfy") is not None:
        import subprocess

        result = subprocess.run(["dciodvfy", str(tmp_path / "seg0.dcm")], capture_output=True, text=True, timeout=120)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []


def test_enhanced_multiframe_with_two_stacks_reads_its_short_axis_stack(series, enhanced, tmp_path: Path) -> None:
    """One file holding the short-axis cine (StackID 1) and two slices of another view (StackID 2,
    another orientation): each stack is a series of its own, and the short-axis one is read."""
    import copy

    from cmrsdk.io import scan_dicom_series

    folder, _ = series
    ds = pydicom.dcmread(enhanced["legacy"])
    frames = ds.pixel_array
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    positions = [tuple(g.PlanePositionSequence[0].ImagePositionPatient) for g in groups]
    two = sorted(set(positions))[:2]
    extra = [i for i, p in enumerate(positions) if p in two]  # two slice positions, every phase
    other_view = pydicom.Dataset()
    other_view.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    added = []
    for i in extra:
        item = copy.deepcopy(groups[i])
        item.PlaneOrientationSequence = [copy.deepcopy(other_view)]
        added.append(item)
    for stack, items in (("1", groups), ("2", added)):
        for item in items:
            content = item.FrameContentSequence[0] if "FrameContentSequence" in item else pydicom.Dataset()
            content.StackID = stack
            item.FrameContentSequence = [content]
    ds.PerFrameFunctionalGroupsSequence = groups + added
    ds.NumberOfFrames = len(groups) + len(added)
    ds.PixelData = np.ascontiguousarray(np.concatenate([frames, frames[extra]])).tobytes()
    target = tmp_path / "two_stacks" / "cine.dcm"
    target.parent.mkdir()
    ds.save_as(target)

    uid = str(ds.SeriesInstanceUID)
    found = {s.series_uid: (s.n_positions, s.n_phases) for s in scan_dicom_series(target.parent)}
    assert found == {f"{uid}#stack1": (6, 3), f"{uid}#stack2": (2, 3)}
    got, classic = read_dicom_study(target.parent), read_dicom_study(folder)
    assert got.info.series_uid == f"{uid}#stack1"
    for a, b in zip(got.phases, classic.phases, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_allclose(a.affine, b.affine, atol=1e-6)
    assert max(f for phase in got.phases for f in phase.source_frames) <= len(groups)  # stack 1's frames only
    import highdicom as hd  # its SEG references the short-axis stack's own frames of the file

    _, study = series
    stack, labels = got.phases[0], study.phases[0].labels[::-1].copy()
    write_dicom_seg(tmp_path / "seg.dcm", labels, stack)
    back = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_frame(
        source_sop_instance_uid=str(ds.SOPInstanceUID),
        source_frame_numbers=list(stack.source_frames),
        combine_segments=True,
    )
    np.testing.assert_array_equal(back, labels)


def _with_components(source: Path, target: Path, extra: str | None, own: str = "MAGNITUDE") -> Path:
    """``source``'s frames named ``own``, followed (when ``extra``) by a copy of each named
    ``extra`` whose pixels are scrambled, as a scanner storing magnitude and phase in one file."""
    import copy

    ds = pydicom.dcmread(source)
    frames = ds.pixel_array
    groups = list(ds.PerFrameFunctionalGroupsSequence)
    added = [copy.deepcopy(g) for g in groups] if extra else []
    for items, component in ((groups, own), (added, extra)):
        for item in items:
            frame_type = pydicom.Dataset()
            frame_type.FrameType = ["ORIGINAL", "PRIMARY", "M" if component == "MAGNITUDE" else "P", "NONE"]
            frame_type.ComplexImageComponent = component
            item.MRImageFrameTypeSequence = [frame_type]
    ds.PerFrameFunctionalGroupsSequence = groups + added
    ds.NumberOfFrames = len(groups) + len(added)
    scrambled = np.random.default_rng(0).permutation(frames.reshape(-1)).reshape(frames.shape)
    pixels = np.concatenate([frames, scrambled]) if extra else frames
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return target


def test_enhanced_multiframe_with_phase_frames_reads_its_magnitude(series, enhanced, tmp_path: Path) -> None:
    from cmrsdk.errors import CmrWarning
    from cmrsdk.io import scan_dicom_series

    folder, _ = series
    both = _with_components(enhanced["scanner"], tmp_path / "both" / "cine.dcm", "PHASE")
    with pytest.warns(CmrWarning, match=r"cine\.dcm: 18 PHASE frame\(s\) left out .*its 18 MAGNITUDE read"):
        got = read_dicom_study(both.parent)
    classic = read_dicom_study(folder)
    for a, b in zip(got.phases, classic.phases, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert max(a.source_frames) <= 18  # the magnitude frames' own numbers
    with pytest.warns(CmrWarning, match="18 PHASE"):
        assert [s.n_images for s in scan_dicom_series(both.parent)] == [18]
    # a file that names its frames all MAGNITUDE is read whole, without a word
    plain = _with_components(enhanced["scanner"], tmp_path / "plain" / "cine.dcm", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)
        np.testing.assert_array_equal(read_dicom_study(plain.parent).phases[0].pixels, classic.phases[0].pixels)
    # phase and real maps without a magnitude are refused, naming the file, the field and the counts
    maps = _with_components(enhanced["scanner"], tmp_path / "maps" / "cine.dcm", "REAL", own="PHASE")
    with pytest.raises(
        ReadError,
        match=r"cine\.dcm.*'ComplexImageComponent' \(0008,9208\) of its frames is "
        r"18 PHASE, 18 REAL: no MAGNITUDE frame",
    ):
        read_dicom_study(maps.parent)
    # told apart only by FrameType, the file saying MIXED: refused for that (sweep 38: "36 MIXED:
    # no MAGNITUDE frame", blaming a value no frame carried)
    mixed = pydicom.dcmread(both)
    for item in mixed.PerFrameFunctionalGroupsSequence:
        del item.MRImageFrameTypeSequence[0].ComplexImageComponent
    mixed.ComplexImageComponent = "MIXED"
    (tmp_path / "mixed").mkdir()
    mixed.save_as(tmp_path / "mixed" / "cine.dcm")
    with pytest.raises(ReadError, match=r"cine\.dcm.*says MIXED for the file and no frame says which it holds"):
        read_dicom_study(tmp_path / "mixed")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda ds: delattr(ds, "PerFrameFunctionalGroupsSequence"), r"has no 'PerFrameFunctionalGroupsSequence'"),
        (lambda ds: setattr(ds, "NumberOfFrames", 17), r"'NumberOfFrames' \(0028,0008\) value 17 differs from the 18"),
        (
            lambda ds: delattr(ds.PerFrameFunctionalGroupsSequence[4], "PlanePositionSequence"),
            r"cine\.dcm: frame 5: 'ImagePositionPatient' \(0020,0032\) is missing",
        ),
    ],
)
def test_enhanced_multiframe_errors_name_file_and_frame(enhanced, tmp_path: Path, change, message: str) -> None:
    target = tmp_path / "cine.dcm"
    ds = pydicom.dcmread(enhanced["legacy"])
    change(ds)
    ds.save_as(target)
    with pytest.raises(ReadError, match=message):
        read_dicom_study(tmp_path)


# -- a short-axis cine stored one series per slice -----------------------------------------------


def _series_per_slice(folder: Path, target: Path) -> list[list[Path]]:
    """Copies of the classic series with each slice position in its own series (one breath-hold
    each, as Siemens protocols store it); files by slice, in the reader's slice order."""
    target.mkdir(parents=True)
    by_position: dict[float, list[Path]] = {}
    for file in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        normal = np.cross(
            np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        )
        by_position.setdefault(round(float(np.array(ds.ImagePositionPatient, float) @ normal), 2), []).append(file)
    out = []
    for z, position in enumerate(sorted(by_position)):
        uid = pydicom.uid.generate_uid()
        files = []
        for file in by_position[position]:
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, 10 + z, f"cine_sax_{z}"
            ds.save_as(target / file.name)
            files.append(target / file.name)
        out.append(files)
    return out


def test_series_per_slice_read_as_one_stack(series, tmp_path: Path) -> None:
    folder, _ = series
    classic = read_dicom_study(folder)
    by_slice = _series_per_slice(folder, tmp_path / "study")
    stacked = read_dicom_study(tmp_path / "study")
    uids = [str(pydicom.dcmread(files[0]).SeriesInstanceUID) for files in by_slice]
    assert stacked.info.series_uid == "+".join(uids)  # in slice order
    assert len(stacked.phases) == 3
    np.testing.assert_allclose(stacked.trigger_times_ms, classic.trigger_times_ms)
    for got, want in zip(stacked.phases, classic.phases):
        np.testing.assert_array_equal(got.pixels, want.pixels)
        np.testing.assert_allclose(got.affine, want.affine, atol=1e-6)
    summaries = __import__("cmrsdk.io", fromlist=["x"]).scan_dicom_series(tmp_path / "study")
    assert summaries[0].series_uid == stacked.info.series_uid and summaries[0].n_positions == 6
    assert sorted(s.n_positions for s in summaries[1:]) == [1] * 6  # each series is still listed
    assert read_dicom_study(tmp_path / "study", series_uid=uids[2]).ed.shape == (1, 48, 56)

    # a slice acquired again (higher SeriesNumber) replaces the first, with a warning
    again = tmp_path / "study" / "again"
    again.mkdir()
    repeat_uid = pydicom.uid.generate_uid()
    for file in by_slice[2]:
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.SOPInstanceUID = repeat_uid, 40, pydicom.uid.generate_uid()
        ds.save_as(again / file.name)
    with pytest.warns(UserWarning, match=rf"series {uids[2]} images a slice position again in series {repeat_uid}"):
        repeated = read_dicom_study(tmp_path / "study")
    assert repeated.info.series_uid == "+".join(uids[:2] + [repeat_uid] + uids[3:])
    assert all(Path(f).parent == again for f in [repeated.ed.source_files[2]])


def test_series_per_slice_needs_three_alike(series, tmp_path: Path) -> None:
    folder, _ = series
    by_slice = _series_per_slice(folder, tmp_path / "study")
    for files in by_slice[2:]:
        for file in files:
            file.unlink()
    assert read_dicom_study(tmp_path / "study").ed.shape[0] == 1  # two slices are no stack
    by_slice = _series_per_slice(folder, tmp_path / "tilted")
    for file in by_slice[3]:  # another orientation: a long-axis view, never stacked with the others
        ds = pydicom.dcmread(file)
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.save_as(file)
    read = read_dicom_study(tmp_path / "tilted")
    assert read.ed.shape[0] == 5 and read.info.series_uid.count("+") == 4


def test_series_per_slice_seg_references_every_series(series, tmp_path: Path) -> None:
    import highdicom as hd

    folder, study = series
    _series_per_slice(folder, tmp_path / "study")
    source = read_dicom_study(tmp_path / "study").ed
    labels = study.ed.labels[::-1].copy()
    write_dicom_seg(tmp_path / "seg.dcm", labels, source)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    sop_uids = [pydicom.dcmread(f).SOPInstanceUID for f in source.source_files]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=sop_uids, combine_segments=True)
    np.testing.assert_array_equal(back, labels)
    assert len(seg.ReferencedSeriesSequence) == 6
    if shutil.which("dciodvfy") is not None:
        import subprocess

        result = subprocess.run(["dciodvfy", str(tmp_path / "seg.dcm")], capture_output=True, text=True, timeout=120)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []


def test_a_dynamic_series_is_never_taken_for_the_cine(series, tmp_path: Path) -> None:
    """Perfusion or mapping (one trigger delay repeated) beside the cine: the cine is read, even
    where the dynamic series has more images; alone, it is refused naming its TriggerTime span."""
    folder, study = series
    shutil.copytree(folder, tmp_path / "study" / "cine")
    dynamic = synthetic_study(11, n_slices=6, shape=(48, 56), n_phases=8)
    write_dicom_series(tmp_path / "study" / "perfusion", dynamic, series_description="SA perfusion")
    for f in sorted((tmp_path / "study" / "perfusion").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.TriggerTime = 120.0 + 0.5 * (int(ds.InstanceNumber) % 5)
        ds.save_as(f)
    chosen = read_dicom_study(tmp_path / "study")
    assert len(chosen.phases) == 3 and chosen.info.series_description == "SAX cine"
    summaries = __import__("cmrsdk.io", fromlist=["x"]).scan_dicom_series(tmp_path / "study")
    assert [s.is_dynamic for s in summaries] == [False, True] and summaries[1].trigger_span_ms == pytest.approx(2.0)
    assert summaries[0].trigger_span_ms == pytest.approx(float(np.ptp(study.trigger_times_ms)))
    listed = inspect(tmp_path / "study")["series"]
    assert [(s["dynamic"], s["trigger_span_ms"]) for s in listed] == [
        (False, round(summaries[0].trigger_span_ms, 1)),
        (True, 2.0),
    ]
    with pytest.raises(
        ReadError,
        match=r"is not a cine: its 8 images per slice position share one cardiac phase "
        r"\('TriggerTime' \(0018,1060\) spans 2\.0 ms, under 20\)",
    ):
        read_dicom_study(tmp_path / "study" / "perfusion")


def test_a_position_missing_an_image_of_a_long_cine_is_completed(tmp_path: Path) -> None:
    """An archive that lost one image of a 12-phase cine: that phase takes the nearest image in
    time at that position, with a warning; two lost, or a short cine, are refused as before."""
    study = synthetic_study(5, n_slices=5, shape=(40, 48), n_phases=12)
    folder = tmp_path / "cine"
    write_dicom_series(folder, study)
    complete = read_dicom_study(folder)
    files = {(int(f.name[:3]), int(f.name[4:7])): f for f in folder.glob("*.dcm")}  # (phase, slice) -> file
    files[(4, 2)].unlink()
    with pytest.warns(
        UserWarning, match=r"slice position \d holds 11 of 12 phases; each missing phase takes the image"
    ):
        read = read_dicom_study(folder)
    assert len(read.phases) == 12
    changed = [
        (t, z)
        for t in range(12)
        for z in range(5)
        if not np.array_equal(read.phases[t].pixels[z], complete.phases[t].pixels[z])
    ]
    assert len(changed) == 1  # only the lost image differs: phase 4 of that slice
    (t, z) = changed[0]
    assert t == 4 and any(
        np.array_equal(read.phases[4].pixels[z], complete.phases[n].pixels[z]) for n in (3, 5)
    )  # its nearest neighbour in time
    files[(7, 2)].unlink()  # two of twelve lost at one position: more than a tenth
    with pytest.raises(ReadError, match=r"slice positions hold differing numbers of phases \[10, 12\]"):
        read_dicom_study(folder)
    short = tmp_path / "short"
    write_dicom_series(short, synthetic_study(5, n_slices=5, shape=(40, 48), n_phases=6))
    next(short.glob("002_001.dcm")).unlink()
    with pytest.raises(ReadError, match=r"slice positions hold differing numbers of phases \[5, 6\]"):
        read_dicom_study(short)


def test_series_per_slice_stack_across_header_rounding(series, tmp_path: Path) -> None:
    """Orientations 2e-5 apart that round to different thousandths still stack (the reader's own
    tolerance decides, not a rounding boundary)."""
    folder, _ = series
    by_slice = _series_per_slice(folder, tmp_path / "study")
    for z, files in enumerate(by_slice):
        for file in files:
            ds = pydicom.dcmread(file)
            iop = [float(v) for v in ds.ImageOrientationPatient]
            iop[0] = round(iop[0], 3) + (0.00049 if z % 2 else 0.00051)
            ds.ImageOrientationPatient = iop
            ds.save_as(file)
    assert read_dicom_study(tmp_path / "study").ed.shape[0] == 6


def _copy_series(source: Path, target: Path, series_number: int, study_uid: str | None = None) -> str:
    """``source``'s images as a new series (new Series and SOP Instance UIDs), optionally of another study."""
    target.mkdir(parents=True)
    uid = pydicom.uid.generate_uid()
    for path in sorted(source.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesNumber = uid, series_number
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        if study_uid is not None:
            ds.StudyInstanceUID, ds.PatientID = study_uid, "OTHER"
        ds.save_as(target / path.name)
    return uid


@pytest.mark.parametrize("repeat_folder", ["a_repeat", "z_repeat"])  # the folders' order must not decide
def test_a_repeated_cine_reads_the_later_series_and_names_the_other(series, tmp_path: Path, repeat_folder) -> None:
    folder, _ = series
    first = _copy_series(folder, tmp_path / "m_first", series_number=5)
    repeat = _copy_series(folder, tmp_path / repeat_folder, series_number=17)
    with pytest.warns(CmrWarning) as caught:
        study = read_dicom_study(tmp_path)
    assert study.info.series_uid == repeat
    message = next(str(w.message) for w in caught if "short-axis cine series" in str(w.message))
    assert message.startswith(f"{tmp_path}: 2 short-axis cine series; reading {repeat} (")
    assert "SeriesNumber 17, 18 images" in message and f"not {first} ('SAX cine', SeriesNumber 5)" in message
    assert read_dicom_study(tmp_path, series_uid=first).info.series_uid == first


def test_cines_of_two_studies_in_one_folder_are_refused_naming_both(series, tmp_path: Path) -> None:
    folder, _ = series
    mine = pydicom.dcmread(next(folder.glob("*.dcm")))
    _copy_series(folder, tmp_path / "one", series_number=5)
    other_study = pydicom.uid.generate_uid()
    other = _copy_series(folder, tmp_path / "two", series_number=5, study_uid=other_study)
    with pytest.raises(ReadError) as error:
        read_dicom_study(tmp_path)
    text = str(error.value)
    assert "holds short-axis cines of 2 studies" in text
    assert f"StudyInstanceUID {mine.StudyInstanceUID} (PatientID '{mine.PatientID}')" in text
    assert f"StudyInstanceUID {other_study} (PatientID 'OTHER')" in text
    assert read_dicom_study(tmp_path, series_uid=other).info.series_uid == other  # named: read


@pytest.mark.parametrize("implicit", [True, False])
def test_bare_data_sets_without_the_preamble_read_as_their_part10_files(series, tmp_path: Path, implicit) -> None:
    """Data sets written without the preamble, 'DICM' and file meta (older systems, gateways) are
    read, pixels included, as the same images with them; a text file beside them stays ignored."""
    from pydicom.dataset import FileMetaDataset

    folder, _ = series
    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    files = sorted(bare.glob("*.dcm"))
    for path in files[::2]:  # every other image, ED and ES among them
        ds = pydicom.dcmread(path)
        ds.file_meta, ds.preamble = FileMetaDataset(), None
        pydicom.dcmwrite(path, ds, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
        assert path.read_bytes()[128:132] != b"DICM"
    (bare / "notes.txt").write_text("not DICOM\n")
    expected, got = read_dicom_study(folder), read_dicom_study(bare)
    assert len(got.phases) == len(expected.phases)
    for a, b in zip(expected.phases, got.phases):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        np.testing.assert_allclose(a.affine, b.affine)


def test_a_series_half_multi_frame_half_single_frame_is_one_error_naming_both(series, tmp_path: Path) -> None:
    from _enhanced import legacy_converted

    folder, _ = series
    files = sorted(folder.glob("*.dcm"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for path in files[6:]:
        shutil.copy(path, mixed / path.name)
    # the first six images as one Legacy Converted Enhanced MR file of the same series
    legacy_converted(files[:6], mixed / "a_enhanced.dcm", series_uid=str(pydicom.dcmread(files[0]).SeriesInstanceUID))
    with pytest.raises(ReadError) as error:
        read_dicom_study(mixed)
    text = str(error.value)
    assert text.startswith(f"{mixed / 'a_enhanced.dcm'}: series mixes multi-frame images ('SOPClassUID' (0008,0016) ")
    assert f"with single-frame ones (1.2.840.10008.5.1.4.1.1.4 in {files[6].name})" in text


def test_a_segmentation_beside_the_images_is_no_series(tmp_path):
    """cmrsdk's own SEG read back from an output folder inside the input (`segment S -o S/out`,
    run twice): a result, not images; before 0.10.0 it was a series of 3 phases and failed."""
    from cmrsdk.io import read_dicom_study, scan_dicom_series, write_dicom_seg, write_dicom_series
    from cmrsdk.synth import synthetic_study

    write_dicom_series(tmp_path / "study", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    plain = read_dicom_study(tmp_path / "study")
    labels = np.zeros(plain.phases[0].shape, np.uint8)
    labels[:, 8:16, 8:16] = 1
    (tmp_path / "study" / "out").mkdir()
    write_dicom_seg(tmp_path / "study" / "out" / "seg_ED.dcm", labels, plain.phases[0])
    again = read_dicom_study(tmp_path / "study")
    assert len(scan_dicom_series(tmp_path / "study")) == 1
    np.testing.assert_array_equal(
        np.stack([p.pixels for p in again.phases]), np.stack([p.pixels for p in plain.phases])
    )
    with pytest.raises(ReadError, match=r"seg_ED\.dcm: DICOM file that is no image to segment"):
        read_dicom_study(tmp_path / "study" / "out")


# -- a whole exam in one folder: the short-axis cine among the other series ----------------------


def _split(folder: Path, target: Path, parts: list[list[int]], numbers: list[int] | None = None) -> list[str]:
    """The classic series rewritten as one series per part (slice indices in the reader's order),
    as breath-holds of a few slices each store it; returns the parts' SeriesInstanceUIDs."""
    by_slice = _series_per_slice(folder, target / "tmp")
    uids = []
    for n, part in enumerate(parts):
        uid = pydicom.uid.generate_uid()
        uids.append(uid)
        for z in part:
            for file in by_slice[z]:
                ds = pydicom.dcmread(file)
                ds.SeriesInstanceUID, ds.SeriesDescription = uid, f"cine part {n + 1}"
                ds.SeriesNumber = (numbers or list(range(5, 5 + len(parts))))[n]
                ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
                ds.save_as(target / f"{n}_{file.name}")
    shutil.rmtree(target / "tmp")
    return uids


@pytest.mark.parametrize("parts", [[[0, 1, 2], [3, 4, 5]], [[0, 2, 4], [1, 3, 5]], [[0, 1], [2, 3, 4, 5]]])
def test_a_cine_split_over_series_reads_as_one_stack(series, tmp_path: Path, parts) -> None:
    """Halves, interleaved breath-holds, two basal slices apart: one stack, as the series stored
    whole (each part alone gave half the heart's volume, silently)."""
    folder, _ = series
    whole = read_dicom_study(folder)
    uids = _split(folder, tmp_path, parts)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)  # the parts are not named as other cines
        read = read_dicom_study(tmp_path)
    assert set(read.info.series_uid.split("+")) == set(uids)
    for got, want in zip(read.phases, whole.phases):
        np.testing.assert_array_equal(got.pixels, want.pixels)


def test_overlapping_parts_take_the_later_acquisition(series, tmp_path: Path) -> None:
    folder, _ = series
    whole = read_dicom_study(folder)
    first, later = _split(folder, tmp_path, [[0, 1, 2, 3], [2, 3, 4, 5]])
    with pytest.warns(CmrWarning, match=rf"series {first} images a slice position again in series {later}"):
        read = read_dicom_study(tmp_path)
    assert read.ed.shape == whole.ed.shape
    assert [Path(f).name[0] for f in read.ed.source_files] == ["0", "0", "1", "1", "1", "1"]
    assert read_dicom_study(tmp_path, series_uid=first).ed.shape[0] == 4  # a part named alone: whole


def test_a_split_cine_that_cannot_stack_is_refused_naming_its_parts(series, tmp_path: Path) -> None:
    """A second part on another matrix: no stack, and one part alone would give wrong volumes."""
    folder, _ = series
    first, second = _split(folder, tmp_path, [[0, 1, 2], [3, 4, 5]])
    for file in tmp_path.glob("1_*.dcm"):
        ds = pydicom.dcmread(file)
        ds.PixelData, ds.Columns = ds.pixel_array[:, :40].tobytes(), 40
        ds.save_as(file)
    with pytest.raises(
        ReadError,
        match=rf"the short-axis cine {second} .* goes on in series cmrsdk cannot stack with it .*{first} \('cine part 1', 3 slice",
    ):
        read_dicom_study(tmp_path)
    assert read_dicom_study(tmp_path, series_uid=second).ed.shape == (3, 48, 40)


def _restamp(folder: Path, **changes) -> None:
    """Every file of ``folder`` with ``changes`` (keyword -> value, or function of the data set)."""
    for file in folder.glob("*.dcm"):
        ds = pydicom.dcmread(file)
        for keyword, value in changes.items():
            setattr(ds, keyword, value(ds) if callable(value) else value)
        ds.save_as(file)


def test_the_short_axis_stack_wins_over_larger_axial_radial_and_real_time_ones(series, tmp_path: Path) -> None:
    """Image count no longer decides: an axial cine stack (an ARVC protocol), a radial long-axis
    set and a coarser real-time cine, each with more images, beside the short-axis cine."""
    folder, _ = series
    shutil.copytree(folder, tmp_path / "sax")
    _restamp(tmp_path / "sax", SeriesDescription="FIESTA CINE")
    big = synthetic_study(3, n_slices=8, shape=(48, 56), n_phases=6)
    same = pydicom.dcmread(next((tmp_path / "sax").glob("*.dcm")))
    study = {"StudyInstanceUID": same.StudyInstanceUID, "PatientID": same.PatientID}  # one exam
    write_dicom_series(tmp_path / "axial", big, series_description="FIESTA CINE")
    _restamp(
        tmp_path / "axial",
        **study,
        SeriesInstanceUID="1.2.3.4.1",
        ImageOrientationPatient=[1, 0, 0, 0, 1, 0],
        ImagePositionPatient=lambda ds: [0.0, 0.0, 8.0 * ((int(ds.InstanceNumber) - 1) % 8)],
    )
    chosen = read_dicom_study(tmp_path)
    assert chosen.ed.shape == (6, 48, 56) and len(chosen.phases) == 3
    # radial: one series whose planes turn about a common axis
    write_dicom_series(tmp_path / "radial", big, series_description="FIESTA CINE")

    def plane(ds):
        angle = np.pi * ((int(ds.InstanceNumber) - 1) % 8) / 8
        return [float(np.cos(angle)), float(np.sin(angle)), 0.0, 0.0, 0.0, -1.0]

    _restamp(
        tmp_path / "radial",
        **study,
        SeriesInstanceUID="1.2.3.4.2",
        ImageOrientationPatient=plane,
        ImagePositionPatient=[0, 0, 0],
    )
    assert read_dicom_study(tmp_path).ed.shape == (6, 48, 56)
    # real time: the same stack on coarser pixels, twice the phases
    write_dicom_series(
        tmp_path / "realtime", synthetic_study(7, n_slices=6, shape=(48, 56), n_phases=6, apex_first=True)
    )
    _restamp(
        tmp_path / "realtime",
        **study,
        SeriesInstanceUID="1.2.3.4.3",
        SeriesNumber=30,
        PixelSpacing=lambda ds: [2 * float(v) for v in ds.PixelSpacing],
    )
    assert len(read_dicom_study(tmp_path).phases) == 3
    with pytest.warns(CmrWarning, match="2 short-axis cine series"):
        listed = inspect(tmp_path)  # the real-time cine is the other short-axis one
    assert listed["series_read"] == listed["series"][0]["uid"] and len(listed["warnings"]) == 1
    assert [(s["short_axis"], s["pixel_mm"]) for s in listed["series"][:2]] == [
        (True, round(listed["spacing_mm"][1], 3)),
        (True, round(2 * listed["spacing_mm"][1], 3)),
    ]
    summaries = __import__("cmrsdk.io", fromlist=["x"]).scan_dicom_series(tmp_path)
    assert summaries[0].is_short_axis and not next(s for s in summaries if s.series_uid == "1.2.3.4.1").is_short_axis
    assert next(s for s in summaries if s.series_uid == "1.2.3.4.2").n_positions == 0  # several planes: never chosen


def test_t1_mapping_and_late_enhancement_are_not_cines(series, tmp_path: Path) -> None:
    """MOLLI (one position, InversionTime stepping, trigger times spread by the sequence) is never
    stacked as a cine; a one-phase inversion-recovery stack (LGE) is refused, not measured."""
    folder, _ = series
    molli = synthetic_study(4, n_slices=1, shape=(48, 56), n_phases=8)
    for n in range(3):
        write_dicom_series(tmp_path / "exam" / f"molli{n}", molli, series_description=f"MOLLI T1 SAX {n}")
        _restamp(
            tmp_path / "exam" / f"molli{n}",
            SeriesInstanceUID=f"1.2.3.5.{n}",
            ImagePositionPatient=lambda ds, n=n: [0.0, 0.0, 8.0 * n],
            InversionTime=lambda ds: 100.0 + 80.0 * int(ds.InstanceNumber),
            TriggerTime=lambda ds: 400.0 * int(ds.InstanceNumber),
        )
    with pytest.raises(ReadError, match="is not a cine"):
        read_dicom_study(tmp_path / "exam")
    summaries = __import__("cmrsdk.io", fromlist=["x"]).scan_dicom_series(tmp_path / "exam")
    assert all(s.is_dynamic and "+" not in s.series_uid for s in summaries)
    shutil.copytree(folder, tmp_path / "exam" / "cine")
    assert len(read_dicom_study(tmp_path / "exam").phases) == 3
    lge = synthetic_study(5, n_slices=6, shape=(48, 56), n_phases=2)
    write_dicom_series(tmp_path / "lge", lge, series_description="LGE PSIR")
    last = max(int(f.name[:3]) for f in (tmp_path / "lge").glob("*.dcm"))
    for file in (tmp_path / "lge").glob(f"{last:03d}_*.dcm"):  # one phase
        file.unlink()
    _restamp(tmp_path / "lge", InversionTime=300.0)
    with pytest.raises(ReadError, match=r"is one phase with 'InversionTime' \(0018,0082\) 300 ms: .*late gadolinium"):
        read_dicom_study(tmp_path / "lge")


def test_series_folders_reached_through_links_are_read_once(series, tmp_path: Path) -> None:
    """A study assembled from linked series folders reads as the series itself; a link back up
    the tree (a loop) is searched once, and the same images reached twice are kept once."""
    folder, study = series
    root = tmp_path / "study"
    root.mkdir()
    (root / "cine").symlink_to(folder, target_is_directory=True)
    (root / "again").symlink_to(root, target_is_directory=True)  # a loop
    direct = read_dicom_study(folder)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        linked = read_dicom_study(root)
    assert len(linked.phases) == len(direct.phases) == 3
    for a, b in zip(linked.phases, direct.phases):
        np.testing.assert_array_equal(a.pixels, b.pixels)
        assert all(str(f).startswith(str(root / "cine")) for f in a.source_files)  # the path the user gave
