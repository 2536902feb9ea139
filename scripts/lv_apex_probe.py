"""A measurement probe, not a product path: the LV apex drawn as RV, and what giving it back would do.

On held-out ACDC patient050 the shipped U-Net drew the last two slices' LV (blood pool and wall)
as RV; the largest-component clean-up then removed that RV as a fragment apart from the RV, and
the slices were left empty (docs/RESULTS.md, Session 28). The rule tried here: an RV piece the
clean-up removes, on a slice left without LV, whose centroid lies within ``--max-shift-mm`` of the
LV's centroid on a neighbouring slice, is LV blood pool (outward, one slice at a time, as
`cmrsdk.preprocess.reattach_displaced_slices` goes). A rule for unseen patients' errors must be
measured on patients the network never saw: run it with development-fold bundles
(export/README.md, "Stage 31") on the 12 patients each never saw.

    python scripts/lv_apex_probe.py --fold BUNDLE PATIENT_FOLDER... [--fold ...] [--max-shift-mm 15]

Prints every slice the rule changes (manual LV / wall / RV pixels there, LVBP Dice before and
after) and, per fold, the label-slices' mean Dice with and without the rule.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from cmrsdk import Pipeline, preprocess
from cmrsdk.evaluation.stats import score_stack
from cmrsdk.io import read_study
from cmrsdk.labels import LVBP, LVM, RVBP


def reclaim_lv_apex(
    raw: np.ndarray, cleaned: np.ndarray, spacing_yx: Sequence[float], max_shift_mm: float
) -> np.ndarray:
    """uint8 (Z, Y, X) ``cleaned`` with the removed RV pieces at the LV's place made LV blood pool."""
    out = cleaned.copy()
    scale = np.asarray(spacing_yx, dtype=np.float64)
    grown = True
    while grown:
        grown = False
        has_lv = (out == LVBP).any(axis=(1, 2)) | (out == LVM).any(axis=(1, 2))
        for z in np.flatnonzero(~has_lv):
            piece = (raw[z] == RVBP) & (out[z] != RVBP)
            near = [n for n in (z - 1, z + 1) if 0 <= n < len(out) and has_lv[n]]
            if not piece.any() or not near:
                continue
            here = np.argwhere(piece).mean(0) * scale
            lv = [np.argwhere((out[n] == LVBP) | (out[n] == LVM)).mean(0) * scale for n in near]
            if min(float(np.linalg.norm(here - c)) for c in lv) <= max_shift_mm:
                out[z][piece] = LVBP
                grown = True
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fold", nargs="+", action="append", required=True, metavar="BUNDLE PATIENT_FOLDER")
    parser.add_argument("--max-shift-mm", type=float, default=preprocess.MAX_SLICE_SHIFT_MM)
    args = parser.parse_args()
    for bundle, *patients in args.fold:
        pipeline = Pipeline(bundle, largest_component=False, threads=2)
        before: list[float] = []
        after: list[float] = []
        fired = 0
        for folder in patients:
            case = folder.rstrip("/").split("/")[-1]
            result = pipeline.segment_study(read_study(folder))
            for phase, seg in (("ED", result.ed), ("ES", result.es)):
                raw = seg.labels
                spacing = tuple(seg.stack.spacing[1:])
                cleaned = preprocess.largest_component(raw)
                cleaned = preprocess.reattach_displaced_slices(raw, cleaned, spacing)
                changed = reclaim_lv_apex(raw, cleaned, spacing, args.max_shift_mm)
                manual = seg.stack.labels
                if manual is None:
                    raise SystemExit(f"{folder}: {phase} has no manual labels to score against")
                a = score_stack(cleaned, manual, method="m", case=case, phase=phase)
                b = score_stack(changed, manual, method="m", case=case, phase=phase)
                for sa, sb in zip(a, b):
                    for j in range(3):
                        if not (np.isnan(sa.dice[j]) and np.isnan(sb.dice[j])):
                            before.append(1.0 if np.isnan(sa.dice[j]) else sa.dice[j])
                            after.append(1.0 if np.isnan(sb.dice[j]) else sb.dice[j])
                for z in np.flatnonzero((changed != cleaned).any(axis=(1, 2))):
                    fired += 1
                    px = [int((manual[z] == k).sum()) for k in (LVBP, LVM, RVBP)]
                    print(
                        f"{case} {phase} slice {z}: manual LV / wall / RV {px}; LVBP Dice "
                        f"{a[z].dice[0]:.3f} -> {b[z].dice[0]:.3f}",
                        flush=True,
                    )
        print(
            f"{bundle}: {len(patients)} patients, {fired} slices changed; label-slices "
            f"{100 * np.mean(before):.2f} -> {100 * np.mean(after):.2f} (n {len(before)})"
        )


if __name__ == "__main__":
    main()
