"""ONNX Runtime engine: the light scanner-side runtime (CPU; CUDA with onnxruntime-gpu)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..cpus import usable_cores
from ..errors import BackendUnavailableError, BundleError, InputError
from .base import Engine, check_device, import_runtime, load_failure

__all__ = ["OnnxEngine", "OPTIMIZATION_LEVELS", "onnx_providers"]

#: graph optimisation level name -> onnxruntime.GraphOptimizationLevel member name.
OPTIMIZATION_LEVELS: dict[str, str] = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


def _import_ort() -> Any:
    return import_runtime("onnxruntime", "onnx", "ONNX Runtime", "pip install onnxruntime (or onnxruntime-gpu)")


def onnx_providers() -> tuple[str, ...]:
    """The execution providers of the installed ONNX Runtime; empty when it is not installed."""
    try:
        return tuple(_import_ort().get_available_providers())
    except BackendUnavailableError:
        return ()


class OnnxEngine(Engine):
    """Run an ONNX artifact with ONNX Runtime (float32 (N, channels, H, W) -> probabilities, see `Engine`).

    Parameters
    ----------
    path : the ``.onnx`` file.
    device : "cpu" (CPUExecutionProvider) or "cuda" (CUDAExecutionProvider, from onnxruntime-gpu).
    intra_op_threads : threads inside one operator (a convolution); None is one per physical
        core of the affinity mask, capped by the cgroup's CPU quota (`cmrsdk.cpus.usable_cores`),
        given as a count so that ONNX Runtime does not pin its threads to the first cores.
    inter_op_threads : threads across independent operators; None is ONNX Runtime's default.
    optimization : graph optimisation level, one of `OPTIMIZATION_LEVELS` ("all" by default).
    spinning : let idle worker threads spin-wait for the next run (ONNX Runtime's default).
        Off by default: a pipeline alternates between several sessions, and spinning workers
        of one starve the others (the routed pipeline ran 3x slower with it on).
    precision : "fp32", or "int8" for an artifact quantized by ``export.quantize`` (QDQ
        QuantizeLinear / DequantizeLinear pairs that ONNX Runtime fuses into integer kernels;
        inputs and outputs stay float32). It records what the file holds; the file decides.
    max_batch : the largest N per session call (see `Engine`); None: any N.
    """

    backend = "onnx"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        *,
        intra_op_threads: int | None = None,
        inter_op_threads: int | None = None,
        optimization: str = "all",
        spinning: bool = False,
        precision: str = "fp32",
        max_batch: int | None = None,
    ) -> None:
        if precision not in ("fp32", "int8"):
            raise InputError(f"'precision' of the 'onnx' backend must be 'fp32' or 'int8', got {precision!r}")
        super().__init__(path, check_device(device), precision, max_batch)
        ort = _import_ort()
        if optimization not in OPTIMIZATION_LEVELS:
            raise InputError(f"'optimization' must be one of {tuple(OPTIMIZATION_LEVELS)}, got {optimization!r}")
        for name, value in (("intra_op_threads", intra_op_threads), ("inter_op_threads", inter_op_threads)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise InputError(f"'{name}' must be a positive int or None, got {value!r}")
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailableError(
                    "the 'onnx' backend on device 'cuda' needs CUDAExecutionProvider, which this onnxruntime lacks: "
                    "pip install onnxruntime-gpu"
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
        # Always a count: left to choose, ONNX Runtime pins its workers to the mask's first cores
        # (two processes shared CPU 1) and misses a container's CPU quota.
        options.intra_op_num_threads = usable_cores() if intra_op_threads is None else intra_op_threads
        if inter_op_threads is not None:
            options.inter_op_num_threads = inter_op_threads
        # A pipeline runs several sessions one after another; by default each session's idle
        # workers spin-wait after a run and take the cores from the next session (measured: the
        # routed pipeline, five sessions, ran 2.4x slower than the one-session baseline).
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            raise load_failure(self.path, "cannot be loaded as an ONNX model", exc) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise BundleError(f"{self.path}: an ONNX model with exactly one input was expected, it has {len(inputs)}")
        self._input_name = inputs[0].name
        shape = inputs[0].shape
        if len(shape) == 4 and isinstance(shape[1], int):
            self.channels = int(shape[1])  # the graph records it: a wrong count fails here, not in ORT
        outputs = self._session.get_outputs()[0].shape
        if len(outputs) >= 2 and isinstance(outputs[1], int):
            self.num_outputs = int(outputs[1])  # checked against the manifest by `Bundle.engine`
        # A failed run raises, and `Engine.run` reports it with the runtime's message; without this,
        # ONNX Runtime also logs the same failure on stderr, around the caller's own output.
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4  # fatal only

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        # InferenceSession.run is safe to call from several threads at once
        return self._session.run(None, {self._input_name: batch}, self._run_options)[0]
