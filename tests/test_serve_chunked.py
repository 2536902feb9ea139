"""The node and `cmrsdk retrieve` write each instance to disk as it arrives (pynetdicom's chunked
receiving, :func:`cmrsdk.serve.scp.receive_into_files`): memory per instance stays bounded, the
file is renamed into place, and no file is left for an instance refused, a duplicate or a
transfer cut off; one larger than ``max_instance_bytes`` is refused with 0xA700."""

from __future__ import annotations

import hashlib
import logging
import re
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("pynetdicom")

from _dicom_node import free_port, wait_for  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid  # noqa: E402

from cmrsdk.serve.scp import ScpOptions, StorageScp  # noqa: E402
from cmrsdk.serve.spool import Spool  # noqa: E402

MB = 2**20


def big_instance(path: Path, mib: int, *, seed: int = 0, series_uid: str | None = None) -> Path:
    """An MR instance of 512 x 512 16-bit frames holding about ``mib`` MiB of pixel data (seeded
    noise in the first frame, zeros after: quick to make, not compressible away by anyone)."""
    frames = max(1, mib * MB // (512 * 512 * 2))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), series_uid or generate_uid()
    ds.Modality, ds.PatientID = "MR", "CHUNKED"
    ds.Rows = ds.Columns = 512
    ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    pixels = np.zeros(frames * 512 * 512, dtype=np.uint16)
    pixels[: 512 * 512] = np.random.default_rng(seed).integers(0, 4096, 512 * 512, dtype=np.uint16)
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def data_set_digest(path: Path) -> str:
    """SHA-256 of a DICOM file's data set as encoded (after its file meta), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(144)  # preamble, DICM, then (0002,0000) UL: its value at 140
        f.seek(144 + int.from_bytes(head[140:144], "little"))
        for chunk in iter(lambda: f.read(4 * MB), b""):
            digest.update(chunk)
    return digest.hexdigest()


def send(port: int, path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    """C-STORE one file, streamed from disk (the sender holds none of it), to a node on ``port``."""
    from pynetdicom import AE, _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CMRSDK")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()


@pytest.fixture()
def node(tmp_path, caplog):
    spool = Spool(tmp_path / "spool")
    scp = StorageScp(spool, ScpOptions(port=0, max_instance_bytes=8 * MB))
    scp.start()
    caplog.set_level(logging.INFO, logger="cmrsdk.serve")
    try:
        yield scp
    finally:
        scp.stop()
        spool.close()


def stored_files(spool: Spool) -> list[Path]:
    return sorted((spool.directory / "instances").rglob("*.dcm"))


_NODE = """
import sys
from cmrsdk.serve.scp import ScpOptions, StorageScp
from cmrsdk.serve.spool import Spool
spool = Spool(sys.argv[1])
scp = StorageScp(spool, ScpOptions(port=0))
scp.start()
print(scp.port, flush=True)
sys.stdin.readline()
scp.stop()
spool.close()
"""


def memory_mib(pid: int) -> dict[str, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the node's peak RSS from /proc")
def test_a_128_mb_instance_costs_the_node_no_more_than_a_few_mb_and_arrives_as_sent(tmp_path, monkeypatch):
    """The node's peak RSS grows by under 32 MiB for a 128 MiB instance (it held it whole, and
    a copy: +1200 MiB for 400 MiB before 0.15.0); the stored data set is the one sent, byte for byte."""
    source = big_instance(tmp_path / "big.dcm", 128)
    spool_dir = tmp_path / "spool"
    node = subprocess.Popen(
        [sys.executable, "-c", _NODE, str(spool_dir)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert node.stdout is not None and node.stdin is not None
        port = int(node.stdout.readline())
        idle = memory_mib(node.pid)["VmRSS"]
        assert send(port, source, monkeypatch) == 0x0000
        peak = memory_mib(node.pid)["VmHWM"]
        node.stdin.write("\n")
        node.stdin.flush()
        assert node.wait(timeout=30) == 0
    finally:
        node.kill()
    assert peak - idle < 32, f"node's peak RSS {peak:.0f} MiB, {idle:.0f} MiB idle"
    (stored,) = stored_files(Spool(spool_dir))
    assert data_set_digest(stored) == data_set_digest(source)
    assert not any((spool_dir / "incoming").iterdir())


def test_refused_and_duplicate_instances_leave_no_file(node, tmp_path, monkeypatch):
    """Stored, sent again (a duplicate, Success), without SeriesInstanceUID (0xC000), refused for
    space (0xA700): one file in the spool, none in its incoming folder, the bytes counted once."""
    spool = node.spool
    source = big_instance(tmp_path / "one.dcm", 1, seed=1)
    assert send(node.port, source, monkeypatch) == 0x0000
    assert send(node.port, source, monkeypatch) == 0x0000
    assert node.counts["stored"] == 1 and node.counts["duplicate"] == 1
    (stored,) = stored_files(spool)
    assert data_set_digest(stored) == data_set_digest(source)
    assert spool.bytes_held == stored.stat().st_size
    assert not any(spool.incoming.iterdir())

    anonymous = pydicom.dcmread(big_instance(tmp_path / "two.dcm", 1, seed=2))
    del anonymous.SeriesInstanceUID
    anonymous.save_as(tmp_path / "two.dcm", enforce_file_format=True)
    assert send(node.port, tmp_path / "two.dcm", monkeypatch) == 0xC000
    assert not any(spool.incoming.iterdir())

    monkeypatch.setattr(spool, "max_bytes", spool.bytes_held + 1000)
    assert send(node.port, big_instance(tmp_path / "three.dcm", 1, seed=3), monkeypatch) == 0xA700
    assert node.counts["refused"] == 1 and stored_files(spool) == [stored]
    assert spool.bytes_held == stored.stat().st_size
    assert not any(spool.incoming.iterdir())


def test_an_instance_over_max_instance_bytes_is_refused_with_0xA700_in_one_line(node, tmp_path, monkeypatch, caplog):
    """A 12 MiB instance over an 8 MiB limit: 0xA700, one line naming it, its size and the option;
    nothing stored, no file left, and its series held as for any instance refused for space."""
    source = big_instance(tmp_path / "big.dcm", 12)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert send(node.port, source, monkeypatch) == 0xA700
    lines = [r.getMessage() for r in caplog.records if "--max-instance-mb" in r.getMessage()]
    assert len(lines) == 1, lines
    assert ds.SOPInstanceUID in lines[0] and ds.SeriesInstanceUID in lines[0]
    size, limit = map(int, re.search(r"(\d+) bytes, over the limit of (\d+) bytes", lines[0]).groups())
    data_set = source.stat().st_size - 144 - int.from_bytes(source.read_bytes()[140:144], "little")
    assert limit == 8 * MB and data_set < size < data_set + 1024  # as a file: with preamble and file meta
    assert stored_files(node.spool) == [] and node.spool.bytes_held == 0
    assert not any(node.spool.incoming.iterdir())
    row = node.spool.series(ds.SeriesInstanceUID)
    assert row is not None and row.interrupted and row.n_instances == 0
    # under the limit, the next one of the series is stored
    assert send(node.port, big_instance(tmp_path / "small.dcm", 2, series_uid=ds.SeriesInstanceUID), monkeypatch) == 0
    assert len(stored_files(node.spool)) == 1


_SENDER = """
import sys
from pynetdicom import AE, _config
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage
_config.STORE_SEND_CHUNKED_DATASET = True
ae = AE(ae_title="SCANNER")
ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title="CMRSDK")
assoc.send_c_store(sys.argv[2])
"""


def test_a_transfer_cut_off_mid_instance_leaves_no_file(tmp_path):
    """The sender is killed while a 96 MiB instance arrives (4 MiB of it written, under the
    node's limit): the part written is removed when the connection ends, nothing is recorded.
    The limit is above the instance: at the fixture's 8 MiB, the 4-8 MiB window passed between two
    looks at the folder (every 0.2 s) on a faster machine, and the test timed out."""
    from cmrsdk.serve.scp import ScpOptions, StorageScp

    spool = Spool(tmp_path / "spool")
    node = StorageScp(spool, ScpOptions(port=0, max_instance_bytes=256 * MB))
    node.start()
    try:
        source = big_instance(tmp_path / "big.dcm", 96)
        sender = subprocess.Popen([sys.executable, "-c", _SENDER, str(node.port), str(source)])
        try:
            arriving = wait_for(
                lambda: [p for p in spool.incoming.iterdir() if p.stat().st_size > 4 * MB],
                20,
                "a partial file",
                interval_s=0.005,
            )
        finally:
            sender.send_signal(signal.SIGKILL)
            sender.wait()
        wait_for(lambda: not any(spool.incoming.iterdir()), 10, "the partial file removed")
        assert not arriving[0].exists() and stored_files(spool) == []
        assert node.counts["stored"] == 0 and spool.bytes_held == 0
    finally:
        node.stop()
        spool.close()


_PACS = """
import sys
import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage, StudyRootQueryRetrieveInformationModelGet
ds = pydicom.dcmread(sys.argv[1])
def get(event):
    yield 1
    yield 0xFF00, ds
ae = AE(ae_title="FAKEPACS")
ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
ae.add_supported_context(MRImageStorage, scu_role=True, scp_role=True)
server = ae.start_server(("127.0.0.1", int(sys.argv[2])), block=False, evt_handlers=[(evt.EVT_C_GET, get)])
print("ready", flush=True)
sys.stdin.readline()
server.shutdown()
"""


def test_retrieve_writes_each_instance_as_it_arrives_and_leaves_no_folder_behind(tmp_path):
    """A 48 MiB instance fetched by C-GET from a PACS in another process: retrieve's allocations
    peak under 8 MiB (it held the instance, decoded it and encoded it again before 0.15.0), the
    file holds the data set as sent, and the output holds the study folder only."""
    from cmrsdk.serve.forward import parse_destination
    from cmrsdk.serve.retrieve import SeriesMatch, retrieve_study

    source = big_instance(tmp_path / "big.dcm", 48)
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    port = free_port()
    pacs = subprocess.Popen(
        [sys.executable, "-c", _PACS, str(source), str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert pacs.stdout is not None and pacs.stdin is not None
        assert pacs.stdout.readline().strip() == "ready"
        match = SeriesMatch(ds.StudyInstanceUID, ds.SeriesInstanceUID, "CHUNKED", "", "", "", 1)
        tracemalloc.start()
        try:
            started = time.monotonic()
            study = retrieve_study(parse_destination(f"FAKEPACS@127.0.0.1:{port}"), [match], tmp_path / "out")
            elapsed = time.monotonic() - started
            peak = tracemalloc.get_traced_memory()[1] / MB
        finally:
            tracemalloc.stop()
        pacs.stdin.write("\n")
        pacs.stdin.flush()
        pacs.wait(timeout=30)
    finally:
        pacs.kill()
    assert peak < 8, f"retrieve allocated {peak:.1f} MiB at peak ({elapsed:.1f} s)"
    (fetched,) = study.rglob("*.dcm")
    assert data_set_digest(fetched) == data_set_digest(source)
    assert [p.name for p in (tmp_path / "out").iterdir()] == [study.name]
