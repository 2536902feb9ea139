"""The input checks that several modules share: one spacing validator, one label-map checker.

Each raises `cmrsdk.errors.InputError` naming the parameter, the value received and what was
expected, and returns the value in the form the caller computes with.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import InputError

__all__ = [
    "IN_PLANE_RANGE_MM",
    "SLICE_RANGE_MM",
    "MAX_PIXEL_ASPECT",
    "MAX_STEP_RATIO",
    "MAX_MATRIX",
    "check_spacing",
    "check_label_map",
    "check_stack_geometry",
]

#: pixel sizes (mm) of a cardiac MR image; outside, a header error or other units (metres, or
#: centimetres: a 1.56 mm pixel is 0.156 cm; human cines are 0.6-3 mm, interpolated ones 0.5 mm)
IN_PLANE_RANGE_MM = (0.3, 20.0)
#: distances between slice centres (mm) of a short-axis stack
SLICE_RANGE_MM = (0.05, 100.0)
#: the largest ratio of a pixel's two sides: cine pixels are square or nearly so, and a spacing
#: given in (dx, dy, dz) order, (1.56, 1.56, 10), reads as 1.56 x 10 mm pixels
MAX_PIXEL_ASPECT = 3.0
#: the largest ratio between the slice spacing dz and the slices' median distance apart: positions
#: in centimetres beside a spacing in millimetres measure every volume ten times too small
MAX_STEP_RATIO = 2.0
#: rows or columns of a cine MR image at most; larger is another kind of image (or pixels misread)
MAX_MATRIX = 2048
#: a short-axis cine holds at most a few dozen slices; more slices than this, with a side of under
#: a quarter as many pixels, is an array in another axis order, (Y, X, Z), not a stack
#: (`cmrsdk.Stack`; a stack with a gap filled for a NIfTI grid may hold more slices, on a wide field)
MAX_SLICES = 64


def check_spacing(spacing: Any, name: str = "spacing") -> tuple[float, float, float]:
    """``spacing`` as (dz, dy, dx) floats in mm, each finite and positive.

    Raises
    ------
    InputError
        Not three numbers, or one of them not finite and positive.
    """
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError) as exc:
        raise InputError(f"'{name}' must be (dz, dy, dx) in mm, got {spacing!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"'{name}' must be three finite positive mm values (dz, dy, dx), got {spacing!r}")
    return values[0], values[1], values[2]


def check_affine(affine: Any, name: str = "'affine'") -> np.ndarray:
    """``affine`` as a float64 (4, 4) voxel (z, y, x, 1) -> RAS+ mm matrix whose three axes span a grid.

    Raises
    ------
    InputError
        Not (4, 4), not finite (the entries named), or its axes' columns of length 0 or in one
        plane (a singular 3 x 3): no grid to put masks on, refused before any segmentation.
    """
    try:
        array = np.asarray(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name} must be a (4, 4) matrix of numbers ({exc})") from exc
    if array.shape != (4, 4):
        raise InputError(f"{name} must be a finite (4, 4) matrix, got shape {array.shape}")
    if not np.isfinite(array).all():
        where = [tuple(int(i) for i in at) for at in np.argwhere(~np.isfinite(array))]
        raise InputError(f"{name} must be finite, got non-finite values at {where[:4]} of {array.tolist()}")
    lengths = np.linalg.norm(array[:3, :3], axis=0)
    if not (lengths > 0).all() or abs(np.linalg.det(array[:3, :3])) <= 1e-9 * float(np.prod(lengths)):
        raise InputError(
            f"{name} axes (z, y, x) have lengths {np.round(lengths, 4).tolist()} mm and span no grid "
            f"(a zero or repeated column): {np.round(array, 4).tolist()}"
        )
    return array


def check_label_map(labels: Any, name: str = "labels", *, canonical: bool = False) -> np.ndarray:
    """``labels`` as a 3-D (Z, Y, X) integer (or boolean) array, not copied where it already is one;
    with ``canonical``, its values the canonical labels 0..3 (0 bg, 1 LVBP, 2 LVM, 3 RVBP).

    Raises
    ------
    InputError
        Not 3-D, not of an integer or boolean dtype, or (``canonical``) a value outside 0..3: a
        negative one failed inside numpy, a 300 counted as nothing.
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InputError(f"'{name}' must be 3-D (Z, Y, X), got shape {array.shape}")
    if array.dtype.kind not in "uib":
        raise InputError(f"'{name}' must hold integer labels (uint8 canonical labels), got dtype {array.dtype}")
    if canonical and array.size and array.dtype.kind != "b":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 3:
            raise InputError(
                f"'{name}' must hold canonical labels 0..3 (background, LVBP, LVM, RVBP), got values {low}..{high}"
            )
    return array


def check_stack_geometry(
    spacing: tuple[float, float, float],
    positions: np.ndarray,
    source: str,
    *,
    what: str = "Stack",
    thickness_as_dz: bool = False,
) -> None:
    """A stack's (dz, dy, dx) spacing and (Z,) slice positions (mm) as a cardiac MR stack has them.

    The readers refuse other sizes from the file headers; a stack built in Python meets the same
    bounds, so that spacing in metres (0.0016) or positions all equal give an error, not 0 mL.
    ``what`` names the caller in the messages; with ``thickness_as_dz`` (the volume metrics, which
    count each slice by its positions, not dz) positions further apart than dz are taken: the
    caller's dz may be the slice thickness of a stack with gaps.

    Raises
    ------
    InputError
        In-plane spacing outside `IN_PLANE_RANGE_MM` or a pixel more than `MAX_PIXEL_ASPECT`
        times as long as wide; slice spacing, or (two or more slices) the median distance
        between neighbouring positions, outside `SLICE_RANGE_MM`, or that distance more than
        `MAX_STEP_RATIO` times off the slice spacing (below it only, ``thickness_as_dz``); a
        position not finite.
    """
    where = f" of {source}" if source else ""

    def within(value: float, low: float, high: float) -> bool:  # the bounds themselves taken after float rounding
        return low * (1 - 1e-9) <= value <= high * (1 + 1e-9)

    low, high = IN_PLANE_RANGE_MM
    if not all(within(s, low, high) for s in spacing[1:]):
        raise InputError(
            f"{what}{where} 'spacing' (dy, dx) {list(spacing[1:])} mm is outside {low}..{high} mm: "
            "pixel sizes in other units (metres, centimetres?)"
        )
    if max(spacing[1:]) > MAX_PIXEL_ASPECT * min(spacing[1:]):
        raise InputError(
            f"{what}{where} 'spacing' {list(spacing)} gives pixels of {spacing[1]:g} x {spacing[2]:g} mm, more "
            f"than {MAX_PIXEL_ASPECT:g} times as long as wide: spacing is (dz, dy, dx), slice spacing first"
        )
    low, high = SLICE_RANGE_MM
    if not within(spacing[0], low, high):
        raise InputError(f"{what}{where} 'spacing' dz {spacing[0]} mm is outside {low}..{high} mm")
    if not np.all(np.isfinite(positions)):
        raise InputError(f"{what}{where} 'slice_positions' must be finite mm values, got {positions.tolist()}")
    if len(positions) >= 2:
        step = float(np.median(np.abs(np.diff(positions))))
        if not within(step, low, high):
            raise InputError(
                f"{what}{where} 'slice_positions' are {step:g} mm apart (median), outside {low}..{high} mm: "
                f"positions in other units, or every slice at one place ({positions.tolist()[:6]}...)"
            )
        ratio_high = math.inf if thickness_as_dz else MAX_STEP_RATIO
        if not within(step, spacing[0] / MAX_STEP_RATIO, spacing[0] * ratio_high):
            raise InputError(
                f"{what}{where} 'slice_positions' are {step:g} mm apart (median) but 'spacing' dz is "
                f"{spacing[0]:g} mm: both in mm? (volumes count each slice by its distance to its neighbours)"
            )
