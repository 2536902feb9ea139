"""cmrsdk.metrics on hand-made masks whose volumes and overlaps are known exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.labels import LVBP, RVBP
from cmrsdk.metrics import (
    ES_LV_LOST_SLICES,
    MYOCARDIAL_DENSITY_G_PER_ML,
    cardiac_measures,
    dice,
    es_lv_lost_slices,
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
    # an empty ES mask is a failed segmentation, not a ventricle that emptied: no "100 %"
    failed = cardiac_measures(ed, es * 0, (10.0, 1.0, 1.0))
    assert failed.lvesv_ml == 0.0 and np.isnan(failed.lvef_pct) and np.isnan(failed.rvef_pct)
    # nor a stroke volume equal to the whole EDV (it reached the SR as a number before 0.10.0)
    assert np.isnan(failed.lvsv_ml) and np.isnan(failed.rvsv_ml)


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
    assert quality_flags(padded) == []  # tapering to the apex: no flag
    gapped = padded.copy()
    gapped[3][gapped[3] == 1] = 0
    assert "lv_gap" in quality_flags(gapped)
    fragmented = padded.copy()
    fragmented[2, 35:38, 35:38] = 3
    assert "rvbp_fragments" in quality_flags(fragmented)
    assert {"no_lv", "no_rv"} <= set(quality_flags(np.zeros((3, 8, 8), np.uint8)))


def test_apical_truncation_flags_an_lv_stopping_at_half_its_area():
    """Base first, LV blood pool areas per slice; slices beyond the last are empty."""

    def stack(areas: list[int]) -> np.ndarray:
        labels = np.zeros((len(areas), 20, 20), np.uint8)
        for z, a in enumerate(areas):
            labels[z].reshape(-1)[:a] = LVBP
            labels[z, 19, 19] = RVBP
        return labels

    assert "apical_truncation" in quality_flags(stack([100, 100, 80, 50, 0, 0]), base_first=True)
    assert "apical_truncation" not in quality_flags(stack([100, 100, 80, 49, 0, 0]), base_first=True)
    assert "apical_truncation" in quality_flags(stack([0, 0, 60, 90, 100, 100])[::-1], base_first=True)
    assert "apical_truncation" not in quality_flags(stack([0, 0, 30, 90, 100, 100]), base_first=False)
    # the LV on the last slice: the stack may miss the apex (apical_coverage), not a cut
    flags = quality_flags(stack([0, 100, 100, 80, 60]), base_first=True)
    assert "apical_coverage" in flags and "apical_truncation" not in flags


def test_apical_truncation_on_the_shared_manual_label_maps(shared_data):
    """The ratio was chosen on these: only the HCM cavities kept to the apex reach it."""
    from cmrsdk.io import read_study

    flagged = []
    for folder in sorted((shared_data / "acdc" / "training").glob("patient*")):
        study = read_study(folder)
        flagged += [
            f"{folder.name} {p}"
            for p, s in (("ED", study.ed), ("ES", study.es))
            if "apical_truncation" in quality_flags(s.labels)
        ]
    assert flagged == ["patient047 ED", "patient047 ES", "patient054 ES"]


def test_bad_input_names_the_argument():
    with pytest.raises(InputError, match="'prediction' shape"):
        dice(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 4), np.uint8), 1)
    with pytest.raises(InputError, match="'spacing'"):
        volumes_ml(np.zeros((2, 3, 3), np.uint8), (1.0, 0.0, 1.0))
    with pytest.raises(InputError, match="integer labels"):
        volumes_ml(np.zeros((2, 3, 3), np.float32), (1.0, 1.0, 1.0))


def _brute_surface_distances(p: np.ndarray, t: np.ndarray, spacing) -> tuple[float, float]:
    """Reference: surfaces by explicit 6-neighbour checks, all pairwise distances, no scipy."""

    def surface(mask):
        padded = np.pad(mask, 1)
        inner = np.ones_like(mask)
        for axis in range(3):
            for shift in (-1, 1):
                inner &= np.roll(padded, shift, axis=axis)[1:-1, 1:-1, 1:-1]
        return np.argwhere(mask & ~inner) * np.asarray(spacing)

    sp, st = surface(p), surface(t)
    d = np.sqrt(((sp[:, None, :] - st[None, :, :]) ** 2).sum(-1))
    a, b = d.min(1), d.min(0)
    return max(np.percentile(a, 95), np.percentile(b, 95)), np.concatenate([a, b]).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surface_distances_match_a_brute_force_reference(seed):
    from cmrsdk.metrics import surface_distances

    rng = np.random.default_rng(seed)
    spacing = (rng.uniform(2, 10), rng.uniform(0.5, 2), rng.uniform(0.5, 2))
    p = np.zeros((6, 18, 18), np.uint8)
    t = np.zeros_like(p)
    for mask in (p, t):
        z0, y0, x0 = rng.integers(0, 3), rng.integers(0, 8), rng.integers(0, 8)
        mask[z0 : z0 + 3, y0 : y0 + 8, x0 : x0 + 7] = 1
        mask[rng.random(mask.shape) < 0.05] = 1  # scattered voxels: many small surfaces
    hd95, msd = surface_distances(p, t, 1, spacing)
    want_hd95, want_msd = _brute_surface_distances(p == 1, t == 1, spacing)
    assert hd95 == pytest.approx(want_hd95, rel=1e-9) and msd == pytest.approx(want_msd, rel=1e-9)


def test_surface_distances_analytic_and_edge_cases():
    from cmrsdk.metrics import surface_distances

    a = np.zeros((5, 20, 20), np.uint8)
    a[1:4, 5:10, 5:10] = 1
    shifted = np.roll(a, 2, axis=2)  # the box moved 2 columns: HD95 2 columns of 0.7 mm
    assert surface_distances(a, shifted, 1, (10.0, 1.0, 0.7))[0] == pytest.approx(1.4)
    assert surface_distances(a, a, 1, (10.0, 1.0, 1.0)) == (0.0, 0.0)
    assert all(np.isnan(surface_distances(a, a, 2, (1, 1, 1))))
    assert surface_distances(a, np.zeros_like(a), 1, (1, 1, 1)) == (float("inf"), float("inf"))


def test_volumes_from_slice_positions_count_gaps_at_their_size():
    from cmrsdk.metrics import slice_gaps, slice_thicknesses_mm, volumes_ml

    labels = np.zeros((4, 10, 10), np.uint8)
    labels[:, :5, :4] = 1  # 20 px of LVBP on every slice
    even = volumes_ml(labels, (10.0, 1.0, 1.0), [0, 10, 20, 30])["LVBP"]
    assert even == pytest.approx(4 * 20 * 10 / 1000)
    # slice 2 missing: positions 0, 10, 30, 40 stand for 50 mm of heart, not 40
    np.testing.assert_allclose(slice_thicknesses_mm([0, 10, 30, 40]), [10, 15, 15, 10])
    assert volumes_ml(labels, (10.0, 1.0, 1.0), [0, 10, 30, 40])["LVBP"] == pytest.approx(20 * 50 / 1000)
    assert slice_gaps([0, 10, 30, 40]) == [{"after_mm": 10.0, "step_mm": 20.0, "missing_slices": 1}]
    assert slice_gaps([0, 10, 20, 30]) == []
    # any order of the positions (apex first) gives the same thicknesses per slice
    np.testing.assert_allclose(slice_thicknesses_mm([40, 30, 10, 0]), [10, 15, 15, 10])
    assert np.isnan(volumes_ml(labels[:1], (10.0, 1.0, 1.0), [0.0])["LVBP"])


def test_one_phase_gives_no_stroke_volume_or_ef():
    from cmrsdk.metrics import cardiac_measures

    labels = np.zeros((3, 10, 10), np.uint8)
    labels[:, :5, :5] = 1
    m = cardiac_measures(labels, None, (10.0, 1.0, 1.0))
    assert m.lvedv_ml == pytest.approx(0.75) and np.isnan(m.lvesv_ml) and np.isnan(m.lvsv_ml) and np.isnan(m.lvef_pct)


def test_withhold_unreal_sets_what_cannot_be_real_to_nan():
    from dataclasses import replace

    from cmrsdk.metrics import CardiacMeasures, withhold_unreal

    real = CardiacMeasures(150.0, 60.0, 90.0, 60.0, 120.0, 160.0, 80.0, 80.0, 50.0)
    assert withhold_unreal(real) == real
    rv_larger_at_es = replace(real, rvesv_ml=170.0, rvsv_ml=-10.0, rvef_pct=-6.25)
    kept = withhold_unreal(rv_larger_at_es)
    assert np.isnan(kept.rvsv_ml) and np.isnan(kept.rvef_pct) and kept.rvesv_ml == 170.0
    assert kept.lvef_pct == 60.0
    one = withhold_unreal(real, same_phase=True)
    assert all(np.isnan(getattr(one, k)) for k in ("lvsv_ml", "lvef_pct", "rvsv_ml", "rvef_pct"))
    assert one.lvedv_ml == 150.0 and one.lv_mass_g == 120.0


def test_an_lv_not_ringed_by_myocardium_away_from_the_base_is_flagged():
    """Sweep 27: an RV or atrium drawn as LV, a failed slice; the base, where the outflow tract
    opens the ring, is left out, and so is a slice under 200 mm² (2 x 2 mm pixels here)."""
    labels = np.concatenate([_box_heart(), np.zeros((1, 40, 40), np.uint8)])  # base first, apex empty
    assert "lv_not_ringed" not in quality_flags(labels, base_first=True, pixel_mm2=4.0)
    middle = labels.copy()
    middle[2][middle[2] == 2] = 0  # slice 2's LV (64 px, 256 mm²) without its ring
    assert "lv_not_ringed" in quality_flags(middle, base_first=True, pixel_mm2=4.0)
    assert "lv_not_ringed" not in quality_flags(middle, base_first=True)  # no pixel area: not judged
    assert "lv_not_ringed" not in quality_flags(middle, base_first=True, pixel_mm2=3.0)  # 192 mm²: too small
    basal = labels.copy()
    basal[0][basal[0] == 2] = 0
    assert "lv_not_ringed" not in quality_flags(basal, base_first=True, pixel_mm2=4.0)
    assert "lv_not_ringed" in quality_flags(basal[::-1], base_first=True, pixel_mm2=4.0)  # now apical


def test_es_lv_lost_counts_slices_emptied_where_ed_is_large():
    ed = _box_heart()  # LV areas 100, 81, 64, 49, 36, 16 px: 30 % of the largest is 30
    es = ed.copy()
    for z in (1, 2, 4):
        es[z][es[z] == 1] = 2
    assert es_lv_lost_slices(ed, es) == 3
    es[4] = ed[4]
    assert es_lv_lost_slices(ed, es) == 2
    es[5][es[5] == 1] = 2  # 16 px at ED: under 30 %, an apex that may close in systole
    assert es_lv_lost_slices(ed, es) == 2
    assert es_lv_lost_slices(ed, es[1:]) == 0  # other positions: not compared


def test_the_plausibility_flags_stay_quiet_on_the_shared_manual_label_maps(shared_data):
    """True anatomy (100 ACDC patients, 4 M&Ms subjects, ED and ES): no LV without its ring away
    from the base (every ring 0.99 or more), no more than 2 slices emptied at ES, no LVEDV under
    40 mL (the smallest 49 mL); measured before the thresholds were set (runs of sweep 27)."""
    from cmrsdk.io import read_study
    from cmrsdk.report import MIN_ADULT_LVEDV_ML

    folders = sorted((shared_data / "acdc" / "training").glob("patient*")) + sorted(
        p for p in (shared_data / "mnms").iterdir() if p.is_dir()
    )
    rings, lost, smallest = [], [], math.inf
    for folder in folders:
        study = read_study(folder)
        for stack in (study.ed, study.es):
            dz, dy, dx = stack.spacing
            if "lv_not_ringed" in quality_flags(stack.labels, pixel_mm2=dy * dx):
                rings.append(folder.name)
        lost.append(es_lv_lost_slices(study.ed.labels, study.es.labels))
        smallest = min(smallest, volumes_ml(study.ed.labels, study.ed.spacing)["LVBP"])
    assert len(folders) == 104 and rings == []
    assert max(lost) == 2 < ES_LV_LOST_SLICES
    assert 49.0 < smallest < 49.5 and smallest > MIN_ADULT_LVEDV_ML
