"""Sunnybrook Cardiac Data: the DICOM cine plus manual LV contours, as a labelled study.

Contours are text files ``IM-0001-NNNN-{i,o}contour-manual.txt`` of ``x y`` points in pixel
coordinates (x along a row = column index, y = row index) of image ``NNNN.dcm``, **one-based**:
the first pixel's centre is (1, 1), as MATLAB counts. The files do not say so; the images do
(`scripts/sunnybrook_contour_origin.py`, docs/RESULTS.md "Session 34"): read as one-based, the
i-contours run along the strongest edges and enclose the brightest blood pool; read as zero-based
they sit one pixel down and right of both. LVBP is inside the i-contour (endocardium); LVM is
inside the o-contour (epicardium) and outside the i-contour. A pixel is inside when its centre
(integer zero-based coordinates) is inside the polygon (even-odd rule).
The RV is not contoured: RVBP never appears, and at ES (i-contours only) LVM is unknown (0).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .._warn import warn
from ..errors import ReadError
from ..labels import LVBP, LVM
from ..types import Study
from ._walk import reason
from .dicom import read_dicom_study

__all__ = ["CONTOUR_ORIGIN", "read_sunnybrook", "polygon_mask", "read_contour"]

_CONTOUR_NAME = re.compile(r"IM-\d+-(\d+)-([io])contour-manual\.txt$")


CONTOUR_ORIGIN = 1.0
"""Pixel coordinate of the first pixel's centre in Sunnybrook contour files (one-based)."""


def read_contour(path: Path) -> np.ndarray:
    """float64 (N, 2) polygon points (x, y) in zero-based pixel coordinates (the first pixel's
    centre at (0, 0), as numpy indexes) from a Sunnybrook contour file (one-based, `CONTOUR_ORIGIN`)."""
    try:
        points = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except OSError as exc:  # permission denied; a folder where the file should be
        raise ReadError(path, f"cannot be read ({reason(exc)})") from exc
    except ValueError as exc:
        raise ReadError(path, f"contour is not a list of 'x y' numbers ({exc})") from exc
    if points.shape[1] != 2 or points.shape[0] < 3 or not np.all(np.isfinite(points)):
        raise ReadError(path, f"contour must hold at least 3 finite 'x y' points, got shape {points.shape}")
    return points - CONTOUR_ORIGIN


def polygon_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool (Y, X): pixel centres (integer x, y) inside the polygon ``points`` (N, 2) (x, y), even-odd rule."""
    mask = np.zeros(shape, dtype=bool)
    x0, y0 = np.floor(points.min(axis=0)).astype(int)
    x1, y1 = np.ceil(points.max(axis=0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1] - 1), min(y1, shape[0] - 1)
    if x1 < x0 or y1 < y0:
        return mask
    yy, xx = np.mgrid[y0 : y1 + 1, x0 : x1 + 1].astype(np.float64)
    inside = np.zeros(yy.shape, dtype=bool)
    a, b = points, np.roll(points, -1, axis=0)
    for (ax, ay), (bx, by) in zip(a, b):
        if ay == by:
            continue  # a horizontal edge never crosses the horizontal ray
        crosses = (ay > yy) != (by > yy)
        x_cross = ax + (yy - ay) * (bx - ax) / (by - ay)
        inside ^= crosses & (xx < x_cross)
    mask[y0 : y1 + 1, x0 : x1 + 1] = inside
    return mask


#: how far (pixels) a contour point may lie beyond the image's outer pixel edge unremarked: a
#: hand-drawn contour may touch the border
CONTOUR_MARGIN = 1.0


def _contour_mask(file: Path, image: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The mask of contour ``file`` on the image named ``image`` of ``shape`` (rows, columns); None
    where it encloses no pixel centre (wholly outside the image, or collapsed). Either, and a
    contour reaching outside the image (its mask clipped), is warned, naming the file: the truth
    scored against is then not the annotator's whole contour, or the image is not scored. One
    annotation error does not refuse the series' other contours."""
    points = read_contour(file)
    rows, cols = shape
    # zero-based pixel centres run 0..cols-1: the image's edges are half a pixel beyond them
    low, high = -0.5 - CONTOUR_MARGIN, np.array([cols, rows]) - 0.5 + CONTOUR_MARGIN
    outside = np.any((points < low) | (points > high), axis=1)
    mask = polygon_mask(points, shape)
    if not mask.any():
        warn(f"{file}: contour encloses no pixel centre of image {image} ({cols} x {rows}): left out of the scores")
        return None
    if outside.any():
        x, y = points[int(np.argmax(outside))] + CONTOUR_ORIGIN  # as the file writes it (one-based)
        warn(
            f"{file}: contour point ({x:.1f}, {y:.1f}) lies outside image {image}'s {cols} x {rows} pixels "
            f"({int(outside.sum())} of {len(points)} points outside): scored as clipped to the image"
        )
    return mask


def read_sunnybrook(series_dir: str | Path, contour_dir: str | Path) -> Study:
    """Read a Sunnybrook cine series with its manual contours as labels.

    Parameters
    ----------
    series_dir : the DICOM folder (``N.dcm`` files).
    contour_dir : the patient's contour folder holding ``i-contours/`` and ``o-contours/``.

    Returns
    -------
    The cine :class:`Study` of :func:`read_dicom_study`; phases with contours carry uint8
    (Z, Y, X) labels (LVBP, LVM; 0 elsewhere). ``ed_index`` is the phase with o-contours,
    ``es_index`` the other contoured phase (None where there is none).

    Raises
    ------
    ReadError : a contour file that cannot be read, is not a list of points, or names an image not
        in the series. A contour reaching outside its image (more than `CONTOUR_MARGIN` pixels
        beyond the edge: clipped) or enclosing no pixel (left out) is warned (`CmrWarning`).
    """
    contour_dir = Path(contour_dir)
    study = read_dicom_study(series_dir)
    where: dict[int, tuple[int, int]] = {}
    names: dict[int, str] = {}
    for t, stack in enumerate(study.phases):
        for z, source_file in enumerate(stack.source_files):
            stem = Path(source_file).stem
            if stem.isdigit():
                where[int(stem)] = (t, z)
                names[int(stem)] = Path(source_file).name
    files = sorted(contour_dir.glob("*-contours/*contour-manual.txt"))
    if not files:
        raise ReadError(contour_dir, "no Sunnybrook contour files (i-contours/, o-contours/) found")
    shape = study.phases[0].shape
    inner: dict[tuple[int, int], np.ndarray] = {}
    outer: dict[tuple[int, int], np.ndarray] = {}
    for file in files:
        match = _CONTOUR_NAME.search(file.name)
        if match is None:
            continue
        number, kind = int(match.group(1)), match.group(2)
        if number not in where:
            raise ReadError(file, f"contour refers to image {number}.dcm, which is not in series {series_dir}")
        target = inner if kind == "i" else outer
        mask = _contour_mask(file, names[number], shape[1:])
        if mask is not None:
            target[where[number]] = mask
    labels = {t: np.zeros(shape, dtype=np.uint8) for t, _ in list(inner) + list(outer)}
    for (t, z), mask in outer.items():
        labels[t][z][mask] = LVM
    for (t, z), mask in inner.items():
        labels[t][z][mask] = LVBP
    phases = tuple(s.with_labels(labels[t]) if t in labels else s for t, s in enumerate(study.phases))
    ed_phases = sorted({t for t, _ in outer}) or sorted(labels)
    ed = ed_phases[0] if ed_phases else study.ed_index
    others = [t for t in sorted(labels) if t != ed]
    return Study(
        phases=phases,
        ed_index=ed,
        es_index=others[0] if others else None,
        trigger_times_ms=study.trigger_times_ms,
        info=study.info,
    )
