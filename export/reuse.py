"""Exports reused within one command: a network that several bundles hold is exported once.

`python -m export.experiment` builds four bundles whose models repeat (the baseline U-Net is in
its own bundle and in the routed one). Within `reused_exports()`, `export.bundle` exports a
network once per input shape and formats and copies those files into the next bundle that holds
the same network; every bundle still checks its files against the eager model (parity) and hashes
them, so a copy is verified as an export is.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["reused_exports", "network_key", "exported"]

#: the open block's folder and its exports: key -> (model name, artifact key -> file, manifest extras)
_memo: tuple[Path, dict[str, tuple[str, dict[str, Path], dict[str, Any]]]] | None = None

#: what `network_key` reads of a module's own attributes: settings that can change its forward
_SETTINGS = (bool, int, float, str, tuple, type(None))


@contextlib.contextmanager
def reused_exports() -> Iterator[None]:
    """Within the block, `exported` copies a network's earlier export instead of exporting it again
    (the copies are kept in a temporary folder, removed at the end; a nested block shares them)."""
    global _memo
    if _memo is not None:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="cmrsdk-exports-") as folder:
        _memo = (Path(folder), {})
        try:
            yield
        finally:
            _memo = None


def network_key(model: nn.Module, example: torch.Tensor, settings: tuple[Any, ...]) -> str:
    """A digest of what an export depends on: the modules (types, shapes, own settings), every
    parameter and buffer, the example's shape and dtype (its values only trace the graph) and the
    export's ``settings`` (formats, window, batch bound)."""
    digest = hashlib.sha256()
    for name, module in model.named_modules():
        own = sorted((k, v) for k, v in vars(module).items() if not k.startswith("_") and isinstance(v, _SETTINGS))
        digest.update(f"{name}:{type(module).__qualname__}:{module.extra_repr()}:{own!r};".encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    digest.update(f"{tuple(example.shape)}:{example.dtype}:{settings!r}".encode())
    return digest.hexdigest()


def exported(
    key: Callable[[], str],
    name: str,
    staging: Path,
    export: Callable[[], tuple[dict[str, Path], dict[str, Any]]],
) -> tuple[dict[str, Path], dict[str, Any]]:
    """``export()`` (artifact key -> file written in ``staging`` as ``<name>.<suffix>``, manifest
    extras); within `reused_exports`, the files of an earlier export with the same ``key()``
    copied into ``staging`` under this model's ``name`` instead."""
    if _memo is None:
        return export()
    folder, entries = _memo
    digest = key()
    if digest in entries:
        first, kept, extra = entries[digest]
        files = {}
        for artifact, path in kept.items():
            files[artifact] = staging / (name + path.name[len(first) :])
            shutil.copyfile(path, files[artifact])
        return files, copy.deepcopy(extra)
    files, extra = export()
    store = folder / digest[:16]
    store.mkdir()
    kept = {}
    for artifact, path in files.items():
        kept[artifact] = store / path.name
        shutil.copyfile(path, kept[artifact])
    entries[digest] = (name, kept, copy.deepcopy(extra))
    return files, extra
