"""The node's spool, intake and forwarding rules, without a network (fast)."""

from __future__ import annotations

import errno
from pathlib import Path
import sqlite3
import time

import pydicom
import pytest

from cmrsdk.errors import InputError
from cmrsdk.serve import SpoolBusy, SpoolFull, format_status, parse_destination, read_status
from cmrsdk.serve.forward import backoff_s
from cmrsdk.serve.spool import Spool
from cmrsdk.serve.worker import judge_series


@pytest.fixture
def spool(tmp_path):
    s = Spool(tmp_path / "spool")
    yield s
    s.close()


def test_instance_is_on_disk_and_committed_and_a_resend_is_a_duplicate(spool, tmp_path):
    assert spool.store_instance("1.2.3", "1.2.3.1", b"x" * 100, calling_ae="SCANNER") == "stored"
    assert (tmp_path / "spool" / "instances" / "1.2.3" / "1.2.3.1.dcm").read_bytes() == b"x" * 100
    assert spool.store_instance("1.2.3", "1.2.3.1", b"x" * 100) == "duplicate"
    row = spool.series("1.2.3")
    assert (row.state, row.n_instances, row.calling_ae) == ("receiving", 1, "SCANNER")
    assert spool.bytes_held == 100


def test_uids_cannot_escape_the_spool(spool, tmp_path):
    spool.store_instance("../../etc", "../passwd", b"x")
    assert not (tmp_path / "etc").exists()
    assert len(list((tmp_path / "spool" / "instances").rglob("*.dcm"))) == 1


def test_series_completes_after_the_timeout_and_is_processed_once(spool):
    spool.store_instance("9.1", "9.1.1", b"a")
    last = spool.series("9.1").last_instance_at
    assert spool.quiet_series(10.0, now=last + 5) == []
    assert spool.quiet_series(10.0, now=last + 10) == ["9.1"]
    assert spool.mark_complete("9.1", queue=True, phases=20, slices=12, reason=None, quiet_since=last)
    assert spool.next_queued() == "9.1"
    assert spool.next_queued() is None
    assert spool.mark_segmented("9.1", output=spool.directory, deliveries=[]) == "done"
    assert spool.purge_expired() == ["9.1"]  # no reopen window: its files go at once
    # the same series again: known instances are duplicates, a new one is late and not queued
    assert spool.store_instance("9.1", "9.1.1", b"a") == "duplicate"
    assert spool.store_instance("9.1", "9.1.2", b"b") == "late"
    assert spool.series("9.1").state == "done" and spool.series("9.1").n_late == 1
    assert spool.quiet_series(0.0) == []


def _segmented(spool, uid, *, files=2, deliveries=()):
    for i in range(files):
        spool.store_instance(uid, f"{uid}.{i}", b"x" * 10)
    spool.mark_complete(
        uid, queue=True, phases=2, slices=3, reason=None, quiet_since=spool.series(uid).last_instance_at
    )
    assert spool.next_queued() == uid
    return spool.mark_segmented(uid, output=spool.directory / "out" / uid, deliveries=list(deliveries))


def test_a_series_resent_in_full_after_its_result_is_judged_again_with_every_instance(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=60.0)
    out = tmp_path / "out"
    assert _segmented(s, "5.1", deliveries=[out / "seg_ED.dcm", out / "seg_ES.dcm"]) == "forwarding"
    assert s.mark_delivered(str(out / "seg_ED.dcm")) is None
    assert s.purge_expired() == []  # within the window: its files are kept
    assert s.store_instance("5.1", "5.1.0", b"x" * 10) == "duplicate"  # the resend's first instances are known
    assert s.store_instance("5.1", "5.1.2", b"y" * 10) == "reopened"  # the one cut off the first time
    row = s.series("5.1")
    assert (row.state, row.n_instances, row.reopened, row.result_at, row.reason) == ("receiving", 3, 1, None, None)
    assert sorted(f.name for f in s.series_folder("5.1").glob("*.dcm")) == ["5.1.0.dcm", "5.1.1.dcm", "5.1.2.dcm"]
    assert s.due_deliveries() == []  # the superseded result's unsent file is never sent
    assert s.delivery_counts("5.1") == (1, 1)
    assert s.store_instance("5.1", "5.1.3", b"z" * 10) == "stored"  # receiving again: stored as any other
    assert s.quiet_series(0.0) == ["5.1"]
    rows, deliveries = read_status(tmp_path / "spool")
    assert "(judged 2 times)" in "\n".join(format_status(rows, deliveries))
    s.close()


def test_results_the_peer_holds_are_withdrawn_once_by_the_next_judgement(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=60.0)
    out = tmp_path / "out"
    first = [out / "5.3" / "seg_ED.dcm", out / "5.3" / "sr.dcm"]
    _segmented(s, "5.3", deliveries=first)
    s.mark_delivered(str(first[0]))  # the SR is still pending when the rest of the series comes
    assert s.store_instance("5.3", "5.3.9", b"x") == "reopened"
    assert s.sent_and_superseded("5.3") == [str(first[0])]  # the pending SR was superseded, never sent
    s.mark_complete("5.3", queue=True, phases=2, slices=3, reason=None, quiet_since=time.time())
    assert s.next_queued() == "5.3"
    second = [out / "5.3_2" / "rejection_note.dcm", out / "5.3_2" / "seg_ED.dcm"]
    assert s.mark_segmented("5.3", output=out / "5.3_2", deliveries=second, withdrawn=[str(first[0])]) == "forwarding"
    assert s.sent_and_superseded("5.3") == []  # withdrawn: the next judgement does not withdraw it again
    assert s.delivery_counts("5.3") == (0, 2)
    s.close()


def test_a_new_instance_after_the_reopen_window_is_late(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=60.0)
    _segmented(s, "5.2")
    verdict_at = s.series("5.2").result_at
    assert s.purge_expired(now=verdict_at + 59) == [] and s.bytes_held == 20
    assert s.purge_expired(now=verdict_at + 60) == ["5.2"] and s.bytes_held == 0
    assert s.store_instance("5.2", "5.2.9", b"x") == "late"
    assert (s.series("5.2").state, s.series("5.2").n_late, s.series("5.2").reopened) == ("done", 1, 0)
    s.close()


def test_set_aside_and_failed_series_reopen_and_stack_members_do_not(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=60.0)
    s.store_instance("6.1", "6.1.1", b"x")  # cut off after two slice positions: set aside
    s.mark_complete(
        "6.1",
        queue=False,
        phases=2,
        slices=2,
        reason="not a short-axis stack: 2 slice position(s)",
        quiet_since=s.series("6.1").last_instance_at,
    )
    assert s.store_instance("6.1", "6.1.2", b"x") == "reopened"
    assert s.series("6.1").state == "receiving"
    s.store_instance("6.2", "6.2.1", b"x")
    s.mark_complete("6.2", queue=True, phases=2, slices=3, reason=None, quiet_since=s.series("6.2").last_instance_at)
    assert s.next_queued() == "6.2"
    assert s.mark_failed("6.2", "slice positions hold differing numbers of phases [19, 20]") == "failed"
    assert s.purge_expired(now=time.time() + 30) == []  # 6.1 receives again; 6.2 is in its reopen window
    assert s.series_folder("6.2").is_dir()
    assert s.store_instance("6.2", "6.2.2", b"x") == "reopened"  # the rest of it: judged again
    s.store_instance("6.3", "6.3.1", b"x")
    assert s.queue_stack("stack.6", ["6.3"], phases=2, slices=3)
    assert s.store_instance("6.3", "6.3.2", b"x") == "late"  # a member of a stack not yet judged is not reopened
    s.close()


def test_an_instance_arriving_while_segmented_sends_the_series_back_to_receiving(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=60.0)
    s.store_instance("4.1", "4.1.1", b"x")
    s.mark_complete("4.1", queue=True, phases=2, slices=3, reason=None, quiet_since=s.series("4.1").last_instance_at)
    assert s.next_queued() == "4.1"
    time.sleep(0.01)
    assert s.store_instance("4.1", "4.1.2", b"x") == "stored"
    assert s.series("4.1").state == "processing"  # the segmentation goes on with what it read
    out = tmp_path / "out"
    assert s.mark_segmented("4.1", output=out, deliveries=[out / "seg_ED.dcm"]) == "receiving"
    row = s.series("4.1")
    assert (row.state, row.n_instances, row.reopened) == ("receiving", 2, 1)
    assert s.due_deliveries() == []  # that result is superseded before it is sent
    s.store_instance("4.2", "4.2.1", b"x")
    s.mark_complete("4.2", queue=True, phases=2, slices=3, reason=None, quiet_since=s.series("4.2").last_instance_at)
    assert s.next_queued() == "4.2"
    time.sleep(0.01)
    s.store_instance("4.2", "4.2.2", b"x")
    assert s.mark_failed("4.2", "cut off") == "receiving"
    s.close()


def test_files_kept_for_a_reopen_make_room_before_an_instance_is_refused(tmp_path):
    s = Spool(tmp_path / "spool", max_bytes=50, reopen_window_s=600.0)
    _segmented(s, "3.1")  # 20 bytes kept
    _segmented(s, "3.2")  # 20 more
    assert s.bytes_held == 40
    assert s.store_instance("3.3", "3.3.1", b"x" * 25) == "stored"  # the oldest kept series makes room
    assert s.bytes_held == 45 and not s.series_folder("3.1").exists() and s.series_folder("3.2").is_dir()
    with pytest.raises(SpoolFull):
        s.store_instance("3.4", "3.4.1", b"x" * 40)  # nothing kept is enough: refused, as before
    s.close()


def test_a_spool_written_before_reopening_existed_is_read_and_upgraded(tmp_path):
    folder = tmp_path / "spool"
    s = Spool(folder)
    s.store_instance("2.1", "2.1.1", b"x")
    s.close()
    db = sqlite3.connect(folder / "queue.sqlite")
    db.execute("ALTER TABLE series DROP COLUMN reopened")  # as 0.8.2 wrote it
    db.execute("ALTER TABLE series DROP COLUMN interrupted")  # and 0.9.9
    db.commit()
    db.close()
    rows, _ = read_status(folder)
    assert [(r.series_uid, r.reopened, r.interrupted) for r in rows] == [("2.1", 0, 0)]
    s = Spool(folder)
    assert s.series("2.1").reopened == 0 and s.series("2.1").interrupted == 0
    assert s.mark_interrupted("2.1") and s.series("2.1").interrupted == 1
    s.close()


def _holding_worker(spool, tmp_path, hold_s, finals):
    import threading

    from cmrsdk.serve.worker import Worker

    return Worker(
        spool, tmp_path / "out", lambda: None, series_timeout_s=0.01, forward=False,
        stop=threading.Event(), on_final=finals.append, abort_hold_s=hold_s,
    )  # fmt: skip


def test_a_series_whose_transfer_was_aborted_is_held_then_fails_unsegmented(spool, tmp_path):
    """Half a cine from an aborted association is not segmented when quiet (its volumes would be
    wrong: LVEF 54.1 % for 30.2 % from 6 of 12 slices, docs/RESULTS.md Session 35): it waits
    for the sender, fails after the hold saying why, and a resend reopens it."""
    finals: list[str] = []
    worker = _holding_worker(spool, tmp_path, 30.0, finals)  # a hold no loaded machine outlasts
    spool.store_instance("5.1", "5.1.1", b"a")
    assert spool.mark_interrupted("5.1")
    time.sleep(0.05)
    worker.promote_quiet_series()
    assert spool.series("5.1").state == "receiving" and finals == []  # quiet, but held
    assert "held: its transfer was aborted" in "\n".join(format_status(spool.all_series(), {}))
    worker.abort_hold_s = 0.3  # then a hold that has passed
    time.sleep(0.35)
    worker.promote_quiet_series()
    row = spool.series("5.1")
    assert row.state == "failed" and finals == ["5.1"] and spool.next_queued() is None
    assert "aborted after 1 instance(s) and not sent again within 0.3 s: not segmented" in row.reason
    # the sender sends it again: reopened, and once that transfer ends normally, judged when quiet
    assert spool.store_instance("5.1", "5.1.2", b"b") == "reopened"
    spool.clear_interrupted("5.1")
    time.sleep(0.05)
    worker.promote_quiet_series()
    assert spool.series("5.1").state == "set_aside"  # judged (these bytes are no DICOM), not held
    assert spool.series("5.1").reason != row.reason


def test_without_a_hold_an_aborted_series_is_judged_on_what_arrived(spool, tmp_path):
    worker = _holding_worker(spool, tmp_path, 0.0, [])
    spool.store_instance("5.2", "5.2.1", b"a")
    spool.mark_interrupted("5.2")
    time.sleep(0.05)
    worker.promote_quiet_series()
    assert spool.series("5.2").state == "set_aside"
    assert not spool.mark_interrupted("5.2")  # judged: nothing to hold


def test_an_instance_arriving_while_queued_reopens_the_series(spool):
    spool.store_instance("9.2", "9.2.1", b"a")
    last = spool.series("9.2").last_instance_at
    spool.mark_complete("9.2", queue=True, phases=2, slices=3, reason=None, quiet_since=last)
    spool.store_instance("9.2", "9.2.2", b"b")
    assert spool.series("9.2").state == "receiving"
    assert spool.next_queued() is None


def test_crash_while_processing_requeues_and_deliveries_survive(tmp_path):
    s = Spool(tmp_path / "spool")
    s.store_instance("7.1", "7.1.1", b"a")
    s.mark_complete("7.1", queue=True, phases=2, slices=3, reason=None, quiet_since=s.series("7.1").last_instance_at)
    assert s.next_queued() == "7.1"
    (s.series_folder("7.1") / ".7.1.1.dcm.99.tmp").write_bytes(b"half")
    s._db.close()  # as kill -9 would: no clean close, the lock file's lock goes with the process
    s._lock_file.close()
    s = Spool(tmp_path / "spool")
    s.store_instance("7.2", "7.2.1", b"b")  # a series half received when the node died
    assert s.recover() == {"requeued": 1, "temporary_files_removed": 1}
    assert s.quiet_series(1.0, now=s.series("7.2").resumed_at + 0.5) == []  # its sender gets the timeout again
    assert s.quiet_series(1.0, now=s.series("7.2").resumed_at + 1.0) == ["7.2"]
    assert s.next_queued() == "7.1"
    out = tmp_path / "out"
    assert s.mark_segmented("7.1", output=out, deliveries=[out / "seg_ED.dcm", out / "seg_ES.dcm"]) == "forwarding"
    assert s.mark_delivered(str(out / "seg_ED.dcm")) is None
    s.mark_delivery_failed(str(out / "seg_ES.dcm"), "status 0xA700", retry_in_s=60)
    assert s.due_deliveries() == []
    assert s.mark_delivered(str(out / "seg_ES.dcm")) == "7.1"
    assert s.series("7.1").state == "done"
    assert s.mark_delivered(str(out / "seg_ES.dcm")) is None  # acknowledged twice: recorded once
    s.close()


def test_second_node_on_the_same_spool_is_refused(spool):
    with pytest.raises(SpoolBusy, match="in use by another cmrsdk serve"):
        Spool(spool.directory)


def test_size_limit_refuses_without_writing(tmp_path):
    s = Spool(tmp_path / "spool", max_bytes=150)
    s.store_instance("1", "1.1", b"x" * 100)
    with pytest.raises(SpoolFull, match="would exceed its limit of 150 bytes"):
        s.store_instance("1", "1.2", b"x" * 100)
    assert not s.has_instance("1.2") and s.bytes_held == 100
    assert s.purge_instances("1") == 100 and s.bytes_held == 0
    assert s.store_instance("1", "1.2", b"x" * 100) == "stored"  # purged space is free again
    s.close()


def test_full_disk_is_spool_full_not_a_crash(spool, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("cmrsdk.serve.spool.os.fsync", no_space)
    with pytest.raises(SpoolFull, match="disk full writing 1.1.dcm"):
        spool.store_instance("1", "1.1", b"x" * 10)
    assert not spool.has_instance("1.1") and spool.bytes_held == 0
    assert list(spool.series_folder("1").iterdir()) == []


def test_status_reads_the_queue_while_the_node_holds_it(spool):
    spool.store_instance("5.5", "5.5.1", b"a")
    spool.mark_complete(
        "5.5",
        queue=False,
        phases=1,
        slices=1,
        reason="not a short-axis stack: 1 slice position(s)",
        quiet_since=spool.series("5.5").last_instance_at,
    )
    rows, deliveries = read_status(spool.directory)
    lines = list(format_status(rows, deliveries))
    assert "set_aside" in lines[1] and "5.5" in lines[1] and "1 slice position" in lines[1]
    assert lines[-1] == "total: 1 set_aside"
    with pytest.raises(InputError, match="is not a cmrsdk spool"):
        read_status(spool.directory / "instances")
    with pytest.raises(sqlite3.OperationalError):  # read-only: --status never writes
        sqlite3.connect(f"file:{spool.directory / 'queue.sqlite'}?mode=ro", uri=True).execute("DELETE FROM series")


def test_destination_and_backoff():
    d = parse_destination("ORTHANC@pacs.local:4242")
    assert (d.ae_title, d.host, d.port, str(d)) == ("ORTHANC", "pacs.local", 4242, "ORTHANC@pacs.local:4242")
    with pytest.raises(InputError, match="--forward value 'pacs:4242' is invalid"):
        parse_destination("pacs:4242")
    with pytest.raises(InputError, match="port 1 to 65535"):
        parse_destination("A@h:70000")
    assert [backoff_s(n, cap_s=10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def _series(tmp_path, **kw):
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    folder = tmp_path / "series"
    write_dicom_series(folder, synthetic_study(seed=3, shape=(32, 32), **kw))
    return folder


def test_intake_queues_a_short_axis_cine(tmp_path):
    verdict = judge_series(_series(tmp_path, n_slices=4, n_phases=2))
    assert (verdict.queue, verdict.phases, verdict.slices, verdict.reason) == (True, 2, 4, None)


def test_intake_sets_aside_with_the_reason(tmp_path):
    import pydicom

    folder = _series(tmp_path, n_slices=4, n_phases=2)
    for f in sorted(folder.glob("*.dcm"))[1:]:
        f.unlink()
    verdict = judge_series(folder)
    assert not verdict.queue and verdict.reason == "not a short-axis stack: 1 slice position(s)"
    f = next(folder.glob("*.dcm"))
    ds = pydicom.dcmread(f)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(f)
    assert judge_series(folder).reason == "localizer: 'ImageType' (0008,0008) is ORIGINAL\\PRIMARY\\LOCALIZER"
    ds.Modality = "CT"
    ds.save_as(f)
    assert judge_series(folder).reason == "'Modality' (0008,0060) is 'CT', not 'MR'"
    f.write_bytes(b"not dicom at all")
    assert not judge_series(folder).queue


def test_intake_sets_aside_a_single_phase_stack(tmp_path):
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study
    from cmrsdk.types import Study

    study = synthetic_study(seed=4, shape=(32, 32), n_slices=4, n_phases=2)
    write_dicom_series(
        tmp_path / "one",
        Study(phases=study.phases[:1], ed_index=None, es_index=None, trigger_times_ms=None, info=study.info),
    )
    verdict = judge_series(tmp_path / "one")
    assert not verdict.queue and verdict.reason == "not a cine: 1 phase per slice position"


def test_intake_sets_aside_a_dynamic_series(tmp_path):
    import numpy as np
    import pydicom

    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study
    from cmrsdk.types import Study

    study = synthetic_study(seed=5, shape=(32, 32), n_slices=4, n_phases=6)
    # perfusion: every dynamic at the same delay after the R wave (+-2 ms of jitter)
    perfusion = Study(phases=study.phases, ed_index=None, es_index=None, trigger_times_ms=None, info=study.info)
    folder = tmp_path / "perfusion"
    write_dicom_series(folder, perfusion)
    for i, f in enumerate(sorted(folder.glob("*.dcm"))):
        ds = pydicom.dcmread(f)
        ds.TriggerTime = 150.0 + 2.0 * np.sin(i)
        ds.save_as(f)
    verdict = judge_series(folder)
    assert not verdict.queue and verdict.reason.startswith(
        "not a cine: its 6 images per slice position share one cardiac phase ('TriggerTime' (0018,1060) spans 3."
    )


def _worker(spool, tmp_path, forward=False):
    import threading

    from cmrsdk.serve.worker import Worker

    finals: list[str] = []
    worker = Worker(
        spool,
        tmp_path / "out",
        lambda: "pipeline",
        series_timeout_s=0.0,
        forward=forward,
        stop=threading.Event(),
        on_final=finals.append,
    )
    worker.pipeline = "pipeline"
    (tmp_path / "out").mkdir(exist_ok=True)
    return worker, finals


def _queued(spool, uid):
    spool.store_instance(uid, f"{uid}.1", b"x")
    spool.mark_complete(
        uid, queue=True, phases=2, slices=3, reason=None, quiet_since=spool.series(uid).last_instance_at
    )
    assert spool.next_queued() == uid


def test_worker_records_failures_and_goes_on(spool, tmp_path, monkeypatch):
    from cmrsdk.errors import ReadError

    calls = []

    def study_writer(pipeline, source, out_dir):
        calls.append(source.name)
        if source.name == "1.1":
            raise ReadError(source / "x.dcm", "slice positions hold differing numbers of phases [19, 20]")
        if source.name == "1.2":
            raise RuntimeError("a bug in a writer")
        out_dir.mkdir()
        (out_dir / "seg_ED.dcm").write_bytes(b"seg")
        (out_dir / "report.json").write_text("{}")
        return {"phases": [{}, {}]}

    monkeypatch.setattr("cmrsdk.serve.worker.write_study", study_writer)
    worker, finals = _worker(spool, tmp_path, forward=True)
    for uid in ("1.1", "1.2", "1.3"):
        _queued(spool, uid)
        worker.process(uid)
    assert spool.series("1.1").state == "failed"
    assert (
        spool.series("1.1").reason
        == "<spool>/instances/1.1/x.dcm: slice positions hold differing numbers of phases [19, 20]"
    )
    assert (spool.series("1.2").state, spool.series("1.2").reason) == ("failed", "RuntimeError: a bug in a writer")
    assert spool.series("1.3").state == "forwarding"  # results wait for the peer's acknowledgement
    assert [d[0] for d in spool.due_deliveries()] == [str(tmp_path / "out" / "1.3" / "seg_ED.dcm")]
    assert finals == ["1.1", "1.2"] and calls == ["1.1", "1.2", "1.3"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["1.3"]  # nothing half-written
    # failures' files are released as results' are (here at once: no reopen window); their reason stays
    assert not spool.series_folder("1.1").exists() and not spool.series_folder("1.3").exists()


def test_worker_writes_a_reopened_series_result_beside_the_first(tmp_path, monkeypatch):
    def study_writer(pipeline, source, out_dir):
        out_dir.mkdir()
        (out_dir / "seg_ED.dcm").write_text(",".join(sorted(f.name for f in source.glob("*.dcm"))))
        return {}

    monkeypatch.setattr("cmrsdk.serve.worker.write_study", study_writer)
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    worker, finals = _worker(spool, tmp_path, forward=True)
    _queued(spool, "8.1")
    worker.process("8.1")
    assert spool.series_folder("8.1").is_dir()  # kept for the window
    assert spool.store_instance("8.1", "8.1.2", b"y") == "reopened"
    spool.mark_complete("8.1", queue=True, phases=2, slices=3, reason=None, quiet_since=time.time())
    assert spool.next_queued() == "8.1"
    worker.process("8.1")
    out = tmp_path / "out"
    assert (out / "8.1" / "seg_ED.dcm").read_text() == "8.1.1.dcm"  # the first verdict's, left as forwarded
    assert (out / "8.1_2" / "seg_ED.dcm").read_text() == "8.1.1.dcm,8.1.2.dcm"  # judged on every instance
    assert [d[0] for d in spool.due_deliveries()] == [str(out / "8.1_2" / "seg_ED.dcm")]
    assert spool.series("8.1").output == str(out / "8.1_2")
    spool.close()


def test_worker_keeps_a_result_renamed_before_a_crash(spool, tmp_path, monkeypatch):
    monkeypatch.setattr("cmrsdk.serve.worker.write_study", lambda *a: pytest.fail("segmented twice"))
    worker, finals = _worker(spool, tmp_path)
    _queued(spool, "2.1")
    (tmp_path / "out" / "2.1").mkdir()  # renamed into place; the crash came before the commit
    worker.process("2.1")
    assert spool.series("2.1").state == "done" and finals == ["2.1"]


def _store_series_per_slice(spool, tmp_path, seed=6, lax=True):
    """A 5-slice, 3-phase synthetic cine stored one series per slice (and, with ``lax``, a
    one-slice long-axis cine of the same study) into the spool; returns the per-slice UIDs."""
    import pydicom
    from test_io_dicom import _series_per_slice

    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    folder = tmp_path / f"cine{seed}"
    write_dicom_series(folder, synthetic_study(seed=seed, shape=(32, 32), n_slices=5, n_phases=3))
    by_slice = _series_per_slice(folder, tmp_path / f"split{seed}")
    uids = []
    for z, files in enumerate(by_slice):
        for file in files:
            ds = pydicom.dcmread(file)
            if lax and z == 4:  # another view of the same study: never in the short-axis stack
                ds.SeriesInstanceUID, ds.ImageOrientationPatient = "9.9.9", [0, 1, 0, 0, 0, -1]
                ds.SOPInstanceUID = pydicom.uid.generate_uid()
                ds.save_as(file)
            assert (
                spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes()) == "stored"
            )
        uids.append(str(ds.SeriesInstanceUID))
    return uids


def _reading_worker(spool, tmp_path, monkeypatch):
    """A worker whose (fake) study writer reads each study it is given into ``read["study"]``."""
    from cmrsdk.io import read_dicom_study

    read: dict = {}

    def study_writer(pipeline, source, out_dir):
        read["study"] = read_dicom_study(source)
        out_dir.mkdir()
        (out_dir / "report.json").write_text("{}")
        return {}

    monkeypatch.setattr("cmrsdk.serve.worker.write_study", study_writer)
    worker, finals = _worker(spool, tmp_path)
    return worker, finals, read


def test_a_cine_stored_a_series_per_slice_is_stacked_and_segmented_once(spool, tmp_path, monkeypatch):
    from cmrsdk.serve.stacks import ONE_SLICE_REASON, stack_uid

    uids = _store_series_per_slice(spool, tmp_path)  # 4 short-axis slices and the long-axis one
    worker, finals, read = _reading_worker(spool, tmp_path, monkeypatch)
    worker.promote_quiet_series()
    stack = stack_uid(uids)  # named by the series gathered, the long-axis one among them
    row = spool.series(stack)
    assert (row.state, row.slices, row.phases, row.n_instances) == ("queued", 4, 3, 12)
    for uid in uids[:4]:
        member = spool.series(uid)
        assert (member.state, member.reason) == ("set_aside", f"stacked into {stack}")
        assert not spool.series_folder(uid).exists()  # purged; the stack's links keep the files
    assert (spool.series("9.9.9").state, spool.series("9.9.9").reason) == ("set_aside", ONE_SLICE_REASON)
    assert sorted(finals) == sorted([*uids[:4], "9.9.9"])
    assert spool.next_queued() == stack
    worker.process(stack)
    assert spool.series(stack).state == "done" and not spool.series_folder(stack).exists()
    got = read["study"]
    assert got.info.series_uid.count("+") == 3 and got.ed.shape == (4, 32, 32) and len(got.phases) == 3


def _stacking_spool(tmp_path, monkeypatch, *, seed: int, n_slices: int):
    """A 3-phase synthetic cine split one series per slice (files per slice, base to apex), a spool
    with a 600 s reopen window, its forwarding worker, and the studies the worker's (fake) study
    writer read, in order."""
    from test_io_dicom import _series_per_slice

    from cmrsdk.io import read_dicom_study, write_dicom_series
    from cmrsdk.synth import synthetic_study

    write_dicom_series(tmp_path / "cine", synthetic_study(seed=seed, shape=(32, 32), n_slices=n_slices, n_phases=3))
    by_slice = _series_per_slice(tmp_path / "cine", tmp_path / "split")
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    read: list = []

    def study_writer(pipeline, source, out_dir):
        read.append(read_dicom_study(source))
        out_dir.mkdir()
        (out_dir / "seg_ED.dcm").write_bytes(b"seg")
        return {}

    monkeypatch.setattr("cmrsdk.serve.worker.write_study", study_writer)
    worker, _ = _worker(spool, tmp_path, forward=True)
    return by_slice, spool, worker, read


def test_one_slice_series_after_their_study_was_stacked_are_stacked_again_with_it(tmp_path, monkeypatch):
    """A scanner sending each breath-hold as it is reconstructed, with a pause longer than the
    series timeout: 3 slices are stacked and segmented; the last 2 come after, and the study is
    judged again as one 5-slice stack."""
    import pydicom

    from cmrsdk.serve.stacks import stack_uid

    by_slice, spool, worker, read = _stacking_spool(tmp_path, monkeypatch, seed=8, n_slices=5)

    def arrive(files_of_slices):
        uids = []
        for files in files_of_slices:
            for file in files:
                ds = pydicom.dcmread(file, stop_before_pixels=True)
                spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes())
            uids.append(str(ds.SeriesInstanceUID))
        worker.promote_quiet_series()
        return uids

    first = arrive(by_slice[:3])
    stack_a = stack_uid(first)
    assert spool.next_queued() == stack_a
    worker.process(stack_a)
    assert spool.series(stack_a).state == "forwarding" and spool.series_folder(stack_a).is_dir()  # kept
    late = arrive(by_slice[3:])
    stack_b = stack_uid(first + late, after=stack_a)
    row = spool.series(stack_b)
    assert (row.state, row.slices, row.phases, row.n_instances) == ("queued", 5, 3, 15)
    assert row.reason == f"a stack of 5 one-slice series, 2 of them after {stack_a}"
    assert {spool.series(u).reason for u in first + late} == {f"stacked into {stack_b}"}
    assert spool.series(stack_a).reason == f"stacked again into {stack_b}"
    assert not spool.series_folder(stack_a).exists()  # its links moved to the new stack
    assert spool.due_deliveries() == []  # the 3-slice result is superseded before it is sent
    assert spool.next_queued() == stack_b
    worker.process(stack_b)
    assert [study.ed.shape for study in read] == [(3, 32, 32), (5, 32, 32)]
    assert [d[0] for d in spool.due_deliveries()] == [str(tmp_path / "out" / stack_b / "seg_ED.dcm")]
    assert spool.purge_expired(now=time.time() + 601) == [stack_b] and not spool.series_folder(stack_b).exists()
    spool.close()


def test_a_stacked_slice_whose_missing_phase_comes_later_is_stacked_again_whole(tmp_path, monkeypatch):
    """One slice's third phase fails to transfer: the study is stacked, and the stack fails (its
    slices hold 2 and 3 phases). When the sender resends the phase, that slice's series is reopened
    with its earlier files (linked back from the stack, not late) and the study is stacked again,
    whole, and segmented."""
    import pydicom

    from cmrsdk.serve.stacks import stack_uid

    by_slice, spool, worker, read = _stacking_spool(tmp_path, monkeypatch, seed=9, n_slices=4)
    held_back = by_slice[2][-1]  # slice 2, its last phase

    def store(file):
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        return str(ds.SeriesInstanceUID), spool.store_instance(
            str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes()
        )

    uids = sorted({store(f)[0] for files in by_slice for f in files if f != held_back})
    worker.promote_quiet_series()
    first = stack_uid(uids)
    assert spool.next_queued() == first
    worker.process(first)
    row = spool.series(first)
    assert (row.state, row.n_instances) == ("failed", 11) and "differing numbers of phases [2, 3]" in row.reason
    member, outcome = store(held_back)
    assert outcome == "reopened" and spool.series(member).n_late == 0
    row = spool.series(member)
    assert (row.state, row.n_instances, row.reopened) == ("receiving", 3, 1)
    assert len(list(spool.series_folder(member).glob("*.dcm"))) == 3  # two linked back, the new one
    worker.promote_quiet_series()
    second = stack_uid(uids, after=first)
    row = spool.series(second)
    assert (row.state, row.slices, row.phases, row.n_instances) == ("queued", 4, 3, 12)
    assert {spool.series(u).reason for u in uids} == {f"stacked into {second}"}
    assert spool.series(first).reason == f"stacked again into {second}"
    assert not spool.series_folder(member).exists() and not spool.series_folder(first).exists()
    assert spool.next_queued() == second
    worker.process(second)
    assert [(study.info.series_uid.count("+"), study.ed.shape, len(study.phases)) for study in read] == [
        (3, (4, 32, 32), 3)
    ]
    assert store(held_back)[1] == "duplicate"
    spool.close()


def test_one_slice_series_wait_for_their_study_to_be_quiet(spool, tmp_path):
    import time

    from cmrsdk.serve.stacks import StackGatherer

    uids = _store_series_per_slice(spool, tmp_path, seed=7, lax=False)
    finals: list[str] = []
    gatherer = StackGatherer(spool, timeout_s=100.0, on_final=finals.append)
    for uid in uids[:4]:
        gatherer.hold(uid)
    last = max(spool.series(u).last_instance_at for u in uids)
    assert gatherer.gather(now=last + 50) == []  # not quiet yet
    assert gatherer.gather(now=last + 200) == []  # quiet, but the study's fifth slice is still arriving
    gatherer.hold(uids[4])
    (stack,) = gatherer.gather(now=time.time() + 200)
    assert spool.series(stack).slices == 5 and sorted(finals) == sorted(uids) and gatherer.waiting == {}


def test_a_stacked_series_killed_before_its_purge_is_purged_at_restart(tmp_path):
    s = Spool(tmp_path / "spool")
    s.store_instance("8.1", "8.1.1", b"c")
    assert s.queue_stack("stack.8", ["8.1"], phases=2, slices=3)  # committed; killed before the purge
    s._db.close()
    s._lock_file.close()
    s = Spool(tmp_path / "spool")
    assert s.recover() == {"requeued": 0, "temporary_files_removed": 0, "set_aside_purged": 1}
    assert not s.series_folder("8.1").exists() and s.series("8.1").reason == "stacked into stack.8"
    assert s.recover() == {"requeued": 0, "temporary_files_removed": 0}  # nothing left to purge
    assert s.next_queued() == "stack.8"
    s.close()


def test_worker_start_removes_what_a_killed_writer_left_and_nothing_else(spool, tmp_path):
    """SIGKILL between creating and removing a transient entry leaves it; the restart clears it."""
    worker, _ = _worker(spool, tmp_path)
    out = tmp_path / "out"
    left = [".1.2.3.partial", ".cmrsdk-probe-k2j9", ".cmrsdk-replaced-x1", ".cmrsdk-staging-1.2.3-99-ab"]
    kept = ["1.2.3", ".cmrsdk-notes", ".hidden"]
    for name in left + kept:
        (out / name).mkdir()
    (out / "1.2.3" / "seg_ED.dcm").write_bytes(b"seg")
    # an earlier result retired by a swap the kill cut short (pid no process has): put back
    retired = out / ".cmrsdk-replaced-4194305-abcdefgh-1.2.4"
    retired.mkdir()
    (retired / "seg_ED.dcm").write_bytes(b"earlier")
    worker.stop.set()  # run() clears, loads the pipeline, then sees stop and returns
    worker.run()
    assert worker.error is None and worker.ready.is_set()
    assert sorted(p.name for p in out.iterdir()) == sorted([*kept, "1.2.4"])
    assert (out / "1.2.3" / "seg_ED.dcm").read_bytes() == b"seg"
    assert (out / "1.2.4" / "seg_ED.dcm").read_bytes() == b"earlier"


def test_a_spool_that_cannot_be_written_is_one_clear_error(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(InputError, match=r"spool .*a_file/spool cannot be written .*give --spool a writable folder"):
        Spool(tmp_path / "a_file" / "spool")


@pytest.fixture
def node(tmp_path, caplog):
    """A storage SCP on a free port over a fresh spool, a synthetic series' files (3 slices x 2
    phases) and an AE to send them with; the node's log captured from INFO."""
    import logging
    from types import SimpleNamespace

    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from cmrsdk.io import write_dicom_series
    from cmrsdk.serve.scp import ScpOptions, StorageScp
    from cmrsdk.synth import synthetic_study

    files = write_dicom_series(tmp_path / "series", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    spool = Spool(tmp_path / "spool")
    scp = StorageScp(spool, ScpOptions(port=0))
    scp.start()
    caplog.set_level(logging.INFO, logger="cmrsdk.serve")
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)
    try:
        yield SimpleNamespace(scp=scp, spool=spool, files=files, ae=ae)
    finally:
        scp.stop()
        spool.close()


def test_the_node_refuses_as_out_of_resources_and_says_why_in_one_line(node, monkeypatch, caplog):
    """A spool that went read-only under a running node: each C-STORE gets 0xA700 and one log
    line, no traceback; a sender offering only lossy syntaxes is named in the node's log."""
    from pydicom.uid import JPEGBaseline8Bit
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    def read_only(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(node.spool, "store_instance", read_only)
    assoc = node.ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    assert assoc.is_established
    status = assoc.send_c_store(pydicom.dcmread(node.files[0]))
    assoc.release()
    assert status.Status == 0xA700
    lossy = AE(ae_title="SCANNER")
    lossy.add_requested_context(MRImageStorage, [JPEGBaseline8Bit])
    assert not lossy.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK").is_established
    text = caplog.text
    assert (
        "refused, out of resources (0xA700): the spool" in text and "PermissionError: Operation not permitted" in text
    )
    assert "Traceback" not in text
    assert "no presentation context accepted; transfer syntaxes offered: JPEG Baseline (Process 1)" in text


def test_a_sop_instance_uid_reused_by_another_series_is_refused_not_dropped_silently(spool):
    """Some anonymisers change patient, study and series UIDs and keep SOP Instance UIDs."""
    assert spool.store_instance("1.2.3", "1.2.3.1", b"first") == "stored"
    assert spool.store_instance("1.2.3", "1.2.3.1", b"first") == "duplicate"  # the same series resent
    assert spool.store_instance("9.8.7", "1.2.3.1", b"anonymised copy") == "reused"
    assert spool.series_state("9.8.7") is None  # nothing recorded for it


def test_the_node_answers_a_reused_uid_with_the_duplicate_status_and_a_line(node, caplog):
    from cmrsdk.serve.scp import STATUS_DUPLICATE_SOP_INSTANCE

    assoc = node.ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    original = pydicom.dcmread(node.files[0])
    copy = pydicom.dcmread(node.files[0])
    copy.SeriesInstanceUID, copy.PatientID = pydicom.uid.generate_uid(), "ANON"
    statuses = [assoc.send_c_store(ds).Status for ds in (original, original, copy)]
    assoc.release()
    assert statuses == [0x0000, 0x0000, STATUS_DUPLICATE_SOP_INSTANCE]
    assert f"C-STORE {original.SOPInstanceUID} of series {copy.SeriesInstanceUID} refused (0x0111" in caplog.text


def test_a_peer_that_does_not_store_seg_is_named_so_in_the_log(tmp_path, caplog):
    """A --forward PACS configured without Segmentation Storage: the log says that, not
    'association not established'."""
    import logging
    import threading

    import numpy as np
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import BasicTextSRStorage

    from cmrsdk.io import read_dicom_study, write_dicom_seg, write_dicom_series
    from cmrsdk.serve.forward import Forwarder
    from cmrsdk.synth import synthetic_study

    write_dicom_series(tmp_path / "series", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    stack = read_dicom_study(tmp_path / "series").phases[0]
    labels = np.zeros(stack.shape, np.uint8)
    labels[:, 8:16, 8:16] = 1
    seg = write_dicom_seg(tmp_path / "seg_ED.dcm", labels, stack)
    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(BasicTextSRStorage)  # reports yes, segmentations no
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
    spool = Spool(tmp_path / "spool")
    try:
        destination = parse_destination(f"PACS@127.0.0.1:{server.server_address[1]}")
        forwarder = Forwarder(spool, destination, ae_title="CMRSDK", stop=threading.Event(), on_final=lambda uid: None)
        caplog.set_level(logging.WARNING, logger="cmrsdk.serve")
        forwarder.send([(str(seg), "1.2.3", 0)])
    finally:
        server.shutdown()
        spool.close()
    assert "the peer accepts no presentation context for Segmentation Storage (it does not store them)" in caplog.text


def test_a_result_the_peer_never_stores_is_given_up_after_its_attempts(tmp_path, caplog):
    """A PACS that takes MR images but no DICOM SEG: the image goes, the SEG is tried
    ``max_attempts`` times, then left undeliverable; the series is done, saying what was not
    forwarded, and its line counts 1/2 forwarded."""
    import logging
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    import numpy as np

    from cmrsdk.io import read_dicom_study, write_dicom_seg, write_dicom_series
    from cmrsdk.serve.forward import Forwarder, is_permanent_refusal
    from cmrsdk.serve.node import series_log_line
    from cmrsdk.synth import synthetic_study

    files = write_dicom_series(tmp_path / "series", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    stack = read_dicom_study(tmp_path / "series").phases[0]
    labels = np.zeros(stack.shape, np.uint8)
    labels[:, 8:16, 8:16] = 1
    seg = write_dicom_seg(tmp_path / "seg_ED.dcm", labels, stack)
    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(MRImageStorage)
    server = pacs.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: 0x0000)])
    spool = Spool(tmp_path / "spool")
    finals: list[str] = []
    try:
        assert _segmented(spool, "7.1", deliveries=[Path(files[0]), Path(seg)]) == "forwarding"
        destination = parse_destination(f"PACS@127.0.0.1:{server.server_address[1]}")
        forwarder = Forwarder(
            spool, destination, ae_title="CMRSDK", stop=threading.Event(), on_final=finals.append, max_attempts=2
        )
        caplog.set_level(logging.WARNING, logger="cmrsdk.serve")
        forwarder.send(spool.due_deliveries())
        assert spool.series("7.1").state == "forwarding" and spool.delivery_counts("7.1") == (1, 2)
        forwarder.send(spool.due_deliveries(now=time.time() + 3600))  # after the back-off
        row = spool.series("7.1")
        assert spool.due_deliveries(now=time.time() + 3600) == [] and finals == ["7.1"]
        line = series_log_line(spool, "7.1")
    finally:
        server.shutdown()
        spool.close()
    assert row.state == "done" and row.reason.startswith("1 result file(s) not forwarded: the peer")
    assert "Segmentation Storage" in row.reason
    assert "done, 1/2 result files forwarded" in line and "not forwarded" in line
    assert "seg_ED.dcm refused 2 times" in caplog.text
    assert is_permanent_refusal(0xC211) and is_permanent_refusal(0xA900) and not is_permanent_refusal(0xA700)


def test_an_aborted_association_names_the_series_it_cut_off(node, caplog):
    import time as clock

    assoc = node.ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    for path in node.files[:2]:
        assert assoc.send_c_store(pydicom.dcmread(path)).Status == 0x0000
    assoc.abort()
    released = node.ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    assert released.send_c_store(pydicom.dcmread(node.files[2])).Status == 0x0000
    released.release()
    deadline = clock.time() + 5
    while "aborted after" not in caplog.text and clock.time() < deadline:
        clock.sleep(0.05)
    series = pydicom.dcmread(node.files[0]).SeriesInstanceUID
    assert f"association from AE 'SCANNER' aborted after 2 instance(s) of series {series}: held" in caplog.text
    assert caplog.text.count("aborted after") == 1  # the released association names nothing
    # that released association sent the same series: its hold ends
    while node.spool.series(series).interrupted and clock.time() < deadline:
        clock.sleep(0.05)
    assert node.spool.series(series).interrupted == 0


def test_an_aborted_association_holds_its_series_until_sent_again(node):
    import time as clock

    series = pydicom.dcmread(node.files[0]).SeriesInstanceUID
    assoc = node.ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    assert assoc.send_c_store(pydicom.dcmread(node.files[0])).Status == 0x0000
    assoc.abort()
    deadline = clock.time() + 5
    while not node.spool.series(series).interrupted and clock.time() < deadline:
        clock.sleep(0.05)
    assert node.spool.series(series).interrupted == 1
    # the whole series again: the instance held is a duplicate, the rest new; released normally
    again = node.ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    statuses = [again.send_c_store(pydicom.dcmread(p)).Status for p in node.files]
    again.release()
    assert statuses == [0x0000] * len(node.files)
    while node.spool.series(series).interrupted and clock.time() < deadline:
        clock.sleep(0.05)
    assert node.spool.series(series).interrupted == 0
    assert node.spool.series(series).n_instances == len(node.files)


def _store_cine_in_parts(spool, tmp_path, per_part: int, n_slices: int = 8):
    """An ``n_slices``-slice, 3-phase synthetic cine (slices 8 mm apart) stored as series of
    ``per_part`` slices each, one breath-hold each, into the spool; returns the parts' UIDs."""
    import pydicom
    from test_io_dicom import _series_per_slice

    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    study = synthetic_study(seed=9, shape=(32, 32), n_slices=n_slices, n_phases=3, spacing=(8.0, 1.5, 1.5))
    write_dicom_series(tmp_path / "cine", study)
    by_slice = _series_per_slice(tmp_path / "cine", tmp_path / "split")
    uids = []
    for first in range(0, n_slices, per_part):
        uid = pydicom.uid.generate_uid()
        for file in [f for files in by_slice[first : first + per_part] for f in files]:
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID, ds.SeriesNumber = uid, 20 + first
            ds.save_as(file)
            assert spool.store_instance(uid, str(ds.SOPInstanceUID), file.read_bytes()) == "stored"
        uids.append(uid)
    return uids


@pytest.mark.parametrize(("per_part", "parts"), [(4, 2), (2, 4)])
def test_a_cine_split_over_series_of_a_few_slices_is_stacked_whole(spool, tmp_path, monkeypatch, per_part, parts):
    """Two series of 4 slices (24 mm each), or four of 2: judged alone, each 4-slice part was
    segmented as a study of its own (a fraction of the ventricles), each 2-slice one set aside;
    now they wait for their study and are stacked into the 8-slice cine."""
    from cmrsdk.serve.stacks import stack_uid

    uids = _store_cine_in_parts(spool, tmp_path, per_part)
    assert len(uids) == parts
    worker, finals, read = _reading_worker(spool, tmp_path, monkeypatch)
    worker.promote_quiet_series()
    stack = stack_uid(uids)
    row = spool.series(stack)
    assert (row.state, row.slices, row.phases, row.n_instances) == ("queued", 8, 3, 24)
    for uid in uids:
        assert (spool.series(uid).state, spool.series(uid).reason) == ("set_aside", f"stacked into {stack}")
    assert spool.next_queued() == stack
    worker.process(stack)
    assert read["study"].ed.shape == (8, 32, 32) and len(read["study"].phases) == 3


def test_a_short_stack_with_no_other_part_is_segmented_alone(spool, tmp_path):
    """A 4-slice cine (24 mm) whose study sends nothing else waits for its study, then is queued
    as it is; a 2-slice one is set aside naming its count."""
    short = _store_cine_in_parts(spool, tmp_path / "a", 4, n_slices=4)[0]
    worker, finals = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    row = spool.series(short)
    assert (row.state, row.slices, row.phases, row.reason) == ("queued", 4, 3, None) and finals == []
    pair = _store_cine_in_parts(spool, tmp_path / "b", 2, n_slices=2)[0]
    worker.promote_quiet_series()
    row = spool.series(pair)
    assert (row.state, row.reason) == ("set_aside", "not a short-axis stack: 2 slice position(s)")
    assert finals == [pair]
