"""cmrsdk.preprocess against independent references (scipy.ndimage, skimage, numpy, torch).

Tolerances: orders 0 exact; orders 1 and 3 within 1e-5 of the input's magnitude (the kernels
compute in float32, scipy in float64); normalisation within 1e-5 (float32 output).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from cmrsdk import preprocess as pp
from cmrsdk._normalize import percentiles
from cmrsdk.errors import InputError

DTYPES = [np.uint8, np.int16, np.uint16, np.float32, np.float64]


def random_stack(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if np.dtype(dtype).kind == "f":
        return (rng.normal(size=shape) * 300).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -3000), min(info.max, 3000), size=shape, endpoint=True).astype(dtype)


def zoom_reference(pixels: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    """scipy.ndimage.zoom slice by slice, in float64 (the documented reference)."""
    factors = (shape[0] / pixels.shape[1], shape[1] / pixels.shape[2])
    out = np.zeros((pixels.shape[0], *shape))
    for z, s in enumerate(pixels.astype(np.float64)):
        out[z] = ndi.zoom(s, factors, order=order, mode="mirror", grid_mode=True)
    return out


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("memory", ["C", "F"])
def test_resample_matches_scipy_zoom(order: int, dtype: type, memory: str) -> None:
    rng = np.random.default_rng(1000 + order)
    cases = [((3, 37, 23), (50, 17)), ((2, 1, 9), (4, 20)), ((1, 2, 2), (7, 5)), ((2, 64, 61), (64, 90))]
    for shape, out_shape in cases:
        pixels = np.asarray(random_stack(rng, shape, dtype), order=memory)
        got = pp.resample_stack(pixels, (1.0, 1.0), shape=out_shape, order=order, threads=2)
        ref = zoom_reference(pixels, out_shape, order)
        assert got.dtype == np.float32 and got.shape == (shape[0], *out_shape)
        scale = max(1.0, float(np.abs(pixels.astype(np.float64)).max()))
        if order == 0:  # a copy of input pixels, rounded to float32
            np.testing.assert_array_equal(got, ref.astype(np.float32), err_msg=f"{shape} -> {out_shape}")
        else:
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale, err_msg=f"{shape} -> {out_shape}")


def swapped(array: np.ndarray) -> np.ndarray:
    """The same values stored in the other byte order."""
    return array.astype(array.dtype.newbyteorder("S"))


#: views with negative and non-unit strides, as (name, index) over a (Z, Y, X) stack
VIEWS = [
    ("z reversed", np.s_[::-1]),
    ("y reversed, step 2", np.s_[:, ::-2]),
    ("x reversed", np.s_[:, :, ::-1]),
    ("all reversed, x step 3", np.s_[::-1, ::-1, ::-3]),
]


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_resample_negative_strides_and_byte_swapped_match_scipy(order: int, dtype: type) -> None:
    rng = np.random.default_rng(2000 + order)
    base = random_stack(rng, (4, 41, 46), dtype)
    for name, index in VIEWS:
        for byte_order in ("native", "swapped") if base.itemsize > 1 else ("native",):
            stack = base if byte_order == "native" else swapped(base)
            view = stack[index]
            assert any(s < 0 for s in view.strides) and (byte_order == "native") == view.dtype.isnative
            got = pp.resample_stack(view, (1.0, 1.0), shape=(29, 37), order=order, threads=2)
            plain = np.ascontiguousarray(view).astype(np.dtype(dtype))
            np.testing.assert_array_equal(
                got, pp.resample_stack(plain, (1.0, 1.0), shape=(29, 37), order=order), err_msg=f"{name}, {byte_order}"
            )
            ref = zoom_reference(plain, (29, 37), order)
            if order == 0:  # a copy of input pixels, rounded to float32
                np.testing.assert_array_equal(got, ref.astype(np.float32), err_msg=f"{name}, {byte_order}")
            else:
                scale = max(1.0, float(np.abs(plain.astype(np.float64)).max()))
                np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * scale, err_msg=f"{name}, {byte_order}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_normalize_negative_strides_and_byte_swapped_match_numpy(dtype: type) -> None:
    rng = np.random.default_rng(22)
    base = random_stack(rng, (5, 60, 50), dtype)
    for name, index in VIEWS:
        for stack in (base, swapped(base)):
            view = stack[index]
            values = view.astype(np.float64)
            np.testing.assert_allclose(
                pp.normalize(view, "zscore"), (values - values.mean()) / values.std(), rtol=0, atol=1e-5, err_msg=name
            )
            np.testing.assert_allclose(
                pp.normalize(view, "minmax"), (values - values.min()) / np.ptp(values), rtol=0, atol=1e-6, err_msg=name
            )
            np.testing.assert_allclose(
                pp.normalize(view, "robust_zscore"),
                numpy_robust(values, None),
                rtol=0,
                atol=1e-5 * max(1.0, np.abs(numpy_robust(values, None)).max()),
            )


def test_largest_component_negative_strides_match_scipy() -> None:
    rng = np.random.default_rng(23)
    base = (rng.integers(0, 4, size=(6, 30, 28)) * (rng.random((6, 30, 28)) < 0.45)).astype(np.uint8)
    for name, index in VIEWS:
        view = base[index]
        ref = np.zeros(view.shape, np.uint8)
        for value in (1, 2, 3):
            components, _ = ndi.label(view == value, ndi.generate_binary_structure(3, 1))
            sizes = np.bincount(components.ravel())[1:]
            ref[components == 1 + sizes.argmax()] = value
        np.testing.assert_array_equal(pp.largest_component(view, connectivity=6), ref, err_msg=name)


def test_resample_order3_matches_skimage_resize() -> None:
    from skimage.transform import resize

    rng = np.random.default_rng(7)
    pixels = random_stack(rng, (2, 48, 40), np.int16)
    got = pp.resample_stack(pixels, (1.5, 1.4), target_spacing=(1.25, 1.25), order=3, threads=1)
    ref = resize(
        pixels.astype(np.float64),
        got.shape,
        order=3,
        mode="reflect",
        anti_aliasing=False,
        preserve_range=True,
        clip=False,
    )
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * 3000)


def test_resample_shapes_spacing_and_empty() -> None:
    assert pp.resampled_shape((256, 216), (1.5, 1.5), (1.25, 1.25)) == (307, 259)
    assert pp.resampled_shape((3, 3), (0.1, 0.1), (10.0, 10.0)) == (1, 1)
    empty = pp.resample_stack(np.zeros((0, 5, 6), np.int16), (1.0, 1.0), shape=(8, 9))
    assert empty.shape == (0, 8, 9) and empty.dtype == np.float32


@pytest.mark.parametrize("order", [0, 1, 3])
def test_resample_analytic_cases(order: int) -> None:
    rng = np.random.default_rng(11)
    pixels = rng.normal(size=(3, 31, 17)).astype(np.float32)
    identity = pp.resample_stack(pixels, (1.2, 0.8), target_spacing=(1.2, 0.8), order=order)
    np.testing.assert_array_equal(identity, pixels)
    constant = pp.resample_stack(np.full((2, 13, 9), 417, np.uint16), (1.0, 1.0), shape=(40, 3), order=order)
    np.testing.assert_allclose(constant, 417.0, rtol=1e-6)
    if order == 3:
        # There and back on a smooth image: cubic splines reproduce it closely.
        yy, xx = np.mgrid[0:64, 0:48] / 64.0
        smooth = np.sin(2 * np.pi * yy)[None] * np.cos(2 * np.pi * xx)[None] * 100
        up = pp.resample_stack(smooth, (1.0, 1.0), shape=(128, 96), order=3)
        back = pp.resample_stack(up, (0.5, 0.5), shape=(64, 48), order=3)
        # 0.05 % of the amplitude inside; the mirror edge of a non-symmetric image costs more.
        assert np.abs(back - smooth)[:, 4:-4, 4:-4].max() < 0.05
        assert np.abs(back - smooth).max() < 1.0


def test_resample_labels_nearest_and_linear() -> None:
    rng = np.random.default_rng(3)
    labels = ndi.zoom(rng.integers(0, 4, size=(2, 8, 7)), (1, 4, 4), order=0).astype(np.uint8)
    nearest = pp.resample_labels(labels, (1.0, 1.0), shape=(45, 19), method="nearest")
    np.testing.assert_array_equal(nearest, zoom_reference(labels, (45, 19), 0).astype(np.uint8))
    linear = pp.resample_labels(labels, (1.0, 1.0), shape=(45, 19), method="linear")
    scores = np.stack([zoom_reference((labels == v).astype(np.uint8), (45, 19), 1) for v in range(4)])
    margin = np.sort(scores, axis=0)[-1] - np.sort(scores, axis=0)[-2]
    decided = margin > 1e-5  # exact ties are decided towards the lower label by both; near-ties by rounding
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(linear[decided], scores.argmax(axis=0)[decided])
    assert linear.dtype == np.uint8


def numpy_robust(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    values = x[mask] if mask is not None else x.ravel()
    lo, hi = np.percentile(values.astype(np.float64), [0.5, 99.5])
    clipped = np.clip(values.astype(np.float64), lo, hi)
    return (np.clip(x.astype(np.float64), lo, hi) - clipped.mean()) / max(clipped.std(), 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("use_mask", [False, True])
def test_normalize_matches_numpy(dtype: type, use_mask: bool) -> None:
    rng = np.random.default_rng(21)
    x = np.asfortranarray(random_stack(rng, (3, 90, 70), dtype))
    mask = (rng.random(x.shape) < 0.3) if use_mask else None
    values = (x[mask] if mask is not None else x).astype(np.float64)
    refs = {
        "zscore": (x - values.mean()) / values.std(),
        "robust_zscore": numpy_robust(x, mask),
        "minmax": (x - values.min()) / (values.max() - values.min()),
    }
    for method, ref in refs.items():
        got = pp.normalize(x, method, mask=mask, threads=2)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, np.abs(ref).max()), err_msg=method)


def test_normalize_constant_and_empty() -> None:
    np.testing.assert_array_equal(pp.normalize(np.full((2, 3, 4), 5.0), "zscore"), 0.0)
    np.testing.assert_array_equal(pp.normalize(np.full((2, 3, 4), 5, np.uint8), "minmax"), 0.0)
    assert pp.normalize(np.zeros((0, 4, 4), np.float32)).shape == (0, 4, 4)


def test_minmax_on_one_thread_spans_the_data_above_one_block() -> None:
    # Regression (issue 17): with one thread the statistics of more than one 65,536-voxel block
    # were taken over partial slots that still held zeros, so data not straddling 0 got a
    # minimum of 0.0503 instead of 0.
    x = (np.arange(4 * 200 * 200) % 190 + 10).astype(np.uint8).reshape(4, 200, 200)
    for threads in (1, 2):
        got = pp.normalize(x, "minmax", threads=threads)
        assert got.min() == 0.0 and got.max() == pytest.approx(1.0, abs=1e-6), threads
        np.testing.assert_allclose(got, (x - 10.0) / 189.0, rtol=0, atol=1e-6)
    negative = -x.astype(np.float32) - 1000.0  # all negative: the zeros' max would win instead
    assert pp.normalize(negative, "minmax", threads=1).max() == pytest.approx(1.0, abs=1e-6)


#: below one block, exactly one, one plus a voxel, several with a partial last one.
SIZES = [1000, 65536, 65537, 4 * 200 * 200]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", ["zscore", "robust_zscore", "minmax"])
def test_normalize_bit_for_bit_across_thread_counts(dtype: type, method: str) -> None:
    rng = np.random.default_rng(61)
    for n in SIZES:
        x = random_stack(rng, (n,), dtype)
        if np.dtype(dtype).kind != "f":  # not straddling 0, the shape of the regression
            x = x - x.min() + (np.iinfo(dtype).max // 50 if x.min() > 0 else 10)
        x = x.reshape(-1, 8) if n % 8 == 0 else x
        for mask in (None, rng.random(x.shape) < 0.4):
            serial = pp.normalize(x, method, mask=mask, threads=1)
            values = (x[mask] if mask is not None else x).astype(np.float64)
            if method == "minmax":
                assert serial.min() == 0.0 or (mask is not None and serial[mask].min() == 0.0), (n, mask is None)
                np.testing.assert_allclose(serial, (x - values.min()) / (values.max() - values.min()), atol=1e-6)
            elif method == "zscore":
                np.testing.assert_allclose(serial, (x - values.mean()) / values.std(), atol=1e-4)
            for threads in (2, 3, 8):
                got = pp.normalize(x, method, mask=mask, threads=threads)
                np.testing.assert_array_equal(got, serial, err_msg=f"{method} n={n} threads={threads}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_native_kernels_bit_for_bit_across_thread_counts(dtype: type) -> None:
    rng = np.random.default_rng(62)
    pixels = random_stack(rng, (9, 41, 37), dtype)
    prob = rng.random((9, 4, 32, 32)).astype(np.float32)
    labels = (rng.integers(0, 4, size=(9, 30, 30)) * (rng.random((9, 30, 30)) < 0.5)).astype(np.uint8)
    t = pp.SliceTransform((41, 37), (1.0, 1.0), (36, 30), (1.2, 1.2), (2, -1), (32, 32))

    def run(threads: int) -> tuple[np.ndarray, ...]:
        return (
            *(pp.resample_stack(pixels, (1.0, 1.0), shape=(50, 29), order=o, threads=threads) for o in (0, 1, 3)),
            pp.resample_argmax(prob, t, threads=threads),
            pp.largest_component(labels, connectivity=26, threads=threads),
        )

    serial = run(1)
    for threads in (2, 3, 8):
        for got, want in zip(run(threads), serial, strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"threads={threads}")


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 65537, 300_000])
def test_percentiles_by_selection_equal_numpy(n: int) -> None:
    rng = np.random.default_rng(n)
    cases = [
        rng.normal(size=n).astype(np.float32),
        rng.integers(0, 3, size=n).astype(np.float32),  # heavy ties
        np.sort(rng.exponential(size=n)).astype(np.float32)[::-1].copy(),  # sorted, skewed
    ]
    for x in cases:
        for lower, upper in [(0.5, 99.5), (0.0, 100.0), (25.0, 75.0)]:
            got = percentiles(x, None, lower, upper)
            np.testing.assert_allclose(got, np.percentile(x.astype(np.float64), [lower, upper]), rtol=1e-6, atol=1e-6)
        mask = (rng.random(n) < 0.5).astype(np.uint8)
        if mask.any():
            got = percentiles(x, mask, 0.5, 99.5)
            np.testing.assert_allclose(got, np.percentile(x[mask.astype(bool)], [0.5, 99.5]), rtol=1e-6, atol=1e-6)


def test_crop_or_pad_offsets() -> None:
    stack = np.arange(2 * 6 * 8, dtype=np.float32).reshape(2, 6, 8)
    window, offset = pp.crop_or_pad(stack, (4, 4))
    assert offset == (1, 2)
    np.testing.assert_array_equal(window, stack[:, 1:5, 2:6])
    window, offset = pp.crop_or_pad(stack, (8, 4), centre=(0.0, 7.0), fill=-1.0)
    assert offset == (-4, 5)
    np.testing.assert_array_equal(window[:, 4:7, 0:3], stack[:, 0:3, 5:8])
    assert (window[:, :4] == -1).all() and (window[:, :, 3] == -1).all()
    labels, _ = pp.crop_or_pad(np.ones((1, 3, 3), np.uint8), (5, 5))
    assert labels.dtype == np.uint8 and labels.sum() == 9


def argmax_reference(prob: np.ndarray, t: pp.SliceTransform) -> tuple[np.ndarray, np.ndarray]:
    """Labels and top-2 margins by numpy in float64: bilinear at window coordinates, clamped."""

    def axis(n: int, r: int, o: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        c = (np.arange(n) + 0.5) * r / n - 0.5 - o
        inside = (c >= -0.5) & (c < size - 0.5)
        c = np.clip(c, 0, size - 1)
        i0 = np.floor(c).astype(int)
        return inside, i0, np.minimum(i0 + 1, size - 1), c - i0

    iny, y0, y1, wy = axis(t.native_shape[0], t.resampled_shape[0], t.offset[0], t.size[0])
    inx, x0, x1, wx = axis(t.native_shape[1], t.resampled_shape[1], t.offset[1], t.size[1])
    p = prob.astype(np.float64)
    rows = p[:, :, y0] * (1 - wy)[:, None] + p[:, :, y1] * wy[:, None]
    full = rows[..., x0] * (1 - wx) + rows[..., x1] * wx
    top = np.sort(full, axis=1)
    labels = np.where(iny[:, None] & inx[None, :], full.argmax(axis=1), 0).astype(np.uint8)
    return labels, top[:, -1] - top[:, -2]


@pytest.mark.parametrize("offset", [(0, 0), (5, -7), (-4, 9)])
def test_resample_argmax_matches_reference(offset: tuple[int, int]) -> None:
    rng = np.random.default_rng(31)
    t = pp.SliceTransform((50, 37), (1.5, 1.5), (61, 44), (1.25, 1.25), offset, (48, 40))
    prob = rng.random((3, 4, 48, 40)).astype(np.float32)
    got = pp.resample_argmax(prob, t, threads=2)
    ref, margin = argmax_reference(prob, t)
    assert got.shape == (3, 50, 37) and got.dtype == np.uint8
    decided = margin > 1e-5
    np.testing.assert_array_equal(got[decided], ref[decided])
    assert decided.mean() > 0.99


def test_resample_argmax_equals_torch_on_full_window() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(32)
    t = pp.SliceTransform((70, 55), (1.0, 1.0), (56, 44), (1.25, 1.25), (0, 0), (56, 44))
    prob = rng.random((2, 3, 56, 44)).astype(np.float32)
    up = torch.nn.functional.interpolate(
        torch.from_numpy(prob).double(), size=(70, 55), mode="bilinear", align_corners=False
    )
    top = up.topk(2, dim=1).values
    decided = (top[:, 0] - top[:, 1]).numpy() > 1e-5
    np.testing.assert_array_equal(pp.resample_argmax(prob, t)[decided], up.argmax(1).numpy()[decided])


@pytest.mark.parametrize("connectivity,rank", [(6, 1), (18, 2), (26, 3)])
def test_largest_component_matches_scipy_label(connectivity: int, rank: int) -> None:
    rng = np.random.default_rng(connectivity)
    labels = np.asfortranarray(
        (rng.integers(0, 4, size=(6, 30, 25)) * (rng.random((6, 30, 25)) < 0.45)).astype(np.uint8)
    )
    structure = ndi.generate_binary_structure(3, rank)
    ref = np.zeros_like(labels)
    for value in (1, 2, 3):
        components, count = ndi.label(labels == value, structure)
        sizes = np.bincount(components.ravel())[1:]
        ref[components == 1 + sizes.argmax()] = value  # argmax: first of equal sizes, as documented
    np.testing.assert_array_equal(pp.largest_component(labels, connectivity=connectivity, threads=2), ref)
    assert pp.largest_component(np.zeros((0, 3, 3), np.uint8)).shape == (0, 3, 3)


def test_four_threads_at_once_give_the_serial_result() -> None:
    rng = np.random.default_rng(41)
    pixels = random_stack(rng, (6, 120, 100), np.int16)
    prob = rng.random((6, 4, 96, 96)).astype(np.float32)
    labels = (rng.integers(0, 4, size=(6, 64, 64)) * (rng.random((6, 64, 64)) < 0.5)).astype(np.uint8)

    def work() -> tuple[np.ndarray, ...]:
        batch, t = pp.prepare_slices(pixels, (1.5, 1.4), target_spacing=(1.25, 1.25), size=(96, 96), threads=2)
        return batch, pp.resample_argmax(prob, t, threads=2), pp.largest_component(labels, connectivity=26, threads=2)

    serial = work()
    results: list[tuple[np.ndarray, ...]] = [()] * 4

    def run(i: int) -> None:
        results[i] = work()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result in results:
        for got, want in zip(result, serial, strict=True):
            np.testing.assert_array_equal(got, want)
    one_thread = pp.prepare_slices(pixels, (1.5, 1.4), target_spacing=(1.25, 1.25), size=(96, 96), threads=1)[0]
    np.testing.assert_array_equal(one_thread, serial[0])


def test_prepare_slices_geometry() -> None:
    rng = np.random.default_rng(51)
    pixels = random_stack(rng, (4, 200, 180), np.uint16)
    batch, t = pp.prepare_slices(
        pixels, (1.5, 1.5), target_spacing=(1.25, 1.25), size=(224, 160), order=1, normalization="zscore"
    )
    assert batch.shape == (4, 1, 224, 160) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert t.resampled_shape == (240, 216) and t.offset == (8, 28) and t.size == (224, 160)
    full = pp.normalize(pp.resample_stack(pixels, (1.5, 1.5), shape=(240, 216), order=1), "zscore")
    np.testing.assert_array_equal(batch[:, 0], full[:, 8:232, 28:188])
    # An explicit centre is in native pixels: native (50, 60) is resampled (59.5, 71.5).
    _, t = pp.prepare_slices(pixels, (1.5, 1.5), target_spacing=(1.25, 1.25), size=(64, 64), centre=(50, 60))
    assert t.offset == (28, 40)


def test_round_trip_on_real_acdc_labels(shared_data) -> None:
    nib = pytest.importorskip("nibabel")
    patient = shared_data / "acdc" / "training" / "patient001"
    image = nib.load(str(patient / "patient001_frame01.nii.gz"))
    labels = (
        np.asarray(nib.load(str(patient / "patient001_frame01_gt.nii.gz")).dataobj).transpose(2, 1, 0).astype(np.uint8)
    )
    pixels = np.asarray(image.dataobj).transpose(2, 1, 0)  # (Z, Y, X), as stored: any dtype, F order view
    spacing = tuple(float(s) for s in image.header.get_zooms()[1::-1])
    batch, t = pp.prepare_slices(pixels, spacing, target_spacing=(1.25, 1.25), size=t_size(pixels, spacing))
    assert np.isfinite(batch).all() and abs(float(batch.mean())) < 0.2
    resampled = pp.resample_labels(labels, spacing, shape=t.resampled_shape, method="linear")
    window, _ = pp.crop_or_pad(resampled, t.size)
    onehot = (window[:, None] == np.arange(4)[None, :, None, None]).astype(np.float32)
    back = pp.resample_argmax(onehot, t)
    for value in (1, 2, 3):
        a, b = back == value, labels == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.95, value


def t_size(pixels: np.ndarray, spacing: tuple[float, float]) -> tuple[int, int]:
    return pp.resampled_shape(pixels.shape[1:], spacing, (1.25, 1.25))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: pp.resample_stack(np.zeros((4, 4)), (1, 1), shape=(2, 2)), r"'pixels' must be 3-D .* \(4, 4\)"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (0, 1), shape=(2, 2)), r"'spacing_yx' .* got \(0, 1\)"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (-1.0, 1), target_spacing=(1, 1)), r"'spacing_yx' .*-1\.0"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (np.nan, 1), target_spacing=(1, 1)), r"'spacing_yx' .*nan"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1), target_spacing=(np.inf, 1)), r"'target_spacing'"),
        (lambda: pp.resample_stack(np.full((1, 4, 4), np.nan), (1, 1), shape=(2, 2)), r"'pixels' contain NaN"),
        (
            lambda: pp.resample_stack(np.zeros((1, 4, 4), np.int32), (1, 1), shape=(2, 2)),
            r"int32 .*uint8, int16, uint16, float32, float64",
        ),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4), bool), (1, 1), shape=(2, 2)), r"'pixels' dtype bool"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1), shape=(0, 2)), r"'shape' .*\(0, 2\)"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1), shape=(10**6, 2)), r"'shape' .*16384"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1), target_spacing=(1e-6, 1)), r"'target_spacing' .*16384"),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1)), r"exactly one of 'target_spacing' and 'shape'"),
        (lambda: pp.resample_stack(np.zeros((1, 0, 4)), (1, 1), shape=(2, 2)), r"'pixels' has empty slices"),
        (
            lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1), shape=(2, 2), order=2),
            r"'order' must be 0, 1 or 3, got 2",
        ),
        (lambda: pp.resample_stack(np.zeros((1, 4, 4)), (1, 1), shape=(2, 2), threads=0), r"'threads' .* got 0"),
        (lambda: pp.normalize(np.array([1.0, np.nan]), "zscore"), r"NaN"),
        (lambda: pp.normalize(np.ones(3), "zscore", mask=np.zeros(3, bool)), r"mask selects no voxel"),
        (
            lambda: pp.normalize(np.ones(3), "zscore", mask=np.ones(4, bool)),
            r"'mask' must be a bool array of shape \(3,\)",
        ),
        (lambda: pp.normalize(np.ones(3), "median"), r"'method' .*got 'median'"),
        (
            lambda: pp.resample_argmax(
                np.zeros((1, 2, 3, 3), np.float32), pp.SliceTransform((4, 4), (1, 1), (3, 3), (1, 1), (0, 0), (4, 4))
            ),
            r"'probabilities' .*\(4, 4\).*\(1, 2, 3, 3\)",
        ),
        (
            lambda: pp.resample_argmax(
                np.full((1, 2, 3, 3), np.nan, np.float32),
                pp.SliceTransform((4, 4), (1, 1), (3, 3), (1, 1), (0, 0), (3, 3)),
            ),
            r"NaN",
        ),
        (
            lambda: pp.resample_argmax(
                np.zeros((1, 2, 3, 3)), pp.SliceTransform((4, 4), (1, 1), (3, 3), (1, 1), (0, 0), (3, 3))
            ),
            r"'probabilities' must be float32, got float64",
        ),
        (lambda: pp.largest_component(np.zeros((2, 2, 2), np.int16)), r"'labels' must be uint8, got int16"),
        (lambda: pp.largest_component(np.zeros((2, 2, 2), np.uint8), connectivity=8), r"'connectivity' .* got 8"),
        (
            lambda: pp.resample_labels(np.full((1, 2, 2), 300, np.uint16), (1, 1), shape=(2, 2)),
            r"'labels' values .*300",
        ),
        (lambda: pp.prepare_slices(np.zeros((1, 4, 4)), (1, 1), target_spacing=(1, 1), size=(0, 4)), r"'size'"),
        (lambda: pp.crop_or_pad(np.zeros((1, 4, 4)), (2, 2), centre=(np.nan, 0)), r"'centre'"),
    ],
)
def test_bad_input_raises_input_error(call, match: str) -> None:
    with pytest.raises(InputError, match=match):
        call()


# Regressions found by fuzz/fuzz_kernels.py (issue 17): each raised something other than
# InputError, or turned finite input into a non-finite result.


def test_resampled_shape_of_an_overflowing_ratio_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"'target_spacing' .*more than 16384"):
        pp.resampled_shape((10, 10), (1e300, 1.0), (1e-300, 1.0))
    with pytest.raises(InputError, match=r"'target_spacing'"):
        pp.resample_stack(np.zeros((1, 4, 4)), (1e300, 1), target_spacing=(1e-300, 1))


@pytest.mark.parametrize(
    "transform,match",
    [
        (pp.SliceTransform((0, 5), (1, 1), (4, 4), (1, 1), (0, 0), (3, 3)), r"'transform.native_shape'"),
        (pp.SliceTransform((5, 5), (1, 1), (-1, 4), (1, 1), (0, 0), (3, 3)), r"'transform.resampled_shape'"),
        (pp.SliceTransform((5, 5), (1, 1), (4, 4), (1, 1), (0.5, 0), (3, 3)), r"'transform.offset' .*\(0.5, 0\)"),
        (pp.SliceTransform((5, 5), (1, 1), (4, 4), (1, 1), (0, 0), (0, 3)), r"'transform.size'"),
        (pp.SliceTransform((10**6, 5), (1, 1), (4, 4), (1, 1), (0, 0), (3, 3)), r"'transform.native_shape' .*16384"),
    ],
)
def test_resample_argmax_checks_the_transform(transform: pp.SliceTransform, match: str) -> None:
    prob = np.zeros((1, 2, *[max(s, 1) for s in transform.size]), np.float32)
    with pytest.raises(InputError, match=match):
        pp.resample_argmax(prob, transform)


def test_resample_argmax_far_offsets_label_nothing() -> None:
    # A centre far outside the image gives an offset beyond int64: it was a TypeError.
    rng = np.random.default_rng(81)
    pixels = rng.integers(0, 500, size=(2, 20, 16)).astype(np.int16)
    _, t = pp.prepare_slices(pixels, (1.0, 1.0), target_spacing=(1.0, 1.0), size=(8, 8), centre=(1e90, -1e90))
    assert abs(t.offset[0]) > 2**63
    prob = rng.random((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(pp.resample_argmax(prob, t), 0)
    for offset in [(20, 0), (0, -30), (-29, 3), (10**30, 10**30)]:
        far = pp.SliceTransform((20, 16), (1, 1), (20, 16), (1, 1), offset, (8, 8))
        np.testing.assert_array_equal(pp.resample_argmax(prob, far), 0, err_msg=str(offset))
    near = pp.SliceTransform((20, 16), (1, 1), (20, 16), (1, 1), (-7, 15), (8, 8))
    assert pp.resample_argmax(prob, near).any()  # one corner pixel each way still overlaps


def test_normalize_spans_beyond_float32_range() -> None:
    x = np.array([-3e38, 0.0, 3e38], np.float32)
    np.testing.assert_allclose(pp.normalize(x, "minmax"), [0.0, 0.5, 1.0], atol=1e-6)
    assert np.isfinite(pp.normalize(x, "zscore")).all()


def test_normalize_that_would_overflow_float32_is_an_input_error() -> None:
    # The masked voxels are constant, so std is clamped to 1e-8; the others lie 1e31 away.
    x = np.array([1.0, 1.0, 1e31], np.float32)
    with pytest.raises(InputError, match=r"overflow float32"):
        pp.normalize(x, "zscore", mask=np.array([True, True, False]))
    with pytest.raises(InputError, match=r"overflow float32"):
        pp.normalize(
            np.array([1.0, np.nextafter(np.float32(1), 2), -3e38], np.float32),
            "minmax",
            mask=np.array([True, True, False]),
        )


def test_resample_overflowing_float32_is_an_input_error() -> None:
    # The cubic spline overshoots between alternating extremes; orders 0 and 1 stay within them.
    pixels = np.tile(np.array([3.4e38, -3.4e38], np.float32), (1, 6, 3))
    with pytest.raises(InputError, match=r"near float32's limit .*overflows"):
        pp.resample_stack(pixels, (1.0, 1.0), shape=(11, 13), order=3)
    for order in (0, 1):
        assert np.isfinite(pp.resample_stack(pixels, (1.0, 1.0), shape=(11, 13), order=order)).all()


def test_context_slices_put_each_slice_between_its_neighbours():
    images = np.arange(4, dtype=np.float32)[:, None, None, None] * np.ones((1, 1, 3, 2), np.float32)
    out = pp.context_slices(images, 2, np.array([0, 3]))
    assert out.shape == (2, 5, 3, 2) and out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out[:, :, 0, 0], [[0, 0, 0, 1, 2], [1, 2, 3, 3, 3]])
    np.testing.assert_array_equal(pp.context_slices(images, 0), images)
    assert pp.context_slices(images[:0], 1).shape == (0, 3, 3, 2)
    with pytest.raises(InputError, match=r"'images' must be float32 \(Z, 1, H, W\)"):
        pp.context_slices(images[:, 0], 1)
    with pytest.raises(InputError, match="'context' must be an int >= 0, got -1"):
        pp.context_slices(images, -1)
    with pytest.raises(InputError, match=r"'index' must hold slice indices in \[0, 4\), got 0..4"):
        pp.context_slices(images, 1, np.array([0, 4]))


def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_a_slice_a_breath_hold_moved_off_the_heart_is_given_back() -> None:
    """An LV of 6 slices whose apical two a breath-hold moved 11 mm off it (1 mm pixels): the 3-D
    largest component drops them, the re-attachment gives them back; an in-plane fragment and a
    blob 40 mm away stay out."""
    labels = np.zeros((6, 64, 64), np.uint8)
    for z in range(4):
        labels[z][_disc((64, 64), (32, 32), 9 - z)] = 1
    labels[4][_disc((64, 64), (32, 43), 4)] = 1  # moved: no voxel over slice 3's disc
    labels[5][_disc((64, 64), (32, 44), 2)] = 1
    labels[2][_disc((64, 64), (5, 5), 2)] = 1  # an in-plane fragment on a kept slice
    assert not (labels[3] & labels[4]).any()
    cleaned = pp.largest_component(labels)
    assert not cleaned[4:].any() and cleaned[2, 5, 5] == 0
    back = pp.reattach_displaced_slices(labels, cleaned, (1.0, 1.0))
    np.testing.assert_array_equal(back[4:], labels[4:])  # both apical slices, outward
    np.testing.assert_array_equal(back[:4], cleaned[:4])  # the fragment stays out
    assert pp.reattach_displaced_slices(labels, cleaned, (1.0, 1.0), max_shift_mm=10.0)[4:].sum() == 0
    far = cleaned.copy()
    far[4][_disc((64, 64), (60, 60), 3)] = 1  # 40 mm from slice 3's LV: not the heart
    assert not pp.reattach_displaced_slices(far, pp.largest_component(far), (1.0, 1.0))[4:].any()
    with pytest.raises(InputError, match="same"):
        pp.reattach_displaced_slices(labels, cleaned[:5], (1.0, 1.0))


def test_the_gap_criterion_gives_back_a_piece_at_the_crescents_horn() -> None:
    """An RV crescent on slice 0 and, on slice 1, a small piece under one horn, not touching it in
    3-D (1 mm pixels): its centroid lies 27 mm from the crescent's, its nearest pixel 4.2 mm from it.
    Centroids alone (the default, `MAX_SLICE_GAP_MM` None) leave it out, as does a 3 mm gap; a 5 mm
    gap gives it back; a piece 23 mm from the crescent stays out."""
    assert pp.MAX_SLICE_GAP_MM is None
    labels = np.zeros((2, 80, 80), np.uint8)
    ring = _disc((80, 80), (40, 40), 20) & ~_disc((80, 80), (40, 48), 20)
    labels[0][ring & (np.mgrid[:80, :80][1] < 40)] = 3  # the crescent's left half: horns at rows 20 and 60
    piece = _disc((80, 80), (18, 44), 2)  # right of the upper horn, off it on slice 0
    labels[1][piece] = 3
    assert not (labels[0] & labels[1]).any()
    cleaned = pp.largest_component(labels)
    assert not cleaned[1].any()
    centroid = np.argwhere(labels[0] == 3).mean(0)
    assert np.linalg.norm(centroid - (18, 44)) > 15
    assert not pp.reattach_displaced_slices(labels, cleaned, (1.0, 1.0))[1].any()
    assert not pp.reattach_displaced_slices(labels, cleaned, (1.0, 1.0), max_gap_mm=3.0)[1].any()
    np.testing.assert_array_equal(
        pp.reattach_displaced_slices(labels, cleaned, (1.0, 1.0), max_gap_mm=5.0)[1], labels[1]
    )
    far = labels.copy()
    far[1] = 0
    far[1][_disc((80, 80), (8, 60), 2)] = 3  # 23 mm from the crescent
    assert not pp.reattach_displaced_slices(far, pp.largest_component(far), (1.0, 1.0), max_gap_mm=5.0)[1].any()


def test_the_statistics_skip_a_zero_background_only_where_it_is_a_quarter() -> None:
    """export/README.md, stage 44: at 25 % exact zeros or more, the zeros leave the statistics."""
    rng = np.random.default_rng(44)
    image = rng.uniform(10.0, 100.0, (2, 40, 40)).astype(np.float32)
    image[:, :6] = 0.0  # 15 % zeros: ACDC stacks reach 12.5 %
    assert pp.statistics_mask(image, (1.0, 1.0), (40, 40)) is None
    image[:, :12] = 0.0  # 30 %
    mask = pp.statistics_mask(image, (1.0, 1.0), (40, 40))
    assert mask is not None and mask.dtype == np.bool_ and np.array_equal(mask, image != 0)
    half = pp.statistics_mask(image, (1.0, 1.0), (20, 20))  # the resampled grid's nearest native pixels
    assert half is not None and half.shape == (2, 20, 20) and not half[:, :6].any() and half[:, 6:].all()
    assert pp.statistics_mask(np.zeros((2, 8, 8), np.int16), (1.0, 1.0), (8, 8)) is None  # all zeros: all pixels
    disk = (image > 0).astype(np.uint8)  # two values: without the zeros nothing would be left to divide by
    assert pp.statistics_mask(disk, (1.0, 1.0), (40, 40)) is None


def test_a_zero_filled_field_does_not_shift_the_network_input() -> None:
    """The same slices inside a wide zero border (a converter's larger field) reach the network as
    without it; before stage 44 the border pulled the mean and spread down and every z-score moved."""
    rng = np.random.default_rng(7)
    image = rng.gamma(2.0, 50.0, (3, 64, 48)).astype(np.float32) + 1.0  # no zeros
    padded = np.pad(image, ((0, 0), (100, 100), (100, 100)))
    kwargs = dict(target_spacing=(1.0, 1.0), size=(32, 32))
    plain, _ = pp.prepare_slices(image, (1.0, 1.0), centre=(31.5, 23.5), **kwargs)
    wide, _ = pp.prepare_slices(padded, (1.0, 1.0), centre=(131.5, 123.5), **kwargs)
    np.testing.assert_allclose(wide, plain, atol=1e-4)
