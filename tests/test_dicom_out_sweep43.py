"""Sweep 43: DICOM SEG and SR written from images de-identification tools have been through.

Anonymisers write values the outputs copy (PatientSex 'U', PatientAge 'ANON', dates 00010101, a
ReferencedStudySequence with its UIDs emptied) and delete the UIDs the outputs reference the
images by. The values are repaired with one warning naming file, attribute and value; a missing
UID is refused before the networks run, naming the file and the attribute."""

from __future__ import annotations

import shutil
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from cmrsdk.errors import CmrWarning, ReadError, WriteError
from cmrsdk.io import read_dicom_study, write_dicom_seg, write_dicom_series, write_measurement_report
from cmrsdk.io._dicom_out import valid_date
from cmrsdk.synth import synthetic_study
from cmrsdk.types import Stack


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("sweep43") / "series"
    write_dicom_series(folder, synthetic_study(seed=3, n_slices=4, shape=(32, 32), n_phases=2))
    return folder


def _variant(series: Path, folder: Path, **edits: Any) -> Path:
    """A copy of ``series`` with each attribute set (None: deleted; a callable: applied to the dataset)."""
    folder.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's notice about the invalid values set on purpose
        for path in sorted(series.glob("*.dcm")):
            ds = pydicom.dcmread(path)
            for keyword, value in edits.items():
                if callable(value):
                    value(ds)
                elif value is None:
                    if keyword in ds:
                        delattr(ds, keyword)
                else:
                    setattr(ds, keyword, value)
            ds.save_as(folder / path.name, enforce_file_format=False)
    return folder


def _stack(folder: Path) -> Stack:
    return read_dicom_study(folder).phases[0]


def _labels(stack: Stack) -> np.ndarray:
    labels = np.zeros(stack.shape, np.uint8)
    labels[:, 10:20, 10:20] = 1
    return labels


def _write_seg(path: Path, stack: Stack) -> tuple[pydicom.Dataset, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        written = write_dicom_seg(path, _labels(stack), stack)
    return pydicom.dcmread(written), [str(w.message) for w in caught if issubclass(w.category, CmrWarning)]


def _write_sr(path: Path, stack: Stack) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(write_measurement_report(path, {"lvedv_ml": 120.0}, stack.source_files))


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("sex, written", [("U", ""), ("X", ""), ("MALE", ""), ("ANON", ""), ("m", "M")])
def test_patient_sex_outside_m_f_o_is_repaired_with_one_warning(series, tmp_path, sex, written):
    """highdicom refused any other PatientSex: the study was lost at the SEG after segmenting it."""
    stack = _stack(_variant(series, tmp_path / "in", PatientSex=sex))
    seg, messages = _write_seg(tmp_path / "seg.dcm", stack)
    said = "empty" if not written else repr(written)
    assert [m for m in messages if "PatientSex" in m] == [
        f"{stack.source_files[0]}: 'PatientSex' value {sex!r} is not one of M/F/O; written {said} in the DICOM outputs"
    ]
    assert seg.PatientSex == written
    assert _write_sr(tmp_path / "sr.dcm", stack).PatientSex == written


def test_other_enumerated_patient_values_are_upper_cased_or_left_out(series, tmp_path):
    stack = _stack(_variant(series, tmp_path / "in", PatientIdentityRemoved="yes", PatientSexNeutered="ANON"))
    seg, messages = _write_seg(tmp_path / "seg.dcm", stack)
    first = stack.source_files[0]
    assert (
        f"{first}: 'PatientIdentityRemoved' value 'yes' is not one of YES/NO; written 'YES' in the DICOM outputs"
        in messages
    )
    assert (
        f"{first}: 'PatientSexNeutered' value 'ANON' is not one of ALTERED/UNALTERED; left out of the DICOM outputs"
        in messages
    )
    assert seg.PatientIdentityRemoved == "YES" and "PatientSexNeutered" not in seg


@pytest.mark.parametrize("age", ["ANON", "90+"])
def test_patient_age_that_is_no_age_string_is_left_out(series, tmp_path, age):
    stack = _stack(_variant(series, tmp_path / "in", PatientAge=age))
    seg, messages = _write_seg(tmp_path / "seg.dcm", stack)
    assert [m for m in messages if "PatientAge" in m] == [
        f"{stack.source_files[0]}: 'PatientAge' (0010,1010) value {age!r} is not a DICOM age (nnnD/W/M/Y); "
        "left out of the DICOM outputs"
    ]
    assert "PatientAge" not in seg and "PatientAge" not in _write_sr(tmp_path / "sr.dcm", stack)


def test_a_valid_patient_age_is_copied(series, tmp_path):
    seg, messages = _write_seg(tmp_path / "seg.dcm", _stack(_variant(series, tmp_path / "in", PatientAge="045Y")))
    assert seg.PatientAge == "045Y" and not [m for m in messages if "PatientAge" in m]


@pytest.mark.parametrize(
    "value, ok", [("00010101", False), ("18991231", False), ("19000101", True), ("20120101", True)]
)
def test_a_year_before_1900_is_no_date(value, ok):
    assert valid_date(value) is ok


def test_dicom_anonymizer_dates_are_emptied_and_not_reported(series, tmp_path):
    """dicom-anonymizer's 00010101 was copied into SEG and SR, and report.json said 0001-01-01."""
    folder = _variant(series, tmp_path / "in", StudyDate="00010101", SeriesDate="00010101", PatientBirthDate="00010101")
    study = read_dicom_study(folder)
    assert study.info.study_date is None
    seg, messages = _write_seg(tmp_path / "seg.dcm", study.phases[0])
    assert (
        f"{study.phases[0].source_files[0]}: 'StudyDate' value '00010101' is not a valid DICOM date; written empty in the DICOM outputs"
        in messages
    )
    assert (seg.StudyDate, seg.PatientBirthDate) == ("", "")


def _referenced_studies(*uids: tuple[str, str]) -> Callable[[pydicom.Dataset], None]:
    def edit(ds: pydicom.Dataset) -> None:
        items = []
        for sop_class, sop_instance in uids:
            item = pydicom.Dataset()
            item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
            items.append(item)
        ds.ReferencedStudySequence = items

    return edit


def test_referenced_study_items_with_emptied_uids_are_dropped(series, tmp_path):
    kept = ("1.2.840.10008.3.1.2.3.1", "1.2.3.4")
    stack = _stack(_variant(series, tmp_path / "in", ReferencedStudySequence=_referenced_studies(("", ""), kept)))
    seg, messages = _write_seg(tmp_path / "seg.dcm", stack)
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in seg.ReferencedStudySequence] == [kept]
    assert [m for m in messages if "ReferencedStudySequence" in m] == [
        f"{stack.source_files[0]}: 'ReferencedStudySequence' has 1 of 2 items with an empty ReferencedSOPClassUID "
        "or ReferencedSOPInstanceUID; left out of the DICOM outputs"
    ]
    empty = _stack(_variant(series, tmp_path / "all", ReferencedStudySequence=_referenced_studies(("", ""))))
    assert "ReferencedStudySequence" not in _write_seg(tmp_path / "seg2.dcm", empty)[0]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_seg_and_sr_from_anonymised_headers_pass_dciodvfy(series, tmp_path):
    stack = _stack(
        _variant(
            series,
            tmp_path / "in",
            PatientSex="U",
            PatientAge="ANON",
            StudyDate="00010101",
            ReferencedStudySequence=_referenced_studies(("", "")),
        )
    )
    seg, _ = _write_seg(tmp_path / "seg.dcm", stack)
    _write_sr(tmp_path / "sr.dcm", stack)
    assert _dciodvfy_errors(tmp_path / "seg.dcm") == []
    assert _dciodvfy_errors(tmp_path / "sr.dcm") == []


_MISSING = [
    ("SeriesInstanceUID", "(0020,000E)", "a DICOM SEG references the source series by it"),
    ("SOPInstanceUID", "(0008,0018)", "a DICOM SEG references each source image by it"),
    ("SOPClassUID", "(0008,0016)", "a DICOM SEG references each source image by it and its instance UID"),
    ("Modality", "(0008,0060)", "a DICOM SEG's content label names the source's modality"),
]


class _MustNotSegment:
    """A pipeline double: segmenting is the expensive step the check must come before."""

    provenance: dict[str, Any] = {}

    def segment_study(self, study: Any, **kwargs: Any) -> Any:
        raise AssertionError("segmented before the DICOM outputs' needs were checked")


@pytest.mark.parametrize("keyword, tag, why", _MISSING)
def test_a_deleted_uid_is_refused_before_segmenting_naming_file_and_attribute(series, tmp_path, keyword, tag, why):
    """pydicom/deid's default recipe deletes them: the study was segmented, then the SEG failed
    with "AttributeError: 'FileDataset' object has no attribute 'SeriesInstanceUID'"."""
    from cmrsdk.study import segment_one

    folder = _variant(series, tmp_path / "in", **{keyword: None})
    with pytest.raises(ReadError) as caught:
        segment_one(_MustNotSegment(), folder, tmp_path / "out", overlay=False, report_html=False)  # type: ignore[arg-type]
    assert str(caught.value) == f"{caught.value.path}: '{keyword}' {tag} is missing; {why}"
    assert Path(caught.value.path).parent == folder
    assert not (tmp_path / "out").exists()


def test_the_seg_writer_names_a_missing_uid_too(series, tmp_path):
    stack = _stack(_variant(series, tmp_path / "in", SOPInstanceUID=None))
    with pytest.raises(ReadError, match=r"\.dcm: 'SOPInstanceUID' \(0008,0018\) is missing; a DICOM SEG references"):
        write_dicom_seg(tmp_path / "seg.dcm", _labels(stack), stack)


def test_an_error_in_a_hidden_scratch_folder_names_the_file_alone(series, tmp_path, monkeypatch):
    """`cmrsdk batch` segments into OUT/.tmp/.worker-*: an error named that hidden path, gone when read."""
    import cmrsdk.io
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.study import segment_one

    def refuse(path: Path, *args: Any, **kwargs: Any) -> Path:
        raise WriteError(f"{path}: DICOM SEG cannot be built (ValueError: refused)")

    monkeypatch.setattr(cmrsdk.io, "write_dicom_seg", refuse)
    scratch = tmp_path / ".tmp" / ".worker-abcd1234"
    scratch.parent.mkdir()
    with pytest.raises(WriteError) as caught:
        segment_one(Pipeline(DEMO_BUNDLE, mode="baseline"), series, scratch, overlay=False, report_html=False)
    assert str(caught.value) == "seg_ED.dcm: DICOM SEG cannot be built (ValueError: refused)"


def test_one_file_without_its_sop_instance_uid_is_refused_before_segmenting(series, tmp_path):
    """Sweep 44: checked on one file per phase, one ED file without it was segmented whole (16.5 s),
    then lost the study at its SEG."""
    from cmrsdk.study import segment_one

    last = sorted(series.glob("*.dcm"))[-1].name
    folder = _variant(series, tmp_path / "in")
    ds = pydicom.dcmread(folder / last)
    del ds.SOPInstanceUID
    ds.save_as(folder / last, enforce_file_format=False)
    with pytest.raises(ReadError) as caught:
        segment_one(_MustNotSegment(), folder, tmp_path / "out", overlay=False, report_html=False)  # type: ignore[arg-type]
    assert Path(caught.value.path) == folder / last
    assert "'SOPInstanceUID' (0008,0018) is missing" in str(caught.value)
