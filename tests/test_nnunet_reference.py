"""benchmarks/nnunet_reference.py: nnU-Net v2's predictor given the baseline U-Net (skipped without nnunetv2)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("nnunetv2", reason="nnunetv2 (the 'bench' extra) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from export.models import get_model  # noqa: E402
from export.bundle import ProbabilityModel  # noqa: E402
from cmrsdk.types import Stack, Study  # noqa: E402
from nnunet_reference import build_plans, build_predictor, time_nnunet  # noqa: E402

FEATURES = [4, 8, 16]


def _ref(features=FEATURES, model=None) -> SimpleNamespace:
    """The parts of pipeline_latency.ReferencePipeline that nnunet_reference reads."""
    torch.manual_seed(0)
    spec = {"name": "unet", "kwargs": {"features": list(features)}}
    net = model if model is not None else get_model("unet", features=list(features))
    record = {"training": {"config": {"model": spec}}}
    bundle = SimpleNamespace(routing={0: "baseline"}, models={"baseline": SimpleNamespace(record=record)})
    return SimpleNamespace(
        bundle=bundle, models={"baseline": ProbabilityModel(net).eval()}, size=(32, 32), spacing=(1.5, 1.5)
    )


def _study() -> Study:
    rng = np.random.default_rng(0)
    ed = Stack(rng.random((2, 36, 30), dtype=np.float32) + 0.1, (8.0, 1.4, 1.4))
    es = Stack(rng.random((2, 36, 30), dtype=np.float32) + 0.1, (8.0, 1.4, 1.4))
    return Study(phases=(ed, es), ed_index=0, es_index=1)


def test_plans_describe_the_unet():
    plans = build_plans((32, 48), (1.5, 1.25), FEATURES)
    config = plans["configurations"]["2d"]
    assert config["patch_size"] == [32, 48] and config["spacing"] == [1.5, 1.25]
    assert config["normalization_schemes"] == ["ZScoreNormalization"]
    arch = config["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == FEATURES and arch["strides"] == [[1, 1], [2, 2], [2, 2]]


def test_same_weights_reproduce_the_baseline_logits():
    ref = _ref()
    predictor, note = build_predictor(ref, mirroring=False)
    assert note.startswith("same weights")
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        expected = ref.models["baseline"].net(x)
        got = predictor.network.eval()(x)
    assert torch.allclose(got, expected, atol=1e-4)
    gflop = note.split("; ")[1].split(" GFLOP")[0].split(" vs ")
    assert gflop[0] == gflop[1]


def test_a_mismatched_network_gets_random_weights_and_says_so():
    class Other(torch.nn.Module):  # same builder signature, different parameters
        features = tuple(FEATURES)

        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return self.conv(x)

    _, note = build_predictor(_ref(model=Other()), mirroring=True)
    assert note.startswith("random weights of the same architecture")


@pytest.mark.parametrize("mirroring", [True, False])
def test_time_nnunet_runs_on_a_pair(mirroring):
    ms, note = time_nnunet(_ref(), [("tiny", _study())], mirroring=mirroring, threads=1, repeats=1)
    assert ms > 0 and "GFLOP" in note
