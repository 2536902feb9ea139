"""Does a study's result depend on the order its slices are stored in? (export/README.md, stage 43)

    python scripts/slice_order_check.py [--bundle B] [--data ../shared/data] [--shift PX | --pad PX] [--mirroring | --half-turn | --no-mirroring]

Each held-out ACDC patient (patient005, 010, ..., 100) and each shared M&Ms subject is segmented
as stored and with its slices stored in reverse order: the same anatomy at the same places in the
scanner (the affine's slice axis turned round, the positions given back along it), as a converter
that writes apex-first gives it. Prints each study whose measures move by more than
``--tolerance`` (mL, g, EF points) and a summary line. With ``--shift PX`` the comparison is
instead against the study with ``PX`` empty columns added on the left of every slice (the heart
``PX`` pixels further right in the same field): how far the result follows a small translation.
With ``--pad PX`` it is against the study with ``PX`` zero pixels on every side of every slice, as
a converter that zero-fills a larger field stores it (export/README.md, stage 44).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

import cmrsdk
from cmrsdk.types import Stack, Study

MEASURES = ("lvedv_ml", "lvesv_ml", "lvef_pct", "rvedv_ml", "rvesv_ml", "rvef_pct", "lv_mass_g")


def reversed_stack(stack: Stack) -> Stack:
    """``stack`` with slices stored last-first: pixels and labels (Z, Y, X) reversed along Z, the
    affine's slice axis negated and its origin moved to the old last slice, positions (Z,) given
    along the new normal (so they increase as before)."""
    z = stack.shape[0]
    affine = stack.affine.copy()
    affine[:3, 3] = stack.affine[:3, 3] + stack.affine[:3, 0] * (z - 1)
    affine[:3, 0] = -stack.affine[:3, 0]
    positions = None if stack.slice_positions is None else -stack.slice_positions[::-1]
    labels = None if stack.labels is None else stack.labels[::-1].copy()
    return replace(stack, pixels=stack.pixels[::-1].copy(), labels=labels, affine=affine, slice_positions=positions)


def shifted_stack(stack: Stack, px: int) -> Stack:
    """``stack`` with ``px`` zero columns added before column 0 of every slice (Z, Y, X + px)."""
    pad = ((0, 0), (0, 0), (px, 0))
    affine = stack.affine.copy()
    affine[:3, 3] = stack.affine[:3, 3] - stack.affine[:3, 2] * px
    labels = None if stack.labels is None else np.pad(stack.labels, pad)
    return replace(stack, pixels=np.pad(stack.pixels, pad), labels=labels, affine=affine)


def padded_stack(stack: Stack, px: int) -> Stack:
    """``stack`` with ``px`` zero pixels on every side of every slice (Z, Y + 2 px, X + 2 px), the
    affine's origin moved so every pixel keeps its place in the scanner."""
    pad = ((0, 0), (px, px), (px, px))
    affine = stack.affine.copy()
    affine[:3, 3] = stack.affine[:3, 3] - (stack.affine[:3, 1] + stack.affine[:3, 2]) * px
    labels = None if stack.labels is None else np.pad(stack.labels, pad)
    return replace(stack, pixels=np.pad(stack.pixels, pad), labels=labels, affine=affine)


def studies(data: Path) -> list[Path]:
    acdc = sorted((data / "acdc" / "training").glob("patient*"))
    held_out = [p for p in acdc if int(p.name[-3:]) % 5 == 0]
    return held_out + sorted(p for p in (data / "mnms").iterdir() if p.is_dir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(cmrsdk.DEMO_BUNDLE))
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--shift", type=int, default=0, help="compare with PX empty columns added (0: reversed slices)")
    parser.add_argument("--pad", type=int, default=0, help="compare with PX zero pixels on every side (0: reversed)")
    flips = parser.add_mutually_exclusive_group()
    flips.add_argument("--mirroring", dest="mirroring", action="store_const", const=True, help="every flip averaged")
    flips.add_argument("--half-turn", dest="mirroring", action="store_const", const="half_turn", help="the half-turn")
    flips.add_argument("--no-mirroring", dest="mirroring", action="store_const", const=False, help="one pass")
    parser.add_argument("--tolerance", type=float, default=0.1)
    args = parser.parse_args(argv)
    pipeline = cmrsdk.Pipeline(args.bundle, **({} if args.mirroring is None else {"mirroring": args.mirroring}))
    moved, largest = 0, {m: 0.0 for m in MEASURES}
    paths = studies(args.data)
    for path in paths:
        study = cmrsdk.read_study(path)
        if args.shift and args.pad:
            parser.error("--shift and --pad are two checks: give one")
        if args.shift:
            other = [shifted_stack(s, args.shift) for s in study.phases]
        elif args.pad:
            other = [padded_stack(s, args.pad) for s in study.phases]
        else:
            other = [reversed_stack(s) for s in study.phases]
        a = pipeline.segment_study(study).measures
        b = pipeline.segment_study(Study(tuple(other), study.ed_index, study.es_index, info=study.info)).measures
        deltas = {m: float(getattr(b, m)) - float(getattr(a, m)) for m in MEASURES}
        for m, d in deltas.items():
            if np.isfinite(d):
                largest[m] = max(largest[m], abs(d))
        if any(abs(d) > args.tolerance for d in deltas.values() if np.isfinite(d)):
            moved += 1
            text = ", ".join(
                f"{m} {getattr(a, m):.1f} -> {getattr(b, m):.1f}" for m, d in deltas.items() if abs(d) > args.tolerance
            )
            print(f"{path.name}: {text}")
    what = (
        f"{args.shift} columns added"
        if args.shift
        else f"{args.pad} zero pixels on every side"
        if args.pad
        else "slices reversed"
    )
    print(
        f"{moved} of {len(paths)} studies moved by more than {args.tolerance} ({what}); largest change: "
        + ", ".join(f"{m} {v:.2f}" for m, v in largest.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
