"""cmrsdk.engines: every engine this machine can run gives the eager model's probabilities.

The reference is the eager PyTorch model run in float64 (independent of every backend); the
artifacts come from export.bundle.build_bundle, so this also covers the export wrapper.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from _threads import thread_masks  # noqa: E402

from cmrsdk import DEMO_BUNDLE  # noqa: E402
from cmrsdk.bundle import Preprocessing, load_bundle  # noqa: E402
from cmrsdk.cpus import usable_cores  # noqa: E402
from cmrsdk.engines import (  # noqa: E402
    AUTO_ORDER,
    Engine,
    available_backends,
    backend_missing,
    create_engine,
)
from cmrsdk.errors import BackendUnavailableError, BundleError, InputError  # noqa: E402
from export.bundle import ProbabilityModel, build_bundle  # noqa: E402
from export.models import unet  # noqa: E402
from export.parity import FP16_MIN_ARGMAX_AGREEMENT, FP32_MAX_ABS_DIFF, decided_agreement, eager_probabilities  # noqa: E402

SIZE = (32, 32)


class TinyClassifier(nn.Module):
    """A small region classifier: (N, 1, H, W) -> (N, 4) logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.features(x), 1))


def _engine_cases() -> list[tuple[str, str, dict]]:
    # AOTInductor compiles C++ for each model (minutes on this CPU): tests/test_export_aoti.py
    # runs its engine through the same checks (batch sizes, sizes, empty batch, threads)
    cases = [(b, "cpu", {}) for b in available_backends("cpu") if b != "aoti"]
    for backend in available_backends("cuda"):
        cases.append((backend, "cuda", {}))
        if backend == "torchscript":
            cases += [(backend, "cuda", {"fp16": True}), (backend, "cuda", {"cuda_graphs": True})]
    return cases


CASES = _engine_cases()
IDS = [f"{b}-{d}-{'-'.join(o) or 'fp32'}" for b, d, o in CASES]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    torch.manual_seed(0)
    seg = unet(features=(8, 16, 32))
    cls = TinyClassifier()
    path = build_bundle(
        {"seg": (seg, {"kind": "segmentation"}), "cls": (cls, {"kind": "classifier"})},
        {0: "seg"},
        Preprocessing((1.5, 1.5), SIZE, "robust_zscore"),
        tmp_path_factory.mktemp("b") / "bundle",
        formats=("torchscript", "onnx", "tensorrt"),
        max_batch=32,
    )
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 1, *SIZE)).astype(np.float32)
    refs = {name: eager_probabilities(ProbabilityModel(net).eval(), x) for name, net in (("seg", seg), ("cls", cls))}
    return load_bundle(path), x, refs


def _artifact(bundle, model: str, backend: str, precision: str = "fp32"):
    key = {"tensorrt": f"tensorrt-{precision}", "openvino": "onnx"}.get(
        backend, backend
    )  # OpenVINO reads the ONNX file
    return bundle.models[model].artifacts[key].path


@pytest.mark.parametrize(("backend", "device", "options"), CASES, ids=IDS)
@pytest.mark.parametrize("model", ["seg", "cls"])
def test_engine_matches_eager_for_batch_sizes_1_to_32(built, backend, device, options, model):
    bundle, x, refs = built
    engine = create_engine(_artifact(bundle, model, backend), backend, device, **options)
    assert isinstance(engine, Engine) and engine.backend == backend
    ref = refs[model]
    fp16 = options.get("fp16", False)
    for n in range(1, 33):
        out = engine.run(x[:n])
        assert out.dtype == np.float32 and out.shape == ref[:n].shape
        if fp16 or device == "cuda":
            # reduced-precision math (fp16; TF32 convolutions under fp32 on CUDA): the export's
            # parity rule, decided pixels agree (an H100 run flipped 0.2 % of pixels, near-ties)
            agreement = decided_agreement(ref[:n], out)
            assert agreement >= FP16_MIN_ARGMAX_AGREEMENT, (n, agreement)
            assert np.max(np.abs(out - ref[:n])) < 0.05
        else:
            np.testing.assert_allclose(out, ref[:n], atol=FP32_MAX_ABS_DIFF, rtol=0)
    # probabilities: non-negative and summing to one over the class axis
    np.testing.assert_allclose(engine.run(x).sum(axis=1), 1.0, atol=1e-3 if fp16 else 1e-5)


@pytest.mark.parametrize(("backend", "device", "options"), CASES, ids=IDS)
def test_empty_batch_returns_empty_probabilities(built, backend, device, options):
    bundle, _, _ = built
    seg = create_engine(_artifact(bundle, "seg", backend), backend, device, **options)
    cls = create_engine(_artifact(bundle, "cls", backend), backend, device, **options)
    empty = np.zeros((0, 1, *SIZE), dtype=np.float32)
    assert seg.run(empty).shape == (0, 4, *SIZE)
    assert cls.run(empty).shape == (0, 4)
    assert seg.run(empty).dtype == np.float32


@pytest.mark.parametrize(("backend", "device", "options"), CASES, ids=IDS)
def test_run_is_safe_from_several_threads(built, backend, device, options):
    bundle, x, _ = built
    engine = create_engine(_artifact(bundle, "seg", backend), backend, device, **options)
    expected = [engine.run(x[i : i + 4]) for i in range(0, 32, 4)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = engine.run(x[4 * i : 4 * i + 4])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(8):
        np.testing.assert_array_equal(results[i], expected[i])


def test_bad_batches_are_refused(built):
    bundle, x, _ = built
    engine = create_engine(_artifact(bundle, "seg", "onnx"))
    with pytest.raises(InputError, match="dtype must be float32.*float64"):
        engine.run(x.astype(np.float64))
    with pytest.raises(InputError, match=r"shape \(N, channels, H, W\).*\(32, 32\)"):
        engine.run(x[0, 0])
    with pytest.raises(InputError, match=r"\(N, 1, H, W\): seg.onnx reads 1 channel.*\(2, 2, 32, 32\)"):
        engine.run(np.zeros((2, 2, *SIZE), np.float32))
    with pytest.raises(InputError, match="numpy array.*list"):
        engine.run([[0.0]])


def test_auto_backend_comes_from_the_suffix(built, tmp_path):
    bundle, x, refs = built
    assert create_engine(_artifact(bundle, "seg", "onnx")).backend == "onnx"
    assert create_engine(_artifact(bundle, "seg", "torchscript")).backend == "torchscript"
    odd = tmp_path / "model.bin"
    odd.write_bytes(b"\0")
    with pytest.raises(InputError, match=r"model\.bin.*suffix"):
        create_engine(odd)
    with pytest.raises(InputError, match="'backend' must be.*'caffe'"):
        create_engine(_artifact(bundle, "seg", "onnx"), "caffe")
    with pytest.raises(InputError, match="'device' must be.*'tpu'"):
        create_engine(_artifact(bundle, "seg", "onnx"), device="tpu")
    with pytest.raises(InputError, match=r"does not accept the options \['fp16'\]; it takes \[.*'intra_op_threads'"):
        create_engine(_artifact(bundle, "seg", "onnx"), fp16=True, intra_op_threads=1)


def test_a_type_error_inside_an_engine_is_not_called_an_unknown_option(built, monkeypatch):
    import cmrsdk.engines.onnx as onnx_engine

    class Broken(onnx_engine.OnnxEngine):
        def __init__(self, path, device="cpu", *, intra_op_threads=None):
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")  # a bug while loading

    monkeypatch.setattr(onnx_engine, "OnnxEngine", Broken)
    bundle, _, _ = built
    with pytest.raises(TypeError, match="unsupported operand"):
        create_engine(_artifact(bundle, "seg", "onnx"), intra_op_threads=1)
    with pytest.raises(InputError, match=r"does not accept the options \['spinning'\]"):
        create_engine(_artifact(bundle, "seg", "onnx"), spinning=True)


def test_an_artifact_of_another_format_is_a_bundle_error(built):
    bundle, _, _ = built
    with pytest.raises(BundleError, match=r"seg\.pt.*ONNX"):
        create_engine(_artifact(bundle, "seg", "torchscript"), "onnx")
    with pytest.raises(BundleError, match=r"seg\.onnx.*TorchScript"):
        create_engine(_artifact(bundle, "seg", "onnx"), "torchscript")


def test_onnx_options(built):
    bundle, x, refs = built
    path = _artifact(bundle, "seg", "onnx")
    engine = create_engine(path, intra_op_threads=1, inter_op_threads=1, optimization="disable")
    np.testing.assert_allclose(engine.run(x[:5]), refs["seg"][:5], atol=FP32_MAX_ABS_DIFF, rtol=0)
    with pytest.raises(InputError, match="'optimization'.*'max'"):
        create_engine(path, optimization="max")
    with pytest.raises(InputError, match="'intra_op_threads'.*0"):
        create_engine(path, intra_op_threads=0)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning shows only with two CPUs or more")
def test_onnx_threads_are_not_pinned_to_the_first_cores():
    """Left to choose its thread count, ONNX Runtime pinned its intra-op worker to CPU 1 of two, so
    two processes (a user's own pool of pipelines) shared that core. With no count given the engine
    passes one per core of the mask, and every thread keeps the process's mask."""
    assert create_engine(DEMO_BUNDLE / "baseline.onnx", "onnx")._session.get_session_options().intra_op_num_threads == (
        usable_cores()
    )
    mask, seen = thread_masks(DEMO_BUNDLE / "baseline.onnx", "onnx")
    assert seen == [mask], f"threads narrowed to CPUs {seen} of {mask}"


def test_torchscript_cpu_refuses_cuda_only_options(built):
    bundle, _, _ = built
    path = _artifact(bundle, "seg", "torchscript")
    with pytest.raises(InputError, match="'fp16'.*'cuda' only"):
        create_engine(path, "torchscript", "cpu", fp16=True)
    with pytest.raises(InputError, match="'cuda_graphs'.*'cuda' only"):
        create_engine(path, "torchscript", "cpu", cuda_graphs=True)


def test_backends_report_what_is_missing(built, tmp_path):
    assert available_backends("cpu") == AUTO_ORDER["cpu"]  # onnxruntime and torch are installed here
    assert (
        backend_missing("tensorrt", "cpu") == "TensorRT needs a CUDA GPU: it runs on device 'cuda' only, not on the CPU"
    )
    fake = tmp_path / "m.ep"
    fake.write_bytes(b"x")
    if backend_missing("tensorrt", "cuda") is not None:
        with pytest.raises(BackendUnavailableError, match="tensorrt.*(torch-tensorrt is not installed|no CUDA GPU)"):
            create_engine(fake, device="cuda")
    with pytest.raises(BackendUnavailableError, match="'tensorrt' on device 'cpu'.*'cuda' only"):
        create_engine(fake, "tensorrt", "cpu")
    if not torch.cuda.is_available():
        assert available_backends("cuda") == ()
        bundle, _, _ = built
        with pytest.raises(BackendUnavailableError, match="no CUDA GPU"):
            create_engine(_artifact(bundle, "seg", "torchscript"), device="cuda")
    if backend_missing("onnx", "cuda") is not None:
        with pytest.raises(BackendUnavailableError, match="onnxruntime-gpu"):
            create_engine(built[0].models["seg"].artifacts["onnx"].path, device="cuda")


def test_importing_the_runtime_does_not_import_torch():
    code = (
        "import sys, cmrsdk, cmrsdk.engines, cmrsdk.bundle, cmrsdk.engines.onnx; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'torch_tensorrt') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- batches above max_batch (issue 16) ---------------------------------------------------------


class _Recording(Engine):
    """An engine that answers each slice's mean and records the batch sizes it was called with."""

    backend = "onnx"

    def __init__(self, max_batch):
        super().__init__("memory", "cpu", "fp32", max_batch)
        self.calls: list[int] = []

    def _infer(self, batch):
        self.calls.append(batch.shape[0])
        return batch.mean(axis=(1, 2, 3))[:, None].repeat(4, axis=1)


def test_batches_above_max_batch_are_split_in_order():
    x = np.random.default_rng(7).standard_normal((10, 1, 4, 4)).astype(np.float32)
    engine = _Recording(max_batch=3)
    out = engine.run(x)
    assert engine.calls == [3, 3, 3, 1]
    np.testing.assert_array_equal(out, _Recording(None).run(x))
    np.testing.assert_allclose(out[:, 0], x.mean(axis=(1, 2, 3)), rtol=1e-6)
    engine.calls.clear()
    engine.run(x[:3])
    assert engine.calls == [3]  # at the limit: one call
    with pytest.raises(InputError, match="'max_batch' must be a positive int or None, got 0"):
        _Recording(max_batch=0)


@pytest.mark.parametrize("backend", [b for b in available_backends("cpu") if b != "aoti"])  # aoti: test_export_aoti.py
def test_split_batches_equal_unsplit_results(built, backend):
    bundle, x, refs = built
    whole = create_engine(_artifact(bundle, "seg", backend), backend)
    split = create_engine(_artifact(bundle, "seg", backend), backend, max_batch=5)
    assert split.max_batch == 5 and whole.max_batch is None
    out = split.run(x[:23])
    assert out.shape == (23, 4, *SIZE)
    np.testing.assert_allclose(out, whole.run(x[:23]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(out, refs["seg"][:23], atol=FP32_MAX_ABS_DIFF, rtol=0)


def test_onnx_precision_is_recorded_and_checked(built):
    path = _artifact(built[0], "seg", "onnx")
    assert create_engine(path, precision="int8").precision == "int8"
    with pytest.raises(InputError, match="'precision' of the 'onnx' backend must be 'fp32' or 'int8', got 'fp16'"):
        create_engine(path, precision="fp16")


def test_thread_options_name_each_runtime_s_own_setting(built):
    from cmrsdk.engines import thread_options

    assert thread_options("onnx", 2) == {"intra_op_threads": 2}
    assert thread_options("openvino", 1) == {"threads": 1}
    assert thread_options("torchscript", 2) == {} and thread_options("onnx", None) == {}
    # and each engine accepts what it is given
    for backend in ("onnx", "openvino"):
        if backend_missing(backend) is None:
            create_engine(_artifact(built[0], "seg", backend), backend, **thread_options(backend, 1))


def test_a_torchscript_engine_used_before_fork_refuses_to_run_in_the_child(built):
    """torch's thread pool does not survive fork: the child's first call used to hang for ever;
    it now raises, naming the cure ('spawn')."""
    from _fork import call_in_forked_child

    bundle, x, refs = built
    engine = create_engine(_artifact(bundle, "seg", "torchscript"), "torchscript")
    engine.run(x[:4])  # the parent's thread pool is running
    answer = call_in_forked_child(engine, x[:4])
    assert answer.startswith("BackendUnavailableError: the 'torchscript' engine of seg.pt"), answer
    assert "does not survive fork" in answer and "'spawn'" in answer
    # the parent's engine is unharmed
    np.testing.assert_allclose(engine.run(x[:4]), refs["seg"][:4], atol=FP32_MAX_ABS_DIFF, rtol=0)
