"""benchmarks/pipeline_latency.py's FLOP floor counts the passes the pipeline makes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from cmrsdk.labels import APEX, BASE  # noqa: E402
from cmrsdk.phantom import cine_phantom  # noqa: E402
from cmrsdk.pipeline import DEFAULT_MIRRORING, Pipeline, mirror_axes  # noqa: E402
from pipeline_latency import ReferencePipeline, pipeline_gflop  # noqa: E402


def test_the_floor_counts_each_models_slices_and_pixels(region_demo_bundle):
    """ED: the heart search (one full-window slice), the baseline on every slice, its base and apex
    slices again; ES: each slice once; every segmenting pass as often as the default test-time
    mirroring asks (the half-turn: twice), the search once. The bundle's U-Nets (the demo's one
    under three names) cost the same per pixel."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    study = cine_phantom(0, n_phases=2)
    ref = ReferencePipeline(region_demo_bundle, 1)
    crop = (128, 128)
    H, W = ref.size
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ref.models["baseline"](torch.zeros(1, 1, H, W))
    per_pixel = counter.get_total_flops() / (H * W)
    ed = Pipeline(region_demo_bundle, threads=1).segment_study(study).ed
    z, again = ed.labels.shape[0], int(np.isin(ed.regions, [BASE, APEX]).sum())
    assert again > 0
    passes = len(mirror_axes(False, DEFAULT_MIRRORING)) if DEFAULT_MIRRORING else 1
    expected = per_pixel * (H * W + passes * (2 * z + again) * crop[0] * crop[1]) / 1e9
    assert pipeline_gflop(ref, [("phantom", study)], crop) == pytest.approx(expected, rel=1e-9)
    # the full window: every U-Net pass at H x W, the search's included
    expected_full = per_pixel * H * W * (1 + passes * (2 * z + again)) / 1e9
    assert pipeline_gflop(ref, [("phantom", study)], None) == pytest.approx(expected_full, rel=0.05)
