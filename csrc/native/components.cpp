// Largest connected component per label by union-find.
//
// One parent array serves all labels: a voxel is only ever joined to neighbours of its own label,
// so the labels' disjoint sets never touch each other's entries and a thread per label needs no
// locks. Union makes the smaller raster index the root, so each component's root is its first
// voxel in (z, y, x) raster order; roots store -size. Equal-size components are decided in
// favour of the one that starts first in raster order, which is what scipy.ndimage.label's
// numbering followed by an argmax of the sizes picks.
#include "components.hpp"

#include <array>
#include <cstdint>
#include <vector>

#include "parallel.hpp"

namespace cmr {
namespace {

using Index = std::int64_t;

inline Index find_root(std::vector<Index>& parent, Index v) {
    while (parent[static_cast<std::size_t>(v)] >= 0) {
        const Index p = parent[static_cast<std::size_t>(v)];
        const Index gp = parent[static_cast<std::size_t>(p)];
        if (gp >= 0) parent[static_cast<std::size_t>(v)] = gp;  // path halving
        v = p;
    }
    return v;
}

struct Offset {
    std::ptrdiff_t dz, dy, dx;
};

// The neighbours that come before a voxel in raster order (half of the neighbourhood).
std::vector<Offset> backward_neighbours(int connectivity) {
    std::vector<Offset> result;
    for (int dz = -1; dz <= 0; ++dz) {
        for (int dy = -1; dy <= 1; ++dy) {
            for (int dx = -1; dx <= 1; ++dx) {
                const bool before = dz < 0 || (dz == 0 && (dy < 0 || (dy == 0 && dx < 0)));
                const int nonzero = (dz != 0) + (dy != 0) + (dx != 0);
                const int allowed = connectivity == 6 ? 1 : connectivity == 18 ? 2 : 3;
                if (before && nonzero <= allowed) result.push_back({dz, dy, dx});
            }
        }
    }
    return result;
}

}  // namespace

void largest_component(const std::uint8_t* in, std::uint8_t* out, std::ptrdiff_t nz, std::ptrdiff_t ny,
                       std::ptrdiff_t nx, int connectivity, int threads) {
    const Index n = static_cast<Index>(nz) * ny * nx;
    if (n == 0) return;
    std::array<bool, 256> present{};
    for (Index v = 0; v < n; ++v) present[in[v]] = true;
    std::vector<int> labels;
    for (int l = 1; l < 256; ++l) {
        if (present[static_cast<std::size_t>(l)]) labels.push_back(l);
    }
    const std::vector<Offset> neighbours = backward_neighbours(connectivity);
    std::vector<Index> parent(static_cast<std::size_t>(n));
    parallel_for(static_cast<std::ptrdiff_t>(labels.size()), threads, 1, [&](std::ptrdiff_t b, std::ptrdiff_t e) {
        for (std::ptrdiff_t li = b; li < e; ++li) {
            const auto label = static_cast<std::uint8_t>(labels[static_cast<std::size_t>(li)]);
            for (std::ptrdiff_t z = 0; z < nz; ++z) {
                for (std::ptrdiff_t y = 0; y < ny; ++y) {
                    for (std::ptrdiff_t x = 0; x < nx; ++x) {
                        const Index v = (static_cast<Index>(z) * ny + y) * nx + x;
                        if (in[v] != label) continue;
                        parent[static_cast<std::size_t>(v)] = -1;
                        for (const Offset& d : neighbours) {
                            const std::ptrdiff_t zz = z + d.dz, yy = y + d.dy, xx = x + d.dx;
                            if (zz < 0 || yy < 0 || yy >= ny || xx < 0 || xx >= nx) continue;
                            const Index u = (static_cast<Index>(zz) * ny + yy) * nx + xx;
                            if (in[u] != label) continue;
                            const Index ru = find_root(parent, u), rv = find_root(parent, v);
                            if (ru == rv) continue;
                            const Index root = ru < rv ? ru : rv, child = ru < rv ? rv : ru;
                            parent[static_cast<std::size_t>(root)] += parent[static_cast<std::size_t>(child)];
                            parent[static_cast<std::size_t>(child)] = root;
                        }
                    }
                }
            }
            Index best = -1, best_size = 0;
            for (Index v = 0; v < n; ++v) {
                if (in[v] == label && parent[static_cast<std::size_t>(v)] < 0 &&
                    -parent[static_cast<std::size_t>(v)] > best_size) {
                    best = v;
                    best_size = -parent[static_cast<std::size_t>(v)];
                }
            }
            for (Index v = 0; v < n; ++v) {
                if (in[v] == label && find_root(parent, v) == best) out[v] = label;
            }
        }
    });
}

}  // namespace cmr
