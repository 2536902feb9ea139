// A small parallel-for over std::thread, shared by the pybind11 module and the Cython module.
//
// Why not OpenMP: the wheel then needs no libgomp, and the thread count stays a plain argument
// that callers choose per call (the pipeline runs several stacks side by side; the process-wide
// budget of native threads lives in cmrsdk/preprocess.py, which picks that argument).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace cmr {

// Starts one worker thread running `work` at the end of `pool`: the default of parallel_for's
// `start` argument, which tests replace to make thread creation fail on purpose.
struct StartThread {
    template <class Work>
    void operator()(std::vector<std::thread>& pool, Work& work) const {
        pool.emplace_back(work);
    }
};

// Runs fn(begin, end) over [0, n) on up to `threads` threads, the caller's thread being one of
// them. The range is cut into blocks of `grain` items, and every call of fn covers exactly one
// block, [b * grain, min(n, (b + 1) * grain)), whatever the thread count: kernels that keep one
// partial result per block (csrc/normalize.pyx) rely on it, and so their results do not depend
// on the thread count. Blocks are handed out from an atomic counter so that uneven work balances.
//
// Errors:
// - The first exception a block throws is rethrown in the caller once all threads have joined.
// - If the system refuses to start a thread (std::system_error), the threads already running
//   finish the work: a slower run, never an abort.
// - Any other exception while starting threads (std::bad_alloc for the pool or a thread's state)
//   stops the threads already started after their current block, joins them, and is rethrown:
//   no joinable std::thread is ever destroyed (that would call std::terminate).
template <class Fn, class Start = StartThread>
void parallel_for(std::ptrdiff_t n, int threads, std::ptrdiff_t grain, Fn&& fn, Start&& start = Start{}) {
    if (n <= 0) return;
    grain = std::max<std::ptrdiff_t>(grain, 1);
    const std::ptrdiff_t blocks = (n + grain - 1) / grain;
    const std::ptrdiff_t workers = std::min<std::ptrdiff_t>(std::max(threads, 1), blocks);
    if (workers == 1) {
        for (std::ptrdiff_t b = 0; b < blocks; ++b) fn(b * grain, std::min(n, (b + 1) * grain));
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
    try {
        pool.reserve(static_cast<std::size_t>(workers - 1));
        for (std::ptrdiff_t i = 1; i < workers; ++i) start(pool, work);
    } catch (const std::system_error&) {
        // Fewer threads than asked for: the ones running (and this one) do all the blocks.
    } catch (...) {
        next.store(blocks);
        for (auto& t : pool) t.join();
        throw;
    }
    work();
    for (auto& t : pool) t.join();
    if (error) std::rethrow_exception(error);
}

// The same for C callers (Cython): fn(ctx, begin, end), one block per call. fn must not throw.
using block_fn = void (*)(void* ctx, std::ptrdiff_t begin, std::ptrdiff_t end);

inline void parallel_for_c(std::ptrdiff_t n, int threads, std::ptrdiff_t grain, block_fn fn, void* ctx) {
    parallel_for(n, threads, grain, [&](std::ptrdiff_t b, std::ptrdiff_t e) { fn(ctx, b, e); });
}

}  // namespace cmr
