"""OpenVINO engine: the bundle's ONNX artifacts on Intel's CPU runtime, in fp32 or bf16.

OpenVINO reads the very ``.onnx`` files ONNX Runtime runs (no new artifact), runs the
convolutions channels-last, folds each instance norm's affine and leaky ReLU into one MVN kernel
(the compiled shipped U-Net: 19 convolutions, 18 MVN, no activation node), and on a CPU with
AVX512-BF16 or AMX runs them in bfloat16 (fp32 accumulation). Measured on a 2-core AVX512-BF16 CPU, 2 threads, median of
11 (benchmarks/README.md): the shipped U-Net on 10 slices of 128 x 128 took 61 ms in bf16 against
119 ms for TorchScript cast to bf16 and 146 ms for ONNX Runtime fp32; OpenVINO fp32 100 ms.

Its CPU plugin takes bf16 by default where the CPU has it, so the precision is always set
explicitly ("f32" or "bf16" as its ``INFERENCE_PRECISION_HINT``) and read back after compiling:
an engine never runs in another arithmetic than the one it reports.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..cpus import quota_threads
from ..errors import BackendUnavailableError, BundleError, InputError
from .base import Engine, check_device, import_runtime, load_failure, onednn_bf16_capped

__all__ = ["OpenVinoEngine", "openvino_missing", "openvino_bf16_missing"]

#: cmrsdk precision -> OpenVINO's element type name for INFERENCE_PRECISION_HINT.
_HINTS: dict[str, str] = {"fp32": "f32", "bf16": "bf16"}


def _import_openvino() -> Any:
    # `import openvino` imports its model conversion tools, whose telemetry writes a client id and
    # a usage count into ~/intel on every run and, where HOME cannot be written, logs through the
    # root logger, which from then on prints every library's warnings (1,011 lines of pydicom's
    # for one DICOM study; sweep 20). cmrsdk runs the runtime only: the tools get OpenVINO's own
    # telemetry stub, as where openvino-telemetry is not installed. A program that imported
    # openvino before cmrsdk keeps what it chose.
    blocked = "openvino" not in sys.modules and "openvino_telemetry" not in sys.modules
    if blocked:
        sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]  # an ImportError for its importers
    try:
        return import_runtime("openvino", "openvino", "OpenVINO", "pip install 'cmrsdk[openvino]'")
    finally:
        if blocked:
            del sys.modules["openvino_telemetry"]


def openvino_missing(device: str = "cpu") -> str | None:
    """Why the 'openvino' backend cannot run on ``device`` here, or None when it can."""
    if check_device(device) != "cpu":
        return "cmrsdk runs OpenVINO on device 'cpu' only"
    try:
        _import_openvino()
    except BackendUnavailableError as exc:
        return str(exc)
    return None


def openvino_bf16_missing() -> str | None:
    """Why OpenVINO cannot run bf16 on this CPU (no native bf16 instructions, or oneDNN held
    below them by ``ONEDNN_MAX_CPU_ISA``, which OpenVINO's capability list does not show), or None."""
    capped = onednn_bf16_capped()
    if capped is not None:
        return capped
    ov = _import_openvino()
    capabilities = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in capabilities:
        return None
    return f"this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX); OpenVINO reports {sorted(capabilities)}"


class OpenVinoEngine(Engine):
    """Run an ONNX artifact with OpenVINO's CPU plugin (float32 (N, channels, H, W) -> probabilities).

    Parameters
    ----------
    path : the ``.onnx`` file (fp32; the bundle's "onnx" artifact).
    device : "cpu" only.
    precision : "fp32" or "bf16" (CPUs with AVX512-BF16 or AMX; refused elsewhere). Inputs and
        outputs are float32 either way.
    threads : CPU threads of one inference (OpenVINO's ``INFERENCE_NUM_THREADS``); None: all
        cores, or the cgroup's CPU quota where it allows fewer (`cmrsdk.cpus.quota_threads`).
    max_batch : the largest N per call (see `Engine`); None: any N.

    The model keeps the ONNX graph's dynamic batch, height and width; OpenVINO compiles a shape's
    kernels on its first call. `run` is safe from several threads at once (one infer request per
    thread).
    """

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        *,
        precision: str = "fp32",
        threads: int | None = None,
        max_batch: int | None = None,
    ) -> None:
        if precision not in _HINTS:
            raise InputError(f"'precision' of the 'openvino' backend must be 'fp32' or 'bf16', got {precision!r}")
        super().__init__(path, check_device(device), precision, max_batch)
        missing = openvino_missing(device)
        if missing is not None:
            raise BackendUnavailableError(f"backend 'openvino' on device {device!r} is unavailable: {missing}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise InputError(f"'threads' must be a positive int or None, got {threads!r}")
        ov = _import_openvino()
        if precision == "bf16" and (why := openvino_bf16_missing()) is not None:
            raise BackendUnavailableError(f"backend 'openvino' in bf16 is unavailable: {why}")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses of its own
            raise BundleError(f"{self.path}: cannot be read as an ONNX model by OpenVINO ({exc})") from exc
        if len(model.inputs) != 1:
            raise BundleError(
                f"{self.path}: an ONNX model with exactly one input was expected, it has {len(model.inputs)}"
            )
        shape = model.inputs[0].get_partial_shape()
        if shape.rank.is_static and shape.rank.get_length() == 4 and shape[1].is_static:
            self.channels = int(shape[1].get_length())
        answer = model.outputs[0].get_partial_shape()
        if answer.rank.is_static and answer.rank.get_length() >= 2 and answer[1].is_static:
            self.num_outputs = int(answer[1].get_length())  # checked against the manifest by `Bundle.engine`
        # no CPU pinning: pinned, the inference threads of every process start on the first cores,
        # so a batch's workers of one thread each all ran on CPU 0 (twice the time for two on two
        # cores; Intel KB 000058227). One process gains nothing from it here (183 ms both ways,
        # 16 slices of 128 x 128). The plugin takes the setting from a process's first compilation.
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False,
        }
        if threads is None:  # a container's CPU quota, which the plugin's core count does not see
            threads = quota_threads()
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise load_failure(self.path, "OpenVINO cannot compile it for the CPU", exc) from exc
        hint = self._compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type
        ran = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        if ran != _HINTS[precision]:  # never report an arithmetic the plugin did not take
            raise BackendUnavailableError(
                f"backend 'openvino' compiled {self.path.name} in {ran}, not the {_HINTS[precision]} asked for"
            )
        self._local = threading.local()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:  # an infer request is not thread-safe: one per calling thread
            request = self._local.request = self._compiled.create_infer_request()
        # the result is copied out of the request's buffer (share_outputs is off by default)
        return request.infer({0: batch})[0]
