"""Small recognisable models for pipeline and CLI tests (see tests/test_pipeline.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import pytest
import torch
from torch import nn

from cmrsdk.bundle import Preprocessing
from cmrsdk.labels import APEX, BASE, MIDDLE, NON_CARDIAC

SIZE = (64, 64)
#: the constant label each segmentation model of the routing bundle answers
ANSWER = {"baseline": 0, "base": 1, "middle": 2, "apex": 3}


class ConstantSegmenter(nn.Module):
    """Logits that make one label win everywhere, whatever the image."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.eye(4)[label] * 10.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MeanClassifier(nn.Module):
    """Region logits peaking where 3 x the slice's mean intensity is nearest the region code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))[:, None] * 3.0
        centres = torch.arange(4, dtype=x.dtype)[None]
        return -((m - centres) ** 2) * 20.0


def build_routing_bundle(out_dir):
    """A bundle of `ConstantSegmenter`s (baseline 0, base 1, middle 2, apex 3) and a `MeanClassifier`."""
    from export.bundle import build_bundle

    models = {
        name: (ConstantSegmenter(label), {"kind": "segmentation", "architecture": f"constant({label})"})
        for name, label in ANSWER.items()
    }
    models["classifier"] = (MeanClassifier(), {"kind": "classifier", "architecture": "mean-intensity"})
    routing = {NON_CARDIAC: "baseline", BASE: "base", MIDDLE: "middle", APEX: "apex"}
    pre = Preprocessing(target_spacing=(2.0, 2.0), size=SIZE, normalization="minmax")
    return build_bundle(models, routing, pre, out_dir, formats=("onnx", "torchscript"))


class ThresholdSegmenter(nn.Module):
    """LVBP wherever the normalised intensity exceeds 0.5, background elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x - 0.5) * 40.0
        return torch.cat([-fg, fg, torch.full_like(x, -20.0), torch.full_like(x, -20.0)], dim=1)


def build_threshold_bundle(out_dir):
    """A baseline-only bundle (min-max normalisation, 2 mm, 96 x 96) of one `ThresholdSegmenter`."""
    from export.bundle import build_bundle

    pre = Preprocessing(target_spacing=(2.0, 2.0), size=(96, 96), normalization="minmax")
    return build_bundle(
        {"baseline": (ThresholdSegmenter(), {"kind": "segmentation"})},
        {NON_CARDIAC: "baseline"},
        pre,
        out_dir,
        formats=("onnx", "torchscript"),
    )


def build_segmentation_routed_bundle(out_dir):
    """Regions from the segmentation: a `ThresholdSegmenter` baseline (also the middle's model),
    a base model that says LVM and an apex model that says RVBP everywhere; no classifier."""
    from export.bundle import build_bundle

    models = {
        "baseline": (ThresholdSegmenter(), {"kind": "segmentation"}),
        "base": (ConstantSegmenter(2), {"kind": "segmentation"}),
        "apex": (ConstantSegmenter(3), {"kind": "segmentation"}),
    }
    routing = {NON_CARDIAC: "baseline", BASE: "base", MIDDLE: "baseline", APEX: "apex"}
    pre = Preprocessing(target_spacing=(2.0, 2.0), size=(64, 64), normalization="minmax")
    return build_bundle(models, routing, pre, out_dir, formats=("onnx",), regions_from="segmentation")


class NeighbourThreshold(nn.Module):
    """A 2.5D `ThresholdSegmenter` (3 input channels) that reads one channel only: 0 the slice
    before, 1 the slice itself, 2 the slice after (`cmrsdk.preprocess.context_slices`)."""

    def __init__(self, channel: int) -> None:
        super().__init__()
        self.pick = nn.Conv2d(3, 1, 1, bias=False)
        with torch.no_grad():
            self.pick.weight.copy_(torch.eye(3)[channel].view(1, 3, 1, 1))
        self.threshold = ThresholdSegmenter()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.threshold(self.pick(x))


def build_neighbour_bundle(out_dir, channel: int, formats: tuple[str, ...] = ("onnx", "torchscript")):
    """`build_threshold_bundle` with a `NeighbourThreshold` baseline (TorchScript and ONNX, or ``formats``)."""
    from export.bundle import build_bundle

    pre = Preprocessing(target_spacing=(2.0, 2.0), size=(96, 96), normalization="minmax")
    return build_bundle(
        {"baseline": (NeighbourThreshold(channel), {"kind": "segmentation"})},
        {NON_CARDIAC: "baseline"},
        pre,
        out_dir,
        formats=formats,
    )


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], object]) -> Path:
    """The folder ``name`` that ``build(folder)`` fills, built once for the whole run: the first
    pytest-xdist worker to ask builds it under a file lock, the others wait and share it (read
    only). pytest-xdist's recipe for a fixture that must execute once: a module's tests run on both
    workers, and each worker compiled the AOTInductor bundle of tests/test_export_aoti.py (45 s)."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder = root / f"built-once-{name}"
    with FileLock(f"{folder}.lock"):
        if not (folder / ".built").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".built").touch()
    return folder
