"""The heart search stage (cmrsdk.heart): locate_heart with a stand-in model, crop_to_heart by the
crop rule of crop_or_pad (cmrsdk.preprocess.window_offset)."""

from __future__ import annotations

import numpy as np
import pytest

from cmrsdk.errors import InputError
from cmrsdk.heart import LOCATE_TRIES, crop_to_heart, heart_centre, locate_heart, search_groups
from cmrsdk.labels import BASE, MIDDLE
from cmrsdk.preprocess import SliceTransform, crop_or_pad, window_offset


def _square_model(top: int, left: int, side: int, bright: float = 0.5):
    """Foreground (class 1) in a side x side square at (top, left) on slices whose mean is above
    ``bright``; records the mean of every slice it is asked about."""
    seen: list[float] = []

    def segment(images: np.ndarray) -> np.ndarray:
        out = np.zeros((images.shape[0], 4, *images.shape[2:]), np.float32)
        out[:, 0] = 1.0
        for i, image in enumerate(images):
            seen.append(float(image.mean()))
            if image.mean() > bright:
                out[i, 0, top : top + side, left : left + side], out[i, 1, top : top + side, left : left + side] = (
                    0.0,
                    1.0,
                )
        return out

    return segment, seen


def _levels(levels: list[float], side: int = 64) -> np.ndarray:
    return np.asarray(levels, np.float32)[:, None, None, None] * np.ones((len(levels), 1, side, side), np.float32)


def test_locate_heart_takes_the_foreground_centroid_of_the_central_middle_slice():
    segment, seen = _square_model(10, 20, 8)
    images = _levels([0.1, 0.2, 0.9, 0.8, 0.3])
    regions = np.array([BASE, MIDDLE, MIDDLE, MIDDLE, BASE], np.uint8)
    assert locate_heart(images, segment, regions) == (13.5, 23.5)  # rows 10..17, columns 20..27
    assert seen == [pytest.approx(0.9)]  # slice 2, the central middle slice: one pass


def test_locate_heart_falls_back_to_the_central_slices_and_gives_up():
    segment, seen = _square_model(20, 30, 20)
    images = _levels([0.9] * 6 + [0.1] * 2, 64)
    wrong_middle = np.array([BASE] * 6 + [MIDDLE] * 2, np.uint8)  # as on ACDC patient100 ES
    assert locate_heart(images, segment, wrong_middle) == (29.5, 39.5)
    # slices 6 and 7 (no heart), then the central pair 3 and 4
    assert seen == [pytest.approx(0.1), pytest.approx(0.1), pytest.approx(0.9), pytest.approx(0.9)]
    seen.clear()
    assert locate_heart(np.zeros((8, 1, 64, 64), np.float32), segment) is None
    assert len(seen) == 2 * LOCATE_TRIES  # three pairs: (3, 4), (2, 5), (1, 6)
    assert locate_heart(np.zeros((0, 1, 64, 64), np.float32), segment) is None
    small, _ = _square_model(0, 0, 7)  # 49 px: under MIN_HEART_PIXELS
    assert locate_heart(_levels([0.9]), small) is None
    assert locate_heart(_levels([0.9]), small, min_pixels=49) == (3.0, 3.0)
    with pytest.raises(InputError, match=r"'regions' must be \(2,\)"):
        locate_heart(_levels([0.9, 0.9]), segment, np.zeros(3, np.uint8))
    with pytest.raises(InputError, match=r"'images' must be float32 \(Z, channels, H, W\)"):
        locate_heart(np.zeros((2, 64, 64), np.float32), segment)


def _transform(offset: tuple[int, int], size: tuple[int, int]) -> SliceTransform:
    return SliceTransform((100, 100), (1.0, 1.0), (100, 100), (1.0, 1.0), offset, size)


@pytest.mark.parametrize("centre", [(31.5, 31.5), (20.0, 40.25), (20.5, 33.5), (17.49, 46.5)])
def test_crop_to_heart_centres_as_crop_or_pad_inside_the_window(centre):
    rng = np.random.default_rng(7)
    images = rng.random((3, 1, 64, 64), dtype=np.float32)
    cropped, transform = crop_to_heart(images, _transform((-2, 5), (64, 64)), centre, (32, 16))
    reference, (oy, ox) = crop_or_pad(images[:, 0], (32, 16), centre)
    assert (oy, ox) == window_offset(centre, (32, 16))
    np.testing.assert_array_equal(cropped[:, 0], reference)  # inside the window: the same pixels
    assert cropped.flags.c_contiguous and cropped.shape == (3, 1, 32, 16)
    assert transform.offset == (-2 + oy, 5 + ox) and transform.size == (32, 16)


def test_crop_to_heart_keeps_the_window_inside_and_checks_its_size():
    images = np.arange(64 * 64, dtype=np.float32).reshape(1, 1, 64, 64)
    cropped, transform = crop_to_heart(images, _transform((0, 0), (64, 64)), (2.0, 62.0), (32, 32))
    assert transform.offset == (0, 32)  # crop_or_pad would pad: (-14, 47)
    np.testing.assert_array_equal(cropped[0, 0], images[0, 0, :32, 32:])
    with pytest.raises(InputError, match=r"'size' must be \(h, w\) within the window \(64, 64\)"):
        crop_to_heart(images, _transform((0, 0), (64, 64)), (32.0, 32.0), (80, 32))


def test_window_offset_puts_the_window_centre_on_the_centre():
    assert window_offset((31.5, 31.5), (64, 64)) == (0, 0)  # the image centre of a 64 x 64 image
    assert window_offset((10.0, 10.0), (5, 4)) == (8, 8)  # odd: centred; even: lower-right of the middle
    assert window_offset((0.0, 0.0), (8, 8)) == (-4, -4)


def test_the_largest_piece_keeps_the_centre_on_the_heart() -> None:
    """A full-window pass that draws the heart (an 8 x 8 square) and, away from it, a 4 x 4 piece:
    every pixel's mean is pulled toward the piece, the largest piece's centroid is the heart's."""
    foreground = np.zeros((64, 64), bool)
    foreground[10:18, 20:28] = True
    foreground[50:54, 50:54] = True
    assert heart_centre(foreground) == pytest.approx((13.5 + 0.2 * (51.5 - 13.5), 23.5 + 0.2 * (51.5 - 23.5)))
    assert heart_centre(foreground, "largest") == (13.5, 23.5)
    foreground[18, 28] = True  # touching the square's corner only: the same piece (8-connected)
    assert heart_centre(foreground, "largest") == pytest.approx(
        (np.mean([13.5] * 64 + [18]), np.mean([23.5] * 64 + [28]))
    )

    def segment(images: np.ndarray) -> np.ndarray:
        out = np.zeros((images.shape[0], 4, 64, 64), np.float32)
        out[:, 0], out[:, 2] = ~foreground, foreground
        return out

    images = np.ones((3, 1, 64, 64), np.float32)
    assert locate_heart(images, segment, search="largest") == heart_centre(foreground, "largest")
    assert locate_heart(images, segment) == heart_centre(foreground)
    with pytest.raises(InputError, match="'search' must be one of \\('mean', 'largest'\\), got 'median'"):
        locate_heart(images, segment, search="median")
    with pytest.raises(InputError, match="non-empty bool \\(H, W\\) mask"):
        heart_centre(np.zeros((8, 8), bool), "largest")


@pytest.mark.parametrize(
    "n, regions, groups",
    [
        (0, None, []),
        (1, None, [[0]]),
        (5, None, [[2], [1, 3], [0, 4]]),
        (8, None, [[3, 4], [2, 5], [1, 6]]),
        (8, [BASE] * 6 + [MIDDLE] * 2, [[6, 7], [3, 4], [2, 5]]),
        (7, [BASE, MIDDLE, MIDDLE, MIDDLE, BASE, BASE, BASE], [[2], [3], [4]]),  # (2, 4) without 2
    ],
)
def test_search_groups(n, regions, groups):
    regions = None if regions is None else np.asarray(regions, np.uint8)
    assert search_groups(n, regions) == groups


@pytest.mark.parametrize("seed", range(20))
def test_search_groups_of_a_reversed_stack_are_the_same_slices(seed):
    """A stack stored last-first is searched on the same slices in the same order (indices
    mirrored), so its heart is located at the same place (export/README.md, stage 43)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 16))
    regions = rng.integers(0, 4, n).astype(np.uint8) if seed % 2 else None
    mirrored = [sorted(n - 1 - k for k in g) for g in search_groups(n, regions, tries=n)]
    flipped = None if regions is None else regions[::-1].copy()
    assert search_groups(n, flipped, tries=n) == mirrored
    assert sorted(k for g in search_groups(n, regions, tries=n) for k in g) == list(range(n))


def test_locate_heart_averages_the_two_central_slices():
    """An even stack whose central slices show the heart 4 px apart: their mean, whichever way up."""

    def segment(images: np.ndarray) -> np.ndarray:
        out = np.zeros((images.shape[0], 4, 64, 64), np.float32)
        out[:, 0] = 1.0
        for i, image in enumerate(images):
            top = int(round(float(image.mean()) * 10))  # the square moves with the slice's level
            out[i, 0, top : top + 10, 20:30], out[i, 1, top : top + 10, 20:30] = 0.0, 1.0
        return out

    images = _levels([0.0, 1.0, 2.0, 2.4, 3.0, 4.0])  # central slices 2 and 3: squares at rows 20 and 24
    assert locate_heart(images, segment) == (26.5, 24.5)
    assert locate_heart(images[::-1].copy(), segment) == (26.5, 24.5)
    lone = _levels([0.0, 1.0, 2.0, 2.4, 3.0])  # odd: its central slice (2, row 20) alone
    assert locate_heart(lone, segment) == (24.5, 24.5)
