"""Ground-truth regions and positions: the rounding rule, the anatomical direction, real cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.io import read_acdc_patient, read_mnms_subject
from cmrsdk.regions import labelled_slices_base_to_apex, region_counts, slice_positions, slice_regions


def _tapering_heart(radii: list[int], size: int = 32) -> np.ndarray:
    """uint8 (Z, size, size): per slice an LV disc (label 1) in a ring (2) and an RV disc (3); radius 0 = empty."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((len(radii), size, size), dtype=np.uint8)
    for z, r in enumerate(radii):
        if r == 0:
            continue
        d = np.hypot(yy - 16, xx - 12)
        labels[z][d <= r + 2] = 2
        labels[z][d <= r] = 1
        labels[z][np.hypot(yy - 16, xx - (14 + r + 4)) <= max(r - 2, 0)] = 3
    return labels


@pytest.mark.parametrize(
    "n, expected",
    [
        (0, (0, 0, 0)),
        (1, (0, 1, 0)),
        (2, (0, 2, 0)),
        (3, (1, 1, 1)),
        (5, (1, 3, 1)),
        (7, (1, 5, 1)),
        (8, (2, 4, 2)),
        (10, (2, 6, 2)),
        (12, (2, 8, 2)),
        (13, (3, 7, 3)),
        (20, (4, 12, 4)),
    ],
)
def test_region_counts_follow_the_rounding_rule(n: int, expected: tuple[int, int, int]) -> None:
    assert region_counts(n) == expected


def test_regions_base_first_in_file_order() -> None:
    labels = _tapering_heart([0, 9, 9, 8, 8, 7, 6, 5, 4, 3, 2, 0])
    np.testing.assert_array_equal(slice_regions(labels), [0, 1, 1, 2, 2, 2, 2, 2, 2, 3, 3, 0])
    positions = slice_positions(labels)
    assert np.isnan(positions[[0, 11]]).all()
    np.testing.assert_allclose(positions[1:11], np.arange(10) / 9)


def test_direction_comes_from_anatomy_not_file_order() -> None:
    labels = _tapering_heart([0, 9, 9, 8, 8, 7, 6, 5, 4, 3, 2, 0])[::-1].copy()
    np.testing.assert_array_equal(slice_regions(labels), [0, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 0])
    np.testing.assert_allclose(slice_positions(labels)[1:11], np.arange(10)[::-1] / 9)


def test_gaps_are_non_cardiac_and_flat_hearts_keep_file_order() -> None:
    flat = _tapering_heart([6, 6, 0, 6, 6, 6])
    np.testing.assert_array_equal(labelled_slices_base_to_apex(flat), [0, 1, 3, 4, 5])
    np.testing.assert_array_equal(slice_regions(flat), [1, 2, 0, 2, 2, 3])


def test_lv_decides_when_whole_heart_area_is_flat() -> None:
    # every pixel labelled (constant whole-heart area), LV shrinking with index -> index 0 basal;
    # reversed -> reversed
    labels = np.zeros((6, 20, 20), dtype=np.uint8)
    for z in range(6):
        labels[z, :10, :] = 3
        labels[z, 10:, : 20 - 2 * z] = 1
        labels[z, 10:, 20 - 2 * z :] = 3
    np.testing.assert_array_equal(labelled_slices_base_to_apex(labels), np.arange(6))
    np.testing.assert_array_equal(labelled_slices_base_to_apex(labels[::-1]), np.arange(6)[::-1])


def test_no_labels_all_non_cardiac() -> None:
    labels = np.zeros((4, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(slice_regions(labels), 0)
    assert np.isnan(slice_positions(labels)).all()
    one = labels.copy()
    one[2, 3, 3] = 1
    assert slice_positions(one)[2] == 0.5 and slice_regions(one)[2] == 2


def test_bad_labels_are_refused() -> None:
    with pytest.raises(InputError, match=r"'labels' must be 3-D \(Z, Y, X\), got shape \(8, 8\)"):
        slice_regions(np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(InputError, match="dtype float32"):
        slice_positions(np.zeros((2, 8, 8), dtype=np.float32))


def test_every_shared_case_runs_base_to_apex(shared_data: Path) -> None:
    """ACDC stores the base first (all 100 training patients); M&Ms' base-to-apex axis points to
    the patient's left, anterior and inferior in RAS+ (the heart's long axis), an independent check."""
    acdc = sorted((shared_data / "acdc" / "training").glob("patient*"))
    mnms = sorted(p for p in (shared_data / "mnms").iterdir() if p.is_dir())
    assert len(acdc) == 100 and len(mnms) == 4
    for folder in acdc:
        study = read_acdc_patient(folder)
        for stack in study.phases:
            order = labelled_slices_base_to_apex(stack.labels)
            assert order[0] < order[-1], (folder.name, stack.phase)
            regions = slice_regions(stack.labels)
            n = order.size
            assert np.count_nonzero(regions == 1) == region_counts(n)[0]
            assert regions[order[0]] == 1 and regions[order[-1]] == 3
    for folder in mnms:
        study = read_mnms_subject(folder)
        for stack in study.phases:
            order = labelled_slices_base_to_apex(stack.labels)
            base_to_apex = (stack.affine @ [order[-1], 0, 0, 1] - stack.affine @ [order[0], 0, 0, 1])[:3]
            direction = base_to_apex / np.linalg.norm(base_to_apex)
            # RAS+: left is -x, anterior +y, inferior -z
            assert direction[0] < -0.2 and direction[1] > 0.2 and direction[2] < -0.2, (folder.name, direction)


def test_segmentation_regions_ignore_specks_below_min_pixels() -> None:
    from cmrsdk.regions import segmentation_regions

    labels = np.zeros((6, 20, 20), np.uint8)
    for z, side in zip(range(1, 5), (10, 9, 7, 5)):
        labels[z, :side, :side] = 1
    labels[5, 0, 0] = 3  # one stray pixel below the apex
    np.testing.assert_array_equal(segmentation_regions(labels, min_pixels=2), [0, 1, 2, 2, 3, 0])
    # without the threshold the speck is a sixth labelled slice and takes the apex
    np.testing.assert_array_equal(segmentation_regions(labels), slice_regions(labels))
    assert segmentation_regions(labels)[5] == 3
    with pytest.raises(InputError, match="'min_pixels'"):
        segmentation_regions(labels, min_pixels=-1)


def _axis_affine(axis: list[float]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, 0] = axis
    return affine


@pytest.mark.parametrize(
    "axis, expected",
    [
        ([-1.0, 1.0, -1.0], 1),  # along the long axis, base to apex
        ([0.9, -1.1, 1.0], -1),  # along it, apex to base
        ([0.0, 0.0, 1.0], None),  # axis-aligned: no scanner orientation (ACDC's NIfTI files)
        ([1.0, 0.0, 0.0], None),
        ([1.0, 1.0, -1.0], None),  # dextrocardia: the apex points right (|cos| = 1/3)
        ([0.0, 0.0, 0.0], None),  # degenerate
    ],
)
def test_index_toward_apex_trusts_only_an_oblique_orientation(axis: list[float], expected: int | None) -> None:
    from cmrsdk.regions import index_toward_apex

    assert index_toward_apex(_axis_affine(axis)) == expected


def test_orientation_overrides_a_misleading_area_slope() -> None:
    """M&Ms B5F8L9 at ES: tissue marked above the base made the area grow toward the apex."""
    from cmrsdk.regions import regions_from_areas, segmentation_regions

    # apex at index 1, base at 7, then marks on 8-11 above the base: the slope says index 1 is basal
    heart = np.array([0, 420, 500, 560, 600, 620, 600, 560, 380, 300, 220, 160])
    lv = heart // 2
    np.testing.assert_array_equal(regions_from_areas(heart, lv), [0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3])
    np.testing.assert_array_equal(regions_from_areas(heart, lv, toward_apex=-1), [0, 3, 3, 2, 2, 2, 2, 2, 2, 2, 1, 1])
    labels = _tapering_heart([0, 9, 9, 8, 8, 7, 6, 5, 4, 3, 2, 0])
    np.testing.assert_array_equal(segmentation_regions(labels, toward_apex=1), slice_regions(labels))
    np.testing.assert_array_equal(segmentation_regions(labels, toward_apex=-1), [0, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 0])
    with pytest.raises(InputError, match="'toward_apex'"):
        regions_from_areas(heart, lv, toward_apex=0)


def test_shared_oblique_series_orientation_agrees_with_their_labels(shared_data: Path) -> None:
    """Every M&Ms label map's base-to-apex order matches `index_toward_apex` of its affine, and no
    ACDC file (axis-aligned affines) gets a direction from it."""
    from cmrsdk.regions import index_toward_apex

    for folder in sorted(p for p in (shared_data / "mnms").iterdir() if p.is_dir()):
        for stack in read_mnms_subject(folder).phases:
            order = labelled_slices_base_to_apex(stack.labels)
            assert index_toward_apex(stack.affine) == (1 if order[-1] > order[0] else -1), folder.name
    for folder in sorted((shared_data / "acdc" / "training").glob("patient*"))[::10]:
        assert all(index_toward_apex(s.affine) is None for s in read_acdc_patient(folder).phases)
