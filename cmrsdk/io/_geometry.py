"""Geometry helpers shared by the readers: axis reordering and slice positions."""

from __future__ import annotations

import numpy as np

#: images whose ImageOrientationPatient direction cosines agree within this stack as one series
#: (scanners round them per image: 1e-6 apart is one plane)
ORIENTATION_ATOL = 1e-3

__all__ = [
    "ORIENTATION_ATOL",
    "nifti_to_zyx_affine",
    "slice_normal",
    "slice_positions_mm",
    "spacing_from_affine",
]


def nifti_to_zyx_affine(affine_xyz: np.ndarray) -> np.ndarray:
    """Reorder a nibabel affine for arrays transposed from (X, Y, Z) to (Z, Y, X).

    Parameters
    ----------
    affine_xyz : float64 (4, 4), voxel (i, j, k, 1) of the (X, Y, Z) array -> RAS+ mm.

    Returns
    -------
    float64 (4, 4), voxel (z, y, x, 1) of the transposed (Z, Y, X) array -> RAS+ mm: the first
    three columns swap places (column k becomes column 0), the translation stays.
    """
    affine = np.asarray(affine_xyz, dtype=np.float64)
    return affine[:, [2, 1, 0, 3]].copy()


def spacing_from_affine(affine_zyx: np.ndarray) -> tuple[float, float, float]:
    """(dz, dy, dx) in mm: the lengths of the affine's first three columns."""
    norms = np.linalg.norm(np.asarray(affine_zyx, dtype=np.float64)[:3, :3], axis=0)
    return float(norms[0]), float(norms[1]), float(norms[2])


def slice_normal(affine_zyx: np.ndarray) -> np.ndarray:
    """float64 (3,) unit slice normal in RAS+: row direction x column direction, as DICOM defines it.

    The row direction is the x axis (column 2 of a (z, y, x) affine), the column direction the
    y axis (column 1); the cross product is invariant under the LPS <-> RAS flip, so positions
    along it equal the DICOM ones.
    """
    affine = np.asarray(affine_zyx, dtype=np.float64)
    normal = np.cross(affine[:3, 2], affine[:3, 1])
    norm = float(np.linalg.norm(normal))
    if norm == 0.0:
        # a degenerate in-plane frame; fall back on the slice axis itself
        normal, norm = affine[:3, 0].copy(), float(np.linalg.norm(affine[:3, 0])) or 1.0
    return normal / norm


def slice_positions_mm(affine_zyx: np.ndarray, n_slices: int) -> np.ndarray:
    """float64 (Z,): each slice's voxel (z, 0, 0) position along :func:`slice_normal`, mm."""
    affine = np.asarray(affine_zyx, dtype=np.float64)
    index = np.zeros((n_slices, 4))
    index[:, 0] = np.arange(n_slices)
    index[:, 3] = 1.0
    centres = index @ affine.T
    return centres[:, :3] @ slice_normal(affine)
