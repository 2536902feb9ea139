"""A heart smaller or larger than any the U-Nets learnt is segmented again at a trained size (sweep 17)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrsdk.heart_size import (
    LARGE_HEART_MM2,
    MIN_HEART_SCALE,
    SMALL_HEART_MM2,
    TARGET_HEART_MM2,
    TARGET_LARGE_HEART_MM2,
    feasible_scale,
    heart_scale,
    lv_area_mm2,
    rescaled,
)
from cmrsdk.labels import LVBP, LVM, RVBP
from cmrsdk.types import Stack, Study


def test_the_scale_comes_from_the_area_under_the_threshold_only():
    assert heart_scale(0.0) is None and heart_scale(SMALL_HEART_MM2) is None and heart_scale(4400.0) is None
    assert heart_scale(LARGE_HEART_MM2) is None and heart_scale(float("inf")) is None
    assert heart_scale(TARGET_HEART_MM2 / 4) == pytest.approx(0.5)
    assert heart_scale(TARGET_LARGE_HEART_MM2 * 2.25) == pytest.approx(1.5)
    assert heart_scale(1.0) == MIN_HEART_SCALE  # a few pixels: a guess, not a size
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[1, :4, :5] = LVBP  # 20 px
    labels[1, 4, :5] = LVM  # 5 px
    labels[2, :9, :9] = RVBP  # not the LV
    assert lv_area_mm2(labels, (8.0, 1.5, 2.0)) == pytest.approx(25 * 3.0)


def test_the_claimed_pixels_stay_within_what_a_reader_accepts():
    """Review 19: an LV of 14,762 mm² on 0.45 mm pixels asked for 0.287 mm pixels, and a valid
    study failed as if its header were in the wrong unit."""

    def study(pixel_mm: float) -> Study:
        stack = Stack(np.zeros((2, 8, 8), np.float32), (8.0, pixel_mm, pixel_mm))
        return Study(phases=(stack,), ed_index=0, es_index=0)

    assert feasible_scale(1.57, study(0.45)) == pytest.approx(1.5)  # 0.3 mm pixels at the finest
    assert feasible_scale(0.4, study(10.0)) == pytest.approx(0.5)  # 20 mm at the coarsest
    assert feasible_scale(0.5, study(1.5)) == 0.5
    assert feasible_scale(1.6, study(0.3)) is None  # no room left: one pass


def test_rescaled_changes_the_in_plane_spacing_and_affine_only():
    affine = np.diag([1.5, 1.25, 8.0, 1.0])[:, [2, 1, 0, 3]]  # columns: z, y, x steps
    stack = Stack(np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5), (8.0, 1.25, 1.5), affine)
    study = Study(phases=(stack, stack), ed_index=0, es_index=1)
    big = rescaled(study, 0.5).phases[0]
    assert big.spacing == pytest.approx((8.0, 2.5, 3.0))
    np.testing.assert_allclose(big.affine[:3, 0], affine[:3, 0])
    np.testing.assert_allclose(big.affine[:3, 1:3], affine[:3, 1:3] * 2)
    np.testing.assert_array_equal(big.pixels, stack.pixels)


@pytest.fixture(scope="module")
def child_sized(shared_data: Path):
    """ACDC patient080 (NOR) with its pixels claimed half as large: a heart half its size a side,
    its manual measures a quarter of the adult's."""
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.io import read_acdc_patient
    from cmrsdk.metrics import cardiac_measures

    adult = read_acdc_patient(shared_data / "acdc" / "training" / "patient080")
    child = rescaled(adult, 2.0)
    truth = cardiac_measures(child.ed.labels, child.es.labels, child.ed.spacing, child.es.spacing)
    return Pipeline(DEMO_BUNDLE), adult, child, truth


def test_a_child_sized_heart_is_measured_at_a_trained_size(child_sized):
    from cmrsdk import DEMO_BUNDLE, Pipeline

    pipeline, adult, child, truth = child_sized
    assert "small_heart" not in pipeline.segment_study(adult).ed.flags  # an adult: one pass
    result = pipeline.segment_study(child)
    assert result.ed.flags[-1] == "small_heart" and result.ed.provenance["heart_scale"] == pytest.approx(0.62, abs=0.05)
    assert result.ed.stack is child.ed  # measured on its own spacing
    # the study's stage timings hold both passes (review 19: the first pass went uncounted)
    assert result.timings_ms["total"] > sum(p.timings_ms["total"] for p in result.phases)
    # measured (0.7.0 weights): LVEDV 25.07, RVEDV 28.50, LV mass 19.13 against 24.70, 28.07, 18.66
    for name in ("lvedv_ml", "rvedv_ml", "lv_mass_g"):
        assert getattr(result.measures, name) == pytest.approx(getattr(truth, name), rel=0.06), name
    # one pass on the adult grid: RVEDV 19.19 (0.68 of the truth), LV mass 21.82 (1.17)
    once = Pipeline(DEMO_BUNDLE, rescale_heart=False).segment_study(child)
    assert "small_heart" not in once.ed.flags
    assert once.measures.rvedv_ml < 0.8 * truth.rvedv_ml and once.measures.lv_mass_g > 1.1 * truth.lv_mass_g


def test_a_heart_larger_than_any_trained_on_is_measured_at_a_trained_size(shared_data: Path):
    """ACDC patient045 (MINF) with its pixels claimed 1.5 times as large: the 195 mm crop cut the
    heart (LV mass 0.82 and RVEDV 0.62 of the truth, unflagged; sweep 17)."""
    from cmrsdk import DEMO_BUNDLE, Pipeline
    from cmrsdk.io import read_acdc_patient
    from cmrsdk.metrics import cardiac_measures

    big = rescaled(read_acdc_patient(shared_data / "acdc" / "training" / "patient045"), 1 / 1.5)
    truth = cardiac_measures(big.ed.labels, big.es.labels, big.ed.spacing, big.es.spacing)
    result = Pipeline(DEMO_BUNDLE).segment_study(big)
    assert "large_heart" in result.ed.flags and result.ed.provenance["heart_scale"] > 1.2
    # measured (0.7.0 weights): LV mass 1.03 and RVEDV 1.08 of the truth; one pass 0.82 and 0.62
    assert result.measures.lv_mass_g == pytest.approx(truth.lv_mass_g, rel=0.06)
    assert result.measures.rvedv_ml == pytest.approx(truth.rvedv_ml, rel=0.12)
    once = Pipeline(DEMO_BUNDLE, rescale_heart=False).segment_study(big)
    assert "large_heart" not in once.ed.flags
    assert once.measures.lv_mass_g < 0.9 * truth.lv_mass_g and once.measures.rvedv_ml < 0.75 * truth.rvedv_ml
