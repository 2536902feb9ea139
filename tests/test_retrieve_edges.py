"""``cmrsdk retrieve`` at its edges: what a real study holds besides MR images, what a PACS stores
compressed, a PACS without C-GET, interrupts, two retrievals of one study, bad options; and the
node's log when a frame cannot be decoded.

Orthanc (a private one on free loopback ports) is the PACS; a PACS that lacks a service is a
pynetdicom SCP in this process. Tests skip, saying so, where Orthanc is absent.
"""

from __future__ import annotations

import io
import re
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _dicom_node import ORTHANC, REPO, NodeProcess, Orthanc, free_port, sunnybrook_files, wait_for

pytest.importorskip("pynetdicom")

needs_orthanc = pytest.mark.skipif(ORTHANC is None, reason="Orthanc (Debian package 'orthanc') is not installed")
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


# ---- helpers ------------------------------------------------------------------------------
def cli(capsys, *args: object) -> tuple[int, str, str]:
    """``cmrsdk ARGS`` in this process: exit status, stdout, stderr. An exception ``main`` lets
    through (a traceback where one line is due) comes back as status 1 with the traceback, so
    that the assertion shows it."""
    from cmrsdk.cli import main

    capsys.readouterr()
    try:
        rc, tb = main([str(a) for a in args]), ""
    except Exception:
        rc, tb = 1, traceback.format_exc()
    captured = capsys.readouterr()
    return rc, captured.out, captured.err + tb


def synthetic_series(folder: Path, seed: int) -> list[Path]:
    """A small short-axis cine (2 phases x 4 slices, 64 x 64) as classic MR images."""
    from cmrsdk.io import write_dicom_series
    from cmrsdk.synth import synthetic_study

    return write_dicom_series(folder, synthetic_study(seed=seed, n_phases=2, n_slices=4, shape=(64, 64)))


def post(orthanc: Orthanc, ds) -> None:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    orthanc.request("POST", "/instances", buffer.getvalue())


def screen_capture(ds, series_uid: str):
    """A copy of ``ds`` stored as a Secondary Capture image, Modality still MR: a scanner's screen save."""
    from pydicom.uid import generate_uid

    sc = ds.copy()
    sc.SOPClassUID = sc.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    sc.SOPInstanceUID = sc.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    sc.SeriesInstanceUID = series_uid
    return sc


def uid_of(file: Path, keyword: str) -> str:
    import pydicom

    return str(pydicom.dcmread(file, stop_before_pixels=True)[keyword].value)


def peer_of(orthanc: Orthanc) -> str:
    return f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"


def mover(orthanc: Orthanc) -> list[str]:
    """C-MOVE options: this side listens as MOVER on a free port the PACS is told about."""
    port = free_port()
    orthanc.request("PUT", "/modalities/mover", {"AET": "MOVER", "Host": "127.0.0.1", "Port": port})
    return ["--aet", "MOVER", "--move-port", str(port), "--move-host", "127.0.0.1"]


@pytest.fixture(scope="module")
def small_study(orthanc, tmp_path_factory) -> tuple[str, list[Path]]:
    """(StudyInstanceUID, files) of a small cine in the PACS."""
    files = synthetic_series(tmp_path_factory.mktemp("small"), seed=81)
    orthanc.upload(files)
    return uid_of(files[0], "StudyInstanceUID"), files


class FakePacs:
    """A PACS (pynetdicom, in this process) that lacks Study Root C-FIND or C-GET, or whose C-GET
    ends with ``get_status``; it holds one study of one MR series."""

    STUDY, SERIES = "1.2.826.0.1.3680043.10.998.1", "1.2.826.0.1.3680043.10.998.2"

    def __init__(self, *, study_root_find: bool = True, get: bool = True, get_status: int = 0x0000) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import (
            PatientRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
            StudyRootQueryRetrieveInformationModelMove,
        )

        ae = AE(ae_title="FAKEPACS")
        ae.add_supported_context(
            StudyRootQueryRetrieveInformationModelFind
            if study_root_find
            else PatientRootQueryRetrieveInformationModelFind
        )
        if get:
            ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelMove)
        self.get_status, self.port = get_status, free_port()
        self.peer = f"FAKEPACS@127.0.0.1:{self.port}"
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_FIND, self._find), (evt.EVT_C_GET, self._get)],
        )

    def _find(self, event):
        from pydicom import Dataset

        answer = Dataset()
        answer.QueryRetrieveLevel = event.identifier.QueryRetrieveLevel
        answer.StudyInstanceUID, answer.PatientID, answer.StudyDate = self.STUDY, "P1", "20240101"
        if answer.QueryRetrieveLevel == "SERIES":
            answer.SeriesInstanceUID, answer.Modality, answer.NumberOfSeriesRelatedInstances = self.SERIES, "MR", "2"
        yield 0xFF00, answer

    def _get(self, event):
        yield 2  # sub-operations announced, none sent: the PACS gives up at once
        yield self.get_status, None

    def close(self) -> None:
        self.server.shutdown()


# ---- the tests ----------------------------------------------------------------------------
@needs_orthanc
def test_screen_saves_labelled_mr_are_skipped_and_the_study_fetched(orthanc, tmp_path, capsys):
    """A study with a "Screen Save" series (Secondary Capture, Modality MR) and a screen capture
    inside the cine's series: the MR images come, whole, by C-GET and by C-MOVE; the two screen
    captures are accepted, not kept, and one line says so."""
    import pydicom
    from pydicom.uid import generate_uid

    files = synthetic_series(tmp_path / "in", seed=82)
    orthanc.upload(files)
    first = pydicom.dcmread(files[0])
    study, cine = str(first.StudyInstanceUID), str(first.SeriesInstanceUID)
    screen = screen_capture(first, generate_uid())
    screen.SeriesNumber, screen.SeriesDescription = 999, "Screen Save"
    post(orthanc, screen)
    post(orthanc, screen_capture(first, cine))
    for mode, extra in (("get", []), ("move", mover(orthanc))):
        out = tmp_path / mode
        rc, stdout, err = cli(capsys, "retrieve", peer_of(orthanc), "--study", study, "-o", out, *extra)
        assert rc == 0, f"{mode}: {err}"
        folder = out / study
        assert sorted(p.name for p in out.iterdir()) == [study], mode  # no staging folder left
        assert [p.name for p in folder.iterdir()] == [cine], mode
        stored = sorted(p.stem for p in (folder / cine).iterdir())
        assert stored == sorted(uid_of(f, "SOPInstanceUID") for f in files), mode
        assert err == f"{folder}: 2 instances (2 Secondary Capture Image Storage) skipped (not MR images)\n", mode
        assert stdout.startswith(f"{folder}: 1 MR series"), mode


@needs_orthanc
def test_a_study_stored_as_jpeg2000_lossless_comes_by_c_get_as_stored(orthanc, tmp_path, capsys):
    """Orthanc cannot transcode JPEG 2000: offered one context per (SOP class, transfer syntax) it
    sends each instance as stored, and the pixels read back as the uncompressed source's."""
    pytest.importorskip("openjpeg", reason="pylibjpeg-openjpeg (JPEG 2000) is not installed")
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    files = synthetic_series(tmp_path / "in", seed=83)
    for f in files:
        ds = pydicom.dcmread(f)
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
        post(orthanc, ds)
    study = uid_of(files[0], "StudyInstanceUID")
    rc, _, err = cli(capsys, "retrieve", peer_of(orthanc), "--study", study, "-o", tmp_path / "out")
    assert rc == 0, err
    by_uid = {uid_of(f, "SOPInstanceUID"): f for f in files}
    got = sorted((tmp_path / "out" / study).rglob("*.dcm"))
    assert sorted(p.stem for p in got) == sorted(by_uid)
    for path in got:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEG2000Lossless, path.name
        np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(by_uid[path.stem]).pixel_array)


@pytest.fixture
def fake_pacs():
    """Builds :class:`FakePacs`; each shut down after the test."""
    started: list[FakePacs] = []

    def build(**options: Any) -> FakePacs:
        started.append(FakePacs(**options))
        return started[-1]

    yield build
    for pacs in started:
        pacs.close()


def test_a_pacs_without_study_root_c_find_gives_one_line(fake_pacs, capsys):
    """One error line naming the PACS and what it lacks, not pynetdicom's ValueError traceback."""
    pacs = fake_pacs(study_root_find=False)
    rc, _, err = cli(capsys, "retrieve", pacs.peer, "--patient", "P1", "--list", "--timeout", "10")
    assert (rc, err) == (
        2,
        f"cmrsdk: error: PACS {pacs.peer}: does not offer C-FIND in the Study Root model: it cannot be "
        "asked for studies and series this way (ask its administrator to allow Study Root C-FIND for 'CMRSDK')\n",
    )


def test_a_pacs_without_c_get_gives_one_line_pointing_to_c_move(fake_pacs, tmp_path, capsys):
    pacs = fake_pacs(get=False)
    rc, _, err = cli(capsys, "retrieve", pacs.peer, "--patient", "P1", "-o", tmp_path, "--timeout", "10")
    assert (rc, err) == (
        1,
        f"cmrsdk: error: PACS {pacs.peer}: does not offer C-GET: fetch by C-MOVE with --move-port PORT (a "
        "port of this host where the PACS knows 'CMRSDK' to listen)\n",
    )
    assert list(tmp_path.iterdir()) == []


def test_a_c_get_failing_with_0xc000_says_the_likely_cause(fake_pacs, tmp_path, capsys):
    pacs = fake_pacs(get_status=0xC000)
    rc, _, err = cli(capsys, "retrieve", pacs.peer, "--patient", "P1", "-o", tmp_path, "--timeout", "10")
    assert (rc, err) == (
        1,
        f"cmrsdk: error: PACS {pacs.peer}: C-GET of series {FakePacs.SERIES} failed: status 0xC000 (the "
        "PACS could not send an instance in a SOP class and transfer syntax offered: an object that is not an "
        "MR image, or one stored compressed in a syntax it cannot convert to one of those offered)\n",
    )
    assert list(tmp_path.iterdir()) == []


@needs_orthanc
@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # the GE cine's UIDs, read here
def test_an_interrupted_retrieve_stops_at_once_and_leaves_nothing(orthanc, shared_data, tmp_path):
    """SIGTERM mid C-MOVE, SIGINT mid C-GET: the process exits within a couple of seconds (not
    --timeout), says so, and -o holds nothing: the PACS still delivering recreates no folder."""
    source = shared_data / "sunnybrook" / "SCD0000101"
    if not source.is_dir():
        pytest.skip(f"Sunnybrook series not found at {source}")
    files = sunnybrook_files(source)  # 240 images: a transfer long enough to be interrupted
    orthanc.upload(files)
    study = uid_of(files[0], "StudyInstanceUID")
    for mode, extra, sig, name, code in (
        ("move", mover(orthanc), signal.SIGTERM, "SIGTERM", 143),
        ("get", [], signal.SIGINT, "SIGINT", 130),
    ):
        out = tmp_path / mode
        command = [sys.executable, "-m", "cmrsdk", "retrieve", peer_of(orthanc), "--study", study, "-o", str(out)]
        process = subprocess.Popen(
            [*command, "--timeout", "20", *extra],
            cwd=str(REPO),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            # a shell's background job ignores SIGINT, and so would Python in it: not the child
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        wait_for(
            lambda: process.poll() is not None or len(list(out.glob(".*/*/*.dcm"))) >= 10, 60, "10 instances staged"
        )
        assert process.poll() is None, f"{mode}: the retrieval ended before the signal"
        process.send_signal(sig)
        start = time.monotonic()
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        elapsed = time.monotonic() - start
        left = sorted(p.name for p in out.iterdir())
        assert (process.returncode, left) == (code, []), f"{mode}: {err.decode()[-2000:]}"
        assert elapsed < 3, f"{mode}: {elapsed:.1f} s from {name} to exit"
        # one line: no traceback, and none of pydicom's warnings for the GE UIDs' leading zeros
        assert err.decode().splitlines() == [
            f"cmrsdk: interrupted ({name}); finished studies are complete, the one in progress left nothing"
        ], mode


@needs_orthanc
def test_a_study_another_retrieval_finished_first_gives_the_exists_error(orthanc, small_study, tmp_path):
    """Two retrievals of one study into one folder at once: the one that finishes second gets the
    error a re-run gets, the other's study is left as it was, and no staging folder remains."""
    from cmrsdk.errors import InputError
    from cmrsdk.serve.forward import Destination
    from cmrsdk.serve.retrieve import find_series, retrieve_study

    study, files = small_study
    peer = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port)
    theirs = tmp_path / "out" / study

    def the_other_one_finishes(n: int) -> None:  # at the first instance stored here
        if not theirs.exists():
            theirs.mkdir(parents=True)
            (theirs / "theirs.dcm").write_bytes(b"theirs")

    try:
        retrieve_study(peer, find_series(peer, study_uid=study), tmp_path / "out", progress=the_other_one_finishes)
        error: Exception | None = None
    except Exception as exc:
        error = exc
    assert isinstance(error, InputError), repr(error)
    assert str(error) == f"{theirs} exists: the study was retrieved before (remove it to fetch it again)"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [study]
    assert [p.name for p in theirs.iterdir()] == ["theirs.dcm"]


@needs_orthanc
def test_an_output_that_is_a_file_is_refused_in_one_line(orthanc, small_study, tmp_path, capsys):
    """-o a file, or a path below one: one error line naming the option, the value and the file,
    before the PACS is asked; the file is left as it was."""
    study, _ = small_study
    afile = tmp_path / "afile"
    afile.write_text("x")
    for value in (afile, afile / "sub"):
        rc, _, err = cli(capsys, "retrieve", peer_of(orthanc), "--study", study, "-o", value)
        assert (rc, err) == (2, f"cmrsdk: error: -o value '{value}' is invalid: {afile} is a file, not a folder\n")
    assert afile.read_text() == "x"


@needs_orthanc
def test_a_timeout_not_above_zero_is_refused_in_one_line(orthanc, small_study, capsys):
    """0 would time out every message at once (with a misleading hint), -5 and nan were taken."""
    study, _ = small_study
    for value in ("0", "-5", "nan", "inf"):
        rc, stdout, err = cli(capsys, "retrieve", peer_of(orthanc), "--study", study, "--list", "--timeout", value)
        assert (rc, stdout, err) == (
            2,
            "",
            f"cmrsdk: error: --timeout value {float(value)} is invalid; expected seconds > 0\n",
        ), value


def test_a_frame_that_cannot_be_decoded_is_one_line_in_the_nodes_log(tmp_path):
    """An RLE frame overwritten with zeros: the series fails, and the node's log says why in the
    series' line, without pydicom's traceback."""
    pytest.importorskip("highdicom")
    import pydicom
    from pydicom.encaps import encapsulate, generate_frames
    from pydicom.uid import RLELossless
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage

    datasets = []
    for i, f in enumerate(synthetic_series(tmp_path / "in", seed=84)):
        ds = pydicom.dcmread(f)
        ds.compress(RLELossless, generate_instance_uid=False)
        if i == 3:
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            ds.PixelData = encapsulate([frame[:64] + bytes(len(frame) - 64)])  # the RLE header kept
        datasets.append(ds)
    series = str(datasets[0].SeriesInstanceUID)
    node = NodeProcess(tmp_path / "spool", tmp_path / "out", free_port(), log_path=tmp_path / "node.log")
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage, [RLELossless])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="CMRSDK")
        assert assoc.is_established
        assert [int(assoc.send_c_store(ds).Status) for ds in datasets] == [0] * len(datasets)
        assoc.release()
        wait_for(lambda: re.search(rf"series {series}: .* failed", node.text()), 60, f"the failure of {series}")
    finally:
        assert node.terminate() == 0
    log = node.text().splitlines()
    continued = [line for line in log if not re.match(r"\d{4}-\d\d-\d\d ", line)]  # a line not a message's first
    assert continued == [], "\n".join(log)
    (line,) = [line for line in log if series in line]
    assert "pixel data cannot be decoded (transfer syntax 1.2.840.10008.1.2.5; " in line, line
