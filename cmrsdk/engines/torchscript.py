"""TorchScript engine: a ``torch.jit`` archive run by libtorch on the CPU or a CUDA GPU.

torch is imported here, when an engine is made, never when ``cmrsdk`` is imported: the
scanner-side install may have ONNX Runtime only.

TorchScript is deprecated from torch 2.14: every ``torch.jit.load``, ``trace`` and ``save``
raises a FutureWarning (113 of them in one test run). cmrsdk keeps the format because C++
libtorch loads it (examples/cpp), so it announces the deprecation once per process, with what
to do about it (`TorchScriptDeprecationWarning`), and filters torch's own repeats around its
own calls only (`quiet_torchscript`); nothing is silenced globally.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, InputError
from .base import Engine, check_device, import_runtime, onednn_bf16_capped, refuse_forked
from .._warn import own_filters

__all__ = [
    "TorchScriptEngine",
    "TorchScriptDeprecationWarning",
    "quiet_torchscript",
    "torch_available",
    "cpu_bf16_missing",
]


class TorchScriptDeprecationWarning(FutureWarning):
    """torch deprecates TorchScript; cmrsdk keeps it for C++ libtorch and names its successor."""


_announced = False
_announce_lock = threading.Lock()


@contextmanager
def quiet_torchscript() -> Iterator[None]:
    """Within the block, torch's "`torch.jit.*` is deprecated" FutureWarnings are filtered and
    replaced by one `TorchScriptDeprecationWarning` per process (the first time only).

    Only the deprecation notices of ``torch.jit`` are filtered, and only inside the block.

    The announcement is informational and never stops an engine being made: where the host's
    filters turn it into an exception (``warnings.simplefilter("error")``, ``python -W error``,
    pytest's ``-W error``) it is dropped, not raised, and the block runs as usual; the process
    counts as announced only once the warning was actually issued, so a later block under
    other filters still shows it. To silence it, filter `TorchScriptDeprecationWarning`.
    """
    global _announced
    with _announce_lock:
        first, _announced = not _announced, True
    if first:
        try:
            warnings.warn(
                "TorchScript (torch.jit) is deprecated from torch 2.14; cmrsdk keeps its '.pt' artifacts "
                "because C++ libtorch loads them (examples/cpp). Its successor is the 'aoti' backend: "
                "AOTInductor '.pt2' packages, added to a bundle by 'python -m export.aoti BUNDLE' (from a checkout of "
                "the repository: export/ is not installed with the package)",
                TorchScriptDeprecationWarning,
                stacklevel=3,
            )
        except TorchScriptDeprecationWarning:
            # an "error" filter raised it: not announced after all (see the docstring)
            with _announce_lock:
                _announced = False
    with own_filters():  # under cmrsdk's lock: a thread's swap never interleaves another's
        warnings.filterwarnings(
            "ignore", message=r"`torch\.jit\.\w+` is (deprecated|not supported)", category=FutureWarning
        )
        yield


def torch_available() -> bool:
    """True when torch can be imported (without importing it when it cannot)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def cpu_bf16_missing() -> str | None:
    """Why bfloat16 would not pay on this CPU (it has no native bf16 matrix instructions), or None.

    oneDNN runs bf16 convolutions on AVX512-BF16 or AMX; without either it emulates them, slower
    than float32. Imports torch (only called when a bf16 engine is asked for).
    """
    capped = onednn_bf16_capped()
    if capped is not None:
        return capped
    torch = _import_torch()
    cpu = torch.cpu
    native = (
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )
    if native:
        return None
    return "this CPU has no native bfloat16 instructions (AVX512-BF16 or AMX): bf16 would run slower than fp32"


def _import_torch() -> Any:
    return import_runtime("torch", "torchscript", "PyTorch", "pip install 'cmrsdk[torch]'")


class TorchScriptEngine(Engine):
    """Run a TorchScript artifact (fp32 float32 (N, channels, H, W) -> probabilities, see `Engine`).

    Parameters
    ----------
    path : the ``.pt`` TorchScript archive.
    device : "cpu" or "cuda".
    fp16 : run in half precision (CUDA only); the weights are cast once at load, the input is
        cast on the way in and the probabilities back to float32 on the way out.
    bf16 : run in bfloat16 on a CPU with native bf16 instructions (AVX512-BF16 or AMX), cast
        like ``fp16``; oneDNN accumulates in float32. The models of export/ train under bf16
        autocast, and on this project's 2-core AVX512-BF16/AMX CPU a heart-crop U-Net batch ran
        in about 0.45x its float32 TorchScript time and 0.6x ONNX Runtime's (benchmarks/README.md).
    cuda_graphs : capture one CUDA graph per (N, H, W) the engine meets and replay it after
        (CUDA only); removes the per-kernel launch cost that dominates small batches. The graph
        owns fixed input and output buffers, so graph replays are serialised by a lock.
    max_batch : the largest N per module call (see `Engine`); None: any N.

    Notes
    -----
    The number of CPU threads is torch's process-wide setting (``torch.set_num_threads``); an
    engine does not change it behind the caller's back. That pool does not survive ``fork``: an
    engine refuses to run in a process forked from the one that made it (use 'spawn').

    A caller's ``torch.autocast`` does not reach the module: it runs with autocast off for its
    device, in the precision the engine reports (fp16/bf16 cast the weights, not autocast).
    """

    backend = "torchscript"

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        *,
        fp16: bool = False,
        bf16: bool = False,
        cuda_graphs: bool = False,
        max_batch: int | None = None,
    ) -> None:
        if fp16 and bf16:
            raise InputError("'fp16' and 'bf16' both asked for: give one of them")
        super().__init__(path, check_device(device), "fp16" if fp16 else "bf16" if bf16 else "fp32", max_batch)
        torch = _import_torch()
        self._torch = torch
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailableError(
                "the 'torchscript' backend on device 'cuda' needs a CUDA GPU and a CUDA build of torch; none is available"
            )
        if fp16 and device != "cuda":
            raise InputError(
                "'fp16' is supported on device 'cuda' only (half-precision convolutions on the CPU are slower, not faster)"
            )
        if bf16 and device != "cpu":
            raise InputError("'bf16' is offered on device 'cpu' only; on 'cuda' use 'fp16'")
        if bf16:
            missing = cpu_bf16_missing()
            if missing is not None:
                raise BackendUnavailableError(f"'bf16' is unavailable: {missing}")
        if cuda_graphs and device != "cuda":
            raise InputError("'cuda_graphs' is supported on device 'cuda' only")
        try:
            with quiet_torchscript():
                module = torch.jit.load(str(self.path), map_location=device)
        except (RuntimeError, ValueError, OSError) as exc:
            raise BundleError(f"{self.path}: cannot be loaded as a TorchScript archive ({exc})") from exc
        module.eval()
        if fp16:
            module = module.half()
        elif bf16:
            # frozen for inference: oneDNN prepacks the bf16 weights once instead of per call
            # (benchmarks/bf16_variants.py: 0.47x of fp32 ONNX Runtime's time against 0.76x cast
            # only; through this engine's run about 10 % faster); labels are unchanged
            with quiet_torchscript():
                module = torch.jit.optimize_for_inference(torch.jit.freeze(module.to(torch.bfloat16)))
        self._module = module
        self._pid = os.getpid()  # see `forward_tensor`: a forked child must not run it
        self._dtype = torch.float16 if fp16 else torch.bfloat16 if bf16 else torch.float32
        self._cuda_graphs = cuda_graphs
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        self._graph_lock = threading.Lock()
        #: input shapes whose CUDA graph failed to capture -> the reason; they run eagerly.
        self._uncapturable: dict[tuple[int, ...], str] = {}

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(batch).to(self.device, non_blocking=True)
            # the model's own channel order: `Engine.run` puts it in canonical order
            return self._forward(x).cpu().numpy()

    def forward_tensor(self, x: Any) -> Any:
        """The model on a torch tensor already on the engine's device, for device-resident callers
        (`cmrsdk.device_chain`): float32 (N, channels, H, W) -> float32 probabilities on the same device.

        No host copy, no shape checks beyond the module's own; ``max_batch`` is the caller's
        concern here. The channels come in canonical order (`Engine.output_order`), as from
        `run`. Call under ``torch.inference_mode()``.

        Raises
        ------
        BackendUnavailableError
            In a process forked from the one that made the engine: torch's CPU thread pool
            does not survive fork, and the call may hang for ever.
        BundleError
            The model answers another number of channels than its manifest declares.
        """
        out = self._forward(x)
        return out if self.output_order is None else self._canonical(out, self.output_order)

    def _forward(self, x: Any) -> Any:
        """`forward_tensor` in the model's own channel order."""
        refuse_forked(self.backend, self.path, self._pid)
        # A host's torch.autocast (a training script validating under bf16 autocast) would reach
        # the module: other arithmetic than `precision` says, and on the CPU about 20x slower.
        # fp16/bf16 here cast the module and the input; no precision relies on autocast.
        with self._torch.autocast(self.device, enabled=False):
            x = x.to(self._dtype)
            if self._cuda_graphs:
                return self._replay(x)
            return self._module(x).float()

    def _replay(self, x: Any) -> Any:
        torch = self._torch
        key = tuple(x.shape)
        with self._graph_lock:
            if key in self._uncapturable:
                return self._module(x).float()
            entry = self._graphs.get(key)
            if entry is None:
                static_in = x.clone()
                # warm up on a side stream first, as CUDA graph capture requires: the first runs
                # let the profiling executor and cuDNN settle on their kernels
                stream = torch.cuda.Stream()
                stream.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        self._module(static_in)
                torch.cuda.current_stream().wait_stream(stream)
                graph = torch.cuda.CUDAGraph()
                try:
                    with torch.cuda.graph(graph):
                        static_out = self._module(static_in)
                except RuntimeError as exc:  # torch.AcceleratorError too
                    # Some graphs do not capture (seen on an H100 with the demo classifier's
                    # resize): that shape runs eagerly from now on, with the reason kept.
                    torch.cuda.synchronize()
                    self._uncapturable[key] = str(exc).splitlines()[0]
                    return self._module(x).float()
                entry = (graph, static_in, static_out)
                self._graphs[key] = entry
            graph, static_in, static_out = entry
            static_in.copy_(x)
            graph.replay()
            # a copy: the next replay overwrites the graph's output buffer
            return static_out.float().clone()
