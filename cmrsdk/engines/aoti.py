"""AOTInductor engine: a ``.pt2`` package (``torch.export`` + ``torch._inductor``), TorchScript's successor.

The package holds the network compiled ahead of time into a shared library for one device
(the CPU, or CUDA) with dynamic batch, height and width, plus its weights; it is loaded with
``torch._inductor.aoti_load_package`` from Python or ``torch::inductor::AOTIModelPackageLoader``
from C++. Unlike TorchScript it needs no interpreter of a graph at run time, and it is what
torch >= 2.14 maintains (``torch.jit`` is deprecated). ``python -m export.aoti BUNDLE`` adds
one per model to a bundle (artifact key "aoti", file ``<model>.pt2``).

A package runs only on the device it was compiled for, and only at the sizes its dynamic
dimensions allow (recorded as the artifact's ``input_hw``); both are checked by the bundle
before an engine is made.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BackendUnavailableError, BundleError, InputError
from .base import Engine, check_device, refuse_forked

__all__ = ["AotiEngine", "aoti_missing"]


def aoti_missing(device: str = "cpu") -> str | None:
    """Why an AOTInductor package cannot be loaded on ``device`` here, or None when it can."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed (pip install 'cmrsdk[torch]')"
    unwritable = _temporary_folder_missing()
    if unwritable:
        return unwritable
    import torch

    try:
        runtime = hasattr(torch, "_inductor") and hasattr(torch._C, "_aoti")
    except Exception as exc:  # torch._inductor's import reads the temporary folder, among others
        return f"torch's AOTInductor cannot be loaded ({type(exc).__name__}: {exc})"
    if not runtime:
        return f"this torch ({torch.__version__}) has no AOTInductor runtime (torch >= 2.6 does)"
    if device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU is available to torch"
    return None


def _temporary_folder_missing() -> str | None:
    """Why torch cannot unpack a ``.pt2`` package here: its loader unpacks into ``$TMPDIR`` as
    given (Python's ``tempfile`` would quietly fall back to /tmp), or /tmp where it is unset."""
    given = os.environ.get("TMPDIR")
    folder = given or "/tmp"
    if os.path.isdir(folder) and os.access(folder, os.W_OK | os.X_OK):
        return None
    named = f"TMPDIR={given}" if given else "/tmp, TMPDIR unset"
    return (
        f"no writable temporary folder ({named}): the aoti backend unpacks its .pt2 package there; "
        "set TMPDIR to a writable folder"
    )


class AotiEngine(Engine):
    """Run an AOTInductor ``.pt2`` package (float32 (N, channels, H, W) -> probabilities, see `Engine`).

    Parameters
    ----------
    path : the ``.pt2`` package, compiled for ``device``.
    device : "cpu" or "cuda"; must be the device the package was compiled for.
    max_batch : the largest N per call (see `Engine`); None: any N the package accepts.

    Notes
    -----
    Calls from several threads are serialised by the package's runner (one compiled model
    instance). The CPU threads are torch's process-wide setting (``torch.set_num_threads``),
    as for TorchScript, and as there an engine refuses to run in a process forked from the one
    that made it (`cmrsdk.engines.base.refuse_forked`).
    """

    backend = "aoti"

    def __init__(self, path: str | Path, device: str = "cpu", *, max_batch: int | None = None) -> None:
        super().__init__(path, check_device(device), "fp32", max_batch)
        missing = aoti_missing(device)
        if missing is not None:
            raise BackendUnavailableError(f"the 'aoti' backend on device {device!r} is unavailable: {missing}")
        import torch
        import torch._inductor

        self._torch = torch
        self._pid = os.getpid()
        try:
            self._model = torch._inductor.aoti_load_package(str(self.path))
        except Exception as exc:  # the C++ loader raises RuntimeError; a bad zip raises others
            raise BundleError(f"{self.path}: cannot be loaded as an AOTInductor package ({exc})") from exc
        # the compiled device is in the package's metadata ("AOTI_DEVICE_KEY": "cpu" / "cuda")
        compiled = self._model.get_metadata().get("AOTI_DEVICE_KEY")
        if compiled is not None and compiled != device:
            raise InputError(f"{self.path}: the package was compiled for device {compiled!r}, not {device!r}")

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        refuse_forked(self.backend, self.path, self._pid)
        torch = self._torch
        # autocast off: a host's torch.autocast must not change the arithmetic `precision` reports
        with torch.inference_mode(), torch.autocast(self.device, enabled=False):
            x = torch.from_numpy(batch).to(self.device)
            try:
                out: Any = self._model(x)
            except RuntimeError as exc:
                # a size outside the package's dynamic range fails a guard inside the library
                raise InputError(
                    f"{self.path}: the package cannot run a batch of shape {tuple(batch.shape)} "
                    f"({str(exc).splitlines()[0]})"
                ) from exc
            return out.float().cpu().numpy()
