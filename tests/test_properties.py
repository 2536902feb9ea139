"""Property-based checks (hypothesis) of invariants that hand-picked cases can miss."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from cmrsdk.metrics import slice_dice, volumes_ml
from cmrsdk.preprocess import SliceTransform, crop_or_pad, resample_argmax
from cmrsdk.regions import region_counts

shapes = st.tuples(st.integers(1, 4), st.integers(1, 40), st.integers(1, 40))


@given(st.integers(0, 500))
def test_region_split_covers_every_labelled_slice_symmetrically(n):
    base, middle, apex = region_counts(n)
    assert base + middle + apex == n and base == apex and middle >= 0
    assert abs(base - 0.2 * n) <= 1.0  # 20 % / 60 % / 20 %, up to rounding
    if n >= 3:
        assert base >= 1


@settings(max_examples=60, deadline=None)
@given(
    shapes, st.integers(1, 50), st.integers(1, 50), st.floats(-20, 60), st.floats(-20, 60), st.integers(0, 2**31 - 1)
)
def test_crop_or_pad_keeps_the_pixels_it_covers(shape, h, w, cy, cx, seed):
    stack = np.random.default_rng(seed).random(shape, dtype=np.float32)
    window, (oy, ox) = crop_or_pad(stack, (h, w), (cy, cx), fill=-1.0)
    assert window.shape == (shape[0], h, w)
    for y, x in np.ndindex(h, w):
        sy, sx = y + oy, x + ox
        inside = 0 <= sy < shape[1] and 0 <= sx < shape[2]
        np.testing.assert_array_equal(window[:, y, x], stack[:, sy, sx] if inside else -1.0)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_inverse_of_an_identity_transform_is_the_argmax(shape, seed):
    rng = np.random.default_rng(seed)
    z, y, x = shape
    probabilities = rng.random((z, 4, y, x), dtype=np.float32)
    transform = SliceTransform((y, x), (1.0, 1.0), (y, x), (1.0, 1.0), (0, 0), (y, x))
    labels = resample_argmax(probabilities, transform, threads=1)
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-6  # ties may go either way
    np.testing.assert_array_equal(labels[clear], probabilities.argmax(1)[clear])


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1))
def test_slice_dice_is_symmetric_and_bounded(shape, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, shape).astype(np.uint8)
    b = rng.integers(0, 4, shape).astype(np.uint8)
    d = slice_dice(a, b)
    np.testing.assert_array_equal(np.isnan(d), np.isnan(slice_dice(b, a)))
    np.testing.assert_allclose(d, slice_dice(b, a), equal_nan=True)
    assert np.all((d[~np.isnan(d)] >= 0) & (d[~np.isnan(d)] <= 1))


@settings(max_examples=60, deadline=None)
@given(shapes, st.floats(0.1, 20), st.floats(0.6, 5), st.floats(0.5, 2), st.integers(0, 2**31 - 1))
def test_volumes_add_up_to_the_labelled_extent(shape, dz, dy, aspect, seed):
    # spacings a Stack takes (pixels 0.3-20 mm, at most 3 times as long as wide): volumes_ml refuses others
    dx = dy * aspect
    labels = np.random.default_rng(seed).integers(0, 4, shape).astype(np.uint8)
    total = sum(volumes_ml(labels, (dz, dy, dx)).values())
    assert np.isclose(total, np.count_nonzero(labels) * dz * dy * dx / 1000.0)
