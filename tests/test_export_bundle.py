"""export.bundle and export.parity: artifacts that match their eager models, or no bundle at all."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from torch import nn  # noqa: E402

from cmrsdk.bundle import MANIFEST_NAME, Preprocessing, load_bundle  # noqa: E402
from cmrsdk.engines import create_engine  # noqa: E402
from cmrsdk.errors import InputError, WriteError  # noqa: E402
from export.bundle import ONNX_OPSET, ProbabilityModel, build_bundle, main  # noqa: E402
from _bundles import built_once  # noqa: E402
from export.models import get_model, unet  # noqa: E402
from export.parity import ParityError, check_parity, compare, eager_probabilities, parity_inputs  # noqa: E402

SIZE = (32, 32)
PRE = Preprocessing((1.5625, 1.5625), SIZE, "robust_zscore")


class TwoHeads(nn.Module):
    """Returns (full-resolution logits, half-resolution logits), as a deep-supervised net may."""

    def __init__(self) -> None:
        super().__init__()
        self.full = nn.Conv2d(1, 4, 3, padding=1)
        self.coarse = nn.Conv2d(1, 4, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.full(x), self.coarse(x)


class TinyClassifier(nn.Module):
    """A small region classifier, (N, 1, H, W) -> (N, 4) logits, with batch norm in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def _built_models() -> dict:
    """The two models of `built`, initialised from seed 7."""
    torch.manual_seed(7)
    seg = unet(features=(8, 16, 32), deep_supervision=True)  # heads exist, must not be exported
    cls = TinyClassifier()
    return {
        "baseline": (
            seg,
            {
                "kind": "segmentation",
                "architecture": "unet(features=(8, 16, 32))",
                "training": {"iterations": 10},
                "metrics": {"dice_mean": 0.25},
            },
        ),
        "regions": (cls, {"kind": "classifier"}),
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(bundle, models): the bundle of `_built_models`, built once for the run (`built_once`) and
    read only, and the eager models it was exported from (their weights saved beside it, so a
    pytest-xdist worker that did not build it compares against the very weights exported)."""

    def build(folder: Path) -> None:
        models = _built_models()
        build_bundle(models, {r: "baseline" for r in range(4)}, PRE, folder / "bundle")
        torch.save({name: net.state_dict() for name, (net, _) in models.items()}, folder / "eager.pt")

    folder = built_once(tmp_path_factory, "export-bundle-built", build)
    models = _built_models()
    for name, state in torch.load(folder / "eager.pt", weights_only=True).items():
        models[name][0].load_state_dict(state)
    return folder / "bundle", models


def test_manifest_records_what_the_runtime_and_an_auditor_need(built):
    path, _ = built
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    assert manifest["format"] == "cmrsdk-bundle" and manifest["format_version"] == 1
    assert {"cmrsdk", "torch", "onnx", "onnxruntime", "python"} <= set(manifest["versions"])
    assert manifest["classifier"] == "regions"
    assert manifest["routing"] == {"0": "baseline", "1": "baseline", "2": "baseline", "3": "baseline"}
    assert manifest["preprocessing"] == {
        "target_spacing": [1.5625, 1.5625],
        "size": [32, 32],
        "normalization": "robust_zscore",
    }
    seg, cls = manifest["models"]["baseline"], manifest["models"]["regions"]
    assert seg["output_shape"] == ["N", 4, 32, 32] and cls["output_shape"] == ["N", 4]
    assert seg["input_shape"] == cls["input_shape"] == ["N", 1, 32, 32]
    assert seg["training"] == {"iterations": 10} and seg["metrics"] == {"dice_mean": 0.25}
    assert seg["onnx_opset"] >= ONNX_OPSET
    for record in (seg, cls):
        assert sorted(record["artifacts"]) == ["onnx", "torchscript"]
        checked = {p["artifact"] for p in record["parity"] if p["device"] == "cpu"}
        assert checked == {"onnx", "torchscript"}
        for p in record["parity"]:
            assert p["passed"] and p["max_abs_diff"] <= 1e-4 and p["argmax_agreement"] == 1.0
            assert len(p["batch_sizes"]) >= 2  # dynamic batch exercised
    if not torch.cuda.is_available():
        assert "no CUDA GPU" in manifest["skipped"]["tensorrt"] or "torch-tensorrt" in manifest["skipped"]["tensorrt"]
    assert load_bundle(path).classifier == "regions"


def test_onnx_artifact_has_dynamic_batch_and_one_output(built):
    path, _ = built
    proto = onnx.load(str(path / "baseline.onnx"))
    assert [o.name for o in proto.graph.output] == ["probabilities"]  # no deep-supervision outputs
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= ONNX_OPSET


def test_artifacts_carry_no_export_machine_paths(built):
    """torch writes its source paths into TorchScript's .debug_pkl entries and ONNX nodes' stack
    traces (the shipped 0.7.0 artifacts carried them): the bundle's artifacts hold neither."""
    import zipfile

    from export.bundle import ONNX_STACK_TRACE

    path, _ = built
    with zipfile.ZipFile(path / "baseline.pt") as archive:
        assert archive.namelist() and not [n for n in archive.namelist() if n.endswith(".debug_pkl")]
    proto = onnx.load(str(path / "baseline.onnx"))
    assert proto.graph.node and not [p for n in proto.graph.node for p in n.metadata_props if p.key == ONNX_STACK_TRACE]


def test_artifacts_reproduce_eager_probabilities(built):
    path, models = built
    x = np.random.default_rng(11).standard_normal((5, 1, *SIZE)).astype(np.float32)
    for name, (net, _) in models.items():
        with torch.inference_mode():
            expected = torch.softmax(net.eval()(torch.from_numpy(x)), dim=1).numpy()
        for suffix in (".pt", ".onnx"):
            np.testing.assert_allclose(create_engine(path / f"{name}{suffix}").run(x), expected, atol=1e-4, rtol=0)


def test_only_the_first_output_of_a_multi_output_net_is_exported(tmp_path):
    torch.manual_seed(2)
    net = TwoHeads()
    path = build_bundle({"m": (net, {"kind": "segmentation"})}, {0: "m"}, PRE, tmp_path / "b", formats=("onnx",))
    x = np.random.default_rng(3).standard_normal((3, 1, *SIZE)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(net.full(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(load_bundle(path).engine("m").run(x), expected, atol=1e-5, rtol=0)


def _acdc_slices(root: Path, size: tuple[int, int]) -> np.ndarray:
    """Real ACDC slices, z-scored and centre-cropped to ``size``: float32 (Z, 1, H, W)."""
    nib = pytest.importorskip("nibabel")
    volume = np.asarray(nib.load(root / "acdc/training/patient001/patient001_frame01.nii.gz").dataobj, dtype=np.float32)
    stack = np.moveaxis(volume, 2, 0)  # NIfTI (X, Y, Z) -> (Z, X, Y); the axis order does not matter here
    y0, x0 = (stack.shape[1] - size[0]) // 2, (stack.shape[2] - size[1]) // 2
    crop = stack[:, y0 : y0 + size[0], x0 : x0 + size[1]]
    crop = (crop - crop.mean()) / crop.std()
    return np.ascontiguousarray(crop[:, None], dtype=np.float32)


def test_parity_runs_on_real_slices(shared_data, tmp_path):
    torch.manual_seed(4)
    examples = _acdc_slices(shared_data, (64, 64))
    path = build_bundle(
        {"m": (unet(features=(4, 8, 16)), {"kind": "segmentation"})},
        {0: "m"},
        Preprocessing((1.5, 1.5), (64, 64), "zscore"),
        tmp_path / "b",
        examples,
        formats=("onnx",),
    )
    parity = json.loads((path / MANIFEST_NAME).read_text())["models"]["m"]["parity"]
    assert all(p["real_slices"] == len(examples) and p["slices"] > len(examples) and p["passed"] for p in parity)


def test_compare_against_hand_computed_values():
    ref = np.zeros((2, 3, 1, 2), np.float32)
    ref[:, 0] = 1.0  # class 0 everywhere
    cand = ref.copy()
    cand[1, 0, 0, 1], cand[1, 2, 0, 1] = 0.25, 0.75  # one of four pixels flips to class 2
    diff, agreement = compare(ref, cand)
    assert diff == pytest.approx(0.75) and agreement == pytest.approx(0.75)
    with pytest.raises(ParityError, match=r"output shape \(2, 3\).*\(2, 3, 1, 2\)"):
        compare(ref, np.zeros((2, 3), np.float32))


def test_parity_breach_is_an_error(built):
    path, models = built
    torch.manual_seed(9)
    slices, real = parity_inputs(SIZE)
    other = eager_probabilities(ProbabilityModel(unet(features=(8, 16, 32))).eval(), slices)
    engine = create_engine(path / "baseline.onnx")
    # ONNX fp32 must keep the argmax (>= 99.9 %) besides a 1e-3 bound (export/parity.py says why)
    with pytest.raises(
        ParityError, match=r"baseline\.onnx: onnx \(fp32, cpu\) fails parity.*argmax agreement 0\.\d+ < 0\.999"
    ):
        check_parity("onnx", engine, other, slices, real)
    good = eager_probabilities(ProbabilityModel(models["baseline"][0]).eval(), slices)
    assert check_parity("onnx", engine, good, slices, real).passed


def test_build_refuses_bad_requests_and_leaves_nothing(tmp_path):
    net = unet(features=(4, 8))
    seg = {"m": (net, {"kind": "segmentation"})}
    with pytest.raises(InputError, match=r"'formats'.*\('caffe',\)"):
        build_bundle(seg, {0: "m"}, PRE, tmp_path / "a", formats=("caffe",))
    with pytest.raises(InputError, match=r"info 'kind' is 'detector'"):
        build_bundle({"m": (net, {"kind": "detector"})}, {0: "m"}, PRE, tmp_path / "a")
    with pytest.raises(InputError, match=r"'routing' maps 1 to 'ghost'"):
        build_bundle(seg, {1: "ghost"}, PRE, tmp_path / "a")
    with pytest.raises(InputError, match=r"model 'c' \(classifier\) must output \(N, R\), got \(2, 4, 32, 32\)"):
        build_bundle({"c": (net, {"kind": "classifier"})}, {}, PRE, tmp_path / "a")
    assert list(tmp_path.iterdir()) == []  # no half-written bundle or staging directory
    (tmp_path / "a").mkdir()
    with pytest.raises(WriteError, match=r"'out_dir' .*a already exists"):
        build_bundle(seg, {0: "m"}, PRE, tmp_path / "a")


def test_command_line_builds_a_bundle_from_a_training_checkpoint(tmp_path, capsys):
    torch.manual_seed(5)
    kwargs = {"features": [4, 8, 16], "deep_supervision": True}
    net = get_model("unet", **kwargs)
    torch.save(
        {
            "task": "segmentation",
            "model": {"name": "unet", "kwargs": kwargs},
            "state_dict": net.state_dict(),
            "iteration": 3,
            "config": {"lr": 0.01},
            "metrics": {"dice_mean": 0.1},
            "preprocessing": {"target_spacing": [1.25, 1.25], "size": 32, "normalization": "zscore"},
        },
        tmp_path / "last.pt",
    )
    assert (
        main(["--checkpoints", f"baseline={tmp_path / 'last.pt'}", "--formats", "onnx", "-o", str(tmp_path / "b")]) == 0
    )
    assert "baseline           onnx  cpu fp32" in capsys.readouterr().out
    bundle = load_bundle(tmp_path / "b")
    assert bundle.routing == {0: "baseline", 1: "baseline", 2: "baseline", 3: "baseline"}
    assert bundle.preprocessing == Preprocessing((1.25, 1.25), (32, 32), "zscore")
    assert bundle.models["baseline"].record["metrics"] == {"dice_mean": 0.1}
    x = np.random.default_rng(6).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        expected = torch.softmax(net.eval()(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(bundle.engine("baseline").run(x), expected, atol=1e-4, rtol=0)
    # a file that is not a checkpoint fails with exit status 1 and the file named
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoints", f"baseline={tmp_path / 'bad.pt'}", "-o", str(tmp_path / "c")]) == 1
    assert "bad.pt" in capsys.readouterr().err


def test_decided_agreement_ignores_near_ties_only():
    from export.parity import decided_agreement

    # pixel 0 decided (0.9 vs 0.1), pixel 1 a near-tie (0.51 vs 0.49), pixel 2 decided (0.2 vs 0.8)
    ref = np.array([[[0.9, 0.51, 0.2]], [[0.1, 0.49, 0.8]]], np.float32).transpose(1, 0, 2)  # (1, 2, 3)
    flipped_tie = ref.copy()
    flipped_tie[0, :, 1] = [0.49, 0.51]
    assert decided_agreement(ref, flipped_tie) == 1.0
    flipped_decided = ref.copy()
    flipped_decided[0, :, 0] = [0.1, 0.9]
    assert decided_agreement(ref, flipped_decided) == 0.5  # one of the two decided pixels flipped
    assert decided_agreement(np.full((1, 2, 3), 0.5, np.float32), flipped_decided) == 1.0  # nothing decided


# -- TensorRT sizes and parity at the heart crop (issue 16) -------------------------------------


def test_tensorrt_is_compiled_for_the_heart_crop_up_to_the_window():
    from export.bundle import tensorrt_shapes

    assert tensorrt_shapes((224, 224), (128, 128), 64) == {
        "min_shape": (1, 1, 128, 128),
        "opt_shape": (16, 1, 128, 128),
        "max_shape": (64, 1, 224, 224),
    }
    # no crop (the classifier, or a bundle without one): the window alone; a small max_batch caps opt
    assert tensorrt_shapes((224, 224), None, 8) == {
        "min_shape": (1, 1, 224, 224),
        "opt_shape": (8, 1, 224, 224),
        "max_shape": (8, 1, 224, 224),
    }
    with pytest.raises(InputError, match=r"'heart_crop' \(256, 128\) must fit in 'size' \(224, 224\)"):
        tensorrt_shapes((224, 224), (256, 128), 64)


def test_a_bundle_is_rebuilt_from_its_own_archives_with_one_model_replaced(tmp_path, capsys):
    """`--checkpoints name=<bundle>/<model>.pt` takes a model from a built bundle (its training
    record from the manifest beside it) beside a training checkpoint: the shipped bundle can be
    rebuilt with one U-Net replaced on a machine that has only the repository."""
    torch.manual_seed(7)
    kwargs = {"features": [4, 8, 16], "deep_supervision": True}
    nets = {name: get_model("unet", **kwargs) for name in ("baseline", "apex")}
    for name, net in nets.items():
        torch.save(
            {
                "task": "segmentation",
                "model": {"name": "unet", "kwargs": kwargs},
                "state_dict": net.state_dict(),
                "iteration": 11,
                "config": {"model": {"name": "unet", "kwargs": kwargs}},
                "metrics": {},
                "preprocessing": {"target_spacing": [1.25, 1.25], "size": 32, "normalization": "zscore"},
            },
            tmp_path / f"{name}.ckpt",
        )
    first = ["--checkpoints", *(f"{n}={tmp_path / f'{n}.ckpt'}" for n in nets), "--routing", "3=apex"]
    assert main([*first, "--formats", "torchscript", "-o", str(tmp_path / "b")]) == 0  # the archives reused
    torch.manual_seed(8)
    wider = get_model("unet", features=[4, 8, 24], deep_supervision=True)
    torch.save(
        {
            "task": "segmentation",
            "model": {"name": "unet", "kwargs": {"features": [4, 8, 24], "deep_supervision": True}},
            "state_dict": wider.state_dict(),
            "iteration": 5,
            "config": {},
            "metrics": {},
            "preprocessing": {"target_spacing": [1.25, 1.25], "size": 32, "normalization": "zscore"},
        },
        tmp_path / "wide.ckpt",
    )
    again = ["--checkpoints", f"baseline={tmp_path / 'wide.ckpt'}", f"apex={tmp_path / 'b' / 'apex.pt'}"]
    assert main([*again, "--routing", "3=apex", "--formats", "onnx", "-o", str(tmp_path / "c")]) == 0
    rebuilt = load_bundle(tmp_path / "c")
    assert rebuilt.models["apex"].record["training"]["iteration"] == 11
    assert rebuilt.models["apex"].record["training"]["from_bundle"] == str(tmp_path / "b" / "apex.pt")
    assert rebuilt.preprocessing == Preprocessing((1.25, 1.25), (32, 32), "zscore")
    x = np.random.default_rng(9).standard_normal((2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(  # the same weights: ONNX against the TorchScript archive they came from
        rebuilt.engine("apex", backend="onnx").run(x),
        load_bundle(tmp_path / "b").engine("apex").run(x),
        atol=1e-5,
        rtol=0,
    )
    # an archive away from its manifest is refused, naming the file
    lone = tmp_path / "lone" / "apex.pt"
    lone.parent.mkdir()
    shutil.copy(tmp_path / "b" / "apex.pt", lone)
    capsys.readouterr()
    assert main(["--checkpoints", f"apex={lone}", "-o", str(tmp_path / "d")]) == 1
    assert "apex.pt" in capsys.readouterr().err and not (tmp_path / "d").exists()
