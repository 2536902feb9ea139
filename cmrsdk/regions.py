"""Ground-truth slice regions (non-cardiac / base / middle / apex) from a label map.

The rule (DESIGN.md, made exact here)
-------------------------------------
1. A slice is *labelled* when it holds any foreground label (1 LVBP, 2 LVM, 3 RVBP); every other
   slice is non-cardiac (region 0), wherever it lies, including gaps inside the labelled range.
2. The labelled slices are ordered base to apex. The direction comes from the anatomy, not from
   the file order: the heart narrows towards the apex (the LV tapers to its tip and the RV ends
   before it), so the least-squares slope of the whole-heart area (LVBP + LVM + RVBP pixels)
   against the slice index, over the labelled slices, is negative when index 0 is basal. The
   whole heart is used rather than the LV alone because a hypertrophied LV can keep its area to
   the apex (ACDC patient047 at ES) while the RV still tapers. When the slope is *ambiguous* -- a
   fitted change over the labelled range smaller than ``AMBIGUITY`` (5 %) of the mean area --
   the same test is made on the LV (LVBP + LVM) alone; when that is ambiguous too, the file
   order is kept (index 0 basal, as ACDC and most DICOM exports store it). Over the 200 shared
   ACDC and 8 M&Ms label maps the weakest whole-heart change is 17 % of the mean area.
3. With ``n`` labelled slices, ``n_base = n_apex = floor(0.2 * n + 0.5)`` (20 %, rounded half
   up), raised to 1 when ``n >= 3`` so that every region exists once the heart spans three
   slices; the middle takes the rest (60 %). Examples: n = 10 -> 2/6/2, 8 -> 2/4/2, 7 -> 1/5/1,
   13 -> 3/7/3, 3 -> 1/1/1, 2 -> 0/2/0, 1 -> 0/1/0.

Positions: the k-th labelled slice from the base (k = 0 .. n-1) sits at ``t = k / (n - 1)``
(0 base, 1 apex; a single labelled slice sits at 0.5); non-cardiac slices are NaN.
"""

from __future__ import annotations

import numpy as np

from ._checks import check_label_map
from .errors import InputError
from .labels import APEX, BASE, LVBP, LVM, MIDDLE, NON_CARDIAC

__all__ = [
    "AMBIGUITY",
    "APEX_RAS",
    "ORIENTED_COS",
    "apex_cosine",
    "index_toward_apex",
    "labelled_slices_base_to_apex",
    "region_counts",
    "slice_regions",
    "slice_positions",
    "segmentation_regions",
    "regions_from_areas",
]

#: relative change of area over the labelled range below which a direction is called ambiguous.
AMBIGUITY = 0.05

#: unit vector (RAS+) from the base of the heart to its apex: to the patient's left, anterior and
#: inferior. Any axis-aligned direction meets it at |cos| = 1 / sqrt(3) = 0.577.
APEX_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)

#: |cos| between the slice axis and `APEX_RAS` from which the orientation is trusted. A real
#: short-axis stack is double-oblique along the long axis: 0.96-0.99 on the shared M&Ms and
#: Sunnybrook series. Axis-aligned affines (ACDC's NIfTI files, which carry no scanner
#: orientation: their direction disagrees with the anatomy on all 200 label maps) stay at 0.577,
#: and so does a heart whose apex points right (dextrocardia, about 0.33): both are left to the
#: area rule.
ORIENTED_COS = 0.7


def index_toward_apex(affine: np.ndarray) -> int | None:
    """Which way the slice index runs, from a stack's scanner orientation.

    Parameters
    ----------
    affine : float64 (4, 4), voxel index (z, y, x, 1) -> RAS+ mm (`cmrsdk.Stack.affine`).

    Returns
    -------
    +1 when the index grows toward the apex, -1 when toward the base, None when the orientation
    cannot tell (the slice axis within ``acos(ORIENTED_COS)`` = 46 degrees of `APEX_RAS` or its
    opposite, or a degenerate affine).
    """
    cos = apex_cosine(np.asarray(affine, dtype=np.float64)[:3, 0])
    if cos is None or abs(cos) < ORIENTED_COS:
        return None
    return 1 if cos > 0 else -1


def apex_cosine(vector: np.ndarray) -> float | None:
    """cos of the angle between ``vector`` (float64 (3,), RAS+) and `APEX_RAS`; None for a zero or
    non-finite vector."""
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0.0:
        return None
    return float(vector @ APEX_RAS) / norm


def _area_slope(areas: np.ndarray) -> float | None:
    """Least-squares slope of ``areas`` (float64 (n,)) against index, None when ambiguous."""
    n = areas.size
    mean = float(areas.mean()) if n else 0.0
    if n < 2 or mean <= 0:
        return None
    index = np.arange(n, dtype=np.float64)
    slope = float(np.polyfit(index, areas, 1)[0])
    # the fitted change over the whole range, relative to the mean area
    if abs(slope) * (n - 1) < AMBIGUITY * mean:
        return None
    return slope


def labelled_slices_base_to_apex(labels: np.ndarray, toward_apex: int | None = None) -> np.ndarray:
    """Indices of the labelled slices, ordered from base to apex.

    Parameters
    ----------
    labels : integer (Z, Y, X) canonical label map (0 bg, 1 LVBP, 2 LVM, 3 RVBP).
    toward_apex : +1 / -1 from the stack's orientation (`index_toward_apex`), None to read the
        direction from the areas (the module's rule).

    Returns
    -------
    int64 (n,) slice indices into Z, base first; empty when no slice holds a label.
    """
    array = check_label_map(labels)
    _check_direction(toward_apex)
    foreground = array > 0
    return _base_to_apex(foreground.sum(axis=(1, 2)), ((array == LVBP) | (array == LVM)).sum(axis=(1, 2)), toward_apex)


def _base_to_apex(heart_area: np.ndarray, lv_area: np.ndarray, toward_apex: int | None = None) -> np.ndarray:
    """`labelled_slices_base_to_apex` from the per-slice areas (Z,) of the whole heart and the LV;
    ``toward_apex`` (+1 / -1, see `index_toward_apex`), when given, sets the direction instead."""
    labelled = np.flatnonzero(heart_area > 0)
    if toward_apex is not None:
        return (labelled if toward_apex > 0 else labelled[::-1]).astype(np.int64)
    lv_area = np.asarray(lv_area)[labelled].astype(np.float64)
    all_area = np.asarray(heart_area)[labelled].astype(np.float64)
    slope = _area_slope(all_area)
    if slope is None:
        slope = _area_slope(lv_area)
    # a growing area means index 0 is apical: reverse so that the base comes first
    if slope is not None and slope > 0:
        labelled = labelled[::-1]
    return labelled.astype(np.int64)


def region_counts(n: int) -> tuple[int, int, int]:
    """(n_base, n_middle, n_apex) for ``n`` labelled slices, by the module's rounding rule."""
    if n < 0:
        raise InputError(f"'n' must be a non-negative slice count, got {n}")
    edge = int(np.floor(0.2 * n + 0.5))
    if n >= 3:
        edge = max(edge, 1)
    return edge, n - 2 * edge, edge


def slice_regions(labels: np.ndarray) -> np.ndarray:
    """The ground-truth region of every slice.

    Parameters
    ----------
    labels : integer (Z, Y, X) canonical label map (0 bg, 1 LVBP, 2 LVM, 3 RVBP).

    Returns
    -------
    uint8 (Z,): 0 non-cardiac, 1 base, 2 middle, 3 apex (see the module docstring for the rule).
    """
    array = check_label_map(labels)
    return _regions(labelled_slices_base_to_apex(array), array.shape[0])


def regions_from_areas(
    heart_area: np.ndarray, lv_area: np.ndarray, min_pixels: int = 0, toward_apex: int | None = None
) -> np.ndarray:
    """`segmentation_regions` from per-slice areas alone: the rule reads nothing else.

    Parameters
    ----------
    heart_area : integer (Z,) foreground pixels (any label) per slice.
    lv_area : integer (Z,) LVBP + LVM pixels per slice.
    min_pixels : slices with less foreground hold no heart (see `segmentation_regions`).
    toward_apex : the direction of the slice index (see `segmentation_regions`).

    Returns
    -------
    uint8 (Z,) region codes, as `slice_regions` on the label map they were counted on.
    """
    heart, lv = np.asarray(heart_area), np.asarray(lv_area)
    if heart.ndim != 1 or heart.shape != lv.shape:
        raise InputError(f"'heart_area' and 'lv_area' must be (Z,) alike, got {heart.shape} and {lv.shape}")
    keep = heart >= max(min_pixels, 1)
    _check_direction(toward_apex)
    order = _base_to_apex(np.where(keep, heart, 0), np.where(keep, lv, 0), toward_apex)
    return _regions(order, heart.shape[0])


def _check_direction(toward_apex: int | None) -> None:
    if toward_apex not in (None, 1, -1):
        raise InputError(f"'toward_apex' must be +1, -1 or None, got {toward_apex!r}")


def _regions(order: np.ndarray, z: int) -> np.ndarray:
    """uint8 (Z,) regions from the labelled slices ordered base to apex."""
    regions = np.full(z, NON_CARDIAC, dtype=np.uint8)
    n_base, n_middle, _ = region_counts(order.size)
    regions[order[:n_base]] = BASE
    regions[order[n_base : n_base + n_middle]] = MIDDLE
    regions[order[n_base + n_middle :]] = APEX
    return regions


def slice_positions(labels: np.ndarray) -> np.ndarray:
    """Each labelled slice's relative position from base (0) to apex (1).

    Parameters
    ----------
    labels : integer (Z, Y, X) canonical label map.

    Returns
    -------
    float64 (Z,): ``k / (n - 1)`` for the k-th labelled slice from the base (0.5 when n = 1),
    NaN for non-cardiac slices.
    """
    array = check_label_map(labels)
    positions = np.full(array.shape[0], np.nan, dtype=np.float64)
    order = labelled_slices_base_to_apex(array)
    if order.size == 1:
        positions[order] = 0.5
    elif order.size > 1:
        positions[order] = np.arange(order.size, dtype=np.float64) / (order.size - 1)
    return positions


def segmentation_regions(labels: np.ndarray, min_pixels: int = 0, toward_apex: int | None = None) -> np.ndarray:
    """Regions by the ground-truth rule applied to a predicted label map.

    Routing by a segmentation: a U-Net trained on every slice (the baseline) segments the stack,
    and the rule that defines the ground-truth regions (this module) is applied to its masks. The
    rule sees the whole stack -- which slices hold heart, where the heart narrows -- which a
    classifier of one slice cannot: it names regions exactly where the masks are right.

    Parameters
    ----------
    labels : integer (Z, Y, X) predicted canonical labels (any in-plane grid).
    min_pixels : a slice with fewer foreground pixels than this holds no heart (region 0): specks
        on slices above the base or below the apex do not make them cardiac.
    toward_apex : +1 when the slice index grows toward the apex, -1 when toward the base (from
        the stack's orientation, `index_toward_apex`), None to read it from the masks' areas.

    Returns
    -------
    uint8 (Z,) region codes, as `slice_regions`.
    """
    array = check_label_map(labels)
    if min_pixels < 0:
        raise InputError(f"'min_pixels' must be >= 0, got {min_pixels}")
    heart = (array > 0).sum(axis=(1, 2))
    lv = ((array == LVBP) | (array == LVM)).sum(axis=(1, 2))
    return regions_from_areas(heart, lv, min_pixels, toward_apex)
