// Python bindings of the stitching kernels (stitch.hpp): buffer checks, dtype dispatch, the
// GIL released around each call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "stitch.hpp"

namespace py = pybind11;
using namespace segrt::stitch;

namespace {
using segrt::stitch::Box;

// (C, D0, D1, D2) view of a C-contiguous array of rank `spatial + 1`
Box spatial_of(const py::array& a, int64_t* C) {
    if (!(a.flags() & py::array::c_style)) throw std::invalid_argument("stitch kernels need C-contiguous arrays");
    if (a.ndim() == 3) {
        *C = a.shape(0);
        return {1, a.shape(1), a.shape(2)};
    }
    if (a.ndim() == 4) {
        *C = a.shape(0);
        return {a.shape(1), a.shape(2), a.shape(3)};
    }
    throw std::invalid_argument("expected a (C, H, W) or (C, D, H, W) array");
}

Box box3(const std::vector<int64_t>& v) {
    if (v.size() == 2) return {0, v[0], v[1]};
    if (v.size() == 3) return {v[0], v[1], v[2]};
    throw std::invalid_argument("offsets and boxes need 2 or 3 entries");
}
Box size3(const std::vector<int64_t>& v) {
    if (v.size() == 2) return {1, v[0], v[1]};
    return box3(v);
}

template <typename T, typename S>
bool fma_typed(py::array dst, py::array src, py::array w, const Box& doff, const Box& soff, const Box& box,
               const Box& fresh, const Box& last, py::object count, int threads) {
    int64_t Cd, Cs, Cw;
    const Box ds = spatial_of(dst, &Cd), ss = spatial_of(src, &Cs);
    py::array wv = w.reshape(std::vector<py::ssize_t>{1, (py::ssize_t)ss[0], (py::ssize_t)ss[1], (py::ssize_t)ss[2]});
    const Box ws = spatial_of(wv, &Cw);
    if (Cd != Cs) throw std::invalid_argument("destination and prediction have different channel counts");
    if (ws != ss) throw std::invalid_argument("the weight map must have the window's shape");
    for (int k = 0; k < 3; ++k)
        if (doff[k] < 0 || soff[k] < 0 || box[k] < 0 || doff[k] + box[k] > ds[k] || soff[k] + box[k] > ss[k])
            throw std::invalid_argument("box outside the arrays");
    const bool divides = last[0] > 0 && last[1] > 0 && last[2] > 0 && box[0] > 0 && box[1] > 0 && box[2] > 0;
    const T* c = nullptr;
    py::array cv;
    if (divides) {
        if (count.is_none()) throw std::invalid_argument("a last box needs the count map");
        cv = py::array::ensure(count);
        if (!cv || !cv.dtype().is(dst.dtype())) throw std::invalid_argument("the count map must have the destination's dtype");
        int64_t one;
        py::array c4 = cv.reshape(std::vector<py::ssize_t>{1, (py::ssize_t)ds[0], (py::ssize_t)ds[1], (py::ssize_t)ds[2]});
        if (spatial_of(c4, &one) != ds) throw std::invalid_argument("the count map must have the destination's spatial shape");
        cv = c4;
        c = static_cast<const T*>(cv.data());
    }
    T* d = static_cast<T*>(dst.mutable_data());
    const S* s = static_cast<const S*>(src.data());
    const T* ww = static_cast<const T*>(wv.data());
    py::gil_scoped_release release;
    return segrt::stitch::box_fma<T, S>(d, Cd, ds, doff, s, ss, soff, ww, box, fresh, divides ? last : Box{0, 0, 0},
                                        c, threads);
}

template <typename T, typename L>
void argmax_typed(py::array acc, py::array labels, const Box& loff, int threads) {
    int64_t C, one;
    const Box bs = spatial_of(acc, &C);
    py::array lv = labels.ndim() == 2
                       ? labels.reshape(std::vector<py::ssize_t>{1, 1, labels.shape(0), labels.shape(1)})
                       : labels.reshape(std::vector<py::ssize_t>{1, labels.shape(0), labels.shape(1), labels.shape(2)});
    const Box ls = spatial_of(lv, &one);
    for (int k = 0; k < 3; ++k)
        if (loff[k] < 0 || loff[k] + bs[k] > ls[k]) throw std::invalid_argument("block outside the label array");
    const T* a = static_cast<const T*>(acc.data());
    L* l = static_cast<L*>(lv.mutable_data());
    py::gil_scoped_release release;
    segrt::stitch::argmax_block<T, L>(a, C, bs, l, ls, loff, threads);
}
}  // namespace

template <typename T>
void divide_typed(py::array out, py::array count, int threads) {
    if (!(out.flags() & py::array::c_style) || !(count.flags() & py::array::c_style))
        throw std::invalid_argument("stitch_divide needs C-contiguous arrays");
    const int64_t vox = count.size();
    if (vox == 0 || out.size() % vox != 0) throw std::invalid_argument("count does not broadcast over out");
    T* o = static_cast<T*>(out.mutable_data());
    const T* c = static_cast<const T*>(count.data());
    const int64_t lead = out.size() / vox;
    py::gil_scoped_release release;
    segrt::stitch::divide_by<T>(o, lead, c, vox, threads);
}

void bind_stitch(py::module_& m) {
    // zero a fresh buffer on all cores: its pages are first touched (and cleared by the OS) in parallel
    m.def(
        "stitch_zero",
        [](py::array out, int threads) {
            if (!(out.flags() & py::array::c_style)) throw std::invalid_argument("stitch_zero needs a C-contiguous array");
            char* p = static_cast<char*>(out.mutable_data());
            const int64_t bytes = (int64_t)out.nbytes();
            const int64_t chunk = 1 << 20;
            py::gil_scoped_release release;
            segrt::parallel_for((bytes + chunk - 1) / chunk, threads, [&](int64_t a, int64_t b) {
                for (int64_t i = a; i < b; ++i) std::memset(p + i * chunk, 0, (size_t)std::min(chunk, bytes - i * chunk));
            });
        },
        py::arg("out"), py::arg("threads") = 0);
    m.def(
        "stitch_divide",
        [](py::array out, py::array count, int threads) {
            if (!out.dtype().is(count.dtype())) throw std::invalid_argument("out and count need the same dtype");
            if (out.dtype().is(py::dtype::of<float>())) return divide_typed<float>(out, count, threads);
            if (out.dtype().is(py::dtype::of<double>())) return divide_typed<double>(out, count, threads);
            throw std::invalid_argument("stitch_divide supports float32 / float64");
        },
        py::arg("out"), py::arg("count"), py::arg("threads") = 0);
    m.def(
        "stitch_fma",
        [](py::array dst, py::array src, py::array w, std::vector<int64_t> dst_off, std::vector<int64_t> src_off,
           std::vector<int64_t> box, py::object fresh, py::object last, py::object count, int threads) {
            const Box doff = box3(dst_off), soff = box3(src_off), bx = size3(box);
            // fresh defaults to the box (add everywhere), last to nothing (divide nowhere); a 2D
            // fresh pads with 0 (every row of the one plane), a 2D last with 1
            const Box fr = fresh.is_none() ? bx : box3(fresh.cast<std::vector<int64_t>>());
            const Box la = last.is_none() ? Box{0, 0, 0} : size3(last.cast<std::vector<int64_t>>());
            const auto dt = dst.dtype(), st = src.dtype(), wt = w.dtype();
            if (!wt.is(dt)) throw std::invalid_argument("the weight map must have the destination's dtype");
            if (dt.is(py::dtype::of<float>())) {
                if (st.is(py::dtype::of<float>())) return fma_typed<float, float>(dst, src, w, doff, soff, bx, fr, la, count, threads);
                if (st.is(py::dtype::of<double>())) return fma_typed<float, double>(dst, src, w, doff, soff, bx, fr, la, count, threads);
            } else if (dt.is(py::dtype::of<double>())) {
                if (st.is(py::dtype::of<float>())) return fma_typed<double, float>(dst, src, w, doff, soff, bx, fr, la, count, threads);
                if (st.is(py::dtype::of<double>())) return fma_typed<double, double>(dst, src, w, doff, soff, bx, fr, la, count, threads);
            }
            throw std::invalid_argument("stitch_fma supports float32 / float64 arrays");
        },
        py::arg("dst"), py::arg("src"), py::arg("weight"), py::arg("dst_off"), py::arg("src_off"), py::arg("box"),
        py::arg("fresh") = py::none(), py::arg("last") = py::none(), py::arg("count") = py::none(),
        py::arg("threads") = 0);
    m.def(
        "stitch_argmax",
        [](py::array acc, py::array labels, std::vector<int64_t> label_off, int threads) {
            const Box loff = box3(label_off);
            const auto at = acc.dtype(), lt = labels.dtype();
            const bool f32 = at.is(py::dtype::of<float>()), f64 = at.is(py::dtype::of<double>());
            if (!(labels.flags() & py::array::c_style)) throw std::invalid_argument("labels must be C-contiguous");
            if (f32 && lt.is(py::dtype::of<uint8_t>())) return argmax_typed<float, uint8_t>(acc, labels, loff, threads);
            if (f32 && lt.is(py::dtype::of<uint16_t>())) return argmax_typed<float, uint16_t>(acc, labels, loff, threads);
            if (f64 && lt.is(py::dtype::of<uint8_t>())) return argmax_typed<double, uint8_t>(acc, labels, loff, threads);
            if (f64 && lt.is(py::dtype::of<uint16_t>())) return argmax_typed<double, uint16_t>(acc, labels, loff, threads);
            throw std::invalid_argument("stitch_argmax supports float32 / float64 scores and uint8 / uint16 labels");
        },
        py::arg("acc"), py::arg("labels"), py::arg("label_off"), py::arg("threads") = 0);
}
