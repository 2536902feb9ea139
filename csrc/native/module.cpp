// pybind11 bindings of cmrsdk._native. The Python wrappers in cmrsdk/preprocess.py validate every
// argument first; these bindings only check what they must to stay memory-safe (dtype, ndim,
// sizes), and run every kernel with the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "components.hpp"
#include "parallel.hpp"
#include "resample.hpp"

namespace py = pybind11;

namespace {

// numpy's equivalence ("<i2" is int16 on a little-endian machine), not object identity.
template <class T>
bool is_dtype(const py::array& a) {
    return py::isinstance<py::array_t<T>>(a);
}

py::tuple resample(const py::array& pixels, std::ptrdiff_t out_y, std::ptrdiff_t out_x, int order, int threads) {
    if (pixels.ndim() != 3) throw std::invalid_argument("pixels must be 3-D (Z, Y, X)");
    if (order != 0 && order != 1 && order != 3) throw std::invalid_argument("order must be 0, 1 or 3");
    if (out_y < 1 || out_x < 1) throw std::invalid_argument("output shape must be positive");
    cmr::StridedStack in{static_cast<const char*>(pixels.data()), {}, {}};
    for (int i = 0; i < 3; ++i) {
        in.shape[i] = pixels.shape(i);
        in.strides[i] = pixels.strides(i);
        if (pixels.strides(i) % static_cast<py::ssize_t>(pixels.itemsize()) != 0) {
            throw std::invalid_argument("pixels strides must be multiples of the item size");
        }
    }
    if (in.shape[0] > 0 && (in.shape[1] < 1 || in.shape[2] < 1)) throw std::invalid_argument("pixels has an empty slice");
    py::array_t<float> out({in.shape[0], static_cast<py::ssize_t>(out_y), static_cast<py::ssize_t>(out_x)});
    float* dst = out.mutable_data();
    cmr::ResampleStatus status = cmr::kFinite;
    auto run = [&](auto tag) {
        using T = decltype(tag);
        py::gil_scoped_release release;
        status = cmr::resample_stack<T>(in, dst, out_y, out_x, order, threads);
    };
    if (is_dtype<std::uint8_t>(pixels)) run(std::uint8_t{});
    else if (is_dtype<std::int16_t>(pixels)) run(std::int16_t{});
    else if (is_dtype<std::uint16_t>(pixels)) run(std::uint16_t{});
    else if (is_dtype<float>(pixels)) run(float{});
    else if (is_dtype<double>(pixels)) run(double{});
    else throw std::invalid_argument("pixels dtype must be uint8, int16, uint16, float32 or float64 (native byte order)");
    return py::make_tuple(out, static_cast<int>(status));
}

using CFloat = py::array_t<float, py::array::c_style>;
using CByte = py::array_t<std::uint8_t, py::array::c_style>;

py::tuple resample_argmax(const CFloat& prob, std::ptrdiff_t ny, std::ptrdiff_t nx, std::ptrdiff_t ry,
                          std::ptrdiff_t rx, std::ptrdiff_t oy, std::ptrdiff_t ox, int threads) {
    if (prob.ndim() != 4) throw std::invalid_argument("probabilities must be 4-D (Z, C, H, W)");
    const std::ptrdiff_t nz = prob.shape(0), nc = prob.shape(1), h = prob.shape(2), w = prob.shape(3);
    if (nc < 1 || nc > 256 || h < 1 || w < 1) throw std::invalid_argument("probabilities need 1..256 classes and a non-empty window");
    if (ny < 1 || nx < 1 || ry < 1 || rx < 1) throw std::invalid_argument("native and resampled shapes must be positive");
    CByte out({static_cast<py::ssize_t>(nz), static_cast<py::ssize_t>(ny), static_cast<py::ssize_t>(nx)});
    std::uint8_t* dst = out.mutable_data();
    const float* src = prob.data();
    bool finite = true;
    {
        py::gil_scoped_release release;
        finite = cmr::resample_argmax(src, nz, nc, h, w, dst, ny, nx, ry, rx, oy, ox, threads);
    }
    return py::make_tuple(out, finite);
}

CByte largest_component(const CByte& labels, int connectivity, int threads) {
    if (labels.ndim() != 3) throw std::invalid_argument("labels must be 3-D (Z, Y, X)");
    if (connectivity != 6 && connectivity != 18 && connectivity != 26) {
        throw std::invalid_argument("connectivity must be 6, 18 or 26");
    }
    const std::ptrdiff_t nz = labels.shape(0), ny = labels.shape(1), nx = labels.shape(2);
    CByte out({static_cast<py::ssize_t>(nz), static_cast<py::ssize_t>(ny), static_cast<py::ssize_t>(nx)});
    std::uint8_t* dst = out.mutable_data();
    std::fill(dst, dst + out.size(), std::uint8_t{0});
    const std::uint8_t* src = labels.data();
    {
        py::gil_scoped_release release;
        cmr::largest_component(src, dst, nz, ny, nx, connectivity, threads);
    }
    return out;
}

// Test hook for tests/test_parallel.py, not part of the API: runs cmr::parallel_for over n items
// with a thread starter that throws `failure` ("system_error", "bad_alloc", "runtime_error" or
// "none") instead of starting worker thread number `fail_at` (1-based), and a block function that
// throws std::runtime_error on block `throw_in_block` (-1: none). Returns the (begin, end) of
// every call of the block function, sorted, and the number of worker threads started.
py::tuple parallel_for_probe(std::ptrdiff_t n, int threads, std::ptrdiff_t grain, int fail_at,
                             const std::string& failure, std::ptrdiff_t throw_in_block) {
    std::vector<std::pair<std::ptrdiff_t, std::ptrdiff_t>> calls;
    std::mutex calls_mutex;
    int started = 0;
    auto start = [&](std::vector<std::thread>& pool, auto& work) {
        if (started + 1 == fail_at) {
            if (failure == "system_error") throw std::system_error(std::make_error_code(std::errc::resource_unavailable_try_again));
            if (failure == "bad_alloc") throw std::bad_alloc();
            if (failure == "runtime_error") throw std::runtime_error("thread start failed (test)");
        }
        pool.emplace_back(work);
        ++started;
    };
    {
        py::gil_scoped_release release;
        cmr::parallel_for(n, threads, grain, [&](std::ptrdiff_t b, std::ptrdiff_t e) {
            {
                std::lock_guard<std::mutex> lock(calls_mutex);
                calls.emplace_back(b, e);
            }
            // Slow enough that the started workers are still busy when a later start fails.
            std::this_thread::sleep_for(std::chrono::microseconds(200));
            if (throw_in_block >= 0 && b == throw_in_block * grain) throw std::runtime_error("block failed (test)");
        }, start);
    }
    std::sort(calls.begin(), calls.end());
    py::list out;
    for (const auto& c : calls) out.append(py::make_tuple(c.first, c.second));
    return py::make_tuple(out, started);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
    m.doc() = "cmrsdk's native preprocessing core; call it through cmrsdk.preprocess, which validates.";
    m.def("resample", &resample, py::arg("pixels"), py::arg("out_y"), py::arg("out_x"), py::arg("order"),
          py::arg("threads"),
          "Resample (Z, Y, X) of uint8/int16/uint16/float32/float64, any strides, to float32 "
          "(Z, out_y, out_x). Returns (out, status): 0 finite, 1 input not finite, 2 output overflowed float32.");
    m.def("resample_argmax", &resample_argmax, py::arg("probabilities").noconvert(), py::arg("native_y"),
          py::arg("native_x"), py::arg("resampled_y"), py::arg("resampled_x"), py::arg("offset_y"),
          py::arg("offset_x"), py::arg("threads"),
          "Fused bilinear inverse resample of float32 C-contiguous (Z, C, H, W) probabilities and "
          "argmax to uint8 (Z, native_y, native_x). Returns (labels, finite).");
    m.def("largest_component", &largest_component, py::arg("labels").noconvert(), py::arg("connectivity"),
          py::arg("threads"), "Largest connected component per non-zero label of uint8 C-contiguous (Z, Y, X).");
    m.def("_parallel_for_probe", &parallel_for_probe, py::arg("n"), py::arg("threads"), py::arg("grain"),
          py::arg("fail_at"), py::arg("failure"), py::arg("throw_in_block"),
          "Test hook of cmr::parallel_for (tests/test_parallel.py); not part of the API.");
}
