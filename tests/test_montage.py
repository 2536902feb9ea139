"""Montages: radiological orientation from the affine, heart-centred window, bounded size and cost."""
from __future__ import annotations

import time

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.montage import (
    Orientation,
    cardiac_slices,
    display_orientation,
    heart_window,
    phase_tiles,
    slice_caption,
    study_montage,
    study_montage_png,
)
from cmrsdk.phantom import _affine


def test_phantom_affine_is_already_in_reading_orientation():
    # rows run posterior-inferior and columns to the patient's left: nothing to turn
    assert display_orientation(_affine(10.0, 1.4, 1.4, (10, 200, 180))) == Orientation()


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("flip_rows", [False, True])
@pytest.mark.parametrize("flip_cols", [False, True])
def test_orientation_undoes_any_flip_or_transpose(transpose, flip_rows, flip_cols):
    # store a reading-oriented slice turned some way; the orientation found from the affine turns it back
    affine = _affine(10.0, 1.5, 1.5, (4, 32, 32))
    turned = affine.copy()
    rows, cols = affine[:3, 1].copy(), affine[:3, 2].copy()
    if transpose:
        rows, cols = cols, rows
    if flip_rows:
        rows = -rows
    if flip_cols:
        cols = -cols
    turned[:3, 1], turned[:3, 2] = rows, cols
    image = np.arange(32 * 32).reshape(32, 32)
    stored = image.T if transpose else image
    stored = stored[::-1] if flip_rows else stored
    stored = stored[:, ::-1] if flip_cols else stored
    np.testing.assert_array_equal(display_orientation(turned).apply(stored), image)


def test_orientation_rejects_bad_affine():
    with pytest.raises(InputError, match="'affine' must be a finite"):
        display_orientation(np.eye(3))


def test_heart_window_centres_on_labels_with_margin():
    labels = np.zeros((3, 100, 120), np.uint8)
    labels[1, 40:60, 70:90] = 2  # 20 x 20 px at 1.5 mm: 30 mm
    cy, cx, side = heart_window([labels], (1.5, 1.5), margin_mm=20.0, min_side_mm=10.0)
    assert (cy, cx) == (49.5, 79.5) and side == pytest.approx(30.0 + 40.0)
    # nothing labelled: the middle of the field, at least the minimum side
    cy, cx, side = heart_window([np.zeros_like(labels)], (1.5, 1.5), min_side_mm=90.0)
    assert (cy, cx) == (49.5, 59.5) and side >= 90.0


def test_tiles_draw_contours_in_the_label_colours():
    pixels = np.full((1, 64, 64), 100.0, np.float32)
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 20:44, 20:44] = 1
    tiles = phase_tiles(pixels, labels, (1.0, 1.0), [0], (31.5, 31.5, 64.0), Orientation(), tile=64)
    tile = tiles[0]
    assert tile.shape == (64, 64, 3) and tile.dtype == np.uint8
    assert (tile == (240, 60, 45)).all(axis=2).sum() > 4 * 20  # the LVBP contour, drawn in red
    assert (tile[2, 2] == tile[2, 2, 0]).all()                  # background stays grey


def test_cardiac_slices_and_captions():
    labels = np.zeros((12, 8, 8), np.uint8)
    labels[3:8, 2:5, 2:5] = 1
    assert cardiac_slices(labels, None, 20) == [2, 3, 4, 5, 6, 7, 8]
    assert len(cardiac_slices(labels, None, 4)) == 4
    assert slice_caption(3, 2, 0.974) == "z 3 / middle / 0.97"
    assert slice_caption(3, None, None) == "z 3"


def test_study_montage_is_bounded_and_faster_than_segmentation(segmented_phantom):
    _, result = segmented_phantom
    t0 = time.perf_counter()
    image = study_montage(result, max_slices=12, tile=144, columns=6)
    drawing_ms = (time.perf_counter() - t0) * 1000.0
    assert image.shape[1] <= 6 * 148 + 4 and image.shape[0] <= 4 * 148 + 2 * 22 + 44
    assert image.std() > 20  # not blank
    # drawing costs less than the segmentation it shows (typically ~10 x less, see the PR)
    assert drawing_ms < result.timings_ms["wall"], (drawing_ms, result.timings_ms["wall"])
    png = study_montage_png(result)
    assert png[:4] == b"\x89PNG" and study_montage_png(result) is png  # drawn once, then reused
