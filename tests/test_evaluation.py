"""cmrsdk.evaluation: the statistics against scipy on known inputs, tables on hand-made scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from cmrsdk.errors import InputError
from cmrsdk.evaluation import (
    SliceScore,
    agreement,
    classifier_table,
    dice_along_heart,
    improvement_table,
    markdown_table,
    regional_table,
    save_bland_altman,
    save_dice_along_heart,
    score_stack,
    write_csv,
    zero_dice_table,
)
from cmrsdk.labels import APEX, BASE, MIDDLE


def _scores(method: str, rng: np.random.Generator, shift: float = 0.0) -> list[SliceScore]:
    rows = []
    for case in range(8):
        for z, region in enumerate([BASE, BASE, MIDDLE, MIDDLE, MIDDLE, MIDDLE, APEX, APEX]):
            centre = {BASE: 0.85, MIDDLE: 0.93, APEX: 0.70}[region] + (shift if region != MIDDLE else 0.0)
            d = np.clip(rng.normal(centre, 0.05, 3), 0, 1)
            rows.append(SliceScore(method, f"c{case}", "ED", z, region, z / 7, tuple(float(v) for v in d)))
    return rows


def test_regional_table_matches_scipy_welch():
    rng = np.random.default_rng(0)
    scores = _scores("baseline", rng)
    table = regional_table(scores, "baseline")
    base = np.array([s.dice[0] for s in scores if s.region == BASE]) * 100
    middle = np.array([s.dice[0] for s in scores if s.region == MIDDLE]) * 100
    row = table[0]
    assert row["label"] == "LVBP"
    assert row["base_mean"] == pytest.approx(base.mean())
    assert row["middle_sd"] == pytest.approx(middle.std(ddof=1))
    assert row["base_p"] == pytest.approx(stats.ttest_ind(base, middle, equal_var=False).pvalue)
    assert row["base_n"] == 16 and row["middle_n"] == 32
    assert row["apex_significant"] is True  # 0.70 vs 0.93 with SD 0.05 and n=16


def test_nan_dice_is_left_out_of_the_statistics():
    rng = np.random.default_rng(1)
    scores = _scores("m", rng)
    scores[0] = SliceScore("m", "c0", "ED", 0, BASE, 0.0, (float("nan"), 0.5, 0.5))
    assert regional_table(scores, "m")[0]["base_n"] == 15


def test_improvement_table_paired_t_test_and_signs():
    baseline = _scores("baseline", np.random.default_rng(3))
    better = [
        SliceScore(
            "routed",
            s.case,
            s.phase,
            s.slice_index,
            s.region,
            s.position,
            tuple(min(1.0, v + (0.05 if s.region == APEX else 0.0)) for v in s.dice),
        )
        for s in baseline
    ]
    table = improvement_table(baseline + better, "baseline", "routed")
    apex_lvm = next(r for r in table if r["region"] == "apex" and r["label"] == "LVM")
    a = np.array([s.dice[1] for s in baseline if s.region == APEX]) * 100
    b = np.array([s.dice[1] for s in better if s.region == APEX]) * 100
    assert apex_lvm["mean_change"] == pytest.approx(b.mean() - a.mean())
    assert apex_lvm["mean_change"] > 4.0
    assert apex_lvm["p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert apex_lvm["significant"] is True
    base_lvm = next(r for r in table if r["region"] == "base" and r["label"] == "LVM")
    assert base_lvm["mean_change"] == pytest.approx(0.0) and np.isnan(base_lvm["p"])


def test_classifier_table_weighted_precision_recall():
    true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
    pred = np.array([0, 0, 1, 1, 1, 2, 2, 2, 3, 3])
    t = classifier_table(true, pred)
    # sklearn-free reference: per-class precision/recall weighted by support
    prec = np.array([2 / 2, 2 / 3, 3 / 3, 1 / 2])
    rec = np.array([2 / 3, 2 / 2, 3 / 4, 1 / 1])
    w = np.array([3, 2, 4, 1]) / 10
    assert t["precision"] == pytest.approx((prec * w).sum() * 100)
    assert t["recall"] == pytest.approx((rec * w).sum() * 100)
    assert t["accuracy"] == pytest.approx(80.0)
    assert t["confusion"][0, 1] == 1 and t["confusion"].sum() == 10
    with pytest.raises(InputError, match="region codes"):
        classifier_table([0, 5], [0, 1])


def test_dice_along_heart_interpolates_each_stack():
    scores = [
        SliceScore("m", "c", "ED", z, BASE if z == 0 else MIDDLE if z < 3 else APEX, z / 3, (z / 3, 1.0, float("nan")))
        for z in range(4)
    ]
    curves = dice_along_heart(scores, "m")
    assert curves.shape == (1, 3, 101)
    assert curves[0, 0, 50] == pytest.approx(0.5)  # LVBP Dice equals t: linear
    assert np.allclose(curves[0, 1], 1.0)
    assert np.isnan(curves[0, 2]).all()


def test_agreement_bias_and_limits():
    m = np.array([50.0, 60.0, 55.0, 70.0])
    r = np.array([48.0, 61.0, 50.0, 66.0])
    d = m - r
    a = agreement(m, r)
    assert a["bias"] == pytest.approx(d.mean())
    assert a["loa_high"] == pytest.approx(d.mean() + 1.96 * d.std(ddof=1))


def test_score_stack_and_outputs(tmp_path):
    truth = np.zeros((5, 12, 12), np.uint8)
    for z, side in enumerate([0, 6, 5, 4, 3]):
        truth[z, :side, :side] = 1
    scores = score_stack(truth, truth, method="m", case="c", phase="ED")
    assert [s.region for s in scores] == [0, 1, 2, 2, 3]
    assert scores[1].dice[0] == 1.0 and np.isnan(scores[0].dice[0])
    csv_path = write_csv(tmp_path / "s.csv", scores)
    assert csv_path.read_text().splitlines()[0].startswith("method,case,phase,slice_index")
    md = markdown_table([{"a": 1.2345, "b": float("nan")}])
    assert "| 1.23 | – |" in md
    rng = np.random.default_rng(4)
    png = save_dice_along_heart(tmp_path / "f.png", {"m": rng.random((2, 3, 101))})
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert save_bland_altman(tmp_path / "ba.png", [1, 2, 3], [1.1, 2.2, 2.9], quantity="EF (%)").stat().st_size > 1000


def test_false_positive_volume_counts_only_slices_without_ground_truth() -> None:
    from cmrsdk.evaluation import false_positive_ml

    truth = np.zeros((3, 4, 4), np.uint8)
    truth[1, 1:3, 1:3] = 1
    prediction = np.zeros_like(truth)
    prediction[0, :2, :2] = 2  # 4 voxels above the heart
    prediction[1] = 1  # over-segmentation inside the heart's slices does not count here
    assert false_positive_ml(prediction, truth, (10.0, 1.5, 1.5)) == pytest.approx(4 * 10 * 1.5 * 1.5 / 1000)
    assert false_positive_ml(truth, truth, (10.0, 1.5, 1.5)) == 0.0


def test_zero_dice_slices_are_told_apart_by_cause(tmp_path):
    """Five labelled slices (regions 20/60/20: base, middle x3, apex): on the base the model draws
    an RV the truth lacks, on the apex it misses the truth's RV, on one middle slice its RV lies
    beside the truth's; the table counts each cause and the CSV carries the pixel counts."""
    truth = np.zeros((5, 20, 20), np.uint8)
    truth[:4, 5:10, 5:10] = 1  # LVBP on every slice, narrowing at the apex (slice 4)
    truth[4, 6:8, 6:8] = 1
    truth[1:, 12:16, 12:16] = 3  # RVBP from the first middle slice down
    prediction = truth.copy()
    prediction[0, 12:16, 12:16] = 3  # drawn: the base has no RV in the truth
    prediction[4, 12:16, 12:16] = 0  # missed: the apex RV
    prediction[2, 12:16, 12:16] = 0
    prediction[2, 0:4, 0:4] = 3  # apart: an RV, in the wrong place
    scores = score_stack(prediction, truth, method="m", case="c", phase="ED")
    assert [s.region for s in scores] == [BASE, MIDDLE, MIDDLE, MIDDLE, APEX]
    assert scores[0].truth_pixels == (25, 0, 0) and scores[0].predicted_pixels == (25, 0, 16)
    rows = {(r["region"], r["label"]): r for r in zero_dice_table(scores, "m")}
    assert {k: (r["zero"], r["drawn"], r["missed"], r["apart"]) for k, r in rows.items() if r["zero"]} == {
        ("base", "RVBP"): (1, 1, 0, 0),
        ("middle", "RVBP"): (1, 0, 0, 1),
        ("apex", "RVBP"): (1, 0, 1, 0),
    }
    middle = rows[("middle", "RVBP")]
    assert middle["scored"] == 3 and middle["mean_pct"] == pytest.approx(200 / 3)
    assert middle["mean_without_zero_pct"] == pytest.approx(100.0)
    assert rows[("base", "LVBP")]["zero"] == 0 and rows[("base", "LVBP")]["mean_pct"] == 100.0
    header = write_csv(tmp_path / "s.csv", scores).read_text().splitlines()[0].split(",")
    assert header[-6:] == [f"{k}_px_{n}" for k in ("truth", "predicted") for n in ("LVBP", "LVM", "RVBP")]
