"""The one inference interface every backend implements: `Engine`.

An engine runs one exported model. Its input is always a float32 batch of normalised slices
(N, 1, H, W), or (N, 2 context + 1, H, W) for a 2.5D U-Net (each slice between its stack
neighbours, `cmrsdk.preprocess.context_slices`); what comes out depends on the model's kind:

==============  ==========================  ===================================================
model kind      output                      meaning
==============  ==========================  ===================================================
segmentation    float32 (N, C, H, W)        class probabilities per pixel (softmax over C,
                                            C = 4: background, LVBP, LVM, RVBP)
classifier      float32 (N, R)              region probabilities per slice (softmax over R,
                                            R = 4: non-cardiac, base, middle, apex)
==============  ==========================  ===================================================

The softmax is part of the exported artifact, so every backend returns probabilities, never
logits. An empty batch (N = 0) returns an empty array of the right trailing shape.
"""

from __future__ import annotations

import importlib
import os
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, CmrError, InputError

__all__ = ["Engine", "BACKENDS", "DEVICES", "PRECISIONS", "import_runtime", "load_failure"]

#: every backend name, in no particular order (see ``cmrsdk.engines`` for the "auto" rule).
BACKENDS: tuple[str, ...] = ("torchscript", "onnx", "tensorrt", "aoti", "openvino")
#: the devices an engine can be asked for.
DEVICES: tuple[str, ...] = ("cpu", "cuda")
#: the arithmetic an engine may run in; inputs and outputs are float32 whatever it is.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "bf16", "int8")


def refuse_forked(backend: str, path: Path, made_in: int) -> None:
    """Raise `BackendUnavailableError` where a torch engine made in process ``made_in`` is called in
    a process forked from it: torch's CPU thread pool does not survive fork, and the call may hang
    for ever (a TorchScript child never returned)."""
    if os.getpid() != made_in:
        raise BackendUnavailableError(
            f"the '{backend}' engine of {path.name} was made in process {made_in} and called in forked process "
            f"{os.getpid()}: torch's thread pool does not survive fork, and the call may hang; use the 'spawn' "
            "start method (multiprocessing.get_context('spawn'); a Pipeline pickles, and is rebuilt in the "
            "worker) or another backend ('onnx', 'openvino')"
        )


def check_device(device: str) -> str:
    """Return ``device`` when it is one of `DEVICES`, else raise `InputError`."""
    if device not in DEVICES:
        raise InputError(f"'device' must be one of {DEVICES}, got {device!r}")
    return device


class Engine(ABC):
    """One loaded model artifact that maps a batch of slices to probabilities.

    Subclasses implement `_infer`; `run` validates the input and handles the empty batch, so
    every backend behaves the same at the edges. `run` may be called from several threads at
    once.

    Attributes
    ----------
    backend : "torchscript", "onnx", "tensorrt", "aoti" or "openvino".
    device : "cpu" or "cuda".
    precision : "fp32", "fp16", "bf16" or "int8" (a statically quantized ONNX artifact), the arithmetic
        the engine runs in (inputs and outputs are float32 either way).
    path : the artifact file.
    max_batch : the largest N one backend call takes, or None for no limit. `run` cuts larger
        batches into consecutive calls of at most ``max_batch`` slices and joins the answers,
        so callers never see the limit (a TensorRT engine is built for batches 1..max_batch).
    channels : the input channels the model reads, where known (an ONNX graph records them; a
        bundle's engine takes its model's ``input_shape``), else None; `run` refuses other counts.
    num_outputs : the output channels (C or R) the artifact records (an ONNX graph), else None.
    multiple : the factor the model's height and width must be multiples of (a bundle's U-Net:
        2 ** (stages - 1), from its manifest's ``architecture``, also where `create_engine` opens
        the file in its bundle directory; or `create_engine`'s ``multiple``), else None; `run`
        refuses other sizes rather than hand them to a runtime (OpenVINO with a thread count set
        answered such a batch with the previous call's probabilities, silently: sweep 31). Where it
        is None, a runtime's failure is reported as `InputError` with the runtime's message.
    output_order : canonical channel k of `run`'s answer is the model's channel ``output_order[k]``
        (set by a bundle whose manifest names its ``labels`` or ``regions`` in another order than
        `cmrsdk.labels`), or None: the model's own order. `run` refuses an answer with another
        number of channels than ``len(output_order)``.
    """

    backend: str = ""

    def __init__(self, path: str | Path, device: str, precision: str, max_batch: int | None = None) -> None:
        self.path = Path(path)
        self.device = check_device(device)
        if precision not in PRECISIONS:
            raise InputError(f"'precision' must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1):
            raise InputError(f"'max_batch' must be a positive int or None, got {max_batch!r}")
        self.max_batch = max_batch
        self.channels: int | None = None
        self.num_outputs: int | None = None
        self.multiple: int | None = None
        self.output_order: tuple[int, ...] | None = None
        # trailing output shape per input (H, W), learnt from the first batch of that size;
        # lets an empty batch return (0, C, H, W) or (0, R) without knowing the model's kind.
        self._trailing: dict[tuple[int, int], tuple[int, ...]] = {}
        self._trailing_lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Run the model on a batch of normalised slices.

        Parameters
        ----------
        batch : float32 (N, channels, H, W), slices after resampling, cropping and normalisation
            (channels 1, or 2 context + 1 for a 2.5D model); N may be 0.

        Returns
        -------
        float32 (N, C, H, W) class probabilities for a segmentation model, float32 (N, R)
        region probabilities for a classifier (see the module docstring).

        Raises
        ------
        InputError
            When ``batch`` is not a float32 array of shape (N, channels, H, W), its height or width is
            not a multiple of `multiple` (where known), or the runtime fails on it (the message names
            the artifact, the batch's shape and the runtime's own message).
        BackendUnavailableError
            The runtime failed because the system refused it threads or memory.
        """
        if not isinstance(batch, np.ndarray):
            raise InputError(f"'batch' must be a numpy array float32 (N, channels, H, W), got {type(batch).__name__}")
        if batch.dtype != np.float32:
            raise InputError(f"'batch' dtype must be float32 (supported: float32), got {batch.dtype}")
        if batch.ndim != 4 or batch.shape[1] < 1 or batch.shape[2] < 1 or batch.shape[3] < 1:
            raise InputError(f"'batch' must have shape (N, channels, H, W) with H, W >= 1, got {batch.shape}")
        if self.channels is not None and batch.shape[1] != self.channels:
            raise InputError(
                f"'batch' must have shape (N, {self.channels}, H, W): {self.path.name} reads {self.channels} "
                f"channel(s), got {batch.shape}"
            )
        size = (int(batch.shape[2]), int(batch.shape[3]))
        if self.multiple is not None and any(v % self.multiple for v in size):
            fit = tuple(max(self.multiple, v // self.multiple * self.multiple) for v in size)
            raise InputError(
                f"'batch' height and width must be multiples of {self.multiple} for {self.path.name} (the U-Net "
                f"halves the image {self.multiple.bit_length() - 1} times), got {size}; e.g. crop or pad to {fit}"
            )
        if batch.shape[0] == 0:
            trailing = self._trailing.get(size)
            if trailing is None:
                # one blank slice teaches us the output shape of this model at this size
                self.run(np.zeros((1, batch.shape[1], *size), dtype=np.float32))
                trailing = self._trailing[size]
            return np.empty((0, *trailing), dtype=np.float32)
        n, step = batch.shape[0], self.max_batch or batch.shape[0]
        try:
            if n <= step:
                out = np.asarray(self._infer(np.ascontiguousarray(batch)), dtype=np.float32)
            else:
                # above the backend's batch range: consecutive calls, answers joined in order
                out = np.concatenate(
                    [
                        np.asarray(self._infer(np.ascontiguousarray(batch[i : i + step])), dtype=np.float32)
                        for i in range(0, n, step)
                    ]
                )
        except (CmrError, MemoryError):
            raise
        except Exception as exc:  # each runtime raises its own types (onnxruntime's derive from Exception)
            raise self._run_failure(batch.shape, exc) from exc
        self._check_answer(out, batch.shape)
        if self.output_order is not None:
            out = self._canonical(out, self.output_order)
        if size not in self._trailing:
            with self._trailing_lock:
                self._trailing[size] = tuple(int(s) for s in out.shape[1:])
        return out

    def _run_failure(self, shape: tuple[int, ...], exc: Exception) -> CmrError:
        """The cmrsdk error for a runtime that failed on a batch of ``shape`` (the last resort where
        `multiple` is not known, an artifact file made outside a bundle): `InputError` naming the
        artifact, the shape and the runtime's message, or `BackendUnavailableError` where the message
        says the system refused threads or memory."""
        text = " ".join(str(exc).split())
        if len(text) > 600:
            text = text[:600] + " ..."
        said = f"{type(exc).__name__}: {text}"
        where = f"{self.path} ({self.backend})"
        if any(refusal in text.lower() for refusal in (*_SYSTEM_REFUSALS, "out of memory")):
            return BackendUnavailableError(
                f"{where} could not run a batch of shape {tuple(shape)}: the system refused threads or memory ({said}); "
                "a smaller 'max_batch', or raise the process or memory limit"
            )
        return InputError(
            f"{where} cannot run a batch of shape {tuple(shape)}: the runtime failed ({said}); a height and width "
            "the model cannot take? (export/'s U-Nets take multiples of 16; create_engine(..., multiple=16) refuses "
            "other sizes before the runtime sees them)"
        )

    def _check_answer(self, out: np.ndarray, shape: tuple[int, ...]) -> None:
        """Refuse an answer that is not one per slice, (N, R) or (N, C, H, W) at the batch's N, H, W: a
        runtime handed a size its graph cannot take may answer with an earlier call's output instead of
        failing (OpenVINO with a thread count set, sweep 31)."""
        n, size = shape[0], tuple(shape[2:])
        if out.ndim not in (2, 4) or out.shape[0] != n or (out.ndim == 4 and tuple(out.shape[2:]) != size):
            raise InputError(
                f"{self.path.name} ({self.backend}) answered shape {tuple(out.shape)} for a batch of shape {tuple(shape)}: "
                "the model does not take this height and width (export/'s U-Nets take multiples of 16)"
            )

    def _canonical(self, out: Any, order: tuple[int, ...]) -> Any:
        """float32 (N, C, ...) in the model's channel order -> the canonical order (`output_order`),
        right after inference: everything downstream indexes channels by canonical code. A numpy
        array or, on the device chain, a torch tensor (`TorchScriptEngine.forward_tensor`)."""
        if out.ndim < 2 or out.shape[1] != len(order):
            raise BundleError(
                f"{self.path}: the model answers {out.shape[1] if out.ndim > 1 else 'no'} channels of shape "
                f"{tuple(out.shape)}, its manifest declares {len(order)} ('num_outputs', 'labels' or 'regions')"
            )
        if order == tuple(range(len(order))):
            return out
        picked = out[:, list(order)]
        # numpy's fancy indexing on axis 1 copies into a non-C order: the engines promise C order
        return np.ascontiguousarray(picked) if isinstance(picked, np.ndarray) else picked

    @abstractmethod
    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """Backend work: C-contiguous float32 (N >= 1, channels, H, W) -> float32 probabilities."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, device={self.device!r}, precision={self.precision!r})"


#: oneDNN ISA caps (``ONEDNN_MAX_CPU_ISA``) that still allow its native bf16 kernels
_BF16_ISA_CAPS = frozenset(
    {"ALL", "DEFAULT", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16"}
    | {"AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2"}
)


def onednn_bf16_capped() -> str | None:
    """Why bf16 cannot run natively although the CPU has the instructions: ``ONEDNN_MAX_CPU_ISA``
    (set to match a fleet's oldest CPU, or to test one) holds oneDNN below AVX512_CORE_BF16, and
    neither PyTorch's nor OpenVINO's capability checks see it; None where no such cap is set."""
    import os

    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if cap and cap not in _BF16_ISA_CAPS:
        return f"ONEDNN_MAX_CPU_ISA={cap} holds oneDNN below AVX512_CORE_BF16, where its bf16 kernels start"
    return None


def import_runtime(module: str, backend: str, runtime: str, install: str) -> Any:
    """``module``, the runtime of the ``backend`` backend, imported.

    Raises
    ------
    BackendUnavailableError : saying "not installed" (and ``install``) only where the package is
        absent; where it is installed but does not load (its shared libraries refused under a
        memory cap, ``ulimit -v``, or a broken install), the loader's own reason, so that no one
        is sent to reinstall what is there (sweep 20).
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != module.split(".")[0]:  # one of its own dependencies
            raise BackendUnavailableError(
                f"the '{backend}' backend's {runtime} cannot be loaded: it needs the package '{exc.name}', "
                "which is not installed"
            ) from exc
        raise BackendUnavailableError(
            f"the '{backend}' backend needs {runtime}, which is not installed: {install}"
        ) from exc
    except (ImportError, OSError, MemoryError) as exc:
        raise BackendUnavailableError(
            f"the '{backend}' backend's {runtime} is installed but cannot be loaded ({type(exc).__name__}: "
            f"{exc}); a memory limit (ulimit -v) or a broken install?"
        ) from exc


#: what a runtime's message says when the system, not the model, refused: threads or memory
_SYSTEM_REFUSALS = ("resource temporarily unavailable", "pthread_create", "cannot allocate memory", "bad_alloc")


def load_failure(path: Path | str, what: str, exc: BaseException) -> Exception:
    """The error for a model a runtime could not load: `BundleError` naming the model, or, where
    the runtime's message says the system refused threads or memory (a process limit, ``ulimit
    -u``, or a memory cap; sweep 20), `BackendUnavailableError` saying so, not blaming the model."""
    text = str(exc)
    if any(refusal in text.lower() for refusal in _SYSTEM_REFUSALS):
        return BackendUnavailableError(
            f"{path}: {what}: the system refused threads or memory ({' '.join(text.split())[:300]}); "
            "raise the process or memory limit (ulimit -u, ulimit -v), or try --backend onnx"
        )
    return BundleError(f"{path}: {what} ({exc})")
