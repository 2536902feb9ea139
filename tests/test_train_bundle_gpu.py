"""scripts/train_bundle_gpu.sh on the CPU: the GPU lease's whole path in a few iterations."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from export.train import REPO_ROOT, load_trained_model  # noqa: E402


@pytest.mark.parametrize(
    ("stage", "bundle", "models", "averaged", "channels", "parameters"),
    [
        ("wide", None, "baseline", 0, 1, 2_800_000),  # the defaults: the shipped 0.7.0 U-Net, its recipe
        ("swa", "0.3.0", "baseline base apex", 3, 1, 1_900_000),  # stage 4: the average of iterations 2-4
        ("ctx", "0.3.0", "baseline base apex", 0, 3, 1_900_000),  # stage 5: 2.5D, inputs widened to 3
    ],
)
def test_bundle_models_continue_and_come_back_as_weights(
    tmp_path: Path, stage: str, bundle: str | None, models: str, averaged: int, channels: int, parameters: int
) -> None:
    """The shipped bundle's U-Net, and the 0.3.0 bundle's three (back from git history), continue
    from their own archives and come back as float16 weights, averaged where the stage says."""
    out = tmp_path / "out"
    env = dict(
        os.environ,
        STAGE=stage,
        MODELS=models,
        DEVICE="cpu",
        ITERATIONS="4",
        PYTHON=sys.executable,
        RUNS=str(tmp_path / "runs"),
        # synthetic slices in place of the ACDC pack; the shipped U-Nets at their own width
        SET='data.source="synthetic" data.size=64 data.synthetic_slices=16 train.patch=32 train.batch_size=4',
    )
    if bundle is not None:
        subprocess.run(
            ["bash", str(REPO_ROOT / "scripts" / "restore_bundle.sh"), bundle], check=True, capture_output=True
        )
        env["BUNDLE"] = str(REPO_ROOT / "runs" / f"bundle_{bundle}")
    done = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "train_bundle_gpu.sh"), str(out), "600"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for name in models.split():
        model, meta = load_trained_model(out / f"{name}.pt")
        assert meta["iteration"] == 4 and meta.get("swa_averaged", 0) == averaged, name
        assert next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).in_channels == channels
        assert meta["weights_dtype"] == "float16"
        assert sum(p.numel() for p in model.parameters()) > parameters  # 0.7.0: 2.87 M; 0.3.0: 1.94 M
        assert (out / f"{name}_log.csv").is_file()
    assert "0 run(s) failed" in done.stdout
    assert "total:" in (out / "training.txt").read_text()
