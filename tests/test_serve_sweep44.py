"""Sweep 44 of the DICOM node: a series refused for its content and sent again corrected, under the
same UIDs (runs/redteam44). Before 0.14.9 the corrected copies were acknowledged as duplicates and
dropped, and the series was judged again on the old files: failed three times over in the sweep's
log for a cine whose InstanceNumbers a de-identification tool had renumbered."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from cmrsdk.serve.spool import Spool, read_status

from _dicom_node import NodeProcess, free_port, wait_for

pytest.importorskip("pynetdicom")


def test_a_failed_series_sent_again_in_other_bytes_replaces_its_files(tmp_path: Path):
    s = Spool(tmp_path / "spool", reopen_window_s=600.0)
    for i in range(3):
        assert s.store_instance("7.1", f"7.1.{i}", b"old" * (i + 1)) == "stored"
    s.mark_complete("7.1", queue=True, phases=1, slices=3, reason=None, quiet_since=s.series("7.1").last_instance_at)
    assert s.next_queued() == "7.1"
    assert s.mark_failed("7.1", "the phases cannot be ordered") == "failed"
    # the corrected resend: the first instance reopens the series, the others replace their copies
    assert s.store_instance("7.1", "7.1.0", b"corrected") == "reopened"
    incoming = tmp_path / "incoming.dcm"  # the node's way: a received file moved into the spool
    incoming.write_bytes(b"corrected twice")
    assert s.store_instance("7.1", "7.1.1", incoming) == "stored"
    assert s.store_instance("7.1", "7.1.2", b"old" * 3) == "duplicate"  # the same bytes: nothing to replace
    folder = s.series_folder("7.1")
    assert sorted(p.read_bytes() for p in folder.glob("*.dcm")) == [b"corrected", b"corrected twice", b"old" * 3]
    row = s.series("7.1")
    assert (row.state, row.n_instances, row.reopened) == ("receiving", 3, 1)
    assert s.bytes_held == len(b"corrected") + len(b"corrected twice") + 9
    assert not list(folder.glob(".*.tmp"))
    s.close()


def test_only_a_receiving_or_failed_series_takes_a_copy_in_other_bytes(tmp_path: Path):
    s = Spool(tmp_path / "spool", reopen_window_s=600.0)
    s.store_instance("8.1", "8.1.1", b"first")
    assert s.store_instance("8.1", "8.1.1", b"second") == "stored"  # still receiving: the newest copy
    assert s.series("8.1").n_instances == 1 and s.bytes_held == len(b"second")
    s.mark_complete("8.1", queue=True, phases=1, slices=3, reason=None, quiet_since=s.series("8.1").last_instance_at)
    assert s.next_queued() == "8.1"
    assert s.mark_segmented("8.1", output=tmp_path / "out", deliveries=[]) == "done"
    # a series with a result sent again (a PACS's routing rule, another transfer syntax): processed once
    assert s.store_instance("8.1", "8.1.1", b"third") == "duplicate"
    assert (s.series_folder("8.1") / "8.1.1.dcm").read_bytes() == b"second"
    assert s.series("8.1").state == "done"
    s.close()


def _renumbered(files: list[Path], folder: Path) -> list[Path]:
    """Copies of ``files`` without TriggerTime and with InstanceNumbers that step differently at
    each slice position (as a de-identification tool renumbers): the phases cannot be ordered."""
    folder.mkdir()
    copies = []
    for file in files:
        ds = pydicom.dcmread(file)
        del ds.TriggerTime
        phase, position = int(file.stem[:3]), int(file.stem[4:7])  # files are named phase_slice.dcm
        ds.InstanceNumber = 100 * position + phase * (position + 1) + 1
        ds.save_as(folder / file.name)
        copies.append(folder / file.name)
    return copies


def _send(port: int, files: list[Path]) -> list[int]:
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", port, ae_title="CMRSDK")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]
    assoc.release()
    return statuses


def _verdict(spool: Path, uid: str, judged: int):
    try:
        rows = {r.series_uid: r for r in read_status(spool)[0]}
    except Exception:  # the node has not created its database yet
        return None
    row = rows.get(uid)
    return row if row is not None and row.state in ("done", "failed") and row.reopened + 1 >= judged else None


def test_a_cine_refused_at_the_node_and_sent_again_corrected_is_segmented(tmp_path: Path):
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    files = write_dicom_series(tmp_path / "cine", synthetic_study(seed=4, n_phases=2, n_slices=4, shape=(64, 64)))
    broken = _renumbered(files, tmp_path / "renumbered")
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    port = free_port()
    # the node's pipeline options, as segment's (before 0.14.9 it ran the defaults only)
    fast = ("--mode", "baseline", "--no-mirroring", "--threads", "1")
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "out", port, log_path=tmp_path / "node.log", series_timeout=1, pipeline=fast
    )
    try:
        assert _send(port, broken) == [0] * len(broken)
        first = wait_for(lambda: _verdict(node.spool, uid, 1), 120, "the renumbered cine's verdict")
        assert first.state == "failed" and "'InstanceNumber' (0020,0013) does not step regularly" in first.reason
        assert _send(port, files) == [0] * len(files)  # the originals: the same SOP Instance UIDs
        again = wait_for(lambda: _verdict(node.spool, uid, 2), 120, "the corrected cine's verdict")
        assert (again.state, again.n_instances, again.phases, again.slices) == ("done", 8, 2, 4), node.text()[-3000:]
        assert (Path(again.output) / "seg_ED.dcm").is_file()
        provenance = json.loads((Path(again.output) / "report.json").read_text())["provenance"]
        assert (provenance["mode"], provenance["mirroring"]) == ("baseline", False)
        assert "ready: pipeline and writers loaded" in node.text() and "(baseline, " in node.text()
    finally:
        assert node.terminate() == 0


def test_the_node_refuses_what_segment_refuses(capsys):
    from cmrsdk.cli import main

    for argv, said in (
        (["--mode", "oracle"], "invalid choice: 'oracle'"),  # routing by labels: no labels at a node
        (["--threads", "0"], "expected a whole number >= 1, got '0'"),
        (["--no-mirroring", "--half-turn"], "not allowed with argument"),
    ):
        with pytest.raises(SystemExit) as stopped:
            main(["serve", "--port", "11112", "--spool", "s", "--output", "o", *argv])
        assert stopped.value.code == 2 and said in capsys.readouterr().err
