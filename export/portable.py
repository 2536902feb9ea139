"""Slice sets packed small enough to carry to a GPU machine that lacks the raw data.

A pack is one xz-compressed ``.npz``: each normalised slice quantised to 8 bits between its
own minimum and maximum (the error is below 0.01 of the image's robust standard deviation,
far under the Gaussian noise the augmentation adds), the labels and the slice index exact.
The 1,516 cached ACDC training and validation slices pack into about 43 MB instead of 380 MB.

Also builds the held-out evaluation slices (ACDC test split and M&Ms), preprocessed exactly
as the pipeline does, so the classifiers can be scored on them where they were trained.

Commands::

    python -m export.portable pack-cache cache/acdc_224 .gpu/acdc_224.npz.xz
    python -m export.portable pack-heldout .gpu/heldout.npz.xz --acdc ../shared/data/acdc --mnms ../shared/data/mnms
    python -m export.portable unpack .gpu/acdc_224.npz.xz cache/acdc_224
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import sys
import zipfile
from pathlib import Path

import numpy as np

from cmrsdk.errors import ReadError

from .data import SliceSet, load_cache, split_patients, stack_slices, write_cache

__all__ = ["pack", "unpack", "heldout_slices"]


def pack(slices: SliceSet, path: str | Path) -> dict[str, float]:
    """Write ``slices`` as an 8-bit, xz-compressed pack; returns its size and quantisation error.

    Returns
    -------
    {"bytes": pack size, "rms_error": RMS of the dequantised minus the original images (in
    the images' normalised units), "max_error": its maximum}.
    """
    images = np.asarray(slices.images, dtype=np.float32)
    lo = images.min(axis=(1, 2)) if len(images) else np.zeros(0, np.float32)
    hi = images.max(axis=(1, 2)) if len(images) else np.zeros(0, np.float32)
    scale = np.where(hi > lo, (hi - lo) / 255.0, 1.0).astype(np.float32)
    q = np.round((images - lo[:, None, None]) / scale[:, None, None]).clip(0, 255).astype(np.uint8)
    error = q * scale[:, None, None] + lo[:, None, None] - images
    buffer = io.BytesIO()
    np.savez(
        buffer,
        q=q,
        lo=lo,
        scale=scale,
        labels=np.asarray(slices.labels, np.uint8),
        cases=slices.cases.astype(str),
        phases=slices.phases.astype(str),
        regions=slices.regions.astype(np.uint8),
        positions=slices.positions.astype(np.float64),
        z=slices.z.astype(np.int64),
        meta=np.array(json.dumps(slices.meta)),
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue(), preset=6))
    tmp.replace(path)
    return {
        "bytes": path.stat().st_size,
        "rms_error": float(np.sqrt(np.mean(error**2))) if error.size else 0.0,
        "max_error": float(np.abs(error).max()) if error.size else 0.0,
    }


def unpack(path: str | Path) -> SliceSet:
    """The slice set of a pack, images dequantised to float32 (N, H, W)."""
    path = Path(path)
    try:
        data = np.load(io.BytesIO(lzma.decompress(path.read_bytes())))
        images = data["q"].astype(np.float32) * data["scale"][:, None, None] + data["lo"][:, None, None]
        meta = json.loads(str(data["meta"]))
        meta["quantized_bits"] = 8
        return SliceSet(
            images, data["labels"], data["cases"], data["phases"], data["regions"], data["positions"], data["z"], meta
        )
    except (OSError, EOFError, lzma.LZMAError, zipfile.BadZipFile, ValueError, KeyError, IndexError) as exc:
        raise ReadError(path, f"is not a slice pack written by export.portable: {exc}") from exc


def heldout_slices(
    acdc_root: str | Path | None,
    mnms_root: str | Path | None,
    *,
    target_spacing: tuple[float, float],
    size: int,
    normalization: str = "robust_zscore",
    test_every: int = 5,
) -> SliceSet:
    """ED and ES slices of the ACDC test split and of every M&Ms subject, as the pipeline prepares them.

    Cases are named ``acdc/patientNNN`` and ``mnms/SUBJECT``; regions and positions come from
    the ground truth (:mod:`cmrsdk.regions`).
    """
    from cmrsdk.io import read_study

    from .data import _patient_folder, acdc_patients

    folders: list[tuple[str, Path]] = []
    if acdc_root is not None:
        root = Path(acdc_root)
        test = split_patients(acdc_patients(root), test_every=test_every)["test"]
        folders += [(f"acdc/{p}", _patient_folder(root, p)) for p in test]
    if mnms_root is not None:
        folders += [(f"mnms/{p.name}", p) for p in sorted(Path(mnms_root).iterdir()) if p.is_dir()]

    def stacks():
        for case, folder in folders:
            study = read_study(folder)
            yield case, "ED", study.ed
            yield case, "ES", study.es

    return stack_slices(
        stacks(),
        target_spacing=target_spacing,
        size=size,
        normalization=normalization,
        meta={"target_spacing": list(target_spacing), "size": size, "normalization": normalization, "heldout": True},
    )


def main(argv: list[str] | None = None) -> int:
    """The ``python -m export.portable`` command."""
    parser = argparse.ArgumentParser(prog="python -m export.portable", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack-cache", help="pack a slice cache (export.data)")
    p.add_argument("cache"), p.add_argument("pack")
    p = sub.add_parser("pack-heldout", help="pack the held-out ACDC and M&Ms slices, preprocessed as the cache")
    p.add_argument("pack")
    p.add_argument("--cache", default="cache/acdc_224", help="cache whose preprocessing (spacing, size) to follow")
    p.add_argument("--acdc", default="../shared/data/acdc"), p.add_argument("--mnms", default="../shared/data/mnms")
    p = sub.add_parser("unpack", help="unpack a pack into a cache directory")
    p.add_argument("pack"), p.add_argument("cache")
    args = parser.parse_args(argv)
    if args.command == "pack-cache":
        stats = pack(load_cache(args.cache, mmap=False), args.pack)
    elif args.command == "pack-heldout":
        meta = load_cache(args.cache).meta
        slices = heldout_slices(
            args.acdc,
            args.mnms,
            target_spacing=tuple(meta["target_spacing"]),
            size=int(meta["size"]),
            normalization=meta["normalization"],
        )
        stats = pack(slices, args.pack)
    else:
        slices = write_cache(args.cache, unpack(args.pack))
        stats = {"slices": len(slices)}
    print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
