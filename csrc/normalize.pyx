# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Intensity normalisation kernels of cmrsdk (call them through ``cmrsdk.preprocess.normalize``).

Every function takes a flat float32 C-contiguous array (the stack, raveled) and an optional
flat uint8 mask of the same length (non-zero = the voxel counts towards the statistics), and
returns a new flat float32 array. Statistics come from the masked voxels; the transform is
applied to every voxel. Sums run in float64 over fixed blocks of 65536 voxels that are added in
block order, so results do not depend on the thread count (parallel_for calls the block
functions once per block, whatever the thread count: each block fills its own partial slot).
The standard deviation is the population one (numpy's ``std()``). The transform runs in float64 and rounds once to float32.
A NaN or infinite input, a mask that selects nothing, or a result beyond float32's range (finite
input, but a mask whose voxels span a tiny range and others far from it) raises ValueError (the
wrapper turns it into cmrsdk's InputError).
"""
from libc.math cimport INFINITY, isfinite, sqrt
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memcpy
from libcpp.vector cimport vector

import numpy as np

cdef extern from "native/parallel.hpp" namespace "cmr":
    ctypedef void (*block_fn)(void* ctx, ptrdiff_t begin, ptrdiff_t end) noexcept nogil
    void parallel_for_c(ptrdiff_t n, int threads, ptrdiff_t grain, block_fn fn, void* ctx) except + nogil

cdef extern from "native/select.hpp" namespace "cmr":
    void select_percentiles "cmr::percentiles"(const float* x, const uint8_t* mask, ptrdiff_t n,
                                               ptrdiff_t count, double q_lo, double q_hi,
                                               double* out) except + nogil

__all__ = ["zscore", "robust_zscore", "minmax", "percentiles", "EPSILON"]

#: the smallest standard deviation divided by, as nnU-Net's ZScoreNormalization does.
EPSILON = 1e-8

cdef ptrdiff_t GRAIN = 1 << 16

cdef struct Ctx:
    const float* x
    const uint8_t* mask
    float* out
    double* part_sum
    double* part_sq
    double* part_lo
    double* part_hi
    double* part_raw
    double* part_out
    ptrdiff_t* part_n
    float lo
    float hi
    double shift
    double scale

cdef inline float _clip(float v, float lo, float hi) noexcept nogil:
    return lo if v < lo else (hi if v > hi else v)

cdef void _stats_block(void* p, ptrdiff_t b, ptrdiff_t e) noexcept nogil:
    # One pass: count, sum, sum of squares, min and max of the clipped masked values, and the
    # raw sum of (v - v), NaN exactly when some voxel is NaN or infinite.
    cdef Ctx* c = <Ctx*>p
    cdef double s = 0.0, sq = 0.0, raw = 0.0, lo = INFINITY, hi = -INFINITY
    cdef ptrdiff_t i, n = 0
    cdef float v, w
    for i in range(b, e):
        v = c.x[i]
        raw += v - v
        if c.mask == NULL or c.mask[i]:
            w = _clip(v, c.lo, c.hi)
            s += w
            sq += <double>w * w
            n += 1
            if w < lo:
                lo = w
            if w > hi:
                hi = w
    cdef ptrdiff_t k = b // GRAIN
    c.part_sum[k] = s
    c.part_sq[k] = sq
    c.part_lo[k] = lo
    c.part_hi[k] = hi
    c.part_raw[k] = raw
    c.part_n[k] = n

cdef void _apply_block(void* p, ptrdiff_t b, ptrdiff_t e) noexcept nogil:
    # In float64: in float32, x - min overflows to inf when the data span more than FLT_MAX
    # (found by fuzz/fuzz_kernels.py: minmax of [-3e38, 3e38]), and the scale 1 / (max - min)
    # would round to a subnormal.
    cdef Ctx* c = <Ctx*>p
    cdef double shift = c.shift, scale = c.scale
    cdef float lo = c.lo, hi = c.hi
    cdef ptrdiff_t i
    for i in range(b, e):
        c.out[i] = <float>((<double>_clip(c.x[i], lo, hi) - shift) * scale)
    # A result that overflowed float32 (finite input, but a mask whose voxels span a tiny range
    # applied to voxels far from them) has all exponent bits set. An integer OR-reduction, which
    # the compiler vectorises, unlike a float sum; memcpy, not a cast, to read the bits.
    cdef uint32_t u, bad = 0
    for i in range(b, e):
        memcpy(&u, &c.out[i], 4)
        bad |= (u & 0x7f800000u) == 0x7f800000u
    c.part_out[b // GRAIN] = bad


cdef class _Run:
    """One call's state: the block context and the per-block partial results."""
    cdef Ctx ctx
    cdef vector[double] part_sum, part_sq, part_lo, part_hi, part_raw, part_out
    cdef vector[ptrdiff_t] part_n
    cdef ptrdiff_t n, blocks, count
    cdef int threads
    cdef double mean, std, lo, hi
    cdef object out

    def __cinit__(self, const float[::1] x, const uint8_t[::1] mask, int threads):
        self.n = x.shape[0]
        self.blocks = (self.n + GRAIN - 1) // GRAIN
        self.threads = max(threads, 1)
        self.part_sum.resize(self.blocks)
        self.part_sq.resize(self.blocks)
        self.part_lo.resize(self.blocks)
        self.part_hi.resize(self.blocks)
        self.part_raw.resize(self.blocks)
        self.part_out.resize(self.blocks)
        self.part_n.resize(self.blocks)
        self.out = np.empty(self.n, dtype=np.float32)
        cdef float[::1] out_view = self.out
        self.ctx.x = &x[0]
        self.ctx.mask = NULL
        if mask is not None:
            self.ctx.mask = &mask[0]
        self.ctx.out = &out_view[0]
        self.ctx.part_sum = self.part_sum.data()
        self.ctx.part_sq = self.part_sq.data()
        self.ctx.part_lo = self.part_lo.data()
        self.ctx.part_hi = self.part_hi.data()
        self.ctx.part_raw = self.part_raw.data()
        self.ctx.part_out = self.part_out.data()
        self.ctx.part_n = self.part_n.data()
        self.ctx.lo = -INFINITY
        self.ctx.hi = INFINITY

    cdef int run(self, block_fn fn) except -1:
        with nogil:
            parallel_for_c(self.n, self.threads, GRAIN, fn, &self.ctx)
        return 0

    cdef int stats(self) except -1:
        """Count, mean, std, min and max of the clipped masked voxels."""
        self.run(_stats_block)
        cdef double s = 0.0, sq = 0.0, raw = 0.0
        cdef ptrdiff_t k
        self.count = 0
        self.lo = INFINITY
        self.hi = -INFINITY
        for k in range(self.blocks):
            s += self.part_sum[k]
            sq += self.part_sq[k]
            raw += self.part_raw[k]
            self.count += self.part_n[k]
            self.lo = min(self.lo, self.part_lo[k])
            self.hi = max(self.hi, self.part_hi[k])
        if not isfinite(raw):
            raise ValueError("pixels contain NaN or infinite values")
        if self.count == 0:
            raise ValueError("mask selects no voxel")
        self.mean = s / self.count
        # E[x^2] - mean^2 in float64 is exact enough for float32 data and saves a pass.
        self.std = sqrt(max(sq / self.count - self.mean * self.mean, 0.0))
        return 0

    cdef object apply(self, double shift, double scale):
        self.ctx.shift = shift
        self.ctx.scale = scale
        self.run(_apply_block)
        cdef ptrdiff_t k
        for k in range(self.blocks):
            if self.part_out[k]:
                raise ValueError(
                    "normalised values overflow float32: the statistics' voxels span too narrow a "
                    "range (or too wide a one) for the values of the others")
        return self.out


cdef _Run _start(const float[::1] x, const uint8_t[::1] mask, int threads):
    if mask is not None and mask.shape[0] != x.shape[0]:
        raise ValueError(f"mask has {mask.shape[0]} voxels, pixels {x.shape[0]}")
    if x.shape[0] == 0:
        return None
    return _Run(x, mask, threads)


def zscore(const float[::1] x, const uint8_t[::1] mask=None, int threads=1):
    """(x - mean) / max(std, EPSILON), mean and population std over the masked voxels.

    x : float32 (N,) C-contiguous; mask : uint8 (N,) or None; returns float32 (N,).
    """
    cdef _Run r = _start(x, mask, threads)
    if r is None:
        return np.empty(0, dtype=np.float32)
    r.stats()
    return r.apply(r.mean, 1.0 / max(r.std, EPSILON))


def percentiles(const float[::1] x, const uint8_t[::1] mask=None, double lower=0.5, double upper=99.5,
                int threads=1):
    """The lower and upper percentiles (numpy's default linear rule) of the masked voxels.

    Found by selection (std::nth_element on a sampled value band, see select.hpp), not a sort.
    x : float32 (N,) finite; returns (lower value, upper value) as floats.
    """
    if not (0.0 <= lower <= upper <= 100.0):
        raise ValueError(f"percentiles must satisfy 0 <= lower <= upper <= 100, got {lower}, {upper}")
    cdef _Run r = _start(x, mask, threads)
    if r is None:
        raise ValueError("pixels are empty")
    r.stats()
    cdef double out[2]
    with nogil:
        select_percentiles(r.ctx.x, r.ctx.mask, r.n, r.count, lower, upper, out)
    return out[0], out[1]


def robust_zscore(const float[::1] x, const uint8_t[::1] mask=None, double lower=0.5,
                  double upper=99.5, int threads=1):
    """Clip to the masked voxels' [lower, upper] percentiles, then z-score with the clipped
    values' mean and population std. x : float32 (N,); mask : uint8 (N,) or None; float32 (N,).
    """
    if not (0.0 <= lower <= upper <= 100.0):
        raise ValueError(f"percentiles must satisfy 0 <= lower <= upper <= 100, got {lower}, {upper}")
    cdef _Run r = _start(x, mask, threads)
    if r is None:
        return np.empty(0, dtype=np.float32)
    r.stats()  # finiteness and the count first: selection needs both
    cdef double bounds[2]
    with nogil:
        select_percentiles(r.ctx.x, r.ctx.mask, r.n, r.count, lower, upper, bounds)
    r.ctx.lo = <float>bounds[0]
    r.ctx.hi = <float>bounds[1]
    r.stats()
    return r.apply(r.mean, 1.0 / max(r.std, EPSILON))


def minmax(const float[::1] x, const uint8_t[::1] mask=None, int threads=1):
    """(x - min) / (max - min) over the masked voxels' range; all zeros where max == min.

    x : float32 (N,); mask : uint8 (N,) or None; returns float32 (N,).
    """
    cdef _Run r = _start(x, mask, threads)
    if r is None:
        return np.empty(0, dtype=np.float32)
    r.stats()
    return r.apply(r.lo, 1.0 / (r.hi - r.lo) if r.hi > r.lo else 0.0)
