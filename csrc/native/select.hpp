// Exact percentiles by selection, for the robust z-score of csrc/normalize.pyx.
//
// numpy's default ("linear") percentile needs the k-th and (k+1)-th smallest values with
// k = floor(q / 100 * (n - 1)). Two std::nth_element calls over a copy of all n values cost about
// 15 ms for a 10 x 300 x 300 stack, more than the resampling; so a seeded random sample of 4096
// values first brackets each wanted rank in a value band [a, b], one pass over the data counts
// the values below a and copies those inside the band (about 1 % of them), and nth_element runs
// on the band alone. The result is exact: whenever the band does not hold both wanted ranks
// (an unlucky sample, heavy ties), it falls back to nth_element over everything.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace cmr {

namespace detail {

struct Rank {
    std::ptrdiff_t k;   // floor(position)
    double frac;        // position - k
};

inline Rank rank_of(double q, std::ptrdiff_t n) {
    const double pos = q / 100.0 * static_cast<double>(n - 1);
    const auto k = std::min(static_cast<std::ptrdiff_t>(std::floor(pos)), n - 1);
    return {k, pos - static_cast<double>(k)};
}

// The linear-rule percentile from values v whose rank-r element is wanted, given that v holds
// every value of the data from rank `base` onwards up to at least rank r + 1 (or the last).
inline double pick(std::vector<float>& v, std::ptrdiff_t r, double frac) {
    std::nth_element(v.begin(), v.begin() + r, v.end());
    const double lo = v[static_cast<std::size_t>(r)];
    if (frac == 0.0 || r + 1 >= static_cast<std::ptrdiff_t>(v.size())) return lo;
    const double hi = *std::min_element(v.begin() + r + 1, v.end());
    return lo + frac * (hi - lo);
}

inline std::uint64_t splitmix64(std::uint64_t& state) {
    std::uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

}  // namespace detail

// The q_lo-th and q_hi-th percentiles (0 <= q <= 100, numpy's linear rule) of the values of x
// (n floats, all finite) where mask is non-zero (mask may be null). count is the number of
// selected values (> 0). Writes the two percentiles to out[0], out[1].
inline void percentiles(const float* x, const std::uint8_t* mask, std::ptrdiff_t n, std::ptrdiff_t count,
                        double q_lo, double q_hi, double* out) {
    const double qs[2] = {q_lo, q_hi};
    auto gather_all = [&]() {
        std::vector<float> all;
        all.reserve(static_cast<std::size_t>(count));
        for (std::ptrdiff_t i = 0; i < n; ++i) {
            if (!mask || mask[i]) all.push_back(x[i]);
        }
        return all;
    };
    constexpr std::ptrdiff_t kSample = 4096;
    if (count <= 16 * kSample) {
        std::vector<float> all = gather_all();
        for (int j = 0; j < 2; ++j) {
            const detail::Rank r = detail::rank_of(qs[j], count);
            out[j] = detail::pick(all, r.k, r.frac);
        }
        return;
    }
    // The sample: uniform random selected voxels (rejection on the mask, with a bound on tries).
    std::vector<float> sample;
    sample.reserve(kSample);
    std::uint64_t state = 0x5EED5EEDull;
    for (std::ptrdiff_t tries = 0; tries < 64 * kSample && static_cast<std::ptrdiff_t>(sample.size()) < kSample; ++tries) {
        const auto i = static_cast<std::ptrdiff_t>(detail::splitmix64(state) % static_cast<std::uint64_t>(n));
        if (!mask || mask[i]) sample.push_back(x[i]);
    }
    const auto s = static_cast<std::ptrdiff_t>(sample.size());
    std::sort(sample.begin(), sample.end());
    float a[2], b[2];
    for (int j = 0; j < 2; ++j) {
        // The wanted rank's position in the sample, widened by five binomial standard deviations.
        const double p = qs[j] / 100.0;
        const double centre = p * static_cast<double>(s - 1);
        const double margin = 5.0 * std::sqrt(static_cast<double>(s) * p * (1.0 - p)) + 8.0;
        const auto lo = static_cast<std::ptrdiff_t>(std::max(0.0, std::floor(centre - margin)));
        const auto hi = static_cast<std::ptrdiff_t>(std::min(static_cast<double>(s - 1), std::ceil(centre + margin)));
        // The sample's extremes say nothing about what lies beyond them: open the band there.
        a[j] = lo == 0 ? -INFINITY : sample[static_cast<std::size_t>(lo)];
        b[j] = hi == s - 1 ? INFINITY : sample[static_cast<std::size_t>(hi)];
    }
    std::ptrdiff_t below[2] = {0, 0};
    std::vector<float> band[2];
    for (auto& v : band) v.reserve(static_cast<std::size_t>(count / 32 + 64));
    for (std::ptrdiff_t i = 0; i < n; ++i) {
        if (mask && !mask[i]) continue;
        const float v = x[i];
        for (int j = 0; j < 2; ++j) {
            if (v < a[j]) ++below[j];
            else if (v <= b[j]) band[j].push_back(v);
        }
    }
    for (int j = 0; j < 2; ++j) {
        const detail::Rank r = detail::rank_of(qs[j], count);
        const std::ptrdiff_t need = (r.frac > 0.0 && r.k + 1 < count) ? r.k + 1 : r.k;
        const auto size = static_cast<std::ptrdiff_t>(band[j].size());
        if (below[j] <= r.k && need < below[j] + size) {
            out[j] = detail::pick(band[j], r.k - below[j], r.frac);
        } else {
            std::vector<float> all = gather_all();
            out[j] = detail::pick(all, r.k, r.frac);
        }
    }
}

}  // namespace cmr
