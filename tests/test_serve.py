"""``cmrsdk serve`` against real components: Orthanc as the PACS, dcmtk's storescu/echoscu, pynetdicom.

Every node runs as its own process (``python -m cmrsdk serve``) so that it can be killed with
SIGKILL; Orthanc runs on free loopback ports with a configuration generated here. Tests that
need Orthanc or dcmtk skip, saying so, where they are absent.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from _dicom_node import (
    ECHOSCU,
    ORTHANC,
    STORESCU,
    NodeProcess,
    Orthanc,
    free_port,
    storescu,
    sunnybrook_files,
    wait_for,
)

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc (Debian package 'orthanc') is not installed")
needs_dcmtk = pytest.mark.skipif(
    STORESCU is None or ECHOSCU is None, reason="dcmtk (storescu, echoscu) is not installed"
)


# ---- inputs -------------------------------------------------------------------------------
def synthetic_series(folder: Path, seed: int, *, n_phases: int = 2, n_slices: int = 8, size: int = 96) -> list[Path]:
    """A small short-axis cine written as classic MR images (fast to segment with the demo bundle)."""
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    return write_dicom_series(
        folder, synthetic_study(seed=seed, n_phases=n_phases, n_slices=n_slices, shape=(size, size))
    )


def series_per_slice(folder: Path, seed: int) -> tuple[list[list[Path]], list[str]]:
    """A 6-slice, 2-phase cine stored one series per slice (as Siemens protocols do): the files of
    each slice, base to apex, and their series UIDs."""
    import pydicom

    by_slice: dict[int, list[Path]] = {}
    for file in synthetic_series(folder, seed=seed, n_phases=2, n_slices=6, size=64):
        by_slice.setdefault(int(file.name[4:7]), []).append(file)  # files are named phase_slice.dcm
    groups, uids = [], []
    for z, group in sorted(by_slice.items()):
        uid = pydicom.uid.generate_uid()
        for file in group:
            ds = pydicom.dcmread(file)
            ds.SeriesInstanceUID, ds.SeriesNumber = uid, 10 + z
            ds.save_as(file)
        groups.append(group)
        uids.append(uid)
    return groups, uids


def series_uid(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def sunnybrook(shared_data, tmp_path_factory) -> list[Path]:
    """SCD0000101's full cine (240 images), unaltered: invalid dates and a frame of reference per image."""
    source = shared_data / "sunnybrook" / "SCD0000101"
    if not source.is_dir():
        pytest.skip(f"Sunnybrook series not found at {source}")
    return sunnybrook_files(source)


# ---- a DICOM client in the test (pynetdicom), for what storescu cannot time --------------
def associate(port: int, calling: str = "SCANNER"):
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    ae = AE(ae_title=calling)
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="CMRSDK")
    assert assoc.is_established, f"association with 127.0.0.1:{port} not established"
    return assoc


def send(assoc, files: list[Path]) -> list[int | None]:
    """C-STORE ``files`` on an open association; the statuses (None where no answer came)."""
    import pydicom

    statuses = []
    for f in files:
        try:
            status = assoc.send_c_store(pydicom.dcmread(f))
        except RuntimeError:  # the peer went away: pynetdicom refuses to send without an association
            status = None
        statuses.append(int(status.Status) if status and "Status" in status else None)
    return statuses


def pynetdicom_send(port: int, files: list[Path]) -> list[int | None]:
    """C-STORE ``files`` over one association of their own."""
    assoc = associate(port)
    statuses = send(assoc, files)
    assoc.release()
    return statuses


# ---- Orthanc ------------------------------------------------------------------------------


def point_orthanc_at(orthanc: Orthanc, port: int) -> None:
    orthanc.request("PUT", "/modalities/cmrsdk", {"AET": "CMRSDK", "Host": "127.0.0.1", "Port": port})


def seg_references(orthanc: Orthanc) -> Counter:
    """How many SEG instances in Orthanc reference each source series (by SeriesInstanceUID)."""
    import pydicom

    counts: Counter = Counter()
    for iid in orthanc.instances_of_modality(("SEG",)):
        ds = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{iid}/file")), stop_before_pixels=True)
        for ref in ds.ReferencedSeriesSequence:
            counts[str(ref.SeriesInstanceUID)] += 1
    return counts


def spool_rows(node: NodeProcess) -> dict:
    from cmrsdk.serve import read_status

    try:
        rows, _ = read_status(node.spool)
    except Exception:  # the node has not created the database yet
        return {}
    return {r.series_uid: r for r in rows}


def wait_states(
    node: NodeProcess, uids: list[str], states: tuple[str, ...], timeout_s: float, interval_s: float = 0.2
) -> dict:
    return wait_for(
        lambda: (rows := spool_rows(node)) and all(u in rows and rows[u].state in states for u in uids) and rows,
        timeout_s,
        f"series {uids} to reach {states}; node log:\n{node.text()[-3000:]}",
        interval_s=interval_s,
    )


def rejected_in_pacs(orthanc: Orthanc, files: list[Path]) -> list[set[str]]:
    """The SOP Instance UIDs each rejection note in the PACS withdraws (IOCM KOS, 'Rejected for
    Quality Reasons'), for the study of ``files``."""
    import pydicom

    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    notes = [
        pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{i}/file")))
        for i in orthanc.instances_of_modality(("KO",))
    ]
    return [
        {
            item.ReferencedSOPInstanceUID
            for evidence in note.CurrentRequestedProcedureEvidenceSequence
            for referenced in evidence.ReferencedSeriesSequence
            for item in referenced.ReferencedSOPSequence
        }
        for note in notes
        if note.StudyInstanceUID == study and note.ConceptNameCodeSequence[0].CodeValue == "113001"
    ]


def forward_args(orthanc: Orthanc) -> list[str]:
    return ["--forward", f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"]


# ---- the tests ----------------------------------------------------------------------------
def test_serve_needs_its_options(capsys):
    from cmrsdk.cli import main

    assert main(["serve", "--port", "104"]) == 2
    assert "serve needs --spool, --output" in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--spool", "s", "--output", "o", "--tls-cert", "c"]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--spool", "s", "--output", "o", "--forward-tls-ca", "ca.pem"]) == 2
    assert "--forward-tls-ca, --forward-tls-cert and --forward-tls-key need --forward" in capsys.readouterr().err
    assert (
        main(
            [
                "serve",
                "--port",
                "1",
                "--spool",
                "s",
                "--output",
                "o",
                "--forward",
                "A@h:1",
                "--forward-tls-ca",
                "missing.pem",
            ]
        )
        == 2
    )
    assert "--forward-tls-ca file 'missing.pem' not found" in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--spool", "s", "--output", "o", "--reopen-window", "-1"]) == 2
    assert "--reopen-window value -1.0 is invalid" in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--spool", "s", "--output", "o", "--forward", "nowhere"]) == 2
    assert "--forward value 'nowhere' is invalid" in capsys.readouterr().err
    assert main(["serve", "--port", "1", "--spool", "s", "--output", "o", "--allow", "A" * 17]) == 2
    assert "AE title 'AAAAAAAAAAAAAAAAA' is invalid" in capsys.readouterr().err


@needs_orthanc
def test_orthanc_sends_a_real_cine_and_gets_seg_back_once(orthanc, sunnybrook, tmp_path):
    """The PACS pushes a whole real series; SEGs (and the SR, when written) land back in it, once."""
    import highdicom as hd
    import pydicom

    port = free_port()
    point_orthanc_at(orthanc, port)
    node = NodeProcess(
        tmp_path / "spool",
        tmp_path / "out",
        port,
        *forward_args(orthanc),
        log_path=tmp_path / "node.log",
        series_timeout=2,
    )
    try:
        r = storescu(orthanc.dicom_port, sunnybrook, called=orthanc.aet)  # the scanner fills the PACS
        assert r.returncode == 0, r.stderr[-2000:]
        uid = series_uid(sunnybrook)
        orthanc_id = next(x["ID"] for x in orthanc.request("POST", "/tools/lookup", uid) if x["Type"] == "Series")
        t0 = time.monotonic()
        orthanc.request("POST", "/modalities/cmrsdk/store", {"Resources": [orthanc_id], "Synchronous": True})
        sent_s = time.monotonic() - t0
        wait_for(
            lambda: seg_references(orthanc)[uid] >= 2,
            240,
            f"2 SEGs referencing {uid} in Orthanc; node log:\n{node.text()[-3000:]}",
            interval_s=0.5,
        )
        latency_s = time.monotonic() - t0 - sent_s
        print(
            f"\n{len(sunnybrook)} instances sent by Orthanc in {sent_s:.1f} s ({len(sunnybrook) / sent_s:.0f}/s); "
            f"SEGs in Orthanc {latency_s:.1f} s after the last instance (series timeout 2 s)"
        )
        rows = wait_states(node, [uid], ("done",), 60)
        assert rows[uid].n_instances == 240 and (rows[uid].phases, rows[uid].slices) == (20, 12)

        results = sorted((tmp_path / "out" / uid).glob("*.dcm"))
        assert {p.name for p in results} >= {"seg_ED.dcm", "seg_ES.dcm"}
        study = orthanc.get(f"/series/{orthanc_id}")["ParentStudy"]
        by_modality: dict[str, list[str]] = {}
        for s in orthanc.get(f"/studies/{study}")["Series"]:
            info = orthanc.get(f"/series/{s}")
            by_modality.setdefault(info["MainDicomTags"]["Modality"], []).extend(info["Instances"])
        # every DICOM file written (SEG per phase, SR where written) is in the PACS, once
        assert len(by_modality["SEG"]) + len(by_modality.get("SR", [])) == len(results)
        for iid in by_modality["SEG"]:
            seg = hd.seg.segread(io.BytesIO(orthanc.get(f"/instances/{iid}/file")))
            assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
            assert len(seg.SegmentSequence) == 3
            assert seg.number_of_frames > 0
        for iid in by_modality.get("SR", []):  # the measurement report, where the study writer writes one
            sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{iid}/file")))
            assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
            evidence = {
                str(se.SeriesInstanceUID)
                for st in sr.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence
            }
            assert uid in evidence

        # the PACS sends the same series again: acknowledged, not processed again
        orthanc.request("POST", "/modalities/cmrsdk/store", {"Resources": [orthanc_id], "Synchronous": True})
        time.sleep(2 + 2.5)
        rows = spool_rows(node)
        assert len(rows) == 1 and rows[uid].state == "done" and rows[uid].n_instances == 240
        assert seg_references(orthanc)[uid] == 2
        assert node.text().count(f"series {uid}:") == 1  # one log line per series, patient-free
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patient = str(pydicom.dcmread(sunnybrook[0], stop_before_pixels=True).PatientID)
        assert patient not in node.text()
        assert f"done, {len(results)}/{len(results)} result files forwarded" in node.text()
    finally:
        assert node.terminate() == 0


@needs_dcmtk
def test_dcmtk_echo_allow_list_set_aside_and_full_spool(tmp_path):
    """echoscu/storescu as a second real client: allowed AEs only, a full spool answers 0xA700."""
    one = synthetic_series(tmp_path / "in", seed=11, n_phases=2, n_slices=4, size=64)
    port = free_port()
    # a limit that takes two 64 x 64 images (about 9 kB each) and refuses the third
    node = NodeProcess(
        tmp_path / "spool",
        tmp_path / "out",
        port,
        "--allow",
        "SCANNER",
        "--max-spool-mb",
        "0.02",
        "--max-associations",
        "1",
        # judged on what arrived: a series with an instance refused is otherwise held (test_serve_sweep18.py)
        "--abort-hold",
        "0",
        log_path=tmp_path / "node.log",
    )
    try:
        echo = subprocess.run(
            [ECHOSCU, "-aet", "SCANNER", "-aec", "CMRSDK", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert echo.returncode == 0, echo.stderr
        refused = subprocess.run(
            [ECHOSCU, "-aet", "INTRUDER", "-aec", "CMRSDK", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode != 0 and "Association Rejected" in refused.stderr + refused.stdout
        assert "association rejected from AE 'INTRUDER'" in node.text()

        # files are phase-major: one slice position in two phases, then a third image, refused
        r = storescu(port, one[:1] + one[4:5] + one[1:2], calling="SCANNER")
        out = r.stdout + r.stderr
        assert out.count("Received Store Response (Success)") == 2, out[-2000:]
        assert "Received Store Response (Refused: OutOfResources)" in out, out[-2000:]
        assert node.process.poll() is None  # refused cleanly, still serving
        held = associate(port)  # --max-associations 1: a second caller waits its turn
        busy = subprocess.run(
            [ECHOSCU, "-aet", "SCANNER", "-aec", "CMRSDK", "127.0.0.1", str(port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert busy.returncode != 0 and "Association Rejected" in busy.stderr + busy.stdout
        held.release()
        assert (
            subprocess.run(
                [ECHOSCU, "-aet", "SCANNER", "-aec", "CMRSDK", "127.0.0.1", str(port)], capture_output=True, timeout=30
            ).returncode
            == 0
        )
        uid = series_uid(one)
        rows = wait_states(node, [uid], ("set_aside",), 30)
        assert rows[uid].n_instances == 2 and rows[uid].reason == "not a short-axis stack: 1 slice position(s)"
        status = node.status()
        assert "set_aside" in status and "not a short-axis stack" in status and "total: 1 set_aside" in status
        # a part set aside keeps its files for the reopen window, as any series: the rest of its
        # cine may come (0.14.10); a full spool releases them first (test_serve_spool.py)
        assert len(list((tmp_path / "spool" / "instances").rglob("*.dcm"))) == 2
    finally:
        assert node.terminate() == 0


@needs_orthanc
@needs_dcmtk
def test_five_series_over_three_associations_each_delivered_once(orthanc, tmp_path):
    series = [synthetic_series(tmp_path / f"s{i}", seed=20 + i) for i in range(5)]
    uids = [series_uid(s) for s in series]
    port = free_port()
    node = NodeProcess(
        tmp_path / "spool",
        tmp_path / "out",
        port,
        *forward_args(orthanc),
        log_path=tmp_path / "node.log",
        series_timeout=1.5,
    )
    try:
        batches = [series[0] + series[1], series[2] + series[3], series[4]]
        clients = [
            subprocess.Popen(
                [STORESCU, "-aet", "SCANNER", "-aec", "CMRSDK", "127.0.0.1", str(port), *map(str, files)],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for files in batches
        ]
        for c in clients:
            out, _ = c.communicate(timeout=120)
            assert c.returncode == 0, out[-2000:]
        rows = wait_states(node, uids, ("done",), 150)
        assert [rows[u].n_instances for u in uids] == [len(s) for s in series]
        refs = seg_references(orthanc)
        assert [refs[u] for u in uids] == [2] * 5  # ED and ES SEG per series, none twice
    finally:
        assert node.terminate() == 0


@needs_orthanc
@needs_dcmtk
def test_a_cine_sent_a_series_per_slice_comes_back_as_one_stack(orthanc, tmp_path):
    """A scanner that stores each breath-hold's slice as its own series: six one-slice cine
    series over one association, one stack segmented, its ED and ES SEG referencing all six.
    The node runs the default pipeline here (routed, mirrored): the other node tests' is FAST_NODE."""
    groups, uids = series_per_slice(tmp_path / "cine", seed=31)
    files = [f for g in groups for f in g]
    port = free_port()
    node = NodeProcess(
        tmp_path / "spool",
        tmp_path / "out",
        port,
        *forward_args(orthanc),
        log_path=tmp_path / "node.log",
        series_timeout=1.0,
        pipeline=(),
    )
    try:
        r = storescu(port, files, calling="SCANNER")
        assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
        rows = wait_states(node, uids, ("set_aside",), 60)
        (stack,) = {rows[u].reason.removeprefix("stacked into ") for u in uids}
        rows = wait_states(node, [stack], ("done",), 120)
        assert (rows[stack].slices, rows[stack].phases, rows[stack].n_instances) == (6, 2, 12)
        refs = seg_references(orthanc)
        assert [refs[u] for u in uids] == [2] * 6  # the ED and the ES SEG each reference every slice's series
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [stack]
        provenance = json.loads((tmp_path / "out" / stack / "report.json").read_text())["provenance"]
        assert (provenance["mode"], provenance["mirroring"]) == ("routed", "half_turn")
    finally:
        assert node.terminate() == 0


@needs_orthanc
@needs_dcmtk
def test_a_series_cut_off_and_resent_after_the_timeout_is_segmented_again_whole(orthanc, tmp_path):
    """storescu's transfer stops after 5 of 8 slice positions; the node segments those (it cannot
    know more are coming); the sender resends the whole series after the timeout: the node judges it
    again with every instance, writes the result beside the first and forwards it."""
    import pydicom

    files = synthetic_series(tmp_path / "in", seed=61)
    uid = series_uid(files)
    position = {f: round(float(pydicom.dcmread(f, stop_before_pixels=True).SliceLocation), 3) for f in files}
    first_five = sorted(set(position.values()))[:5]
    cut_off = [f for f in files if position[f] in first_five]
    port = free_port()
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "out", port, *forward_args(orthanc), log_path=tmp_path / "node.log"
    )
    try:
        assert storescu(port, cut_off).returncode == 0
        rows = wait_states(node, [uid], ("done",), 120)
        assert (rows[uid].slices, rows[uid].reopened) == (5, 0)
        r = storescu(port, files)  # the sender's retry: every file again
        assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
        rows = wait_for(
            lambda: (rows := spool_rows(node)) and rows[uid].reopened == 1 and rows[uid].state == "done" and rows,
            120,
            f"series {uid} judged again; node log:\n{node.text()[-3000:]}",
        )
        assert (rows[uid].slices, rows[uid].n_instances, rows[uid].n_late) == (8, len(files), 0)
        out = tmp_path / "out"
        assert sorted(p.name for p in out.iterdir()) == [uid, f"{uid}_2"]
        referenced = [
            len(pydicom.dcmread(out / name / "seg_ED.dcm").ReferencedSeriesSequence[0].ReferencedInstanceSequence)
            for name in (uid, f"{uid}_2")
        ]
        assert referenced == [5, 8]  # the first result on what came, the second on the whole series
        assert seg_references(orthanc)[uid] == 4  # both results forwarded (ED and ES each), neither twice
        first = {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in (out / uid).glob("*.dcm")}
        assert rejected_in_pacs(orthanc, files) == [first] and len(first) == 3  # SEG ED, SEG ES, SR of 5 slices
        assert "reopened, to be judged again when quiet" in node.text()
        assert f"judged 2 times (instances came after a verdict), results in {out / (uid + '_2')}" in node.text()
    finally:
        assert node.terminate() == 0


@needs_orthanc
@needs_dcmtk
def test_slices_of_a_stacked_study_sent_after_a_pause_are_stacked_again_with_it(orthanc, tmp_path):
    """A scanner sending each breath-hold as it is reconstructed, pausing longer than the series
    timeout after the third: the node stacks three slices, then all six once the rest come; a
    rejection note withdraws the three-slice result from the PACS."""
    import pydicom

    groups, uids = series_per_slice(tmp_path / "cine", seed=33)
    port = free_port()
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "out", port, *forward_args(orthanc), log_path=tmp_path / "node.log"
    )
    try:
        assert storescu(port, [f for g in groups[:3] for f in g]).returncode == 0
        rows = wait_states(node, uids[:3], ("set_aside",), 60)
        (first,) = {rows[u].reason.removeprefix("stacked into ") for u in uids[:3]}
        wait_states(node, [first], ("done",), 120)
        assert storescu(port, [f for g in groups[3:] for f in g]).returncode == 0
        rows = wait_states(node, uids, ("set_aside",), 60)
        (second,) = {rows[u].reason.removeprefix("stacked into ") for u in uids}
        rows = wait_states(node, [second], ("done",), 120)
        assert (rows[second].slices, rows[second].n_instances) == (6, 12)
        assert rows[first].reason == f"stacked again into {second}"
        refs = seg_references(orthanc)
        assert [refs[u] for u in uids] == [4, 4, 4, 2, 2, 2]  # the 3-slice SEGs, then the 6-slice ones
        withdrawn = {
            pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in (tmp_path / "out" / first).glob("*.dcm")
        }
        assert rejected_in_pacs(orthanc, groups[0]) == [withdrawn] and len(withdrawn) == 3
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([first, second])
    finally:
        assert node.terminate() == 0


@needs_orthanc
def test_kill9_mid_receive_and_mid_segmentation_then_restart(orthanc, tmp_path):
    a = synthetic_series(tmp_path / "a", seed=31)
    b = synthetic_series(tmp_path / "b", seed=32, n_phases=3)
    ua, ub = series_uid(a), series_uid(b)
    port = free_port()
    args = (tmp_path / "spool", tmp_path / "out", port, *forward_args(orthanc))
    node = NodeProcess(*args, log_path=tmp_path / "node.log", series_timeout=3)
    assoc = associate(port)
    assert send(assoc, a[:7]) == [0] * 7
    node.kill9()  # mid-receive: the association is open, 7 of 16 instances stored
    assert send(assoc, a[7:8]) == [None]  # the sender sees the failure and will resend
    node = NodeProcess(*args, log_path=tmp_path / "node.log", series_timeout=3)
    try:
        assert pynetdicom_send(port, a) == [0] * len(a)  # the sender resends the whole series
        assert pynetdicom_send(port, b) == [0] * len(b)
        wait_states(node, [ub], ("processing",), 60, interval_s=0.05)
        node.kill9()  # mid-segmentation
        node = NodeProcess(*args, log_path=tmp_path / "node.log", series_timeout=3)
        assert "recovered after a crash: 1 series queued again" in node.text(since_start=True)
        rows = wait_states(node, [ua, ub], ("done",), 150)
        assert (rows[ua].n_instances, rows[ub].n_instances) == (len(a), len(b))
        refs = seg_references(orthanc)
        assert (refs[ua], refs[ub]) == (2, 2)  # delivered, and not twice
        assert not list((tmp_path / "out").glob(".*"))  # no half-written result left
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([ua, ub])
    finally:
        assert node.terminate() == 0


@needs_orthanc
def test_sigterm_finishes_the_current_series_and_stops_cleanly(orthanc, tmp_path):
    c = synthetic_series(tmp_path / "c", seed=41, n_phases=3)
    uc = series_uid(c)
    port = free_port()
    args = (tmp_path / "spool", tmp_path / "out", port, *forward_args(orthanc))
    node = NodeProcess(*args, log_path=tmp_path / "node.log", series_timeout=1)
    assert pynetdicom_send(port, c) == [0] * len(c)
    wait_states(node, [uc], ("processing",), 60, interval_s=0.05)
    assert node.terminate(timeout=120) == 0
    assert "SIGTERM received" in node.text() and "stopped cleanly" in node.text()
    assert spool_rows(node)[uc].state in ("forwarding", "done")  # segmented, not abandoned
    assert (tmp_path / "out" / uc / "seg_ED.dcm").is_file()
    node = NodeProcess(*args, log_path=tmp_path / "node.log", series_timeout=1)
    try:
        wait_states(node, [uc], ("done",), 60)
        assert seg_references(orthanc)[uc] == 2
    finally:
        assert node.terminate() == 0


def test_forward_retries_with_backoff_until_acknowledged(tmp_path):
    """The PACS is down, then refuses (0xA700), then accepts: each result arrives, none twice."""
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    files = synthetic_series(tmp_path / "in", seed=51)
    uid = series_uid(files)
    pacs_port, port = free_port(), free_port()
    node = NodeProcess(
        tmp_path / "spool",
        tmp_path / "out",
        port,
        "--forward",
        f"PACS@127.0.0.1:{pacs_port}",
        log_path=tmp_path / "node.log",
    )
    received: list[str] = []
    refused: set[str] = set()
    lock = threading.Lock()

    def on_store(event):
        sop = str(event.request.AffectedSOPInstanceUID)
        with lock:
            if sop not in refused:  # the first offer of each result is refused: out of resources
                refused.add(sop)
                return 0xA700
            received.append(sop)
        return 0x0000

    server = None
    try:
        assert pynetdicom_send(port, files) == [0] * len(files)
        rows = wait_states(node, [uid], ("forwarding",), 120)
        time.sleep(1.5)  # at least one association attempt has failed: nobody listens yet
        assert spool_rows(node)[uid].state == "forwarding" and "association not established" in node.text()
        pacs = AE(ae_title="PACS")
        pacs.add_supported_context(SegmentationStorage)
        pacs.add_supported_context(Comprehensive3DSRStorage)
        server = pacs.start_server(("127.0.0.1", pacs_port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        rows = wait_states(node, [uid], ("done",), 90)
        # SEG ED, SEG ES and the SR: each once, after its refusal
        assert len(refused) == 3 and sorted(received) == sorted(refused)
        assert "status 0xA700" in node.text() and rows[uid].state == "done"
    finally:
        if server is not None:
            server.shutdown()
        assert node.terminate() == 0


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _signed_certificate(
    folder: Path, name: str, ca: tuple[Path, Path], subject_alt_name: str | None
) -> tuple[Path, Path]:
    """A certificate and key for ``name``, signed by ``ca`` (certificate, key), valid one day."""
    cert, key, request = folder / f"{name}.pem", folder / f"{name}.key", folder / f"{name}.csr"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}")
    extensions = folder / f"{name}.ext"
    extensions.write_text(f"subjectAltName={subject_alt_name}\n" if subject_alt_name else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(extensions),
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed: no certificates to test TLS with"
)
def test_results_are_forwarded_over_mutual_tls_and_not_to_an_untrusted_peer(tmp_path):
    """The PACS speaks TLS only and wants a client certificate from the hospital's CA: the node
    forwards with --forward-tls-ca/-cert/-key; a PACS whose certificate another CA signed gets nothing."""
    import ssl
    import threading

    from pynetdicom import AE, evt
    from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

    ca = (tmp_path / "ca.pem", tmp_path / "ca.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca[1]), "-out", str(ca[0]),
             "-days", "1", "-subj", "/CN=hospital CA")  # fmt: skip
    pacs_cert = _signed_certificate(tmp_path, "pacs", ca, "IP:127.0.0.1")
    node_cert = _signed_certificate(tmp_path, "node", ca, None)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca[0]))
    server_side.load_cert_chain(*map(str, pacs_cert))
    server_side.verify_mode = ssl.CERT_REQUIRED  # mutual TLS
    received: list[str] = []
    lock = threading.Lock()

    def on_store(event):
        with lock:
            received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(SegmentationStorage)
    pacs.add_supported_context(Comprehensive3DSRStorage)
    pacs_port, port = free_port(), free_port()
    server = pacs.start_server(
        ("127.0.0.1", pacs_port), block=False, ssl_context=server_side, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    files = synthetic_series(tmp_path / "in", seed=71)
    uid = series_uid(files)
    tls = [
        "--forward-tls-ca",
        str(ca[0]),
        "--forward-tls-cert",
        str(node_cert[0]),
        "--forward-tls-key",
        str(node_cert[1]),
    ]
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "out", port, "--forward", f"PACS@127.0.0.1:{pacs_port}", *tls,
        log_path=tmp_path / "node.log",
    )  # fmt: skip
    try:
        assert pynetdicom_send(port, files) == [0] * len(files)
        rows = wait_states(node, [uid], ("done",), 120)
        assert rows[uid].state == "done" and len(received) == 3  # SEG ED, SEG ES, SR over TLS
        assert "(TLS)" in node.text()
    finally:
        assert node.terminate() == 0
    # the same PACS address, but this node trusts only another CA: the association is refused, results wait
    other = (tmp_path / "other.pem", tmp_path / "other.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(other[1]), "-out", str(other[0]),
             "-days", "1", "-subj", "/CN=another CA")  # fmt: skip
    files = synthetic_series(tmp_path / "in2", seed=72)
    uid = series_uid(files)
    node = NodeProcess(
        tmp_path / "spool2", tmp_path / "out2", port, "--forward", f"PACS@127.0.0.1:{pacs_port}",
        "--forward-tls-ca", str(other[0]), log_path=tmp_path / "node2.log",
    )  # fmt: skip
    try:
        assert pynetdicom_send(port, files) == [0] * len(files)
        wait_states(node, [uid], ("forwarding",), 120)
        wait_for(lambda: "association not established (TLS" in node.text(), 30, "the refused TLS association")
        assert spool_rows(node)[uid].state == "forwarding" and len(received) == 3
    finally:
        server.shutdown()
        assert node.terminate() == 0


@needs_orthanc
@pytest.mark.skipif(
    shutil.which("openssl") is None, reason="openssl is not installed: no certificates to test TLS with"
)
def test_retrieve_over_tls_from_a_pacs_that_speaks_only_tls(tmp_path, capsys):
    """Orthanc with DICOM TLS, client certificates required: retrieve with --tls-ca/-cert/-key
    fetches the series; without TLS, or trusting another CA, one error line and nothing written."""
    from cmrsdk.cli import main
    from cmrsdk.io import read_dicom_study

    ca = (tmp_path / "ca.pem", tmp_path / "ca.key")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca[1]), "-out", str(ca[0]),
             "-days", "1", "-subj", "/CN=hospital CA")  # fmt: skip
    pacs_cert = _signed_certificate(tmp_path, "pacs", ca, "IP:127.0.0.1")
    reader_cert = _signed_certificate(tmp_path, "reader", ca, None)
    tls_config = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pacs_cert[0]),
        "DicomTlsPrivateKey": str(pacs_cert[1]),
        "DicomTlsTrustedCertificates": str(ca[0]),
        "DicomTlsRemoteCertificateRequired": True,
    }
    orthanc = Orthanc(tmp_path / "orthanc", {"reader": ("READER", free_port())}, extra=tls_config)
    try:
        files = synthetic_series(tmp_path / "in", seed=81, n_phases=2, n_slices=4, size=48)
        for f in files:
            orthanc.request("POST", "/instances", f.read_bytes())
        import pydicom

        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        peer = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
        tls = ["--tls-ca", str(ca[0]), "--tls-cert", str(reader_cert[0]), "--tls-key", str(reader_cert[1])]
        out = tmp_path / "out"
        assert main(["retrieve", peer, "--study", study, "--aet", "READER", "-o", str(out), *tls]) == 0
        got, want = read_dicom_study(out / study), read_dicom_study(tmp_path / "in")
        for a, b in zip(got.phases, want.phases, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
        capsys.readouterr()
        plain = ["retrieve", peer, "--study", study, "--aet", "READER", "--list", "--timeout", "5"]
        assert main(plain) == 2  # no TLS: the PACS drops the association
        assert f"PACS {peer}: " in capsys.readouterr().err
        other = (tmp_path / "other.pem", tmp_path / "other.key")
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(other[1]), "-out", str(other[0]),
                 "-days", "1", "-subj", "/CN=another CA")  # fmt: skip
        untrusting = ["--tls-ca", str(other[0]), "--tls-cert", str(reader_cert[0]), "--tls-key", str(reader_cert[1])]
        assert main([*plain, *untrusting]) == 2
        assert "its certificate must be signed by --tls-ca" in capsys.readouterr().err
        assert main(["retrieve", peer, "--study", study, "--list", "--tls-cert", str(reader_cert[0])]) == 2
        assert "--tls-cert and --tls-key need --tls-ca" in capsys.readouterr().err
        # C-MOVE over TLS both ways: Orthanc delivers over TLS to where it knows MOVER to be
        mover_port = free_port()
        orthanc.request(
            "PUT", "/modalities/mover", {"AET": "MOVER", "Host": "127.0.0.1", "Port": mover_port, "UseDicomTls": True}
        )
        move = ["--aet", "MOVER", "--move-port", str(mover_port), "--move-host", "127.0.0.1"]
        assert main(["retrieve", peer, "--study", study, "-o", str(tmp_path / "moved"), *move, *tls]) == 0
        moved = read_dicom_study(tmp_path / "moved" / study)
        for a, b in zip(moved.phases, want.phases, strict=True):
            np.testing.assert_array_equal(a.pixels, b.pixels)
        # the listener speaks only TLS: a PACS delivering in the clear is refused, nothing is left
        orthanc.request("PUT", "/modalities/mover", {"AET": "MOVER", "Host": "127.0.0.1", "Port": mover_port})
        capsys.readouterr()
        moved_plain = ["retrieve", peer, "--study", study, "-o", str(tmp_path / "m1"), *move, *tls, "--timeout", "10"]
        assert main(moved_plain) == 1
        assert "C-MOVE to MOVER of series" in capsys.readouterr().err
        assert not any((tmp_path / "m1").iterdir())
        only_ca = ["--tls-ca", str(ca[0])]
        assert main(["retrieve", peer, "--study", study, "-o", str(tmp_path / "m2"), *move, *only_ca]) == 2
        assert "--move-port over TLS needs --tls-cert and --tls-key" in capsys.readouterr().err
        assert not (tmp_path / "m2").exists()
    finally:
        orthanc.close()


def test_lossless_syntaxes_accepted_where_decodable_lossy_not():
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    from cmrsdk.serve.scp import LOSSLESS_SYNTAXES, accepted_transfer_syntaxes

    syntaxes = accepted_transfer_syntaxes()
    assert syntaxes[:2] == ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]  # uncompressed first
    assert [s for s in syntaxes if s in LOSSLESS_SYNTAXES] == [
        u for u in LOSSLESS_SYNTAXES if get_decoder(UID(u)).is_available
    ]
    assert "1.2.840.10008.1.2.4.70" in syntaxes  # JPEG Lossless SV1: pylibjpeg is in the environment
    assert not {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.81"} & set(syntaxes)


DCMCJPEG, DCMCRLE, DCMCJPLS = (shutil.which(n) for n in ("dcmcjpeg", "dcmcrle", "dcmcjpls"))


@needs_dcmtk
@pytest.mark.skipif(None in (DCMCJPEG, DCMCRLE, DCMCJPLS), reason="dcmtk's dcmcjpeg, dcmcrle, dcmcjpls not installed")
def test_a_series_sent_compressed_segments_as_the_uncompressed_one(tmp_path):
    """One cine sent twice by storescu: as stored, and compressed by dcmtk image by image (JPEG
    Lossless, RLE, JPEG-LS: a transfer syntax per association, as storescu proposes one); the
    node decodes all three and its masks equal the uncompressed series' voxel for voxel."""
    import nibabel as nib
    import pydicom

    plain = synthetic_series(tmp_path / "plain", seed=51, n_phases=2, n_slices=6, size=64)
    uid = pydicom.uid.generate_uid()
    packed: dict[str, list[Path]] = {"-xs": [], "-xr": [], "-xt": []}
    for i, file in enumerate(plain):
        ds = pydicom.dcmread(file)
        ds.SeriesInstanceUID, ds.SOPInstanceUID = uid, pydicom.uid.generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        copy = tmp_path / "copy" / file.name
        copy.parent.mkdir(exist_ok=True)
        ds.save_as(copy)
        flag, tool = [("-xs", DCMCJPEG), ("-xr", DCMCRLE), ("-xt", DCMCJPLS)][i % 3]
        target = tmp_path / "packed" / file.name
        target.parent.mkdir(exist_ok=True)
        subprocess.run([tool, str(copy), str(target)], check=True, capture_output=True, timeout=60)
        packed[flag].append(target)
    assert pydicom.dcmread(packed["-xr"][0]).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    port = free_port()
    node = NodeProcess(tmp_path / "spool", tmp_path / "out", port, log_path=tmp_path / "node.log", series_timeout=1.0)
    try:
        assert storescu(port, plain).returncode == 0
        for flag, files in packed.items():
            r = subprocess.run(
                [STORESCU, "-v", flag, "-aet", "SCANNER", "-aec", "CMRSDK", "127.0.0.1", str(port), *map(str, files)],
                capture_output=True,
                text=True,
                timeout=120,
            )
            out = r.stdout + r.stderr
            assert r.returncode == 0 and out.count("(Success)") == len(files), out[-2000:]
            assert "-> Little Endian" not in out  # sent compressed, not decompressed by storescu
        rows = wait_states(node, [series_uid(plain), uid], ("done",), 120)
        assert rows[uid].n_instances == len(plain) and (rows[uid].phases, rows[uid].slices) == (2, 6)
        for phase in ("ED", "ES"):
            got, want = (
                np.asarray(nib.load(tmp_path / "out" / u / f"labels_{phase}.nii.gz").dataobj)
                for u in (uid, series_uid(plain))
            )
            assert np.count_nonzero(want) > 0 and np.array_equal(got, want)
    finally:
        assert node.terminate() == 0


def test_tls_only_answers_tls(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate to test TLS with")
    import ssl

    cert, key = tmp_path / "node.pem", tmp_path / "node.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    node = NodeProcess(
        tmp_path / "spool",
        tmp_path / "out",
        port,
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        log_path=tmp_path / "node.log",
    )
    try:
        from pynetdicom import AE
        from pynetdicom.sop_class import Verification

        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        client.check_hostname = False
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        assoc = ae.associate("127.0.0.1", port, ae_title="CMRSDK", tls_args=(client, None))
        assert assoc.is_established
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        plain = ae.associate("127.0.0.1", port, ae_title="CMRSDK")
        assert not plain.is_established
    finally:
        assert node.terminate() == 0


@needs_orthanc
def test_retrieve_fetches_a_patients_mr_series_from_the_pacs(orthanc, tmp_path, capsys):
    """C-FIND then C-GET from Orthanc: the MR series of the patient land whole, read as what was
    stored; a second fetch, a bad --pacs value and an AE title the PACS does not know each give
    one error line."""
    from cmrsdk.cli import main
    from cmrsdk.io import read_dicom_study
    from cmrsdk.serve.forward import Destination
    from cmrsdk.serve.retrieve import find_series

    files = synthetic_series(tmp_path / "in", seed=61, n_phases=2, n_slices=6, size=64)
    for f in files:
        orthanc.request("POST", "/instances", f.read_bytes())
    import pydicom

    first = pydicom.dcmread(files[0])
    patient, study = str(first.PatientID), str(first.StudyInstanceUID)
    other = first.copy()  # a series of the study that is not MR: not fetched
    other.Modality, other.SeriesInstanceUID = "OT", pydicom.uid.generate_uid()
    other.SOPInstanceUID = other.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    buffer = io.BytesIO()
    other.save_as(buffer)
    orthanc.request("POST", "/instances", buffer.getvalue())
    peer = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port)
    (match,) = find_series(peer, patient_id=patient)  # CMRSDK is a modality Orthanc knows
    assert (match.study_uid, match.series_uid, match.n_instances) == (study, series_uid(files), len(files))

    assert main(["retrieve", str(peer), "--patient", patient, "--list"]) == 0
    listed = capsys.readouterr().out
    assert f"study {study} (patient {patient}" in listed and f"{len(files)} images" in listed
    assert main(["retrieve", str(peer), "--patient", patient, "-o", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / study
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [study]  # no staging folder left
    assert len(list(folder.rglob("*.dcm"))) == len(files)
    got, want = read_dicom_study(folder), read_dicom_study(tmp_path / "in")
    assert len(got.phases) == len(want.phases) == 2
    for a, b in zip(got.phases, want.phases, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)

    capsys.readouterr()
    assert main(["retrieve", str(peer), "--study", study, "-o", str(tmp_path / "out")]) == 1
    assert "exists: the study was retrieved before" in capsys.readouterr().err
    assert main(["retrieve", "ORTHANC@host", "--study", study, "-o", str(tmp_path / "x")]) == 2
    assert "PACS value 'ORTHANC@host' is invalid; expected AET@HOST:PORT" in capsys.readouterr().err
    assert main(["retrieve", str(peer), "--study", study, "--aet", "STRANGER", "--list", "--timeout", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"cmrsdk: error: PACS {peer}: C-FIND at STUDY level failed") and "'STRANGER'" in err
    assert main(["retrieve", str(peer), "-o", str(tmp_path / "y")]) == 2
    assert "needs --study, --patient or --accession" in capsys.readouterr().err
    assert main(["retrieve", str(peer), "--study", study, "--aet", "A" * 17, "--list"]) == 2
    assert f"AE title '{'A' * 17}' is invalid" in capsys.readouterr().err
    # a PACS that sends by C-MOVE: this side listens where the PACS knows MOVER to be
    mover_port = free_port()
    orthanc.request("PUT", "/modalities/mover", {"AET": "MOVER", "Host": "127.0.0.1", "Port": mover_port})
    move = ["--aet", "MOVER", "--move-port", str(mover_port), "--move-host", "127.0.0.1"]
    assert main(["retrieve", str(peer), "--study", study, "-o", str(tmp_path / "moved"), *move]) == 0
    moved = read_dicom_study(tmp_path / "moved" / study)
    for a, b in zip(moved.phases, want.phases, strict=True):
        np.testing.assert_array_equal(a.pixels, b.pixels)
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == [study]
    orthanc.request("PUT", "/modalities/mover", {"AET": "MOVER", "Host": "127.0.0.1", "Port": free_port()})
    capsys.readouterr()  # MOVER now registered at a port where nobody listens: the sub-operations fail
    assert (
        main(["retrieve", str(peer), "--study", study, "-o", str(tmp_path / "moved2"), *move, "--timeout", "10"]) == 1
    )
    err = capsys.readouterr().err
    assert f"PACS {peer}: C-MOVE to MOVER of series {series_uid(files)} failed: status 0xC000" in err
    assert not any((tmp_path / "moved2").iterdir())  # nothing half-fetched, no staging folder left
    assert main(["retrieve", str(peer), "--study", study, "-o", str(tmp_path / "z"), "--move-port", "70000"]) == 2
    assert "--move-port value 70000 is invalid" in capsys.readouterr().err
    nobody = f"PACS@127.0.0.1:{free_port()}"  # nothing listens there
    assert main(["retrieve", nobody, "--patient", patient, "--list", "--timeout", "5"]) == 2
    assert f"PACS {nobody}: association refused or not answered" in capsys.readouterr().err
