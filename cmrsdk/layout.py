"""In-plane layout: how a slice is turned for display, and the layout the U-Nets were trained in.

Both are one of the eight flips and transposes of a slice (exact: no resampling), found from a
stack's affine.

- The radiological view (`display_orientation`): screen-right toward the patient's left and
  screen-down toward posterior-inferior; in a short-axis stack the heart seen from the apex,
  anterior wall up, septum and RV on the left. The montages show slices so.
- The training layout (`training_layout_turn`): the radiological view with its rows flipped.
  ACDC's files, on which the shipped U-Nets were trained, carry no scanner orientation
  (axis-aligned affines), but their labels show one layout: the RV to the image left of the LV
  and below it (LV-to-RV direction median -149 degrees from image-right, 100 patients), where
  the radiological view puts it to the left and above (M&Ms: +111 to +150 degrees), as NIfTI
  converters commonly store DICOM rows bottom-up. A stack with a trusted scanner orientation is
  turned to that layout before the networks and its labels turned back (docs/RESULTS.md,
  Session 35, stage 41); an axis-aligned stack tells nothing and is segmented as stored.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ._checks import check_affine
from .chirality import seen_from_apex
from .types import Stack

__all__ = ["Orientation", "display_orientation", "training_layout_turn", "turn_stack", "unturn_labels"]

_PATIENT_LEFT = np.array([-1.0, 0.0, 0.0])  # RAS+: -x is the patient's left
_POSTERIOR_INFERIOR = np.array([0.0, -1.0, -1.0]) / np.sqrt(2.0)


@dataclass(frozen=True)
class Orientation:
    """How to turn a (Y, X) slice for display: transpose first, then flip rows, then flip columns."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    def apply(self, image: np.ndarray) -> np.ndarray:
        """``image`` (Y, X, ...) turned for display (a view; square tiles keep their shape)."""
        if self.transpose:
            image = np.swapaxes(image, 0, 1)
        if self.flip_rows:
            image = image[::-1]
        if self.flip_cols:
            image = image[:, ::-1]
        return image


def display_orientation(affine: np.ndarray) -> Orientation:
    """The radiological display orientation of slices whose voxel (z, y, x) -> RAS+ mm map is ``affine``.

    Parameters
    ----------
    affine : float64 (4, 4), voxel index (z, y, x, 1) -> RAS+ mm (as `cmrsdk.Stack.affine`).
    """
    affine = check_affine(affine)
    axes = [affine[:3, 1], affine[:3, 2]]  # world direction of +row (y) and +column (x)
    axes = [a / n if (n := np.linalg.norm(a)) > 0 else a for a in axes]
    best, best_score = Orientation(), -np.inf
    for transpose in (False, True):
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                down = axes[1 if transpose else 0] * (-1.0 if flip_rows else 1.0)
                right = axes[0 if transpose else 1] * (-1.0 if flip_cols else 1.0)
                score = float(right @ _PATIENT_LEFT + down @ _POSTERIOR_INFERIOR)
                if score > best_score + 1e-9:
                    best, best_score = Orientation(transpose, flip_rows, flip_cols), score
    return best


def training_layout_turn(affine: np.ndarray) -> Orientation | None:
    """The turn from a stack's stored layout to the training layout (the radiological view, rows
    flipped), or None where the affine is no trusted scanner orientation
    (`cmrsdk.chirality.seen_from_apex` is None: axis-aligned, as ACDC's files).

    Parameters
    ----------
    affine : float64 (4, 4), voxel index (z, y, x, 1) -> RAS+ mm (as `cmrsdk.Stack.affine`).
    """
    if seen_from_apex(affine) is None:
        return None
    view = display_orientation(affine)
    return Orientation(view.transpose, not view.flip_rows, view.flip_cols)


def _index_map(orientation: Orientation, shape_yx: tuple[int, int]) -> np.ndarray:
    """float64 (4, 4): voxel (z, y, x, 1) of the turned stack -> voxel of the stored one."""
    ny, nx = shape_yx
    m = np.eye(4)
    if orientation.transpose:
        m = m @ np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
        ny, nx = nx, ny
    if orientation.flip_rows:
        m = m @ np.array([[1, 0, 0, 0], [0, -1, 0, ny - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64)
    if orientation.flip_cols:
        m = m @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, nx - 1], [0, 0, 0, 1]], dtype=np.float64)
    return m


def turn_stack(stack: Stack, orientation: Orientation) -> Stack:
    """The same anatomy with every slice turned by ``orientation``: pixels and labels (Z, Y, X)
    turned, spacing (dz, dy, dx) swapped in-plane on a transpose, the affine changed so every voxel
    keeps its position in the scanner. `unturn_labels` brings a turned stack's labels back."""
    if orientation == Orientation():
        return stack

    def turned(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(orientation.apply(np.moveaxis(array, 0, -1)).transpose(2, 0, 1))

    dz, dy, dx = stack.spacing
    return replace(
        stack,
        pixels=turned(stack.pixels),
        labels=None if stack.labels is None else turned(stack.labels),
        affine=np.asarray(stack.affine, dtype=np.float64) @ _index_map(orientation, stack.pixels.shape[1:]),
        spacing=(dz, dx, dy) if orientation.transpose else (dz, dy, dx),
    )


def unturn_labels(labels: np.ndarray, orientation: Orientation) -> np.ndarray:
    """``labels`` (Z, Y', X') of a stack turned by ``orientation`` (`turn_stack`), on the stored
    stack's (Z, Y, X) grid again."""
    out = labels
    if orientation.flip_cols:
        out = out[:, :, ::-1]
    if orientation.flip_rows:
        out = out[:, ::-1]
    if orientation.transpose:
        out = out.transpose(0, 2, 1)
    return np.ascontiguousarray(out)
