"""export.quantize: int8 artifacts, their parity on real slices, the Dice record, the atomic rewrite."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime.quantization")

from cmrsdk.bundle import MANIFEST_NAME, Preprocessing, load_bundle, sha256_file  # noqa: E402
from cmrsdk.cli import DEMO_BUNDLE  # noqa: E402
from cmrsdk.errors import InputError  # noqa: E402
from cmrsdk.labels import NON_CARDIAC  # noqa: E402
from cmrsdk.pipeline import Pipeline  # noqa: E402
from cmrsdk.synth import synthetic_study  # noqa: E402
from export.bundle import build_bundle  # noqa: E402
from _bundles import built_once  # noqa: E402
from export.models import unet  # noqa: E402
from export.quantize import (  # noqa: E402
    HELD_OUT,
    INT8_MIN_DECIDED_AGREEMENT,
    QuantizationError,
    _heart_crop,
    _prepared,
    calibration_slices,
    check_slices,
    dice_deltas,
    int8_parity,
    quantize_bundle,
    quantize_model,
)


class EdgeSegmenter(torch.nn.Module):
    """A small fixed convolutional segmenter: bright pixels LVBP, their rim LVM, dark ones background.

    Hand-set weights, so its answers are decided (not the near-ties of random weights) and the
    int8 check has something meaningful to agree with.
    """

    def __init__(self) -> None:
        super().__init__()
        self.smooth = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.head = torch.nn.Conv2d(4, 4, 1)
        with torch.no_grad():
            self.smooth.weight.copy_(
                torch.tensor([1.0, 1.0, 0.5, -1.0])[:, None, None, None] / 9.0 * torch.ones(4, 1, 3, 3)
            )
            self.smooth.weight[2, 0, 1, 1] = -2.0  # an edge detector for the rim
            self.smooth.bias.copy_(torch.tensor([0.0, -0.4, 0.0, 0.0]))
            self.head.weight.copy_(
                torch.tensor([[-4.0, 0, 0, 4], [0, 8, 0, 0], [0, 2, 6, 0], [-1, -1, -1, -1]])[..., None, None]
            )
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.nn.functional.leaky_relu(self.smooth(x), 0.01))


SIZE = (64, 64)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A small bundle: the edge segmenter as baseline (regions from its masks), a small U-Net for the
    apex; built once for the run (`built_once`) and read only: tests that change it take a copy."""

    def build(folder: Path) -> None:
        torch.manual_seed(0)
        models = {
            "baseline": (EdgeSegmenter(), {"kind": "segmentation"}),
            "apex": (unet(features=(4, 8)), {"kind": "segmentation"}),
        }
        pre = Preprocessing((2.0, 2.0), SIZE, "robust_zscore", heart_crop=(32, 32))
        build_bundle(
            models,
            {NON_CARDIAC: "baseline", 1: "baseline", 2: "baseline", 3: "apex"},
            pre,
            folder / "bundle",
            formats=("onnx",),
            regions_from="segmentation",
        )

    return built_once(tmp_path_factory, "quantize-source", build) / "bundle"


@pytest.fixture(scope="module")
def studies():
    return [(f"synthetic{s}", synthetic_study(seed=s)) for s in (11, 12)]


@pytest.fixture(scope="module")
def quantized(source: Path, studies, tmp_path_factory):
    """A copy of the bundle with int8 artifacts added, and the Dice record; quantized once for the
    run (`built_once`, the record pickled beside the bundle) and read only."""

    def build(folder: Path) -> None:
        bundle_dir = Path(shutil.copytree(source, folder / "bundle"))
        images, labels = _prepared(load_bundle(bundle_dir), [synthetic_study(seed=5)])
        # minmax here: it calibrates at the window and the heart crop; percentile (the default,
        # window only) is exercised by the real-slices test on the demo bundle
        dice = quantize_bundle(
            bundle_dir,
            calibration=images,
            calibration_labels=labels,
            calibration_source="synthetic seed 5",
            check_studies=studies,
            max_dice_drop=math.inf,
            threads=1,
            log=lambda *a: None,
            method="minmax",
            # the apex U-Net has random weights: more near-ties than a trained one
            min_agreement=0.95,
        )
        (folder / "dice.pkl").write_bytes(pickle.dumps(dice))

    folder = built_once(tmp_path_factory, "quantize-int8", build)
    return folder / "bundle", pickle.loads((folder / "dice.pkl").read_bytes())


def test_int8_artifacts_are_added_with_valid_hashes_and_records(source: Path, quantized):
    bundle_dir, dice = quantized
    before = json.loads((source / MANIFEST_NAME).read_text())
    bundle = load_bundle(bundle_dir)  # every hash verifies, the old ones and the new
    for name in ("baseline", "apex"):
        artifacts = bundle.models[name].artifacts
        assert set(artifacts) == {"onnx", "onnx-int8"}
        int8 = artifacts["onnx-int8"]
        assert (int8.backend, int8.precision, int8.path.name) == ("onnx", "int8", f"{name}.int8.onnx")
        assert int8.sha256 == sha256_file(int8.path)
        # the fp32 artifact is untouched: same file, same hash
        assert bundle.manifest["models"][name]["artifacts"]["onnx"] == before["models"][name]["artifacts"]["onnx"]
        # the export checked the fp32 artifact at both sizes the pipeline runs a U-Net
        assert [p["input_hw"] for p in bundle.manifest["models"][name]["parity"] if p["artifact"] == "onnx"] == [
            [64, 64],
            [32, 32],
        ]
        parity = [p for p in bundle.manifest["models"][name]["parity"] if p["artifact"] == "onnx-int8"]
        assert len(parity) == 1 and parity[0]["passed"]
        assert parity[0]["tolerance"] == 0.95 and parity[0]["decided_argmax_agreement"] >= 0.95
        assert [s["input_hw"] for s in parity[0]["sizes"]] == [[64, 64], [32, 32]]  # full window and heart crop
        record = bundle.manifest["models"][name]["artifacts"]["onnx-int8"]["quantization"]
        # minmax calibrates at the window and the heart crop (percentile: the window only)
        assert record["method"] == "minmax"
        assert record["calibration_inputs"] == [[_calibration_count(), 64, 64], [_calibration_count(), 32, 32]]
    assert bundle.manifest["quantization"]["int8"]["worst_drop"] == dice["worst_drop"]
    assert not list(bundle_dir.parent.glob(".bundle.int8.*"))  # no staging left behind


def _calibration_count() -> int:
    return synthetic_study(seed=5).ed.shape[0] + synthetic_study(seed=5).es.shape[0]


def test_the_int8_graph_is_quantized(quantized):
    import onnx

    bundle_dir, _ = quantized
    graph = onnx.load(str(bundle_dir / "apex.int8.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 3
    # instance normalisation keeps float32 scale and bias (no per-channel quantization of rank-1
    # weights) and the softmax is float32 too: probabilities stay probabilities
    initializers = {t.name for t in graph.initializer}
    norms = [n for n in graph.node if n.op_type == "InstanceNormalization"]
    assert norms and all(n.input[1] in initializers and n.input[2] in initializers for n in norms)
    dq_outputs = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    assert [n for n in graph.node if n.op_type == "Softmax" and n.output[0] == graph.output[0].name]
    assert graph.output[0].name not in dq_outputs


def test_dice_deltas_are_computed_per_region_and_label(quantized, studies):
    bundle_dir, dice = quantized
    assert [(r["region"], r["label"]) for r in dice["rows"]] == [
        (region, label) for region in ("base", "middle", "apex", "cardiac") for label in ("LVBP", "LVM", "RVBP")
    ]
    # recompute from the pipelines themselves: the record is what fp32 and int8 score
    again = dice_deltas(bundle_dir, studies, threads=1)
    for row, other in zip(dice["rows"], again["rows"]):
        assert row["delta"] == pytest.approx(row["int8"] - row["fp32"], abs=1e-9, nan_ok=True)
        assert row["fp32"] == pytest.approx(other["fp32"], abs=1e-9, nan_ok=True) and row["int8"] == pytest.approx(
            other["int8"], abs=1e-9, nan_ok=True
        )
    finite = [r for r in dice["rows"] if math.isfinite(r["delta"])]
    assert finite and dice["worst_drop"] == pytest.approx(max(0.0, *(-r["delta"] for r in finite)))
    assert dice["slices"] == sum(s.ed.shape[0] + s.es.shape[0] for _, s in studies)
    # for scale: fp32 with the heart crop moved by 1 pixel (the bundle has a crop)
    assert all(math.isfinite(r["jitter"]) for r in finite) and dice["worst_jitter_drop"] >= 0.0
    assert again["worst_jitter_drop"] is None and "jitter" not in again["rows"][0]


def test_the_pipeline_runs_int8_on_request_only(quantized, studies):
    bundle_dir, _ = quantized
    fp32 = Pipeline(bundle_dir, backend="auto")
    int8 = Pipeline(bundle_dir, backend="auto", precision="int8")
    assert {e.precision for e in fp32._engines.values()} == {"fp32"}
    assert {e.precision for e in int8._engines.values()} == {"int8"}
    assert int8.provenance["precision"] == "int8" and fp32.provenance["precision"] == "fp32"
    stack = studies[0][1].ed
    a, b = fp32.segment(stack).labels, int8.segment(stack).labels
    assert a.shape == b.shape and np.mean(a == b) > 0.99


def test_int8_needs_int8_artifacts_and_leaves_the_others_in_fp32(source: Path, quantized, tmp_path: Path):
    with pytest.raises(InputError, match=r"precision 'int8' needs int8 artifacts.*python -m export.quantize"):
        Pipeline(source, precision="int8")
    # only the baseline quantized: the apex model runs fp32 under precision "int8"
    bundle_dir = Path(shutil.copytree(quantized[0], tmp_path / "bundle"))
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    del manifest["models"]["apex"]["artifacts"]["onnx-int8"]
    (bundle_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    engines = Pipeline(bundle_dir, mode="routed", regions_from="caller", precision="int8")._engines
    assert {name: e.precision for name, e in engines.items()} == {"apex": "fp32", "baseline": "int8"}


def test_a_breached_dice_bound_leaves_the_bundle_unchanged(source: Path, studies, tmp_path: Path):
    bundle_dir = Path(shutil.copytree(source, tmp_path / "bundle"))
    before = {p.name: p.read_bytes() for p in bundle_dir.iterdir()}
    images, labels = _prepared(load_bundle(bundle_dir), [synthetic_study(seed=5)])
    # a negative allowance cannot be met (the worst drop is >= 0): the checks run, then refuse
    with pytest.raises(QuantizationError, match=r"more than the -1.0 allowed; the bundle .* is unchanged"):
        quantize_bundle(
            bundle_dir,
            calibration=images,
            calibration_labels=labels,
            check_studies=studies[:1],
            models=["baseline"],
            max_dice_drop=-1.0,
            threads=1,
            log=lambda *a: None,
            method="minmax",
        )
    assert {p.name: p.read_bytes() for p in bundle_dir.iterdir()} == before
    assert not list(tmp_path.glob(".bundle.int8.*"))


def test_bad_inputs_are_refused(source: Path, studies):
    with pytest.raises(
        InputError, match=r"'calibration' must be float32 \(N, 1, 64, 64\), got float32 \(2, 1, 32, 32\)"
    ):
        quantize_bundle(source, calibration=np.zeros((2, 1, 32, 32), np.float32), check_studies=studies)
    with pytest.raises(InputError, match="'models' names 'ghost'"):
        quantize_bundle(
            source, calibration=np.zeros((2, 1, 64, 64), np.float32), check_studies=studies, models=["ghost"]
        )
    with pytest.raises(InputError, match="'check_studies' is empty"):
        quantize_bundle(source, calibration=np.zeros((2, 1, 64, 64), np.float32), check_studies=[])
    with pytest.raises(InputError, match=r"'count' \(--calibration-slices\) must be a positive int, got 0"):
        calibration_slices(load_bundle(source), 0)


def test_int8_parity_on_real_slices_of_the_demo_bundle(shared_data: Path, tmp_path: Path):
    """The demo bundle's trained baseline U-Net, quantized on 16 real training slices (not held
    out) and compared with its fp32 artifact on real held-out slices at the window and the crop."""
    from cmrsdk.io import read_acdc_patient

    acdc = shared_data / "acdc"
    if not (acdc / "training" / HELD_OUT[0]).is_dir():
        pytest.skip(f"ACDC held-out patients not found under {acdc}")
    bundle = load_bundle(DEMO_BUNDLE)
    images, labels, source = calibration_slices(bundle, 16, cache=None, acdc=acdc, seed=0)
    assert images.shape == (16, 1, 224, 224) and "ACDC training patients" in source
    assert not any(h in source for h in HELD_OUT)
    out = quantize_model(bundle.models["baseline"].artifacts["onnx"].path, tmp_path / "baseline.int8.onnx", [images])
    with pytest.raises(InputError, match=r"'method' 'percentile' calibrates at one \(H, W\)"):
        quantize_model(
            bundle.models["baseline"].artifacts["onnx"].path,
            tmp_path / "x.onnx",
            [images, _heart_crop(images, labels, (128, 128))],
        )
    held_out = check_slices(bundle, [read_acdc_patient(acdc / "training" / HELD_OUT[0])], count=12)
    assert sorted(held_out) == [(128, 128), (224, 224)]
    parity = int8_parity(bundle.models["baseline"].artifacts["onnx"].path, out, held_out, threads=1)
    # measured on the 1st run: decided agreement 0.99+ at both sizes; a broken quantization (wrong
    # ranges, an unquantized graph) falls far below or shows no difference at all
    assert parity["passed"] and parity["decided_argmax_agreement"] >= INT8_MIN_DECIDED_AGREEMENT
    assert all(s["argmax_agreement"] >= 0.98 for s in parity["sizes"])
    assert 1e-3 < parity["max_abs_diff"] <= 1.0  # it really runs in int8, and still gives probabilities
    assert out.stat().st_size < 0.5 * bundle.models["baseline"].artifacts["onnx"].path.stat().st_size
    # 7-bit weights (reduce_range): int16 pair sums cannot overflow on CPUs without VNNI, where
    # 8-bit weights gave a decided agreement of 0.926 (an AVX2 CPU, session 10)
    import onnx
    from onnx import numpy_helper

    weights = [
        numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer if t.data_type == onnx.TensorProto.INT8
    ]
    assert weights and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64


def test_an_int8_file_loaded_alone_says_so(quantized):
    from cmrsdk.engines import create_engine

    bundle_dir, _ = quantized
    assert create_engine(bundle_dir / "apex.int8.onnx").precision == "int8"
    assert create_engine(bundle_dir / "apex.onnx").precision == "fp32"


def test_the_command_reports_errors_and_changes_nothing(source: Path, capsys):
    from export.quantize import main

    before = (source / MANIFEST_NAME).read_bytes()
    assert main([str(source), "--calibration-slices", "0"]) == 1
    assert "'count' (--calibration-slices) must be a positive int, got 0" in capsys.readouterr().err
    assert main([str(source), "--cache", str(source / "none"), "--acdc", str(source / "none")]) == 1
    assert "no calibration slices" in capsys.readouterr().err
    assert (source / MANIFEST_NAME).read_bytes() == before


def test_a_2_5d_model_is_refused_by_name(tmp_path: Path) -> None:
    """int8 calibration draws single slices: a 2.5D U-Net is refused before anything is written."""
    from _bundles import build_neighbour_bundle

    from export.quantize import quantize_bundle

    bundle = build_neighbour_bundle(tmp_path / "neighbour", 1, formats=("onnx",))  # int8 reads the ONNX only
    before = (bundle / MANIFEST_NAME).read_bytes()
    with pytest.raises(InputError, match=r"model 'baseline' .* is 2\.5D \(3 input channels\): int8 .* 2D models only"):
        quantize_bundle(
            bundle,
            calibration=np.zeros((2, 1, 96, 96), np.float32),
            check_studies=[("synthetic", synthetic_study(seed=0))],
        )
    assert (bundle / MANIFEST_NAME).read_bytes() == before


def test_moved_slices_name_the_slices_that_decide_a_gate():
    """A structure drawn by one precision only (Dice 0 against NaN) and a large boundary change
    are listed, a structure drawn by one only first; a small change and a slice empty in both are not."""
    from cmrsdk.evaluation.stats import SliceScore
    from export.quantize import moved_slices, moved_text

    nan = float("nan")

    def score(method, index, dice, pixels):
        return SliceScore(method, "patient030", "ES", index, 2, 0.5, dice, (10, 10, 0), pixels)

    scores = [
        score("fp32", 5, (0.95, 0.90, nan), (100, 80, 0)),
        score("bf16", 5, (0.95, 0.89, 0.0), (100, 80, 31)),  # RV drawn in bf16 only
        score("fp32", 6, (0.90, 0.80, nan), (100, 80, 0)),
        score("bf16", 6, (0.75, 0.80, nan), (90, 80, 0)),  # LVBP -15 points
        score("fp32", 7, (nan, nan, nan), (0, 0, 0)),
        score("bf16", 7, (nan, nan, nan), (0, 0, 0)),
    ]
    moved = moved_slices(scores, "fp32", "bf16")
    assert [(m["slice"], m["label"]) for m in moved] == [(5, "RVBP"), (6, "LVBP")]
    assert moved[0] == {
        "case": "patient030",
        "phase": "ES",
        "slice": 5,
        "region": "middle",
        "label": "RVBP",
        "fp32": None,
        "bf16": 0.0,
        "fp32_pixels": 0,
        "bf16_pixels": 31,
    }
    assert moved[1]["fp32"] == 90.0 and moved[1]["bf16"] == 75.0
    text = moved_text({"reference": "fp32", "precision": "bf16", "moved": moved})
    assert "patient030 ES slice 5 (middle) RVBP: None -> 0.0 (0 -> 31 px)" in text
    assert moved_text({"reference": "fp32", "precision": "bf16", "moved": []}) == ""
