"""`cmrsdk batch` across an upgrade (sweep 41): a result made by another cmrsdk build or bundle
than the batch's key is never filed under it; earlier results of study ids a run no longer has
are set aside or named; a study not run says when its folder holds an earlier run's result.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from _cohort import InProcess

import cmrsdk
from cmrsdk import DEMO_BUNDLE
from cmrsdk.bundle import load_bundle
from cmrsdk.cohort.batch import run_batch
from cmrsdk.cohort.discover import StudySource
from cmrsdk.cohort.engines import BatchEngine
from cmrsdk.cohort.worker import PipelineSpec, StudyResult, code_sha256

#: the code hash a "0.14.8" install on disk would give (any other than this checkout's)
NEW_CODE = "0e59e468cbe9" + "0" * 52


def _table(out: Path) -> dict[str, dict[str, str]]:
    with (out / "measures.csv").open(newline="") as handle:
        return {r["study_id"]: r for r in csv.DictReader(handle)}


def _journal(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines()]


def _made_by(out: Path, study_id: str) -> dict:
    return json.loads((out / "studies" / study_id / "report.json").read_text())["provenance"]


@pytest.fixture()
def one_phase_studies(shared_data: Path) -> list[StudySource]:
    """Two one-phase ACDC NIfTI files (the cheapest real studies)."""
    acdc = shared_data / "acdc" / "training"
    return [StudySource(f"p{n}", str(acdc / f"patient00{n}" / f"patient00{n}_frame01.nii.gz")) for n in (1, 2)]


class _RestartedMidway(InProcess):
    """The batch's `StudyWorker` in this process, started again before the second study (as
    `LocalEngine._recover` starts a new pool after a worker died) once ``upgrade`` replaced what
    is on disk: the new worker loads the new code or bundle."""

    def __init__(self, spec: PipelineSpec, upgrade) -> None:
        super().__init__(spec, 1, 1)
        self.upgrade = upgrade

    def run(self, studies):
        for n, study in enumerate(studies):
            if n == 1:
                self.upgrade()
                self._start()
            yield self.worker.run(study)


def _new_install(monkeypatch) -> None:
    """What a process importing cmrsdk after an in-place upgrade to "0.14.8" reports."""
    monkeypatch.setattr(cmrsdk, "__version__", "0.14.8")
    monkeypatch.setattr("cmrsdk._build.code_sha256", lambda: NEW_CODE)  # report.json's provenance
    monkeypatch.setattr("cmrsdk.cohort.worker.code_sha256", lambda: NEW_CODE)  # the batch's key


def test_a_result_of_code_installed_while_the_batch_ran_is_not_filed(one_phase_studies, tmp_path, monkeypatch):
    """Sweep 41 finding 1: pip -U (or a git pull of an editable checkout) while a batch ran, then a
    worker died: the new pool's results (0.14.8's numbers) were filed under 0.14.7's options_key,
    7 of 9 rows, exit 0. Now the batch stops at the first such result and files nothing of it."""
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline", overlay=False, report_html=False)
    out = tmp_path / "out"
    before = {"cmrsdk": cmrsdk.__version__, "code": code_sha256()}
    summary = run_batch(
        one_phase_studies, spec, out, _RestartedMidway(spec, lambda: _new_install(monkeypatch)), progress=False
    )
    assert summary.ran == 1 and not summary.interrupted
    made = "study 'p2' was segmented by cmrsdk 0.14.8 (code 0e59e468cbe9, bundle manifest "
    assert summary.build_changed.startswith(made)
    assert f"this batch runs cmrsdk {before['cmrsdk']} (code {before['code'][:12]}, " in summary.build_changed
    table = _table(out)
    options = json.loads((out / "options.json").read_text())
    assert options["options_key"] == table["p1"]["options_key"] and options["code"] == before["code"]
    assert table["p1"]["status"] == "ok" and _made_by(out, "p1")["code_sha256"] == before["code"]
    assert (
        float(table["p1"]["lv_volume_ml"])
        == json.loads((out / "studies/p1/report.json").read_text())["measures"]["lv_volume_ml"]
    )
    assert table["p2"]["status"] == "skipped" and table["p2"]["options_key"] == ""
    assert table["p2"]["error"].startswith("not run (cmrsdk or its bundle changed under the batch); run the same")
    assert not (out / "studies" / "p2").exists() and [r["study_id"] for r in _journal(out)] == ["p1"]

    # the same command, now run by the new install: both studies under its own key
    summary = run_batch(one_phase_studies, spec, out, InProcess(spec, 1, 1), progress=False, figure=False)
    assert summary.redone == 1 and summary.ran == 2 and not summary.build_changed
    table = _table(out)
    assert {r["status"] for r in table.values()} == {"ok"}
    assert {r["options_key"] for r in table.values()} == {json.loads((out / "options.json").read_text())["options_key"]}
    assert {_made_by(out, s)["code_sha256"] for s in table} == {NEW_CODE}


def test_a_result_of_a_bundle_replaced_while_the_batch_ran_is_not_filed(one_phase_studies, tmp_path):
    """The bundle updated in place (its manifest rewritten) while the batch ran: the restarted
    worker loads it, and its result names the new manifest."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in Path(DEMO_BUNDLE).iterdir():
        if item.name != "manifest.json":
            (bundle / item.name).symlink_to(item)
    manifest = json.loads((Path(DEMO_BUNDLE) / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    first = load_bundle(bundle).manifest_sha256

    def upgrade() -> None:
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "created": "2027-01-01T00:00:00+00:00"}))

    spec = PipelineSpec(bundle=str(bundle), mode="baseline", overlay=False, report_html=False)
    out = tmp_path / "out"
    summary = run_batch(one_phase_studies, spec, out, _RestartedMidway(spec, upgrade), progress=False, figure=False)
    second = load_bundle(bundle).manifest_sha256
    assert second != first
    assert f"bundle manifest {second[:12]}), this batch runs" in summary.build_changed
    assert f"bundle manifest {first[:12]}): cmrsdk or its bundle was replaced" in summary.build_changed
    table = _table(out)
    assert table["p1"]["status"] == "ok" and table["p1"]["bundle_sha256"] == first
    assert _made_by(out, "p1")["manifest_sha256"] == first
    assert table["p2"]["status"] == "skipped" and not (out / "studies" / "p2").exists()


def test_a_worker_pool_running_other_code_than_the_driver_stops_the_batch(
    one_phase_studies, tmp_path, monkeypatch, capsys
):
    """The local pool's spawned workers import the code on disk; the driver's key was made from
    the code it started with (here: another hash). One error line, exit 1, nothing filed."""
    from cmrsdk.cli import main

    monkeypatch.setattr("cmrsdk.cohort.worker.code_sha256", lambda: "a" * 64)  # the driver's code at its start
    listed = tmp_path / "studies.csv"
    listed.write_text("study_id,source\n" + "".join(f"{s.study_id},{s.source}\n" for s in one_phase_studies))
    out = tmp_path / "out"
    argv = ["batch", "--list", str(listed), "-o", str(out), "--bundle", str(DEMO_BUNDLE), "--workers", "1"]
    rc = main([*argv, "--threads", "1", "--no-progress", "--mode", "baseline", "--no-overlay", "--no-report-html"])
    err = capsys.readouterr().err
    assert rc == 1
    assert f"this batch runs cmrsdk {cmrsdk.__version__} (code aaaaaaaaaaaa, " in err
    assert f"was segmented by cmrsdk {cmrsdk.__version__} (code {code_sha256()[:12]}, " in err
    assert err.count("cmrsdk: error: stopped, study 'p") == 1
    assert {r["status"] for r in _table(out).values()} == {"skipped"}
    assert not (out / "studies").exists() and _journal(out) == []


class _Scripted(BatchEngine):
    """Answers "ok" for each study with a report.json naming the batch's own build, without a pipeline."""

    name = "scripted"

    def __init__(self, spec: PipelineSpec, interrupt_at: str | None = None) -> None:
        super().__init__(spec, 1, 1)
        self.interrupt_at, self.seen = interrupt_at, []
        inputs = spec.key_inputs(load_bundle(spec.bundle).manifest_sha256)
        provenance = {
            "cmrsdk": inputs["cmrsdk"],
            "code_sha256": inputs["code"],
            "manifest_sha256": inputs["manifest_sha256"],
        }
        self.report = json.dumps({"provenance": provenance}).encode()

    def _start(self) -> None:
        pass

    def run(self, studies):
        for study in studies:
            if study.study_id == self.interrupt_at:
                raise KeyboardInterrupt
            self.seen.append(study.study_id)
            row = {"study_id": study.study_id, "source": study.source, "status": "ok", "error": "", "lvef_pct": 55.0}
            yield StudyResult(study.study_id, row, {"report.json": self.report, "seg_ED.dcm": b"seg"})

    _submit = _wait = _recover = None  # type: ignore[assignment]

    def close(self) -> None:
        pass


def test_earlier_results_of_ids_a_run_no_longer_has_are_set_aside_or_named(tmp_path, capsys):
    """Sweep 41 finding 4: a cine stored one folder per slice was 12 studies before 0.14.3 and is
    one now; a rerun left the 12 old per-slice results (SEGs, report.json) under OUT/studies/, in
    no row and no line. Now they move to OUT/superseded/ (their files are the new study's); a
    result of inputs simply not given this time stays, named in one line; a folder the batch did
    not write is left alone and not named."""
    data = tmp_path / "data"
    for name in ("cine/ser_01", "cine/ser_02", "cine/ser_03", "other"):
        (data / name).mkdir(parents=True)
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE))
    out = tmp_path / "out"
    old = [StudySource(f"ser_0{n}", str(data / "cine" / f"ser_0{n}")) for n in (1, 2, 3)]
    run_batch(
        [*old, StudySource("other", str(data / "other"))], spec, out, _Scripted(spec), progress=False, figure=False
    )
    (out / "studies" / "mine").mkdir()
    (out / "studies" / "mine" / "report.json").write_text("{}")  # the user's, not the batch's
    capsys.readouterr()

    now = [StudySource("cine", str(data / "cine"))]
    summary = run_batch(now, spec, out, _Scripted(spec), progress=False, figure=False)
    assert summary.superseded == ["ser_01", "ser_02", "ser_03"] and summary.unlisted == ["other"]
    assert sorted(os.listdir(out / "studies")) == ["cine", "mine", "other"]
    assert sorted(os.listdir(out / "superseded")) == ["ser_01", "ser_02", "ser_03"]
    assert (out / "superseded" / "ser_02" / "seg_ED.dcm").read_bytes() == b"seg"
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "cmrsdk: 3 earlier results of study ids this run no longer has (their files are measured as another "
        "study now) moved from studies/ to superseded/: ser_01, ser_02, ser_03",
        "cmrsdk: 1 earlier result in studies/ belongs to no study of this run (inputs not given) and is not in "
        "measures.csv: other",
    ]
    last = {r["study_id"]: r for r in _journal(out)}
    assert last["ser_03"]["status"] == "superseded" and last["ser_03"]["outputs"] == "superseded/ser_03"
    assert last["ser_03"]["error"] == "superseded: its files are measured as study 'cine'"
    assert list(_table(out)) == ["cine"]

    # once moved, a rerun says only what is still there; an id that comes back is segmented again
    summary = run_batch([*now, old[0]], spec, out, _Scripted(spec), progress=False, figure=False)
    assert summary.superseded == [] and summary.unlisted == ["other"] and summary.ran == 1
    assert _table(out)["ser_01"]["status"] == "ok" and (out / "studies" / "ser_01" / "report.json").is_file()


def test_a_study_not_run_says_its_folder_holds_an_earlier_runs_result(tmp_path):
    """Sweep 41 finding 5: an upgraded rerun interrupted left the old version's complete results in
    studies/ while the table said only "not run"."""
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE))
    studies = [StudySource(name, str(tmp_path / name)) for name in ("a", "b")]
    out = tmp_path / "out"
    run_batch(studies, spec, out, _Scripted(spec), progress=False, figure=False)
    other = PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline")  # another key, as another build gives
    summary = run_batch(studies, other, out, _Scripted(other, interrupt_at="b"), progress=False, figure=False)
    assert summary.interrupted and summary.redone == 2
    table = _table(out)
    assert table["a"]["status"] == "ok" and table["a"]["options_key"] == other.key(
        load_bundle(DEMO_BUNDLE).manifest_sha256
    )
    assert table["b"]["status"] == "skipped" and table["b"]["outputs"] == ""
    assert table["b"]["error"] == (
        "not run (batch interrupted); run the same command again to finish; studies/b is an earlier run's "
        "result, not this table's"
    )


def test_a_failure_of_code_installed_while_the_batch_ran_is_not_filed(one_phase_studies, tmp_path, monkeypatch):
    """A study that fails has no report.json to name its build: its worker's own
    (`StudyResult.build`, taken as its pipeline loaded) is checked, so a failure of the new
    install is not filed under the old key either."""
    spec = PipelineSpec(bundle=str(DEMO_BUNDLE), mode="baseline", overlay=False, report_html=False)
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(b"not a NIfTI file")
    studies = [one_phase_studies[0], StudySource("broken", str(broken))]
    summary = run_batch(
        studies, spec, tmp_path / "out", _RestartedMidway(spec, lambda: _new_install(monkeypatch)), progress=False
    )
    assert summary.ran == 1
    assert summary.build_changed.startswith("study 'broken' was segmented by cmrsdk 0.14.8 (code 0e59e468cbe9, ")
    assert [r["study_id"] for r in _journal(tmp_path / "out")] == ["p1"]
