"""Sweep 30 of the DICOM node: UIDs that were one file name, a deflate bomb, forged log lines, and
a PACS's ``..`` as a series folder of ``cmrsdk retrieve`` (runs/redteam30, findings 1, 2, 6, 7)."""

from __future__ import annotations

import json
import logging
import re
import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from cmrsdk.serve.spool import (
    FINAL_STATES,
    SeriesRow,
    Spool,
    format_status,
    printable,
    read_status,
    result_name,
    uid_file_name,
)

from _dicom_node import NodeProcess, free_port, wait_for

pytest.importorskip("pynetdicom")
pytestmark = pytest.mark.filterwarnings("ignore:.*for VR UI")  # invalid UIDs are what is sent here

#: a valid UID of exactly 64 characters: ``V.`` (a broken generator's trailing dot) and ``V.2``
#: (past 64) were both named ``V``
V = "1.2.826.0.1.3680043.10.999." + "1" * 37
DEFLATED = "1.2.840.10008.1.2.1.99"
#: a forged log line and a clear-screen escape, as the red team sent them
FORGED = "1.2.3\n2099-01-01 00:00:00 INFO series 9.9.9: 240 instances, done\x1b[2J"


def _cine(folder: Path, seed: int = 0) -> list[Path]:
    """A small short-axis cine (2 phases x 4 slices, 64 x 64) as classic MR images."""
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    return write_dicom_series(folder, synthetic_study(seed=seed, n_phases=2, n_slices=4, shape=(64, 64)))


def _as_patient(files: list[Path], series_uid: str, patient_id: str) -> list[pydicom.Dataset]:
    """``files`` as another patient's series: its own study, series and SOP Instance UIDs."""
    study, datasets = generate_uid(), []
    for file in files:
        ds = pydicom.dcmread(file)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series_uid
        ds.PatientID, ds.PatientName = patient_id, f"{patient_id}^TEST"
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    return datasets


def _send(port: int, datasets: list[pydicom.Dataset], syntaxes: list[str] | None = None) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, syntaxes or ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="CMRSDK")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _final(spool: Path, uids: list[str]) -> dict[str, SeriesRow] | None:
    """The spool's rows of ``uids`` once each has its verdict (done, set aside or failed)."""
    try:
        rows = {r.series_uid: r for r in read_status(spool)[0]}
    except Exception:  # the node has not created its database yet
        return None
    return rows if all(u in rows and rows[u].state in FINAL_STATES for u in uids) else None


# ---- 1. distinct UIDs never share a file name -------------------------------------------------------
def test_uid_file_names_are_distinct_safe_and_unchanged_for_safe_uids():
    hostile = [V, V + ".", V + ".2", V + ".3", "1.2", "1.2.", ".1.2", "1.2_3", "1.2/3", "1.2 3", "", ".", "..", "..."]
    hostile += ["../../etc", "1.2\n3", "\u0663\u0664", "a" * 300, "a" * 300 + "b"]
    names = {uid: uid_file_name(uid) for uid in hostile}
    assert len(set(names.values())) == len(hostile)
    # the results of every verdict (``_2``, ``_3``...) are distinct from every first one as well
    results = [result_name(uid, reopened) for uid in hostile for reopened in range(4)]
    assert len(set(results)) == len(results)
    for name in [*names.values(), *results]:
        assert re.fullmatch(r"[0-9A-Za-z._]{1,80}", name) and name.strip(".") == name, name
    # a valid UID keeps the name spools and results always had; a changed one ends in _h + 12 hex
    assert names[V] == V and uid_file_name("1.2.840.113619.2.1") == "1.2.840.113619.2.1"
    assert re.fullmatch(re.escape(V) + "_h[0-9a-f]{12}", names[V + "."])
    assert names[".."].startswith("_h") and names["1.2_3"] != result_name("1.2", 2) == "1.2_3"


def test_instance_files_of_uids_x_and_x_dot_do_not_overwrite_each_other(tmp_path):
    spool = Spool(tmp_path / "spool")
    try:
        assert spool.store_instance("1.2.3", "1.2.3.4", b"first") == "stored"
        assert spool.store_instance("1.2.3", "1.2.3.4.", b"second") == "stored"
        files = sorted(spool.series_folder("1.2.3").glob("*.dcm"))
        assert sorted(f.read_bytes() for f in files) == [b"first", b"second"]
    finally:
        spool.close()


def test_series_whose_uids_had_one_name_get_their_own_results_through_a_node(tmp_path):
    """Three patients' series, ``V``, then ``V.`` and ``V.2`` together, all one folder name before:
    the later two were 'done' with V's result (one patient's report for another's series), or, sent
    together, failed as one folder of three studies. Each is now segmented on its own files, and
    each report.json names its own series and patient, and its source as ``<spool>/...``."""
    files = _cine(tmp_path / "cine")
    series = {V: "PATIENT_A", V + ".": "PATIENT_B", V + ".2": "PATIENT_C"}
    datasets = {uid: _as_patient(files, uid, patient) for uid, patient in series.items()}
    port = free_port()
    node = NodeProcess(tmp_path / "spool", tmp_path / "out", port, log_path=tmp_path / "node.log", series_timeout=1)
    try:
        assert _send(port, datasets[V]) == [0] * len(files)
        wait_for(lambda: _final(node.spool, [V]), 120, "the first series' verdict")
        later = datasets[V + "."] + datasets[V + ".2"]
        assert _send(port, later) == [0] * len(later)
        rows = wait_for(lambda: _final(node.spool, list(series)), 120, "the three series' verdicts")
        assert {uid: rows[uid].state for uid in series} == dict.fromkeys(series, "done"), node.text()[-3000:]
        out = tmp_path / "out"
        assert sorted(p.name for p in out.iterdir()) == sorted(uid_file_name(uid) for uid in series)
        assert (out / V).is_dir()  # a valid UID's folder keeps its name
        for uid, patient in series.items():
            text = (out / uid_file_name(uid) / "report.json").read_text()
            study = json.loads(text)["study"]
            assert (study["series_uid"], study["patient_id"]) == (uid, patient)
            # the spool named as the node's log names it, not by the node machine's path (sweep 45)
            assert study["source"] == f"<spool>/instances/{uid_file_name(uid)}"
            assert str(tmp_path) not in text
        # the spool keeps them for --reopen-window: one folder per series, each its own files
        spooled = {f.name: len(list(f.glob("*.dcm"))) for f in (tmp_path / "spool" / "instances").iterdir()}
        assert spooled == {uid_file_name(uid): len(files) for uid in series}
    finally:
        assert node.terminate() == 0


# ---- 2. no deflated transfer syntax: a few MB of it inflate to gigabytes ----------------------------
@pytest.fixture
def scp(tmp_path, caplog):
    from cmrsdk.serve.scp import ScpOptions, StorageScp

    spool = Spool(tmp_path / "spool")
    server = StorageScp(spool, ScpOptions(port=0), abort_hold_s=0)
    server.start()
    caplog.set_level(logging.DEBUG, logger="cmrsdk.serve")
    try:
        yield server
    finally:
        server.stop()
        spool.close()


def test_deflated_is_not_accepted_and_a_sender_falls_back_to_uncompressed(scp, caplog):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    from cmrsdk.serve.retrieve import _get_contexts
    from cmrsdk.serve.scp import accepted_transfer_syntaxes

    assert DEFLATED not in accepted_transfer_syntaxes()
    assert all(DEFLATED not in syntaxes for _, syntaxes in _get_contexts(accepted_transfer_syntaxes()))
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, [DEFLATED, "1.2.840.10008.1.2.1"])  # deflated preferred
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="CMRSDK")
    assert assoc.is_established
    assert [str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts] == ["1.2.840.10008.1.2.1"]
    assoc.release()
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, [DEFLATED])  # deflated only: nothing to store with
    ae.associate("127.0.0.1", scp.port, ae_title="CMRSDK").release()
    wait_for(lambda: "no presentation context accepted" in caplog.text, 10, "the node's log line")
    assert "Deflated Explicit VR Little Endian (this node takes uncompressed and lossless ones, not deflated" in (
        caplog.text
    )


# ---- 6. UIDs and AE titles cannot forge log lines ------------------------------------------------
def test_a_uid_with_a_newline_and_an_escape_is_quoted_in_the_log_and_status(scp, tmp_path, caplog, capsys):
    from cmrsdk.cli import main
    from cmrsdk.serve.command import _OneLineFormatter
    from cmrsdk.serve.node import series_log_line
    from cmrsdk.serve.worker import Worker

    ds = _as_patient(_cine(tmp_path / "cine")[:1], FORGED, "P")[0]
    ds.SOPInstanceUID = "1.2.4\nFORGED LINE"
    assert _send(scp.port, [ds]) == [0]
    ds.SeriesInstanceUID = "9.9\x1b[31m"  # the same SOP Instance UID in another series: 0x0111, logged
    assert _send(scp.port, [ds]) == [0x0111]
    finals: list[str] = []
    worker = Worker(scp.spool, tmp_path / "out", lambda: None, series_timeout_s=0.01, forward=False,
                    stop=threading.Event(), on_final=finals.append, abort_hold_s=0)  # fmt: skip
    wait_for(lambda: worker.promote_quiet_series() or finals, 10, "the one-slice series set aside", interval_s=0.05)
    assert finals == [FORGED] and scp.spool.series(FORGED).state == "set_aside"
    logged = [r.getMessage() for r in caplog.records if r.name == "cmrsdk.serve"]
    logged.append(series_log_line(scp.spool, FORGED))
    capsys.readouterr()
    assert main(["serve", "--status", str(tmp_path / "spool")]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status == list(format_status(scp.spool.all_series(), {}))
    for line in [*logged, *status]:
        assert "\n" not in line and "\x1b" not in line, line
    assert any(repr(FORGED) in line for line in logged if "1 instances" in line)
    assert any(repr(FORGED) in line for line in status)
    assert "C-STORE '1.2.4\\nFORGED LINE' of series '9.9\\x1b[31m' refused" in caplog.text
    assert printable(V) == V and printable("1.2.3 é") == "1.2.3 é"  # ordinary text as it was
    # pynetdicom logs the UID raw ('Non-conformant ... value'): the node's log handler writes any
    # record as one line (its lines pass at --log-level DEBUG)
    record = logging.LogRecord("pynetdicom.utils", logging.WARNING, "", 0, "value '%s'", (FORGED,), None)
    line = _OneLineFormatter("%(levelname)s %(message)s").format(record)
    assert line == "WARNING value '1.2.3\\n2099-01-01 00:00:00 INFO series 9.9.9: 240 instances, done\\x1b[2J'"


# ---- 7. cmrsdk retrieve: a PACS's SeriesInstanceUID '..' --------------------------------------------
def test_a_series_uid_dot_dot_from_the_pacs_stays_inside_the_study_folder(tmp_path):
    """Its files went to OUT itself (staging/..), outside the study, and stayed there when the
    retrieval then failed for 'no MR image'."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage, StudyRootQueryRetrieveInformationModelGet

    from cmrsdk.serve import parse_destination
    from cmrsdk.serve.retrieve import SeriesMatch, retrieve_study

    study = generate_uid()
    datasets = _as_patient(_cine(tmp_path / "cine")[:2], "..", "P1")
    for ds in datasets:
        ds.StudyInstanceUID = study

    def on_get(event):
        yield len(datasets)
        for ds in datasets:
            yield 0xFF00, ds

    ae = AE(ae_title="FAKEPACS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_supported_context(MRImageStorage, scu_role=True, scp_role=True)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_GET, on_get)])
    try:
        match = SeriesMatch(study, "..", "P1", "", "", "", len(datasets))
        out = tmp_path / "out"
        folder = retrieve_study(parse_destination(f"FAKEPACS@127.0.0.1:{port}"), [match], out, timeout_s=10)
    finally:
        server.shutdown()
    assert folder == out / study and [p.name for p in out.iterdir()] == [study]
    assert [p.name for p in folder.iterdir()] == [uid_file_name("..")]
    assert len(list((folder / uid_file_name("..")).glob("*.dcm"))) == len(datasets)
