// In-plane resampling, slice by slice, and the fused inverse resample + argmax.
//
// Conventions (the reference is scipy.ndimage.zoom(x, (1, fy, fx), order, mode="mirror",
// grid_mode=True), which is also skimage.transform.resize(order, mode="reflect",
// anti_aliasing=False)):
// - pixel-centre aligned: output pixel o along an axis of n_in -> n_out pixels samples the input at
//   x = (o + 0.5) * (n_in / n_out) - 0.5, so both grids cover the same physical extent;
// - order 0 takes pixel floor(x + 0.5), order 1 is linear, order 3 the cubic B-spline after the
//   exact prefilter (Unser's recursive filter, pole sqrt(3) - 2);
// - edges are "mirror" (d c b | a b c d | c b a): whole-sample symmetric about the edge pixel's
//   centre, for sampling and for the prefilter's initial conditions alike;
// - an axis whose size does not change is copied, not filtered (identity resampling is exact).
// The 2-D resampling is separable: rows first (input rows -> (Y, X') scratch), then columns, the
// column pass vectorised across the row so that the prefilter's recursion runs on whole rows.
#include "resample.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "parallel.hpp"

namespace cmr {
namespace {

// Index of sample i on an axis of n samples under the mirror boundary (period 2n - 2).
inline std::ptrdiff_t mirror(std::ptrdiff_t i, std::ptrdiff_t n) {
    if (n == 1) return 0;
    const std::ptrdiff_t period = 2 * n - 2;
    i = std::abs(i) % period;
    return i < n ? i : period - i;
}

// Interpolation table of one axis: for each output sample, `taps` input indices and weights.
struct AxisTable {
    int taps = 0;
    bool identity = false;
    std::vector<std::ptrdiff_t> index;
    std::vector<float> weight;
};

AxisTable make_table(std::ptrdiff_t n_in, std::ptrdiff_t n_out, int order) {
    AxisTable t;
    t.taps = order + 1;
    t.identity = n_in == n_out;
    if (t.identity) return t;
    t.index.resize(static_cast<std::size_t>(n_out * t.taps));
    t.weight.resize(t.index.size());
    // The same arithmetic as scipy's NI_ZoomShift, so that order-0 ties round the same way.
    const double scale = static_cast<double>(n_in) / static_cast<double>(n_out);
    for (std::ptrdiff_t o = 0; o < n_out; ++o) {
        const double x = (static_cast<double>(o) + 0.5) * scale - 0.5;
        std::ptrdiff_t* idx = &t.index[static_cast<std::size_t>(o * t.taps)];
        float* w = &t.weight[static_cast<std::size_t>(o * t.taps)];
        if (order == 0) {
            idx[0] = mirror(static_cast<std::ptrdiff_t>(std::floor(x + 0.5)), n_in);
            w[0] = 1.0f;
        } else if (order == 1) {
            const double f = std::floor(x), s = x - f;
            const auto i0 = static_cast<std::ptrdiff_t>(f);
            idx[0] = mirror(i0, n_in);
            idx[1] = mirror(i0 + 1, n_in);
            w[0] = static_cast<float>(1.0 - s);
            w[1] = static_cast<float>(s);
        } else {
            const double f = std::floor(x), s = x - f, s2 = s * s, s3 = s2 * s;
            const auto i0 = static_cast<std::ptrdiff_t>(f) - 1;
            for (int k = 0; k < 4; ++k) idx[k] = mirror(i0 + k, n_in);
            // Cubic B-spline weights times the prefilter's gain of 6, folded in here to save a
            // pass; a single-sample axis is not prefiltered (its spline is the constant).
            const double g = n_in > 1 ? 1.0 : 1.0 / 6.0;
            w[0] = static_cast<float>(g * (1.0 - s) * (1.0 - s) * (1.0 - s));
            w[1] = static_cast<float>(g * (4.0 - 6.0 * s2 + 3.0 * s3));
            w[2] = static_cast<float>(g * (1.0 + 3.0 * s + 3.0 * s2 - 3.0 * s3));
            w[3] = static_cast<float>(g * s3);
        }
    }
    return t;
}

// Cubic B-spline prefilter (without its gain) of m interleaved lines of n samples: sample i of
// line j is c[i * stride + j]. Mirror initial conditions as in scipy's ni_splines.c; beyond
// kHorizon samples the causal initial sum is truncated, its terms being below 1e-11 there.
void prefilter_cubic(float* c, std::ptrdiff_t n, std::ptrdiff_t m, std::ptrdiff_t stride) {
    if (n < 2) return;
    constexpr std::ptrdiff_t kHorizon = 20;
    const double z = std::sqrt(3.0) - 2.0;
    const auto zf = static_cast<float>(z);
    float* row0 = c;
    if (n <= kHorizon) {
        const double zn1 = std::pow(z, static_cast<double>(n - 1));
        for (std::ptrdiff_t j = 0; j < m; ++j) {
            double c0 = c[j] + zn1 * c[(n - 1) * stride + j];
            double zi = z;
            for (std::ptrdiff_t i = 1; i < n - 1; ++i) {
                c0 += zi * (c[i * stride + j] + zn1 * c[(n - 1 - i) * stride + j]);
                zi *= z;
            }
            row0[j] = static_cast<float>(c0 / (1.0 - zn1 * zn1));
        }
    } else {
        double zi = z;
        for (std::ptrdiff_t i = 1; i < kHorizon; ++i, zi *= z) {
            const auto zif = static_cast<float>(zi);
            const float* ci = c + i * stride;
            for (std::ptrdiff_t j = 0; j < m; ++j) row0[j] += zif * ci[j];
        }
    }
    for (std::ptrdiff_t i = 1; i < n; ++i) {
        float* ci = c + i * stride;
        const float* cp = ci - stride;
        for (std::ptrdiff_t j = 0; j < m; ++j) ci[j] += zf * cp[j];
    }
    const auto anti = static_cast<float>(z / (z * z - 1.0));
    float* last = c + (n - 1) * stride;
    const float* before = last - stride;
    for (std::ptrdiff_t j = 0; j < m; ++j) last[j] = anti * (zf * before[j] + last[j]);
    for (std::ptrdiff_t i = n - 2; i >= 0; --i) {
        float* ci = c + i * stride;
        const float* cn = ci + stride;
        for (std::ptrdiff_t j = 0; j < m; ++j) ci[j] = zf * (cn[j] - ci[j]);
    }
}

template <int Taps>
void apply_row(const AxisTable& t, const float* in, float* out, std::ptrdiff_t n_out) {
    const std::ptrdiff_t* idx = t.index.data();
    const float* w = t.weight.data();
    for (std::ptrdiff_t o = 0; o < n_out; ++o, idx += Taps, w += Taps) {
        float acc = 0.0f;
        for (int k = 0; k < Taps; ++k) acc += w[k] * in[idx[k]];
        out[o] = acc;
    }
}

template <int Taps>
void apply_columns(const AxisTable& t, const float* in, float* out, std::ptrdiff_t n_out, std::ptrdiff_t m) {
    for (std::ptrdiff_t o = 0; o < n_out; ++o) {
        const std::ptrdiff_t* idx = &t.index[static_cast<std::size_t>(o * Taps)];
        const float* w = &t.weight[static_cast<std::size_t>(o * Taps)];
        float* dst = out + o * m;
        const float* src0 = in + idx[0] * m;
        for (std::ptrdiff_t j = 0; j < m; ++j) dst[j] = w[0] * src0[j];
        for (int k = 1; k < Taps; ++k) {
            const float* src = in + idx[k] * m;
            const float wk = w[k];
            for (std::ptrdiff_t j = 0; j < m; ++j) dst[j] += wk * src[j];
        }
    }
}

void apply_row_any(const AxisTable& t, const float* in, float* out, std::ptrdiff_t n_out) {
    switch (t.taps) {
        case 1: apply_row<1>(t, in, out, n_out); break;
        case 2: apply_row<2>(t, in, out, n_out); break;
        default: apply_row<4>(t, in, out, n_out); break;
    }
}

void apply_columns_any(const AxisTable& t, const float* in, float* out, std::ptrdiff_t n_out, std::ptrdiff_t m) {
    switch (t.taps) {
        case 1: apply_columns<1>(t, in, out, n_out, m); break;
        case 2: apply_columns<2>(t, in, out, n_out, m); break;
        default: apply_columns<4>(t, in, out, n_out, m); break;
    }
}

// True when all n floats are finite: the exponent bits of NaN and infinities are all ones.
// Integer OR-reduction, which the compiler vectorises (a float sum would stay scalar).
inline bool all_finite(const float* p, std::ptrdiff_t n) {
    std::uint32_t bad = 0;
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        std::uint32_t u;
        std::memcpy(&u, p + i, sizeof u);
        bad |= static_cast<std::uint32_t>((u & 0x7f800000u) == 0x7f800000u);
    }
    return bad == 0;
}

}  // namespace

template <class T>
ResampleStatus resample_stack(const StridedStack& in, float* out, std::ptrdiff_t out_y, std::ptrdiff_t out_x,
                              int order, int threads) {
    const std::ptrdiff_t nz = in.shape[0], ny = in.shape[1], nx = in.shape[2];
    const AxisTable ty = make_table(ny, out_y, order);
    const AxisTable tx = make_table(nx, out_x, order);
    std::atomic<bool> finite{true};
    std::atomic<bool> overflow{false};
    parallel_for(nz, threads, 1, [&](std::ptrdiff_t z0, std::ptrdiff_t z1) {
        std::vector<float> line(static_cast<std::size_t>(nx));
        // (Y, X') after the row pass; when Y does not change it is the output slice itself.
        std::vector<float> scratch(ty.identity ? 0 : static_cast<std::size_t>(ny * out_x));
        bool slice_finite = true;
        for (std::ptrdiff_t z = z0; z < z1; ++z) {
            float* dst = out + z * out_y * out_x;
            float* mid = ty.identity ? dst : scratch.data();
            const char* base = in.data + z * in.strides[0];
            for (std::ptrdiff_t y = 0; y < ny; ++y) {
                const char* row = base + y * in.strides[1];
                float* target = tx.identity ? mid + y * out_x : line.data();
                for (std::ptrdiff_t x = 0; x < nx; ++x) {
                    target[x] = static_cast<float>(*reinterpret_cast<const T*>(row + x * in.strides[2]));
                }
                if constexpr (std::is_floating_point_v<T>) {
                    // After the cast to float: a float64 beyond float32's range is caught as well.
                    slice_finite = slice_finite && all_finite(target, nx);
                }
                if (!tx.identity) {
                    if (order == 3) prefilter_cubic(line.data(), nx, 1, 1);
                    apply_row_any(tx, line.data(), mid + y * out_x, out_x);
                }
            }
            if (!ty.identity) {
                if (order == 3) prefilter_cubic(mid, ny, out_x, out_x);
                apply_columns_any(ty, mid, dst, out_y, out_x);
            }
            if constexpr (std::is_floating_point_v<T>) {
                // Finite input near FLT_MAX can overflow in the cubic spline, which overshoots
                // (found by fuzz/fuzz_kernels.py); integer dtypes are far from it. One pass over
                // a slice that is still in cache.
                if (slice_finite && !all_finite(dst, out_y * out_x)) overflow.store(true);
            }
        }
        if (!slice_finite) finite.store(false);
    });
    if (!finite.load()) return kInputNotFinite;
    return overflow.load() ? kOutputOverflow : kFinite;
}

template ResampleStatus resample_stack<std::uint8_t>(const StridedStack&, float*, std::ptrdiff_t, std::ptrdiff_t, int, int);
template ResampleStatus resample_stack<std::int16_t>(const StridedStack&, float*, std::ptrdiff_t, std::ptrdiff_t, int, int);
template ResampleStatus resample_stack<std::uint16_t>(const StridedStack&, float*, std::ptrdiff_t, std::ptrdiff_t, int, int);
template ResampleStatus resample_stack<float>(const StridedStack&, float*, std::ptrdiff_t, std::ptrdiff_t, int, int);
template ResampleStatus resample_stack<double>(const StridedStack&, float*, std::ptrdiff_t, std::ptrdiff_t, int, int);

namespace {

// Bilinear sampling positions of native pixels inside the window along one axis: window
// coordinate r = (i + 0.5) * n_resampled / n_native - 0.5 - offset; the pixel is inside when
// -0.5 <= r < size - 0.5 (it falls on a window pixel), and r is then clamped to [0, size - 1]
// as torch's interpolate(mode="bilinear", align_corners=False) clamps at its edges.
struct LinearAxis {
    std::vector<std::uint8_t> inside;
    std::vector<std::ptrdiff_t> i0, i1;
    std::vector<float> w1;
};

LinearAxis make_linear_axis(std::ptrdiff_t n_native, std::ptrdiff_t n_resampled, std::ptrdiff_t offset,
                            std::ptrdiff_t size) {
    LinearAxis a;
    const auto n = static_cast<std::size_t>(n_native);
    a.inside.assign(n, 0);
    a.i0.assign(n, 0);
    a.i1.assign(n, 0);
    a.w1.assign(n, 0.0f);
    const double scale = static_cast<double>(n_resampled) / static_cast<double>(n_native);
    for (std::ptrdiff_t i = 0; i < n_native; ++i) {
        const double r = (static_cast<double>(i) + 0.5) * scale - 0.5 - static_cast<double>(offset);
        if (r < -0.5 || r >= static_cast<double>(size) - 0.5) continue;
        const double rc = std::clamp(r, 0.0, static_cast<double>(size - 1));
        const auto f = static_cast<std::ptrdiff_t>(std::floor(rc));
        const auto k = static_cast<std::size_t>(i);
        a.inside[k] = 1;
        a.i0[k] = f;
        a.i1[k] = std::min(f + 1, size - 1);
        a.w1[k] = static_cast<float>(rc - static_cast<double>(f));
    }
    return a;
}

}  // namespace

bool resample_argmax(const float* prob, std::ptrdiff_t nz, std::ptrdiff_t nc, std::ptrdiff_t h,
                     std::ptrdiff_t w, std::uint8_t* out, std::ptrdiff_t ny, std::ptrdiff_t nx,
                     std::ptrdiff_t ry, std::ptrdiff_t rx, std::ptrdiff_t oy, std::ptrdiff_t ox,
                     int threads) {
    const LinearAxis ay = make_linear_axis(ny, ry, oy, h);
    const LinearAxis ax = make_linear_axis(nx, rx, ox, w);
    // The window columns that any native pixel reads; the vertical blend is done on these only.
    std::ptrdiff_t lo = w, hi = -1;
    for (std::ptrdiff_t x = 0; x < nx; ++x) {
        if (ax.inside[static_cast<std::size_t>(x)]) {
            lo = std::min(lo, ax.i0[static_cast<std::size_t>(x)]);
            hi = std::max(hi, ax.i1[static_cast<std::size_t>(x)]);
        }
    }
    std::atomic<bool> finite{true};
    // The check covers every probability, read or not: a NaN anywhere means a broken engine.
    parallel_for(nz * nc * h, threads, 64, [&](std::ptrdiff_t b, std::ptrdiff_t e) {
        if (!all_finite(prob + b * w, (e - b) * w)) finite.store(false);
    });
    if (!finite.load()) return false;
    parallel_for(nz * ny, threads, 16, [&](std::ptrdiff_t r0, std::ptrdiff_t r1) {
        std::vector<float> blend(static_cast<std::size_t>(w));
        std::vector<float> value(static_cast<std::size_t>(nx));
        std::vector<float> best(static_cast<std::size_t>(nx));
        for (std::ptrdiff_t r = r0; r < r1; ++r) {
            const std::ptrdiff_t z = r / ny, y = r % ny;
            std::uint8_t* dst = out + r * nx;
            const auto ky = static_cast<std::size_t>(y);
            if (!ay.inside[ky] || hi < 0) {
                std::memset(dst, 0, static_cast<std::size_t>(nx));
                continue;
            }
            const float wy1 = ay.w1[ky], wy0 = 1.0f - wy1;
            for (std::ptrdiff_t c = 0; c < nc; ++c) {
                const float* plane = prob + (z * nc + c) * h * w;
                const float* p0 = plane + ay.i0[ky] * w;
                const float* p1 = plane + ay.i1[ky] * w;
                for (std::ptrdiff_t j = lo; j <= hi; ++j) blend[static_cast<std::size_t>(j)] = wy0 * p0[j] + wy1 * p1[j];
                float* v = c == 0 ? best.data() : value.data();
                for (std::ptrdiff_t x = 0; x < nx; ++x) {
                    const auto kx = static_cast<std::size_t>(x);
                    v[x] = (1.0f - ax.w1[kx]) * blend[static_cast<std::size_t>(ax.i0[kx])] +
                           ax.w1[kx] * blend[static_cast<std::size_t>(ax.i1[kx])];
                }
                if (c == 0) {
                    std::memset(dst, 0, static_cast<std::size_t>(nx));
                    continue;
                }
                // Branch-free running argmax (random-looking probabilities defeat branch
                // prediction); ties go to the lower class, as numpy's and torch's argmax do.
                const auto label = static_cast<std::uint8_t>(c);
                // restrict: a uint8 store may alias anything, which would stop vectorisation.
                const float* __restrict vr = v;
                float* __restrict b = best.data();
                std::uint8_t* __restrict d = dst;
                for (std::ptrdiff_t x = 0; x < nx; ++x) {
                    const bool wins = vr[x] > b[x];
                    b[x] = wins ? vr[x] : b[x];
                    d[x] = wins ? label : d[x];
                }
            }
            for (std::ptrdiff_t x = 0; x < nx; ++x) {
                if (!ax.inside[static_cast<std::size_t>(x)]) dst[x] = 0;
            }
        }
    });
    return true;
}

}  // namespace cmr
