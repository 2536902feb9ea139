"""TensorRT engine: an ExportedProgram compiled by torch-tensorrt, run by its runtime (CUDA only).

The artifact (``.ep``) is written by ``torch_tensorrt.save`` at export time for one precision
(fp32 or fp16) and a dynamic batch range; its inputs and outputs are float32 either way (an
fp16 artifact casts inside). torch and torch_tensorrt are imported when an engine is made.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, InputError
from .base import Engine, check_device

__all__ = ["TensorRTEngine", "tensorrt_missing"]


def tensorrt_missing() -> str | None:
    """Why the TensorRT backend cannot run here, or None when it can.

    Imports torch only when torch_tensorrt is installed (to ask for a CUDA device).
    """
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install 'cmrsdk[tensorrt]')"
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch-tensorrt is not installed (pip install 'cmrsdk[tensorrt]', on a machine with CUDA)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU is available (TensorRT runs on NVIDIA GPUs only)"
    return None


class TensorRTEngine(Engine):
    """Run a torch-tensorrt artifact (float32 (N, channels, H, W) -> probabilities, see `Engine`).

    Parameters
    ----------
    path : the ``.ep`` file written by ``torch_tensorrt.save``.
    device : must be "cuda".
    precision : "fp32" or "fp16", what the artifact was built for (recorded in the manifest;
        informational, the arithmetic is fixed in the artifact).
    max_batch : the top of the artifact's dynamic batch range (the manifest's
        ``tensorrt_max_batch``). The TensorRT runtime refuses a larger batch, so `Engine.run`
        splits one into calls of at most ``max_batch`` slices; `cmrsdk.Bundle.engine` passes it.
    """

    backend = "tensorrt"

    def __init__(
        self, path: str | Path, device: str = "cuda", *, precision: str = "fp32", max_batch: int | None = None
    ) -> None:
        if precision not in ("fp32", "fp16"):
            raise InputError(f"'precision' of the 'tensorrt' backend must be 'fp32' or 'fp16', got {precision!r}")
        super().__init__(path, check_device(device), precision, max_batch)
        if device != "cuda":
            raise InputError("the 'tensorrt' backend needs a CUDA GPU: it runs on device 'cuda' only, got device 'cpu'")
        missing = tensorrt_missing()
        if missing is not None:
            raise BackendUnavailableError(f"the 'tensorrt' backend is unavailable: {missing}")
        import torch
        import torch_tensorrt

        self._torch = torch
        try:
            self._module: Any = torch_tensorrt.load(str(self.path)).module()
        except Exception as exc:  # torch.export and TensorRT raise assorted exception types
            raise BundleError(f"{self.path}: cannot be loaded as a torch-tensorrt program ({exc})") from exc

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to("cuda", non_blocking=True)
            return self._module(x).float().cpu().numpy()
