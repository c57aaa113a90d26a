// Python bindings of the connected-component kernels (cpp/label.hpp). Inputs arrive as
// C-contiguous unsigned integer arrays (segrt.kernels.label views bool / signed data and
// transposes Fortran-ordered data before calling).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <numeric>
#include <string>

#include "label.hpp"

namespace py = pybind11;
using namespace segrt::label;

namespace {

struct Shape3 {
    int64_t Z, Y, X;
    bool is3d;
};

Shape3 shape_of(const py::array& a) {
    if (a.ndim() == 2) return {1, a.shape(0), a.shape(1), false};
    if (a.ndim() == 3) return {a.shape(0), a.shape(1), a.shape(2), true};
    throw std::invalid_argument("expected a 2D or 3D array");
}

template <typename T, typename C>
Runs<T, C> runs_of(const py::array& img, int connectivity, int threads) {
    const Shape3 s = shape_of(img);
    const T* data = static_cast<const T*>(img.data());
    py::gil_scoped_release release;
    Runs<T, C> R = build_runs<T, C>(data, s.Z, s.Y, s.X, connectivity, s.is3d, threads);
    number_components(R);
    return R;
}

// Builds the runs (16-bit x coordinates when rows allow) and hands them to fn.
template <typename T, typename F>
py::tuple with_runs(const py::array& img, int connectivity, int threads, F&& fn) {
    if (!(img.flags() & py::array::c_style)) throw std::invalid_argument("expected a C-contiguous array");
    if (shape_of(img).X <= 0xFFFF) {
        auto R = runs_of<T, uint16_t>(img, connectivity, threads);
        return fn(R);
    }
    auto R = runs_of<T, uint32_t>(img, connectivity, threads);
    return fn(R);
}

std::vector<py::ssize_t> dims(const py::array& a) { return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim()); }

template <typename L, typename R_>
py::array labels_as(const R_& R, const py::array& img, int threads) {
    py::array_t<L> out(dims(img));
    L* o = out.mutable_data();
    {
        py::gil_scoped_release release;
        fill_rows(R, o, threads, [&](int64_t k) { return R.parent[k]; });
    }
    return std::move(out);
}

template <typename T>
py::tuple connected_components(const py::array& img, int connectivity, const std::string& out_dtype, int threads) {
    std::string dt = out_dtype;
    if (!dt.empty() && dt != "uint8" && dt != "uint16" && dt != "uint32" && dt != "uint64")
        throw std::invalid_argument("out_dtype must be uint8, uint16, uint32 or uint64, got " + dt);
    return with_runs<T>(img, connectivity, threads, [&](auto& R) {
        const int64_t n = R.components;
        if (dt.empty()) dt = n <= 0xFFFF ? "uint16" : (n <= 0xFFFFFFFFll ? "uint32" : "uint64");
        const int64_t cap = dt == "uint8" ? 0xFF : dt == "uint16" ? 0xFFFF : dt == "uint32" ? 0xFFFFFFFFll : INT64_MAX;
        if (n > cap)
            throw std::invalid_argument("the image has " + std::to_string(n) + " components, more than " + dt +
                                        " can number; pass a wider out_dtype");
        std::vector<T>().swap(R.value);  // not needed for the labels: free it before the output
        py::array out;
        if (dt == "uint8") out = labels_as<uint8_t>(R, img, threads);
        else if (dt == "uint16") out = labels_as<uint16_t>(R, img, threads);
        else if (dt == "uint32") out = labels_as<uint32_t>(R, img, threads);
        else out = labels_as<uint64_t>(R, img, threads);
        return py::make_tuple(out, n);
    });
}

// The clean-ups: decide(size, value, n, keep) clears keep[label] of the components to drop
// and returns how many; the image is then written once with those components zeroed.
template <typename T, typename Decide>
py::tuple clean_up(const py::array& img, int connectivity, int threads, Decide&& decide) {
    return with_runs<T>(img, connectivity, threads, [&](auto& R) {
        py::array_t<T> out(dims(img));
        T* o = out.mutable_data();
        int64_t removed = 0;
        {
            py::gil_scoped_release release;
            const auto size = component_sizes(R);
            const auto value = component_values(R);
            std::vector<uint8_t> keep(R.components + 1, 1);
            removed = decide(size, value, R.components, keep);
            fill_rows(R, o, threads, [&](int64_t k) { return keep[R.parent[k]] ? R.value[k] : (T)0; });
        }
        return py::make_tuple(out, removed);
    });
}

// Per-class size thresholds: classes (sorted) and their sizes, `fallback` for the rest.
template <typename T>
py::tuple remove_small(const py::array& img, int connectivity, py::array_t<uint64_t> classes,
                       py::array_t<int64_t> sizes, int64_t fallback, int threads) {
    const uint64_t* cls = classes.data();
    const int64_t* sz = sizes.data();
    const int64_t nc = classes.size();
    return clean_up<T>(img, connectivity, threads, [&](const auto& size, const auto& value, int64_t n, auto& keep) {
        int64_t removed = 0;
        for (int64_t l = 1; l <= n; ++l) {
            int64_t need = fallback;
            const uint64_t v = (uint64_t)value[l];
            const uint64_t* it = std::lower_bound(cls, cls + nc, v);
            if (it != cls + nc && *it == v) need = sz[it - cls];
            if ((int64_t)size[l] < need) keep[l] = 0, ++removed;
        }
        return removed;
    });
}

// k largest components per class (or overall), ties to the first in raster order.
template <typename T>
py::tuple keep_largest(const py::array& img, int connectivity, int64_t k, std::vector<uint64_t> listed, bool all,
                       bool per_class, int threads) {
    std::sort(listed.begin(), listed.end());
    return clean_up<T>(img, connectivity, threads, [&](const auto& size, const auto& value, int64_t n, auto& keep) {
        int64_t removed = 0;
        std::vector<int64_t> order(n);
        std::iota(order.begin(), order.end(), 1);
        if (per_class) {
            // by class, then size descending, then first voxel (label ascending)
            std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
                if (value[a] != value[b]) return value[a] < value[b];
                if (size[a] != size[b]) return size[a] > size[b];
                return a < b;
            });
            int64_t rank = 0;
            for (int64_t i = 0; i < n; ++i) {
                const int64_t l = order[i];
                rank = (i > 0 && value[order[i - 1]] == value[l]) ? rank + 1 : 0;
                const bool chosen = all || std::binary_search(listed.begin(), listed.end(), (uint64_t)value[l]);
                if (chosen && rank >= k) keep[l] = 0, ++removed;
            }
        } else {
            std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
                if (size[a] != size[b]) return size[a] > size[b];
                return a < b;
            });
            for (int64_t i = k; i < n; ++i) keep[order[i]] = 0, ++removed;
        }
        return removed;
    });
}

template <typename L>
py::tuple statistics(const py::array& labels, int64_t max_label, int threads) {
    if (!(labels.flags() & py::array::c_style)) throw std::invalid_argument("expected a C-contiguous array");
    std::vector<int64_t> shape(labels.shape(), labels.shape() + labels.ndim());
    const int nd = (int)shape.size();
    py::array_t<uint64_t> counts(max_label + 1);
    py::array_t<int64_t> bbox({(py::ssize_t)(max_label + 1), (py::ssize_t)(2 * nd)});
    py::array_t<double> sums({(py::ssize_t)(max_label + 1), (py::ssize_t)nd});
    const L* data = static_cast<const L*>(labels.data());
    uint64_t* c = counts.mutable_data();
    int64_t* b = bbox.mutable_data();
    double* s = sums.mutable_data();
    {
        py::gil_scoped_release release;
        label_statistics<L>(data, shape, max_label, c, b, s, threads);
    }
    return py::make_tuple(counts, bbox, sums);
}

// dispatch on the unsigned width of the input
template <template <typename> class Op, typename... Args>
auto by_width(const py::array& a, Args&&... args) {
    switch (a.itemsize()) {
        case 1: return Op<uint8_t>::run(a, std::forward<Args>(args)...);
        case 2: return Op<uint16_t>::run(a, std::forward<Args>(args)...);
        case 4: return Op<uint32_t>::run(a, std::forward<Args>(args)...);
        case 8: return Op<uint64_t>::run(a, std::forward<Args>(args)...);
    }
    throw std::invalid_argument("expected 1, 2, 4 or 8 byte integers");
}

template <typename T>
struct CC {
    static py::tuple run(const py::array& a, int c, const std::string& dt, int th) {
        return connected_components<T>(a, c, dt, th);
    }
};
template <typename T>
struct RS {
    static py::tuple run(const py::array& a, int c, py::array_t<uint64_t> cls, py::array_t<int64_t> sz, int64_t fb,
                         int th) {
        return remove_small<T>(a, c, cls, sz, fb, th);
    }
};
template <typename T>
struct KL {
    static py::tuple run(const py::array& a, int c, int64_t k, std::vector<uint64_t> cls, bool all, bool pc, int th) {
        return keep_largest<T>(a, c, k, cls, all, pc, th);
    }
};
template <typename T>
struct ST {
    static py::tuple run(const py::array& a, int64_t m, int th) { return statistics<T>(a, m, th); }
};

}  // namespace

void bind_label(py::module_& m) {
    m.def(
        "label_connected_components",
        [](py::array img, int connectivity, std::string out_dtype, int threads) {
            return by_width<CC>(img, connectivity, out_dtype, threads);
        },
        py::arg("img"), py::arg("connectivity"), py::arg("out_dtype") = "", py::arg("threads") = 0);
    m.def(
        "label_remove_small",
        [](py::array img, int connectivity, py::array_t<uint64_t> classes, py::array_t<int64_t> sizes,
           int64_t fallback, int threads) { return by_width<RS>(img, connectivity, classes, sizes, fallback, threads); },
        py::arg("img"), py::arg("connectivity"), py::arg("classes"), py::arg("sizes"), py::arg("fallback"),
        py::arg("threads") = 0);
    m.def(
        "label_keep_largest",
        [](py::array img, int connectivity, int64_t k, std::vector<uint64_t> classes, bool all_classes, bool per_class,
           int threads) { return by_width<KL>(img, connectivity, k, classes, all_classes, per_class, threads); },
        py::arg("img"), py::arg("connectivity"), py::arg("k"), py::arg("classes"), py::arg("all_classes"),
        py::arg("per_class"), py::arg("threads") = 0);
    m.def(
        "label_statistics",
        [](py::array labels, int64_t max_label, int threads) { return by_width<ST>(labels, max_label, threads); },
        py::arg("labels"), py::arg("max_label"), py::arg("threads") = 0);
}
