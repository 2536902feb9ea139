// In-plane resampling kernels of cmrsdk._native (see resample.cpp for the conventions).
#pragma once

#include <cstddef>
#include <cstdint>

namespace cmr {

// A read-only strided (Z, Y, X) view of any supported dtype; strides in bytes, may be negative.
struct StridedStack {
    const char* data;
    std::ptrdiff_t shape[3];
    std::ptrdiff_t strides[3];
};

// What resample_stack found; the output is meaningless unless kFinite.
enum ResampleStatus : int {
    kFinite = 0,           // input and output finite
    kInputNotFinite = 1,   // a float input holds a NaN or an infinity (or a float64 beyond float32)
    kOutputOverflow = 2,   // finite input near float32's limits whose interpolation overflowed
};

// Resamples every slice of `in` (element type T) to (out_y, out_x) with B-spline order 0, 1 or
// 3, writing float32 C-contiguous (Z, out_y, out_x) to `out`.
template <class T>
ResampleStatus resample_stack(const StridedStack& in, float* out, std::ptrdiff_t out_y, std::ptrdiff_t out_x,
                    int order, int threads);

// The fused inverse: probabilities float32 C-contiguous (Z, C, H, W) on the network window,
// bilinearly resampled onto the native (Z, Y, X) grid and reduced by argmax to uint8 labels.
// The window's pixel (0, 0) is pixel (oy, ox) of the resampled (ry, rx) grid, which covers the
// same extent as the native grid. Returns false when a probability is NaN or infinite.
bool resample_argmax(const float* prob, std::ptrdiff_t z, std::ptrdiff_t c, std::ptrdiff_t h,
                     std::ptrdiff_t w, std::uint8_t* out, std::ptrdiff_t y, std::ptrdiff_t x,
                     std::ptrdiff_t ry, std::ptrdiff_t rx, std::ptrdiff_t oy, std::ptrdiff_t ox,
                     int threads);

}  // namespace cmr
