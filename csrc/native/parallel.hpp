// A small parallel-for over std::thread, shared by the pybind11 module and the Cython module.
//
// Why not OpenMP: the wheel then needs no libgomp, and the thread count stays a plain argument
// that callers choose per call (the pipeline runs several stacks side by side).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

namespace cmr {

// Runs fn(begin, end) over [0, n) in blocks of `grain` items on up to `threads` threads, the
// caller's thread being one of them. Blocks are handed out from an atomic counter so that uneven
// work balances. The first exception a block throws is rethrown in the caller once all threads
// have joined; if the system refuses to start a thread, the threads already running finish the
// work (a slower run, never an abort).
template <class Fn>
void parallel_for(std::ptrdiff_t n, int threads, std::ptrdiff_t grain, Fn&& fn) {
    if (n <= 0) return;
    grain = std::max<std::ptrdiff_t>(grain, 1);
    const std::ptrdiff_t blocks = (n + grain - 1) / grain;
    const std::ptrdiff_t workers = std::min<std::ptrdiff_t>(std::max(threads, 1), blocks);
    if (workers == 1) {
        fn(std::ptrdiff_t{0}, n);
        return;
    }
    std::atomic<std::ptrdiff_t> next{0};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto work = [&]() {
        try {
            for (std::ptrdiff_t b = next.fetch_add(1); b < blocks; b = next.fetch_add(1)) {
                fn(b * grain, std::min(n, (b + 1) * grain));
            }
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            next.store(blocks);  // the other threads stop after their current block
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(workers - 1));
    for (std::ptrdiff_t i = 1; i < workers; ++i) {
        try {
            pool.emplace_back(work);
        } catch (const std::system_error&) {
            break;
        }
    }
    work();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

// The same for C callers (Cython): fn(ctx, begin, end). fn must not throw.
using block_fn = void (*)(void* ctx, std::ptrdiff_t begin, std::ptrdiff_t end);

inline void parallel_for_c(std::ptrdiff_t n, int threads, std::ptrdiff_t grain, block_fn fn, void* ctx) {
    parallel_for(n, threads, grain, [&](std::ptrdiff_t b, std::ptrdiff_t e) { fn(ctx, b, e); });
}

}  // namespace cmr
