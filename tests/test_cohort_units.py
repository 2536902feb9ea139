"""cmrsdk.cohort without a pipeline: discovery, study lists, the journal, table rows, the scheduler."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest

from cmrsdk.cohort.discover import StudySource, discover_studies, read_study_list
from cmrsdk.cohort.engines import BatchEngine, WorkerLost
from cmrsdk.cohort.journal import Journal
from cmrsdk.cohort.table import COLUMNS, bsa_mosteller, measures_row, write_measures_csv
from cmrsdk.cohort.worker import PipelineSpec, StudyResult
from cmrsdk.errors import CmrWarning, InputError


def _touch(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dicom_like(path: Path) -> Path:
    return _touch(path, b"\0" * 128 + b"DICM" + b"\0" * 16)  # the preamble is all discovery reads


def test_discovery_finds_each_layout_once_and_names_them_by_path(tmp_path: Path):
    root = tmp_path / "cohort"
    _touch(root / "acdc" / "patient001" / "Info.cfg", b"ED: 1\n")
    _touch(root / "acdc" / "patient001" / "patient001_4d.nii.gz")  # inside a case folder: not its own study
    _touch(root / "mnms" / "A1B2C3" / "A1B2C3_sa_ED.nii.gz")
    _touch(root / "mnms2" / "001" / "001_SA_ED.nii.gz")
    _dicom_like(root / "site1" / "DICOM" / "IM0001")  # no suffix: found by the DICM preamble
    _dicom_like(root / "site2" / "DICOM" / "sub" / "a.dcm")  # images in a sub-folder of the series
    _touch(root / "site2" / "DICOM" / "notes.txt")
    _touch(root / "loose" / "case7.NII.GZ")
    _touch(root / "loose" / "case7_gt.nii.gz")  # a label map is not a study
    _touch(root / ".hidden" / "x.dcm")
    _touch(root / "contours" / "i.txt")  # nothing to segment: a "skipped" row saying so
    with pytest.warns(CmrWarning, match=r"1 folder\(s\) hold no study .* skipped: contours"):
        studies = discover_studies([root])
    assert [(s.study_id, Path(s.source).relative_to(root).as_posix()) for s in studies] == [
        ("acdc_patient001", "acdc/patient001"),
        ("contours", "contours"),
        ("loose_case7", "loose/case7.NII.GZ"),
        ("mnms_A1B2C3", "mnms/A1B2C3"),
        ("mnms2_001", "mnms2/001"),
        ("site1_DICOM", "site1/DICOM"),
        ("site2_DICOM_sub", "site2/DICOM/sub"),
    ]
    assert [s.study_id for s in studies if s.skip_reason] == ["contours"]
    # a root that is itself a study keeps its own name
    assert [s.study_id for s in discover_studies([root / "acdc" / "patient001"])] == ["patient001"]


def test_discovery_looks_past_a_dicomdir_and_the_runs_own_output(tmp_path: Path):
    """A CD or USB export has a DICOMDIR at its root, beside the patients' folders; a run may
    write its results under the root it reads (`batch ROOT -o ROOT/results`, then resumed)."""
    root = tmp_path / "export"
    _dicom_like(root / "DICOMDIR")
    _dicom_like(root / "PAT1" / "STUDY1" / "SER300" / "IM1")
    _dicom_like(root / "PAT2" / "STUDY1" / "SER300" / "IM1")
    _dicom_like(root / "results" / "studies" / "PAT1_STUDY1_SER300" / "seg_ED.dcm")
    studies = discover_studies([root], output=root / "results")
    assert [s.study_id for s in studies] == ["PAT1_STUDY1_SER300", "PAT2_STUDY1_SER300"]
    # without the output named, its folders are walked like any other
    assert len(discover_studies([root])) == 3


def test_discovery_skips_earlier_cmrsdk_results_under_a_root(tmp_path: Path):
    """`cmrsdk segment cohort/a.nii.gz -o cohort/out/a`, then `cmrsdk batch cohort`: the labels in
    out/a are results, not studies (they were segmented as studies before 0.10.0)."""
    root = tmp_path / "cohort"
    _touch(root / "a.nii.gz", b"x")
    for name in ("labels_ED.nii.gz", "report.json", "overlay.png"):
        _touch(root / "out" / "a" / name, b"x")
    _touch(root / "mixed" / "report.json", b"x")
    _touch(root / "mixed" / "b.nii.gz", b"x")  # not a result folder: a name cmrsdk does not write beside it
    with pytest.warns(CmrWarning, match=r"1 folder\(s\) hold cmrsdk results, not studies, and are skipped: out/a"):
        studies = discover_studies([root])
    assert [s.study_id for s in studies] == ["a", "mixed_b"]


def test_discovery_names_the_folders_that_hold_no_study(tmp_path: Path):
    root = tmp_path / "cohort"
    _dicom_like(root / "good" / "IM1")
    (root / "empty").mkdir()
    _touch(root / "only_jpeg" / "IMG0001.JPG", b"\xff\xd8\xff\xe0")
    with pytest.warns(CmrWarning, match=r"2 folder\(s\) hold no study .* are skipped: empty, only_jpeg"):
        studies = discover_studies([root])
    assert [(s.study_id, s.skip_reason is None) for s in studies] == [
        ("empty", False),
        ("good", True),
        ("only_jpeg", False),
    ]


def test_discovery_refuses_missing_roots_and_clashing_ids(tmp_path: Path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(InputError, match="empty' holds no study: it holds no file at all"):
        discover_studies([tmp_path / "empty"])  # not "1 study, 1 failed"
    with pytest.raises(InputError, match="no such file or directory"):
        discover_studies([tmp_path / "absent"])
    _touch(tmp_path / "a" / "patient001" / "Info.cfg")
    _touch(tmp_path / "b" / "patient001" / "Info.cfg")
    with pytest.raises(InputError, match="study id 'patient001' names two studies"):
        discover_studies([tmp_path / "a" / "patient001", tmp_path / "b" / "patient001"])


def test_study_list_resolves_paths_and_checks_values(tmp_path: Path):
    listing = tmp_path / "lists" / "cohort.csv"
    _touch(
        listing, b"study_id,source,height_cm,weight_kg,heart_rate_bpm\nS1,../data/p1,170,70,\n,/abs/p2.nii.gz,,,62\n"
    )
    studies = read_study_list(listing)
    assert studies == [
        StudySource("S1", str(tmp_path / "data" / "p1"), 170.0, 70.0, None),
        StudySource("p2", "/abs/p2.nii.gz", None, None, 62.0),
    ]
    _touch(listing, b"source,weight_kg\np1,seventy\n")
    with pytest.raises(InputError, match=r"line 2: column 'weight_kg' value 'seventy' is not a number"):
        read_study_list(listing)
    _touch(listing, b"source,age\np1,40\n")
    with pytest.raises(InputError, match=r"unknown column\(s\) \['age'\]"):
        read_study_list(listing)
    _touch(listing, b"study_id,source\n../escape,p1\n")
    with pytest.raises(InputError, match="cannot name a folder"):
        read_study_list(listing)


def test_journal_drops_a_torn_last_line_and_is_exclusive(tmp_path: Path):
    with Journal(tmp_path) as journal:
        journal.append({"study_id": "a", "key": "k", "status": "ok"})
        journal.append({"study_id": "b", "key": "k", "status": "failed"})
        with pytest.raises(InputError, match="in use by another cmrsdk batch"):
            Journal(tmp_path)
    with open(tmp_path / "journal.jsonl", "ab") as handle:
        handle.write(b'{"study_id": "c", "key"')  # what a SIGKILL mid-write leaves
    with Journal(tmp_path) as journal:
        assert sorted(journal.records) == ["a", "b"]
        journal.append({"study_id": "a", "key": "k", "status": "failed"})  # the last record wins
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["study_id"] for line in lines] == ["a", "b", "a"]
    with Journal(tmp_path) as journal:
        assert journal.records["a"]["status"] == "failed"


def test_bsa_and_indexed_measures():
    assert bsa_mosteller(180.0, 80.0) == pytest.approx(2.0)  # sqrt(180 * 80 / 3600)
    report = {
        "measures": {
            "lvedv_ml": 150.0,
            "lvesv_ml": 60.0,
            "lvsv_ml": 90.0,
            "lvef_pct": 60.0,
            "lv_mass_g": 120.0,
            "rvedv_ml": 160.0,
            "rvesv_ml": 70.0,
            "rvsv_ml": 90.0,
            "rvef_pct": 56.25,
        },
        "study": {"height_cm": 180.0, "weight_kg": 80.0},
        "ed_index": 0,
        "es_index": 1,
        "phases": [{"quality_flags": ["basal_coverage"]}, {"quality_flags": []}],
    }
    row = measures_row(report, heart_rate_bpm=70.0)
    assert row["bsa_m2"] == 2.0 and row["lvedvi_ml_m2"] == 75.0 and row["lv_massi_g_m2"] == 60.0
    assert row["cardiac_output_l_min"] == 6.3 and row["cardiac_index_l_min_m2"] == 3.15  # 90 mL x 70 bpm
    assert row["quality_flags"] == "ED:basal_coverage" and row["notes"] == ""
    # PatientSize given in cm instead of m gives 17000 cm: set aside, not indexed by
    row = measures_row(report, height_cm=17000.0)
    assert row["bsa_m2"] is None and row["lvedvi_ml_m2"] is None and "height_cm 17000 outside 50-250" in row["notes"]
    # a list's values take precedence over the file's
    assert measures_row(report, weight_kg=45.0)["bsa_m2"] == pytest.approx(math.sqrt(180 * 45 / 3600), abs=1e-4)


def test_measures_csv_has_every_column_and_empty_unknowns(tmp_path: Path):
    path = write_measures_csv(tmp_path / "m.csv", [{"study_id": "a", "status": "ok", "lvef_pct": 55.5, "bsa_m2": None}])
    header, row = path.read_text().splitlines()
    assert header.split(",") == list(COLUMNS)
    values = dict(zip(COLUMNS, row.split(",")))
    assert values["lvef_pct"] == "55.5" and values["bsa_m2"] == "" and values["study_id"] == "a"


def test_options_key_follows_what_decides_the_numbers():
    spec = PipelineSpec(bundle="/b")
    assert spec.key("m") == PipelineSpec(bundle="/elsewhere", device="cuda").key("m")
    assert spec.key("m") != PipelineSpec(bundle="/b", mode="baseline").key("m")
    assert spec.key("m") != spec.key("other manifest")


class _FakeEngine(BatchEngine):
    """Runs in this process; the study named 'poison' kills whichever worker holds it."""

    name = "fake"

    def _start(self):
        self.calls, self.recoveries = [], 0

    def _submit(self, study):
        self.calls.append(study.study_id)
        return (len(self.calls), study)

    def _wait(self, handles):
        if any(study.study_id == "poison" for _, study in handles):
            return [(h, WorkerLost("killed")) for h in handles]  # a dead pool loses everything in flight
        return [(h, StudyResult(h[1].study_id, {"status": "ok"})) for h in handles[:1]]

    def _recover(self):
        self.recoveries += 1

    def close(self):
        pass


def test_a_study_that_kills_its_worker_fails_alone():
    engine = _FakeEngine(PipelineSpec(bundle="/b"), workers=2, threads=1)
    engine.start()
    studies = [StudySource(name, f"/{name}") for name in ("a", "b", "poison", "c", "d", "e")]
    results = {r.study_id: r.row for r in engine.run(studies)}
    assert sorted(results) == ["a", "b", "c", "d", "e", "poison"]
    assert results["poison"]["status"] == "failed" and "also when it ran alone" in results["poison"]["error"]
    assert all(results[s]["status"] == "ok" for s in "abcde")


class _ScriptedEngine(BatchEngine):
    """Answers from a script: study id -> "ok" / "failed" / "interrupt" (Ctrl-C while it runs)."""

    name = "scripted"

    def __init__(self, script):
        super().__init__(PipelineSpec(bundle="/b"), workers=1, threads=1)
        self.script, self.seen = script, []

    def _start(self):
        pass

    def run(self, studies):
        for study in studies:
            self.seen.append(study.study_id)
            outcome = self.script[study.study_id]
            if outcome == "interrupt":
                raise KeyboardInterrupt
            row = {
                "study_id": study.study_id,
                "source": study.source,
                "status": outcome,
                "error": "" if outcome == "ok" else "boom",
                "lvef_pct": 55.0 if outcome == "ok" else None,
            }
            yield StudyResult(
                study.study_id, row, {"report.json": b"{}", "sub/x.nii.gz": b"x"} if outcome == "ok" else {}
            )

    _submit = _wait = _recover = None  # type: ignore[assignment]

    def close(self):
        pass


def test_run_batch_commits_folders_skips_duplicates_and_resumes(tmp_path: Path):
    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort.batch import run_batch

    spec = PipelineSpec(bundle=str(DEMO_BUNDLE))
    studies = [
        StudySource("a", "/data/a"),
        StudySource("b", "/data/b"),
        StudySource("a2", "/data/a"),
        StudySource("c", "/data/c"),
    ]
    out = tmp_path / "out"
    engine = _ScriptedEngine({"a": "ok", "b": "failed", "c": "interrupt"})
    summary = run_batch(studies, spec, out, engine, progress=False, figure=False)
    assert summary.interrupted and engine.seen == ["a", "b", "c"]
    rows = {r["study_id"]: r for r in summary.rows}
    assert [r["study_id"] for r in summary.rows] == ["a", "b", "a2", "c"]
    assert rows["a"]["status"] == "ok" and rows["a"]["outputs"] == "studies/a"
    assert sorted(
        p.relative_to(out / "studies" / "a").as_posix() for p in (out / "studies" / "a").rglob("*") if p.is_file()
    ) == ["report.json", "sub/x.nii.gz"]
    assert rows["b"]["status"] == "failed" and not (out / "studies" / "b").exists()
    assert rows["a2"]["status"] == "skipped" and rows["a2"]["error"] == "same source as study 'a'"
    assert rows["c"]["status"] == "skipped" and "interrupted" in rows["c"]["error"]
    # the rerun runs only c; b stays failed unless asked
    engine = _ScriptedEngine({"c": "ok"})
    summary = run_batch(studies, spec, out, engine, progress=False, figure=False)
    assert engine.seen == ["c"] and summary.reused == 2 and not summary.interrupted
    # with --retry-failed, b runs again and its new result replaces the old
    engine = _ScriptedEngine({"b": "ok"})
    summary = run_batch(studies, spec, out, engine, retry_failed=True, progress=False, figure=False)
    assert engine.seen == ["b"] and summary.count("ok") == 3 and summary.count("skipped") == 1
    # nothing left to do: the engine is never started
    factory_calls = []
    run_batch(studies, spec, out, lambda: factory_calls.append(1), progress=False, figure=False)
    assert factory_calls == []
    _, *lines = (out / "measures.csv").read_text().splitlines()
    assert len(lines) == 4
    assert not (out / ".tmp").exists() or not any((out / ".tmp").iterdir())
    # the table's options_key in words, beside it
    options = json.loads((out / "options.json").read_text())
    key = spec.key(options["manifest_sha256"])
    assert options["options_key"] == key == summary.rows[0]["options_key"]
    assert options["mode"] == spec.mode and len(options["code"]) == 64 and "bundle" not in options


@pytest.mark.parametrize(("backend", "property_"), [("onnx", None), ("openvino", "INFERENCE_NUM_THREADS")])
def test_a_worker_gives_its_engines_its_thread_count(backend: str, property_: str | None, monkeypatch):
    """Each cohort worker holds `threads` cores; a runtime that sizes its pool from all the cores
    would oversubscribe the machine with several workers."""
    torch = pytest.importorskip("torch")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):  # the worker sets them
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored after the test
    threads_before = torch.get_num_threads()  # so is torch's pool, which the worker caps
    try:
        _check_worker_threads(backend, property_)
    finally:
        torch.set_num_threads(threads_before)


def _check_worker_threads(backend: str, property_: str | None) -> None:
    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort.worker import StudyWorker
    from cmrsdk.engines import backend_missing

    if backend_missing(backend) is not None:
        pytest.skip(backend_missing(backend))
    worker = StudyWorker(PipelineSpec(bundle=str(DEMO_BUNDLE), backend=backend), threads=1)
    (engine,) = worker.pipeline._engines.values()
    assert engine.backend == backend
    if property_ is None:
        assert engine._session.get_session_options().intra_op_num_threads == 1
    else:
        assert int(engine._compiled.get_property(property_)) == 1


def test_no_progress_bar_frames_in_a_log_file(tmp_path: Path, capsys):
    """Sweep 20: a batch writing to a log file (stderr not a terminal) drew its progress bar
    there, frame after frame; now only the lines a reader needs (a failed study) reach it."""
    from cmrsdk import DEMO_BUNDLE
    from cmrsdk.cohort.batch import run_batch

    studies = [StudySource("a", "/data/a"), StudySource("b", "/data/b")]
    engine = _ScriptedEngine({"a": "ok", "b": "failed"})
    run_batch(studies, PipelineSpec(bundle=str(DEMO_BUNDLE)), tmp_path / "out", engine, progress=True, figure=False)
    err = capsys.readouterr().err
    assert "it/s" not in err and "study/s" not in err and "%|" not in err
    assert "b" in err and "boom" in err  # the failure is still said


@pytest.mark.parametrize("taken_by", ["main thread", "another thread"])
def test_a_stop_during_a_journal_write_keeps_the_record(tmp_path: Path, monkeypatch, taken_by: str):
    """A SIGTERM arriving while a finished study's line was synced interrupted the journal before
    it remembered the record: the table written on the way out said "not run" for a study the
    journal holds as done (the Ray SIGTERM test, under the full suite's load). In a process with
    other threads (Ray's, pytest-xdist's) the kernel may hand the signal to one of them, and
    Python still runs the handler in the main thread: holding it by a signal mask in the main
    thread let it through (the full suite, session 43)."""
    import signal as signals
    import threading

    from cmrsdk.cohort.journal import Journal

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signals.signal(signals.SIGTERM, stop)
    real_fsync = os.fsync
    done = threading.Event()
    other = threading.Thread(target=done.wait, daemon=True)
    other.start()

    def fsync_then_stopped(fd):
        real_fsync(fd)
        # a scheduler's stop, just as the line is synced
        if taken_by == "main thread":
            os.kill(os.getpid(), signals.SIGTERM)
        else:
            # the other thread takes it when the kernel next runs it, and Python's handler (the
            # journal's) runs in this thread after that: wait for it here, so that it is taken
            # during the sync, never after the test put SIG_DFL back (which killed the xdist
            # worker, session 45)
            noted, handled = signals.getsignal(signals.SIGTERM), threading.Event()

            def noting(signum, frame):
                handled.set()
                noted(signum, frame)

            signals.signal(signals.SIGTERM, noting)
            signals.pthread_kill(other.ident, signals.SIGTERM)
            deadline = time.monotonic() + 10
            while not handled.is_set() and time.monotonic() < deadline:
                time.sleep(0.001)  # Python runs a handler between bytecodes, not in a blocked wait
            signals.signal(signals.SIGTERM, noted)

    monkeypatch.setattr(os, "fsync", fsync_then_stopped)
    journal = Journal(tmp_path / "out")
    try:
        with pytest.raises(KeyboardInterrupt):
            journal.append({"study_id": "a", "status": "ok"})
        assert journal.records["a"]["status"] == "ok"  # remembered before the stop was taken
    finally:
        done.set()
        signals.signal(signals.SIGTERM, previous)
        journal.close()


def test_a_study_stored_one_folder_per_series_is_one_study(tmp_path: Path):
    """The layout `cmrsdk retrieve` and many PACS exports write (STUDY/<one folder per series>):
    each series folder was measured as a study of its own (a cine in two 6-slice series gave two
    "ok" rows, LVEF 20.9 and 45.2 % where the study is 30.0; sweep 24). Folders of one study are
    one study; folders of two studies stay two."""
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    def split(folder: Path, seed: int, names: tuple[str, str]) -> None:
        files = write_dicom_series(
            tmp_path / f"flat{seed}", synthetic_study(seed, n_slices=4, shape=(32, 32), n_phases=2)
        )
        for f in files:
            half = names[int(f.name[4:7]) >= 2]  # PPP_SSS.dcm: slices 0-1 and 2-3
            (folder / half).mkdir(parents=True, exist_ok=True)
            f.rename(folder / half / f.name)

    root = tmp_path / "cohort"
    split(root / "study1", 1, ("series3", "series4"))
    split(root / "patient2" / "exam_a", 2, ("s1", "s2"))
    split(root / "patient2" / "exam_b", 3, ("s1", "s2"))
    studies = discover_studies([root])
    assert [(s.study_id, Path(s.source).relative_to(root).as_posix()) for s in studies] == [
        ("patient2_exam_a", "patient2/exam_a"),
        ("patient2_exam_b", "patient2/exam_b"),
        ("study1", "study1"),
    ]


def test_a_thumbnails_folder_does_not_split_a_study_stored_one_series_per_slice(tmp_path: Path):
    """A disc's JPEG thumbnails beside the series folders made each series a study of its own (sweep
    39: 23 rows, 15 "ok" without measures, no LVEF for the patient)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    study_uid, root = generate_uid(), tmp_path / "disc" / "PATIENT" / "STUDY"
    for n in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
        (root / f"SE{n:06d}").mkdir(parents=True)
        ds.save_as(root / f"SE{n:06d}" / "IM000000", enforce_file_format=True)
    _touch(root / "THUMBS" / "IM000000.JPG", b"\xff\xd8\xff\xe0")
    studies = discover_studies([tmp_path / "disc"])
    assert [s.source for s in studies] == [str(root)]


def test_a_folder_of_zip_exports_is_a_study_per_zip(tmp_path: Path):
    """`segment` reads a ZIP; `batch` on a folder of them said "no DICOM image files found (2
    files searched)" (sweep 39). Each ZIP is a study named by its stem."""
    root = tmp_path / "exports"
    _touch(root / "patient_a.zip", b"PK\x05\x06" + b"\0" * 18)
    _touch(root / "PATIENT_B.ZIP", b"PK\x05\x06" + b"\0" * 18)
    _touch(root / "readme.txt", b"from the portal")
    studies = discover_studies([root])
    assert sorted((s.study_id, Path(s.source).name) for s in studies) == [
        ("PATIENT_B", "PATIENT_B.ZIP"),
        ("patient_a", "patient_a.zip"),
    ]
