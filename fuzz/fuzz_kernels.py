"""Fuzz harness of cmrsdk's native kernels, through their public wrappers (cmrsdk.preprocess).

Each input picks one wrapper and builds its arguments from the fuzzer's bytes: dtypes (the
supported ones and a few that must be refused), byte orders, shapes (size-0 and size-1 axes
included), memory layouts (C, F, transposed, steps of +-1..3, so negative strides), values taken
raw from the bytes (so NaN, infinities, huge and subnormal floats), masks, spacings, shapes,
orders, offsets and thread counts.

A finding is any exception other than cmrsdk's :class:`~cmrsdk.errors.InputError`, a crash of
the process, or a broken invariant (an ``AssertionError``):
- the result does not depend on the memory layout or byte order (bit for bit against a native,
  C-contiguous copy) nor on the thread count (1 against 3);
- results have the documented shape and dtype, and are finite when the input is;
- order-0 resampling only copies input values; identity resampling returns the input;
- ``largest_component`` keeps one component per label, equal to scipy.ndimage's;
- selection percentiles equal ``np.percentile``.

Arrays are kept small (at most a few thousand voxels) so that one input costs about a
millisecond: the aim is many odd inputs, not big ones.

Run: ``python fuzz/fuzz_kernels.py [libFuzzer flags, e.g. -runs=100000 -seed=1 corpus_dir]``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

# The checkout this file sits in, not whatever cmrsdk the environment has installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

try:
    import atheris
except ImportError:  # the test suite drives TestOneInput without atheris
    atheris = None

# cmrsdk's code only is instrumented (fast to start); without atheris, plain imports
with atheris.instrument_imports(include=["cmrsdk"]) if atheris is not None else contextlib.nullcontext():
    from cmrsdk import preprocess as pp
    from cmrsdk._normalize import percentiles
    from cmrsdk.errors import InputError

from scipy import ndimage as ndi

from _data import Data

SUPPORTED = [np.uint8, np.int16, np.uint16, np.float32, np.float64]
REFUSED = [np.int32, np.int8, np.float16, np.bool_, np.complex64, np.int64]
#: the largest output (voxels) a call may ask for: bigger ones are skipped, not run.
MAX_OUT = 1 << 16


def values(d: Data, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array of this shape and dtype (any byte order) whose bytes come from the input."""
    n = int(np.prod(shape))
    raw = d.rest(n * dtype.itemsize)
    array = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
    if dtype.kind == "f" and d.int(0, 3) == 0:
        # mostly tame values, so that the checks on finite input run often
        array = np.nan_to_num(array, nan=1.0, posinf=2.0, neginf=-3.0)
        array = np.clip(array, -1e4, 1e4).astype(dtype)
    return array


def layout(d: Data, array: np.ndarray) -> np.ndarray:
    """The same values in another memory layout: F order, a transposed copy viewed back, or
    a strided (possibly reversed) view into a larger buffer."""
    kind = d.int(0, 3)
    if kind == 0:
        return array
    if kind == 1:
        return np.asfortranarray(array)
    if kind == 2:
        axes = list(range(array.ndim))[::-1]
        return np.ascontiguousarray(array.transpose(axes)).transpose(axes)
    steps = [d.pick([1, 2, 3, -1, -2, -3]) for _ in range(array.ndim)]
    big = np.zeros([max(1, s * abs(st)) for s, st in zip(array.shape, steps)], dtype=array.dtype)
    index = tuple(slice(None, None, st) if st > 0 else slice(None, None, st) for st in steps)
    view = big[index]
    view = view[tuple(slice(0, s) for s in array.shape)]
    view[...] = array
    return view


def stack(d: Data, dims: int = 3, lo: int = 0, refused: bool = True) -> np.ndarray:
    """A stack (Z, Y, X) (or another number of axes) of a fuzzed dtype, byte order and layout."""
    dtypes = SUPPORTED + (REFUSED if refused and d.int(0, 15) == 0 else [])
    dtype = np.dtype(d.pick(dtypes))
    if dtype.itemsize > 1 and d.bool():
        dtype = dtype.newbyteorder(">" if sys.byteorder == "little" else "<")
    shape = tuple(d.int(lo if i else 0, 24 if i else 6) for i in range(dims))
    return layout(d, values(d, shape, dtype))


def native(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, native-byte-order copy: the plain input every layout must match."""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("="))


def is_finite(array: np.ndarray) -> bool:
    return array.dtype.kind != "f" or bool(np.isfinite(array).all())


def check_resample(d: Data) -> None:
    pixels = stack(d)
    spacing = (d.float(), d.float())
    order = d.pick([0, 1, 3, 3, 2, -1])
    threads = d.int(1, 4)
    if d.bool():
        kwargs = {"shape": (d.int(0, 40), d.int(0, 40))}
    else:
        kwargs = {"target_spacing": (d.float(), d.float())}
        try:
            out_shape = pp.resampled_shape(
                pixels.shape[1:] if pixels.shape[0] else (1, 1), spacing, kwargs["target_spacing"]
            )
        except InputError:
            out_shape = (1, 1)
        if pixels.shape[0] * out_shape[0] * out_shape[1] > MAX_OUT:
            return
    try:
        out = pp.resample_stack(pixels, spacing, order=order, threads=threads, **kwargs)
    except InputError:
        return
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape[0] == pixels.shape[0]
    plain = native(pixels)
    again = pp.resample_stack(plain, spacing, order=order, threads=1 if threads > 1 else 3, **kwargs)
    assert np.array_equal(out, again, equal_nan=True), "layout, byte order or thread count changed the result"
    if not pixels.size:
        return
    assert is_finite(plain), "non-finite pixels were accepted"
    as_float = plain.astype(np.float32)
    if np.isfinite(as_float).all():
        # float64 beyond float32's range may overflow; everything else must stay finite
        assert np.isfinite(out).all(), "finite pixels gave a non-finite result"
    if order == 0:
        assert np.isin(out, as_float).all(), "order 0 made up a value"
    if out.shape[1:] == pixels.shape[1:]:
        assert np.array_equal(out, as_float), "identity resampling changed the pixels"


def check_normalize(d: Data) -> None:
    dims = d.int(1, 3)
    pixels = stack(d, dims=dims)
    method = d.pick(["zscore", "robust_zscore", "minmax", "zscore", "median"])
    mask = None
    if d.int(0, 2) == 0:
        mask = np.frombuffer(d.rest(pixels.size), np.uint8).reshape(pixels.shape) % 3 == 0
        mask = layout(d, mask)
    threads = d.int(1, 4)
    try:
        out = pp.normalize(pixels, method, mask=mask, threads=threads)
    except InputError:
        return
    assert out.dtype == np.float32 and out.shape == pixels.shape
    plain_mask = None if mask is None else np.ascontiguousarray(mask)
    again = pp.normalize(native(pixels), method, mask=plain_mask, threads=1 if threads > 1 else 3)
    assert np.array_equal(out, again, equal_nan=True), "layout, byte order or thread count changed the result"
    if not pixels.size:
        return
    as_float = native(pixels).astype(np.float32)
    assert np.isfinite(as_float).all(), "non-finite pixels were accepted"
    assert np.isfinite(out).all(), f"finite pixels gave a non-finite result ({method})"
    if method == "minmax" and mask is None:
        assert -1e-6 <= out.min() and out.max() <= 1 + 1e-6, (out.min(), out.max())


def check_percentiles(d: Data) -> None:
    n = d.int(1, 3000)
    x = values(d, (n,), np.dtype(np.float32))
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    lower = d.int(0, 1000) / 10
    upper = d.int(int(lower * 10), 1000) / 10
    mask = None
    if d.bool():
        mask = (np.frombuffer(d.rest(n), np.uint8) & 1).astype(np.uint8)
        if not mask.any():
            return
    got = percentiles(x, mask, lower, upper, threads=d.int(1, 3))
    chosen = x if mask is None else x[mask.astype(bool)]
    want = np.percentile(chosen.astype(np.float64), [lower, upper])
    scale = max(1.0, float(np.abs(chosen.astype(np.float64)).max()))
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6 * scale), (got, want)


def check_argmax(d: Data) -> None:
    z, c = d.int(0, 3), d.int(0, 6)
    h, w = d.int(0, 12), d.int(0, 12)
    transform = pp.SliceTransform(
        native_shape=(d.int(-2, 30), d.int(-2, 30)),
        native_spacing=(1.0, 1.0),
        resampled_shape=(d.int(-2, 30), d.int(-2, 30)),
        target_spacing=(1.0, 1.0),
        offset=(d.int(-40, 40), d.int(-40, 40)),
        size=(h, w) if d.int(0, 7) else (d.int(0, 12), d.int(0, 12)),
    )
    prob = values(d, (z, c, h, w), np.dtype(np.float32) if d.int(0, 7) else np.dtype(d.pick(SUPPORTED)))
    prob = layout(d, prob)
    threads = d.int(1, 4)
    try:
        out = pp.resample_argmax(prob, transform, threads=threads)
    except InputError:
        return
    assert out.dtype == np.uint8 and out.shape == (z, *transform.native_shape)
    assert np.isfinite(prob).all(), "non-finite probabilities were accepted"
    again = pp.resample_argmax(np.ascontiguousarray(prob), transform, threads=1 if threads > 1 else 3)
    assert np.array_equal(out, again), "layout or thread count changed the result"
    assert (out < max(c, 1)).all(), "a label beyond the classes"


def check_components(d: Data) -> None:
    shape = (d.int(0, 5), d.int(0, 12), d.int(0, 12))
    labels = (
        np.frombuffer(d.rest(int(np.prod(shape))), np.uint8).reshape(shape).astype(np.uint16) % d.pick([2, 3, 4, 256])
    ).astype(np.uint8)
    labels = layout(d, labels)
    if d.int(0, 15) == 0:
        labels = labels.astype(d.pick([np.int16, np.float32, np.bool_]))
    connectivity = d.pick([6, 18, 26, 8, 0])
    threads = d.int(1, 4)
    try:
        out = pp.largest_component(labels, connectivity=connectivity, threads=threads)
    except InputError:
        return
    assert out.dtype == np.uint8 and out.shape == labels.shape
    rank = {6: 1, 18: 2, 26: 3}[connectivity]
    want = np.zeros(shape, np.uint8)
    for value in np.unique(labels):
        if value == 0:
            continue
        components, _ = ndi.label(labels == value, ndi.generate_binary_structure(3, rank))
        sizes = np.bincount(components.ravel())[1:]
        want[components == 1 + sizes.argmax()] = value
    assert np.array_equal(out, want), "differs from scipy.ndimage.label"


def check_labels(d: Data) -> None:
    labels = stack(d, lo=1)
    if labels.dtype.kind in "ui" and d.bool():
        labels = (labels % 5).astype(labels.dtype)
    try:
        out = pp.resample_labels(
            labels,
            (d.float(), d.float()),
            shape=(d.int(0, 30), d.int(0, 30)),
            method=d.pick(["nearest", "linear", "cubic"]),
            threads=d.int(1, 3),
        )
    except InputError:
        return
    assert out.dtype == np.uint8
    assert np.isin(out, native(labels)).all() or not labels.size, "a label that is not in the input"


def check_prepare(d: Data) -> None:
    pixels = stack(d, lo=1)
    spacing = (d.float(), d.float())
    target = (d.float(), d.float())
    try:
        out_shape = pp.resampled_shape(pixels.shape[1:], spacing, target)
    except InputError:
        out_shape = (1, 1)
    if pixels.shape[0] * out_shape[0] * out_shape[1] > MAX_OUT:
        return
    size = (d.int(0, 40), d.int(0, 40))
    centre = (d.float() - 10, d.float() - 10) if d.bool() else None
    try:
        batch, t = pp.prepare_slices(
            pixels,
            spacing,
            target_spacing=target,
            size=size,
            centre=centre,
            order=d.pick([0, 1, 3]),
            normalization=d.pick(["zscore", "robust_zscore", "minmax"]),
            threads=d.int(1, 3),
        )
    except InputError:
        return
    assert batch.shape == (pixels.shape[0], 1, *size) and batch.dtype == np.float32
    if pixels.shape[0]:
        assert np.isfinite(batch).all()
        probs = np.zeros((pixels.shape[0], 2, *size), np.float32)
        back = pp.resample_argmax(probs, t)
        assert back.shape == pixels.shape


CHECKS = [
    check_resample,
    check_normalize,
    check_percentiles,
    check_argmax,
    check_components,
    check_labels,
    check_prepare,
]


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    d = Data(data)
    check = CHECKS[d.int(0, len(CHECKS) - 1)]
    with np.errstate(all="ignore"):
        check(d)


def main() -> None:
    if atheris is None:
        raise SystemExit("atheris is not installed: pip install 'cmrsdk[fuzz]'")
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
