"""Montages: radiological orientation from the affine, heart-centred window, bounded size and cost;
what a reader sees (redteam11): one row per phase shown, shared slices base -> apex, honest notes,
colour-blind-safe thin contours, captions and legend that fit."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

import cmrsdk.montage as montage
from cmrsdk import DEMO_BUNDLE, Pipeline
from cmrsdk.errors import InputError
from cmrsdk.labels import APEX, BASE, LVBP, LVM, MIDDLE, NON_CARDIAC, RVBP
from cmrsdk.metrics import CardiacMeasures
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
from cmrsdk.pipeline import Segmentation, StudySegmentation
from cmrsdk.types import Stack


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
    assert (tile == LABEL_RGB[LVBP]).all(axis=2).sum() > 4 * 20  # the LVBP contour, in its colour
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
    # two headings, four lines of tiles, the legend and a note of at most three lines
    assert image.shape[1] <= 6 * 148 + 4 and image.shape[0] <= 4 * 148 + 2 * 22 + 26 + 3 * 14 + 4
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


# --- what a reader sees (runs/redteam11 findings 2, 5-12, 15) -----------------------------------

_NAN_MEASURES = CardiacMeasures(*([float("nan")] * 9))


def _phase(
    z: int = 10,
    *,
    affine: np.ndarray | None = None,
    heart: tuple[int, int] = (1, 9),
    regions: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    name: str | None = None,
    size: int = 48,
) -> Segmentation:
    """A synthetic segmented phase: slice k's pixels are k + 1 everywhere (so a tile tells its slice),
    an LV (blood pool in a myocardial ring) and an RV on slices heart[0] .. heart[1] - 1, narrowing
    toward the higher index (slice 0 basal by the areas)."""
    pixels = np.repeat(np.arange(1.0, z + 1.0, dtype=np.float32)[:, None, None], size, 1).repeat(size, 2)
    labels = np.zeros((z, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for k in range(*heart):
        r = max(2.0, 12.0 - 1.2 * (k - heart[0]))
        d = np.hypot(yy - size / 2, xx - size / 2 - 4)
        labels[k][d < r + 4] = LVM
        labels[k][d < r] = LVBP
        labels[k][(np.hypot(yy - size / 2, xx - size / 2 + 16) < r * 0.8) & (labels[k] == 0)] = RVBP
    if probabilities is None and regions is not None:
        probabilities = np.eye(4, dtype=np.float32)[regions]
    stack = Stack(
        pixels,
        (10.0, 1.5, 1.5),
        affine=np.eye(4) if affine is None else affine,
        slice_positions=positions,
        phase=name,
    )
    return Segmentation(stack, labels, regions, probabilities, {}, {})


def _study(*phases: Segmentation, ed: int = 0, es: int = 1) -> StudySegmentation:
    ed, es = (0, 0) if len(phases) == 1 else (ed, es)
    return StudySegmentation(tuple(phases), ed, es, np.zeros(len(phases)), _NAN_MEASURES)


def _phantom_affine(z: int = 10, toward_apex: int = 1) -> np.ndarray:
    affine = _affine(10.0, 1.5, 1.5, (z, 48, 48))  # scanner geometry: index 0 basal
    affine[:3, 0] *= toward_apex
    return affine


def test_one_phase_input_is_one_row_named_single_phase():
    # finding 2: drawn twice, as "ED (phase 0)" and "ES (phase 0)"
    # the picture: one heading and its tiles fewer than the two-phase picture of the same slices
    one = study_montage(_study(_phase(6, heart=(1, 5))), tile=64)
    two = study_montage(_study(_phase(6, heart=(1, 5)), _phase(6, heart=(1, 5))), tile=64)
    assert one.shape[0] + 22 + 64 + 4 == two.shape[0], (one.shape, two.shape)
    rows = montage.montage_rows(_study(_phase()), tile=64)
    assert len(rows) == 1 and rows[0].heading.startswith("Single phase:")
    # one phase chosen as both ED and ES in a two-phase study: one row too
    assert [r.heading.split(":")[0] for r in montage.montage_rows(_study(_phase(), _phase(), ed=1, es=1))] == [
        "ED = ES"
    ]


def test_phases_show_the_same_slices_and_say_how_many_of_the_stack():
    # finding 5: 24 slices, max 12: ED and ES showed different slices, and nothing said so
    result = _study(_phase(24, heart=(1, 21), size=96), _phase(24, heart=(3, 18), size=96))
    # on the picture: slice k's pixels are k + 1, so the ED and ES tiles show the same greys
    image = study_montage(result, max_slices=12, tile=64)
    ed_levels = _tile_levels(image, 12, 64)
    es_levels = _tile_levels(image, 12, 64, top=22 + 2 * (64 + 4) + 22)
    assert ed_levels == es_levels and len(set(ed_levels)) == 12, (ed_levels, es_levels)
    ed, es = montage.montage_rows(result, max_slices=12)
    assert ed.slices == es.slices and len(ed.slices) == 12
    assert ed.slices[0] == 0 and ed.slices[-1] == 21  # both ends of the union of the hearts, one more each
    assert "12 of 24 slices shown" in ed.heading and "12 of 24 slices shown" in es.heading
    # every slice shown: said so
    assert "all 10 slices" in montage.montage_rows(_study(_phase(), _phase()))[0].heading


def test_orientation_note_says_when_the_file_does_not_tell():
    # finding 6: "radiological view from the affine" for ACDC files without scanner geometry
    unknown = montage.montage_note(_study(_phase(affine=np.eye(4))))
    assert "not known" in unknown and "radiological" not in unknown.lower()
    known = montage.montage_note(_study(_phase(affine=_phantom_affine())))
    assert "Radiological view" in known and "not known" not in known
    # the picture travels without its page: it says it is automatic and unchecked (sweep 11)
    assert known.splitlines()[-1].startswith("Automatic segmentation by cmrsdk ") and "not verified" in known


def test_headings_name_the_phases_as_the_page_does():
    # finding 7: "ES (phase 1)" read as ACDC's frame 01, which is ED
    two = montage.montage_rows(_study(_phase(name="ED"), _phase(name="ES")))
    assert [r.heading.split(":")[0] for r in two] == ["ED", "ES"]
    cine = _study(*[_phase(name="ED" if t == 0 else None) for t in range(5)], ed=3, es=1)
    rows = montage.montage_rows(cine)
    assert [r.heading.split(":")[0] for r in rows] == ["ED (frame 3)", "ES (frame 1)"]
    assert [r.phase for r in rows] == [3, 1]
    # a reader's own frame names (Sunnybrook's "frame 7") are the page's too
    named = _study(*[_phase(name=f"frame {t + 1}") for t in range(3)], ed=0, es=2)
    assert [r.heading.split(":")[0] for r in montage.montage_rows(named)] == ["ED (frame 1)", "ES (frame 3)"]


def test_captions_leave_out_the_rules_one_hot_confidence():
    # finding 8: every caption ended "/ 1.00", the region rule's value, not a confidence
    assert slice_caption(3, MIDDLE, 1.0) == "z 3 / middle"
    assert slice_caption(3, MIDDLE, 0.974) == "z 3 / middle / 0.97"  # a classifier's probability stays
    regions = np.array([NON_CARDIAC] + [BASE] * 2 + [MIDDLE] * 5 + [APEX] * 2, np.uint8)
    rule = montage.montage_rows(_study(_phase(regions=regions)))[0]
    assert not any("1.00" in c for c in rule.captions), rule.captions
    probabilities = np.eye(4, dtype=np.float32)[regions] * 0.8 + 0.05
    classifier = montage.montage_rows(_study(_phase(regions=regions, probabilities=probabilities)))[0]
    assert all(c.endswith("0.85") for c in classifier.captions), classifier.captions


def _tile_levels(image: np.ndarray, count: int, tile: int, top: int = 22) -> list[float]:
    """Mean grey of the middle of each of the first ``count`` tiles of the first row (6 columns)."""
    means = []
    for i in range(count):
        y, x = top + (i // 6) * (tile + 4), 4 + (i % 6) * (tile + 4)
        means.append(float(image[y + tile - 6 : y + tile - 2, x + 2 : x + 6].mean()))  # a corner free of labels
    return means


@pytest.mark.parametrize("toward_apex", [1, -1])
def test_tiles_run_from_base_to_apex_with_positions(toward_apex):
    # finding 9: tiles in stored order, base first in some inputs and apex first in others
    result = _study(_phase(affine=_phantom_affine(toward_apex=toward_apex), size=96))
    # the tiles are drawn base first: slice k's pixels are k + 1, so the grey follows the order
    levels = _tile_levels(study_montage(result, tile=64), 10, 64)
    assert (np.diff(levels) > 0).all() if toward_apex > 0 else (np.diff(levels) < 0).all(), levels
    (row,) = montage.montage_rows(result, tile=64)
    expected = list(range(10)) if toward_apex > 0 else list(range(9, -1, -1))
    assert row.slices == expected and "base -> apex" in row.heading
    # each caption gives the slice position in mm
    assert all(f"{10 * k}mm" in c or f"{10 * k} mm" in c for k, c in zip(row.slices, row.captions)), row.captions


def test_base_to_apex_without_scanner_geometry_follows_the_regions_or_the_areas():
    # ACDC: no geometry; the heart narrows toward index 9 (areas), the regions agree
    assert montage.base_first(_phase()) is True
    regions = np.array([NON_CARDIAC] + [APEX] * 2 + [MIDDLE] * 5 + [BASE] * 2, np.uint8)
    assert montage.base_first(_phase(regions=regions)) is False
    flipped = montage.montage_rows(_study(_phase(regions=regions)))[0]
    assert flipped.slices == list(range(9, -1, -1))
    # nothing labelled, no geometry: stored order, and the heading says it is not known
    empty = _phase(heart=(0, 0))
    assert montage.base_first(empty) is None
    assert "base and apex not known" in montage.montage_rows(_study(empty))[0].heading


def _simulate(rgb: tuple[int, int, int], matrix: np.ndarray) -> np.ndarray:
    """CIELAB of ``rgb`` seen through a colour-vision deficiency (Machado et al. 2009, severity 1)."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ matrix.T
    linear = np.clip(linear, 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]) @ linear
    xyz /= np.array([0.9505, 1.0, 1.089])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


_CVD = {
    "normal": np.eye(3),
    "deuteranopia": np.array(
        [[0.367322, 0.860646, -0.227968], [0.280085, 0.672501, 0.047413], [-0.01182, 0.04294, 0.968881]]
    ),
    "protanopia": np.array(
        [[0.152286, 1.052583, -0.204868], [0.114503, 0.786281, 0.099216], [-0.003882, -0.048116, 1.051998]]
    ),
}


@pytest.mark.parametrize("vision", list(_CVD))
def test_structure_colours_stay_apart_for_colour_blind_readers(vision):
    # finding 10: LV blood pool (240, 60, 45) and myocardium (50, 205, 70) both olive under deuteranopia
    colours = montage.STRUCTURE_COLOURS
    assert set(colours) == {LVBP, LVM, RVBP} and LABEL_RGB is colours  # one table, the former name kept
    lab = {code: _simulate(rgb, _CVD[vision]) for code, rgb in colours.items()}
    # neighbours (endocardium, septum) far apart; the three apart in lightness alone too
    assert np.linalg.norm(lab[LVBP] - lab[LVM]) > 60 and np.linalg.norm(lab[LVM] - lab[RVBP]) > 60
    lightness = sorted(v[0] for v in lab.values())
    assert min(np.diff(lightness)) > 8, lightness
    # the tiles draw them
    pixels = np.full((1, 64, 64), 100.0, np.float32)
    labels = np.zeros((1, 64, 64), np.uint8)
    labels[0, 10:30, 10:30], labels[0, 34:54, 34:54], labels[0, 10:30, 34:54] = LVBP, LVM, RVBP
    (tile,) = phase_tiles(pixels, labels, (1.0, 1.0), [0], (31.5, 31.5, 64.0), Orientation(), tile=64)
    for code, rgb in colours.items():
        assert (tile == rgb).all(axis=2).sum() >= 4 * 19, code


def test_contours_are_one_pixel_wide_and_leave_a_small_cavity_its_fill():
    # finding 11: both labels drew a 2-px edge, a 4-px band on the endocardium
    colours = montage.STRUCTURE_COLOURS
    pixels = np.full((1, 64, 64), 100.0, np.float32)
    bands = np.zeros((1, 64, 64), np.uint8)
    bands[0, :, 20:30], bands[0, :, 30:40] = LVBP, LVM  # background | LVBP | LVM | background
    (tile,) = phase_tiles(pixels, bands, (1.0, 1.0), [0], (31.5, 31.5, 64.0), Orientation(), tile=64)
    row = tile[32]
    contour = [x for x in range(64) if any((row[x] == rgb).all() for rgb in colours.values())]
    # one pixel at each boundary: LVBP's outer edge, the endocardium on LVBP's side, the epicardium
    assert contour == [20, 29, 39], contour
    assert (row[29] == colours[LVBP]).all() and (row[39] == colours[LVM]).all()
    # an apical cavity 5 px across inside its myocardium keeps a filled centre
    yy, xx = np.mgrid[:64, :64]
    d = np.hypot(yy - 32, xx - 32)
    small = np.zeros((1, 64, 64), np.uint8)
    small[0][d <= 6] = LVM
    small[0][d <= 2.3] = LVBP
    (tile,) = phase_tiles(pixels, small, (1.0, 1.0), [0], (32.0, 32.0, 64.0), Orientation(), tile=64)
    fill = tile[29:36, 29:36]
    edge = (fill == colours[LVBP]).all(axis=2)
    tinted = ~edge & ~(fill == colours[LVM]).all(axis=2) & (fill[..., 0] != fill[..., 2])
    assert tinted.sum() >= 5, tinted  # the cavity's own fill, not only contour


def test_one_slice_picture_is_wide_enough_for_legend_heading_and_note():
    # finding 12: a one-slice input cut the legend, heading and note (156 px wide)
    one = _phase(1, heart=(0, 1), affine=np.eye(4))
    image = study_montage(_study(one), tile=144)
    # nothing drawn in the last columns: no text runs off the right edge
    assert image.shape[1] >= 380 and image[:, -3:].max() == 0, image.shape
    assert image.shape[1] >= montage.MIN_WIDTH >= 380
    png = Image.open(io.BytesIO(study_montage_png(_study(one), tile=64)))
    assert png.size[0] >= 380 and np.asarray(png.convert("RGB"))[:, -3:].max() == 0


@pytest.mark.parametrize("tile", [64, 100, 144])
def test_captions_fit_their_tiles(tile):
    # finding 15: "z 0 / non-cardiac / 1.00" ran into the next tile, the last one off the picture
    regions = np.array([NON_CARDIAC] + [BASE] * 2 + [MIDDLE] * 5 + [APEX] * 2 + [NON_CARDIAC] * 2, np.uint8)
    positions = -103.046 + 9.6 * np.arange(12)
    result = _study(_phase(12, regions=regions, positions=positions, affine=_phantom_affine(12)))
    # on the picture: caption ink only inside the tiles, clear of their right edge and of the gaps
    with Image.open(io.BytesIO(study_montage_png(result, tile=tile))) as png:
        indices = np.asarray(png)
    grid = indices[: 22 + 2 * (tile + 4)]
    xs = np.flatnonzero((grid == 244).any(axis=0))  # the caption ink's palette index
    assert len(xs) and ((xs - 4) % (tile + 4) < tile - 2).all() and xs.max() < 6 * (tile + 4)
    (row,) = montage.montage_rows(result, tile=tile)
    font = montage._font(None)
    assert all(font.getlength(c) <= tile - 6 for c in row.captions), row.captions
    assert all(c.startswith(f"z{k}") or c.startswith(f"z {k}") for k, c in zip(row.slices, row.captions))
