"""The in-plane grid the U-Nets segment on, where it is finer than the one they trained on.

The same weights read small structures better from more pixels: on the development folds
(docs/RESULTS.md, Session 32; five U-Nets, three folds, the 12 unseen patients of each) a
1.25 mm grid instead of the 1.4844 mm training grid found more of the small apical and
mid-ventricular RVs (RVBP label-slices scoring 0: 3 to 14 fewer per run) and drew RV into the
atrium at the base. So the pipeline segments a stack on the finer grid, names its regions from
those masks, and segments the slices it names base again on the training grid.

A finer grid keeps the field of view: the full window and the heart crop grow by the spacing
ratio (to multiples of `MULTIPLE` pixels, what a five-stage U-Net accepts), and the pixel count
that means "heart" on a slice (`cmrsdk.pipeline.MIN_SLICE_PIXELS`) grows by its square. The heart
is still found on the training grid, so the base sees the window it would without a finer grid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import InputError

if TYPE_CHECKING:
    from .bundle import Preprocessing
    from .preprocess import SliceTransform

__all__ = ["MULTIPLE", "SegmentGrid", "segment_grid", "move_centre"]

#: window sides are multiples of this (the U-Nets of export/ halve the image four times)
MULTIPLE = 16


@dataclass(frozen=True)
class SegmentGrid:
    """A grid to segment on, other than the training grid.

    Attributes
    ----------
    preprocessing : the bundle's, with ``target_spacing`` the segmenting grid (dy, dx) mm and
        ``size`` (H, W) pixels the full window grown to the same field of view.
    heart_crop : (h, w) pixels, the heart crop grown likewise, or None (no crop).
    area_ratio : area of a training-grid pixel over one of this grid's: pixel counts scale by it.
    """

    preprocessing: Preprocessing
    heart_crop: tuple[int, int] | None
    area_ratio: float

    def pixels(self, count: int) -> int:
        """``count`` pixels of the training grid as pixels of this grid (the same area)."""
        return int(round(count * self.area_ratio))


def _grown(side: int, scale: float) -> int:
    return max(MULTIPLE, int(round(side * scale / MULTIPLE)) * MULTIPLE)


def segment_grid(
    preprocessing: Preprocessing, heart_crop: tuple[int, int] | None, spacing: tuple[float, float]
) -> SegmentGrid | None:
    """The grid of in-plane ``spacing`` (dy, dx) mm for a bundle trained on ``preprocessing``'s,
    or None where it is the training grid itself. A grid coarser than the training grid is
    refused: it was not measured, and it throws away pixels the networks were trained to read."""
    train = preprocessing.target_spacing
    if not all(s > 0 for s in spacing):
        raise InputError(f"'segment_spacing' must be positive mm values (dy, dx), got {spacing!r}")
    if tuple(spacing) == tuple(train):
        return None
    if any(s > t for s, t in zip(spacing, train)):
        raise InputError(
            f"'segment_spacing' {tuple(spacing)} mm is coarser than the bundle's training grid {tuple(train)} mm; "
            f"give a spacing at most {tuple(train)}, or None for the training grid"
        )
    scale = (train[0] / spacing[0], train[1] / spacing[1])
    size = (_grown(preprocessing.size[0], scale[0]), _grown(preprocessing.size[1], scale[1]))
    crop = None if heart_crop is None else (_grown(heart_crop[0], scale[0]), _grown(heart_crop[1], scale[1]))
    return SegmentGrid(
        replace(preprocessing, target_spacing=(float(spacing[0]), float(spacing[1])), size=size),
        crop,
        scale[0] * scale[1],
    )


def move_centre(centre: tuple[float, float], source: SliceTransform, target: SliceTransform) -> tuple[float, float]:
    """(cy, cx) in pixels of ``source``'s window as pixels of ``target``'s window: the same point
    of the native slice, both transforms from `cmrsdk.preprocess.prepare_slices` of one stack."""
    out = []
    for axis in (0, 1):
        # pixel i of a resampled grid covers the native extent from i * e to (i + 1) * e mm
        def spacing(t: SliceTransform) -> float:
            return t.native_shape[axis] * t.native_spacing[axis] / t.resampled_shape[axis]

        mm = (centre[axis] + source.offset[axis] + 0.5) * spacing(source)
        out.append(mm / spacing(target) - 0.5 - target.offset[axis])
    return out[0], out[1]
