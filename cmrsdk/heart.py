"""The heart search: where the heart lies in the network window, and the window narrowed to it.

The pipeline's "locate" stage (`cmrsdk.pipeline.Pipeline` with a ``heart_crop``). Two pure
functions, apart from the network pass they are handed:

- `locate_heart` runs a segmentation model (the bundle's baseline U-Net) over the central slice
  (odd count) or the two central slices (even count) and takes the centroid of their foreground
  (`heart_centre`: of every foreground pixel, or of the largest piece where the bundle says so;
  two slices' centres averaged); where they show no heart it tries the pairs outward, at most
  `LOCATE_TRIES` groups in all. The groups are symmetric, so a stack stored apex-first is located
  where the same stack stored base-first is (export/README.md, stage 43);
- `search_field` looks for the heart over a whole field larger than the network window, window
  by window (`field_tiles`), where the first search found none: the pipeline's fallback for a heart
  far off the image centre (a large field of view with the heart in a corner, sweep 40);
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
from .labels import LVBP, MIDDLE
from .preprocess import SliceTransform, largest_component, window_offset

__all__ = [
    "HEART_SEARCHES",
    "MIN_HEART_PIXELS",
    "LOCATE_TRIES",
    "heart_centre",
    "SliceSegmenter",
    "locate_heart",
    "search_groups",
    "field_tiles",
    "search_field",
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


def field_tiles(field: int, window: int) -> list[int]:
    """First indices of the windows of ``window`` pixels that `search_field` tries along one axis
    of ``field`` pixels: steps of half a window, the last one flush with the field's end, so that
    anything up to half a window across lies whole in one of them. [0] where the field fits one."""
    if field < 1 or window < 1:
        raise InputError(f"'field' and 'window' must be positive pixel counts, got {field} and {window}")
    if field <= window:
        return [0]
    step = max(window // 2, 1)
    return sorted({*range(0, field - window, step), field - window})


def search_field(
    images: np.ndarray,
    segment: SliceSegmenter,
    size: tuple[int, int],
    *,
    min_pixels: int = MIN_HEART_PIXELS,
    search: str = "mean",
) -> tuple[float, float] | None:
    """Centre (cy, cx) of the heart in a whole field larger than the network window, or None.

    The field is tiled with windows of ``size`` (`field_tiles` on each axis); the central slice
    (odd count) or two central slices (even count) of each window are segmented, one call of
    ``segment`` per window, as `locate_heart`'s first group. Of the windows whose slices show an
    LV blood pool (label `cmrsdk.labels.LVBP`; a slice counts where its foreground holds at least
    ``min_pixels`` pixels), the one the model is surest of wins (the mean of its largest class
    probability over their foreground, to 3 decimals; of equally sure ones, the one with more LV), and its
    foreground's centre (`heart_centre` by
    ``search``, two slices averaged) is returned. Sureness, not size: on a noise background the
    shipped U-Net draws more "LV" than a real heart holds (held-out ACDC patient065 in a 1.75x
    field: 2,175 px of noise against the heart's 1,857), but surely less (0.82-0.93 against 0.975,
    the gate `cmrsdk.pipeline.MIN_HEART_CONFIDENCE` lies between). A window with no LV never wins.

    Parameters
    ----------
    images : float32 (Z, channels, Hf, Wf) normalised slices of the whole field on the network's
        grid, as the search model reads them (see `locate_heart`); Hf >= h and Wf >= w.
    segment : the model of the search (see `SliceSegmenter`), called on one or two slices at a time.
    size : (h, w) of the network window in pixels.
    min_pixels : the smallest foreground that counts as a heart.
    search : one of `HEART_SEARCHES`.

    Returns
    -------
    (cy, cx) in pixel indices of the field (fractions), or None (no window shows an LV, or an
    empty stack).
    """
    if images.ndim != 4 or images.shape[1] < 1:
        raise InputError(f"'images' must be float32 (Z, channels, H, W), got shape {images.shape}")
    if search not in HEART_SEARCHES:
        raise InputError(f"'search' must be one of {HEART_SEARCHES}, got {search!r}")
    (h, w), (hf, wf) = size, images.shape[2:]
    if not (0 < h <= hf and 0 < w <= wf):
        raise InputError(f"'size' must be (h, w) within the field {(hf, wf)}, got {size}")
    groups = search_groups(images.shape[0], None, 1)
    if not groups:
        return None
    group = groups[0]
    best: tuple[tuple[float, int], tuple[float, float]] | None = None
    for y0 in field_tiles(hf, h):
        for x0 in field_tiles(wf, w):
            probabilities = segment(np.ascontiguousarray(images[group, :, y0 : y0 + h, x0 : x0 + w]))
            labels = probabilities.argmax(1)
            shown = [k for k, lab in enumerate(labels) if (lab > 0).sum() >= min_pixels]
            if not shown or not np.any(labels[shown] == LVBP):
                continue
            # sureness to 3 decimals (float32 sums differ below that), then the LV's size
            sure = round(float(probabilities[shown].max(1)[labels[shown] > 0].mean()), 3)
            score = sure, int((labels[shown] == LVBP).sum())
            if best is None or score > best[0]:
                cy, cx = mean_centre([heart_centre(labels[k] > 0, search) for k in shown])
                best = (score, (cy + y0, cx + x0))
    return None if best is None else best[1]


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
