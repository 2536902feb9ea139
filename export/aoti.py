"""Add AOTInductor artifacts (``.pt2``) to an existing bundle: TorchScript's successor, checked.

Command line::

    python -m export.aoti BUNDLE_DIR [--models baseline base ...] [--acdc ../shared/data/acdc]
        [--threads 2]

For each model with a "torchscript" artifact this writes ``<model>.pt2`` (artifact key "aoti"):

1. the eager network is rebuilt from the manifest's training record (``training.config.model``:
   registry name and builder arguments, `export.models.get_model`) and loaded with the
   TorchScript archive's weights; it must reproduce the archive's probabilities on real and
   random slices (``FP32_MAX_ABS_DIFF``), so the package is built from the very weights shipped;
2. ``torch.export`` with a dynamic batch (1..`MAX_BATCH`) and dynamic height and width
   (``Dim.AUTO``: the exporter finds the U-Net's own constraint, sides that are multiples of 16),
   then ``torch._inductor.aoti_compile_and_package`` for the CPU;
3. the package is loaded back through `cmrsdk.engines.aoti.AotiEngine` and compared with the
   eager model (`export.parity.check_parity`, fp32 bound) at every size the pipeline runs it:
   the window, and for a U-Net of a bundle with a heart crop the crop;
4. the manifest gains the artifact (sha256, size, ``input_hw``) and its parity records, in one
   atomic replace after the new bundle verifies from a staging copy; nothing else changes.

Compiling needs a C++ compiler (g++ or clang++) and torch's headers, both present wherever torch
was installed from a wheel with a compiler beside it; running the package needs only torch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from cmrsdk.bundle import MANIFEST_NAME, Bundle, load_bundle, required_format_version, sha256_file
from cmrsdk.engines.aoti import AotiEngine
from cmrsdk.errors import BundleError, CmrError, InputError
from cmrsdk.preprocess import context_slices
from export.bundle import ProbabilityModel
from export.parity import FP32_MAX_ABS_DIFF, check_parity, compare, eager_probabilities, parity_inputs

__all__ = ["MAX_BATCH", "rebuild_model", "export_aoti", "package_fields", "add_aoti", "main"]

#: the largest batch the packages accept (the U-Nets' memory at 224 x 224 grows ~25 MB a slice).
MAX_BATCH = 1024
REPO = Path(__file__).resolve().parents[1]
DEFAULT_ACDC = REPO.parent / "shared" / "data" / "acdc"


def rebuild_model(bundle: Bundle, name: str) -> ProbabilityModel:
    """The eager `ProbabilityModel` of ``name``, weights read from its TorchScript artifact.

    Raises
    ------
    BundleError
        The manifest does not say which registered network the model is, or the archive's
        weights do not fit it.
    """
    from export.models import get_model

    model = bundle.models[name]
    spec = (model.record.get("training") or {}).get("config", {}).get("model") or {}
    if "torchscript" not in model.artifacts or not spec.get("name"):
        raise BundleError(
            f"{bundle.path}: model {name!r} needs a 'torchscript' artifact and a training record "
            f"naming its network (training.config.model), to be rebuilt for torch.export"
        )
    net = get_model(spec["name"], **dict(spec.get("kwargs") or {}))
    from cmrsdk.engines.torchscript import quiet_torchscript

    with quiet_torchscript():
        archive = torch.jit.load(str(model.artifacts["torchscript"].path), map_location="cpu")
    wrapped = ProbabilityModel(net)
    try:
        wrapped.load_state_dict(archive.state_dict(), strict=True)
    except RuntimeError as exc:
        raise BundleError(
            f"{model.artifacts['torchscript'].path}: its weights do not fit "
            f"{spec['name']}({spec.get('kwargs')}) ({str(exc).splitlines()[0]})"
        ) from exc
    return wrapped.eval()


def export_aoti(model: nn.Module, path: str | Path, example: torch.Tensor) -> Path:
    """Compile ``model`` for the CPU into an AOTInductor package with dynamic batch, height and width.

    Parameters
    ----------
    model : maps float32 (N, 1, H, W) to float32 probabilities.
    path : the ``.pt2`` file to write.
    example : float32 (N >= 2, 1, H, W) example input (N >= 2: torch.export specialises size 1).
    """
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    auto = torch.export.Dim.AUTO
    with torch.no_grad():
        exported = torch.export.export(model, (example,), dynamic_shapes={"image": {0: batch, 2: auto, 3: auto}})
        out = torch._inductor.aoti_compile_and_package(exported, package_path=str(path))
    return Path(out)


def package_fields(sizes: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """A CPU package's manifest entries besides file, format, precision, sha256 and size: its
    device, the (H, W) range it was checked at (``sizes``, the parity checks' heights and widths)
    and how it was compiled. Shared with `export.bundle`, which writes packages too."""
    low = min(sizes, key=lambda s: s[0] * s[1])
    high = max(sizes, key=lambda s: s[0] * s[1])
    return {
        "device": "cpu",
        "input_hw": {"min": list(low), "max": list(high)},
        "compiled": {
            "tool": "torch._inductor.aoti_compile_and_package",
            "torch": torch.__version__,
            "dynamic": {"batch": [1, MAX_BATCH], "height_width": "multiples the network needs"},
        },
    }


def _real_slices(bundle: Bundle, acdc: Path | None, count: int = 16) -> np.ndarray | None:
    """Real normalised training slices at the bundle's window, or None without ACDC data."""
    if acdc is None or not (acdc / "training").is_dir():
        return None
    from export.quantize import calibration_slices

    return calibration_slices(bundle, count, cache=None, acdc=acdc, seed=1)[0]


def add_aoti(
    bundle_dir: str | Path,
    *,
    models: Sequence[str] | None = None,
    acdc: str | Path | None = DEFAULT_ACDC,
    log: Callable[[str], Any] = print,
) -> dict[str, Any]:
    """Add "aoti" artifacts (``<model>.pt2``) to a bundle, with their parity; return {model: artifact entry}.

    Parameters
    ----------
    bundle_dir : an existing bundle (verified, then rewritten in place).
    models : the models to compile (default: every model with a "torchscript" artifact).
    acdc : ACDC root whose training patients give real slices for the parity check (random
        slices only when None or absent).

    Raises
    ------
    ParityError
        A package differs from the eager model beyond the fp32 bound; the bundle is unchanged.
    BundleError
        A model cannot be rebuilt from its TorchScript artifact.
    """
    bundle = load_bundle(bundle_dir)
    root = bundle.path.resolve()
    names = (
        list(models) if models is not None else [n for n, m in bundle.models.items() if "torchscript" in m.artifacts]
    )
    for name in names:
        if name not in bundle.models or "torchscript" not in bundle.models[name].artifacts:
            raise InputError(f"'models' names {name!r}, which is not a model of {root} with a 'torchscript' artifact")
    pre = bundle.preprocessing
    size = tuple(pre.size)
    stack, real = parity_inputs(size, _real_slices(bundle, Path(acdc) if acdc else None))  # type: ignore[arg-type]
    manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.aoti.", dir=root.parent))
    entries: dict[str, Any] = {}
    try:
        for item in root.iterdir():
            if item.is_file() and item.name != MANIFEST_NAME and not item.name.endswith(".pt2"):
                try:
                    os.link(item, staging / item.name)
                except OSError:
                    shutil.copy2(item, staging / item.name)
        for name in names:
            t = time.perf_counter()
            model = rebuild_model(bundle, name)
            slices = context_slices(stack, bundle.models[name].context)  # a 2.5D U-Net's neighbours
            reference = eager_probabilities(model, slices)
            # the rebuilt network must be the shipped one: compare with the TorchScript archive
            from cmrsdk.engines.torchscript import TorchScriptEngine

            shipped = TorchScriptEngine(bundle.models[name].artifacts["torchscript"].path).run(slices)
            diff, _ = compare(shipped, reference)
            if diff > FP32_MAX_ABS_DIFF:
                raise BundleError(
                    f"{name!r} rebuilt from its TorchScript weights differs from the archive by {diff:.2e} "
                    f"(> {FP32_MAX_ABS_DIFF}); the bundle {root} is unchanged"
                )
            checks = [(slices, reference, size)]
            crop = pre.heart_crop
            if bundle.models[name].kind == "segmentation" and crop is not None and tuple(crop) != size:
                y0, x0 = (size[0] - crop[0]) // 2, (size[1] - crop[1]) // 2
                cropped = np.ascontiguousarray(slices[:, :, y0 : y0 + crop[0], x0 : x0 + crop[1]])
                checks.append((cropped, eager_probabilities(model, cropped), tuple(crop)))
            out = staging / f"{name}.pt2"
            export_aoti(model, out, torch.from_numpy(slices[:2].copy()))
            engine = AotiEngine(out)
            parity = []
            for x, ref, hw in checks:
                result = check_parity("aoti", engine, ref, x, real)  # raises ParityError past the bound
                parity.append({**result.to_json(), "input_hw": list(hw)})
            entry = {
                "file": out.name,
                "format": "aoti",
                "precision": "fp32",
                "sha256": sha256_file(out),
                "size": out.stat().st_size,
                **package_fields([hw for _, _, hw in checks]),
            }
            record = manifest["models"][name]
            record["artifacts"]["aoti"] = entry
            record["parity"] = [p for p in record.get("parity", []) if p.get("artifact") != "aoti"] + parity
            entries[name] = entry
            log(
                f"{name:>12} aoti: {time.perf_counter() - t:.0f} s, {entry['size'] / 1e6:.1f} MB, max|dp| "
                f"{max(p['max_abs_diff'] for p in parity):.1e} at {[p['input_hw'] for p in parity]}"
            )
        # format 2 where the labels are in another order (`required_format_version`), as every writer
        manifest["format_version"] = max(manifest.get("format_version", 1), required_format_version(manifest))
        staged = staging / MANIFEST_NAME
        staged.write_text(json.dumps(manifest, indent=2, default=str) + "\n", encoding="utf-8")
        load_bundle(staging)  # every hash, old and new, verifies before anything moves
        for name in names:
            os.replace(staging / f"{name}.pt2", root / f"{name}.pt2")
        os.replace(staged, root / MANIFEST_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    load_bundle(root)
    return entries


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m export.aoti``: add AOTInductor packages to a bundle directory."""
    parser = argparse.ArgumentParser(prog="python -m export.aoti", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path, help="the bundle directory to add .pt2 packages to")
    parser.add_argument("--models", nargs="+", default=None, help="models to compile (default: all with TorchScript)")
    parser.add_argument(
        "--acdc", type=Path, default=DEFAULT_ACDC, help=f"ACDC root for real parity slices (default {DEFAULT_ACDC})"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        entries = add_aoti(args.bundle, models=args.models, acdc=args.acdc)
    except (CmrError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"AOTInductor packages added to {args.bundle}: {', '.join(e['file'] for e in entries.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
