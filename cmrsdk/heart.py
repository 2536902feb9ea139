"""The heart search: where the heart lies in the network window, and the window narrowed to it.

The pipeline's "locate" stage (`cmrsdk.pipeline.Pipeline` with a ``heart_crop``). Two pure
functions, apart from the network pass they are handed:

- `locate_heart` runs a segmentation model (the bundle's baseline U-Net) over the central slice
  (odd count) or the two central slices (even count) and takes the centroid of their foreground
  (`heart_centre`: of every foreground pixel, or of the largest piece where the bundle says so;
  two slices' centres averaged); where they show no heart it tries the pairs outward, at most
  `LOCATE_TRIES` groups in all. The groups are symmetric, so a stack stored apex-first is located
  where the same stack stored base-first is (export/README.md, stage 43);
- `crop_to_heart` cuts an (h, w) window around that centre out of the full window, by the crop
  rule of `cmrsdk.preprocess.window_offset` (the one `crop_or_pad` uses), kept inside the full
  window, and returns the `SliceTransform` that maps the narrowed window back.

A study is located once: ED and ES (and every phase of a cine) share the centre found on one
phase (`Pipeline.segment_study`), so the networks see the same anatomy in every phase.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from .errors import InputError
from .labels import MIDDLE
from .preprocess import SliceTransform, largest_component, window_offset

__all__ = [
    "HEART_SEARCHES",
    "MIN_HEART_PIXELS",
    "LOCATE_TRIES",
    "heart_centre",
    "SliceSegmenter",
    "locate_heart",
    "search_groups",
    "heart_window",
    "crop_to_heart",
]

#: fewer foreground pixels than this in a locating pass: that slice shows no heart.
MIN_HEART_PIXELS = 50
#: most groups of slices (one network call each) the heart search tries per stack.
LOCATE_TRIES = 3

#: what `heart_centre` takes the centre of: "mean", every foreground pixel (the default); "largest",
#: the largest 8-connected piece, for U-Nets that draw pieces away from the heart in the full
#: window they were not trained on (`[train] crop = "heart"`, export/README.md "Stage 35").
HEART_SEARCHES = ("mean", "largest")

#: a segmentation model: float32 (N, channels, H, W) normalised slices -> float32 (N, C, H, W)
#: class probabilities (class 0 background).
SliceSegmenter = Callable[[np.ndarray], np.ndarray]


def locate_heart(
    images: np.ndarray,
    segment: SliceSegmenter,
    regions: np.ndarray | None = None,
    *,
    tries: int = LOCATE_TRIES,
    min_pixels: int = MIN_HEART_PIXELS,
    search: str = "mean",
) -> tuple[float, float] | None:
    """Centre (cy, cx) of the heart in window pixels, or None where no heart is found.

    The slices are tried in the groups of `search_groups`: first the central slice, or the two
    central slices, of those ``regions`` calls middle (where there are any), then of the stack
    and outward (the classifier's "middle" can be wrong: on held-out ACDC patient100 ES it was
    the last two slices, apex and below). Each group is one call of ``segment``; of its slices,
    those whose foreground (argmax over classes > 0) holds at least ``min_pixels`` pixels each
    give a centre (`heart_centre` by ``search``), and the first group with any gives their mean.

    Parameters
    ----------
    images : float32 (Z, channels, H, W) normalised slices, the full network window, as the
        search model reads them (channels 1, or a 2.5D model's `cmrsdk.preprocess.context_slices`).
    segment : the model of the search (see `SliceSegmenter`), called on one or two slices at a time.
    regions : uint8 (Z,) region codes (0 non-cardiac, 1 base, 2 middle, 3 apex), or None.
    tries : most groups tried.
    min_pixels : the smallest foreground that counts as a heart.
    search : one of `HEART_SEARCHES`.

    Returns
    -------
    (cy, cx) in pixel indices of the window (fractions), or None (no slice of the ones tried
    shows a heart, or an empty stack).
    """
    if images.ndim != 4 or images.shape[1] < 1:
        raise InputError(f"'images' must be float32 (Z, channels, H, W), got shape {images.shape}")
    if regions is not None and np.shape(regions) != images.shape[:1]:
        raise InputError(
            f"'regions' must be ({images.shape[0]},) region codes, one per slice, got shape {np.shape(regions)}"
        )
    if search not in HEART_SEARCHES:
        raise InputError(f"'search' must be one of {HEART_SEARCHES}, got {search!r}")
    for group in search_groups(images.shape[0], regions, tries):
        foregrounds = segment(images[group]).argmax(1) > 0
        centres = [heart_centre(f, search) for f in foregrounds if f.sum() >= min_pixels]
        if centres:
            return mean_centre(centres)
    return None


def mean_centre(centres: list[tuple[float, float]]) -> tuple[float, float]:
    """The mean (cy, cx) of one or more centres, in the order-free way a reversed stack gives it too."""
    return float(np.mean([c[0] for c in centres])), float(np.mean([c[1] for c in centres]))


def heart_centre(foreground: np.ndarray, search: str = "mean") -> tuple[float, float]:
    """(cy, cx) in pixel indices (fractions): the mean row and column of every pixel of a bool
    (H, W) ``foreground`` ("mean"), or of its largest 8-connected piece ("largest"). The
    foreground must not be empty."""
    if search not in HEART_SEARCHES:
        raise InputError(f"'search' must be one of {HEART_SEARCHES}, got {search!r}")
    mask = np.asarray(foreground, dtype=bool)
    if mask.ndim != 2 or not mask.any():
        raise InputError(f"'foreground' must be a non-empty bool (H, W) mask, got shape {mask.shape}")
    if search == "largest":
        mask = largest_component(mask[None].astype(np.uint8), connectivity=18)[0] > 0
    ys, xs = np.nonzero(mask)
    return float(ys.mean()), float(xs.mean())


def _outward(indices: list[int]) -> list[list[int]]:
    """Groups of ``indices`` symmetric about their middle: the central one or two, then the pairs outward."""
    lo, hi, groups = (len(indices) - 1) // 2, len(indices) // 2, []
    while lo >= 0:
        groups.append(sorted({indices[lo], indices[hi]}))
        lo, hi = lo - 1, hi + 1
    return groups


def search_groups(n: int, regions: np.ndarray | None, tries: int = LOCATE_TRIES) -> list[list[int]]:
    """The groups of slices `locate_heart` tries, in order: at most ``tries`` groups of one or two
    distinct indices into n slices, no slice twice.

    The central group of the slices ``regions`` calls middle first (where there are any), then the
    stack's central slice (odd n) or two central slices (even n) and the pairs outward. Every
    group is symmetric about a centre, so the groups of a stack stored in reverse order are the
    same slices (mirrored indices).
    """
    middle = np.flatnonzero(regions == MIDDLE).tolist() if regions is not None else []
    candidates = _outward(middle)[:1] + _outward(list(range(n)))
    groups, seen = [], set()
    for group in candidates:
        fresh = [k for k in group if k not in seen]
        if fresh:
            groups.append(fresh)
            seen.update(fresh)
    return groups[:tries]


def heart_window(centre: tuple[float, float], size: tuple[int, int], full: tuple[int, int]) -> tuple[int, int]:
    """(y0, x0): the narrowed window's pixel (0, 0) in the full window, the window kept inside it.

    `window_offset`'s centring rule, then clamped: unlike `cmrsdk.preprocess.crop_or_pad`, the
    heart crop never pads (the full window already holds every pixel worth seeing).
    """
    (h, w), (H, W) = size, full
    if not (0 < h <= H and 0 < w <= W):
        raise InputError(f"'size' must be (h, w) within the window {(H, W)}, got {size}")
    oy, ox = window_offset(centre, size)
    return min(max(oy, 0), H - h), min(max(ox, 0), W - w)


def crop_to_heart(
    images: np.ndarray, transform: SliceTransform, centre: tuple[float, float], size: tuple[int, int]
) -> tuple[np.ndarray, SliceTransform]:
    """Narrow every slice's window to ``size`` around ``centre``, kept inside the full window.

    Parameters
    ----------
    images : float32 (Z, 1, H, W) slices in the full window.
    transform : the full window's `SliceTransform` (from `cmrsdk.preprocess.prepare_slices`).
    centre : (cy, cx) in pixel indices of the full window (from `locate_heart`).
    size : (h, w) of the narrowed window in pixels, h <= H and w <= W.

    Returns
    -------
    images : float32 (Z, 1, h, w), C-contiguous.
    transform : ``transform`` with its offset moved to the narrowed window's pixel (0, 0) and
        its size (h, w), so that `cmrsdk.preprocess.resample_argmax` maps the narrowed window back.
    """
    h, w = size
    y0, x0 = heart_window(centre, size, images.shape[2:])
    cropped = np.ascontiguousarray(images[:, :, y0 : y0 + h, x0 : x0 + w])
    ty, tx = transform.offset
    return cropped, replace(transform, offset=(ty + y0, tx + x0), size=(h, w))
