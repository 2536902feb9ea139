"""Which side a short-axis stack is seen from, and the radiological view for side-aware U-Nets.

A short-axis image seen from the apex (the radiological convention, and how every stack in the
shared ACDC, M&Ms and Sunnybrook data is stored) has the RV on the image left of the septum; seen
from the base it is the mirror image. U-Nets trained with flips (nnU-Net's default) find the RV
by its look alone and do not care; U-Nets trained without them (``[train] mirror = false``,
export/README.md stage 21) may learn the side, so a stack seen from the base is flipped left to
right before them and their labels flipped back (`cmrsdk.layout.turn_stack`).

The side comes from the scanner orientation: displayed with rows down and columns to the right,
the line of sight is ``x_axis x y_axis`` (RAS+), which points from the apex toward the base when
seen from the apex. It is trusted like the slice order (`cmrsdk.regions.ORIENTED_COS`): an
axis-aligned affine (ACDC's NIfTI files carry no scanner orientation) tells nothing, and the stack
is taken as stored, in the radiological view.
"""

from __future__ import annotations

import numpy as np

from .regions import ORIENTED_COS, apex_cosine

__all__ = ["seen_from_apex"]


def seen_from_apex(affine: np.ndarray) -> bool | None:
    """Whether a stack's slices are seen from the apex (True), from the base (False) or cannot tell
    (None: the in-plane axes' normal within ``acos(ORIENTED_COS)`` of neither apex direction, or a
    degenerate affine).

    Parameters
    ----------
    affine : float64 (4, 4), voxel index (z, y, x, 1) -> RAS+ mm (`cmrsdk.Stack.affine`).
    """
    a = np.asarray(affine, dtype=np.float64)
    cos = apex_cosine(np.cross(a[:3, 2], a[:3, 1]))  # columns (x) cross rows (y): into the screen
    if cos is None or abs(cos) < ORIENTED_COS:
        return None
    return cos < 0  # looking from the apex toward the base
