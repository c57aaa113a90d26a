// Pairwise 2D overlap entry points (tests and micro-benchmarks): the routines of
// polygon2d.hpp on one pair of polygons.
#include "polygon2d.hpp"

namespace segrt {
namespace starnms {

namespace {
// Two loose polygons made ready for intersection_area2, as the NMS loop prepares them.
struct PairSetup {
    std::vector<Pt> a, b, ar;
    std::vector<double> ka, kb, kar;
    std::vector<ClipEdge> ce;
    PairScratch s;
    PreparedA A;
    Pt zb;
    bool b_star;

    PairSetup(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y, const int64_t* xy_b, int n_b, int64_t cb_x,
              int64_t cb_y)
        : a(n_a), b(n_b) {
        for (int k = 0; k < n_a; ++k) a[k] = Pt{xy_a[2 * k], xy_a[2 * k + 1]};
        for (int k = 0; k < n_b; ++k) b[k] = Pt{xy_b[2 * k], xy_b[2 * k + 1]};
        n_a = clean_path(a.data(), n_a);
        n_b = clean_path(b.data(), n_b);
        a.resize(n_a);
        b.resize(n_b);
        s.reserve(std::max(n_a, n_b) + 1);
        ka.resize(n_a), kb.resize(n_b), kar.resize(n_a + 1), ar.resize(n_a + 1), ce.resize(n_a);
        const int start_a = star_prepare(a.data(), n_a, Pt{2 * ca_x, 2 * ca_y}, ka.data());
        if (start_a >= 0) {
            rotate_star(a.data(), ka.data(), n_a, start_a, ar.data(), kar.data());
            for (int k = 0; k < n_a; ++k) ce[k] = make_clip_edge(ar[k], ar[k + 1]);
        }
        A = PreparedA{a.data(), n_a, Pt{ca_x, ca_y}, start_a, ka.data(), ar.data(), kar.data(), ce.data()};
        zb = Pt{cb_x, cb_y};
        b_star = star_prepare(b.data(), n_b, Pt{2 * cb_x, 2 * cb_y}, kb.data()) >= 0;
    }

    int64_t area2(int* method, int force) {
        return intersection_area2(A, b.data(), (int)b.size(), zb, [&]() { return b_star; }, s, method, force);
    }
};
}  // namespace

PairOverlap polygon_overlap_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y,
                               const int64_t* xy_b, int n_b, int64_t cb_x, int64_t cb_y,
                               int force_general) {
    PairSetup P(xy_a, n_a, ca_x, ca_y, xy_b, n_b, cb_x, cb_y);
    int method = 0;
    const int64_t i2 = P.area2(&method, force_general);
    const int64_t sa = shoelace2(P.a.data(), (int)P.a.size()), sb = shoelace2(P.b.data(), (int)P.b.size());
    PairOverlap r;
    r.inter = 0.5 * (double)i2;
    r.area_a = 0.5 * (double)(sa < 0 ? -sa : sa);
    r.area_b = 0.5 * (double)(sb < 0 ? -sb : sb);
    r.method = method;
    return r;
}

bool star_bound_vectorised() { return star_bound_simd_available(); }

OverlapBounds polygon_overlap_bounds_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y,
                                        const int64_t* xy_b, int n_b, int64_t cb_x, int64_t cb_y, bool portable) {
    auto bound_of = portable ? star_lower_bound2_double : star_lower_bound2;
    PairSetup P(xy_a, n_a, ca_x, ca_y, xy_b, n_b, cb_x, cb_y);
    OverlapBounds r{-1.0, -1.0};
    const int m = (int)P.b.size();
    // b relative to its centre, as the NMS loop holds it: the raw path first, cleaned after
    auto relative = [&](const int64_t* xy, int count, std::vector<int16_t>& rel) {
        rel.resize(2 * count);
        bool fits = true;
        for (int k = 0; k < count; ++k) {
            const int64_t dx = xy[2 * k] - cb_x, dy = xy[2 * k + 1] - cb_y;
            fits &= dx >= -32768 && dx <= 32767 && dy >= -32768 && dy <= 32767;
            rel[2 * k] = (int16_t)dx;
            rel[2 * k + 1] = (int16_t)dy;
        }
        return fits;
    };
    if (P.A.start >= 0 && n_b >= 3 && n_b <= kMaxRays) {
        StarProfile profile;
        star_profile(P.ar.data(), P.kar.data(), P.A.n, P.A.z, profile);
        std::vector<int64_t> xy_clean(2 * m);
        for (int k = 0; k < m; ++k) xy_clean[2 * k] = P.b[k].x, xy_clean[2 * k + 1] = P.b[k].y;
        std::vector<int16_t> raw, clean;
        if (relative(xy_b, n_b, raw) && relative(xy_clean.data(), m, clean)) {
            double lb2 = bound_of(profile, raw.data(), n_b, cb_x - ca_x, cb_y - ca_y, false);
            if (lb2 < 0 && m >= 3 && star_prepare(P.b.data(), m, Pt{2 * cb_x, 2 * cb_y}, P.kb.data()) >= 0)
                lb2 = bound_of(profile, clean.data(), m, cb_x - ca_x, cb_y - ca_y, true);
            if (lb2 >= 0) r.lower = 0.5 * lb2;
        }
    }
    if ((ca_x != cb_x || ca_y != cb_y) && P.A.n >= 3 && m >= 3)
        r.upper = 0.5 * slab_upper_bound2(P.a.data(), P.A.n, P.A.z, P.b.data(), m, P.zb);
    return r;
}

bool push_bounds_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y, const float* dist, int n_rays,
                    const int64_t* cells, int64_t m, int64_t width, int grid_y, int grid_x, PushCheck* out) {
    PairSetup A(xy_a, n_a, ca_x, ca_y, xy_a, n_a, ca_x, ca_y);
    if (A.A.start < 0 || n_rays < 3 || n_rays > kMaxRays) return false;
    StarProfile profile;
    star_profile(A.ar.data(), A.kar.data(), A.A.n, A.A.z, profile);
    const PolygonMaker maker(dist, n_rays, width, grid_y, grid_x);
    out->lower_lanes.assign(m, -1), out->lower_scalar.assign(m, -1);
    out->area2_lanes.assign(m, 0), out->area2_scalar.assign(m, 0);
    out->fallback.assign(m, 0), out->made_scalar.assign(m, 0);
    std::vector<int16_t> rel(2 * n_rays);
    for (int64_t i = 0; i < m; ++i) {
        const Pt c = maker.centre(cells[i]);
        Box box;
        int64_t s2 = 0;
        bool star = false;
        if (!make_simple(maker, cells[i], c, rel.data(), &box, &s2, &star)) continue;
        out->made_scalar[i] = 1;
        out->area2_scalar[i] = s2;
        out->lower_scalar[i] = star_lower_bound2(profile, rel.data(), n_rays, c.x - ca_x, c.y - ca_y, star);
    }
#if SEGRT_X86_AVX2
    if (star_bound_simd_available() && n_rays <= kPushRays && m > 0) {
        out->lanes_done = true;
        for (int64_t q = 0; q < m; q += 8) {
            const float* rows[8];
            int32_t x[8], y[8];
            for (int64_t i = 0; i < 8; ++i) {
                const int64_t cell = cells[std::min(q + i, m - 1)];  // spare lanes repeat the last
                const Pt c = maker.centre(cell);
                rows[i] = dist + cell * n_rays;
                x[i] = (int32_t)c.x, y[i] = (int32_t)c.y;
            }
            PushLanes L;
            push_bounds8_avx2(profile, rows, n_rays, maker.cos_t.data(), maker.sin_t.data(), x, y, (int32_t)ca_x,
                              (int32_t)ca_y, &L);
            for (int64_t i = 0; i < 8 && q + i < m; ++i) {
                out->fallback[q + i] = (L.fallback >> i) & 1u;
                out->lower_lanes[q + i] = L.lower2[i];
                out->area2_lanes[q + i] = L.area2[i];
            }
        }
    }
#endif
    return true;
}

double bench_overlap_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y, const int64_t* xy_b, int n_b,
                        int64_t cb_x, int64_t cb_y, int reps) {
    PairSetup P(xy_a, n_a, ca_x, ca_y, xy_b, n_b, cb_x, cb_y);
    int method = 0;
    int64_t sink = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int r = 0; r < reps; ++r) sink += P.area2(&method, 0);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return sink == -1 ? 0 : dt / reps;
}

}  // namespace starnms
}  // namespace segrt
