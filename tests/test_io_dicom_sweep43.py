"""Sweep 43: DICOM after de-identification tools (runs/redteam43): per-file SeriesInstanceUIDs
regrouped, InstanceNumber ordering only where regular, scattered AcquisitionTime and zeroed trigger
times not taken for perfusion, PatientAge '000Y' not an age."""

from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import CmrWarning, ReadError
from cmrsdk.io import read_dicom_study, scan_dicom_series, write_dicom_series
from cmrsdk.io.dicom import _age_years
from cmrsdk.synth import synthetic_study

N_SLICES, N_PHASES = 6, 8


@pytest.fixture(scope="module")
def cine(tmp_path_factory) -> Path:
    """A synthetic 6-slice, 8-phase cine (phase-major files and InstanceNumbers, TriggerTime set)."""
    folder = tmp_path_factory.mktemp("cine") / "cine"
    write_dicom_series(folder, synthetic_study(3, n_slices=N_SLICES, shape=(48, 48), n_phases=N_PHASES))
    return folder


def _edited(cine: Path, target: Path, edit) -> Path:
    """A copy of ``cine`` (new SOPInstanceUIDs), every header passed to ``edit(ds, i)``."""
    target.mkdir(parents=True)
    for i, path in enumerate(sorted(cine.glob("*.dcm"))):
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        edit(ds, i)
        ds.save_as(target / path.name)
    return target


def _read(folder: Path):
    """read_dicom_study and the CmrWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = read_dicom_study(folder)
    return study, [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]


def _same_pixels(study, reference) -> None:
    assert len(study.phases) == len(reference.phases)
    for got, want in zip(study.phases, reference.phases):
        np.testing.assert_array_equal(got.pixels, want.pixels)


def _per_file_uids(ds, i) -> None:  # dcmodify -gst -gse: new Study and Series UIDs per file
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()


# -- F1: one SeriesInstanceUID per file ----------------------------------------------------------


def test_per_file_series_uids_are_regrouped_as_the_cine(cine: Path, tmp_path: Path) -> None:
    """Every file its own Study and Series UID: one image was read (one slice, one phase), status ok."""
    reference = read_dicom_study(cine)
    study, said = _read(_edited(cine, tmp_path / "anon", _per_file_uids))
    _same_pixels(study, reference)
    assert study.phases[0].pixels.shape[0] == N_SLICES
    np.testing.assert_allclose(study.trigger_times_ms, reference.trigger_times_ms)
    regrouped = [m for m in said if "regrouped by geometry" in m]
    assert len(regrouped) == 1 and f"{N_SLICES * N_PHASES} series of one image each were regrouped" in regrouped[0]
    assert "its own SeriesInstanceUID" in regrouped[0]
    (summary,) = scan_dicom_series(tmp_path / "anon")  # inspect lists the candidate, not 48 one-image series
    assert (summary.n_images, summary.n_positions, summary.n_phases) == (N_SLICES * N_PHASES, N_SLICES, N_PHASES)
    assert summary.is_sax_cine and summary.series_uid.endswith(f"+{N_SLICES * N_PHASES - 1} more")


def test_regrouping_without_series_numbers_says_they_are_absent(cine: Path, tmp_path: Path) -> None:
    """SeriesNumber removed with the UIDs: the warning said "SeriesNumber 0", a value no file holds."""

    def strip(ds, i) -> None:
        _per_file_uids(ds, i)
        del ds.SeriesNumber

    study, said = _read(_edited(cine, tmp_path / "anon", strip))
    assert study.phases[0].pixels.shape[0] == N_SLICES
    (regrouped,) = [m for m in said if "regrouped by geometry" in m]
    assert "SeriesNumber (absent)" in regrouped and "SeriesNumber 0" not in regrouped
    (summary,) = scan_dicom_series(tmp_path / "anon")
    assert summary.series_number is None


def test_regrouped_images_that_collide_are_refused(cine: Path, tmp_path: Path) -> None:
    """Two such cines alike in one folder put two images at one position and time: refused, named."""
    exam = tmp_path / "exam"
    _edited(cine, exam / "a", _per_file_uids)
    _edited(cine, exam / "b", _per_file_uids)
    with pytest.raises(ReadError, match=r"one-image series regrouped by geometry .* collide: .*'TriggerTime'"):
        read_dicom_study(exam)


def test_one_image_localizers_are_not_regrouped(cine: Path, tmp_path: Path) -> None:
    """Three one-image localizers (three planes, each its own series) beside the cine: as before."""
    exam = tmp_path / "exam"
    shutil.copytree(cine, exam / "cine")
    planes = ([1, 0, 0, 0, 1, 0], [1, 0, 0, 0, 0, -1], [0, 1, 0, 0, 0, -1])
    for k, orientation in enumerate(planes):
        _edited(cine, exam / f"loc{k}", lambda ds, i: None)
        for i, file in enumerate(sorted((exam / f"loc{k}").glob("*.dcm"))):
            if i:
                file.unlink()
                continue
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.ImageOrientationPatient = (
                pydicom.uid.generate_uid(),
                100,
                orientation,
            )
            ds.save_as(file)
    study, said = _read(exam)
    assert not any("regrouped" in m for m in said)
    assert all(f.startswith(str(exam / "cine")) for f in study.phases[0].source_files)
    assert len(scan_dicom_series(exam)) == 4


def test_batch_finds_one_study_in_per_file_study_uids(cine: Path, tmp_path: Path) -> None:
    """`cmrsdk batch` splits a folder by StudyInstanceUID only where two studies hold a cine."""
    from cmrsdk.cohort.discover import discover_studies

    _edited(cine, tmp_path / "cohort" / "anon", _per_file_uids)
    (found,) = discover_studies([tmp_path / "cohort"])
    assert found.study_uid is None


# -- F4: InstanceNumber orders the phases only where it steps regularly ---------------------------


def _untimed(numbering):
    def edit(ds, i):
        del ds.TriggerTime
        if "NominalCardiacTriggerDelayTime" in ds:
            del ds.NominalCardiacTriggerDelayTime
        ds.InstanceNumber = numbering(ds, i)

    return edit


def _slice_major(i: int) -> int:  # file i is phase i // N_SLICES at slice i % N_SLICES
    return (i % N_SLICES) * N_PHASES + i // N_SLICES + 1


def _hole(i: int, z: int, t: int) -> int:
    """1 for the images numbered after slice ``z``'s phase ``t`` had been left out (a number skipped)."""
    here, phase = i % N_SLICES, i // N_SLICES
    return int(here > z or (here == z and phase >= t))


def test_regular_instance_numbers_order_the_phases(cine: Path, tmp_path: Path) -> None:
    """Phase-major (stride 6), slice-major (stride 1), restarting per slice, and with gaps of a
    missing image or two: the same phases in the same order as by TriggerTime."""
    reference = read_dicom_study(cine)
    numberings = {
        "phase_major": lambda ds, i: int(ds.InstanceNumber),
        "slice_major": lambda ds, i: _slice_major(i),
        "per_slice": lambda ds, i: i // N_SLICES + 1,
        "gaps": lambda ds, i: _slice_major(i) + _hole(i, 2, 4) + _hole(i, 4, 1),
    }
    for name, numbering in numberings.items():
        study, said = _read(_edited(cine, tmp_path / name, _untimed(numbering)))
        _same_pixels(study, reference)
        assert study.trigger_times_ms is None
        assert any("phases ordered by InstanceNumber" in m for m in said), name


@pytest.mark.parametrize("kind", ["random", "file_name_order"])
def test_irregular_instance_numbers_are_refused(cine: Path, tmp_path: Path, kind: str) -> None:
    """Renumbered at random, or 1..N in the files' name order as strings: phases mixed, LVEF 19.1 %, status ok."""
    n = N_SLICES * N_PHASES
    numbers = list(range(1, n + 1))
    random.Random(43).shuffle(numbers)
    if kind == "file_name_order":  # files named by InstanceNumber as plain numbers: "1", "10", "11", "2", ...
        names = sorted((str(k) for k in range(1, n + 1)))
        numbers = [names.index(str(k)) + 1 for k in range(1, n + 1)]
    folder = _edited(cine, tmp_path / kind, _untimed(lambda ds, i: numbers[int(ds.InstanceNumber) - 1]))
    with pytest.raises(ReadError) as raised:
        read_dicom_study(folder)
    message = str(raised.value)
    assert re.search(
        r"\.dcm: the phases cannot be ordered: 'TriggerTime' \(0018,1060\) is absent and 'InstanceNumber' \(0020,0013\) "
        r"does not step regularly: at slice position \d its values are \d+, \d+",
        message,
    ), message
    assert "\n" not in message


def test_sunnybrook_renumbered_in_file_name_order_is_refused(shared_data: Path, tmp_path: Path) -> None:
    """The sweep's variant instance_lexicographic_no_trigger of SCD0000101 (LVEF 32.459 % for 31.705, ok);
    its original InstanceNumbers with TriggerTime removed order it as TriggerTime does."""
    source = shared_data / "sunnybrook" / "SCD0000101"
    files = sorted(source.glob("*.dcm"), key=lambda p: p.name)  # string order: 1, 10, 100, 101, ...
    for name, renumber in (("lexicographic", True), ("original", False)):
        (tmp_path / name).mkdir()
        for n, file in enumerate(files, start=1):
            ds = pydicom.dcmread(file)
            del ds.TriggerTime, ds.NominalCardiacTriggerDelayTime
            if renumber:
                ds.InstanceNumber = n
            ds.save_as(tmp_path / name / file.name)
    with pytest.raises(
        ReadError, match=r"phases cannot be ordered: .*'InstanceNumber' \(0020,0013\) does not step regularly"
    ):
        read_dicom_study(tmp_path / "lexicographic")
    study, _ = _read(tmp_path / "original")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _same_pixels(study, read_dicom_study(source))


# -- F7: times a de-identification tool changed ---------------------------------------------------


def test_acquisition_times_shifted_per_file_do_not_make_perfusion(cine: Path, tmp_path: Path) -> None:
    """AcquisitionTime shifted at random per file (up to an hour): refused as perfusion 'acquired
    over 7164 s' though TriggerTime steps through one heartbeat at every position."""
    rng = random.Random(7)

    def scattered(ds, i):
        ds.AcquisitionTime = f"{rng.randrange(10, 12):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}.000000"

    study, _ = _read(_edited(cine, tmp_path / "scattered", scattered))
    _same_pixels(study, read_dicom_study(cine))
    (summary,) = scan_dicom_series(tmp_path / "scattered")
    assert summary.trigger_cycle and summary.acquisition_span_s > 30 and not summary.is_dynamic


def test_perfusion_refusal_names_a_file_and_its_values(cine: Path, tmp_path: Path) -> None:
    """Perfusion (no TriggerTime, a dynamic every 14 s: 98 s) is still refused, naming a file and
    the values, not the folder alone."""

    def perfusion(ds, i):
        del ds.TriggerTime
        seconds = (i // N_SLICES) * 14  # a dynamic every 14 s
        ds.AcquisitionTime = f"12{seconds // 60:02d}{seconds % 60:02d}.000000"

    folder = _edited(cine, tmp_path / "perfusion", perfusion)
    with pytest.raises(ReadError) as raised:
        read_dicom_study(folder)
    assert raised.value.path == str(folder / "000_000.dcm")
    assert re.search(
        r"acquired over 98 s \('AcquisitionTime' \(0008,0032\)\).*perfusion \('AcquisitionTime' 120000\.000000 "
        r"here and 120138\.000000 in 007_000\.dcm at one slice position\)",
        str(raised.value),
    ), str(raised.value)


def test_zeroed_trigger_times_fall_back_to_instance_numbers(cine: Path, tmp_path: Path) -> None:
    """TriggerTime and the nominal delay 0 in every image: refused as perfusion ('spans 0.0 ms')."""

    def zeroed(ds, i):
        ds.TriggerTime = "0"
        ds.NominalCardiacTriggerDelayTime = 0.0

    study, said = _read(_edited(cine, tmp_path / "zeroed", zeroed))
    _same_pixels(study, read_dicom_study(cine))
    assert study.trigger_times_ms is None
    assert any(re.search(r"is 0 ms in all 48 images: no time order; phases ordered by InstanceNumber", m) for m in said)

    def zeroed_shuffled(ds, i):  # ... and only where InstanceNumber steps regularly
        zeroed(ds, i)
        ds.InstanceNumber = (int(ds.InstanceNumber) * 7) % 97

    with pytest.raises(
        ReadError, match=r"'TriggerTime' \(0018,1060\) is one value for every image and 'InstanceNumber' \(0020,0013\)"
    ):
        read_dicom_study(_edited(cine, tmp_path / "zeroed_shuffled", zeroed_shuffled))


# -- F6: PatientAge '000Y' ------------------------------------------------------------------------


def test_age_zero_is_not_entered(cine: Path, tmp_path: Path) -> None:
    """'000Y' (an anonymiser's placeholder) read as 0 years: 'the patient is 0 years old' in report.html."""
    assert [_age_years(v) for v in ("000Y", "000M", "000D", "045Y", "006M", "ANON", None)] == [
        None, None, None, 45.0, 0.5, None, None,
    ]  # fmt: skip

    def placeholder(ds, i):
        ds.PatientAge = "000Y"

    study, _ = _read(_edited(cine, tmp_path / "age", placeholder))
    assert study.info.age_years is None


def test_two_patients_per_file_series_of_one_geometry_are_not_one_cine(cine: Path, tmp_path: Path) -> None:
    """Sweep 44: two patients' per-file series, one geometry and SeriesNumber, were regrouped into
    one cine of both patients' positions and measured as one (LVEF 28.342 % for 31.705 and 27.918)."""
    folder = tmp_path / "both"
    _edited(cine, folder / "a", _per_file_uids)

    def other_patient(ds, i) -> None:
        _per_file_uids(ds, i)
        ds.PatientID, ds.PatientName = "OTHER", "Other^Patient"
        ds.ImagePositionPatient = [float(v) + 2.5 for v in ds.ImagePositionPatient]  # positions between the first's

    _edited(cine, folder / "b", other_patient)
    summaries = [s for s in scan_dicom_series(folder) if s.is_sax_cine]
    assert len(summaries) == 2
    assert all((s.n_positions, s.n_phases) == (N_SLICES, N_PHASES) for s in summaries)
