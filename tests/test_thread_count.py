"""`cmrsdk.cohort.worker.set_thread_count`: the thread cap a batch worker and the DICOM node set
before loading their pipeline, without loading PyTorch where the engine is not torch's.

Before 0.14.11 it imported torch to call ``torch.set_num_threads``: every node and batch worker
on ONNX Runtime or OpenVINO paid 2.8 s and PyTorch's memory for a library it never ran (the
node's "ready: pipeline and writers loaded" took 3.8 s, now 0.5 s here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from _dicom_node import NodeProcess, free_port

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(REPO)}  # no OMP_NUM_THREADS of the test run's own
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_torch_loaded_later_takes_the_cap_and_is_not_loaded_by_it():
    pytest.importorskip("torch")
    out = _python(
        "import sys\n"
        "from cmrsdk.cohort.worker import set_thread_count\n"
        "set_thread_count(1)\n"
        "print('torch' in sys.modules)\n"
        "import torch\n"
        "print(torch.get_num_threads())\n"
    )
    assert out.splitlines() == ["False", "1"]


def test_torch_loaded_already_is_capped():
    pytest.importorskip("torch")
    out = _python(
        "import os, torch\n"
        "before = torch.get_num_threads()\n"
        "from cmrsdk.cohort.worker import set_thread_count\n"
        "set_thread_count(1)\n"
        "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])\n"
    )
    assert out == "1 1"


def test_an_openvino_node_never_maps_libtorch(tmp_path: Path):
    """The node's process, pipeline loaded (OpenVINO, one thread): no PyTorch library in its memory map."""
    pytest.importorskip("openvino")
    node = NodeProcess(
        tmp_path / "spool", tmp_path / "out", free_port(), log_path=tmp_path / "node.log", wait_ready=True
    )
    try:
        assert "(baseline, openvino)" in node.text()
        maps = Path(f"/proc/{node.process.pid}/maps").read_text()
        assert "libopenvino" in maps and "libtorch" not in maps
    finally:
        assert node.terminate() == 0
