"""Montages: radiological orientation from the affine, heart-centred window, bounded size and cost."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from cmrsdk import DEMO_BUNDLE, Pipeline
from cmrsdk.errors import InputError
from cmrsdk.montage import (
    LABEL_RGB,
    Orientation,
    _sample,
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
    assert (tile[2, 2] == tile[2, 2, 0]).all()  # background stays grey


def test_cardiac_slices_and_captions():
    labels = np.zeros((12, 8, 8), np.uint8)
    labels[3:8, 2:5, 2:5] = 1
    assert cardiac_slices(labels, None, 20) == [2, 3, 4, 5, 6, 7, 8]
    assert len(cardiac_slices(labels, None, 4)) == 4
    assert slice_caption(3, 2, 0.974) == "z 3 / middle / 0.97"
    assert slice_caption(3, None, None) == "z 3"


def test_study_montage_is_bounded_and_faster_than_segmentation(segmented_phantom):
    study, result = segmented_phantom
    image = study_montage(result, max_slices=12, tile=144, columns=6)
    assert image.shape[1] <= 6 * 148 + 4 and image.shape[0] <= 4 * 148 + 2 * 22 + 44
    assert image.std() > 20  # not blank
    # the picture costs a small fraction of the segmentation it shows, both timed here on a fresh
    # result (benchmarks/montage_cost.py: median ratio 0.05 on the loaded 2-core CPU; it was 0.4
    # before the montage was drawn in palette indices)
    pipeline = Pipeline(DEMO_BUNDLE)
    ratios = []
    for _ in range(3):
        t0 = time.perf_counter()
        fresh = pipeline.segment_study(study)
        t1 = time.perf_counter()
        png = study_montage_png(fresh)
        ratios.append((time.perf_counter() - t1) / (t1 - t0))
    assert np.median(ratios) < 0.25, ratios
    assert png[:4] == b"\x89PNG" and study_montage_png(fresh) is png  # drawn once, then reused


def test_png_is_the_montage_in_a_palette(segmented_phantom):
    _, result = segmented_phantom
    with Image.open(io.BytesIO(study_montage_png(result))) as png:
        assert png.mode == "P"
        decoded = np.asarray(png.convert("RGB"))
    np.testing.assert_array_equal(decoded, study_montage(result))
    # every structure's contour colour is on the picture
    for rgb in LABEL_RGB.values():
        assert (decoded == rgb).all(axis=2).sum() > 100, rgb


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_bilinear_sampling_matches_scipy(dtype):
    rng = np.random.default_rng(3)
    images = (rng.uniform(0, 200, (3, 41, 37))).astype(dtype)
    # the grid overhangs every edge: outside the slice the image is 0, with a linear fall-off
    # over the first pixel beyond it (scipy on a zero-padded copy)
    rows, cols = np.linspace(-2.6, 43.3, 55), np.linspace(-1.2, 38.9, 48)
    r, c = np.meshgrid(rows + 1, cols + 1, indexing="ij")
    expected = np.stack(
        [ndi.map_coordinates(np.pad(im.astype(np.float64), 1), [r, c], order=1, mode="constant") for im in images]
    )
    got = _sample(images, rows, cols)
    assert got.dtype == np.float32 and got.shape == (3, 55, 48)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
    # identity: the pixel centres return the image
    np.testing.assert_allclose(_sample(images, np.arange(41.0), np.arange(37.0)), images.astype(np.float32))
