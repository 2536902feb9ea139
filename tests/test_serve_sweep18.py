"""Sweep 18 of the DICOM node: a series cut short by the spool limit, results whose files cannot
be read, instances acknowledged and dropped, a port in use, the log during a PACS outage, failed
series holding the spool, and the spool's history (runs/redteam18)."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pydicom
import pytest

from cmrsdk.errors import InputError
from cmrsdk.serve import parse_destination
from cmrsdk.serve.spool import Spool

from _dicom_node import REPO, free_port, wait_for
from test_serve_spool import _holding_worker, _segmented

pytest.importorskip("pynetdicom")


@pytest.fixture
def scp_node(tmp_path, caplog):
    """A storage SCP on a free port over a spool with a reopen window of 60 s, and a synthetic
    series' files (3 slices x 2 phases); ``send(files)`` sends them over one association and
    releases it, returning the statuses once the node has seen the release."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from cmrsdk.io import write_dicom_series
    from cmrsdk.serve.scp import ScpOptions, StorageScp
    from cmrsdk.synth import synthetic_study

    files = write_dicom_series(tmp_path / "series", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    spool = Spool(tmp_path / "spool", reopen_window_s=60.0)
    scp = StorageScp(spool, ScpOptions(port=0), abort_hold_s=0.5)
    scp.start()
    caplog.set_level(logging.INFO, logger="cmrsdk.serve")
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)

    def send(datasets) -> list[int]:
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="CMRSDK")
        assert assoc.is_established
        statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
        assoc.release()
        wait_for(lambda: not scp._server.active_associations, 10, "the association's end on the node")
        time.sleep(0.1)  # the release handler runs after the association leaves the list
        return statuses

    try:
        yield SimpleNamespace(
            scp=scp, spool=spool, files=files, send=send, uid=str(pydicom.dcmread(files[0]).SeriesInstanceUID)
        )
    finally:
        scp.stop()
        spool.close()


# ---- 1. a series cut short by the spool limit is held, not segmented on part of it ------------------
def test_a_series_cut_short_by_the_spool_limit_is_held_like_an_aborted_one(scp_node, tmp_path, caplog):
    """30 of 36 instances stored, 6 refused with 0xA700: the node segmented the 30 (LVEDV 172.5
    for 182.5 mL). It is held, named with the count refused, fails after the hold saying so, and
    a resend whole once there is room is judged on every instance."""
    node = scp_node
    datasets = [pydicom.dcmread(f) for f in node.files]
    size = len(Path(node.files[0]).read_bytes())
    node.spool.max_bytes = 4 * size + size // 2  # room for 4 of the 6
    statuses = node.send(datasets)
    assert statuses.count(0x0000) == 4 and statuses.count(0xA700) == 2
    row = node.spool.series(node.uid)
    assert (row.state, row.interrupted, row.refused) == ("receiving", 1, 2)
    assert f"2 instance(s) of series {node.uid} refused, out of resources (0xA700): held, not segmented" in caplog.text
    finals: list[str] = []
    worker = _holding_worker(node.spool, tmp_path, 30.0, finals)  # a hold no loaded machine outlasts
    time.sleep(0.05)
    worker.promote_quiet_series()
    assert node.spool.series(node.uid).state == "receiving" and finals == []  # quiet, but held
    worker.abort_hold_s = 0.5  # then a hold that has passed (the full suite under load outlasted 0.5 s above)
    time.sleep(0.55)
    worker.promote_quiet_series()
    row = node.spool.series(node.uid)
    assert row.state == "failed" and finals == [node.uid]
    assert row.reason.startswith("2 of its instances were refused for space (0xA700")
    # room again: the sender sends it whole; the 4 held are duplicates, the series reopened and complete
    node.spool.max_bytes = None
    assert node.send(datasets) == [0x0000] * 6
    row = node.spool.series(node.uid)
    assert (row.state, row.n_instances, row.interrupted, row.refused) == ("receiving", 6, 0, 0)
    assert not worker._held(node.uid, time.time())


# ---- 2. results whose files cannot be read ---------------------------------------------------------
def test_an_unreadable_result_file_is_said_once_and_given_up_after_its_attempts(tmp_path, caplog):
    """A result folder deleted by a retention clean-up (or recorded relative to another working
    folder): said once, tried --forward-attempts times, then not forwarded and its series done."""
    from cmrsdk.serve.forward import Forwarder
    from cmrsdk.serve.node import series_log_line

    spool = Spool(tmp_path / "spool")
    gone = tmp_path / "out" / "7.1" / "seg_ED.dcm"
    finals: list[str] = []
    try:
        assert _segmented(spool, "7.1", deliveries=[gone]) == "forwarding"
        forwarder = Forwarder(
            spool,
            parse_destination(f"PACS@127.0.0.1:{free_port()}"),
            ae_title="CMRSDK",
            stop=threading.Event(),
            on_final=finals.append,
            max_attempts=3,
        )
        caplog.set_level(logging.INFO, logger="cmrsdk.serve")
        for _ in range(3):
            forwarder.send(spool.due_deliveries(now=time.time() + 3600))
        assert spool.due_deliveries(now=time.time() + 3600) == [] and finals == ["7.1"]
        row = spool.series("7.1")
        line = series_log_line(spool, "7.1")
    finally:
        spool.close()
    assert caplog.text.count("cannot be read (No such file or directory)") == 2  # said once, then given up
    assert f"{gone} tried 3 times (cannot be read (No such file or directory)): not forwarded" in caplog.text
    assert row.state == "done" and row.reason.startswith("1 result file(s) not forwarded: cannot be read")
    assert "done, 0/1 result files forwarded" in line


def test_serve_records_its_folders_as_absolute_paths_and_quiets_pynetdicom(tmp_path, monkeypatch):
    """Relative --spool/--output are resolved at start: a restart from another folder finds the
    results recorded; pynetdicom's per-attempt ERROR lines pass only with --log-level DEBUG."""
    from _dicom_node import serve_parser_with_fake_node

    from cmrsdk.serve import command

    parser, configs = serve_parser_with_fake_node(monkeypatch, tmp_path)
    levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "pydicom", "highdicom")}
    try:
        for level, expected in (("INFO", logging.ERROR), ("DEBUG", logging.DEBUG)):
            argv = ["serve", "--port", "0", "--spool", "node/spool", "--output", "node/out", "--log-level", level]
            assert command.run_serve(parser.parse_args(argv)) == 0
            assert logging.getLogger("pynetdicom").level == expected
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert configs[0].spool == tmp_path.resolve() / "node" / "spool"
    assert configs[0].output == tmp_path.resolve() / "node" / "out"


def test_results_recorded_relative_to_another_folder_are_found_at_start(tmp_path, monkeypatch):
    """A spool written by a node started with a relative --output (before it was resolved), started
    again from another folder: its waiting results are found under --output, not given up."""
    seg = tmp_path / "node" / "out" / "7.1" / "seg_ED.dcm"
    seg.parent.mkdir(parents=True)
    seg.write_bytes(b"seg")
    spool = Spool(tmp_path / "node" / "spool")
    try:
        monkeypatch.chdir(tmp_path)
        assert _segmented(spool, "7.1", deliveries=[Path("node/out/7.1/seg_ED.dcm")]) == "forwarding"
        monkeypatch.chdir("/")
        assert spool.rebase_deliveries(tmp_path / "node" / "out") == 1
        assert [d[0] for d in spool.due_deliveries()] == [str(seg)]
        assert spool.rebase_deliveries(tmp_path / "node" / "out") == 0  # found where recorded now
    finally:
        spool.close()


# ---- 3. instances acknowledged and not processed are said, once per series and association ----------
def test_a_judged_series_sent_again_and_late_instances_are_said_once(scp_node, caplog):
    node = scp_node
    datasets = [pydicom.dcmread(f) for f in node.files]
    assert node.send(datasets) == [0x0000] * 6
    spool = node.spool
    spool.mark_complete(node.uid, queue=True, phases=2, slices=3, reason=None, quiet_since=time.time())
    assert spool.next_queued() == node.uid
    assert spool.mark_segmented(node.uid, output=spool.directory / "out", deliveries=[]) == "done"
    caplog.clear()
    assert node.send(datasets) == [0x0000] * 6  # the same SOP Instance UIDs: duplicates of a done series
    assert caplog.text.count("acknowledged but not processed") == 1
    assert f"6 instance(s) of series {node.uid} acknowledged but not processed: it was done already" in caplog.text
    # after the reopen window its files are gone: new instances of it are late
    assert spool.purge_expired(now=time.time() + 3600) == [node.uid]
    for ds in datasets:
        ds.SOPInstanceUID = pydicom.uid.generate_uid()
    caplog.clear()
    assert node.send(datasets) == [0x0000] * 6
    assert caplog.text.count("acknowledged but not processed") == 1
    late = f"6 instance(s) of series {node.uid} acknowledged but not processed: it was judged and its instances"
    assert f"{late} are no longer kept" in caplog.text
    assert spool.series(node.uid).n_late == 6


# ---- 4. a port in use ------------------------------------------------------------------------------
def test_a_port_in_use_is_one_line_not_a_traceback(tmp_path):
    from cmrsdk.serve.scp import ScpOptions, StorageScp

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spool = Spool(tmp_path / "spool")
        try:
            with pytest.raises(InputError, match=f"--port {port}: 127.0.0.1:{port} is already in use"):
                StorageScp(spool, ScpOptions(port=port)).start()
        finally:
            spool.close()
        done = subprocess.run(
            [sys.executable, "-m", "cmrsdk", "serve", "--port", str(port)]
            + ["--spool", str(tmp_path / "spool2"), "--output", str(tmp_path / "out")],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"cmrsdk: error: --port {port}: 127.0.0.1:{port}")


# ---- 5. the log during a PACS outage ------------------------------------------------------------------
def test_a_pacs_outage_names_every_result_waiting_and_times_apart_from_forwarding(tmp_path, caplog):
    from cmrsdk.io import write_dicom_series
    from cmrsdk.serve.forward import Forwarder
    from cmrsdk.serve.node import series_log_line
    from cmrsdk.synth import synthetic_study

    study = synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2)
    files = write_dicom_series(tmp_path / "series", study)[:3]
    spool = Spool(tmp_path / "spool")
    try:
        assert _segmented(spool, "7.1", deliveries=[Path(f) for f in files]) == "forwarding"
        for path in files[1:]:  # in back-off: not due in this batch, but waiting all the same
            spool.mark_delivery_failed(str(path), "association not established", retry_in_s=3600)
        forwarder = Forwarder(
            spool,
            parse_destination(f"PACS@127.0.0.1:{free_port()}"),
            ae_title="CMRSDK",
            stop=threading.Event(),
            on_final=lambda uid: None,
        )
        caplog.set_level(logging.WARNING, logger="cmrsdk.serve")
        due = spool.due_deliveries()
        assert len(due) == 1
        forwarder.send(due)
        assert ": association not established; 3 result file(s) wait, next try in" in caplog.text
        result_at = spool.series("7.1").result_at
        for path in files:
            spool.mark_delivered(str(path))
        spool._db.execute("UPDATE series SET finished_at = ? WHERE series_uid = '7.1'", (result_at + 200.0,))
        line = series_log_line(spool, "7.1")
    finally:
        spool.close()
    assert ", 200.0 s forwarding, done, 3/3 result files forwarded" in line


# ---- 6. failed series do not hold the spool for good, and a resend retries them ----------------------
def test_failed_series_are_released_after_the_window_and_a_resend_retries_them(tmp_path):
    """A brief output-disk-full failed series for good, their files were never released (the
    spool limit then refused every new study), and a resend was taken for duplicates."""
    s = Spool(tmp_path / "spool", reopen_window_s=60.0, max_bytes=30)
    try:
        for i in range(3):
            s.store_instance("8.1", f"8.1.{i}", b"x" * 10)
        s.mark_complete("8.1", queue=True, phases=2, slices=3, reason=None, quiet_since=time.time())
        assert s.next_queued() == "8.1"
        assert s.mark_failed("8.1", "OSError: [Errno 28] No space left on device") == "failed"
        assert s.purge_expired(now=time.time() + 30) == []  # kept for the window
        assert s.store_instance("9.1", "9.1.0", b"y" * 10) == "stored"  # room made: the failure released
        assert s.series("8.1").state == "failed" and not s.series_folder("8.1").exists()
        # the sender sends it again whole: reopened, stored anew, judged on every instance
        s.max_bytes = None
        assert [s.store_instance("8.1", f"8.1.{i}", b"x" * 10) for i in range(3)] == ["reopened", "stored", "stored"]
        row = s.series("8.1")
        assert (row.state, row.n_instances, row.reopened) == ("receiving", 3, 1)
        assert len(list(s.series_folder("8.1").glob("*.dcm"))) == 3
        # failed again, files kept: a resend of the same UIDs reopens it without writing
        s.mark_complete("8.1", queue=True, phases=2, slices=3, reason=None, quiet_since=time.time())
        assert s.next_queued() == "8.1" and s.mark_failed("8.1", "again") == "failed"
        assert s.store_instance("8.1", "8.1.0", b"x" * 10) == "reopened"
        assert s.store_instance("8.1", "8.1.1", b"x" * 10) == "duplicate"
        assert (s.series("8.1").state, s.series("8.1").n_instances) == ("receiving", 3)
    finally:
        s.close()


# ---- 7. a year of history ----------------------------------------------------------------------------
def test_the_reopen_scan_reads_only_the_instances_still_held(tmp_path):
    """At 10,000 series purge_expired took 435 ms a call, holding the spool's lock: the scan of
    kept files walked every purged row. A partial index reads only those still held
    (runs/redteam18/spool_year.py 1000: 53.4 -> 1.2 ms)."""
    s = Spool(tmp_path / "spool", reopen_window_s=600.0)
    try:
        plan = " ".join(
            str(r[-1])
            for r in s._db.execute(
                "EXPLAIN QUERY PLAN SELECT 1 FROM instances i WHERE i.series_uid = ? AND i.purged = 0", ("1",)
            )
        )
    finally:
        s.close()
    assert "instances_kept" in plan
