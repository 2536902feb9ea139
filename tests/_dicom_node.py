"""Helpers for the ``cmrsdk serve`` tests and benchmark: a private Orthanc, a node process, free ports.

Orthanc is the Debian package's ``/usr/sbin/Orthanc``, started on loopback ports with its own
generated configuration in a temporary folder (never the system service's 4242/8042).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _system_tool(name: str) -> str | None:
    """A system program on PATH, skipping the virtual environment: pynetdicom installs apps named
    like dcmtk's (storescu, echoscu) with other options, and the set-up puts .venv/bin first."""
    venv = Path(sys.prefix).resolve()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and not Path(folder).resolve().is_relative_to(venv):
            found = shutil.which(name, path=folder)
            if found:
                return found
    return None


#: dcmtk's clients (Debian package dcmtk), or None where absent.
STORESCU, ECHOSCU = _system_tool("storescu"), _system_tool("echoscu")
ORTHANC = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout_s: float, what: str, interval_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Orthanc:
    """A private Orthanc PACS; ``modalities`` maps a name to (AET, port) of peers on 127.0.0.1."""

    def __init__(
        self, folder: Path, modalities: dict[str, tuple[str, int]], aet: str = "ORTHANC", extra: dict | None = None
    ) -> None:
        self.folder, self.aet = Path(folder), aet
        self.http_port, self.dicom_port = free_port(), free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "cmrsdk-test",
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpServerEnabled": True,
            "DicomServerEnabled": True,
            "Plugins": [],
            "ConcurrentJobs": 2,
            "HttpThreadsCount": 4,
            "DicomModalities": {name: [a, "127.0.0.1", port] for name, (a, port) in modalities.items()},
            "DicomScuTimeout": 30,
            "StableAge": 2,
            "SaveJobs": False,
            **(extra or {}),
        }
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        self.log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(
            [ORTHANC, str(self.folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for(self._up, 30, "Orthanc's REST API")

    def _up(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}; see {self.folder / 'orthanc.log'}")
        try:
            self.get("/system")
            return True
        except OSError:
            return False

    def request(
        self, method: str, path: str, body: bytes | dict | list | str | None = None, timeout: float = 300
    ) -> Any:
        data = (
            json.dumps(body).encode()
            if isinstance(body, (dict, list))
            else body.encode()
            if isinstance(body, str)
            else body
        )
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as response:
            content = response.read()
        if response.headers.get("Content-Type", "").startswith("application/json"):
            return json.loads(content)
        return content

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def upload(self, files: list[Path]) -> set[str]:
        """POST each file to /instances; returns the Orthanc IDs of the series they belong to."""
        series = set()
        for f in files:
            series.add(self.request("POST", "/instances", f.read_bytes())["ParentSeries"])
        return series

    def series_by_modality(self, modality: str) -> list[dict]:
        out = []
        for sid in self.get("/series"):
            s = self.get(f"/series/{sid}")
            if s["MainDicomTags"].get("Modality") == modality:
                out.append(s)
        return out

    def instances_of_modality(self, modalities: tuple[str, ...]) -> list[str]:
        return [
            iid
            for s in self.get("/series")
            for iid in self.get(f"/series/{s}")["Instances"]
            if self.get(f"/series/{s}")["MainDicomTags"].get("Modality") in modalities
        ]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


#: the pipeline options of a test node: the node's receiving, queue and forwarding are under test,
#: and the one-U-Net pipeline on one thread leaves the CPU to the suite's other worker
#: (tests/test_serve.py runs one node with the defaults, routed and mirrored)
FAST_NODE = ("--mode", "baseline", "--no-mirroring", "--threads", "1")


class NodeProcess:
    """``python -m cmrsdk serve ...`` in a subprocess, its log in ``log_path``; ``pipeline``: its
    pipeline options (`FAST_NODE`; () for the defaults)."""

    def __init__(
        self,
        spool: Path,
        output: Path,
        port: int,
        *extra: str,
        log_path: Path,
        series_timeout: float = 1.0,
        wait_ready: bool = False,
        pipeline: tuple[str, ...] = FAST_NODE,
    ) -> None:
        self.spool, self.output, self.port, self.log_path = Path(spool), Path(output), port, Path(log_path)
        self.args = [
            sys.executable,
            "-m",
            "cmrsdk",
            "serve",
            "--port",
            str(port),
            "--spool",
            str(spool),
            "--output",
            str(output),
            "--series-timeout",
            str(series_timeout),
            "--min-free-mb",
            "1",
            *pipeline,
            *extra,
        ]
        self.log = open(self.log_path, "ab")
        self.offset = self.log.tell()  # a restarted node appends to the same log
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(self.args, cwd=str(REPO), stdout=self.log, stderr=subprocess.STDOUT, env=env)
        wait_for(self._listening, 60, f"cmrsdk serve on port {port}")
        if wait_ready:  # pipeline and writers loaded: nothing else competes for the CPU in the node
            wait_for(lambda: "ready: pipeline" in self.text(since_start=True), 120, "the node's pipeline")

    def _listening(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"cmrsdk serve exited with {self.process.returncode}:\n{self.text()}")
        return "listening as" in self.text(since_start=True)

    def text(self, since_start: bool = False) -> str:
        """The log (of every run on this log file, or of this process only)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.offset if since_start else 0)
            return f.read().decode(errors="replace")

    def kill9(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def terminate(self, timeout: float = 120) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout)
        self.log.close()
        return self.process.returncode

    def status(self) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cmrsdk", "serve", "--status", str(self.spool)],
            cwd=str(REPO),
            capture_output=True,
            text=True,
            check=True,
        ).stdout


def storescu(
    port: int, files: list[Path], *, calling: str = "SCANNER", called: str = "CMRSDK", timeout: float = 120
) -> subprocess.CompletedProcess:
    """dcmtk's storescu sending ``files`` to 127.0.0.1:port over one association (-v: one line per response)."""
    return subprocess.run(
        [STORESCU, "-v", "-aet", calling, "-aec", called, "-nh", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def sunnybrook_files(source: Path) -> list[Path]:
    """A Sunnybrook series' files as the archive holds them (invalid dates, a frame of reference per
    image, UIDs with leading zeros), sorted by file number: what a real PACS would send."""
    return sorted(Path(source).glob("*.dcm"), key=lambda p: int(p.stem))


def serve_parser_with_fake_node(monkeypatch, tmp_path: Path) -> tuple[Any, list[Any]]:
    """`cmrsdk serve`'s argument parser, with `Node` replaced by one that records its config and
    returns at once (run in ``tmp_path``): what `command.run_serve` sets up, without a node.

    Returns the parser (``parser.parse_args(["serve", ...])``) and the list of configs recorded."""
    import argparse

    from cmrsdk.serve import command, node

    configs: list[Any] = []

    class FakeNode:
        def __init__(self, config):
            configs.append(config)

        def install_signal_handlers(self):
            pass

        def start(self):
            pass

        def wait(self):
            return 0

    monkeypatch.setattr(node, "Node", FakeNode)
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    from cmrsdk import DEMO_BUNDLE

    # a bundle that loads: the command loads it before the node listens (sweep 51)
    command.add_serve_parser(parser.add_subparsers(), str(DEMO_BUNDLE))
    return parser, configs
