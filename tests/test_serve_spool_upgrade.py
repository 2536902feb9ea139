"""A spool written by an older node, opened by this one (red-team sweep 41, finding 2).

0.14.5 changed `uid_file_name` (a UID that is no safe name now ends in a hash, where 0.14.4 and
before cut it to 64 characters); nothing moved the files an older node had spooled under the old
names, so 0.14.5 to 0.14.7 judged such a series on an empty folder: set aside as "no instances
left in the spool" with its files in the spool, and a resend was a duplicate. These tests build
the spool as 0.14.0 left it and start this version on it.
"""

from __future__ import annotations

import io
import json
import re
import sqlite3
import warnings
from pathlib import Path

import pytest

from _dicom_node import sunnybrook_files, wait_for

from cmrsdk.serve.spool import FINAL_STATES, Spool, read_status, uid_file_name
from cmrsdk.serve.worker import judge_series

#: a SeriesInstanceUID of 70 characters, digits and dots, as some anonymisers write them (DICOM
#: allows 64; the node takes it on purpose): 0.14.0 spooled it under its first 64, less the end dot
LONG_UID = "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567.123456"
#: the verdict 0.14.5 to 0.14.7 gave such a series (`cmrsdk.serve.spool.NO_INSTANCES`)
NO_INSTANCES = "no instances left in the spool"


def uid_file_name_0_14_0(uid: str) -> str:
    """`cmrsdk.serve.spool.uid_file_name` of 0.10.0 to 0.14.4, copied from 0.14.0
    (``git show dfe4dcb:cmrsdk/serve/spool.py``): the names an old node's spool holds."""
    name = re.sub(r"[^0-9A-Za-z.]", "_", uid)[:64].strip(".")
    return name or "_"


def spool_as_0_14_0(folder: Path, instances: list[tuple[str, str, bytes]]) -> None:
    """A spool holding ``instances`` (series UID, SOP Instance UID, file bytes), still receiving,
    as a 0.14.0 node stopped before judging them left it: each file at
    ``instances/<old name of its series>/<old name of its SOP>.dcm``, its row saying so, the
    queue without the column 0.14.2 added and no ``incoming/``."""
    spool = Spool(folder)
    for series_uid, sop_uid, data in instances:
        assert spool.store_instance(series_uid, sop_uid, data, calling_ae="SCANNER") == "stored"
    spool.close()
    db = sqlite3.connect(folder / "queue.sqlite")
    for sop_uid, series_uid, path in db.execute("SELECT sop_uid, series_uid, path FROM instances").fetchall():
        old = Path("instances", uid_file_name_0_14_0(series_uid), f"{uid_file_name_0_14_0(sop_uid)}.dcm")
        (folder / old).parent.mkdir(exist_ok=True)
        (folder / path).rename(folder / old)
        db.execute("UPDATE instances SET path = ? WHERE sop_uid = ?", (str(old), sop_uid))
    db.execute("ALTER TABLE series DROP COLUMN refused")
    db.commit()
    db.close()
    for empty in [*(folder / "instances").iterdir(), folder / "incoming"]:
        if empty.is_dir() and not any(empty.iterdir()):
            empty.rmdir()


def _files_by_row(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> the bytes of the file its row names (a row whose file is missing fails)."""
    db = sqlite3.connect(folder / "queue.sqlite")
    rows = db.execute("SELECT sop_uid, path FROM instances WHERE purged = 0").fetchall()
    db.close()
    return {sop_uid: (folder / path).read_bytes() for sop_uid, path in rows}


def _as_0_14_7_judged(folder: Path, series_uid: str) -> str:
    """What 0.14.5 to 0.14.7 did with such a series once quiet: judged on the folder `series_folder`
    names now, which is empty, and set aside; returns the reason."""
    spool = Spool(folder)
    verdict = judge_series(spool.series_folder(series_uid))
    assert spool.mark_complete(
        series_uid, queue=verdict.queue, phases=None, slices=None, reason=verdict.reason, quiet_since=2e9
    )
    spool.close()
    return str(verdict.reason)


@pytest.fixture(scope="module")
def sunnybrook_long_uid(shared_data) -> list[tuple[str, str, bytes]]:
    """SCD0000101's 240 files, their SeriesInstanceUID made `LONG_UID` (pydicom, in memory)."""
    import pydicom

    source = shared_data / "sunnybrook" / "SCD0000101"
    if not source.is_dir():
        pytest.skip(f"Sunnybrook series not found at {source}")
    instances = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its invalid dates and leading-zero UIDs
        for file in sunnybrook_files(source):
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID = LONG_UID
            buffer = io.BytesIO()
            ds.save_as(buffer)
            instances.append((LONG_UID, str(ds.SOPInstanceUID), buffer.getvalue()))
    return instances


@pytest.fixture
def small_cine(tmp_path) -> list[tuple[str, str, bytes]]:
    """A synthetic 3-slice, 2-phase cine whose SeriesInstanceUID is `LONG_UID` and whose SOP Instance
    UIDs end in a dot (no safe name either: their files are renamed too)."""
    import pydicom

    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    files = write_dicom_series(tmp_path / "cine", synthetic_study(seed=0, n_slices=3, shape=(32, 32), n_phases=2))
    instances = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the UIDs are invalid on purpose
        for k, file in enumerate(files):
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID, ds.SOPInstanceUID = LONG_UID, f"1.2.826.0.1.3680043.8.498.77.{k}."
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            buffer = io.BytesIO()
            ds.save_as(buffer)
            instances.append((LONG_UID, str(ds.SOPInstanceUID), buffer.getvalue()))
    return instances


def test_a_real_cine_an_old_node_spooled_under_a_long_uid_is_segmented_after_the_upgrade(
    sunnybrook_long_uid, tmp_path, caplog
):
    """0.14.0 received SCD0000101 (SeriesInstanceUID of 70 characters) and was stopped before judging
    it; this node, started on its spool, moves the files to today's folder and segments them: SEG
    and SR as from the original series, where 0.14.7 set the series aside."""
    import logging

    import highdicom as hd

    from cmrsdk.serve.node import Node, NodeConfig
    from cmrsdk.serve.scp import ScpOptions

    folder, out = tmp_path / "spool", tmp_path / "out"
    spool_as_0_14_0(folder, sunnybrook_long_uid)
    old = folder / "instances" / uid_file_name_0_14_0(LONG_UID)
    assert len(list(old.glob("*.dcm"))) == 240 and uid_file_name(LONG_UID) != old.name
    sent = {sop_uid: data for _, sop_uid, data in sunnybrook_long_uid}

    caplog.set_level(logging.INFO, logger="cmrsdk.serve")
    # one U-Net a slice (the spool's upgrade is under test): LVEF 31.68 % as `cmrsdk batch` gives
    # the original series with these options (tests/test_batch_flat_disc.py)
    fast = {"mode": "baseline", "mirroring": False}
    node = Node(NodeConfig(folder, out, scp=ScpOptions(port=0), series_timeout_s=0.5, pipeline=fast))
    node.start()
    try:
        wait_for(
            lambda: node.worker.error or node.spool.series_state(LONG_UID) in FINAL_STATES,
            180,
            "the series' verdict",
            interval_s=0.5,
        )
    finally:
        assert node.stop() == 0
    rows, _ = read_status(folder)
    assert [(r.state, r.reason, r.n_instances, r.phases, r.slices) for r in rows] == [("done", None, 240, 20, 12)]
    assert "1 series spooled by an older version moved to this version's folder names" in caplog.text
    assert not old.exists() and _files_by_row(folder) == sent  # every file kept, as sent

    result = out / uid_file_name(LONG_UID)
    assert {"seg_ED.dcm", "seg_ES.dcm", "sr.dcm", "report.json"} <= {p.name for p in result.iterdir()}
    report = json.loads((result / "report.json").read_text())
    assert report["measures"]["lvef_pct"] == pytest.approx(31.68, abs=5e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segs = [hd.seg.segread(result / f"seg_{phase}.dcm") for phase in ("ED", "ES")]
        sr = hd.sr.srread(result / "sr.dcm")
    for seg in segs:
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == LONG_UID
        assert [d.segment_label for d in seg.SegmentSequence] == ["LVBP", "LVM", "RVBP"]
    measured = [
        (item.name.meaning, round(item.value, 3))
        for group in [*sr.content.get_image_measurement_groups(), *sr.content.get_volumetric_roi_measurement_groups()]
        if str(group.tracking_identifier) == "Left ventricle"
        for item in group.get_measurements()
    ]
    assert ("Left ventricular ejection fraction by MR", 31.68) in measured


def test_a_folder_two_uids_shared_under_0_14_0_is_split_by_the_rows(small_cine, tmp_path):
    """0.14.0 gave `LONG_UID` and its first 63 characters (another, valid UID) one folder: each
    series' files go to their own folder, the other series' stay where they were."""
    short = LONG_UID[:63]  # its 64th character is a dot, cut off by 0.14.0
    assert uid_file_name_0_14_0(short) == uid_file_name_0_14_0(LONG_UID) == uid_file_name(short)
    other = [(short, f"1.2.826.0.1.3680043.8.498.88.{k}", b"other %d" % k) for k in range(3)]
    folder = tmp_path / "spool"
    spool_as_0_14_0(folder, [*small_cine, *other])
    before = _files_by_row(folder)

    spool = Spool(folder)
    held = spool.bytes_held
    assert spool.recover() == {"requeued": 0, "temporary_files_removed": 0, "series_renamed": 1}
    assert _files_by_row(folder) == before and spool.bytes_held == held
    assert sorted(p.name for p in spool.series_folder(short).iterdir()) == [f"{sop}.dcm" for _, sop, _ in other]
    assert sorted(p.name for p in spool.series_folder(LONG_UID).iterdir()) == sorted(
        f"{uid_file_name(sop)}.dcm" for _, sop, _ in small_cine
    )
    verdict = judge_series(spool.series_folder(LONG_UID))
    assert verdict.reason is None and (verdict.phases, verdict.slices) == (2, 3)
    assert spool.recover() == {"requeued": 0, "temporary_files_removed": 0}  # once
    spool.close()


@pytest.mark.parametrize("cut_after", [0, 1, 5, 6])
def test_a_move_cut_short_loses_no_file_and_is_finished_at_the_next_start(small_cine, tmp_path, monkeypatch, cut_after):
    """Killed after ``cut_after`` of the 6 renames (6: all of them, before the rows were committed),
    the next start moves the rest and records where every file is."""
    import cmrsdk.serve.spool as spool_module

    folder = tmp_path / "spool"
    spool_as_0_14_0(folder, small_cine)
    before = _files_by_row(folder)
    renames = []
    replace = spool_module.os.replace

    def killed(source, target):
        if len(renames) == cut_after:
            raise KeyboardInterrupt("killed")
        renames.append(target)
        replace(source, target)

    def killed_before_commit():
        raise KeyboardInterrupt("killed")

    spool = Spool(folder)
    monkeypatch.setattr(spool_module.os, "replace", killed)
    if cut_after == 6:
        monkeypatch.setattr(spool, "_transaction", killed_before_commit)
    with pytest.raises(KeyboardInterrupt):
        spool.recover()
    spool.close()
    monkeypatch.undo()
    assert len(renames) == cut_after
    assert sum(1 for _ in (folder / "instances").rglob("*.dcm")) == 6  # each file in one place or the other

    spool = Spool(folder)
    assert spool.recover()["series_renamed"] == 1
    assert _files_by_row(folder) == before
    assert len(list(spool.series_folder(LONG_UID).glob("*.dcm"))) == 6
    assert not (folder / "instances" / uid_file_name_0_14_0(LONG_UID)).exists()
    spool.close()


def test_a_series_0_14_7_set_aside_with_its_files_in_the_spool_is_judged_again(small_cine, tmp_path):
    """Set aside as "no instances left in the spool" by 0.14.7 (its files under 0.14.0's name): at
    the next start it receives again and is judged on its files, as a first verdict."""
    folder = tmp_path / "spool"
    spool_as_0_14_0(folder, small_cine)
    assert _as_0_14_7_judged(folder, LONG_UID) == NO_INSTANCES

    spool = Spool(folder)
    assert spool.store_instance(*small_cine[0]) == "duplicate"  # a resend did not help, nor does it here
    assert spool.recover() == {
        "requeued": 0,
        "temporary_files_removed": 0,
        "series_renamed": 1,
        "judged_again": 1,
    }
    row = spool.series(LONG_UID)
    assert (row.state, row.reason, row.reopened, row.finished_at) == ("receiving", None, 0, None)
    assert spool.quiet_series(0.0) == [LONG_UID]
    verdict = judge_series(spool.series_folder(LONG_UID))
    assert verdict.reason is None and (verdict.phases, verdict.slices) == (2, 3)
    assert spool.recover() == {"requeued": 0, "temporary_files_removed": 0}
    spool.close()


def test_a_series_0_14_7_failed_on_its_missing_folder_is_judged_again(small_cine, tmp_path, monkeypatch):
    """Queued by 0.14.0 and killed, then failed by 0.14.7 for its folder not existing: judged again."""
    import threading

    from cmrsdk.io.dispatch import detect_format
    from cmrsdk.serve.worker import Worker

    folder = tmp_path / "spool"
    spool_as_0_14_0(folder, small_cine)
    spool = Spool(folder)
    assert spool.mark_complete(LONG_UID, queue=True, phases=2, slices=3, reason=None, quiet_since=2e9)
    assert spool.next_queued() == LONG_UID
    # 0.14.7's worker: the study reader given the folder `series_folder` names now
    monkeypatch.setattr("cmrsdk.serve.worker.write_study", lambda pipeline, source, out: detect_format(source))
    worker = Worker(
        spool, tmp_path / "out", lambda: None, series_timeout_s=0.0, forward=False,
        stop=threading.Event(), on_final=lambda uid: None,
    )  # fmt: skip
    (tmp_path / "out").mkdir()
    worker.process(LONG_UID)
    assert spool.series(LONG_UID).reason == f"<spool>/instances/{uid_file_name(LONG_UID)}: no such file or directory"
    spool.close()

    spool = Spool(folder)
    assert spool.recover()["judged_again"] == 1
    assert spool.series(LONG_UID).state == "receiving"
    assert len(list(spool.series_folder(LONG_UID).glob("*.dcm"))) == 6
    spool.close()


def test_a_series_0_14_7_segmented_without_the_part_an_old_node_spooled_is_judged_again_whole(small_cine, tmp_path):
    """0.14.0 received half of the series and was stopped; 0.14.7 took the other half from the
    sender's resend (the first half: duplicates) and segmented that half alone. Its files kept,
    the series is reopened at the next start and judged on all of them (results in ``_2``)."""
    folder = tmp_path / "spool"
    spool_as_0_14_0(folder, small_cine[:3])
    spool = Spool(folder)  # 0.14.7
    assert [spool.store_instance(*instance) for instance in small_cine] == ["duplicate"] * 3 + ["stored"] * 3
    verdict = judge_series(spool.series_folder(LONG_UID))  # the half it stored itself
    assert spool.mark_complete(LONG_UID, queue=True, phases=2, slices=verdict.slices, reason=None, quiet_since=2e9)
    assert spool.next_queued() == LONG_UID
    spool.mark_segmented(LONG_UID, output=tmp_path / "out" / uid_file_name(LONG_UID), deliveries=[])
    spool.close()

    spool = Spool(folder)
    assert spool.recover() == {
        "requeued": 0,
        "temporary_files_removed": 0,
        "series_renamed": 1,
        "reopened_whole": 1,
    }
    row = spool.series(LONG_UID)
    assert (row.state, row.reopened, row.n_instances) == ("receiving", 1, 6)
    verdict = judge_series(spool.series_folder(LONG_UID))
    assert verdict.reason is None and (verdict.phases, verdict.slices) == (2, 3)
    spool.close()


def test_a_series_0_14_7_set_aside_and_released_fails_saying_so_and_a_resend_is_judged(small_cine, tmp_path):
    """Set aside by 0.14.7 and its files released after the reopen window: nothing to judge again,
    so it is failed, saying why, and the series sent again is stored and judged (a set-aside one's
    resend was acknowledged and dropped as a duplicate)."""
    folder = tmp_path / "spool"
    spool_as_0_14_0(folder, small_cine)
    _as_0_14_7_judged(folder, LONG_UID)
    spool = Spool(folder)
    spool.purge_instances(LONG_UID)  # 0.14.7's sweep, by the rows' paths: the files are gone
    spool.close()
    assert not any((folder / "instances").rglob("*.dcm"))

    spool = Spool(folder)
    assert spool.recover() == {"requeued": 0, "temporary_files_removed": 0, "released_unjudged": 1}
    row = spool.series(LONG_UID)
    assert row.state == "failed" and row.reason == (
        f"set aside as '{NO_INSTANCES}' while its 6 instance(s) were in it under an older version's folder "
        "name (cmrsdk 0.14.5 to 0.14.7), and released since: not segmented; send the series again"
    )
    assert [spool.store_instance(*instance) for instance in small_cine] == ["reopened", *["stored"] * 5]
    row = spool.series(LONG_UID)
    assert (row.state, row.n_instances) == ("receiving", 6)
    assert len(list(spool.series_folder(LONG_UID).glob("*.dcm"))) == 6
    spool.close()


def test_a_spool_of_this_version_is_left_as_it_is(small_cine, tmp_path):
    """Nothing to move where every file is where this version put it; a series set aside as
    having no instances, with none, stays so."""
    spool = Spool(tmp_path / "spool")
    for instance in small_cine:
        spool.store_instance(*instance)
    spool.mark_refused("9.9", calling_ae="SCANNER")  # a series whose every instance was refused: no rows
    spool.mark_complete("9.9", queue=False, phases=None, slices=None, reason=NO_INSTANCES, quiet_since=2e9)
    before = _files_by_row(tmp_path / "spool")
    assert spool.recover() == {"requeued": 0, "temporary_files_removed": 0}
    assert _files_by_row(tmp_path / "spool") == before
    assert spool.series("9.9").state == "set_aside"
    spool.close()
