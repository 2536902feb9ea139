"""The OpenVINO engine on the shipped U-Net: fp32 parity with ONNX Runtime, bf16 within bounds,
the pipeline's bf16 choice and its per-backend Dice record (tests/test_engines.py runs it through
the generic engine checks on a small exported U-Net)."""

from __future__ import annotations

import functools
import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")

from cmrsdk import DEMO_BUNDLE, Pipeline  # noqa: E402
from cmrsdk.bundle import MANIFEST_NAME, bf16_record_key, load_bundle  # noqa: E402
from cmrsdk.engines import create_engine  # noqa: E402
from cmrsdk.engines.openvino import openvino_bf16_missing  # noqa: E402
from cmrsdk.errors import BackendUnavailableError, BundleError, CmrWarning, InputError  # noqa: E402
from cmrsdk.phantom import cine_phantom  # noqa: E402
from cmrsdk.preprocess import prepare_slices  # noqa: E402

from _threads import thread_masks  # noqa: E402

needs_bf16 = pytest.mark.skipif(openvino_bf16_missing() is not None, reason=str(openvino_bf16_missing()))
ONNX = DEMO_BUNDLE / "baseline.onnx"


@pytest.fixture(scope="module")
def phantom():
    return cine_phantom(0, n_phases=2)


@pytest.fixture(scope="module")
def slices(phantom) -> np.ndarray:
    """float32 (Z, 1, 224, 224): the phantom's ED stack in the shipped bundle's window."""
    pre = load_bundle(DEMO_BUNDLE).preprocessing
    images, _ = prepare_slices(
        phantom.ed.pixels,
        phantom.ed.spacing[1:],
        target_spacing=pre.target_spacing,
        size=pre.size,
        normalization=pre.normalization,
    )
    return images


@pytest.fixture(scope="module")
def onnx_runtime(slices) -> np.ndarray:
    return create_engine(ONNX, "onnx").run(slices)


def test_fp32_matches_onnx_runtime_on_the_shipped_unet(slices, onnx_runtime):
    engine = create_engine(ONNX, "openvino", threads=1)
    assert (engine.backend, engine.precision, engine.channels) == ("openvino", "fp32", 1)
    out = engine.run(slices)
    assert out.dtype == np.float32 and out.shape == onnx_runtime.shape
    # OpenVINO's own convolution kernels: measured 1.3e-3 at most (ONNX Runtime against
    # TorchScript: 8.5e-5), every label the same
    assert np.abs(out - onnx_runtime).max() < 5e-3
    assert np.mean(out.argmax(1) == onnx_runtime.argmax(1)) > 0.99999  # a near-tie pixel may flip


@needs_bf16
def test_bf16_stays_near_fp32_on_the_shipped_unet(slices, onnx_runtime):
    """Measured (session 15, AVX512-BF16): 99.99 % of probabilities within 0.1, labels 99.98 % the same."""
    engine = create_engine(ONNX, "openvino", precision="bf16")
    assert engine.precision == "bf16"
    out = engine.run(slices)
    diff = np.abs(out - onnx_runtime)
    assert np.allclose(out.sum(axis=1), 1.0, atol=1e-2)
    assert np.quantile(diff, 0.9999) < 0.1 and diff.max() < 0.5
    assert 0.999 < np.mean(out.argmax(1) == onnx_runtime.argmax(1)) < 1.0  # bf16 rounds: not bit-equal


def test_bad_options_and_files_get_one_clear_error(tmp_path: Path):
    with pytest.raises(InputError, match="'precision' of the 'openvino' backend must be 'fp32' or 'bf16', got 'int8'"):
        create_engine(ONNX, "openvino", precision="int8")
    with pytest.raises(InputError, match="'threads' must be a positive int or None, got 0"):
        create_engine(ONNX, "openvino", threads=0)
    with pytest.raises(BackendUnavailableError, match="'openvino' on device 'cuda'.*'cpu' only"):
        create_engine(ONNX, "openvino", "cuda")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(BundleError, match=r"broken\.onnx: cannot be read as an ONNX model by OpenVINO"):
        create_engine(broken, "openvino")
    engine = create_engine(ONNX, "openvino")
    with pytest.raises(InputError, match=r"reads 1 channel"):
        engine.run(np.zeros((1, 3, 128, 128), np.float32))


def test_one_engine_runs_the_full_window_and_the_heart_crop(slices, onnx_runtime):
    """The ONNX graph's dynamic height and width survive: 224 x 224 and 128 x 128 from one compile."""
    engine = create_engine(ONNX, "openvino")
    crop = np.ascontiguousarray(slices[:, :, 48:176, 48:176])
    out = engine.run(crop)
    assert out.shape == (len(slices), 4, 128, 128)
    np.testing.assert_allclose(out, create_engine(ONNX, "onnx").run(crop), atol=5e-3, rtol=0)
    assert engine.run(slices[:3]).shape == (3, 4, 224, 224)


@pytest.fixture()
def bundle_copy(tmp_path: Path) -> Path:
    """The demo bundle without any bf16 record (files hard-linked, the manifest rewritten)."""
    out = tmp_path / "bundle"
    out.mkdir()
    for f in DEMO_BUNDLE.iterdir():
        if f.name != MANIFEST_NAME:
            try:
                (out / f.name).hardlink_to(f)
            except OSError:
                shutil.copy2(f, out / f.name)
    manifest = json.loads((DEMO_BUNDLE / MANIFEST_NAME).read_text())
    for key in ("bf16", "bf16-openvino"):
        (manifest.get("quantization") or {}).pop(key, None)
    (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
    return out


@needs_bf16
def test_the_pipeline_runs_bf16_on_openvino_and_asks_for_its_own_record(bundle_copy: Path, phantom):
    from export.quantize import check_bf16

    with pytest.warns(CmrWarning, match=r"no bf16 Dice check on 'openvino'.*--precision bf16 --backend openvino"):
        Pipeline(bundle_copy, precision="bf16")
    # a TorchScript record does not vouch for OpenVINO's arithmetic
    # the phantom's 3 apical slices move by up to a point: a 1.5-point gate (tests/test_bf16.py)
    check = functools.partial(
        check_bf16,
        bundle_copy,
        check_studies=[("phantom", phantom)],
        max_dice_drop=1.5,
        crop_jitter=False,
        log=lambda *a: None,
    )
    check(backend="torchscript")
    with pytest.warns(CmrWarning, match="on 'openvino'"):
        Pipeline(bundle_copy, precision="bf16")
    record = check(backend="openvino")
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    assert set(manifest["quantization"]) >= {"bf16", "bf16-openvino"}
    assert manifest["quantization"][bf16_record_key("openvino")]["backend"] == "openvino"
    assert record["passed"] and "OpenVINO" in record["cast"] and record["worst_drop"] <= 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error", CmrWarning)
        pipe = Pipeline(bundle_copy, precision="bf16")
    assert {(e.backend, e.precision) for e in pipe._engines.values()} == {("openvino", "bf16")}
    fp32 = Pipeline(bundle_copy).segment(phantom.ed).labels
    assert np.mean(pipe.segment(phantom.ed).labels == fp32) > 0.998


def test_a_bf16_check_on_an_unknown_backend_is_refused(bundle_copy: Path, phantom):
    from export.quantize import check_bf16

    with pytest.raises(
        InputError, match=r"'backend' of a bf16 check must be one of \('torchscript', 'openvino'\), got 'onnx'"
    ):
        check_bf16(bundle_copy, check_studies=[("phantom", phantom)], backend="onnx", log=lambda *a: None)


def test_the_shipped_bundle_records_bf16_on_openvino():
    """The shipped bundle's bf16 on OpenVINO was checked on the 20 held-out ACDC patients."""
    record = load_bundle(DEMO_BUNDLE).manifest["quantization"]["bf16-openvino"]
    assert record["passed"] and record["backend"] == "openvino" and record["max_dice_drop"] == 0.5
    assert len(record["studies"]) == 20 and record["slices"] > 300
    assert 0.0 <= record["worst_drop"] <= 0.5


def test_bf16_is_refused_where_onednn_is_held_below_its_bf16_kernels(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 (users set it to match a fleet's oldest CPU): OpenVINO still lists
    BF16 from the CPU's own flags, but its bf16 deconvolution then fails to compile; cmrsdk says
    why before trying."""
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert "ONEDNN_MAX_CPU_ISA=AVX2 holds oneDNN below AVX512_CORE_BF16" in str(openvino_bf16_missing())
    with pytest.raises(BackendUnavailableError, match="ONEDNN_MAX_CPU_ISA=AVX2"):
        create_engine(ONNX, "openvino", precision="bf16")
    from cmrsdk.engines.torchscript import cpu_bf16_missing

    assert "ONEDNN_MAX_CPU_ISA=AVX2" in str(cpu_bf16_missing())  # PyTorch would emulate it: 49x its fp32 time here
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert openvino_bf16_missing() is None or "ONEDNN" not in str(openvino_bf16_missing())


def test_the_runtime_writes_nothing_in_home_and_leaves_logging_alone(tmp_path):
    """Sweep 20: `import openvino` ran its conversion tools' telemetry, which wrote a client id and
    a usage count into ~/intel on every run and, with HOME unwritable, configured the root logger,
    after which 1,011 pydicom warnings reached stderr for one DICOM study."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import logging, sys\n"
        "from cmrsdk.engines.openvino import _import_openvino\n"
        "_import_openvino()\n"
        "print(len(logging.root.handlers), 'openvino_telemetry' in sys.modules)\n"
    )
    for where in (home, tmp_path / "no such home"):
        env = {**os.environ, "HOME": str(where)}
        env.pop("CI", None)  # openvino-telemetry's own switch: not what is tested
        run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.split() == ["0", "False"], run.stderr  # no handler: library warnings stay quiet
    assert list(home.iterdir()) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning shows only with two CPUs or more")
def test_inference_threads_are_not_pinned_to_the_first_cpus():
    """Pinned (OpenVINO's default), a one-thread engine ran on CPU 0 whatever else ran there: a
    batch's two workers of one thread each shared CPU 0 and took 44 s a Sunnybrook cine against
    36 s unpinned, on two cores. Every thread keeps the process's CPU mask now."""
    mask, seen = thread_masks(ONNX, "openvino", threads=1)
    assert seen == [mask], f"threads narrowed to CPUs {seen} of {mask}"
