"""Inference engines: one interface (`Engine`) over TorchScript, AOTInductor, ONNX Runtime, OpenVINO and TensorRT.

``Engine.run(batch)`` takes float32 (N, channels, H, W) normalised slices and returns float32
probabilities: (N, C, H, W) for a segmentation U-Net, (N, R) for the region classifier.

The ``backend="auto"`` rule
---------------------------
An artifact file has one format, so `create_engine` with "auto" takes the backend from the
file's suffix (``.pt`` TorchScript, ``.pt2`` AOTInductor, ``.onnx`` ONNX Runtime, ``.ep`` TensorRT; OpenVINO
reads the ``.onnx`` files too, by name only). A bundle holds several
artifacts per model; ``Bundle.engine(name, "auto", device)`` takes the first of
`AUTO_ORDER[device]` that has an artifact and is available here:

- "cuda": tensorrt > torchscript > onnx. TensorRT fuses the network into a few kernels;
  TorchScript with CUDA graphs comes next; ONNX Runtime's CUDA provider last.
- "cpu": openvino > onnx > aoti > torchscript. OpenVINO runs the bundle's ONNX files with
  channels-last convolutions and each instance norm fused with its activation: the routed
  pipeline with the shipped 0.7.0 bundle took 272.4 ms per ED+ES pair in fp32 against ONNX
  Runtime's 378.0 ms, with the same held-out Dice to the hundredth (docs/ENGINES.md), and 174.5
  ms in bf16. Where it is not installed (it is the ``cmrsdk[openvino]`` extra), ONNX Runtime
  comes next: it ran a 1.9 M-parameter U-Net at batch 10 faster than TorchScript and needs no
  torch install; int8 (ONNX Runtime's quantized artifacts) always lands there.

"auto" chooses the backend, never the arithmetic: the precision is the caller's (``fp32`` by
default; ``int8`` selects the "onnx-int8" artifacts written by ``python -m export.quantize``,
``fp16`` TensorRT's fp16 artifact or TorchScript cast at load on CUDA, ``bf16`` OpenVINO or
TorchScript cast at load on a CPU with native bf16 instructions). Where a size is asked for
(``shapes``), an artifact that cannot run it is passed over (`cmrsdk.bundle`).

Importing this package imports neither torch nor onnxruntime; each engine imports its runtime
when it is made.
"""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from typing import Any

from ..errors import BackendUnavailableError, InputError
from .base import BACKENDS, DEVICES, Engine, check_device

__all__ = [
    "Engine",
    "BACKENDS",
    "DEVICES",
    "AUTO_ORDER",
    "SUFFIXES",
    "available_backends",
    "backend_missing",
    "create_engine",
    "thread_options",
]

#: device -> backends in the order "auto" prefers them (see the module docstring).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("tensorrt", "torchscript", "onnx"),
    "cpu": ("openvino", "onnx", "aoti", "torchscript"),
}
#: artifact file suffix -> backend.
SUFFIXES: dict[str, str] = {".pt": "torchscript", ".pt2": "aoti", ".onnx": "onnx", ".ep": "tensorrt"}


#: backend -> its engine option for CPU threads; TorchScript and AOTInductor use torch's pool
#: (``torch.set_num_threads``), and ONNX Runtime and OpenVINO size theirs from the cores.
_THREAD_OPTION: dict[str, str] = {"onnx": "intra_op_threads", "openvino": "threads"}


def thread_options(backend: str, threads: int | None) -> dict[str, int]:
    """The engine options that give a ``backend`` engine ``threads`` CPU threads ({} for None,
    and for backends that take torch's process-wide setting)."""
    return {_THREAD_OPTION[backend]: threads} if threads and backend in _THREAD_OPTION else {}


def backend_missing(backend: str, device: str = "cpu") -> str | None:
    """Why ``backend`` cannot run on ``device`` here (naming what to install), or None when it can.

    Imports torch only when it is installed and a CUDA answer is needed.
    """
    check_device(device)
    if backend not in BACKENDS:
        raise InputError(f"'backend' must be one of {BACKENDS}, got {backend!r}")
    if backend == "aoti":
        from .aoti import aoti_missing

        return aoti_missing(device)
    if backend == "tensorrt":
        from .tensorrt import tensorrt_missing

        if device == "cpu":
            return "TensorRT needs a CUDA GPU: it runs on device 'cuda' only, not on the CPU"
        return tensorrt_missing()
    if backend == "openvino":
        from .openvino import openvino_missing

        return openvino_missing(device)
    if backend == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            return "onnxruntime is not installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)"
        if device == "cuda":
            from .onnx import onnx_providers

            if "CUDAExecutionProvider" not in onnx_providers():
                return "this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu)"
        return None
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install 'cmrsdk[torch]')"
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            return "no CUDA GPU is available to torch"
    return None


def available_backends(device: str = "cpu") -> tuple[str, ...]:
    """The backends that can run on ``device`` here, in the order "auto" prefers them.

    Parameters
    ----------
    device : "cpu" or "cuda".
    """
    return tuple(b for b in AUTO_ORDER[check_device(device)] if backend_missing(b, device) is None)


def create_engine(
    artifact_path: str | Path,
    backend: str = "auto",
    device: str = "cpu",
    *,
    multiple: int | None = None,
    **options: Any,
) -> Engine:
    """Load one artifact file into an engine.

    Parameters
    ----------
    artifact_path : a ``.pt`` (TorchScript), ``.pt2`` (AOTInductor), ``.onnx`` or ``.ep``
        (torch-tensorrt) file.
    backend : "auto" (from the file suffix, see `SUFFIXES`), "torchscript", "aoti", "onnx",
        "openvino" (an ``.onnx`` file) or "tensorrt".
    device : "cpu" or "cuda".
    multiple : the factor the model's input height and width must be multiples of (export/'s U-Nets:
        16); `Engine.run` refuses other sizes with `InputError` before the runtime sees them. None:
        read from the bundle manifest beside the file, where the file is a segmentation model's
        artifact there (as `Bundle.engine` does); else unknown, and a runtime that fails on a size is
        reported as `InputError` with its message.
    **options : backend options: every backend ``max_batch`` (larger batches are split);
        TorchScript ``fp16``, ``bf16``, ``cuda_graphs``; ONNX ``intra_op_threads``, ``inter_op_threads``,
        ``optimization``, ``spinning``, ``precision`` ("fp32" or "int8"); OpenVINO ``precision``
        ("fp32" or "bf16"), ``threads``; TensorRT ``precision``.

    Returns
    -------
    Engine whose ``run`` maps float32 (N, channels, H, W) to float32 probabilities.

    Raises
    ------
    InputError
        Unknown backend, device or option, a ``multiple`` that is not a positive int, or a suffix
        "auto" cannot map.
    BackendUnavailableError
        The backend's runtime or device is not present here (the message names what is missing).
    BundleError
        The file cannot be loaded by the backend.
    """
    path = Path(artifact_path)
    check_device(device)
    if multiple is not None and (not isinstance(multiple, int) or isinstance(multiple, bool) or multiple < 1):
        raise InputError(f"'multiple' must be a positive int or None, got {multiple!r}")
    if backend == "auto":
        if path.suffix not in SUFFIXES:
            raise InputError(
                f"'backend' 'auto' cannot tell the format of {str(path)!r}: expected a suffix in {tuple(SUFFIXES)}"
            )
        backend = SUFFIXES[path.suffix]
    if backend not in BACKENDS:
        raise InputError(f"'backend' must be 'auto' or one of {BACKENDS}, got {backend!r}")
    missing = backend_missing(backend, device)
    if missing is not None:
        raise BackendUnavailableError(f"backend {backend!r} on device {device!r} is unavailable: {missing}")
    if backend == "onnx":
        from .onnx import OnnxEngine as cls

        if path.name.endswith(".int8.onnx"):
            options.setdefault("precision", "int8")  # export.quantize's file name: record what it holds
    elif backend == "openvino":
        from .openvino import OpenVinoEngine as cls  # type: ignore[assignment]
    elif backend == "torchscript":
        from .torchscript import TorchScriptEngine as cls  # type: ignore[assignment]
    elif backend == "aoti":
        from .aoti import AotiEngine as cls  # type: ignore[assignment]
    else:
        from .tensorrt import TensorRTEngine as cls  # type: ignore[assignment]
    # Bind the options to the engine's signature first: only a binding failure is the caller's
    # unknown option; a TypeError raised while the engine loads is a bug and propagates as one.
    signature = inspect.signature(cls)
    try:
        signature.bind(path, device, **options)
    except TypeError as exc:
        takes = [name for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY]
        unknown = sorted(set(options) - set(takes)) or sorted(options)
        raise InputError(
            f"backend {backend!r} does not accept the options {unknown}; it takes {takes} ({exc})"
        ) from exc
    engine = cls(path, device, **options)
    if multiple is None:
        from ..bundle import artifact_stride  # the manifest's knowledge stays in cmrsdk.bundle

        multiple = artifact_stride(path)
    engine.multiple = multiple
    return engine
