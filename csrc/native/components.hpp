// Largest connected component per label, in 3-D (see components.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

namespace cmr {

// Keeps, for every non-zero label of the C-contiguous (Z, Y, X) map `in`, only its largest
// connected component; other voxels of that label become 0 in `out` (same shape, which the
// caller zero-fills). connectivity is 6, 18 or 26. Labels are processed in parallel.
void largest_component(const std::uint8_t* in, std::uint8_t* out, std::ptrdiff_t nz, std::ptrdiff_t ny,
                       std::ptrdiff_t nx, int connectivity, int threads);

}  // namespace cmr
