"""scripts/train_bundle_gpu.sh on the CPU: the GPU lease's whole path in a few iterations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export.train import REPO_ROOT, load_trained_model  # noqa: E402


@pytest.mark.parametrize(("stage", "averaged", "channels"), [("swa", 3, 1), ("ctx", 0, 3)])
def test_three_shipped_models_continue_and_come_back_as_weight_averages(
    tmp_path: Path, stage: str, averaged: int, channels: int
) -> None:
    """Stage 4 (SWA: the average of iterations 2, 3 and 4) and stage 5 (2.5D: the shipped 2D
    archives widened to three input channels, no averaging) both come back from the bundle."""
    out = tmp_path / "out"
    env = dict(
        os.environ,
        STAGE=stage,
        DEVICE="cpu",
        ITERATIONS="4",
        PYTHON=sys.executable,
        RUNS=str(tmp_path / "runs"),
        # synthetic slices in place of the ACDC pack; the shipped U-Nets at their own width
        SET='data.source="synthetic" data.size=64 data.synthetic_slices=16 train.patch=32 train.batch_size=4',
    )
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "train_bundle_gpu.sh"), str(out), "600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in ("baseline", "base", "apex"):
        model, meta = load_trained_model(out / f"{name}.pt")
        assert meta["iteration"] == 4 and meta["swa_averaged"] == averaged, name
        assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == channels
        assert meta["weights_dtype"] == "float16"
        assert sum(p.numel() for p in model.parameters()) > 1_900_000  # the shipped 1.94 M U-Net
        assert (out / f"{name}_log.csv").is_file()
    assert "0 run(s) failed" in done.stdout
    assert "total:" in (out / "training.txt").read_text()
