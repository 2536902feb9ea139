"""The bad-input corpus: inputs as archives and users deliver them, through ``cmrsdk segment``.

Every kind is generated at test time from the shared real data (Sunnybrook DICOM, ACDC and
M&Ms NIfTI) and asserts its exact outcome: the error line, the warning or flag, or the valid
outputs, and the files left behind. The pipeline is the demo bundle's, loaded once (baseline
mode, the cheapest) so that the corpus stays fast; the command line is otherwise the real one.
"""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

import cmrsdk.pipeline
from cmrsdk.cli import main

SUNNYBROOK = "sunnybrook/SCD0000101"
ACDC = "acdc/training/patient001"
ALL_OUTPUTS = [
    "labels_ED.nii.gz",
    "labels_ES.nii.gz",
    "overlay.png",
    "report.html",
    "report.json",
    "seg_ED.dcm",
    "seg_ES.dcm",
    "sr.dcm",
]
NIFTI_OUTPUTS = ["labels_ED.nii.gz", "labels_ES.nii.gz", "overlay.png", "report.html", "report.json"]


@pytest.fixture(scope="module")
def cached_pipeline(monkeypatch_module):
    """The CLI's Pipeline, built once for the module when called with the corpus's options."""
    real = cmrsdk.pipeline.Pipeline
    cache: dict = {}

    def factory(bundle, **options):
        key = (str(bundle), tuple(sorted((k, str(v)) for k, v in options.items())))
        if key not in cache:
            cache[key] = real(bundle, **options)
        return cache[key]

    monkeypatch_module.setattr(cmrsdk.pipeline, "Pipeline", factory)
    return factory


@pytest.fixture(scope="module")
def monkeypatch_module():
    patch = pytest.MonkeyPatch()
    yield patch
    patch.undo()


@pytest.fixture(scope="module")
def sunnybrook_files(shared_data: Path) -> list[list[Path]]:
    """Files of the Sunnybrook series by phase (20) and slice (12), in slice order, from the headers."""
    import warnings

    folder = shared_data / SUNNYBROOK
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for file in sorted(folder.glob("*.dcm")):
            ds = pydicom.dcmread(file, stop_before_pixels=True)
            normal = np.cross(
                np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
            )
            rows.append(
                (round(float(np.array(ds.ImagePositionPatient, float) @ normal), 1), float(ds.TriggerTime), file)
            )
    positions = sorted({r[0] for r in rows})
    columns = [sorted((r for r in rows if r[0] == position), key=lambda r: r[1]) for position in positions]
    return [[column[t][2] for column in columns] for t in range(len(columns[0]))]


def _sunnybrook_subset(
    files: list[list[Path]], folder: Path, phases=(0, 7), slices=range(3, 9), clean: bool = True
) -> list[list[Path]]:
    """Copies of two phases x six slices; ``clean`` repairs dates and frame of reference first,
    so that each corpus kind injects exactly one defect."""
    import warnings

    folder.mkdir(parents=True)
    out = []
    for t in phases:
        row = []
        for z in slices:
            target = folder / f"{t:02d}_{z:02d}.dcm"
            if clean:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(files[t][z])
                ds.PatientBirthDate, ds.StudyDate, ds.SeriesDate = "19700101", "20120101", "20120101"
                ds.AcquisitionDate, ds.ContentDate = "20120101", "20120101"
                ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
                ds.save_as(target)
            else:
                shutil.copy(files[t][z], target)
            row.append(target)
        out.append(row)
    return out


def _edit(path: Path, change: Callable[[pydicom.Dataset], None]) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)


def _acdc_image(shared_data: Path) -> nib.Nifti1Image:
    return nib.load(shared_data / ACDC / "patient001_frame01.nii.gz")


def _raw_nifti(
    path: Path, shape: tuple[int, ...], pixdim=(1.5, 1.5, 10.0), dtype_code: int = 4, data: bytes = b""
) -> None:
    """A NIfTI-1 file written byte by byte: headers nibabel would repair on save are kept as given."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.int16)
    raw = bytearray(header.binaryblock)
    struct.pack_into("<h", raw, 70, dtype_code)
    struct.pack_into("<3f", raw, 80, *pixdim)
    struct.pack_into("<f", raw, 108, 352.0)  # vox_offset
    path.write_bytes(bytes(raw) + b"\0" * 4 + data)


@dataclass
class Case:
    """One corpus kind: build the input, run ``cmrsdk segment``, check the outcome."""

    name: str
    build: Callable[[Path, Path, list], list[Path]]
    code: int = 0
    error: str | None = None  # regex the error line must match
    warning: str | None = None  # regex one warning line must match
    outputs: list[str] | None = None  # exact files left in the output folder (None: folder absent)
    check: Callable[[dict, Path], None] | None = None
    options: list[str] = field(default_factory=list)


# -- DICOM kinds ---------------------------------------------------------------------------------


def _dicom(change=None, which=None, **subset):
    def build(tmp: Path, data: Path, files) -> list[Path]:
        grid = _sunnybrook_subset(files, tmp / "in", **subset)
        if change is not None:
            targets = [f for row in grid for f in row] if which is None else which(grid)
            for target in targets:
                _edit(target, change)
        return [tmp / "in"]

    return build


def _set(**values):
    def change(ds):
        for key, value in values.items():
            setattr(ds, key, value)

    return change


def _raw(tag: int, text: bytes):
    """Store ``text`` verbatim in a DS element (pydicom would refuse 'n/a' as a number)."""
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    def change(ds):
        ds[tag] = RawDataElement(Tag(tag), "DS", len(text), text, 0, False, True)

    return change


def _delete(*keywords):
    def change(ds):
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return change


def _both(*changes):
    def change(ds):
        for one in changes:
            one(ds)

    return change


def _first(grid):
    return [grid[0][0]]


def _measures_known(report: dict, out: Path) -> None:
    m = report["measures"]
    assert m["lvedv_ml"] is not None and m["lvef_pct"] is not None


def _no_warnings(report: dict, out: Path) -> None:
    assert report["warnings"] == []
    _measures_known(report, out)


def _drop_functional_groups(ds):
    """Enhanced MR without the functional groups that say where its frames are."""
    ds.SOPClassUID, ds.NumberOfFrames = "1.2.840.10008.5.1.4.1.1.4.1", 1
    for keyword in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        if keyword in ds:
            delattr(ds, keyword)


def _enhanced_build(tmp, data, files):
    """The subset as one Enhanced MR Image, frames shuffled, as a Philips or Siemens XA scanner exports it."""
    from _enhanced import as_enhanced_mr, legacy_converted

    grid = _sunnybrook_subset(files, tmp / "classic")
    as_enhanced_mr(legacy_converted([f for row in grid for f in row], tmp / "in" / "cine.dcm"), shuffle_seed=0)
    return [tmp / "in"]


def _enhanced_build_per(unit: str):
    """Enhanced MR in several files of one series: all phases of a slice per file, or one frame per file."""

    def build(tmp, data, files):
        import highdicom as hd
        from _enhanced import as_enhanced_mr, legacy_converted

        grid = _sunnybrook_subset(files, tmp / "classic")
        columns = [[row[z] for row in grid] for z in range(len(grid[0]))]
        groups = columns if unit == "slice" else [[f] for row in grid for f in row]
        series = hd.UID()
        for i, group in enumerate(groups):
            converted = legacy_converted(group, tmp / "in" / f"{i:02d}.dcm", series_uid=series)
            if unit == "slice":  # as the scanner writes it; one frame per file stays as highdicom converts it
                as_enhanced_mr(converted)
        return [tmp / "in"]

    return build


def _series_per_slice_build(tmp, data, files):
    """Each slice position in its own series, one breath-hold each, as Siemens protocols store a cine."""
    grid = _sunnybrook_subset(files, tmp / "in")
    for z in range(len(grid[0])):
        uid = pydicom.uid.generate_uid()
        for row in grid:
            _edit(row[z], _set(SeriesInstanceUID=uid, SeriesNumber=20 + z))
    return [tmp / "in"]


def _series_per_slice_check(report: dict, out: Path) -> None:
    _measures_known(report, out)
    assert report["study"]["series_uid"].count("+") == 5  # six series, one stack
    assert len(pydicom.dcmread(out / "seg_ED.dcm").ReferencedSeriesSequence) == 6


def _enhanced_check(report: dict, out: Path) -> None:
    _measures_known(report, out)
    source = next(Path(report["study"]["source"]).glob("*.dcm"))
    uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
    seg = pydicom.dcmread(out / "seg_ES.dcm")
    referenced = {
        (str(r.ReferencedSOPInstanceUID), int(r.ReferencedFrameNumber))
        for item in seg.PerFrameFunctionalGroupsSequence
        for r in item.DerivationImageSequence[0].SourceImageSequence
    }
    assert {u for u, _ in referenced} == {uid} and len({f for _, f in referenced}) <= 6  # ES's own frames


def _dup_build(tmp, data, files):
    _sunnybrook_subset(files, tmp / "in")
    shutil.copy(tmp / "in" / "00_03.dcm", tmp / "in" / "zz_copy.dcm")
    return [tmp / "in"]


def _gap_build(tmp, data, files):
    _sunnybrook_subset(files, tmp / "in", slices=[2, 3, 4, 6, 7, 8])
    return [tmp / "in"]


def _gap_check(report, out):
    ed = report["phases"][report["ed_index"]]
    assert "slice_gap" in ed["quality_flags"]
    assert [g["missing_slices"] for g in ed["slice_gaps"]] == [1]
    assert ed["slice_gaps"][0]["step_mm"] == pytest.approx(20.0, abs=0.01)


def _uneven_build(tmp, data, files):
    _sunnybrook_subset(files, tmp / "in", slices=[2, 3, 5, 6, 8, 9])
    return [tmp / "in"]


def _uneven_check(report, out):
    ed = report["phases"][report["ed_index"]]
    steps = np.diff(ed["slice_positions_mm"])
    np.testing.assert_allclose(sorted(steps), [10, 10, 10, 20, 20], atol=0.01)
    labels = np.asarray(nib.load(out / "labels_ED.nii.gz").dataobj)
    area = labels.transpose(2, 1, 0)  # (Z, Y, X): on the 10 mm grid, an empty slice in each gap
    positions = np.asarray(ed["slice_positions_mm"])
    at = np.rint((positions - positions.min()) / 10.0).astype(int)  # each acquired slice's place in the file
    assert area.shape[0] == 8 and not area[np.setdiff1d(np.arange(8), at)].any()
    per_slice = [(area[z] == 1).sum() for z in at]
    thickness = np.array([10, 15, 15, 15, 15, 10])  # half-way to each neighbour (ends: their one step)
    order = np.argsort(ed["slice_positions_mm"])
    thick_by_slice = np.empty(6)
    thick_by_slice[order] = thickness
    spacing = ed["spacing_mm"]
    expected = float(np.dot(per_slice, thick_by_slice)) * spacing[1] * spacing[2] / 1000.0
    assert report["measures"]["lvedv_ml"] == pytest.approx(expected, rel=1e-3)


def _one_phase_check(report, out):
    m = report["measures"]
    assert report["flags"] == ["single_phase"] and report["es_index"] is None
    assert m["lvef_pct"] is None and m["lvsv_ml"] is None and m["lvesv_ml"] is None and m["rvef_pct"] is None
    assert m["lvedv_ml"] is None  # one phase: nothing says it is end-diastole (sweep 9)
    assert m["lv_volume_ml"] is not None and m["lv_volume_ml"] > 0
    if (out / "sr.dcm").exists():  # DICOM: the one phase's volumes and mass reference its one SEG
        import highdicom as hd

        seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True).SOPInstanceUID
        groups = hd.sr.srread(out / "sr.dcm").content.get_volumetric_roi_measurement_groups()
        found = {
            str(g.tracking_identifier): ([i.name.value for i in g.get_measurements()], g.referenced_segment)
            for g in groups
        }
        assert {k: v[0] for k, v in found.items()} == {
            "LV blood pool": ["118565006"],
            "LV myocardium": ["18087-7"],
            "RV blood pool": ["118565006"],
        }
        assert {v[1].referenced_sop_instance_uid for v in found.values()} == {seg}


def _one_slice_check(report, out):
    assert all(v is None for v in report["measures"].values())
    assert "single_slice" in report["phases"][0]["quality_flags"]
    if (out / "sr.dcm").exists():
        import highdicom as hd

        groups = hd.sr.srread(out / "sr.dcm").content.get_image_measurement_groups()
        assert not [m for g in groups for m in g.get_measurements()]
        assert "single_slice" in {e.value.value for g in groups for e in g.get_qualitative_evaluations()}


def _zero_pixels(ds):
    ds.PixelData = bytes(len(ds.PixelData))


def _blank_check(report, out):
    m = report["measures"]
    volume = m["lv_volume_ml"] if "single_phase" in report["flags"] else m["lvedv_ml"]
    assert volume is None and m["lvef_pct"] is None and "lv_not_found" in report["flags"]  # not 0.0 mL
    assert "blank_image" in report["phases"][0]["quality_flags"] and "no_lv" in report["phases"][0]["quality_flags"]
    name = "labels.nii.gz" if "single_phase" in report["flags"] else "labels_ED.nii.gz"
    assert np.count_nonzero(np.asarray(nib.load(out / name).dataobj)) == 0
    if (out / "sr.dcm").exists():  # DICOM in: the SR holds the caveats that say why, and no measure
        import highdicom as hd

        groups = hd.sr.srread(out / "sr.dcm").content.get_image_measurement_groups()
        assert not [m for g in groups for m in g.get_measurements()]
        said = {e.value.value for g in groups for e in g.get_qualitative_evaluations()}
        assert {"lv_not_found", "blank_image", "no_lv"} <= said


def _compressed(syntax_name):
    def build(tmp, data, files):
        grid = _sunnybrook_subset(files, tmp / "in")
        syntax = getattr(pydicom.uid, syntax_name)
        for f in [f for row in grid for f in row]:
            _edit(f, lambda ds: ds.compress(syntax))
        return [tmp / "in"]

    return build


def _compressed_check(name):
    def check(report, out):
        _measures_known(report, out)
        assert report["study"]["source"].endswith("in")

    return check


def _sheared(grid):
    return [row[i] for row in grid for i in (3, 4, 5)]


def _shift(ds):
    ds.ImagePositionPatient = [float(v) + (5.0 if i == 0 else 0.0) for i, v in enumerate(ds.ImagePositionPatient)]


def _move_along_normal(mm):
    def change(ds):
        orientation = np.array(ds.ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        ds.ImagePositionPatient = [round(float(v), 4) for v in np.array(ds.ImagePositionPatient, float) + mm * normal]

    return change


def _last_slices(grid):
    return [row[-1] for row in grid]


def _syntax_lies_build(tmp, data, files):
    grid = _sunnybrook_subset(files, tmp / "in")
    # the file meta says RLE Lossless (same length as Explicit VR Little Endian); the pixels are raw
    raw = grid[0][0].read_bytes()
    assert raw.count(b"1.2.840.10008.1.2.1\0") == 1
    grid[0][0].write_bytes(raw.replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2.5\0"))
    return [tmp / "in"]


def _sr_build(tmp, data, files):
    _sunnybrook_subset(files, tmp / "in")
    # only a non-image object (an SR): nothing to segment
    grid = sorted((tmp / "in").glob("*.dcm"))
    from cmrsdk.io import write_measurement_report

    write_measurement_report(tmp / "report.dcm", {"lvedv_ml": 100.0}, [grid[0]])
    shutil.rmtree(tmp / "in")
    (tmp / "in").mkdir()
    shutil.move(tmp / "report.dcm", tmp / "in" / "report.dcm")
    return [tmp / "in"]


def _dup_position_build(tmp, data, files):
    grid = _sunnybrook_subset(files, tmp / "in")
    # a second image at slice 0's position and time, but another instance
    twin = tmp / "in" / "twin.dcm"
    shutil.copy(grid[0][0], twin)
    _edit(twin, _set(SOPInstanceUID=pydicom.uid.generate_uid()))
    return [tmp / "in"]


def _junk_build(tmp, data, files):
    _sunnybrook_subset(files, tmp / "in")
    (tmp / "in" / "notes.txt").write_text("scanned at night\n")
    (tmp / "in" / "DICOMDIR.bak").write_bytes(b"\0" * 50)
    return [tmp / "in"]


def _empty_build(tmp, data, files):
    (tmp / "in").mkdir()
    return [tmp / "in"]


def _truncated_build(tmp, data, files):
    grid = _sunnybrook_subset(files, tmp / "in")
    raw = grid[1][2].read_bytes()
    grid[1][2].write_bytes(raw[: len(raw) - 4000])
    return [tmp / "in"]


def _mixed_sizes_build(tmp, data, files):
    grid = _sunnybrook_subset(files, tmp / "in")

    def shrink(ds):
        ds.PixelData = np.zeros((128, 128), np.uint16).tobytes()
        ds.Rows, ds.Columns = 128, 128

    _edit(grid[0][2], shrink)
    return [tmp / "in"]


def _phase_count_build(tmp, data, files):
    grid = _sunnybrook_subset(files, tmp / "in")
    grid[1][4].unlink()
    return [tmp / "in"]


def _trigger_na(grid):
    return [grid[1][0]]


def _trigger_check(report, out):
    _measures_known(report, out)
    assert report["study"]["series_uid"]


DICOM_CASES = [
    Case("dicom_clean", _dicom(), outputs=ALL_OUTPUTS, check=_no_warnings),
    Case(
        "dicom_sunnybrook_as_delivered",
        _dicom(clean=False),
        outputs=ALL_OUTPUTS,
        warning=r"'FrameOfReferenceUID' \(0020,0052\) differs between the source images",
        check=_measures_known,
    ),
    Case(
        "dicom_birth_date_zeros",
        _dicom(_set(PatientBirthDate="00000000")),
        outputs=ALL_OUTPUTS,
        warning=r"'PatientBirthDate' value '00000000' is not a valid DICOM date; written empty",
    ),
    Case(
        "dicom_study_date_day_zero",
        _dicom(_set(StudyDate="20120000")),
        outputs=ALL_OUTPUTS,
        warning=r"'StudyDate' value '20120000' is not a valid DICOM date",
    ),
    Case(
        "dicom_study_date_unknown",
        _dicom(_set(StudyDate="UNKNOWN")),
        outputs=ALL_OUTPUTS,
        warning=r"'StudyDate' value 'UNKNOWN' is not a valid DICOM date",
    ),
    Case(
        "dicom_series_date_month_13",
        _dicom(_set(SeriesDate="20121301")),
        outputs=ALL_OUTPUTS,
        warning=r"'SeriesDate' value '20121301' is not a valid DICOM date",
    ),
    Case(
        "dicom_dates_absent",
        _dicom(_delete("StudyDate", "PatientBirthDate", "SeriesDate", "AcquisitionDate", "ContentDate")),
        outputs=ALL_OUTPUTS,
        check=_no_warnings,
    ),
    Case(
        "dicom_study_time_invalid",
        _dicom(_set(StudyTime="256099")),
        outputs=ALL_OUTPUTS,
        warning=r"'StudyTime' value '256099' is not a valid DICOM time",
    ),
    Case(
        "dicom_frame_of_reference_absent",
        _dicom(_delete("FrameOfReferenceUID")),
        outputs=ALL_OUTPUTS,
        warning=r"'FrameOfReferenceUID' \(0020,0052\) differs between the source images \(some have none\)",
    ),
    Case(
        "dicom_trigger_time_text",
        _dicom(_both(_raw(0x00181060, b"n/a "), _delete("NominalCardiacTriggerDelayTime")), which=_trigger_na),
        outputs=ALL_OUTPUTS,
        warning=r"'TriggerTime' \(0018,1060\) value 'n/a' is not a number \(1 image\(s\)\); phases ordered by InstanceNumber",
        check=_trigger_check,
    ),
    Case(
        "dicom_trigger_time_absent",
        _dicom(_delete("TriggerTime", "NominalCardiacTriggerDelayTime")),
        outputs=ALL_OUTPUTS,
        warning=r"no 'TriggerTime' \(0018,1060\) or 'NominalCardiacTriggerDelayTime' \(0020,9153\) \(12 of 12 "
        r"image\(s\)\); phases ordered by InstanceNumber",
        check=_measures_known,
    ),
    # an anonymiser that drops TriggerTime keeps the nominal delay GE writes beside it (sweep 22)
    Case("dicom_trigger_time_nominal_only", _dicom(_delete("TriggerTime")), outputs=ALL_OUTPUTS, check=_no_warnings),
    Case(
        "dicom_duplicated_instance",
        _dup_build,
        outputs=ALL_OUTPUTS,
        warning=r"'SOPInstanceUID' repeats that of 00_03.dcm; 1 duplicated instance\(s\) skipped",
    ),
    Case(
        "dicom_patient_name_and_id_absent",
        _dicom(_delete("PatientName", "PatientID")),
        outputs=ALL_OUTPUTS,
        check=_measures_known,
    ),
    Case(
        "dicom_rescale_slope_text",
        _dicom(_raw(0x00281053, b"n/a "), which=_first),
        outputs=ALL_OUTPUTS,
        warning=r"'RescaleSlope' value 'n/a' is not a number; 1.0 used",
    ),
    Case("dicom_jpeg_ls", _compressed("JPEGLSLossless"), outputs=ALL_OUTPUTS, check=_compressed_check("jpegls")),
    Case("dicom_jpeg_2000", _compressed("JPEG2000Lossless"), outputs=ALL_OUTPUTS, check=_compressed_check("j2k")),
    Case("dicom_rle", _compressed("RLELossless"), outputs=ALL_OUTPUTS, check=_compressed_check("rle")),
    Case("dicom_missing_slice", _gap_build, outputs=ALL_OUTPUTS, check=_gap_check),
    Case("dicom_uneven_spacing", _uneven_build, outputs=ALL_OUTPUTS, check=_uneven_check),
    Case(
        "dicom_one_phase",
        _dicom(phases=(0,)),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json", "seg.dcm", "sr.dcm"],
        check=_one_phase_check,
    ),
    Case(
        "dicom_one_slice",
        _dicom(slices=[5]),
        outputs=[
            "labels_ED.nii.gz",
            "labels_ES.nii.gz",
            "overlay.png",
            "report.html",
            "report.json",
            "seg_ED.dcm",
            "seg_ES.dcm",
            "sr.dcm",  # its caveats alone (0.14.6)
        ],
        check=_one_slice_check,
    ),
    # nothing measured: the SEGs say there is nothing, the SR why (its caveats alone; none before 0.14.6)
    Case("dicom_all_zero_pixels", _dicom(_zero_pixels), outputs=ALL_OUTPUTS, check=_blank_check),
    Case("dicom_junk_files_beside", _junk_build, outputs=ALL_OUTPUTS, check=_measures_known),
    Case("dicom_enhanced_multiframe", _enhanced_build, outputs=ALL_OUTPUTS, check=_enhanced_check),
    Case("dicom_series_per_slice", _series_per_slice_build, outputs=ALL_OUTPUTS, check=_series_per_slice_check),
    Case("dicom_enhanced_file_per_slice", _enhanced_build_per("slice"), outputs=ALL_OUTPUTS, check=_measures_known),
    Case("dicom_enhanced_file_per_image", _enhanced_build_per("image"), outputs=ALL_OUTPUTS, check=_measures_known),
    Case(
        "dicom_enhanced_without_functional_groups",
        _dicom(_drop_functional_groups),
        code=1,
        error=r"enhanced MR image \(SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.4\.1, 'NumberOfFrames' 1\) has no "
        r"'PerFrameFunctionalGroupsSequence' \(5200,9230\)",
    ),
    Case(
        "dicom_matrix_20000",
        _dicom(_set(Rows=20000, Columns=20000), which=_first),
        code=1,
        error=r"'Rows' x 'Columns' \(0028,0010\)/\(0028,0011\) value 20000 x 20000 exceeds 2048 x 2048",
    ),
    Case(
        "dicom_orientation_missing",
        _dicom(_delete("ImageOrientationPatient")),
        code=1,
        error=r"'ImageOrientationPatient' \(0020,0037\) is missing",
    ),
    Case(
        "dicom_orientation_not_orthogonal",
        _dicom(_set(ImageOrientationPatient=[1, 0, 0, 0.7071068, 0.7071068, 0])),
        code=1,
        error=r"'ImageOrientationPatient' \(0020,0037\) value \[1\.0, 0\.0, 0\.0, 0\.7071068, 0\.7071068, 0\.0\] is not two "
        r"orthogonal unit vectors",
    ),
    Case(
        "dicom_sheared_stack",
        _dicom(_shift, which=_sheared),
        code=1,
        error=r"00_07\.dcm: 'ImagePositionPatient' \(0020,0032\) moves 3\.7 mm across the slice normal: the stack is sheared",
    ),
    Case(
        "dicom_pixel_spacing_text",
        _dicom(_raw(0x00280030, b"abc\\def"), which=_first),
        code=1,
        error=r"'PixelSpacing' \(0028,0030\) value .* is not numeric",
    ),
    Case(
        "dicom_pixel_spacing_zero",
        _dicom(_set(PixelSpacing=[0, 0])),
        code=1,
        error=r"'PixelSpacing' \(0028,0030\) value \[0\.0, 0\.0\] must be positive",
    ),
    Case(
        "dicom_pixel_spacing_absurd",
        _dicom(_set(PixelSpacing=[150, 150])),
        code=1,
        error=r"'PixelSpacing' \(0028,0030\) value \[150\.0, 150\.0\] mm is outside 0\.3\.\.20\.0 mm",
    ),
    Case(
        "dicom_slice_step_absurd",
        _dicom(_move_along_normal(500.0), which=_last_slices),
        code=1,
        error=r"slice positions .* mm step by up to 510\.0 mm, over 100\.0 mm: not one short-axis stack",
    ),
    Case(
        "dicom_study_uid_absent",
        _dicom(_delete("StudyInstanceUID")),
        code=1,
        error=r"'StudyInstanceUID' \(0020,000D\) is missing; a SEG or SR cannot join the study",
    ),
    Case(
        "dicom_truncated_file",
        _truncated_build,
        code=1,
        error=r"07_05\.dcm: pixel data cannot be decoded \(transfer syntax 1\.2\.840\.10008\.1\.2\.1; ValueError: The number "
        r"of bytes of pixel data is less than expected",
    ),
    Case("dicom_empty_folder", _empty_build, code=1, error=r"in: no DICOM image files found \(0 files searched\)"),
    Case("dicom_only_a_report", _sr_build, code=1, error=r"report\.dcm: DICOM file that is no image to segment"),
    Case(
        "dicom_same_position_twice",
        _dup_position_build,
        code=1,
        error=r"00_03\.dcm: duplicate slice position: 3 images at the same position, 1 of them repeating a "
        r"'TriggerTime' \(0018,1060\) \(18\.9873; also .*\): the slice acquired twice in one series, or copies",
    ),
    Case("dicom_mixed_matrix_sizes", _mixed_sizes_build, code=1, error=r"mixed matrix sizes in one series"),
    Case(
        "dicom_differing_phase_counts",
        _phase_count_build,
        code=1,
        error=r"slice positions hold differing numbers of phases \[1, 2\]",
    ),
    Case(
        "dicom_transfer_syntax_lies",
        _syntax_lies_build,
        code=1,
        error=r"00_03\.dcm: pixel data cannot be decoded \(transfer syntax 1\.2\.840\.10008\.1\.2\.5;",
    ),
]


# -- NIfTI kinds ---------------------------------------------------------------------------------


def _acdc_file(name: str, transform=None):
    def build(tmp, data, files):
        image = _acdc_image(data)
        if transform is not None:
            image = transform(image)
        (tmp / "in").mkdir()
        nib.save(image, tmp / "in" / name)
        return [tmp / "in" / name]

    return build


def _sform_check(data_path: str, stem: str):
    def check(report, out):
        source = nib.load(data_path.format(stem=stem))
        written = nib.load(out / "labels_ED.nii.gz")
        assert int(written.header["sform_code"]) == int(source.header["sform_code"])
        assert int(written.header["qform_code"]) == int(source.header["qform_code"])
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        np.testing.assert_allclose(written.header.get_zooms()[:3], source.header.get_zooms()[:3], atol=1e-6)

    return check


def _rgb(image):
    data = np.asanyarray(image.dataobj)[..., :1].astype(np.uint8)
    rgb = np.zeros(data.shape, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    return nib.Nifti1Image(rgb, image.affine)


def _four_d(image):
    data = np.asanyarray(image.dataobj)
    return nib.Nifti1Image(np.stack([data] * 3, axis=-1), image.affine, image.header)


def _static_check(report: dict, out: Path) -> None:
    """Three identical frames: a cine that does not beat gets no EF of 0 %, but a flag."""
    m = report["measures"]
    assert report["flags"] == ["no_volume_change"] and report["ed_index"] == report["es_index"]
    assert m["lvedv_ml"] is not None and m["lvef_pct"] is None and m["rvef_pct"] is None


def _nan(image):
    data = np.asanyarray(image.dataobj).astype(np.float32)
    data[5, 5, 2] = np.nan
    return nib.Nifti1Image(data, image.affine)


def _zeros(image):
    return nib.Nifti1Image(np.zeros(image.shape, np.int16), image.affine, image.header)


def _one_slice(image):
    return image.slicer[:, :, 4:5]


def _sheared_affine(image):
    affine = image.affine.copy()
    affine[0, 1] = 0.5  # column j leans into x: 26.6 degrees of shear
    out = nib.Nifti1Image(np.asanyarray(image.dataobj), affine)
    out.set_qform(None, code=0)
    return out


def _scaled(image):
    data = np.asanyarray(image.dataobj).astype(np.int16)
    out = nib.Nifti1Image(data, image.affine, image.header)
    out.header.set_slope_inter(0.5, 10.0)
    return out


def _pixdim(values):
    def build(tmp, data, files):
        image = _acdc_image(data)
        (tmp / "in").mkdir()
        path = tmp / "in" / "image.nii"
        nib.save(image, path)
        raw = bytearray(path.read_bytes())
        struct.pack_into("<3f", raw, 80, *values)
        path.write_bytes(bytes(raw))
        return [path]

    return build


def _declared(shape):
    def build(tmp, data, files):
        (tmp / "in").mkdir()
        path = tmp / "in" / "huge.nii"
        _raw_nifti(path, shape, data=b"\0" * 1000)
        return [path]

    return build


def _text_build(tmp, data, files):
    (tmp / "in").mkdir()
    (tmp / "in" / "image.nii.gz").write_text("not a nifti\n")
    return [tmp / "in" / "image.nii.gz"]


def _truncated_gz_build(tmp, data, files):
    (tmp / "in").mkdir()
    raw = (data / ACDC / "patient001_frame01.nii.gz").read_bytes()
    (tmp / "in" / "image.nii.gz").write_bytes(raw[: len(raw) // 2])
    return [tmp / "in" / "image.nii.gz"]


def _empty_file_build(tmp, data, files):
    (tmp / "in").mkdir()
    (tmp / "in" / "image.nii.gz").write_bytes(b"")
    return [tmp / "in" / "image.nii.gz"]


def _acdc_copy(tmp: Path, data: Path, name: str = "patient001", where: Path | None = None) -> Path:
    target = (where or tmp / "in") / name
    target.mkdir(parents=True)
    for file in ("Info.cfg", "patient001_frame01.nii.gz", "patient001_frame12.nii.gz"):
        shutil.copy(data / ACDC / file, target / file.replace("patient001", name))
    return target


def _acdc_build(tmp, data, files):
    return [_acdc_copy(tmp, data)]


def _acdc_bad_cfg(tmp, data, files):
    folder = _acdc_copy(tmp, data)
    (folder / "Info.cfg").write_text("ED: 1\nGroup: DCM\n")
    return [folder]


def _acdc_missing_frame(tmp, data, files):
    folder = _acdc_copy(tmp, data)
    (folder / "patient001_frame12.nii.gz").unlink()
    return [folder]


def _mnms2_build(tmp, data, files):
    folder = tmp / "in" / "001"
    folder.mkdir(parents=True)
    shutil.copy(data / ACDC / "patient001_frame01.nii.gz", folder / "001_SA_ED.nii.gz")
    shutil.copy(data / ACDC / "patient001_frame12.nii.gz", folder / "001_SA_ES.nii.gz")
    return [folder]


def _mnms_build(tmp, data, files):
    source = sorted(p for p in (data / "mnms").iterdir() if p.is_dir())[0]
    target = tmp / "in" / source.name
    target.mkdir(parents=True)
    for file in source.glob("*_sa_E?.nii.gz"):
        shutil.copy(file, target / file.name)
    return [target]


def _ed_es_check(report, out):
    m = report["measures"]
    assert m["lvef_pct"] is not None and 0 < m["lvedv_ml"] and report["flags"] == []


def _nifti_folder_build(tmp, data, files):
    folder = tmp / "in" / "niftis"
    folder.mkdir(parents=True)
    shutil.copy(data / ACDC / "patient001_frame01.nii.gz", folder / "a_ed.nii.gz")
    shutil.copy(data / ACDC / "patient001_frame12.nii.gz", folder / "B_ES.NII.GZ")
    shutil.copy(data / ACDC / "patient001_frame01_gt.nii.gz", folder / "a_ed_gt.nii.gz")
    return [folder]


def _subjects_build(tmp, data, files):
    _acdc_copy(tmp, data, "patient001", tmp / "in" / "cohort")
    _acdc_copy(tmp, data, "patient002", tmp / "in" / "cohort")
    return [tmp / "in" / "cohort"]


NIFTI_CASES = [
    Case(
        "nifti_single_file_one_phase",
        _acdc_file("image.nii.gz"),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json"],
        check=_one_phase_check,
    ),
    Case(
        "nifti_upper_case_extension",
        _acdc_file("IMAGE.NII.GZ"),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json"],
        check=_one_phase_check,
    ),
    Case(
        "nifti_uncompressed",
        _acdc_file("image.nii"),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json"],
        check=_one_phase_check,
    ),
    Case(
        "nifti_scaled_int16",
        _acdc_file("image.nii.gz", _scaled),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json"],
        check=_one_phase_check,
    ),
    Case(
        "nifti_one_slice",
        _acdc_file("image.nii.gz", _one_slice),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json"],
        check=_one_slice_check,
    ),
    Case(
        "nifti_all_zero",
        _acdc_file("image.nii.gz", _zeros),
        outputs=["labels.nii.gz", "overlay.png", "report.html", "report.json"],
        check=_blank_check,
    ),
    Case("nifti_rgb", _acdc_file("image.nii.gz", _rgb), code=1, error=r"NIfTI datatype RGB \(.*\) is not greyscale"),
    Case("nifti_four_d_static", _acdc_file("image.nii.gz", _four_d), outputs=NIFTI_OUTPUTS, check=_static_check),
    Case(
        "nifti_nan_pixels",
        _acdc_file("image.nii.gz", _nan),
        code=1,
        error=r"image holds 1 NaN or infinite pixel values",
    ),
    Case(
        "nifti_sheared_affine",
        _acdc_file("image.nii.gz", _sheared_affine),
        code=1,
        error=r"NIfTI affine \(sform/qform\) axes are not at right angles \(largest cosine 0\.447\)",
    ),
    Case(
        "nifti_zero_slice_pixdim",
        _pixdim((1.5625, 1.5625, 0.0)),
        code=1,
        error=r"NIfTI pixdim\[1:4\] \(voxel sizes\) \[1\.5625, 1\.5625, 0\.0\] must be finite and positive",
    ),
    Case(
        "nifti_negative_pixdim",
        _pixdim((1.5625, -1.5625, 10.0)),
        code=1,
        error=r"NIfTI pixdim\[1:4\] \(voxel sizes\) \[1\.5625, -1\.5625, 10\.0\] must be finite and positive",
    ),
    Case(
        "nifti_absurd_in_plane_pixdim",
        _pixdim((150.0, 150.0, 10.0)),
        code=1,
        error=r"NIfTI pixdim\[1:3\] \(in-plane voxel size\) \[150\.0, 150\.0\] mm is outside 0\.3\.\.20\.0 mm",
    ),
    Case(
        "nifti_absurd_slice_pixdim",
        _pixdim((1.5625, 1.5625, 1000.0)),
        code=1,
        error=r"NIfTI pixdim\[3\] \(slice spacing\) 1000\.0 mm is outside 0\.05\.\.100\.0 mm",
    ),
    Case(
        "nifti_declares_20000_square",
        _declared((20000, 20000, 1)),
        code=1,
        error=r"NIfTI header 'dim' declares 20000 x 20000 x 1 voxels; an in-plane side over 2048 .*refused before reading",
    ),
    Case(
        "nifti_declares_20000_square_10_slices",
        _declared((20000, 20000, 10)),
        code=1,
        error=r"declares 20000 x 20000 x 10 voxels",
    ),
    Case(
        "nifti_declares_too_many_slices",
        _declared((512, 512, 1000)),
        code=1,
        error=r"declares 512 x 512 x 1000 voxels, over the limit of 100000000 per phase",
    ),
    Case("nifti_text_file", _text_build, code=1, error=r"image\.nii\.gz: not a readable NIfTI file"),
    Case("nifti_truncated_gzip", _truncated_gz_build, code=1, error=r"image\.nii\.gz: NIfTI data cannot be read"),
    Case("nifti_empty_file", _empty_file_build, code=1, error=r"image\.nii\.gz: not a readable NIfTI file"),
    Case(
        "acdc_patient_keeps_sform", _acdc_build, outputs=NIFTI_OUTPUTS, check=None
    ),  # sform check added below, needs the data path
    Case("acdc_info_without_es", _acdc_bad_cfg, code=1, error=r"Info\.cfg: key 'ES' \(frame number\) is missing"),
    Case(
        "acdc_frame_file_missing",
        _acdc_missing_frame,
        code=1,
        error=r"patient001: ES image patient001_frame12\.nii\.gz \(frame 12 from Info\.cfg\) not found",
    ),
    Case("mnms2_layout", _mnms2_build, outputs=NIFTI_OUTPUTS, check=_ed_es_check),
    Case("mnms_layout", _mnms_build, outputs=NIFTI_OUTPUTS, check=_ed_es_check),
]


@pytest.mark.parametrize("case", DICOM_CASES + NIFTI_CASES, ids=lambda c: c.name)
def test_corpus(case: Case, shared_data: Path, sunnybrook_files, cached_pipeline, tmp_path: Path, capsys) -> None:
    inputs = case.build(tmp_path, shared_data, sunnybrook_files)
    out = tmp_path / "out"
    # no overlay (the slowest output, tested in test_batch.py) and one network pass (the half-turn
    # doubles it): the corpus is about the inputs
    code = main(
        ["segment", *map(str, inputs), "-o", str(out), "--mode", "baseline", "--no-overlay", "--no-mirroring"]
        + list(case.options)
    )
    expected = None if case.outputs is None else [n for n in case.outputs if n != "overlay.png"]
    captured = capsys.readouterr()
    err_lines = captured.err.splitlines()
    assert code == case.code, captured.err
    assert "Traceback" not in captured.err
    if case.error is not None:
        errors = [line for line in err_lines if line.startswith("cmrsdk: error: ")]
        assert len(errors) == 1, err_lines
        assert __import__("re").search(case.error, errors[0]), errors[0]
        assert errors[0].count(str(inputs[0])) == 1  # the input named once
        leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
        assert leftovers == []  # nothing half-written, no staging folder
        return
    assert not any(line.startswith("cmrsdk: error:") for line in err_lines), captured.err
    if case.warning is not None:
        assert any(
            __import__("re").search(case.warning, line) for line in err_lines if line.startswith("cmrsdk: warning: ")
        ), captured.err
    assert sorted(p.name for p in out.iterdir()) == expected
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["outputs"]) == expected
    if case.warning is not None:
        assert any(__import__("re").search(case.warning, w) for w in report["warnings"])
    if "seg_ED.dcm" in expected:
        seg = pydicom.dcmread(out / "seg_ED.dcm")
        assert seg.Modality == "SEG" and seg.SeriesNumber == 901 and seg.SeriesDescription == "cmrsdk segmentation ED"
    if "seg.dcm" in expected:  # one phase: nothing names it, neither the file nor the series
        seg = pydicom.dcmread(out / "seg.dcm")
        assert seg.Modality == "SEG" and seg.SeriesNumber == 901 and seg.SeriesDescription == "cmrsdk segmentation"
    if case.name == "acdc_patient_keeps_sform":
        _sform_check(str(shared_data / ACDC / "{stem}.nii.gz"), "patient001_frame01")(report, out)
    if case.check is not None:
        case.check(report, out)


def test_corpus_has_sixty_kinds_with_the_batch_kinds() -> None:
    import test_batch

    kinds = len(DICOM_CASES) + len(NIFTI_CASES) + len(test_batch.BATCH_KINDS)
    assert kinds >= 60, kinds
