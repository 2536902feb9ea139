"""The DICOM SR writer (TID 1500 measurement report) and the repair of source headers for SEG and SR."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import CmrWarning, InputError
from cmrsdk.io import write_dicom_series, write_measurement_report
from cmrsdk.io._dicom_out import derivation_sources, valid_date, valid_time
from cmrsdk.synth import synthetic_study


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("sr") / "series"
    return write_dicom_series(folder, synthetic_study(seed=5, n_slices=4, shape=(32, 32), n_phases=2))


def _measurements(path: Path) -> dict[str, list[tuple[str, float, str]]]:
    import highdicom as hd

    sr = hd.sr.srread(path)
    found: dict[str, list[tuple[str, float, str]]] = {}
    for group in sr.content.get_image_measurement_groups():
        for item in group.get_measurements():
            found.setdefault(str(group.tracking_identifier), []).append(
                (item.name.value, float(item.value), item.unit.value)
            )
    return found


def test_report_holds_each_known_measure_with_its_code_and_unit(series, tmp_path):
    measures = {
        "lvedv_ml": 151.25,
        "lvesv_ml": 61.5,
        "lvsv_ml": 89.75,
        "lvef_pct": 59.339,
        "lv_mass_g": 120.4,
        "rvedv_ml": 160.0,
        "rvesv_ml": 70.0,
        "rvsv_ml": 90.0,
        "rvef_pct": 56.25,
    }
    path = write_measurement_report(tmp_path / "sr.dcm", measures, series[:4], series_number=903)
    found = _measurements(path)
    assert found["Left ventricle"] == [
        ("8821-1", 151.25, "ml"),
        ("8823-7", 61.5, "ml"),
        ("90096001", 89.75, "ml"),
        ("8811-2", 59.339, "%"),
        ("18087-7", 120.4, "g"),
    ]
    # PS3.16 CID 3835's RV ED / ES volume codes, not one "Volume" told apart by a time point's text
    assert found["Right ventricle"] == [
        ("8822-9", 160.0, "ml"),
        ("8824-5", 70.0, "ml"),
        ("90096001", 90.0, "ml"),
        ("8818-7", 56.25, "%"),
    ]
    assert set(found) == {"Left ventricle", "Right ventricle"}
    # each item names its ventricle itself: the two stroke volumes share one code
    import highdicom as hd

    sites = {
        (m.name.value, m.value): [s.value.meaning for s in m.finding_sites]
        for g in hd.sr.srread(path).content.get_image_measurement_groups()
        for m in g.get_measurements()
    }
    assert sites[("90096001", 89.75)] == ["Left ventricle"] and sites[("90096001", 90.0)] == ["Right ventricle"]
    ds = pydicom.dcmread(path)
    source = pydicom.dcmread(series[0])
    assert ds.Modality == "SR" and ds.SeriesNumber == 903 and ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.SeriesDescription == "cmrsdk cardiac measurements"


def test_unknown_measures_are_left_out_never_zero(series, tmp_path):
    # one phase: EDV and mass known, ES volumes, SV and EF unknown (None in report.json, NaN in memory)
    path = write_measurement_report(
        tmp_path / "sr.dcm",
        {
            "lvedv_ml": 140.0,
            "lvesv_ml": None,
            "lvsv_ml": math.nan,
            "lvef_pct": None,
            "lv_mass_g": 99.0,
            "rvedv_ml": None,
        },
        series[:4],
    )
    assert _measurements(path) == {"Left ventricle": [("8821-1", 140.0, "ml"), ("18087-7", 99.0, "g")]}
    with pytest.raises(InputError, match="no measure is known .* and no caveat"):
        write_measurement_report(tmp_path / "none.dcm", {"lvef_pct": None}, series[:4])
    # nothing measured but the flags that say why: a report of its caveats alone (sweep 35: a
    # blank study's PACS got an empty SEG and no SR)
    why = write_measurement_report(
        tmp_path / "why.dcm", {"lvef_pct": None}, series[:4], quality_flags={"ED": ["no_lv"], "study": []}
    )
    assert _measurements(why) == {} and _caveats(why) == {
        "Quality caveats at ED": [("no_lv", "99CMRSDK", "No LV blood pool on any slice")]
    }
    with pytest.raises(InputError, match="'source_files' is empty"):
        write_measurement_report(tmp_path / "none.dcm", {"lvedv_ml": 1.0}, [])
    assert not (tmp_path / "none.dcm").exists()


@pytest.mark.parametrize(
    "value, ok",
    [
        ("20120101", True),
        ("00000000", False),
        ("20120000", False),
        ("UNKNOWN", False),
        ("20121301", False),
        ("2012010", False),
        ("20240229", True),
        ("20230229", False),
    ],
)
def test_valid_date(value, ok):
    assert valid_date(value) is ok


@pytest.mark.parametrize(
    "value, ok",
    [
        ("083237.000000", True),
        ("0832", True),
        ("08", True),
        ("256099", False),
        ("0860", False),
        ("083237.1234567", False),
        ("", False),
        ("ab", False),
    ],
)
def test_valid_time(value, ok):
    assert valid_time(value) is ok


def test_a_classic_image_with_an_empty_functional_group_gets_its_slice_thickness(series, tmp_path):
    """GE's classic MR images carry an empty PerFrameFunctionalGroupsSequence (every Sunnybrook
    file): taken for multi-frame, a source without SliceThickness kept none and highdicom refused
    the SEG, so the study got no output at all (sweep 35)."""
    from pydicom.dataset import Dataset

    files = []
    for i, path in enumerate(series[:2]):
        ds = pydicom.dcmread(path)
        ds.PerFrameFunctionalGroupsSequence = [Dataset()]
        del ds.SliceThickness
        ds.save_as(tmp_path / f"{i}.dcm")
        files.append(tmp_path / f"{i}.dcm")
    with pytest.warns(
        CmrWarning, match="'SliceThickness' \\(0018,0050\\) is missing; the DICOM outputs give the slice spacing, 8"
    ):
        repaired = derivation_sources(files, slice_spacing_mm=8.0)
    assert [float(ds.SliceThickness) for ds in repaired] == [8.0, 8.0]


@pytest.mark.parametrize("frames", ["", "0", "1"])
def test_a_classic_image_with_no_frame_count_is_not_multi_frame(frames):
    """An empty, zero or garbled NumberOfFrames on a classic MR image was refused as a
    multi-frame file (sweep 37)."""
    from pydicom.dataset import Dataset

    from cmrsdk.io._multiframe import is_multiframe

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    ds.NumberOfFrames = frames
    assert not is_multiframe(ds)
    ds.NumberOfFrames = "12"
    assert is_multiframe(ds)


def test_sources_repaired_with_one_warning_per_attribute(series, tmp_path):
    files = []
    for i, path in enumerate(series[:4]):
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate, ds.StudyDate = "00000000", "UNKNOWN"
        ds.FrameOfReferenceUID = pydicom.uid.generate_uid()  # one per image, as Sunnybrook has
        del ds.AccessionNumber
        target = tmp_path / f"{i}.dcm"
        ds.save_as(target)
        files.append(target)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        repaired = derivation_sources(files)
    messages = [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]
    assert messages == [
        f"{files[0]}: 'PatientBirthDate' value '00000000' is not a valid DICOM date; written empty in the DICOM outputs",
        f"{files[0]}: 'StudyDate' value 'UNKNOWN' is not a valid DICOM date; written empty in the DICOM outputs",
        f"{files[0]}: 'FrameOfReferenceUID' (0020,0052) differs between the source images; the DICOM outputs use "
        f"{repaired[0].FrameOfReferenceUID}",
    ]
    assert {ds.FrameOfReferenceUID for ds in repaired} == {repaired[0].FrameOfReferenceUID}
    assert all(ds.PatientBirthDate == "" and ds.StudyDate == "" and ds.AccessionNumber == "" for ds in repaired)
    # the same series gives the same frame of reference for every phase's outputs
    again = derivation_sources(files[2:])
    assert again[0].FrameOfReferenceUID == repaired[0].FrameOfReferenceUID
    np.testing.assert_array_equal(repaired[0].pixel_array, pydicom.dcmread(files[0]).pixel_array)


def test_rejection_note_withdraws_a_studys_results_and_validates(series, tmp_path):
    """IHE IOCM: a Key Object Selection titled 'Rejected for Quality Reasons' (DCM 113001)
    referencing the rejected instances, in their study; dciodvfy finds nothing to report."""
    import shutil
    import subprocess

    from cmrsdk.errors import ReadError
    from cmrsdk.io.rejection import write_rejection_note

    reports = [write_measurement_report(tmp_path / f"sr{i}.dcm", {"lvef_pct": 50.0 + i}, series[:2]) for i in range(2)]
    note = pydicom.dcmread(write_rejection_note(tmp_path / "note.dcm", reports))
    assert (note.Modality, note.SOPClassUID) == ("KO", "1.2.840.10008.5.1.4.1.1.88.59")
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == (
        "113001",
        "DCM",
        "Rejected for Quality Reasons",
    )
    rejected = [pydicom.dcmread(r, stop_before_pixels=True) for r in reports]
    assert note.StudyInstanceUID == rejected[0].StudyInstanceUID
    assert note.SeriesInstanceUID not in {r.SeriesInstanceUID for r in rejected}
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series_item in study.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    }
    assert evidence == {r.SOPInstanceUID for r in rejected}
    if shutil.which("dciodvfy") is not None:
        result = subprocess.run(["dciodvfy", str(tmp_path / "note.dcm")], capture_output=True, text=True, timeout=60)
        assert not [
            line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("Error", "Warning"))
        ]
    with pytest.raises(InputError, match="'rejected_files' is empty"):
        write_rejection_note(tmp_path / "x.dcm", [])
    other = write_dicom_series(tmp_path / "other", synthetic_study(seed=6, n_slices=3, shape=(32, 32), n_phases=2))
    with pytest.raises(InputError, match="belong to 2 studies"):
        write_rejection_note(tmp_path / "x.dcm", [reports[0], other[0]])
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    with pytest.raises(ReadError, match="junk.dcm"):
        write_rejection_note(tmp_path / "x.dcm", [tmp_path / "junk.dcm"])
    assert not (tmp_path / "x.dcm").exists()


def test_seg_written_from_sources_highdicom_refuses_as_they_are(tmp_path):
    """Three headers real scanners write that highdicom refuses for a SEG: direction cosines
    rounded differently on one image, a character set with code extensions (Japanese), no
    SliceThickness. Each is repaired with one warning naming file, attribute and value, and the
    SEG is written with the patient's name intact and passes dciodvfy."""
    import shutil
    import subprocess

    from cmrsdk.io import read_dicom_study, write_dicom_seg

    folder = tmp_path / "series"
    write_dicom_series(folder, synthetic_study(seed=3, n_slices=4, shape=(32, 32), n_phases=2))
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = name
        del ds.SliceThickness
        if path.name.startswith("000_002"):  # one image's cosines a rounding apart
            ds.ImageOrientationPatient = [float(v) + 1e-6 for v in ds.ImageOrientationPatient]
        ds.save_as(path)
    stack = read_dicom_study(folder).phases[0]
    odd = next(f for f in stack.source_files if Path(f).name.startswith("000_002"))
    labels = np.zeros(stack.shape, np.uint8)
    labels[:, 10:20, 10:20] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg_path = write_dicom_seg(tmp_path / "seg.dcm", labels, stack)
    messages = [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]
    first = stack.source_files[0]
    assert len(messages) == 3
    assert messages[:2] == [
        f"{first}: 'SpecificCharacterSet' (0008,0005) value '\\\\ISO 2022 IR 87' cannot be written by the DICOM "
        "writer; text is written as UTF-8 (ISO_IR 192) in the DICOM outputs",
        f"{first}: 'SliceThickness' (0018,0050) is missing; the DICOM outputs give the slice spacing, "
        f"{stack.spacing[0]:.6g} mm",
    ]
    assert messages[2].startswith(f"{odd}: 'ImageOrientationPatient' (0020,0037) ")
    assert f"differs from {Path(first).name}'s by 1e-06 (rounding)" in messages[2]
    seg = pydicom.dcmread(seg_path)
    assert seg.SpecificCharacterSet == "ISO_IR 192" and str(seg.PatientName) == name
    assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == pytest.approx(
        stack.spacing[0]
    )
    if shutil.which("dciodvfy"):
        result = subprocess.run(["dciodvfy", str(seg_path)], capture_output=True, text=True, timeout=120)
        assert [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")] == []


def test_an_empty_segmentation_is_written_whole_and_quietly(series, tmp_path, caplog):
    """A study with no heart found: the SEG holds every (empty) frame, and highdicom's line about
    reverting "omit_empty_frames" no longer reaches the user's terminal."""
    import logging

    import pydicom

    from cmrsdk.io import read_dicom_study, write_dicom_seg

    stack = read_dicom_study(series[0].parent).phases[0]
    caplog.set_level(logging.INFO)
    path = write_dicom_seg(tmp_path / "seg.dcm", np.zeros(stack.shape, np.uint8), stack)
    assert not [r for r in caplog.records if r.name.startswith("highdicom") and r.levelno >= logging.WARNING]
    assert int(pydicom.dcmread(path).NumberOfFrames) == 3 * stack.shape[0]  # every frame, one per structure


# -- the SEG each measure is read from, and the report's quality caveats ------------------------


@pytest.fixture(scope="module")
def segs(series, tmp_path_factory) -> dict[str, Path]:
    """ED and ES SEGs of the 2-phase synthetic series: an LV blood pool and myocardium on slices
    1-2, no RV (an empty segment has no frames to reference)."""
    from cmrsdk.io import read_study, write_dicom_seg

    folder = tmp_path_factory.mktemp("segs")
    study = read_study(series[0].parent)
    written = {}
    for name, stack in zip(("ED", "ES"), study.phases):
        labels = np.zeros(stack.shape, np.uint8)
        labels[1:3, 10:15, 10:15] = 1
        labels[1:3, 8:10, 8:17] = 2
        written[name] = write_dicom_seg(folder / f"seg_{name}.dcm", labels, stack)
    return written


def _volumetric(path: Path) -> dict[str, tuple[list[tuple[str, float]], str | None, list[int]]]:
    """tracking identifier -> (measures (code, value), referenced SEG SOP instance UID, segment numbers)."""
    import highdicom as hd

    found = {}
    for group in hd.sr.srread(path).content.get_volumetric_roi_measurement_groups():
        ref = group.referenced_segment
        found[str(group.tracking_identifier)] = (
            [(m.name.value, float(m.value)) for m in group.get_measurements()],
            ref.referenced_sop_instance_uid,
            list(ref.referenced_segment_numbers),
        )
    return found


def _caveats(path: Path) -> dict[str, list[tuple[str, str, str]]]:
    import highdicom as hd

    found: dict[str, list[tuple[str, str, str]]] = {}
    for group in hd.sr.srread(path).content.get_image_measurement_groups():
        for item in group.get_qualitative_evaluations():
            found.setdefault(str(group.tracking_identifier), []).append(
                (item.value.value, item.value.scheme_designator, item.value.meaning)
            )
    return found


def test_each_volume_references_the_segment_it_was_read_from(series, segs, tmp_path):
    import shutil
    import subprocess

    measures = {"lvedv_ml": 151.25, "lvesv_ml": 61.5, "lvsv_ml": 89.75, "lvef_pct": 59.339, "lv_mass_g": 120.4}
    measures |= {"rvedv_ml": 0.0, "rvesv_ml": 0.0}
    path = write_measurement_report(tmp_path / "sr.dcm", measures, series, segmentations=segs)
    uid = {name: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for name, p in segs.items()}
    assert _volumetric(path) == {
        "LV blood pool at ED": ([("8821-1", 151.25)], uid["ED"], [1]),
        "LV blood pool at ES": ([("8823-7", 61.5)], uid["ES"], [1]),
        "LV myocardium at ED": ([("18087-7", 120.4)], uid["ED"], [2]),
        # no RV drawn: segment 3 has no frames, so its series is referenced instead of frames
        "RV blood pool at ED": ([("8822-9", 0.0)], uid["ED"], [3]),
        "RV blood pool at ES": ([("8824-5", 0.0)], uid["ES"], [3]),
    }
    # read from two phases, SV and EF stay in the ventricle's group
    assert _measurements(path) == {"Left ventricle": [("90096001", 89.75, "ml"), ("8811-2", 59.339, "%")]}
    ds = pydicom.dcmread(path)
    evidence = {
        item.ReferencedSOPInstanceUID
        for study in ds.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
        for item in s.ReferencedSOPSequence
    }
    assert set(uid.values()) <= evidence
    if shutil.which("dciodvfy") is not None:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


def test_quality_flags_are_coded_as_caveats_by_scope(series, segs, tmp_path):
    import shutil
    import subprocess

    from cmrsdk.io.sr import SR_CAVEATS

    flags = {"study": ["rv_esv_exceeds_edv"], "ED": ["no_rv", "basal_coverage"], "ES": [], "single phase": []}
    path = write_measurement_report(tmp_path / "sr.dcm", {"lvef_pct": 55.0}, series, quality_flags=flags)
    assert _caveats(path) == {
        "Quality caveats": [("rv_esv_gt_edv", "99CMRSDK", "RV larger at ES than at ED: SV and EF withheld")],
        "Quality caveats at ED": [
            ("no_rv", "99CMRSDK", "No RV blood pool on any slice"),
            ("basal_coverage", "99CMRSDK", "Basal slice holds LV: stack may miss the base"),
        ],
    }
    # a flag added later without an entry keeps its name rather than stopping the report
    path = write_measurement_report(
        tmp_path / "sr2.dcm", {"lvef_pct": 55.0}, series, quality_flags={"ES": ["a_new_flag"]}
    )
    assert _caveats(path) == {"Quality caveats at ES": [("a_new_flag", "99CMRSDK", "a new flag")]}
    # the private scheme is declared, for a reader to look it up (dciodvfy still warns that it is
    # no defined term: it checks PS3.16's list only)
    (scheme,) = pydicom.dcmread(path).CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99CMRSDK" and scheme.CodingSchemeResponsibleOrganization == "cmrsdk"
    if shutil.which("dciodvfy") is not None:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
        assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    plain = write_measurement_report(tmp_path / "sr3.dcm", {"lvef_pct": 55.0}, series)
    assert "CodingSchemeIdentificationSequence" not in pydicom.dcmread(plain)
    # DICOM's limits: a code value is SH (16 characters), a meaning LO (64); each code one flag
    assert all(len(v) <= 16 and len(m) <= 64 for v, m in SR_CAVEATS.values())
    assert len({v for v, _ in SR_CAVEATS.values()}) == len(SR_CAVEATS)
