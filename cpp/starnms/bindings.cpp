// Python bindings of the star-convex NMS kernels (starnms.hpp): thin wrappers that check
// buffers, release the GIL and call the plain C++ kernels.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "clipper_bridge.hpp"
#include "../parallel.hpp"
#include "starnms.hpp"

namespace py = pybind11;
using namespace segrt::starnms;

template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

namespace {

template <typename T>
py::object select_candidates_py(carray<T> prob, double thresh, std::vector<int64_t> lo, std::vector<int64_t> hi,
                                py::object dist_obj) {
    std::vector<int64_t> shape(prob.shape(), prob.shape() + prob.ndim());
    if (lo.size() != shape.size() || hi.size() != shape.size())
        throw std::invalid_argument("border bounds must have one entry per axis");
    // dist given: the candidates' rays are checked and measured on the way (RayCheck), and
    // (candidates, longest ray) comes back
    carray<float> dist;
    RayCheck check;
    if (!dist_obj.is_none()) {
        dist = dist_obj.cast<carray<float>>();
        if (dist.ndim() != 2 || dist.shape(0) != prob.size())
            throw std::invalid_argument("dist must hold one row of rays per cell of prob");
        check.dist = dist.data();
        check.n_rays = (int)dist.shape(1);
    }
    std::vector<int64_t> idx;
    int64_t nan_count = 0;
    {
        py::gil_scoped_release release;
        idx = select_candidates<T>(prob.data(), shape, (T)thresh, lo, hi, nan_count,
                                   check.dist ? &check : nullptr);
    }
    if (nan_count) throw std::invalid_argument("prob contains " + std::to_string(nan_count) + " NaN value(s)");
    if (check.bad) throw std::invalid_argument("dist of a candidate holds NaN, infinite or negative values, or rays longer than 3e38 (the kernels compute areas of such polygons in float)");
    py::array_t<int64_t> out(idx.size());
    std::copy(idx.begin(), idx.end(), out.mutable_data());
    if (!check.dist) return std::move(out);
    return py::make_tuple(out, check.longest);
}

py::dict stats_2d(const Nms2DStats& s) {
    py::dict d;
    d["candidates"] = s.candidates;
    d["kept"] = s.kept;
    d["pairs_considered"] = s.pairs_considered;
    d["pairs_bound_rejected"] = s.pairs_bound_rejected;
    d["pairs_exact_star"] = s.pairs_exact_star;
    d["pairs_exact_general"] = s.pairs_exact_general;
    d["pairs_exact_two_star"] = s.pairs_exact_two_star;
    d["pairs_lower_bound"] = s.pairs_lower_bound;
    d["candidates_pushed"] = s.candidates_pushed;
    d["pairs_upper_bound"] = s.pairs_upper_bound;
    d["pairs_clipper"] = s.pairs_clipper;
    d["seconds_prepare"] = s.seconds_prepare;
    d["seconds_suppress"] = s.seconds_suppress;
    return d;
}

py::dict stats_3d(const Nms3DStats& s) {
    py::dict d;
    d["candidates"] = s.candidates;
    d["kept"] = s.kept;
    d["pairs_considered"] = s.pairs_considered;
    d["decided_upper_bound"] = s.decided_upper_bound;
    d["decided_inner_sphere"] = s.decided_inner_sphere;
    d["decided_kernel"] = s.decided_kernel;
    d["decided_hull"] = s.decided_hull;
    d["decided_render"] = s.decided_render;
    d["hull_skipped"] = s.hull_skipped;
    d["kernel_tested"] = s.kernel_tested;
    d["hull_tested"] = s.hull_tested;
    d["seconds_kernel"] = s.seconds_kernel;
    d["seconds_hull"] = s.seconds_hull;
    d["seconds_render"] = s.seconds_render;
    d["seconds_hull_build"] = s.seconds_hull_build;
    d["anisotropy"] = py::make_tuple(s.aniso[0], s.aniso[1], s.aniso[2]);
    return d;
}

}  // namespace

void bind_starnms(py::module_& m) {
    m.def(
        "clipper_intersection_area",
        [](carray<int64_t> a, carray<int64_t> b) {
            if (!clipper_available()) throw std::runtime_error("segrt was built without libpolyclipping");
            return clipper_intersection_area(a.data(), (int)a.shape(0), b.data(), (int)b.shape(0));
        },
        py::arg("a"), py::arg("b"));

    m.def("select_candidates", &select_candidates_py<float>, py::arg("prob"), py::arg("thresh"), py::arg("lo"),
          py::arg("hi"), py::arg("dist") = py::none());
    m.def("select_candidates", &select_candidates_py<double>, py::arg("prob"), py::arg("thresh"), py::arg("lo"),
          py::arg("hi"), py::arg("dist") = py::none());

    m.def(
        "nms_2d",
        [](carray<float> dist, carray<int64_t> order, int64_t width, int gy, int gx, float thresh, int n_threads,
           py::object rows_obj, float longest_ray) {
            if (dist.ndim() != 2) throw std::invalid_argument("dist must be (cells, n_rays)");
            const int n_rays = (int)dist.shape(1);
            const int64_t n = order.size();
            const int64_t cells = dist.shape(0);
            const int64_t* o = order.data();
            // rows: candidate i's distances are row rows[i] of dist (compact storage);
            // without it, row order[i] (dist holds every cell)
            carray<int64_t> rows;
            const int64_t* r = o;
            if (!rows_obj.is_none()) {
                rows = rows_obj.cast<carray<int64_t>>();
                if (rows.size() != n) throw std::invalid_argument("rows must hold one row per candidate");
                r = rows.data();
            }
            for (int64_t i = 0; i < n; ++i)
                if (o[i] < 0 || r[i] < 0 || r[i] >= cells) throw std::invalid_argument("candidate index out of range");
            std::vector<uint8_t> keep;
            Nms2DStats st;
            {
                py::gil_scoped_release release;
                keep = nms_2d(dist.data(), n_rays, o, n, width, gy, gx, thresh, n_threads, &st, r == o ? nullptr : r,
                              longest_ray);
            }
            py::array_t<bool> out(n);
            bool* p = out.mutable_data();
            for (int64_t i = 0; i < n; ++i) p[i] = keep[i] != 0;
            return py::make_tuple(out, stats_2d(st));
        },
        py::arg("dist"), py::arg("order"), py::arg("width"), py::arg("grid_y"), py::arg("grid_x"),
        py::arg("thresh"), py::arg("n_threads") = 0, py::arg("rows") = py::none(),
        // select_candidates(dist=...)'s longest ray for these candidates: their rows were checked then
        py::arg("longest_ray") = -1.0f);

    m.def(
        "decide_pairs_2d",
        [](carray<float> dist, carray<int64_t> cells, int64_t width, int gy, int gx, carray<int64_t> pairs,
           float thresh, int n_threads) {
            if (dist.ndim() != 2 || cells.size() != dist.shape(0))
                throw std::invalid_argument("dist must be (n, n_rays) rows for the n cells");
            if (pairs.ndim() != 2 || pairs.shape(1) != 2) throw std::invalid_argument("pairs must be (n_pairs, 2)");
            const int64_t* p = pairs.data();
            for (int64_t k = 0; k < pairs.size(); ++k)
                if (p[k] < 0 || p[k] >= dist.shape(0)) throw std::invalid_argument("pair index out of range");
            std::vector<uint8_t> out;
            {
                py::gil_scoped_release release;
                out = decide_pairs_2d(dist.data(), (int)dist.shape(1), cells.data(), width, gy, gx, p, pairs.shape(0),
                                      thresh, n_threads);
            }
            py::array_t<bool> res(pairs.shape(0));
            bool* r = res.mutable_data();
            for (size_t k = 0; k < out.size(); ++k) r[k] = out[k] != 0;
            return res;
        },
        py::arg("dist"), py::arg("cells"), py::arg("width"), py::arg("grid_y"), py::arg("grid_x"), py::arg("pairs"),
        py::arg("thresh"), py::arg("n_threads") = 0);

    m.def(
        "certify_2d",
        [](carray<float> dist, carray<int64_t> order, carray<int64_t> rows, int64_t width, int gy, int gx, float thresh,
           carray<bool> keep, carray<bool> exposed) {
            if (dist.ndim() != 2) throw std::invalid_argument("dist must be (rows, n_rays)");
            const int64_t n = order.size();
            if (rows.size() != n || keep.size() != n || exposed.size() != n)
                throw std::invalid_argument("order, rows, keep and exposed must hold one value per candidate");
            const int64_t* r = rows.data();
            for (int64_t i = 0; i < n; ++i)
                if (order.data()[i] < 0 || r[i] < 0 || r[i] >= dist.shape(0))
                    throw std::invalid_argument("candidate index out of range");
            std::vector<uint8_t> k(n), e(n), out;
            for (int64_t i = 0; i < n; ++i) k[i] = keep.data()[i], e[i] = exposed.data()[i];
            {
                py::gil_scoped_release release;
                out = certify_2d(dist.data(), (int)dist.shape(1), order.data(), r, n, width, gy, gx, thresh, k.data(),
                                 e.data());
            }
            py::array_t<bool> res(n);
            bool* p = res.mutable_data();
            for (int64_t i = 0; i < n; ++i) p[i] = out[i] != 0;
            return res;
        },
        py::arg("dist"), py::arg("order"), py::arg("rows"), py::arg("width"), py::arg("grid_y"), py::arg("grid_x"),
        py::arg("thresh"), py::arg("keep"), py::arg("exposed"));

    m.def(
        "polygon_overlap_bounds_2d",
        [](carray<int64_t> a, int64_t ax, int64_t ay, carray<int64_t> b, int64_t bx, int64_t by, bool portable) {
            if (a.ndim() != 2 || a.shape(1) != 2 || b.ndim() != 2 || b.shape(1) != 2)
                throw std::invalid_argument("polygons must be (n, 2) integer (x, y) vertices");
            const OverlapBounds r = polygon_overlap_bounds_2d(a.data(), (int)a.shape(0), ax, ay, b.data(),
                                                              (int)b.shape(0), bx, by, portable);
            return py::make_tuple(r.lower, r.upper);
        },
        py::arg("a"), py::arg("ax"), py::arg("ay"), py::arg("b"), py::arg("bx"), py::arg("by"),
        py::arg("portable") = false);
    m.attr("star_bound_vectorised") = star_bound_vectorised();
    m.def(
        "push_bounds_2d",
        [](carray<int64_t> a, int64_t ax, int64_t ay, carray<float> dist, carray<int64_t> cells, int64_t width,
           int grid_y, int grid_x) -> py::object {
            if (a.ndim() != 2 || a.shape(1) != 2) throw std::invalid_argument("a must be (n, 2) integer (x, y) vertices");
            if (dist.ndim() != 2) throw std::invalid_argument("dist must be (cells, n_rays)");
            const int64_t m = cells.size();
            for (int64_t i = 0; i < m; ++i)
                if (cells.data()[i] < 0 || cells.data()[i] >= dist.shape(0)) throw std::invalid_argument("cell out of range");
            PushCheck r;
            bool ok;
            {
                py::gil_scoped_release release;
                ok = push_bounds_2d(a.data(), (int)a.shape(0), ax, ay, dist.data(), (int)dist.shape(1), cells.data(), m,
                                    width, grid_y, grid_x, &r);
            }
            if (!ok) return py::none();
            auto f64 = [](const std::vector<double>& v) { return py::array_t<double>((py::ssize_t)v.size(), v.data()); };
            auto i64 = [](const std::vector<int64_t>& v) { return py::array_t<int64_t>((py::ssize_t)v.size(), v.data()); };
            auto u8 = [](const std::vector<uint8_t>& v) { return py::array_t<bool>((py::ssize_t)v.size(), (const bool*)v.data()); };
            py::dict d;
            d["lanes_done"] = r.lanes_done;
            d["lower_lanes"] = f64(r.lower_lanes);
            d["lower_scalar"] = f64(r.lower_scalar);
            d["area2_lanes"] = i64(r.area2_lanes);
            d["area2_scalar"] = i64(r.area2_scalar);
            d["fallback"] = u8(r.fallback);
            d["made_scalar"] = u8(r.made_scalar);
            return d;
        },
        py::arg("a"), py::arg("ax"), py::arg("ay"), py::arg("dist"), py::arg("cells"), py::arg("width"),
        py::arg("grid_y") = 1, py::arg("grid_x") = 1);

    m.def(
        "polygon_overlap_2d",
        [](carray<int64_t> a, int64_t ax, int64_t ay, carray<int64_t> b, int64_t bx, int64_t by, int force) {
            if (a.ndim() != 2 || a.shape(1) != 2 || b.ndim() != 2 || b.shape(1) != 2)
                throw std::invalid_argument("polygons must be (n, 2) integer (x, y) vertices");
            const PairOverlap r = polygon_overlap_2d(a.data(), (int)a.shape(0), ax, ay, b.data(), (int)b.shape(0), bx,
                                                     by, force);
            return py::make_tuple(r.inter, r.area_a, r.area_b, r.method);
        },
        py::arg("a"), py::arg("ax"), py::arg("ay"), py::arg("b"), py::arg("bx"), py::arg("by"),
        py::arg("force") = 0);

    m.def(
        "nms_3d",
        [](carray<float> dist, carray<float> points, carray<float> verts, carray<int32_t> faces, float thresh,
           int n_threads, py::object aniso_obj, bool with_suppressors) {
            if (dist.ndim() != 2 || points.ndim() != 2 || points.shape(1) != 3 || points.shape(0) != dist.shape(0))
                throw std::invalid_argument("dist must be (n, n_rays) and points (n, 3)");
            if (verts.ndim() != 2 || verts.shape(1) != 3 || verts.shape(0) != dist.shape(1))
                throw std::invalid_argument("verts must be (n_rays, 3)");
            if (faces.ndim() != 2 || faces.shape(1) != 3) throw std::invalid_argument("faces must be (n_faces, 3)");
            const int32_t* f = faces.data();
            for (int64_t k = 0; k < faces.size(); ++k)
                if (f[k] < 0 || f[k] >= verts.shape(0)) throw std::invalid_argument("face index out of range");
            // the sphere tests' axis scale, when the candidates are a subset of a larger set
            float aniso[3] = {1, 1, 1};
            if (!aniso_obj.is_none()) {
                const auto given = aniso_obj.cast<std::vector<float>>();
                if (given.size() != 3) throw std::invalid_argument("aniso must be 3 numbers");
                for (int k = 0; k < 3; ++k) aniso[k] = given[k];
            }
            std::vector<uint8_t> keep;
            Nms3DStats st;
            py::array_t<int64_t> by(with_suppressors ? dist.shape(0) : 0);
            {
                py::gil_scoped_release release;
                keep = nms_3d(dist.data(), points.data(), dist.shape(0), (int)dist.shape(1), verts.data(), f,
                              (int)faces.shape(0), thresh, n_threads, &st, aniso_obj.is_none() ? nullptr : aniso,
                              with_suppressors ? by.mutable_data() : nullptr);
            }
            py::array_t<bool> out(dist.shape(0));
            bool* p = out.mutable_data();
            for (size_t i = 0; i < keep.size(); ++i) p[i] = keep[i] != 0;
            if (with_suppressors) return py::tuple(py::make_tuple(out, stats_3d(st), by));
            return py::tuple(py::make_tuple(out, stats_3d(st)));
        },
        py::arg("dist"), py::arg("points"), py::arg("verts"), py::arg("faces"), py::arg("thresh"),
        py::arg("n_threads") = 0, py::arg("aniso") = py::none(), py::arg("suppressors") = false);

    m.def(
        "boxes_3d",
        [](carray<float> dist, carray<float> points, carray<float> verts) {
            if (dist.ndim() != 2 || points.ndim() != 2 || points.shape(1) != 3 || points.shape(0) != dist.shape(0) ||
                verts.ndim() != 2 || verts.shape(1) != 3 || verts.shape(0) != dist.shape(1))
                throw std::invalid_argument("dist must be (n, n_rays), points (n, 3) and verts (n_rays, 3)");
            py::array_t<int32_t> out({dist.shape(0), (py::ssize_t)6});
            boxes_3d(dist.data(), points.data(), dist.shape(0), (int)dist.shape(1), verts.data(), out.mutable_data());
            return out;
        },
        py::arg("dist"), py::arg("points"), py::arg("verts"));

    m.def(
        "certify_3d",
        [](carray<float> dist, carray<float> points, carray<float> verts, carray<int32_t> faces, float thresh,
           std::vector<float> aniso, carray<bool> keep, carray<int64_t> suppressor, carray<bool> exposed,
           carray<int64_t> reach) {
            const int64_t n = dist.ndim() == 2 ? dist.shape(0) : -1;
            if (n < 0 || points.ndim() != 2 || points.shape(0) != n || points.shape(1) != 3 || verts.ndim() != 2 ||
                verts.shape(1) != 3 || verts.shape(0) != dist.shape(1) || faces.ndim() != 2 || faces.shape(1) != 3)
                throw std::invalid_argument("dist (n, n_rays), points (n, 3), verts (n_rays, 3), faces (n_faces, 3)");
            if (keep.size() != n || suppressor.size() != n || exposed.size() != n || reach.size() != n)
                throw std::invalid_argument("keep, suppressor, exposed and reach must hold one value per candidate");
            if (aniso.size() != 3) throw std::invalid_argument("aniso must be 3 numbers");
            const int32_t* f = faces.data();
            for (int64_t k = 0; k < faces.size(); ++k)
                if (f[k] < 0 || f[k] >= verts.shape(0)) throw std::invalid_argument("face index out of range");
            std::vector<uint8_t> k(n), e(n), out;
            for (int64_t i = 0; i < n; ++i) k[i] = keep.data()[i], e[i] = exposed.data()[i];
            {
                py::gil_scoped_release release;
                out = certify_3d(dist.data(), points.data(), n, (int)dist.shape(1), verts.data(), f, (int)faces.shape(0),
                                 thresh, aniso.data(), k.data(), suppressor.data(), e.data(), reach.data());
            }
            py::array_t<bool> res(n);
            bool* p = res.mutable_data();
            for (int64_t i = 0; i < n; ++i) p[i] = out[i] != 0;
            return res;
        },
        py::arg("dist"), py::arg("points"), py::arg("verts"), py::arg("faces"), py::arg("thresh"), py::arg("aniso"),
        py::arg("keep"), py::arg("suppressor"), py::arg("exposed"), py::arg("reach"));

    m.def(
        "render_3d",
        [](carray<float> dist, carray<float> points, carray<float> verts, carray<int32_t> faces,
           carray<int32_t> labels, std::vector<int64_t> shape, int n_threads, std::vector<int64_t> origin) {
            if (shape.size() != 3) throw std::invalid_argument("shape must be (nz, ny, nx)");
            if (origin.size() != 3) throw std::invalid_argument("origin must be (z0, y0, x0)");
            if (dist.ndim() != 2 || points.ndim() != 2 || points.shape(1) != 3 || points.shape(0) != dist.shape(0) ||
                labels.size() != dist.shape(0))
                throw std::invalid_argument("dist (n, n_rays), points (n, 3) and labels (n,) must agree");
            const int32_t* f = faces.data();
            for (int64_t k = 0; k < faces.size(); ++k)
                if (f[k] < 0 || f[k] >= verts.shape(0)) throw std::invalid_argument("face index out of range");
            py::array_t<int32_t> out({shape[0], shape[1], shape[2]});
            int32_t* o = out.mutable_data();
            std::fill(o, o + shape[0] * shape[1] * shape[2], 0);
            {
                py::gil_scoped_release release;
                render_3d(dist.data(), points.data(), dist.shape(0), (int)dist.shape(1), verts.data(), f,
                          (int)faces.shape(0), labels.data(), o, shape[0], shape[1], shape[2], n_threads, origin[0],
                          origin[1], origin[2]);
            }
            return out;
        },
        py::arg("dist"), py::arg("points"), py::arg("verts"), py::arg("faces"), py::arg("labels"), py::arg("shape"),
        py::arg("n_threads") = 0, py::arg("origin") = std::vector<int64_t>{0, 0, 0});

    m.def(
        "bench_overlap_2d",
        [](carray<int64_t> a, int64_t ax, int64_t ay, carray<int64_t> b, int64_t bx, int64_t by, int reps) {
            return bench_overlap_2d(a.data(), (int)a.shape(0), ax, ay, b.data(), (int)b.shape(0), bx, by, reps);
        },
        py::arg("a"), py::arg("ax"), py::arg("ay"), py::arg("b"), py::arg("bx"), py::arg("by"), py::arg("reps"));

    m.def(
        "render_2d",
        [](carray<float> coords, carray<int32_t> labels, int64_t height, int64_t width, py::object window) {
            if (coords.ndim() != 3 || coords.shape(1) != 2) throw std::invalid_argument("coords must be (n, 2, n_rays)");
            if (labels.size() != coords.shape(0)) throw std::invalid_argument("one label per polygon");
            int64_t row0 = 0, col0 = 0, out_h = height, out_w = width;
            if (!window.is_none()) {
                const auto w = window.cast<std::vector<int64_t>>();
                if (w.size() != 4 || w[0] < 0 || w[1] < 0 || w[2] < 0 || w[3] < 0 || w[0] + w[2] > height ||
                    w[1] + w[3] > width)
                    throw std::invalid_argument("window must be (row0, col0, rows, cols) inside the image");
                row0 = w[0], col0 = w[1], out_h = w[2], out_w = w[3];
            }
            py::array_t<int32_t> out({out_h, out_w});
            int32_t* o = out.mutable_data();
            std::fill(o, o + out_h * out_w, 0);
            {
                py::gil_scoped_release release;
                render_2d(coords.data(), coords.shape(0), (int)coords.shape(2), labels.data(), o, height, width, row0,
                          col0, out_h, out_w);
            }
            return out;
        },
        py::arg("coords"), py::arg("labels"), py::arg("height"), py::arg("width"), py::arg("window") = py::none());
}
