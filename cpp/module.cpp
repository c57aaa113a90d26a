// The one pybind11 module, segrt.kernels._C: build facts, then each op's bindings
// (cpp/<op>/bindings.cpp). Adding an op: see cpp/README.md.
#include <pybind11/pybind11.h>

#include "parallel.hpp"
#include "starnms/clipper_bridge.hpp"

namespace py = pybind11;

void bind_starnms(py::module_& m);  // starnms/bindings.cpp
void bind_label(py::module_& m);    // label/bindings.cpp
void bind_stitch(py::module_& m);   // stitch/bindings.cpp
void bind_overlay(py::module_& m);  // overlay/bindings.cpp

PYBIND11_MODULE(_C, m) {
    m.doc() = "segrt compiled kernels";
#if SEGRT_HAVE_OPENMP
    m.attr("has_openmp") = true;
#else
    m.attr("has_openmp") = false;
#endif
    m.attr("has_clipper") = segrt::starnms::clipper_available();
    m.def("max_threads", []() { return segrt::effective_threads(0); });
    bind_starnms(m);
    bind_label(m);
    bind_stitch(m);
    bind_overlay(m);
}
