"""Synthetic studies: determinism, anatomy, motion, geometry, speed."""

from __future__ import annotations


import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.labels import LVBP, LVM, RVBP
from cmrsdk.regions import labelled_slices_base_to_apex, slice_regions
from cmrsdk.synth import contraction_curve, synthetic_study


def test_same_seed_same_study_other_seed_other_study() -> None:
    a, b, c = synthetic_study(3), synthetic_study(3), synthetic_study(4)
    for x, y in zip(a.phases, b.phases):
        np.testing.assert_array_equal(x.pixels, y.pixels)
        np.testing.assert_array_equal(x.labels, y.labels)
    assert a.ed.shape != c.ed.shape or not np.array_equal(a.ed.pixels, c.ed.pixels)


@pytest.mark.parametrize("seed", range(6))
def test_anatomy_and_motion(seed: int) -> None:
    study = synthetic_study(seed)
    assert (study.ed_index, study.es_index) == (0, 1) and study.ed.phase == "ED" and study.es.phase == "ES"
    ed, es = study.ed.labels, study.es.labels
    # atria above the base: the first slice is unlabelled, regions run base..apex in file order
    assert not ed[0].any()
    order = labelled_slices_base_to_apex(ed)
    np.testing.assert_array_equal(order, np.arange(order[0], order[-1] + 1))
    regions = slice_regions(ed)
    assert set(regions[order]) == {1, 2, 3}
    # the apical-most labelled slice is a cap of myocardium without cavity or RV
    apex = ed[order[-1]]
    assert np.count_nonzero(apex == LVM) > 0 and np.count_nonzero(apex == RVBP) == 0
    # the RV ends before the apex; every label is present
    assert set(np.unique(ed)) == {0, LVBP, LVM, RVBP}
    # contraction: smaller LV and RV blood pools at ES, myocardium volume within 25 %
    voxel = np.prod(study.ed.spacing)
    assert np.count_nonzero(es == LVBP) < 0.75 * np.count_nonzero(ed == LVBP)
    assert np.count_nonzero(es == RVBP) < np.count_nonzero(ed == RVBP)
    ratio = np.count_nonzero(es == LVM) / np.count_nonzero(ed == LVM)
    assert 0.75 < ratio < 1.25, ratio
    # through-plane motion: the base moves towards the apex, so ES has no more labelled slices
    assert labelled_slices_base_to_apex(es)[0] >= order[0]
    assert voxel > 0 and study.ed.pixels.dtype == np.float32 and ed.dtype == np.uint8


def test_basal_ring_opens_at_the_outflow_tract() -> None:
    study = synthetic_study(0, spacing=(5.0, 1.5, 1.5))
    labels = study.ed.labels
    order = labelled_slices_base_to_apex(labels)
    basal, middle = labels[order[0]], labels[order[len(order) // 2]]

    def wall_angles_covered(plane: np.ndarray) -> float:
        ys, xs = np.nonzero(plane == LVM)
        cy, cx = np.argwhere(plane == LVBP).mean(axis=0)
        bins = np.histogram(np.arctan2(ys - cy, xs - cx), bins=36, range=(-np.pi, np.pi))[0]
        return np.count_nonzero(bins) / 36

    assert wall_angles_covered(middle) == 1.0
    assert wall_angles_covered(basal) < 0.9


def test_apex_first_reverses_slices_and_affine() -> None:
    base_first, apex_first = synthetic_study(2), synthetic_study(2, apex_first=True)
    np.testing.assert_array_equal(apex_first.ed.labels, base_first.ed.labels[::-1])
    np.testing.assert_array_equal(slice_regions(apex_first.ed.labels), slice_regions(base_first.ed.labels)[::-1])
    # the same voxel lands at the same world point
    z = base_first.ed.shape[0]
    np.testing.assert_allclose(apex_first.ed.affine @ [z - 1, 5, 7, 1], base_first.ed.affine @ [0, 5, 7, 1], atol=1e-9)


def test_geometry_points_the_apex_left_anterior_inferior() -> None:
    for seed in range(4):
        stack = synthetic_study(seed).ed
        direction = stack.affine[:3, 0] / np.linalg.norm(stack.affine[:3, 0])
        assert direction[0] < 0 and direction[1] > 0 and direction[2] < 0
        np.testing.assert_allclose(np.linalg.norm(stack.affine[:3, :3], axis=0), stack.spacing)
        np.testing.assert_allclose(np.abs(np.diff(stack.slice_positions)), stack.spacing[0])


def test_options_and_cine() -> None:
    study = synthetic_study(5, n_slices=10, shape=(96, 112), spacing=(8.0, 1.4, 1.6), n_phases=12)
    assert study.is_cine and len(study.phases) == 12 and study.ed.shape == (10, 96, 112)
    assert study.ed.spacing == (8.0, 1.4, 1.6)
    curve, es = contraction_curve(12)
    assert es == study.es_index == 4 and curve[0] == 0.0 and curve[es] == 1.0
    volumes = [np.count_nonzero(p.labels == LVBP) for p in study.phases]
    assert int(np.argmin(volumes)) == es and int(np.argmax(volumes)) == 0
    np.testing.assert_allclose(study.trigger_times_ms, np.arange(12) * 1000 / 12)


def test_bad_options() -> None:
    with pytest.raises(InputError, match="'seed' must be a non-negative integer, got -1"):
        synthetic_study(-1)
    with pytest.raises(InputError, match=r"'n_phases' must be at least 2 \(ED and ES\), got 1"):
        synthetic_study(0, n_phases=1)
    with pytest.raises(InputError, match=r"'spacing' must be three finite positive mm values"):
        synthetic_study(0, spacing=(0.0, 1.0, 1.0))
    with pytest.raises(InputError, match=r"'shape' must be at least \(32, 32\) pixels, got \(8, 64\)"):
        synthetic_study(0, shape=(8, 64))


def test_surroundings_look_like_a_cine_scan() -> None:
    # a wide field (460 mm) so the corners lie outside the body
    stack = synthetic_study(0, shape=(256, 256), spacing=(10.0, 1.8, 1.8), noise=0.03).ed
    order = labelled_slices_base_to_apex(stack.labels)
    z = order[len(order) // 2]
    image, labels = stack.pixels[z].astype(np.float64), stack.labels[z]
    myocardium, blood = image[labels == LVM].mean(), image[labels == LVBP].mean()
    # cine bSSFP: blood much brighter than myocardium
    assert blood > 2.0 * myocardium, (blood, myocardium)
    # air outside the body: the corners are dark
    assert max(image[:10, :10].mean(), image[:10, -10:].mean()) < 0.2 * myocardium
    # lungs above the heart (towards row 0), 60 - 75 mm from the LV centre: darker than myocardium
    cy, cx = np.argwhere(labels == LVBP).mean(axis=0)
    lung = image[int(cy - 75 / 1.8) : int(cy - 60 / 1.8), int(cx - 10 / 1.8) : int(cx + 10 / 1.8)]
    assert lung.size and lung.mean() < 0.35 * myocardium, (lung.mean(), myocardium)
    # the body outline: along the LV centre's row, from the image edge, air then a bright fat ring
    row = image[int(cy)]
    inside = np.nonzero(row > 0.5 * myocardium)[0]
    assert inside[0] > 5 and row[inside[0] : inside[0] + 15].max() > 1.5 * myocardium
    # plenty of the slice is non-cardiac tissue of varied intensity, not a flat background
    outside = image[labels == 0]
    assert np.count_nonzero(outside < 0.3 * myocardium) > 0.2 * outside.size
    assert np.count_nonzero(outside > 1.5 * myocardium) > 0.03 * outside.size


def test_rv_lies_on_the_image_left_of_the_lv_as_in_acdc() -> None:
    for seed in range(4):
        labels = synthetic_study(seed).ed.labels
        lv, rv = np.argwhere(labels == LVBP).mean(axis=0), np.argwhere(labels == RVBP).mean(axis=0)
        assert rv[2] < lv[2] - 10, (seed, lv, rv)
