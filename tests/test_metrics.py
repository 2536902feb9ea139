"""cmrsdk.metrics on hand-made masks whose volumes and overlaps are known exactly."""
from __future__ import annotations

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.metrics import (
    MYOCARDIAL_DENSITY_G_PER_ML,
    cardiac_measures,
    dice,
    quality_flags,
    slice_dice,
    volumes_ml,
)


def _box_heart(z: int = 6, lv_sizes: tuple[int, ...] = (10, 9, 8, 7, 6, 4)) -> np.ndarray:
    """A stack with square LVBP of shrinking side, a 1-px myocardial ring and an RV box."""
    labels = np.zeros((z, 40, 40), np.uint8)
    for k, side in enumerate(lv_sizes[:z]):
        labels[k, 5 : 5 + side + 2, 5 : 5 + side + 2] = 2
        labels[k, 6 : 6 + side, 6 : 6 + side] = 1
        labels[k, 25:30, 25:31] = 3
    return labels


def test_volumes_are_voxel_counts_times_voxel_volume():
    labels = _box_heart()
    vol = volumes_ml(labels, (8.0, 1.5, 1.25))
    voxel_ml = 8.0 * 1.5 * 1.25 / 1000
    lv_voxels = sum(s * s for s in (10, 9, 8, 7, 6, 4))
    ring_voxels = sum((s + 2) ** 2 - s * s for s in (10, 9, 8, 7, 6, 4))
    assert vol["LVBP"] == pytest.approx(lv_voxels * voxel_ml)
    assert vol["LVM"] == pytest.approx(ring_voxels * voxel_ml)
    assert vol["RVBP"] == pytest.approx(6 * 30 * voxel_ml)


def test_cardiac_measures_known_values():
    ed = np.zeros((2, 20, 20), np.uint8)
    ed[:, :10, :10] = 1  # 200 voxels LVBP
    ed[:, 10:12, :10] = 2  # 40 voxels LVM
    ed[:, 15:20, 15:20] = 3  # 50 voxels RVBP
    es = np.zeros_like(ed)
    es[:, :5, :10] = 1  # 100 voxels
    es[:, 15:20, 15:17] = 3  # 20 voxels
    m = cardiac_measures(ed, es, (10.0, 1.0, 1.0))  # 0.01 mL per voxel
    assert m.lvedv_ml == pytest.approx(2.0)
    assert m.lvesv_ml == pytest.approx(1.0)
    assert m.lvsv_ml == pytest.approx(1.0)
    assert m.lvef_pct == pytest.approx(50.0)
    assert m.lv_mass_g == pytest.approx(0.4 * MYOCARDIAL_DENSITY_G_PER_ML)
    assert m.rvedv_ml == pytest.approx(0.5)
    assert m.rvef_pct == pytest.approx(60.0)
    assert np.isnan(cardiac_measures(es * 0, es * 0, (1, 1, 1)).lvef_pct)


def test_dice_and_slice_dice_against_hand_counts():
    truth = np.zeros((3, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[0, :4, :5] = 1  # 20
    pred[0, :2, :5] = 1  # 10, overlap 10 -> 2*10/30
    truth[1, :2, :2] = 3  # RV only in the truth: Dice 0 on slice 1
    rng = np.random.default_rng(0)
    assert dice(pred, truth, 1) == pytest.approx(20 / 30)
    per_slice = slice_dice(pred, truth)
    assert per_slice.shape == (3, 3)
    assert per_slice[0, 0] == pytest.approx(20 / 30)
    assert per_slice[1, 2] == 0.0
    assert np.isnan(per_slice[2]).all()  # nothing in either mask: NaN by convention
    noisy = rng.integers(0, 4, (4, 16, 16)).astype(np.uint8)
    assert np.allclose(slice_dice(noisy, noisy), 1.0)


def test_quality_flags_on_made_up_defects():
    labels = _box_heart()
    # LVBP already in the first (basal) slice and in the last (apical) slice
    assert {"basal_coverage", "apical_coverage"} <= set(quality_flags(labels))
    padded = np.concatenate([np.zeros((1, 40, 40), np.uint8), labels, np.zeros((1, 40, 40), np.uint8)])
    assert quality_flags(padded) == []
    gapped = padded.copy()
    gapped[3][gapped[3] == 1] = 0
    assert "lv_gap" in quality_flags(gapped)
    fragmented = padded.copy()
    fragmented[2, 35:38, 35:38] = 3
    assert "rvbp_fragments" in quality_flags(fragmented)
    assert {"no_lv", "no_rv"} <= set(quality_flags(np.zeros((3, 8, 8), np.uint8)))


def test_bad_input_names_the_argument():
    with pytest.raises(InputError, match="'prediction' shape"):
        dice(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), 1)
    with pytest.raises(InputError, match="'spacing'"):
        volumes_ml(np.zeros((2, 3, 3), np.uint8), (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="integer labels"):
        volumes_ml(np.zeros((2, 3, 3), np.float32), (1.0, 1.0, 1.0))
