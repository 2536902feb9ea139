"""A heart smaller or larger than any the U-Nets learnt, segmented at a size they know.

The U-Nets learnt adult hearts on a fixed grid (the bundle's 1.52 mm pixels) in a 128-pixel
(195 mm) crop: on the 80 ACDC training patients the ED LV (blood pool and myocardium) covers
2,121 to 7,203 mm² on its largest slice (median 4,402; the 4 M&Ms subjects 3,157-6,991). Outside
that range the masks fall apart (sweep 17, the 20 held-out ACDC studies with their pixels claimed
smaller or larger): a child's heart, half an adult's a side, lost a median 33 % of its RVEDV and
two whole ED hearts; a heart 1.5 times an adult's a side, cut by the crop, a median 13 % of its
LV mass.

So where the first pass finds an ED LV under `SMALL_HEART_MM2` or over `LARGE_HEART_MM2` (beyond
every training heart), the study is segmented again as if its pixels were ``1 / scale`` times
their size (`heart_scale`), which puts the heart on the grid at `TARGET_HEART_MM2` or
`TARGET_LARGE_HEART_MM2`. The labels come back on the stack's own pixels, so only the true
spacing is put back and the volumes measured with it. The second pass's millimetre limits
(the clean-up's re-attachment of a displaced slice, `cmrsdk.preprocess.MAX_SLICE_SHIFT_MM`)
read the claimed spacing: they scale with the heart, as the displacement a breath-hold gives a
heart does.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ._checks import IN_PLANE_RANGE_MM
from .labels import LVBP, LVM
from .types import Stack, Study

__all__ = [
    "SMALL_HEART_MM2",
    "LARGE_HEART_MM2",
    "TARGET_HEART_MM2",
    "TARGET_LARGE_HEART_MM2",
    "MIN_HEART_SCALE",
    "lv_area_mm2",
    "heart_scale",
    "feasible_scale",
    "rescaled",
]

#: an ED LV (blood pool + myocardium) under this area (mm², largest slice) is smaller than any the
#: U-Nets learnt (training minimum 2,121 mm², ACDC patient094; first passes on the 106 shared
#: studies at least 2,138)
SMALL_HEART_MM2 = 1800.0

#: the area (mm²) a small heart is enlarged to: within the training range's lower half
TARGET_HEART_MM2 = 3000.0

#: an ED LV over this area is larger than any the U-Nets learnt (training maximum 7,203 mm², ACDC
#: patient006, a dilated cardiomyopathy)
LARGE_HEART_MM2 = 8500.0

#: the area (mm²) a large heart is shrunk to: within the training range's upper half
TARGET_LARGE_HEART_MM2 = 6000.0

#: the smallest scale taken (a heart found at a few pixels is a guess, not a size)
MIN_HEART_SCALE = 0.4


def lv_area_mm2(labels: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """The LV's (LVBP + LVM) largest area over the slices, mm².

    labels : uint8 (Z, Y, X) canonical labels; spacing : (dz, dy, dx) mm."""
    if labels.size == 0:
        return 0.0
    # per slice, compared as uint8: np.isin took 7 ms on a 10-slice stack, this 0.1
    pixels = max(np.count_nonzero((s == LVBP) | (s == LVM)) for s in labels)
    return float(pixels) * float(spacing[1]) * float(spacing[2])


def heart_scale(area_mm2: float) -> float | None:
    """The linear scale of a heart whose ED LV covers ``area_mm2`` against the size it is
    segmented at: under 1 (at least `MIN_HEART_SCALE`) for a heart under `SMALL_HEART_MM2`, over
    1 for one over `LARGE_HEART_MM2`; None for a heart of training size or none at all (0)."""
    if 0.0 < area_mm2 < SMALL_HEART_MM2:
        return max(MIN_HEART_SCALE, math.sqrt(area_mm2 / TARGET_HEART_MM2))
    if area_mm2 > LARGE_HEART_MM2 and math.isfinite(area_mm2):
        return math.sqrt(area_mm2 / TARGET_LARGE_HEART_MM2)
    return None


def feasible_scale(scale: float, study: Study) -> float | None:
    """``scale`` limited so that every phase's claimed pixels stay within `IN_PLANE_RANGE_MM` (a
    study of 0.45 mm pixels cannot be claimed 1.6 times finer); None where no rescale is left."""
    low, high = IN_PLANE_RANGE_MM
    finest = min(min(s.spacing[1:]) for s in study.phases)
    coarsest = max(max(s.spacing[1:]) for s in study.phases)
    # claimed spacing = spacing / scale must stay within [low, high]
    scale = min(max(scale, coarsest / high), finest / low)
    return None if abs(scale - 1.0) < 0.05 else scale


def _rescaled_stack(stack: Stack, scale: float) -> Stack:
    affine = np.array(stack.affine, dtype=np.float64, copy=True)
    affine[:3, 1:3] /= scale  # the row and column steps (the affine's columns are z, y, x)
    dz, dy, dx = stack.spacing
    return replace(stack, spacing=(dz, dy / scale, dx / scale), affine=affine)


def rescaled(study: Study, scale: float) -> Study:
    """``study`` with every phase's in-plane pixel spacing divided by ``scale`` (under 1: larger
    pixels, the heart larger in mm; over 1: smaller), the affine alike; slice spacing,
    positions and pixels unchanged."""
    return replace(study, phases=tuple(_rescaled_stack(s, scale) for s in study.phases))
