"""Review 20 of the DICOM node: a resend over parallel associations, refusals of a new series and
a hold lifted by a parallel association, a purge racing a resend, handler errors hidden, failed
stacks kept for good, a transaction left open, and the minor ones (runs/review20)."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

import pydicom
import pytest

from cmrsdk.serve import parse_destination
from cmrsdk.serve.spool import Spool, SpoolFull, format_status

from _dicom_node import free_port, wait_for
from test_serve_spool import _segmented
import test_serve_sweep18

pytest.importorskip("pynetdicom")

scp_node = test_serve_sweep18.scp_node  # the fixture, shared


def _assoc(node):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="CMRSDK")
    assert assoc.is_established
    return assoc


def _open_associations(node, n: int) -> None:
    wait_for(lambda: len(node.scp._server.active_associations) == n, 10, f"{n} open association(s)")
    time.sleep(0.1)  # the release handler runs after the association leaves the list


# ---- 1. a failed series resent over two associations -------------------------------------------------
def test_a_failed_series_resent_over_parallel_associations_stores_every_instance(tmp_path):
    """B read its instance's purged row, then A's first instance retried the series (its purged rows
    deleted) before B read the state: B's instance was answered Success and never stored."""
    s = Spool(tmp_path / "spool", reopen_window_s=0.0)
    try:
        for i in range(3):
            s.store_instance("1.2.3", f"1.2.3.{i}", b"x" * 10)
        s._db.execute("UPDATE series SET state = 'failed', reason = 'corrupt', finished_at = ?", (time.time() - 10,))
        assert s.purge_expired() == ["1.2.3"]
        original, a = s.series_state, []

        def a_stores_meanwhile(uid: str) -> str | None:  # B is inside store_instance: A's first arrives
            s.series_state = original
            a.append(s.store_instance("1.2.3", "1.2.3.0", b"x" * 10))
            return original(uid)

        s.series_state = a_stores_meanwhile
        b = s.store_instance("1.2.3", "1.2.3.1", b"x" * 10)
        assert (a, b) == (["reopened"], "stored")
        assert s.store_instance("1.2.3", "1.2.3.2", b"x" * 10) == "stored"
        row = s.series("1.2.3")
        assert (row.state, row.n_instances) == ("receiving", 3)
        assert len(list(s.series_folder("1.2.3").glob("*.dcm"))) == 3
    finally:
        s.close()


# ---- 2. the first instances of a new series refused ----------------------------------------------------
def test_the_first_instances_of_a_new_series_refused_hold_it(scp_node):
    """Spool full at the start of a transfer: the first 2 of 6 refused (no row yet: nothing was
    held), room made, the other 4 stored on the same association: 4 of 6 would be segmented."""
    node = scp_node
    datasets = [pydicom.dcmread(f) for f in node.files]
    node.spool.max_bytes = 10  # nothing fits
    assoc = _assoc(node)
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets[:2]]
    node.spool.max_bytes = None  # the worker released kept files meanwhile
    statuses += [int(assoc.send_c_store(ds).Status) for ds in datasets[2:]]
    assoc.release()
    _open_associations(node, 0)
    assert statuses == [0xA700] * 2 + [0] * 4
    row = node.spool.series(node.uid)
    assert (row.state, row.n_instances, row.interrupted, row.refused) == ("receiving", 4, 1, 2)
    assert row.calling_ae == "SCANNER"


# ---- 3. a parallel association does not lift the hold ---------------------------------------------------
def test_a_parallel_association_does_not_lift_a_refusal_hold(scp_node):
    """One series over two associations: A has 2 refused and is still open; B stores the others and
    ends normally: the hold was cleared though A's refused instances never came."""
    node = scp_node
    datasets = [pydicom.dcmread(f) for f in node.files]
    a = _assoc(node)
    assert int(a.send_c_store(datasets[0]).Status) == 0
    size = len(Path(node.files[0]).read_bytes())
    node.spool.max_bytes = node.spool.bytes_held + size // 2
    assert [int(a.send_c_store(ds).Status) for ds in datasets[1:3]] == [0xA700] * 2
    node.spool.max_bytes = None
    b = _assoc(node)
    assert [int(b.send_c_store(ds).Status) for ds in datasets[3:]] == [0] * 3
    b.release()
    _open_associations(node, 1)
    row = node.spool.series(node.uid)
    a.release()
    _open_associations(node, 0)
    assert (row.interrupted, row.refused) == (1, 2)
    assert node.spool.series(node.uid).interrupted == 1  # A ended with refusals too
    # sent again whole on one association: the hold ends
    c = _assoc(node)
    assert [int(c.send_c_store(ds).Status) for ds in datasets] == [0] * 6
    c.release()
    _open_associations(node, 0)
    assert (node.spool.series(node.uid).interrupted, node.spool.series(node.uid).refused) == (0, 0)


# ---- 4. purge_expired racing a resend -------------------------------------------------------------------
def test_a_series_reopened_between_the_listing_and_the_purge_keeps_its_files(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=1.0)
    try:
        for i in range(3):
            s.store_instance("1.2", f"1.2.{i}", b"x" * 10)
        s._db.execute("UPDATE series SET state = 'failed', reason = 'corrupt', finished_at = ?", (time.time() - 5,))
        listed = s._kept_series
        resent = []

        def listed_then_resent(before: float | None = None) -> list[str]:
            uids = listed(before)
            resent.append(s.store_instance("1.2", "1.2.9", b"x" * 10))
            return uids

        s._kept_series = listed_then_resent
        assert s.purge_expired() == []
        assert resent == ["reopened"]
        row = s.series("1.2")
        assert (row.state, row.n_instances) == ("receiving", 4)
        assert len(list(s.series_folder("1.2").glob("*.dcm"))) == 4
        assert s._db.execute("SELECT COUNT(*) FROM instances WHERE purged = 1").fetchone()[0] == 0
    finally:
        s.close()


# ---- 5. the node's log: handler errors shown, outages quiet ----------------------------------------------
def test_an_exception_in_the_store_handler_is_logged_and_outage_lines_are_not(tmp_path, monkeypatch, caplog):
    """pynetdicom at CRITICAL hid an exception in the C-STORE handler (0xC211, no log line); only
    its lines for a peer that cannot be reached are dropped, unless --log-level DEBUG."""
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from _dicom_node import serve_parser_with_fake_node

    from cmrsdk.io import write_dicom_series
    from cmrsdk.serve import command
    from cmrsdk.serve.scp import ScpOptions, StorageScp
    from cmrsdk.synth import synthetic_study

    parser, _ = serve_parser_with_fake_node(monkeypatch, tmp_path)
    transport = logging.getLogger("pynetdicom.transport")
    levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "pydicom", "highdicom")}
    files = write_dicom_series(tmp_path / "series", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    spool = Spool(tmp_path / "spool")
    scp = StorageScp(spool, ScpOptions(port=0))

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    def outage() -> None:
        ae = AE(ae_title="CMRSDK")
        ae.add_requested_context(MRImageStorage)
        assert not ae.associate("127.0.0.1", free_port(), ae_title="PACS").is_established

    try:
        argv = ["serve", "--port", "0", "--spool", "s", "--output", "o", "--log-level", "INFO"]
        assert command.run_serve(parser.parse_args(argv)) == 0
        caplog.set_level(logging.INFO, logger="cmrsdk.serve")
        spool.store_instance = broken
        scp.start()
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="CMRSDK")
        assert int(assoc.send_c_store(pydicom.dcmread(files[0])).Status) == 0xC211
        assoc.release()
        outage()
        quiet = caplog.text
        caplog.clear()
        argv[-1] = "DEBUG"
        assert command.run_serve(parser.parse_args(argv)) == 0
        outage()
        loud = caplog.text
    finally:
        scp.stop()
        spool.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        transport.removeFilter(getattr(command, "_OUTAGE_LINES", None))
    assert "bound to 'evt.EVT_C_STORE'" in quiet and "a bug" in quiet
    assert "Association request failed" not in quiet and "TCP Initialisation Error" not in quiet
    assert "Association request failed" in loud and "TCP Initialisation Error" in loud


# ---- 6. failed stacks ---------------------------------------------------------------------------------
def test_a_failed_stack_folder_is_released_after_the_window(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=0.0)
    try:
        for m in ("1.1", "1.2"):
            s.store_instance(m, f"{m}.1", b"x" * 10)
        folder = s.series_folder("stack.abc")
        folder.mkdir()
        for m in ("1.1", "1.2"):
            os.link(s.series_folder(m) / f"{m}.1.dcm", folder / f"{m}_{m}.1.dcm")
        assert s.queue_stack("stack.abc", ["1.1", "1.2"], phases=1, slices=2)
        for m in ("1.1", "1.2"):
            s.purge_instances(m)
        assert s.next_queued() == "stack.abc"
        assert s.mark_failed("stack.abc", "a slice short of a phase") == "failed"
        assert s.purge_expired(now=time.time() + 10 * 86400) == ["stack.abc"]
        assert not folder.exists()
    finally:
        s.close()


# ---- 7. a transaction left open -------------------------------------------------------------------------
def test_an_exception_inside_a_transaction_rolls_it_back(tmp_path):
    """SQLITE_FULL inside a retry's transaction left the shared connection in it: every later write
    failed with 'cannot start a transaction within a transaction'."""
    s = Spool(tmp_path / "spool", reopen_window_s=60.0)
    try:
        s.store_instance("1.2", "1.2.1", b"x")
        s._db.execute("UPDATE series SET state = 'failed'")

        def full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        s._reopen = full
        with pytest.raises(sqlite3.OperationalError, match="full"):
            s.store_instance("1.2", "1.2.2", b"x")
        del s._reopen
        assert not s._db.in_transaction
        assert s.series("1.2").state == "failed"  # rolled back whole
        assert s.store_instance("9.9", "9.9.1", b"x") == "stored"
        assert s.next_queued() is None
    finally:
        s.close()


# ---- minor ones -------------------------------------------------------------------------------------------
def test_status_names_a_refusal_hold_with_its_count(tmp_path):
    s = Spool(tmp_path / "spool")
    try:
        s.store_instance("5.1", "5.1.1", b"a")
        assert s.mark_refused("5.1") and s.mark_refused("5.1")
        s.store_instance("5.2", "5.2.1", b"a")
        assert s.mark_interrupted("5.2")
        text = "\n".join(format_status(s.all_series(), {}))
    finally:
        s.close()
    assert "5.1  (held: 2 instance(s) refused for space; waiting for it to be sent again)" in text
    assert "5.2  (held: its transfer was aborted; waiting for it to be sent again)" in text


def test_a_resend_of_a_failed_series_refused_for_space_leaves_its_failure(tmp_path):
    s = Spool(tmp_path / "spool", reopen_window_s=0.0, max_bytes=20)
    try:
        s.store_instance("8.1", "8.1.0", b"x" * 10)
        s._db.execute("UPDATE series SET state = 'failed', reason = 'corrupt', finished_at = ?", (time.time() - 10,))
        assert s.purge_expired() == ["8.1"]
        for i in range(2):
            assert s.store_instance("9.1", f"9.1.{i}", b"y" * 10) == "stored"  # receiving: not released
        with pytest.raises(SpoolFull):
            s.store_instance("8.1", "8.1.0", b"x" * 10)
        row = s.series("8.1")
        assert (row.state, row.reason, row.reopened) == ("failed", "corrupt", 0)
    finally:
        s.close()


def test_a_result_file_unreadable_for_a_while_is_retried_not_given_up(tmp_path, monkeypatch):
    """EIO, ESTALE (a network share), EACCES may pass: only a file gone or not DICOM is given up."""
    from cmrsdk.serve import forward

    def stale(path):
        raise OSError(errno.ESTALE, "Stale file handle", str(path))

    spool = Spool(tmp_path / "spool")
    result = tmp_path / "out" / "7.1" / "seg_ED.dcm"
    try:
        assert _segmented(spool, "7.1", deliveries=[result]) == "forwarding"
        monkeypatch.setattr(forward, "_context_of", stale)
        forwarder = forward.Forwarder(
            spool,
            parse_destination(f"PACS@127.0.0.1:{free_port()}"),
            ae_title="CMRSDK",
            stop=threading.Event(),
            on_final=lambda uid: None,
            max_attempts=2,
        )
        for _ in range(4):
            forwarder.send(spool.due_deliveries(now=time.time() + 3600))
        assert [d[0] for d in spool.due_deliveries(now=time.time() + 3600)] == [str(result)]
        assert spool.series("7.1").state == "forwarding"
    finally:
        spool.close()
