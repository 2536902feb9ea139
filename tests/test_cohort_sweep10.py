"""`cmrsdk batch` after the tenth review: one row per study whatever path reaches it, a study list's
height and weight in the study's own report, one-phase volumes in the table, a row for a folder
without a study, the line on results redone, the table's rounding.

One in-process batch on real studies (ACDC, demo bundle, baseline mode) serves the first four.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from cmrsdk.cohort.discover import StudySource, discover_studies
from _cohort import InProcess

from cmrsdk.cohort.table import COLUMNS, write_measures_csv
from cmrsdk.cohort.worker import PipelineSpec
from cmrsdk.errors import CmrWarning


def _spec() -> PipelineSpec:
    from cmrsdk import DEMO_BUNDLE

    return PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline", overlay=False)


@pytest.fixture(scope="module")
def cohort_run(shared_data: Path, tmp_path_factory):
    """patient001 through a list with height and weight, the same folder again through a symlink,
    a one-phase NIfTI, a byte-identical copy of it and a symlink to it; one batch."""
    from cmrsdk.cohort.batch import run_batch

    root = tmp_path_factory.mktemp("cohort10")
    acdc = shared_data / "acdc" / "training"
    (root / "p1").symlink_to(acdc / "patient001")
    (root / "site_b").mkdir()
    (root / "site_b" / "p1").symlink_to(acdc / "patient001")  # the same study reached by another path
    shutil.copy(acdc / "patient023" / "patient023_frame01.nii.gz", root / "one.nii.gz")
    shutil.copy(root / "one.nii.gz", root / "one_copy.nii.gz")  # byte-identical, another name
    (root / "one_link.nii.gz").symlink_to(root / "one.nii.gz")
    studies = [
        StudySource("p1", str(root / "p1"), height_cm=150.0, weight_kg=50.0),
        StudySource("p1_site_b", str(root / "site_b" / "p1")),
        StudySource("one", str(root / "one.nii.gz")),
        StudySource("one_copy", str(root / "one_copy.nii.gz")),
        StudySource("one_link", str(root / "one_link.nii.gz")),
    ]
    out = tmp_path_factory.mktemp("out10") / "out"
    spec = _spec()
    summary = run_batch(studies, spec, out, InProcess(spec, 1, 1), progress=False, figure=False)
    with (out / "measures.csv").open(newline="") as handle:
        table = {r["study_id"]: r for r in csv.DictReader(handle)}
    return out, summary, table


def test_a_study_reached_by_another_path_or_copied_is_counted_once(cohort_run):
    """Sweep 10: siteB/patient003 -> patient003 and a file beside its copy were two "ok" rows, so
    the cohort's statistics counted the patient twice."""
    out, summary, table = cohort_run
    assert table["p1"]["status"] == "ok" and table["one"]["status"] == "ok"
    assert table["p1_site_b"]["status"] == "skipped"
    assert table["p1_site_b"]["error"].startswith("same source as study 'p1' (both are ")
    assert table["one_link"]["status"] == "skipped"
    assert table["one_link"]["error"].startswith("same source as study 'one'")
    assert table["one_copy"]["status"] == "skipped"
    assert table["one_copy"]["error"] == "same content as study 'one' (byte-identical files)"
    assert table["one_copy"]["lv_mass_g"] == "" and summary.count("ok") == 2
    assert summary.ran == 3  # the paths resolving to a source already listed are not segmented at all


def test_a_lists_height_and_weight_reach_the_studys_own_report(cohort_run):
    """Sweep 10: the list's values reached measures.csv only; report.json and report.html kept
    Info.cfg's (patient001: 184 cm, 95 kg), so LVEDVi differed between them."""
    out, _, table = cohort_run
    row = table["p1"]
    report = json.loads((out / "studies" / "p1" / "report.json").read_text())
    assert (report["study"]["height_cm"], report["study"]["weight_kg"]) == (150.0, 50.0)
    bsa = math.sqrt(150.0 * 50.0 / 3600)
    assert float(row["bsa_m2"]) == pytest.approx(bsa, abs=1e-4)
    assert float(row["lvedvi_ml_m2"]) == pytest.approx(report["measures"]["lvedv_ml"] / bsa, abs=1e-3)
    html = (out / "studies" / "p1" / "report.html").read_text()
    assert f"Body surface area {bsa:.2f} m² (Mosteller) from height 150 cm and weight 50 kg." in html


def test_a_one_phase_studys_volumes_are_in_the_table(cohort_run):
    """Sweep 10: report.json's lv_volume_ml / rv_volume_ml (a one-phase study, no ED or ES) had no column."""
    from cmrsdk.cohort.table import SINGLE_PHASE_MEASURES

    out, _, table = cohort_run
    row = table["one"]
    report = json.loads((out / "studies" / "one" / "report.json").read_text())
    assert "single_phase" in row["quality_flags"] and row["lvedv_ml"] == ""
    for name in SINGLE_PHASE_MEASURES:
        assert report["measures"][name] is not None
        assert float(row[name]) == report["measures"][name]
    assert table["p1"]["lv_volume_ml"] == ""  # an ED/ES study's volumes stay in the ED/ES columns


def test_content_identity_leaves_names_out_and_sees_every_byte(tmp_path: Path):
    from cmrsdk.cohort.worker import content_sha256

    a, b = tmp_path / "a", tmp_path / "b"
    for folder, names in ((a, ("x.nii.gz", "Info.cfg")), (b, ("y.nii.gz", "info.txt"))):
        folder.mkdir()
        (folder / names[0]).write_bytes(b"image")
        (folder / names[1]).write_bytes(b"ED: 1")
    (a / ".DS_Store").write_bytes(b"finder")  # hidden files are not the study
    assert content_sha256(a) == content_sha256(b) is not None
    (b / "y.nii.gz").write_bytes(b"imagf")
    assert content_sha256(a) != content_sha256(b)
    assert content_sha256(tmp_path / "absent") is None


def test_a_folder_without_a_study_gets_a_skipped_row(tmp_path: Path):
    """Sweep 10: an empty study folder got no row (a stderr warning only), so the figure said
    "33 of 34" of a cohort of 35 folders."""
    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort.batch import run_batch

    root = tmp_path / "cohort"
    for name in ("a", "c"):
        (root / name).mkdir(parents=True)
        (root / name / "Info.cfg").write_text("ED: 1\n")
    (root / "b_empty").mkdir()
    (root / "d_jpeg").mkdir()
    (root / "d_jpeg" / "IMG1.JPG").write_bytes(b"\xff\xd8\xff\xe0")
    (root / "e").mkdir()  # gives way to the study e.nii.gz of the same id
    (root / "e.nii.gz").write_bytes(b"x")
    with pytest.warns(CmrWarning, match=r"3 folder\(s\) hold no study .* skipped: b_empty, d_jpeg, e$"):
        studies = discover_studies([root])
    assert [(s.study_id, s.skip_reason) for s in studies] == [
        ("e", None),
        ("a", None),
        ("b_empty", "no study in this folder (it is empty)"),
        ("c", None),
        ("d_jpeg", "no study in this folder (no DICOM image, NIfTI file, ACDC patient or M&Ms subject in it)"),
    ]
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE))
    summary = run_batch(
        [s for s in studies if s.skip_reason], spec, tmp_path / "out", lambda: None, progress=False, figure=False
    )
    assert [(r["study_id"], r["status"], r["error"]) for r in summary.rows] == [
        ("b_empty", "skipped", "no study in this folder (it is empty)"),
        ("d_jpeg", "skipped", studies[4].skip_reason),
    ]


def test_results_redone_for_other_options_are_said_on_one_line(tmp_path: Path, capsys):
    """Sweep 10: after an options or version change the batch redid earlier results without a word."""
    from test_cohort_units import _ScriptedEngine

    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort.batch import run_batch

    studies = [StudySource(name, f"/data/{name}") for name in ("a", "b", "c")]
    out = tmp_path / "out"
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE))
    run_batch(studies[:2], spec, out, _ScriptedEngine({"a": "ok", "b": "failed"}), progress=False, figure=False)
    capsys.readouterr()
    other = PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline")
    engine = _ScriptedEngine({"a": "ok", "b": "ok", "c": "ok"})
    summary = run_batch(studies, other, out, engine, progress=False, figure=False)
    assert summary.redone == 2 and engine.seen == ["a", "b", "c"]
    assert capsys.readouterr().err.splitlines() == [
        "cmrsdk: 2 earlier results use other options, another bundle or another cmrsdk build and are redone"
    ]


def test_the_tables_rounding_is_one_stated_rule(tmp_path: Path):
    """Sweep 10: the CSV did not say how its numbers are rounded; `DECIMALS` says it for every numeric column."""
    from cmrsdk.cohort.table import DECIMALS

    numeric = [c for c in COLUMNS if c.endswith(("_ml", "_pct", "_g", "_m2", "_cm", "_kg", "_bpm", "_l_min"))]
    assert numeric and all(c in DECIMALS for c in [*numeric, "seconds"])
    row = {c: 1 / 3 for c in DECIMALS}
    path = write_measures_csv(tmp_path / "m.csv", [{"study_id": "a", **row}])
    with path.open(newline="") as handle:
        (written,) = csv.DictReader(handle)
    for column, decimals in DECIMALS.items():
        assert written[column] == repr(round(1 / 3, decimals)), column
    assert written["bsa_m2"] == "0.3333" and written["lvef_pct"] == "0.333"


def test_every_pipeline_option_of_the_batch_reaches_its_pipeline(shared_data: Path, tmp_path: Path):
    """`cmrsdk batch --training-layout` was accepted and silently ignored (sweep 17's review);
    each rule option the batch takes must reach the workers' pipelines and the options key."""
    from cmrsdk.cli import main

    out = tmp_path / "out"
    args = ["batch", str(shared_data / "mnms" / "B5F8L9"), "-o", str(out), "--workers", "1", "--no-progress"]
    assert main([*args, "--no-overlay", "--no-report-html", "--training-layout", "--no-rescale-heart"]) == 0
    provenance = json.loads((out / "studies" / "B5F8L9" / "report.json").read_text())["provenance"]
    assert provenance["training_layout"] is True and provenance["rescale_heart"] is False
    spec = PipelineSpec(bundle="b")
    keys = {spec.key("m"), PipelineSpec(bundle="b", training_layout=True).key("m")}
    assert len(keys | {PipelineSpec(bundle="b", rescale_heart=False).key("m")}) == 3
    # left to the pipeline's default, or the default said: one key (review 19)
    assert spec.key("m") == PipelineSpec(bundle="b", training_layout=False, rescale_heart=True).key("m")


def test_a_study_whose_inputs_changed_is_redone(tmp_path: Path, capsys, monkeypatch):
    """Sweep 18: a study's images replaced under the same names, its Info.cfg height corrected, a
    list's height changed or its source deleted kept the earlier row (LVEDV 207.4 for 159.6)."""
    import os

    from test_cohort_units import _ScriptedEngine

    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort import worker
    from cmrsdk.cohort.batch import run_batch

    for name in ("a", "b", "c", "d"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "image.nii.gz").write_bytes(b"pixels")
        (tmp_path / name / "Info.cfg").write_text("Height: 170\n")
    studies = [StudySource(n, str(tmp_path / n), height_cm=180.0 if n == "c" else None) for n in "abcd"]
    spec, out = PipelineSpec(bundle=str(DEMO_BUNDLE)), tmp_path / "out"
    everything = {n: "ok" for n in "abcd"}
    run_batch(studies, spec, out, _ScriptedEngine(everything), progress=False, figure=False)
    capsys.readouterr()
    (tmp_path / "a" / "Info.cfg").write_text("Height: 150\n")  # corrected
    image = tmp_path / "b" / "image.nii.gz"
    mtime = image.stat().st_mtime_ns
    image.write_bytes(b"other!")  # another heart under the same name, the same size
    os.utime(image, ns=(mtime + 10**9, mtime + 10**9))
    studies[2] = StudySource("c", str(tmp_path / "c"), height_cm=160.0)  # the list's height changed
    engine = _ScriptedEngine(everything)
    summary = run_batch(studies, spec, out, engine, progress=False, figure=False)
    assert engine.seen == ["a", "b", "c"] and summary.changed == 3 and summary.reused == 1
    assert capsys.readouterr().err.splitlines() == [
        "cmrsdk: 3 studies have changed since the last run (files, or the list's height, weight or heart rate) "
        "and are redone"
    ]
    shutil.rmtree(tmp_path / "d")  # a listed source gone: run again, and the worker's read fails it
    engine = _ScriptedEngine({"d": "failed"})
    summary = run_batch(studies, spec, out, engine, progress=False, figure=False)
    assert engine.seen == ["d"] and [r["status"] for r in summary.rows] == ["ok", "ok", "ok", "failed"]
    # another build of cmrsdk under the same version number: every result redone
    monkeypatch.setattr(worker, "code_sha256", lambda: "another build")
    engine = _ScriptedEngine(everything)
    summary = run_batch(studies, spec, out, engine, progress=False, figure=False)
    assert summary.redone == 4 and engine.seen == list("abcd")


def test_a_file_name_that_is_not_utf8_is_fingerprinted(tmp_path: Path):
    """Review 19: a latin-1 file name in a study folder stopped the whole batch with a
    UnicodeEncodeError before any study ran."""
    import os

    from cmrsdk.cohort.worker import inputs_fingerprint

    folder = tmp_path / "study"
    folder.mkdir()
    with open(os.path.join(os.fsencode(folder), b"caf\xe9.dcm"), "wb") as handle:
        handle.write(b"x")
    first = inputs_fingerprint(StudySource("s", str(folder)))
    os.rename(os.path.join(os.fsencode(folder), b"caf\xe9.dcm"), os.path.join(os.fsencode(folder), b"caf\xe8.dcm"))
    assert inputs_fingerprint(StudySource("s", str(folder))) != first
