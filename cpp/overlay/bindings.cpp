// Python bindings of the overlay blend (overlay.hpp): buffer checks, the GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "overlay.hpp"

namespace py = pybind11;
using namespace segrt::overlay;

void bind_overlay(py::module_& m) {
    m.def(
        "blend_labels",
        [](py::array_t<uint8_t> frame, py::array_t<uint8_t> labels, py::array_t<uint8_t> palette, int a,
           py::array_t<uint8_t> out, int threads) {
            const auto cflags = py::array::c_style;
            if (!(frame.flags() & cflags) || !(labels.flags() & cflags) || !(palette.flags() & cflags) ||
                !(out.flags() & cflags))
                throw std::invalid_argument("blend_labels needs C-contiguous arrays");
            if (frame.ndim() != 3 || frame.shape(2) != 3 || labels.ndim() != 2 || palette.ndim() != 2 ||
                palette.shape(1) != 3 || palette.shape(0) < 1 || out.ndim() != 3 || out.shape(0) != frame.shape(0) ||
                out.shape(1) != frame.shape(1) || out.shape(2) != 3)
                throw std::invalid_argument("blend_labels takes frame (H, W, 3), labels (h, w), palette (K, 3), "
                                            "out (H, W, 3)");
            if (a < 0 || a > 256) throw std::invalid_argument("blend_labels: a must be in [0, 256]");
            const int64_t H = frame.shape(0), W = frame.shape(1), h = labels.shape(0), w = labels.shape(1);
            if (h < 1 || w < 1) throw std::invalid_argument("blend_labels: labels must not be empty");
            const uint8_t* f = frame.data();
            const uint8_t* l = labels.data();
            const uint8_t* p = palette.data();
            uint8_t* o = out.mutable_data();
            const int64_t K = palette.shape(0);
            py::gil_scoped_release release;
            segrt::overlay::blend_labels(f, H, W, l, h, w, p, K, a, o, threads);
        },
        py::arg("frame"), py::arg("labels"), py::arg("palette"), py::arg("a"), py::arg("out"), py::arg("threads") = 1);
}
