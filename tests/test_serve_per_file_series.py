"""A cine whose files each got their own SeriesInstanceUID (dcmtk ``dcmodify -gse``, per-file
de-identification scripts) sent to the node. Before 0.14.10 each image was judged alone and set
aside ("not a short-axis stack: 1 slice position(s)", 240 times for a Sunnybrook cine); the node
now lets one-image series wait for their study and regroups them as `cmrsdk segment` does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from cmrsdk.io import read_dicom_study, write_dicom_series
from cmrsdk.serve.spool import Spool, read_status
from cmrsdk.synth import synthetic_study

from _dicom_node import NodeProcess, free_port, wait_for

N_SLICES, N_PHASES = 5, 4


def _per_file_series(
    cine: Path, target: Path, *, studies: bool = False, patient: str | None = None, study: str | None = None
) -> list[Path]:
    """Copies of ``cine``'s files, each with a SeriesInstanceUID (and SOPInstanceUID) of its own;
    with ``studies`` a StudyInstanceUID of its own too (``dcmodify -gst -gse``), else ``study``
    where given."""
    target.mkdir()
    copies = []
    for file in sorted(cine.glob("*.dcm")):
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        if studies:
            ds.StudyInstanceUID = pydicom.uid.generate_uid()
        elif study is not None:
            ds.StudyInstanceUID = study
        if patient is not None:
            ds.PatientID = ds.PatientName = patient
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(target / file.name)
        copies.append(target / file.name)
    return copies


@pytest.fixture
def split(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A synthetic 5-slice, 4-phase cine and its per-file-series copies."""
    cine = tmp_path / "cine"
    write_dicom_series(cine, synthetic_study(seed=5, shape=(32, 32), n_slices=N_SLICES, n_phases=N_PHASES))
    return cine, _per_file_series(cine, tmp_path / "per_file")


def _reading(monkeypatch) -> list:
    """The studies a worker's (fake) study writer reads, in order, as it is given them."""
    read: list = []

    def study_writer(pipeline, source, out_dir):
        read.append(read_dicom_study(source))
        out_dir.mkdir()
        (out_dir / "report.json").write_text("{}")
        return {}

    monkeypatch.setattr("cmrsdk.serve.worker.write_study", study_writer)
    return read


def _timed_worker(spool: Spool, tmp_path: Path, *, timeout_s: float, abort_hold_s: float):
    """A node's worker with a series timeout and an abort hold of its own (no pipeline)."""
    import threading

    from cmrsdk.serve.worker import Worker

    return Worker(
        spool,
        tmp_path / "out",
        lambda: "pipeline",
        series_timeout_s=timeout_s,
        forward=False,
        stop=threading.Event(),
        on_final=lambda uid: None,
        abort_hold_s=abort_hold_s,
    )


def test_one_image_series_of_a_study_are_regrouped_and_segmented_once(tmp_path: Path, split, monkeypatch):
    from test_serve_spool import _worker

    from cmrsdk.serve.stacks import ONE_SLICE_REASON, stack_uid

    cine, files = split
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    uids = []
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        assert spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes()) == "stored"
        uids.append(str(ds.SeriesInstanceUID))
    lone = pydicom.dcmread(files[0])  # a one-image long-axis view of the same study: no part of the cine
    lone.SeriesInstanceUID, lone.SOPInstanceUID = "9.9.9", pydicom.uid.generate_uid()
    lone.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    lone.save_as(tmp_path / "lone.dcm")
    spool.store_instance("9.9.9", str(lone.SOPInstanceUID), (tmp_path / "lone.dcm").read_bytes())
    read = _reading(monkeypatch)
    worker, finals = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    stack = stack_uid([*uids, "9.9.9"])
    row = spool.series(stack)
    assert (row.state, row.slices, row.phases, row.n_instances) == ("queued", N_SLICES, N_PHASES, N_SLICES * N_PHASES)
    assert {(spool.series(u).state, spool.series(u).reason) for u in uids} == {("set_aside", f"stacked into {stack}")}
    assert (spool.series("9.9.9").state, spool.series("9.9.9").reason) == ("set_aside", ONE_SLICE_REASON)
    assert sorted(finals) == sorted([*uids, "9.9.9"])
    worker.process(stack)
    assert spool.series(stack).state == "done"
    (got,) = read
    reference = read_dicom_study(cine)
    assert len(got.phases) == N_PHASES
    for mine, theirs in zip(got.phases, reference.phases):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
    np.testing.assert_allclose(got.trigger_times_ms, reference.trigger_times_ms)
    spool.close()


def _store(spool: Spool, files: list[Path]) -> list[str]:
    uids = []
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        assert spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes()) == "stored"
        uids.append(str(ds.SeriesInstanceUID))
    return uids


@pytest.mark.parametrize("studies", [True, False], ids=["study_per_file", "one_study"])
def test_two_patients_per_file_cines_sent_together_give_a_stack_each(tmp_path: Path, monkeypatch, studies: bool):
    """Two patients' cines sent together, every file its own series and (``dcmodify -gst -gse``)
    its own study, or both patients under one StudyInstanceUID (sweep 45: the second patient's
    240 images were set aside one by one): one stack each, with every image of its patient."""
    from test_serve_spool import _worker

    cines, shared = [], pydicom.uid.generate_uid()
    for seed, patient in ((5, "A"), (6, "B")):
        cine = tmp_path / f"cine{patient}"
        write_dicom_series(cine, synthetic_study(seed=seed, shape=(32, 32), n_slices=N_SLICES, n_phases=N_PHASES))
        anon = _per_file_series(cine, tmp_path / f"anon{patient}", studies=studies, patient=patient, study=shared)
        cines.append((cine, anon))
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    uids = [_store(spool, files) for _, files in cines]
    read = _reading(monkeypatch)
    worker, finals = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    assert len(finals) == 2 * N_SLICES * N_PHASES  # every one-image series stacked
    stacks = []
    while (stack := spool.next_queued()) is not None:
        row = spool.series(stack)
        assert (row.slices, row.phases, row.n_instances) == (N_SLICES, N_PHASES, N_SLICES * N_PHASES)
        stacks.append(stack)
        worker.process(stack)
    assert len(stacks) == 2 and len(read) == 2
    for (cine, _), got in zip(cines, sorted(read, key=lambda study: study.info.patient_id)):
        reference = read_dicom_study(cine)
        for mine, theirs in zip(got.phases, reference.phases, strict=True):
            np.testing.assert_array_equal(mine.pixels, theirs.pixels)
    for member_uids in uids:  # each patient's images in one stack
        assert len({spool.series(u).reason for u in member_uids}) == 1
    spool.close()


def test_a_patient_whose_files_still_arrive_is_not_stacked_yet(tmp_path: Path, monkeypatch):
    """Files of their own studies, sent slower than the series timeout: the first ones quiet, the
    last still arriving. Gathered by patient, nothing is stacked until the last is quiet too."""
    from test_serve_spool import _worker

    cine = tmp_path / "cine"
    write_dicom_series(cine, synthetic_study(seed=5, shape=(32, 32), n_slices=N_SLICES, n_phases=N_PHASES))
    files = _per_file_series(cine, tmp_path / "anon", studies=True)
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    _store(spool, files[:-1])
    worker, _ = _worker(spool, tmp_path)
    worker.series_timeout_s = worker.stacks.timeout_s = 0.5
    time.sleep(0.6)
    _store(spool, files[-1:])  # the last file: still receiving when the others are judged
    worker.promote_quiet_series()
    assert spool.next_queued() is None and len(worker.stacks.waiting) == len(files) - 1
    time.sleep(0.6)
    worker.promote_quiet_series()
    stack = spool.next_queued()
    assert stack is not None and spool.series(stack).n_instances == len(files)
    spool.close()


def test_a_lone_one_image_series_is_set_aside_as_before(tmp_path: Path, split):
    from test_serve_spool import _worker

    from cmrsdk.serve.stacks import ONE_SLICE_REASON

    _, files = split
    spool = Spool(tmp_path / "spool")
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), files[0].read_bytes())
    worker, finals = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    row = spool.series(str(ds.SeriesInstanceUID))
    assert (row.state, row.reason) == ("set_aside", ONE_SLICE_REASON) and finals == [str(ds.SeriesInstanceUID)]
    assert spool.next_queued() is None
    spool.close()


def _stack_row(spool: Path):
    try:
        rows = read_status(spool)[0]
    except Exception:  # the node has not created its database yet
        return None
    return next((r for r in rows if r.series_uid.startswith("stack.") and r.state in ("done", "failed")), None)


@pytest.mark.parametrize("studies", [False, True], ids=["series_per_file", "study_and_series_per_file"])
def test_a_per_file_series_cine_sent_to_a_real_node_is_segmented(tmp_path: Path, split, studies: bool):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    cine, files = split
    if studies:
        files = _per_file_series(cine, tmp_path / "per_file_study", studies=True)
    port = free_port()
    node = NodeProcess(tmp_path / "spool", tmp_path / "out", port, log_path=tmp_path / "node.log", series_timeout=1)
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

        def send() -> None:
            assoc = ae.associate("127.0.0.1", port, ae_title="CMRSDK")
            assert assoc.is_established
            assert [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files] == [0] * len(files)
            assoc.release()

        send()
        row = wait_for(lambda: _stack_row(node.spool), 180, "the regrouped cine's verdict")
        assert (row.state, row.slices, row.phases, row.n_instances) == ("done", N_SLICES, N_PHASES, len(files)), (
            node.text()[-3000:]
        )
        report = json.loads((Path(row.output) / "report.json").read_text())
        assert len(report["lv_volume_curve_ml"]) == N_PHASES  # every phase of the cine, not one image
        assert report["phases"][0]["shape_zyx"] == [N_SLICES, 32, 32]
        assert (Path(row.output) / "seg_ED.dcm").is_file()
        assert any("regrouped by geometry" in w for w in report["warnings"]), report["warnings"]
        # sweep 45: a line per member (20 here, 240 for a Sunnybrook cine), and as many warnings
        # when it was sent again; now the stack's line, and one warning naming the stack
        assert node.text().count("(stacked into ") == 0 and node.text().count(f"series {row.series_uid}:") == 1
        send()
        said = wait_for(lambda: "acknowledged but not processed" in node.text() and node.text(), 60, "the warning")
        assert said.count("acknowledged but not processed") == 1
        assert f"{len(files)} instance(s) of {len(files)} series stacked into {row.series_uid}" in said
    finally:
        assert node.terminate() == 0


def test_waiting_images_of_an_aborted_association_are_held_not_stacked(tmp_path: Path, split):
    """Sweep 45: a cine's first files, quiet and waiting for their study when the sender aborted
    the association, were stacked though marked interrupted (3 of 40 images; the 203-image stack
    failed on [3, 20] phases). They leave the wait and are held (``--abort-hold``), then fail."""
    _, files = split
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    worker = _timed_worker(spool, tmp_path, timeout_s=0.3, abort_hold_s=1.0)
    first = _store(spool, files[:8])
    time.sleep(0.4)
    _store(spool, files[8:9])  # the association goes on: the study is still arriving
    worker.promote_quiet_series()
    assert set(worker.stacks.waiting) == set(first)
    for uid in first:  # then it is aborted (the node marks every series it carried)
        assert spool.mark_interrupted(uid)
    time.sleep(0.4)
    worker.promote_quiet_series()
    assert not set(first) & set(worker.stacks.waiting) and spool.next_queued() is None
    assert {spool.series(u).state for u in first} == {"receiving"}  # held
    time.sleep(1.1)
    worker.promote_quiet_series()
    assert {spool.series(u).state for u in first} == {"failed"}
    assert "its transfer was aborted" in spool.series(first[0]).reason
    spool.close()


def test_a_cine_cut_off_and_sent_again_whole_is_stacked_whole(tmp_path: Path, split, monkeypatch):
    """Sweep 45: the first two slice positions of a per-file cine came in an association of their
    own and were judged alone (set aside, files deleted); the whole cine sent again found them
    duplicates, and the other positions were stacked and reported "done" as a whole heart (LVEF
    26.4 % for 31.7). The parts set aside keep their files for the reopen window and join the
    stack their study makes in that time."""
    from test_serve_spool import _worker

    cine, files = split
    by_position: dict[float, list[Path]] = {}
    for file in files:
        by_position.setdefault(float(pydicom.dcmread(file, stop_before_pixels=True).SliceLocation), []).append(file)
    first = [f for z in sorted(by_position)[:2] for f in by_position[z]]
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    early = _store(spool, first)
    worker, _ = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    assert {spool.series(u).state for u in early} == {"set_aside"} and spool.next_queued() is None
    for file in files:  # sent again whole: the first ones are duplicates of what is kept
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        assert spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes()) in (
            "stored",
            "duplicate",
        )
    worker.promote_quiet_series()
    stack = spool.next_queued()
    assert stack is not None
    row = spool.series(stack)
    assert (row.slices, row.phases, row.n_instances) == (N_SLICES, N_PHASES, len(files))
    assert {spool.series(u).reason for u in early} == {f"stacked into {stack}"}
    read = _reading(monkeypatch)
    worker.process(stack)
    for mine, theirs in zip(read[0].phases, read_dicom_study(cine).phases, strict=True):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
    spool.close()


def test_a_cines_first_slices_released_for_space_fail_its_study_not_a_partial_stack(tmp_path: Path, monkeypatch):
    """Sweep 46 (F2): a spool at its limit releases kept series oldest first, and the first slice
    positions of a per-slice cine, set aside until the rest came, went first: the rest was stacked
    without them and reported done (10 slices of 12, LVEF 32.77 % for 31.68). The released part
    fails naming its study, the rest fails too (files kept), and the study sent again whole, with
    room, is stacked whole."""
    from test_serve_spool import _worker

    from cmrsdk.serve.spool import RELEASED_PART
    from cmrsdk.serve.stacks import STUDY_CUT

    cine = tmp_path / "cine"
    write_dicom_series(cine, synthetic_study(seed=6, shape=(32, 32), n_slices=N_SLICES, n_phases=N_PHASES))
    positions: dict[float, list[Path]] = {}
    uids: dict[float, str] = {}
    (tmp_path / "per_slice").mkdir()
    for file in sorted(cine.glob("*.dcm")):  # a series per slice position, as Siemens protocols store them
        ds = pydicom.dcmread(file)
        z = float(ds.SliceLocation)
        ds.SeriesInstanceUID = uids.setdefault(z, f"1.2.826.0.1.3680043.10.51.{len(uids) + 1}")
        ds.save_as(tmp_path / "per_slice" / file.name)
        positions.setdefault(z, []).append(tmp_path / "per_slice" / file.name)
    order = sorted(positions)
    first, rest = [f for z in order[:2] for f in positions[z]], [f for z in order[2:] for f in positions[z]]
    study = str(pydicom.dcmread(first[0], stop_before_pixels=True).StudyInstanceUID)
    every = sum(f.stat().st_size for f in [*first, *rest])
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0, max_bytes=every - 1)  # the whole cine does not fit
    early = sorted(set(_store(spool, first)))
    worker, _ = _worker(spool, tmp_path)
    worker.promote_quiet_series()
    assert {spool.series(u).state for u in early} == {"set_aside"}
    later = sorted(set(_store(spool, rest)))  # the last file makes room: the oldest kept part goes
    released = spool.series(early[0])
    assert released.state == "failed" and released.reason.startswith(f"{RELEASED_PART} (study {study})")
    assert spool.series(early[1]).state == "set_aside"  # enough room made by the first
    worker.promote_quiet_series()
    assert spool.next_queued() is None  # no stack of the 3 positions left
    reasons = {spool.series(u).reason for u in later}
    assert {r.split(" (")[0] for r in reasons} == {f"{STUDY_CUT}, released for space while it waited"}
    spool.max_bytes = None  # room again (the operator's larger --max-spool-mb, or older results released)
    outcomes = [
        spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes())
        for file in [*first, *rest]
        for ds in [pydicom.dcmread(file, stop_before_pixels=True)]
    ]
    # the released part stored anew (its first file retries it), the kept one held, each failed one reopened
    again = ["reopened"] + ["duplicate"] * (N_PHASES - 1)
    assert outcomes == ["reopened"] + ["stored"] * (N_PHASES - 1) + ["duplicate"] * N_PHASES + again * (N_SLICES - 2)
    worker.promote_quiet_series()
    stack = spool.next_queued()
    assert stack is not None and spool.series(stack).n_instances == len(first) + len(rest)
    read = _reading(monkeypatch)
    worker.process(stack)
    for mine, theirs in zip(read[0].phases, read_dicom_study(cine).phases, strict=True):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
    spool.close()


def test_the_rest_of_a_cine_whose_first_files_were_cut_off_is_not_reported_whole(tmp_path: Path, split, monkeypatch):
    """Sweep 46: the association aborted after a cine's first files, which were held and failed,
    and the rest sent alone was stacked and reported done as a whole heart (LVEF 26.4 % for
    31.7). The rest fails too, naming the cut; the study sent again whole is stacked whole."""
    from cmrsdk.serve.stacks import STUDY_CUT

    cine, files = split
    spool = Spool(tmp_path / "spool", reopen_window_s=600.0)
    worker = _timed_worker(spool, tmp_path, timeout_s=0.2, abort_hold_s=0.5)
    first = _store(spool, files[:8])
    for uid in first:  # the association carrying them was aborted
        spool.mark_interrupted(uid)
    rest = _store(spool, files[8:])  # sent alone, in an association that ended normally
    time.sleep(0.6)
    worker.promote_quiet_series()  # the cut-off ones fail after the hold
    worker.promote_quiet_series()
    assert {spool.series(u).state for u in first} == {"failed"}
    assert {spool.series(u).state for u in rest} == {"failed"} and spool.next_queued() is None
    assert spool.series(rest[0]).reason.startswith(STUDY_CUT)
    for file in files:  # the study sent again whole: every series reopens
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        assert spool.store_instance(str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID), file.read_bytes()) == "reopened"
    for uid in first + rest:  # in an association that ended normally (the node's `clear_interrupted`)
        spool.clear_interrupted(uid)
    time.sleep(0.3)
    worker.promote_quiet_series()
    stack = spool.next_queued()
    assert stack is not None and spool.series(stack).n_instances == len(files)
    read = _reading(monkeypatch)
    worker.process(stack)
    for mine, theirs in zip(read[0].phases, read_dicom_study(cine).phases, strict=True):
        np.testing.assert_array_equal(mine.pixels, theirs.pixels)
    spool.close()
