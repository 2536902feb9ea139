"""A one-phase study (one frame of a cine, a 3-D NIfTI): report.json names no ED or ES phase.

``ed_index`` and ``es_index`` are null, as its ED and ES measures are, and the ``single_phase``
flag says why; report.html, the DICOM SR and measures.csv present its one phase as before.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest

from cmrsdk.report import study_report
from cmrsdk.types import SINGLE_PHASE, Study

ACDC_FRAME = Path("acdc") / "training" / "patient001" / "patient001_frame01.nii.gz"


@pytest.fixture(scope="module")
def single(segmented_phantom):
    """(study, result): the phantom's ED stack alone, a study of one phase the input does not name."""
    from cmrsdk import DEMO_BUNDLE, Pipeline

    study, _ = segmented_phantom
    alone = Study(phases=(study.ed,), info=study.info)
    return alone, Pipeline(DEMO_BUNDLE).segment_study(alone)


def test_a_one_phase_report_names_no_ed_or_es_phase(single):
    from cmrsdk.report_html import render_report_html

    study, result = single
    assert result.ed_index == 0  # the pipeline's own: its one phase is the one it measures
    report = study_report(result, study)
    assert (report["ed_index"], report["es_index"], report["ed_es_from"]) == (None, None, None)
    assert report["flags"] == ["single_phase"] and [p["phase"] for p in report["phases"]] == [SINGLE_PHASE]
    assert report["measures"]["lvedv_ml"] is None and report["measures"]["lv_volume_ml"] > 10
    json.dumps(report, allow_nan=False)  # null, not NaN
    # the page never read the index of a one-phase study: the same page as with the old 0
    page = "".join(render_report_html(result, report, study=study))
    assert page == "".join(render_report_html(result, {**report, "ed_index": 0}, study=study))
    assert "whether that phase is end-diastole, end-systole or another" in page


def test_the_sr_keeps_the_one_phases_caveats(single):
    """The SR's caveats come from the phase entry, not from ``ed_index`` (now null)."""
    from cmrsdk.study import _flags_by_scope

    study, result = single
    report = study_report(result, study)
    report["phases"][0]["quality_flags"] = ["apical_coverage"]
    assert _flags_by_scope(report) == {"study": ["single_phase"], SINGLE_PHASE: ["apical_coverage"]}
    # a cine's ED and ES as before
    two = {"flags": [], "ed_index": 1, "es_index": 0, "phases": [{"quality_flags": ["b"]}, {"quality_flags": ["a"]}]}
    assert _flags_by_scope(two) == {"study": [], "ED": ["a"], "ES": ["b"]}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_one_acdc_frame_segmented_as_nifti_and_as_dicom(shared_data, tmp_path, capsys):
    """ACDC patient001's ED frame alone, the input of the report: report.json's indices null, the
    phase's flags in report.json, the SR and report.html alike."""
    hd = pytest.importorskip("highdicom")
    from cmrsdk.cli import main
    from cmrsdk.io import read_study, write_dicom_series
    from cmrsdk.io.sr import SR_CAVEATS
    from cmrsdk.report_html import QUALITY_FLAG_TEXT

    source = shared_data / ACDC_FRAME
    if not source.is_file():
        pytest.skip(f"ACDC frame not found at {source}")
    dicom = tmp_path / "series"
    write_dicom_series(dicom, read_study(source))
    for name, given in (("from_nifti", source), ("from_dicom", dicom)):
        assert main(["segment", str(given), "-o", str(tmp_path / name)]) == 0, capsys.readouterr().err
        report = json.loads((tmp_path / name / "report.json").read_text())
        assert (report["ed_index"], report["es_index"], report["ed_es_from"]) == (None, None, None), name
        assert report["flags"] == ["single_phase"] and len(report["phases"]) == 1
        flags = report["phases"][0]["quality_flags"]
        assert "apical_coverage" in flags  # what the ED frame of patient001 is flagged for
        page = (tmp_path / name / "report.html").read_text()
        for flag in flags:
            assert f"<li><b>{SINGLE_PHASE}</b>: {html.escape(QUALITY_FLAG_TEXT[flag])}</li>" in page, flag
    caveats: dict[str, list[str]] = {}
    for group in hd.sr.srread(tmp_path / "from_dicom" / "sr.dcm").content.get_image_measurement_groups():
        for item in group.get_qualitative_evaluations():
            caveats.setdefault(str(group.tracking_identifier), []).append(item.value.value)
    assert caveats == {
        "Quality caveats": [SR_CAVEATS["single_phase"][0]],
        f"Quality caveats at {SINGLE_PHASE}": [SR_CAVEATS[flag][0] for flag in flags],
    }


def test_measures_csv_keeps_the_one_phases_flags(single):
    from cmrsdk.cohort.table import measures_row

    study, result = single
    report = study_report(result, study)
    report["phases"][0]["quality_flags"] = ["apical_coverage"]
    row = measures_row(report)
    assert (row["ed_phase"], row["es_phase"]) == (None, None)
    assert row["quality_flags"] == "phase:apical_coverage;single_phase"
