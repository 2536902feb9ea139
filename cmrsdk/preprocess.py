"""Preprocessing: typed, validating wrappers over cmrsdk's native core.

Every function checks its arguments (ndim, dtype, spacing, shapes, finiteness) and raises
:class:`cmrsdk.errors.InputError` naming the argument, the value and what was expected; only
then does it call the compiled kernels (``cmrsdk._native`` in C++, ``cmrsdk._normalize`` in
Cython), which run with the GIL released on ``threads`` threads.

Threads
-------
Results do not depend on the thread count (bit for bit). ``threads=None`` (the default) draws
from one process-wide budget of native threads, as many as the CPUs the process may use (its
affinity mask, capped by its cgroup's CPU quota: `cmrsdk.cpus.usable_cpus`): the call
waits until at least one of those CPUs is free of native work, then runs on every free one. So
several stacks processed at once (threads of a server, a pipeline called from a pool) share the
CPUs instead of each starting one thread per CPU. An explicit ``threads=n`` runs on exactly n
threads without waiting, and counts against the budget that default calls see. The budget knows
only cmrsdk's kernels: the inference engines' own threads (ONNX Runtime, PyTorch) are set
through their options.

Geometry
--------
Stacks are (Z, Y, X); only the in-plane axes (Y, X) are resampled, slice by slice. Grids are
pixel-centre aligned: native pixel ``i`` sits at physical ``(i + 0.5) * spacing`` and the
resampled grid covers the same physical extent, so resampled pixel ``o`` samples the native
coordinate ``(o + 0.5) * n_native / n_resampled - 0.5``.

Interpolation and edges
-----------------------
=========  ==================================  ===============================================
order      method                              reference (matched within float32 rounding)
=========  ==================================  ===============================================
0          nearest, ties towards higher index  ``scipy.ndimage.zoom(order=0, mode="mirror",
1          linear                              grid_mode=True)``, equal to
3          cubic B-spline (exact prefilter)    ``skimage.transform.resize(order, mode="reflect",
                                               anti_aliasing=False)``
=========  ==================================  ===============================================

The edge mode is "mirror" (``d c b | a b c d | c b a``), for sampling and for the spline
prefilter alike. The inverse (:func:`resample_argmax`) is bilinear with edge clamping, as
``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import numpy as np

from .cpus import usable_cpus
from .errors import CmrWarning, InputError
from ._warn import warn

try:
    from . import _native, _normalize
except ImportError as exc:  # a source checkout not built, or a package copied without its .so files
    raise ImportError(
        f"cmrsdk's native core (cmrsdk._native, cmrsdk._normalize) is not built for this Python ({exc}): "
        "in a source checkout run `pip install -e .` (or `bash scripts/env.sh`); from a clone's root with "
        "cmrsdk installed elsewhere, run from another folder, since the clone's cmrsdk/ shadows the installed one"
    ) from exc

__all__ = [
    "SUPPORTED_DTYPES",
    "SliceTransform",
    "resampled_shape",
    "resample_stack",
    "resample_labels",
    "normalize",
    "statistics_mask",
    "crop_or_pad",
    "resample_argmax",
    "window_field",
    "largest_component",
    "reattach_displaced_slices",
    "prepare_slices",
    "context_slices",
]

#: pixel dtypes the resampling kernels read directly (any memory order, native byte order).
SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(t) for t in (np.uint8, np.int16, np.uint16, np.float32, np.float64)
)
#: the largest in-plane size accepted for a resampled or cropped image, per axis (pixels):
#: far above any scanner matrix, low enough to stop a mistyped spacing from exhausting memory.
MAX_SIDE = 16384

Normalization = Literal["zscore", "robust_zscore", "minmax"]
#: where at least this fraction of a stack's native pixels is exactly zero (a field stored
#: zero-filled: some vendors, converters, padding), the normalisation's statistics skip those
#: pixels; no ACDC stack, on which the U-Nets were trained, is above 12.5 % (nnU-Net's non-zero
#: region rule; export/README.md, stage 44).
ZERO_BACKGROUND_FRACTION = 0.25
#: a stack whose 99.5th intensity percentile is over this many times its 95th holds a bright
#: artefact (`_bright_artefact`); on the 212 shared ACDC, M&Ms and Sunnybrook stacks the ratio
#: is at most 2.91, so none of them is touched
BRIGHT_ARTEFACT_RATIO = 4.0


@dataclass(frozen=True)
class SliceTransform:
    """How network-window pixels map back to a stack's native in-plane grid.

    Attributes
    ----------
    native_shape : (Y, X) of the native stack, pixels.
    native_spacing : (dy, dx) of the native stack, mm.
    resampled_shape : (Y', X') after resampling, pixels; it covers the native extent.
    target_spacing : (dy, dx) asked for, mm (the effective spacing is
        ``native_shape * native_spacing / resampled_shape``, equal up to rounding of the shape).
    offset : (oy, ox), index in the resampled grid of the window's pixel (0, 0); negative where
        the window was padded.
    size : (H, W) of the network window, pixels.
    """

    native_shape: tuple[int, int]
    native_spacing: tuple[float, float]
    resampled_shape: tuple[int, int]
    target_spacing: tuple[float, float]
    offset: tuple[int, int]
    size: tuple[int, int]


class _NativeThreads:
    """The process-wide budget of threads running cmrsdk's native kernels (see "Threads")."""

    def __init__(self) -> None:
        self._free = threading.Condition()
        self.in_use = 0  #: threads of the native calls running now
        self.peak = 0  #: the most ever in use at once (tests read it)

    @contextlib.contextmanager
    def take(self, threads: int | None) -> Iterator[int]:
        """Threads for one native call: ``threads`` as given, or for None every free CPU (at
        least one, waiting until one is free). Held until the block ends."""
        with self._free:
            if threads is None:
                cpus = usable_cpus()
                self._free.wait_for(lambda: self.in_use < cpus)
                threads = cpus - self.in_use
            self.in_use += threads
            self.peak = max(self.peak, self.in_use)
        try:
            yield threads
        finally:
            with self._free:
                self.in_use -= threads
                self._free.notify_all()


_NATIVE_THREADS = _NativeThreads()


def _threads(threads: int | None) -> contextlib.AbstractContextManager[int]:
    """The thread count of one native call, checked and drawn from the budget: ``with``."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise InputError(f"'threads' must be a positive integer or None, got {threads!r}")
    return _NATIVE_THREADS.take(None if threads is None else int(threads))


def _pair(value: object, name: str, what: str) -> tuple[float, float]:
    try:
        values = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise InputError(f"'{name}' must be {what}, got {value!r}") from exc
    if len(values) != 2:
        raise InputError(f"'{name}' must be {what}, got {value!r}")
    return values[0], values[1]


def _spacing(value: object, name: str) -> tuple[float, float]:
    dy, dx = _pair(value, name, "(dy, dx) in mm")
    if not all(math.isfinite(v) and v > 0 for v in (dy, dx)):
        raise InputError(f"'{name}' must be two finite positive mm values (dy, dx), got {value!r}")
    return dy, dx


def _size(value: object, name: str) -> tuple[int, int]:
    pair = _pair(value, name, "(H, W) in pixels")
    if not all(float(v).is_integer() and 1 <= v <= MAX_SIDE for v in pair):
        raise InputError(f"'{name}' must be two integers in 1..{MAX_SIDE} (H, W), got {value!r}")
    return int(pair[0]), int(pair[1])


def _stack(pixels: object, name: str = "pixels") -> np.ndarray:
    """The array as (Z, Y, X) in a supported dtype and native byte order (no copy if it is)."""
    array = np.asarray(pixels)
    if array.ndim != 3:
        raise InputError(f"'{name}' must be 3-D (Z, Y, X), got shape {array.shape}")
    if array.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        supported = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise InputError(f"'{name}' dtype {array.dtype} is not supported; expected one of {supported}")
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if array.shape[0] and (array.shape[1] == 0 or array.shape[2] == 0):
        raise InputError(f"'{name}' has empty slices: shape {array.shape}, expected Y and X >= 1")
    if any(s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    return array


def resampled_shape(
    shape_yx: Sequence[int], spacing_yx: Sequence[float], target_spacing_yx: Sequence[float]
) -> tuple[int, int]:
    """The in-plane shape (Y', X') that keeps the physical extent at the target spacing.

    ``round(n * spacing / target)`` per axis (at least 1), as nnU-Net computes it.

    Parameters
    ----------
    shape_yx : (Y, X) in pixels.
    spacing_yx : (dy, dx) in mm.
    target_spacing_yx : (dy, dx) in mm.
    """
    shape = _pair(shape_yx, "shape_yx", "(Y, X) in pixels")
    if not all(v.is_integer() and v >= 1 for v in shape):
        raise InputError(f"'shape_yx' must be two positive integers (Y, X), got {shape_yx!r}")
    spacing = _spacing(spacing_yx, "spacing_yx")
    target = _spacing(target_spacing_yx, "target_spacing")
    # In floats first: a huge ratio (1e300 mm over 1e-300 mm) is inf, which int() refuses.
    sides = tuple(round(n * s / t) if math.isfinite(n * s / t) else math.inf for n, s, t in zip(shape, spacing, target))
    if max(sides) > MAX_SIDE:
        raise InputError(
            f"'target_spacing' {target_spacing_yx!r} from spacing {spacing_yx!r} gives a resampled "
            f"shape {sides}, more than {MAX_SIDE} pixels per side"
        )
    return max(1, int(sides[0])), max(1, int(sides[1]))


def _target_shape(
    shape_yx: tuple[int, int], spacing_yx: object, target_spacing: object, shape: object
) -> tuple[int, int]:
    if (target_spacing is None) == (shape is None):
        raise InputError(
            f"give exactly one of 'target_spacing' and 'shape', got target_spacing={target_spacing!r}, shape={shape!r}"
        )
    if shape is not None:
        _spacing(spacing_yx, "spacing_yx")
        return _size(shape, "shape")
    return resampled_shape(shape_yx, spacing_yx, target_spacing)  # type: ignore[arg-type]


def resample_stack(
    pixels: np.ndarray,
    spacing_yx: Sequence[float],
    *,
    target_spacing: Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    order: int = 3,
    threads: int | None = None,
) -> np.ndarray:
    """Resample every slice of a stack in-plane to a target spacing or shape.

    Parameters
    ----------
    pixels : (Z, Y, X) uint8, int16, uint16, float32 or float64, any memory order and byte
        order; finite in float32 (float64 values beyond 3.4e38 are refused as infinite, as are
        values so near that limit that interpolation overflows).
    spacing_yx : (dy, dx) of ``pixels`` in mm.
    target_spacing : (dy, dx) in mm to resample to; or
    shape : (Y', X') in pixels to resample to (exactly one of the two).
    order : 0 (nearest), 1 (linear) or 3 (cubic B-spline); see the module notes for the edge
        mode and the reference implementation.
    threads : threads to use; default None: a share of the process-wide budget (see "Threads").

    Returns
    -------
    float32 (Z, Y', X'), C-contiguous, same intensity units as ``pixels``.
    """
    array = _stack(pixels)
    if order not in (0, 1, 3) or isinstance(order, bool):
        raise InputError(f"'order' must be 0, 1 or 3, got {order!r}")
    out_y, out_x = _target_shape(array.shape[1:], spacing_yx, target_spacing, shape)
    if array.shape[0] == 0:
        return np.empty((0, out_y, out_x), dtype=np.float32)
    with _threads(threads) as n:
        out, status = _native.resample(array, out_y, out_x, int(order), n)
    if status == 1:
        raise InputError(f"'pixels' contain NaN or infinite values (dtype {array.dtype}, shape {array.shape})")
    if status == 2:
        raise InputError(
            f"'pixels' (dtype {array.dtype}, shape {array.shape}) lie so near float32's limit (3.4e38) "
            f"that resampling with order {order} overflows; rescale them"
        )
    return out


def resample_labels(
    labels: np.ndarray,
    spacing_yx: Sequence[float],
    *,
    target_spacing: Sequence[float] | None = None,
    shape: Sequence[int] | None = None,
    method: Literal["nearest", "linear"] = "nearest",
    threads: int | None = None,
) -> np.ndarray:
    """Resample a label map in-plane.

    ``"nearest"`` takes each output pixel's nearest input label (order 0). ``"linear"`` is
    nnU-Net's per-label resampling: every label's mask (background included) is resampled with
    order 1 and each pixel takes the label whose mask value is largest (ties: the lower label).

    Parameters
    ----------
    labels : (Z, Y, X) integer label map (uint8, int16 or uint16), values 0..255.
    spacing_yx, target_spacing, shape, threads : as :func:`resample_stack`.
    method : "nearest" or "linear".

    Returns
    -------
    uint8 (Z, Y', X').
    """
    array = _stack(labels, "labels")
    if array.dtype.kind not in "ui":
        raise InputError(f"'labels' must have an integer dtype (uint8, int16, uint16), got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise InputError(f"'labels' values must lie in 0..255, got {array.min()}..{array.max()}")
    if method not in ("nearest", "linear"):
        raise InputError(f"'method' must be 'nearest' or 'linear', got {method!r}")
    kwargs = dict(target_spacing=target_spacing, shape=shape, threads=threads)
    if method == "nearest" or array.size == 0:
        return resample_stack(array, spacing_yx, order=0, **kwargs).astype(np.uint8)  # type: ignore[arg-type]
    values = np.unique(array)
    best: np.ndarray | None = None
    result: np.ndarray | None = None
    for value in values:
        score = resample_stack((array == value).view(np.uint8), spacing_yx, order=1, **kwargs)  # type: ignore[arg-type]
        if best is None or result is None:
            best, result = score, np.full(score.shape, value, dtype=np.uint8)
            continue
        wins = score > best
        np.copyto(best, score, where=wins)
        result[wins] = value
    return result  # type: ignore[return-value]


def normalize(
    pixels: np.ndarray,
    method: Normalization = "robust_zscore",
    *,
    mask: np.ndarray | None = None,
    threads: int | None = None,
) -> np.ndarray:
    """Normalise intensities over a whole stack.

    ==================  ===================================================================
    method              transform (statistics over the voxels where ``mask`` is true)
    ==================  ===================================================================
    ``zscore``          ``(x - mean) / max(std, 1e-8)`` (nnU-Net's default for MRI)
    ``robust_zscore``   clip to the 0.5 and 99.5 percentiles (numpy's linear rule, found by
                        selection), then z-score with the clipped values' mean and std
    ``minmax``          ``(x - min) / (max - min)``, all zeros for a constant stack
    ==================  ===================================================================

    The std is the population one (``np.std``). The transform is applied to every voxel.

    The kernel takes float32 values: it sums the statistics in float64, applies the transform in
    float64 and rounds once. Integer pixels reach it exactly. float64 pixels are first shifted, in
    float64, by an integer near the middle of their range (no method's result depends on a shift),
    then rounded to float32: a large offset (1e8 + [0, 1, 2]) keeps its spread, and the values'
    differences keep float32's precision (about 7 significant digits of the range), not float64's.

    Parameters
    ----------
    pixels : any shape, uint8, int16, uint16, float32 or float64; finite, and within float32's range
        (3.4e38) as a `cmrsdk.Stack`'s pixels must be.
    method : see the table.
    mask : bool, same shape as ``pixels``, or None (all voxels); must select at least one voxel.
    threads : threads to use; default None: a share of the process-wide budget (see "Threads").

    Returns
    -------
    float32, the shape of ``pixels``.

    Raises
    ------
    InputError
        An unsupported dtype or method, a mask of another shape or dtype, pixels that are NaN,
        infinite or beyond float32's range, or a result that would overflow float32.
    """
    array = np.asarray(pixels)
    if array.dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        supported = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise InputError(f"'pixels' dtype {array.dtype} is not supported; expected one of {supported}")
    kernels: dict[str, Callable[..., np.ndarray]] = {
        "zscore": _normalize.zscore,
        "robust_zscore": _normalize.robust_zscore,
        "minmax": _normalize.minmax,
    }
    if method not in kernels:
        raise InputError(f"'method' must be one of {', '.join(kernels)}, got {method!r}")
    values = _float64_shifted(array, method) if array.dtype.kind == "f" and array.dtype.itemsize == 8 else array
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and infinity: the kernel names them below
        flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    flat_mask = None
    if mask is not None:
        mask_array = np.asarray(mask)
        if mask_array.shape != array.shape or mask_array.dtype != np.bool_:
            raise InputError(
                f"'mask' must be a bool array of shape {array.shape}, got {mask_array.dtype} {mask_array.shape}"
            )
        flat_mask = np.ascontiguousarray(mask_array).reshape(-1).view(np.uint8)
    try:
        with _threads(threads) as n:
            out: np.ndarray = kernels[method](flat, flat_mask, threads=n)
    except ValueError as exc:
        raise InputError(f"cannot normalise 'pixels' of shape {array.shape} ({method}): {exc}") from exc
    return out.reshape(array.shape)


def _float64_shifted(array: np.ndarray, method: str) -> np.ndarray:
    """float64 ``array`` less an integer near the middle of its range, in float64 (`normalize`: a shift
    changes no method's result, and keeps the spread of values far from 0 when they are rounded to
    float32); unchanged where it is empty or not finite (the kernel refuses NaN and infinity).

    Raises `InputError` for finite values beyond float32's range, in `cmrsdk.Stack`'s words."""
    values = array.astype(np.float64, copy=False)
    if values.size == 0 or not np.isfinite(values).all():
        return values
    low, high = float(values.min()), float(values.max())
    if max(-low, high) > float(np.finfo(np.float32).max):
        extreme = low if -low > high else high
        raise InputError(
            f"cannot normalise 'pixels' of shape {array.shape} ({method}): 'pixels' hold values beyond float32's "
            f"range (3.4e38), e.g. {extreme:g}"
        )
    centre = float(np.round(low / 2 + high / 2))
    return values - centre if centre else values


def statistics_mask(
    pixels: np.ndarray,
    spacing_yx: Sequence[float],
    shape: Sequence[int],
    *,
    threads: int | None = None,
) -> np.ndarray | None:
    """The resampled pixels a stack's normalisation takes its statistics from, or None for all.

    Where at least :data:`ZERO_BACKGROUND_FRACTION` of the native pixels are exactly zero and
    the others are not all one value, the pixels of the resampled grid whose nearest native pixel
    is not zero. So a zero-filled field or a zero border does not shift the statistics, and a
    two-valued image (a mask drawn as an image) keeps a spread to divide by. Pixels of a bright
    artefact (`_bright_artefact`: the 99.5th percentile over `BRIGHT_ARTEFACT_RATIO` times the
    95th) are left out too. None where neither leaves anything out.

    Parameters
    ----------
    pixels : (Z, Y, X) native stack, any supported dtype; finite.
    spacing_yx : (dy, dx) of ``pixels`` in mm.
    shape : (Y', X') of the resampled grid (:func:`resampled_shape`).
    threads : as :func:`resample_stack`.

    Returns
    -------
    bool (Z, Y', X'), or None.
    """
    array = _stack(pixels)
    if not array.size:
        return None
    keep = _nonzero_background(array)
    bright = _bright_artefact(array, keep)
    if bright is not None:
        keep = ~bright if keep is None else keep & ~bright
    if keep is None:
        return None
    mask = resample_stack(keep.view(np.uint8), spacing_yx, shape=shape, order=0, threads=threads) > 0
    return mask if mask.any() else None


def _nonzero_background(array: np.ndarray) -> np.ndarray | None:
    """The non-zero pixels of a stack stored zero-filled (`ZERO_BACKGROUND_FRACTION`), else None."""
    nonzero = array != 0
    zeros = array.size - np.count_nonzero(nonzero)
    if zeros < ZERO_BACKGROUND_FRACTION * array.size or zeros == array.size:
        return None
    if any(np.count_nonzero(array == v) + zeros == array.size for v in (array.min(), array.max()) if v != 0):
        return None  # every non-zero pixel is one value
    return np.asarray(nonzero, dtype=bool)


def _bright_artefact(array: np.ndarray, keep: np.ndarray | None) -> np.ndarray | None:
    """The pixels of a bright artefact that would take over the normalisation, or None.

    Where the 99.5th percentile of the statistics' pixels is over `BRIGHT_ARTEFACT_RATIO` times
    their 95th, the pixels above that many times the 95th (burned-in text at full scale, a
    marker, a hot coil spot): with half a per cent of the field at 40 times the blood pool, the
    clipped z-score squeezed the heart into a few grey levels and every study came back empty
    (sweep 15). Left out of the statistics (warned); ``robust_zscore`` (every shipped bundle's)
    then clips them to the tissue's 99.5th percentile, while ``zscore`` and ``minmax`` leave them
    far above 1. Where a small body lies on a dim but non-zero background covering over 95 % of
    the field, the body itself could pass for such pixels: none of the shared stacks comes near."""
    values = array[keep] if keep is not None else array.reshape(-1)
    if values.size < 100:
        return None
    # a sample of about 65,000 pixels decides whether to look closer: about a millisecond
    sample = values[:: max(1, values.size // 65_536)].astype(np.float64)
    p95, p995 = np.percentile(sample, (95.0, 99.5))
    if not (p95 > 0 and p995 > BRIGHT_ARTEFACT_RATIO * p95):
        return None
    bound = BRIGHT_ARTEFACT_RATIO * float(np.percentile(values, 95.0))
    bright = array > bound
    warn(
        CmrWarning(
            f"{100 * np.count_nonzero(bright) / array.size:.2g} % of the stack's pixels are over "
            f"{BRIGHT_ARTEFACT_RATIO:g} times its 95th intensity percentile (a bright artefact, burned-in text, a "
            "marker?): left out of the intensity statistics"
        ),
        stacklevel=4,
    )
    return bright


def window_offset(centre: Sequence[float], size: Sequence[int]) -> tuple[int, int]:
    """Index (oy, ox) of a window's pixel (0, 0) that puts the window's centre on ``centre``.

    The one crop-centring rule of cmrsdk, per axis ``offset = floor(centre - (size - 1) / 2)``:
    `crop_or_pad` uses it, and so does the heart crop (`cmrsdk.heart.crop_to_heart`), which then
    keeps the window inside the image. For an even size the window's centre lies between two
    pixels, and a centre on a pixel goes to the lower-right one of the middle four.

    Parameters
    ----------
    centre : (cy, cx) in pixel indices (fractions allowed).
    size : (H, W) of the window in pixels.

    Returns
    -------
    (oy, ox) in pixel indices; negative where the window starts before the image.
    """
    (cy, cx), (h, w) = centre, size
    return math.floor(cy - (h - 1) / 2), math.floor(cx - (w - 1) / 2)


def crop_or_pad(
    stack: np.ndarray, size: Sequence[int], centre: Sequence[float] | None = None, *, fill: float = 0.0
) -> tuple[np.ndarray, tuple[int, int]]:
    """Crop or pad every slice to (H, W) around a centre.

    The window's pixel (0, 0) is pixel ``offset = floor(centre - (size - 1) / 2)`` of the stack
    (per axis, `window_offset`), so that the window's centre falls on ``centre``; parts of the window outside the
    stack are filled with ``fill``. A plain row copy: numpy's slicing already runs at memory
    speed, so there is no native kernel for this.

    Parameters
    ----------
    stack : (Z, Y, X) float32 or uint8 (other dtypes are converted to float32).
    size : (H, W) in pixels.
    centre : (cy, cx) in pixel indices of ``stack`` (fractions allowed); default the image centre
        ``((Y - 1) / 2, (X - 1) / 2)``.
    fill : value of padded pixels.

    Returns
    -------
    window : (Z, H, W), float32 or uint8 as ``stack``.
    offset : (oy, ox), index in ``stack`` of the window's pixel (0, 0); negative where padded.
    """
    array = np.asarray(stack)
    if array.ndim != 3:
        raise InputError(f"'stack' must be 3-D (Z, Y, X), got shape {array.shape}")
    if array.dtype not in (np.float32, np.uint8):
        array = array.astype(np.float32)
    h, w = _size(size, "size")
    ny, nx = array.shape[1:]
    if centre is None:
        cy, cx = (ny - 1) / 2, (nx - 1) / 2
    else:
        cy, cx = _pair(centre, "centre", "(cy, cx) in pixel indices")
        if not (math.isfinite(cy) and math.isfinite(cx)):
            raise InputError(f"'centre' must be finite (cy, cx) pixel indices, got {centre!r}")
    oy, ox = window_offset((cy, cx), (h, w))
    window = np.full((array.shape[0], h, w), fill, dtype=array.dtype)
    ys, ye = max(oy, 0), min(oy + h, ny)
    xs, xe = max(ox, 0), min(ox + w, nx)
    if ys < ye and xs < xe:
        window[:, ys - oy : ye - oy, xs - ox : xe - ox] = array[:, ys:ye, xs:xe]
    return window, (oy, ox)


def window_field(transform: SliceTransform) -> tuple[int, int, int, int] | None:
    """The native pixels a network window covers: (y0, y1, x0, x1), first and last row and column
    (inclusive), or None where the window misses the image.

    The rule is `resample_argmax`'s: native pixel ``i`` lies at window coordinate
    ``r = (i + 0.5) * resampled / native - 0.5 - offset`` and is inside when ``-0.5 <= r < size - 0.5``;
    so this is the rectangle `resample_argmax` can label, within the image.
    """
    if not isinstance(transform, SliceTransform):
        raise InputError(f"'transform' must be a SliceTransform, got {type(transform).__name__}")
    bounds: list[int] = []
    for n_native, n_resampled, offset, size in zip(
        transform.native_shape, transform.resampled_shape, transform.offset, transform.size
    ):
        r = (np.arange(int(n_native)) + 0.5) * (int(n_resampled) / int(n_native)) - 0.5 - int(offset)
        inside = np.flatnonzero((r >= -0.5) & (r < int(size) - 0.5))
        if not len(inside):
            return None
        bounds += [int(inside[0]), int(inside[-1])]
    return bounds[0], bounds[1], bounds[2], bounds[3]


def resample_argmax(probabilities: np.ndarray, transform: SliceTransform, *, threads: int | None = None) -> np.ndarray:
    """Labels on the native grid from network-window probabilities, in one fused pass.

    For every native pixel, its position in the resampled grid (pixel-centre aligned) less the
    window offset gives a window coordinate; each class probability is interpolated there
    bilinearly (clamped at the window's edges) and the largest wins (ties: the lower class).
    Native pixels that fall outside the window get label 0. Full-resolution probabilities are
    never held in memory: one native row of one class at a time.

    Parameters
    ----------
    probabilities : float32 (Z, C, H, W), (H, W) = ``transform.size``, 1 <= C <= 256; finite.
    transform : the :class:`SliceTransform` of :func:`prepare_slices`.
    threads : threads to use; default None: a share of the process-wide budget (see "Threads").

    Returns
    -------
    uint8 (Z, Y, X), (Y, X) = ``transform.native_shape``.
    """
    if not isinstance(transform, SliceTransform):
        raise InputError(f"'transform' must be a SliceTransform, got {type(transform).__name__}")
    for name in ("native_shape", "resampled_shape", "size"):
        _size(getattr(transform, name), f"transform.{name}")
    oy, ox = _pair(transform.offset, "transform.offset", "(oy, ox) in pixels")
    if not (oy.is_integer() and ox.is_integer()):
        raise InputError(f"'transform.offset' must be two integers (oy, ox), got {transform.offset!r}")
    array = np.asarray(probabilities)
    if array.ndim != 4 or tuple(array.shape[2:]) != tuple(transform.size) or not 1 <= array.shape[1] <= 256:
        raise InputError(
            f"'probabilities' must be (Z, C, H, W) with (H, W) = {transform.size} and 1..256 classes, "
            f"got shape {array.shape}"
        )
    if array.dtype != np.float32:
        raise InputError(f"'probabilities' must be float32, got {array.dtype}")
    array = np.ascontiguousarray(array)
    ny, nx = (int(v) for v in transform.native_shape)
    ry, rx = (int(v) for v in transform.resampled_shape)
    h, w = array.shape[2:]
    # A window that misses the resampled grid labels every pixel 0 wherever it lies: offsets
    # beyond [-(size + resampled), resampled] are moved to that bound (same labels, no overflow).
    oy = min(max(int(oy), -(h + ry)), ry)
    ox = min(max(int(ox), -(w + rx)), rx)
    with _threads(threads) as n:
        labels, finite = _native.resample_argmax(array, ny, nx, ry, rx, oy, ox, n)
    if not finite:
        raise InputError(f"'probabilities' of shape {array.shape} contain NaN or infinite values")
    return labels


def largest_component(labels: np.ndarray, *, connectivity: int = 6, threads: int | None = None) -> np.ndarray:
    """Keep only the largest 3-D connected component of every non-zero label.

    Components are taken across slices, in (Z, Y, X) voxel adjacency: ``connectivity`` 6 (faces,
    the default), 18 (faces and edges) or 26 (faces, edges and corners), as
    ``scipy.ndimage.generate_binary_structure(3, 1 | 2 | 3)``. Of equal-size components, the one
    whose first voxel comes first in raster order is kept. Other voxels become 0. Labels run in
    parallel, one thread each.

    Parameters
    ----------
    labels : uint8 (Z, Y, X), any memory order.
    connectivity : 6, 18 or 26.
    threads : threads to use; default None: a share of the process-wide budget (see "Threads").

    Returns
    -------
    uint8 (Z, Y, X).
    """
    array = np.asarray(labels)
    if array.ndim != 3:
        raise InputError(f"'labels' must be 3-D (Z, Y, X), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise InputError(f"'labels' must be uint8, got {array.dtype}")
    if connectivity not in (6, 18, 26) or isinstance(connectivity, bool):
        raise InputError(f"'connectivity' must be 6, 18 or 26, got {connectivity!r}")
    array = np.ascontiguousarray(array)
    with _threads(threads) as n:
        return _native.largest_component(array, int(connectivity), n)


#: how far (mm, in-plane) a slice's structure may sit from the same structure on the slice next
#: to it and still be taken for it: breath-holds misregister neighbouring slices by a few mm up
#: to about 10 (more at the apex, where the LV tapers too).
MAX_SLICE_SHIFT_MM = 15.0
#: how near (mm, in-plane, nearest pixels) a slice's piece may lie to the same structure on the
#: slice next to it and still be taken for it, whatever their centroids (a tapering RV's apical
#: piece sits at one horn of the crescent above it); None: the centroids alone decide. Off: at
#: 5 mm it gave back apical RVs the annotators left empty on three development folds' unseen
#: patients and true ones only on the patient that suggested it (stage 40, docs/RESULTS.md,
#: Session 34); `scripts/dev_fold.py --slice-gap-mm` probes it.
MAX_SLICE_GAP_MM: float | None = None


def reattach_displaced_slices(
    labels: np.ndarray,
    cleaned: np.ndarray,
    spacing_yx: Sequence[float],
    *,
    max_shift_mm: float = MAX_SLICE_SHIFT_MM,
    max_gap_mm: float | None = MAX_SLICE_GAP_MM,
    threads: int | None = None,
) -> np.ndarray:
    """Give back the slices :func:`largest_component` took from a structure because a breath-hold
    moved them off it.

    Slices are acquired in separate breath-holds, and a slice displaced by a few millimetres no
    longer touches its neighbours in 3-D: the largest 3-D component then drops it whole (the
    apex, where the LV is small, most often; held-out ACDC patient050 lost two apical slices of
    594 and 81 LV pixels so). Going outward from the slices the component kept, a slice where it
    kept nothing of a structure gets back that structure's largest in-plane component when its
    centroid lies within ``max_shift_mm`` of the structure's centroid on the neighbouring slice,
    or any of its pixels within ``max_gap_mm`` of the structure there (the RV's apex, a small
    piece at one end of the crescent above it). In-plane fragments stay removed; a blob far from
    the heart stays out.

    Parameters
    ----------
    labels : uint8 (Z, Y, X), the labels before the clean-up.
    cleaned : uint8 (Z, Y, X), ``largest_component(labels)``.
    spacing_yx : (dy, dx) mm of the slices.
    max_shift_mm : largest in-plane centroid distance to the neighbouring slice's structure.
    max_gap_mm : largest in-plane distance between the nearest pixels of the piece and of the
        neighbouring slice's structure; None: the centroids alone decide.
    threads : as for :func:`largest_component`.

    Returns
    -------
    uint8 (Z, Y, X): ``cleaned`` with the re-attached slices' components.
    """
    labels, cleaned = np.asarray(labels), np.asarray(cleaned)
    if labels.shape != cleaned.shape or labels.ndim != 3:
        raise InputError(f"'labels' {labels.shape} and 'cleaned' {cleaned.shape} must be the same (Z, Y, X) shape")
    lost = (labels != 0) & (cleaned == 0)
    if not lost.any():
        return cleaned
    out: np.ndarray = cleaned.copy()
    scale = np.asarray(spacing_yx, dtype=np.float64)
    for label in np.unique(labels[lost]):
        drawn = (labels == label).any(axis=(1, 2))
        present = (out == label).any(axis=(1, 2))
        if not (drawn & ~present).any():  # only in-plane fragments were removed: the common case
            continue
        centres: dict[int, np.ndarray] = {}

        def centre(z: int, label: int = int(label)) -> np.ndarray:
            if z not in centres:
                centres[z] = np.argwhere(out[z] == label).mean(0) * scale
            return centres[z]

        grown = True
        while grown:  # outward, one slice at a time, from the slices the structure keeps
            grown = False
            for z in np.flatnonzero(drawn & ~present):
                neighbours = [int(n) for n in (z - 1, z + 1) if 0 <= n < len(present) and present[n]]
                if not neighbours:
                    continue
                own = np.ascontiguousarray(labels[z : z + 1] == label, dtype=np.uint8)
                piece = largest_component(own, threads=threads)[0].astype(bool)
                pixels = np.argwhere(piece) * scale
                here = pixels.mean(0)
                near = min(float(np.linalg.norm(here - centre(n))) for n in neighbours) <= max_shift_mm
                if not near and max_gap_mm is not None:
                    near = min(_gap_mm(pixels, np.argwhere(out[n] == label) * scale) for n in neighbours) <= max_gap_mm
                if near:
                    out[z][piece] = label
                    centres[int(z)], present[z], grown = here, True, True
    return out


def _gap_mm(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest distance between two point sets, float (N, 2) and (M, 2) in mm (in chunks of
    256 points of ``a``, so that a large pair never holds N x M distances at once)."""
    return min(float(np.sqrt(((a[i : i + 256, None] - b[None]) ** 2).sum(-1)).min()) for i in range(0, len(a), 256))


def prepare_slices(
    pixels: np.ndarray,
    spacing_yx: Sequence[float],
    *,
    target_spacing: Sequence[float],
    size: Sequence[int],
    centre: Sequence[float] | None = None,
    order: int = 3,
    normalization: Normalization = "robust_zscore",
    threads: int | None = None,
) -> tuple[np.ndarray, SliceTransform]:
    """The network input of a stack: resample, normalise, crop or pad; and the way back.

    Parameters
    ----------
    pixels : (Z, Y, X) uint8, int16, uint16, float32 or float64, any memory order; finite.
    spacing_yx : (dy, dx) of ``pixels`` in mm.
    target_spacing : (dy, dx) in mm of the network's grid.
    size : (H, W) network window in pixels.
    centre : (cy, cx) window centre in *native* pixel indices of ``pixels`` (e.g. the heart
        centre found on the native image); default the image centre.
    order : resampling order, 0, 1 or 3.
    normalization : "zscore", "robust_zscore" or "minmax" over the resampled stack (statistics
        over :func:`statistics_mask`'s pixels where it gives some: a zero background skipped).
    threads : threads to use; default None: a share of the process-wide budget (see "Threads").

    Returns
    -------
    batch : float32 (Z, 1, H, W), C-contiguous.
    transform : the :class:`SliceTransform` that :func:`resample_argmax` inverts.
    """
    array = _stack(pixels)
    native_spacing = _spacing(spacing_yx, "spacing_yx")
    target = _spacing(target_spacing, "target_spacing")
    h, w = _size(size, "size")
    ny, nx = array.shape[1:] if array.shape[0] else (max(array.shape[1], 1), max(array.shape[2], 1))
    ry, rx = resampled_shape((ny, nx), native_spacing, target)
    resampled = resample_stack(array, native_spacing, shape=(ry, rx), order=order, threads=threads)
    mask = statistics_mask(array, native_spacing, (ry, rx), threads=threads)
    normalised = normalize(resampled, normalization, mask=mask, threads=threads)
    if centre is None:
        centre_r = ((ry - 1) / 2, (rx - 1) / 2)
    else:
        cy, cx = _pair(centre, "centre", "(cy, cx) in native pixel indices")
        if not (math.isfinite(cy) and math.isfinite(cx)):
            raise InputError(f"'centre' must be finite (cy, cx) native pixel indices, got {centre!r}")
        # native index -> resampled index, pixel-centre aligned
        centre_r = ((cy + 0.5) * ry / ny - 0.5, (cx + 0.5) * rx / nx - 0.5)
    # a field narrower than the window is padded with its darkest value, as air outside the body
    # looks, not with 0 (the stack's mean): a mid-grey frame round a heart-tight field emptied
    # whole studies (sweep 15; docs/RESULTS.md, session 40)
    window, offset = crop_or_pad(normalised, (h, w), centre_r, fill=background_value(normalised))
    transform = SliceTransform(
        native_shape=(int(ny), int(nx)),
        native_spacing=native_spacing,
        resampled_shape=(ry, rx),
        target_spacing=target,
        offset=offset,
        size=(h, w),
    )
    return window[:, None], transform


def background_value(normalised: np.ndarray) -> float:
    """What the network window is padded with beyond a field: the darkest normalised value of the
    stack (air outside the body; the clipped lower percentile for ``robust_zscore``), 0.0 for an
    empty stack. normalised: float32 (Z, Y, X)."""
    return float(normalised.min()) if normalised.size else 0.0


def context_slices(images: np.ndarray, context: int, index: np.ndarray | None = None) -> np.ndarray:
    """2.5D network input: each slice between its stack neighbours, as channels.

    Parameters
    ----------
    images : float32 (Z, 1, H, W) the prepared slices of one stack, in stack order.
    context : neighbours each side (0: the slices as they are).
    index : int (N,) the slices wanted (default: all Z).

    Returns
    -------
    float32 (N, 2 context + 1, H, W), C-contiguous: channel ``context + d`` holds slice
    ``index + d``; a neighbour beyond either end of the stack repeats the end slice, as
    `export.data.SliceSet.neighbours` does in training.
    """
    if images.ndim != 4 or images.shape[1] != 1:
        raise InputError(f"'images' must be float32 (Z, 1, H, W), got shape {images.shape}")
    if isinstance(context, bool) or not isinstance(context, (int, np.integer)) or context < 0:
        raise InputError(f"'context' must be an int >= 0, got {context!r}")
    z = images.shape[0]
    wanted = np.arange(z) if index is None else np.asarray(index, dtype=np.intp)
    if wanted.size and (wanted.min() < 0 or wanted.max() >= z):
        raise InputError(f"'index' must hold slice indices in [0, {z}), got {wanted.min()}..{wanted.max()}")
    if context == 0:  # a 2D model: no copy on the hot path where all slices are wanted
        return np.ascontiguousarray(images) if index is None else np.ascontiguousarray(images[wanted])
    neighbours = np.clip(wanted[:, None] + np.arange(-int(context), int(context) + 1), 0, max(z - 1, 0))
    return np.ascontiguousarray(images[neighbours, 0])
