// 3D star-convex NMS and rendering (polyhedra from rays and their triangle faces).
//
// StarDist decides whether candidate j is suppressed by kept polyhedron i with a cascade,
// in this order, and the first test that decides wins:
//   1. upper bound min(outer-sphere lens, box overlap) / min volume <= thresh: keep
//   2. inner-sphere lens / min volume > thresh: suppress
//   3. volume of kernel(i) n kernel(j) / min volume > thresh: suppress
//   4. volume of hull(i) n hull(j) / min volume <= thresh: keep
//   5. voxels of i's box inside both polyhedra / min volume > thresh: suppress
// (the spheres are measured in a space scaled by the candidates' mean box anisotropy; a
// kernel or hull intersection that qhull cannot build counts as 0 in 3 and as "undecided"
// in 4). segrt evaluates the same cascade with the same float formulas, so it keeps the
// same set, but computes the convex volumes by clipping a box with the half-spaces (no
// qhull), renders each kept polyhedron once, finds neighbours through spatial buckets and
// checks the neighbours of a kept polyhedron on all cores.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "parallel.hpp"
#include "starnms.hpp"

namespace segrt {
namespace starnms {

namespace {

// ---- StarDist's float formulas, operand for operand ----------------------------------

inline bool inside_halfspace(float z, float y, float x, const float* A, const float* B, const float* C) {
    const float M00 = B[0] - A[0], M01 = B[1] - A[1], M02 = B[2] - A[2];
    const float M10 = C[0] - A[0], M11 = C[1] - A[1], M12 = C[2] - A[2];
    const float M20 = z - A[0], M21 = y - A[1], M22 = x - A[2];
    const float det = M00 * (M11 * M22 - M21 * M12) - M01 * (M10 * M22 - M12 * M20) + M02 * (M10 * M21 - M11 * M20);
    return det >= 0;
}

inline bool inside_tetrahedron(float z, float y, float x, const float* R, const float* A, const float* B,
                               const float* C) {
    return inside_halfspace(z, y, x, A, B, C) && inside_halfspace(z, y, x, R, B, A) &&
           inside_halfspace(z, y, x, R, C, B) && inside_halfspace(z, y, x, R, A, C);
}

// polyverts: (n_rays, 3) absolute vertex positions
inline bool inside_polyhedron(float z, float y, float x, const float* center, const float* polyverts,
                              const int32_t* faces, int n_faces) {
    for (int f = 0; f < n_faces; ++f) {
        if (inside_tetrahedron(z, y, x, center, polyverts + 3 * faces[3 * f], polyverts + 3 * faces[3 * f + 1],
                               polyverts + 3 * faces[3 * f + 2]))
            return true;
    }
    return false;
}

inline float tetrahedron_volume(const float* R, const float* A, const float* B, const float* C) {
    const float M00 = B[0] - A[0], M01 = B[1] - A[1], M02 = B[2] - A[2];
    const float M10 = C[0] - A[0], M11 = C[1] - A[1], M12 = C[2] - A[2];
    const float M20 = R[0] - A[0], M21 = R[1] - A[1], M22 = R[2] - A[2];
    const float det = M00 * (M11 * M22 - M21 * M12) - M01 * (M10 * M22 - M12 * M20) + M02 * (M10 * M21 - M11 * M20);
    return det / 6.f;
}

float polyhedron_volume(const float* dist, const float* verts, const int32_t* faces, int n_faces) {
    float vol = 0.f;
    const float R[3] = {0, 0, 0};
    for (int f = 0; f < n_faces; ++f) {
        const int a = faces[3 * f], b = faces[3 * f + 1], c = faces[3 * f + 2];
        const float A[3] = {dist[a] * verts[3 * a], dist[a] * verts[3 * a + 1], dist[a] * verts[3 * a + 2]};
        const float B[3] = {dist[b] * verts[3 * b], dist[b] * verts[3 * b + 1], dist[b] * verts[3 * b + 2]};
        const float C[3] = {dist[c] * verts[3 * c], dist[c] * verts[3 * c + 1], dist[c] * verts[3 * c + 2]};
        vol += tetrahedron_volume(R, A, B, C);
    }
    return vol;
}

inline int round_to_int(float r) { return (int)std::lrint(r); }

// inclusive voxel box [z1, z2, y1, y2, x1, x2] of the rounded vertices
void polyhedron_bbox(const float* dist, const float* center, const float* verts, int n_rays, int* bbox) {
    int z1 = std::numeric_limits<int>::max(), z2 = -1;
    int y1 = std::numeric_limits<int>::max(), y2 = -1;
    int x1 = std::numeric_limits<int>::max(), x2 = -1;
    for (int j = 0; j < n_rays; ++j) {
        const float z = center[0] + dist[j] * verts[3 * j];
        const float y = center[1] + dist[j] * verts[3 * j + 1];
        const float x = center[2] + dist[j] * verts[3 * j + 2];
        z1 = std::min(z1, round_to_int(z));
        z2 = std::max(z2, round_to_int(z));
        y1 = std::min(y1, round_to_int(y));
        y2 = std::max(y2, round_to_int(y));
        x1 = std::min(x1, round_to_int(x));
        x2 = std::max(x2, round_to_int(x));
    }
    bbox[0] = z1, bbox[1] = z2, bbox[2] = y1, bbox[3] = y2, bbox[4] = x1, bbox[5] = x2;
}

void polyhedron_polyverts(const float* dist, const float* center, const float* verts, int n_rays, float* out) {
    for (int j = 0; j < n_rays; ++j) {
        out[3 * j] = center[0] + dist[j] * verts[3 * j];
        out[3 * j + 1] = center[1] + dist[j] * verts[3 * j + 1];
        out[3 * j + 2] = center[2] + dist[j] * verts[3 * j + 2];
    }
}

float radius_outer_isotropic(const float* dist, const float* verts, int n_rays, const float* aniso) {
    float r2max = 0;
    for (int i = 0; i < n_rays; ++i) {
        const float z = aniso[0] * dist[i] * verts[3 * i];
        const float y = aniso[1] * dist[i] * verts[3 * i + 1];
        const float x = aniso[2] * dist[i] * verts[3 * i + 2];
        r2max = std::fmax(z * z + y * y + x * x, r2max);
    }
    return std::sqrt(r2max);
}

float radius_inner_isotropic(const float* dist, const float* verts, const int32_t* faces, int n_faces,
                             const float* aniso) {
    float r_min = INFINITY;
    for (int f = 0; f < n_faces; ++f) {
        const int a = faces[3 * f], b = faces[3 * f + 1], c = faces[3 * f + 2];
        const float Az = aniso[0] * dist[a] * verts[3 * a], Ay = aniso[1] * dist[a] * verts[3 * a + 1],
                    Ax = aniso[2] * dist[a] * verts[3 * a + 2];
        const float Bz = aniso[0] * dist[b] * verts[3 * b], By = aniso[1] * dist[b] * verts[3 * b + 1],
                    Bx = aniso[2] * dist[b] * verts[3 * b + 2];
        const float Cz = aniso[0] * dist[c] * verts[3 * c], Cy = aniso[1] * dist[c] * verts[3 * c + 1],
                    Cx = aniso[2] * dist[c] * verts[3 * c + 2];
        const float pz = Bz - Az, py = By - Ay, px = Bx - Ax;
        const float qz = Cz - Az, qy = Cy - Ay, qx = Cx - Ax;
        float Nz = (px * qy - py * qx);
        float Ny = (pz * qx - px * qz);
        float Nx = (py * qz - pz * qy);
        const float normz = 1.f / (std::sqrt(Nz * Nz + Ny * Ny + Nx * Nx) + 1.e-10);
        Nz *= normz;
        Ny *= normz;
        Nx *= normz;
        const float r = Az * Nz + Ay * Ny + Ax * Nx;
        r_min = std::fmin(r_min, r);
    }
    return r_min;
}

float intersect_sphere_isotropic(float r1, const float* p1, float r2, const float* p2, const float* aniso) {
    const float dz = aniso[0] * (p1[0] - p2[0]);
    const float dy = aniso[1] * (p1[1] - p2[1]);
    const float dx = aniso[2] * (p1[2] - p2[2]);
    const float d = std::sqrt(dz * dz + dy * dy + dx * dx);
    const float rmin = std::fmin(r1, r2), rmax = std::fmax(r1, r2);
    if (d > (r1 + r2)) return 0;
    // (StarDist does not rescale this branch by the anisotropy; kept as is)
    if (rmax >= d + rmin - 1.e-10) return M_PI * 4.f / 3 * rmin * rmin * rmin;
    const float t = (r1 + r2 - d) / 2 / d;
    const float h1 = (r2 - r1 + d) * t;
    const float h2 = (r1 - r2 + d) * t;
    const float v1 = M_PI / 3 * h1 * h1 * (3 * r1 - h1);
    const float v2 = M_PI / 3 * h2 * h2 * (3 * r2 - h2);
    return (v1 + v2) / (aniso[0] * aniso[1] * aniso[2]);
}

float intersect_bbox(const int* b1, const int* b2) {
    const float wz = std::fmax(0, std::fmin(b1[1], b2[1]) - std::fmax(b1[0], b2[0]));
    const float wy = std::fmax(0, std::fmin(b1[3], b2[3]) - std::fmax(b1[2], b2[2]));
    const float wx = std::fmax(0, std::fmin(b1[5], b2[5]) - std::fmax(b1[4], b2[4]));
    return wx * wy * wz;
}

// StarDist's kernel half-space of a face (A, B, C): n . p + d <= 0 inside
inline void kernel_halfspace(const float* A, const float* B, const float* C, double* h) {
    const float Pz = B[0] - A[0], Py = B[1] - A[1], Px = B[2] - A[2];
    const float Qz = C[0] - A[0], Qy = C[1] - A[1], Qx = C[2] - A[2];
    const float Nz = -(Py * Qx - Px * Qy);
    const float Ny = -(Px * Qz - Pz * Qx);
    const float Nx = -(Pz * Qy - Py * Qz);
    h[0] = Nz;
    h[1] = Ny;
    h[2] = Nx;
    h[3] = -(A[0] * Nz + A[1] * Ny + A[2] * Nx);
}

// ---- convex volumes without qhull -----------------------------------------------------

struct V3 {
    double z, y, x;
};
inline V3 sub(const V3& a, const V3& b) { return {a.z - b.z, a.y - b.y, a.x - b.x}; }
inline V3 cross(const V3& a, const V3& b) {
    return {a.y * b.x - a.x * b.y, a.x * b.z - a.z * b.x, a.z * b.y - a.y * b.z};
}
inline double dot(const V3& a, const V3& b) { return a.z * b.z + a.y * b.y + a.x * b.x; }

// A convex polytope as faces (vertex loops, counter-clockwise seen from outside).
struct Polytope {
    std::vector<std::vector<V3>> faces;

    void box(const double* lo, const double* hi) {
        const V3 c[8] = {{lo[0], lo[1], lo[2]}, {lo[0], lo[1], hi[2]}, {lo[0], hi[1], lo[2]}, {lo[0], hi[1], hi[2]},
                         {hi[0], lo[1], lo[2]}, {hi[0], lo[1], hi[2]}, {hi[0], hi[1], lo[2]}, {hi[0], hi[1], hi[2]}};
        static const int q[6][4] = {{0, 2, 3, 1}, {4, 5, 7, 6}, {0, 1, 5, 4}, {2, 6, 7, 3}, {0, 4, 6, 2}, {1, 3, 7, 5}};
        faces.assign(6, {});
        for (int f = 0; f < 6; ++f)
            for (int k = 0; k < 4; ++k) faces[f].push_back(c[q[f][k]]);
        // make every face outward: its normal must point away from the centre
        const V3 mid{0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), 0.5 * (lo[2] + hi[2])};
        for (auto& f : faces) {
            const V3 n = cross(sub(f[1], f[0]), sub(f[2], f[0]));
            if (dot(n, sub(f[0], mid)) < 0) std::reverse(f.begin(), f.end());
        }
    }

    // keep n . p + d <= 0
    void clip(const double* h, std::vector<std::vector<V3>>& scratch, std::vector<V3>& cap) {
        const V3 n{h[0], h[1], h[2]};
        const double d = h[3];
        const double scale = std::sqrt(dot(n, n));
        if (!(scale > 0)) return;
        const double eps = 1e-12 * scale;
        bool any_out = false, any_in = false;
        for (const auto& f : faces)
            for (const V3& p : f) {
                const double s = dot(n, p) + d;
                any_out |= s > eps;
                any_in |= s < -eps;
            }
        if (!any_out) return;
        if (!any_in) {
            faces.clear();
            return;
        }
        scratch.clear();
        cap.clear();
        for (const auto& f : faces) {
            std::vector<V3> out;
            const size_t m = f.size();
            for (size_t k = 0; k < m; ++k) {
                const V3& a = f[k];
                const V3& b = f[(k + 1) % m];
                const double sa = dot(n, a) + d, sb = dot(n, b) + d;
                if (sa <= 0) out.push_back(a);
                if ((sa < 0 && sb > 0) || (sa > 0 && sb < 0)) {
                    const double t = sa / (sa - sb);
                    const V3 p{a.z + t * (b.z - a.z), a.y + t * (b.y - a.y), a.x + t * (b.x - a.x)};
                    out.push_back(p);
                    cap.push_back(p);
                } else if (sb == 0 || (sa == 0 && sb > 0)) {
                    if (sa == 0) cap.push_back(a);
                }
            }
            if (out.size() >= 3) scratch.push_back(std::move(out));
        }
        faces.swap(scratch);
        if (cap.size() >= 3) {
            // order the cut's points by angle about their mean, counter-clockwise around +n
            V3 c{0, 0, 0};
            for (const V3& p : cap) c = {c.z + p.z, c.y + p.y, c.x + p.x};
            c = {c.z / cap.size(), c.y / cap.size(), c.x / cap.size()};
            V3 u = sub(cap[0], c);
            for (const V3& p : cap) {
                const V3 w = sub(p, c);
                if (dot(w, w) > dot(u, u)) u = w;
            }
            const double ul = std::sqrt(dot(u, u));
            if (!(ul > 0)) return;
            u = {u.z / ul, u.y / ul, u.x / ul};
            V3 v = cross(n, u);
            const double vl = std::sqrt(dot(v, v));
            v = {v.z / vl, v.y / vl, v.x / vl};
            std::vector<std::pair<double, V3>> ang;
            ang.reserve(cap.size());
            for (const V3& p : cap) {
                const V3 w = sub(p, c);
                ang.push_back({std::atan2(dot(w, v), dot(w, u)), p});
            }
            std::sort(ang.begin(), ang.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
            std::vector<V3> face;
            for (const auto& a : ang) {
                if (!face.empty()) {
                    const V3 w = sub(a.second, face.back());
                    if (dot(w, w) < 1e-24 * (1 + dot(a.second, a.second))) continue;
                }
                face.push_back(a.second);
            }
            if (face.size() >= 3) faces.push_back(std::move(face));
        }
    }

    double volume() const {
        if (faces.empty()) return 0;
        const V3 ref = faces[0][0];
        double v = 0;
        for (const auto& f : faces)
            for (size_t k = 1; k + 1 < f.size(); ++k)
                v += dot(sub(f[0], ref), cross(sub(f[k], ref), sub(f[k + 1], ref)));
        return std::fabs(v) / 6.0;
    }
};

// Convex hull facets of a point set as outward half-spaces n . p + d <= 0 (normalised n).
// Incremental hull; false when the points are (nearly) coplanar, where qhull also fails.
bool convex_hull_halfspaces(const float* pts, int n, std::vector<double>& out) {
    out.clear();
    if (n < 4) return false;
    std::vector<V3> p(n);
    for (int i = 0; i < n; ++i) p[i] = {pts[3 * i], pts[3 * i + 1], pts[3 * i + 2]};
    double scale = 0;
    for (const V3& q : p) scale = std::max({scale, std::fabs(q.z), std::fabs(q.y), std::fabs(q.x)});
    const double eps = 1e-9 * std::max(1.0, scale);
    int i0 = 0;
    for (int i = 1; i < n; ++i)
        if (p[i].z < p[i0].z) i0 = i;
    int i1 = -1;
    double best = 0;
    for (int i = 0; i < n; ++i) {
        const V3 w = sub(p[i], p[i0]);
        if (dot(w, w) > best) best = dot(w, w), i1 = i;
    }
    if (i1 < 0 || best <= eps * eps) return false;
    int i2 = -1;
    best = 0;
    for (int i = 0; i < n; ++i) {
        const V3 c = cross(sub(p[i1], p[i0]), sub(p[i], p[i0]));
        if (dot(c, c) > best) best = dot(c, c), i2 = i;
    }
    if (i2 < 0 || std::sqrt(best) <= eps) return false;
    const V3 n012 = cross(sub(p[i1], p[i0]), sub(p[i2], p[i0]));
    int i3 = -1;
    best = 0;
    for (int i = 0; i < n; ++i) {
        const double s = std::fabs(dot(n012, sub(p[i], p[i0])));
        if (s > best) best = s, i3 = i;
    }
    if (i3 < 0 || best / std::sqrt(dot(n012, n012)) <= eps) return false;
    struct Face {
        int a, b, c;
        V3 n;
        double d;
        bool alive;
    };
    std::vector<Face> faces;
    const V3 inner{(p[i0].z + p[i1].z + p[i2].z + p[i3].z) / 4, (p[i0].y + p[i1].y + p[i2].y + p[i3].y) / 4,
                   (p[i0].x + p[i1].x + p[i2].x + p[i3].x) / 4};
    auto make = [&](int a, int b, int c) {
        V3 nn = cross(sub(p[b], p[a]), sub(p[c], p[a]));
        if (dot(nn, sub(inner, p[a])) > 0) {
            std::swap(b, c);
            nn = {-nn.z, -nn.y, -nn.x};
        }
        faces.push_back({a, b, c, nn, -dot(nn, p[a]), true});
    };
    make(i0, i1, i2);
    make(i0, i1, i3);
    make(i0, i2, i3);
    make(i1, i2, i3);
    std::vector<std::pair<int, int>> horizon;
    for (int i = 0; i < n; ++i) {
        if (i == i0 || i == i1 || i == i2 || i == i3) continue;
        std::vector<int> visible;
        for (int f = 0; f < (int)faces.size(); ++f) {
            if (!faces[f].alive) continue;
            const double len = std::sqrt(dot(faces[f].n, faces[f].n));
            if (dot(faces[f].n, p[i]) + faces[f].d > eps * len) visible.push_back(f);
        }
        if (visible.empty()) continue;
        horizon.clear();
        for (int f : visible) {
            const int e[3][2] = {{faces[f].a, faces[f].b}, {faces[f].b, faces[f].c}, {faces[f].c, faces[f].a}};
            for (auto& ed : e) {
                bool shared = false;
                for (int g : visible) {
                    if (g == f) continue;
                    const Face& G = faces[g];
                    if ((G.a == ed[1] && G.b == ed[0]) || (G.b == ed[1] && G.c == ed[0]) || (G.c == ed[1] && G.a == ed[0])) {
                        shared = true;
                        break;
                    }
                }
                if (!shared) horizon.push_back({ed[0], ed[1]});
            }
        }
        for (int f : visible) faces[f].alive = false;
        for (const auto& ed : horizon) {
            const V3 nn = cross(sub(p[ed.second], p[ed.first]), sub(p[i], p[ed.first]));
            faces.push_back({ed.first, ed.second, i, nn, -dot(nn, p[ed.first]), true});
        }
    }
    for (const Face& f : faces) {
        if (!f.alive) continue;
        const double len = std::sqrt(dot(f.n, f.n));
        if (!(len > 0)) continue;
        out.push_back(f.n.z / len);
        out.push_back(f.n.y / len);
        out.push_back(f.n.x / len);
        out.push_back(f.d / len);
    }
    return out.size() >= 16;
}

// Volume of {p : h_k . p <= 0 for all k} as qhull's halfspace intersection computes it, or
// `failed` when qhull would refuse (the interior point not strictly inside every half-space).
double halfspace_volume(const std::vector<double>& hs, const double* interior, const double* lo, const double* hi,
                        double failed, Polytope& P, std::vector<std::vector<V3>>& scratch, std::vector<V3>& cap) {
    const size_t m = hs.size() / 4;
    for (size_t k = 0; k < m; ++k) {
        const double* h = &hs[4 * k];
        const double len = std::sqrt(h[0] * h[0] + h[1] * h[1] + h[2] * h[2]);
        if (!(len > 0)) return failed;
        if ((h[0] * interior[0] + h[1] * interior[1] + h[2] * interior[2] + h[3]) / len > -1e-9) return failed;
    }
    if (!(lo[0] < hi[0] && lo[1] < hi[1] && lo[2] < hi[2])) return failed;
    P.box(lo, hi);
    for (size_t k = 0; k < m && !P.faces.empty(); ++k) P.clip(&hs[4 * k], scratch, cap);
    return P.volume();
}

// Per-candidate data, computed once.
struct Cand {
    float center[3];
    int bbox[6];
    float volume;
    float r_outer;        // longest ray
    float r_outer_iso, r_inner_iso;
};

}  // namespace

// ---- NMS ---------------------------------------------------------------------------------
std::vector<uint8_t> nms_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
                            const int32_t* faces, int n_faces, float thresh, int n_threads, Nms3DStats* stats) {
    std::vector<uint8_t> keep(n, 0);
    Nms3DStats st;
    st.candidates = n;
    if (n == 0) {
        if (stats) *stats = st;
        return keep;
    }
    const int threads = effective_threads(n_threads);
    std::vector<Cand> cand(n);
    std::vector<uint8_t> bad(threads, 0);
    parallel_for_tid(n, threads, [&](int64_t i0, int64_t i1, int tid) {
        for (int64_t i = i0; i < i1; ++i) {
            const float* d = dist + i * n_rays;
            Cand& c = cand[i];
            for (int k = 0; k < 3; ++k) c.center[k] = points[3 * i + k];
            float rmax = 0;
            for (int k = 0; k < n_rays; ++k) {
                if (!(d[k] >= 0 && d[k] <= 3.0e38f)) bad[tid] = 1;
                rmax = std::fmax(rmax, d[k]);
            }
            c.r_outer = rmax;
            c.volume = polyhedron_volume(d, verts, faces, n_faces);
            polyhedron_bbox(d, c.center, verts, n_rays, c.bbox);
        }
    });
    for (int t = 0; t < threads; ++t)
        if (bad[t]) throw std::invalid_argument("dist of a candidate holds NaN, infinite or negative values");
    // mean box extent per axis, inverted into "pixel sizes" as StarDist does
    float aniso[3] = {0, 0, 0};
    for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < 3; ++k) aniso[k] += (float)(cand[i].bbox[2 * k + 1] - cand[i].bbox[2 * k]) / n;
    const float amax = std::fmax(std::fmax(aniso[0], aniso[1]), aniso[2]);
    for (int k = 0; k < 3; ++k) aniso[k] = amax / aniso[k];
    parallel_for(n, threads, [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) {
            const float* d = dist + i * n_rays;
            cand[i].r_outer_iso = radius_outer_isotropic(d, verts, n_rays, aniso);
            cand[i].r_inner_iso = radius_inner_isotropic(d, verts, faces, n_faces, aniso);
        }
    });

    // spatial buckets over centres (ranks ascending inside a bucket)
    float lo_c[3], hi_c[3], rmax_all = 0;
    for (int k = 0; k < 3; ++k) lo_c[k] = hi_c[k] = cand[0].center[k];
    for (int64_t i = 0; i < n; ++i) {
        rmax_all = std::max(rmax_all, cand[i].r_outer);
        for (int k = 0; k < 3; ++k) {
            lo_c[k] = std::min(lo_c[k], cand[i].center[k]);
            hi_c[k] = std::max(hi_c[k], cand[i].center[k]);
        }
    }
    const double bsize = std::max(4.0, (double)std::ceil(rmax_all));
    int64_t nb[3];
    for (int k = 0; k < 3; ++k) nb[k] = (int64_t)std::floor((hi_c[k] - lo_c[k]) / bsize) + 1;
    auto bucket_coord = [&](float v, int k) {
        int64_t b = (int64_t)std::floor((v - lo_c[k]) / bsize);
        return std::min(std::max<int64_t>(b, 0), nb[k] - 1);
    };
    std::vector<int64_t> bstart(nb[0] * nb[1] * nb[2] + 1, 0), members(n), bucket_of(n);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t b = (bucket_coord(cand[i].center[0], 0) * nb[1] + bucket_coord(cand[i].center[1], 1)) * nb[2] +
                          bucket_coord(cand[i].center[2], 2);
        bucket_of[i] = b;
        ++bstart[b + 1];
    }
    for (size_t b = 0; b + 1 < bstart.size(); ++b) bstart[b + 1] += bstart[b];
    {
        std::vector<int64_t> fill(bstart.begin(), bstart.end() - 1);
        for (int64_t i = 0; i < n; ++i) members[fill[bucket_of[i]]++] = i;
    }
    std::vector<int64_t> cursor(bstart.begin(), bstart.end() - 1);
    std::vector<uint8_t> suppressed(n, 0);

    // per-thread scratch
    struct Scratch {
        std::vector<float> polyverts;
        std::vector<double> hs, hull_j;
        Polytope P;
        std::vector<std::vector<V3>> faces;
        std::vector<V3> cap;
    };
    std::vector<Scratch> scratch(threads);
    for (auto& s : scratch) s.polyverts.resize(3 * n_rays);
    std::vector<float> polyverts_i(3 * n_rays);
    std::vector<double> kernel_i, hull_i;
    bool hull_i_ok = false, hull_i_done = false;
    std::mutex hull_mutex, render_mutex;
    std::vector<uint8_t> rendered;
    bool rendered_done = false;
    std::vector<int64_t> todo;
    std::vector<int64_t> cnt(6 * threads, 0);

    for (int64_t i = 0; i < n - 1; ++i) {
        if (suppressed[i]) continue;
        keep[i] = 1;
        ++st.kept;
        const Cand& ci = cand[i];
        const float* di = dist + i * n_rays;
        polyhedron_polyverts(di, ci.center, verts, n_rays, polyverts_i.data());
        kernel_i.resize(4 * n_faces);
        for (int f = 0; f < n_faces; ++f)
            kernel_halfspace(&polyverts_i[3 * faces[3 * f]], &polyverts_i[3 * faces[3 * f + 1]],
                             &polyverts_i[3 * faces[3 * f + 2]], &kernel_i[4 * f]);
        hull_i_done = false;
        rendered_done = false;
        const int Nz = ci.bbox[1] - ci.bbox[0] + 1, Ny = ci.bbox[3] - ci.bbox[2] + 1, Nx = ci.bbox[5] - ci.bbox[4] + 1;

        // neighbours whose centres lie within the two longest rays
        const float reach = ci.r_outer + rmax_all;
        int64_t q0[3], q1[3];
        for (int k = 0; k < 3; ++k) {
            q0[k] = bucket_coord(ci.center[k] - reach, k);
            q1[k] = bucket_coord(ci.center[k] + reach, k);
        }
        todo.clear();
        for (int64_t bz = q0[0]; bz <= q1[0]; ++bz)
            for (int64_t by = q0[1]; by <= q1[1]; ++by)
                for (int64_t bx = q0[2]; bx <= q1[2]; ++bx) {
                    const int64_t b = (bz * nb[1] + by) * nb[2] + bx;
                    int64_t p = cursor[b];
                    const int64_t end = bstart[b + 1];
                    while (p < end && members[p] <= i) ++p;
                    cursor[b] = p;
                    for (; p < end; ++p)
                        if (!suppressed[members[p]]) todo.push_back(members[p]);
                }
        st.pairs_considered += (int64_t)todo.size();

        auto work = [&](int64_t t0, int64_t t1, int tid) {
            Scratch& S = scratch[tid];
            for (int64_t t = t0; t < t1; ++t) {
                const int64_t j = todo[t];
                const Cand& cj = cand[j];
                const float A_min = std::fmin(ci.volume, cj.volume);
                // 1. upper bound
                float A_inter = std::fmin(intersect_sphere_isotropic(ci.r_outer_iso, ci.center, cj.r_outer_iso, cj.center, aniso),
                                          intersect_bbox(ci.bbox, cj.bbox));
                float iou = std::fmin(1.f, A_inter / (A_min + 1e-10));
                if (A_inter < 1.e-10 || iou <= thresh) {
                    ++cnt[6 * tid + 0];
                    continue;
                }
                // 2. inner spheres
                A_inter = intersect_sphere_isotropic(ci.r_inner_iso, ci.center, cj.r_inner_iso, cj.center, aniso);
                iou = std::fmax(0.f, A_inter / (A_min + 1e-10));
                if (iou > thresh) {
                    ++cnt[6 * tid + 1];
                    suppressed[j] = 1;
                    continue;
                }
                const float* dj = dist + j * n_rays;
                polyhedron_polyverts(dj, cj.center, verts, n_rays, S.polyverts.data());
                const double mid[3] = {.5 * ((double)ci.center[0] + (double)cj.center[0]),
                                       .5 * ((double)ci.center[1] + (double)cj.center[1]),
                                       .5 * ((double)ci.center[2] + (double)cj.center[2])};
                double lo[3], hi[3];
                for (int k = 0; k < 3; ++k) {
                    lo[k] = (double)std::max(ci.bbox[2 * k], cj.bbox[2 * k]) - 1.0;
                    hi[k] = (double)std::min(ci.bbox[2 * k + 1], cj.bbox[2 * k + 1]) + 1.0;
                }
                // 3. kernels (a lower bound)
                S.hs = kernel_i;
                S.hs.resize(8 * n_faces);
                for (int f = 0; f < n_faces; ++f)
                    kernel_halfspace(&S.polyverts[3 * faces[3 * f]], &S.polyverts[3 * faces[3 * f + 1]],
                                     &S.polyverts[3 * faces[3 * f + 2]], &S.hs[4 * (n_faces + f)]);
                const float A_kernel = (float)halfspace_volume(S.hs, mid, lo, hi, 0.0, S.P, S.faces, S.cap);
                iou = A_kernel / (A_min + 1e-10);
                if (iou > thresh) {
                    ++cnt[6 * tid + 2];
                    suppressed[j] = 1;
                    continue;
                }
                // 4. convex hulls (an upper bound)
                {
                    std::lock_guard<std::mutex> lock(hull_mutex);
                    if (!hull_i_done) {
                        hull_i_ok = convex_hull_halfspaces(polyverts_i.data(), n_rays, hull_i);
                        hull_i_done = true;
                    }
                }
                float A_hull = 1.e10f;
                if (hull_i_ok && convex_hull_halfspaces(S.polyverts.data(), n_rays, S.hull_j)) {
                    S.hs = hull_i;
                    S.hs.insert(S.hs.end(), S.hull_j.begin(), S.hull_j.end());
                    A_hull = (float)halfspace_volume(S.hs, mid, lo, hi, 1.e10, S.P, S.faces, S.cap);
                }
                iou = A_hull / (A_min + 1e-10);
                if (iou <= thresh) {
                    ++cnt[6 * tid + 3];
                    continue;
                }
                // 5. voxels of i's box inside both
                {
                    std::lock_guard<std::mutex> lock(render_mutex);
                    if (!rendered_done) {
                        rendered.assign((size_t)Nz * Ny * Nx, 0);
                        for (int z = 0; z < Nz; ++z)
                            for (int y = 0; y < Ny; ++y)
                                for (int x = 0; x < Nx; ++x)
                                    rendered[(size_t)x + (size_t)y * Nx + (size_t)z * Nx * Ny] = inside_polyhedron(
                                        (float)(z + ci.bbox[0]), (float)(y + ci.bbox[2]), (float)(x + ci.bbox[4]),
                                        ci.center, polyverts_i.data(), faces, n_faces);
                        rendered_done = true;
                    }
                }
                const float overlap_maximal = (A_min + 1e-10) * thresh;
                int res = 0;
                for (int z = 0; z < Nz && res <= overlap_maximal; ++z)
                    for (int y = 0; y < Ny && res <= overlap_maximal; ++y)
                        for (int x = 0; x < Nx; ++x) {
                            if (!rendered[(size_t)x + (size_t)y * Nx + (size_t)z * Nx * Ny]) continue;
                            res += inside_polyhedron((float)(z + ci.bbox[0]), (float)(y + ci.bbox[2]),
                                                     (float)(x + ci.bbox[4]), cj.center, S.polyverts.data(), faces,
                                                     n_faces);
                            if (res > overlap_maximal) break;
                        }
                ++cnt[6 * tid + 4];
                iou = (float)res / (A_min + 1e-10);
                if (iou > thresh) suppressed[j] = 1;
            }
        };
        const int64_t nt = (int64_t)todo.size();
        if (threads > 1 && nt >= 4) parallel_for_tid(nt, threads, work);
        else work(0, nt, 0);
    }
    if (n > 0 && !suppressed[n - 1]) {
        keep[n - 1] = 1;
        ++st.kept;
    }
    for (int t = 0; t < threads; ++t) {
        st.decided_upper_bound += cnt[6 * t + 0];
        st.decided_inner_sphere += cnt[6 * t + 1];
        st.decided_kernel += cnt[6 * t + 2];
        st.decided_hull += cnt[6 * t + 3];
        st.decided_render += cnt[6 * t + 4];
    }
    if (stats) *stats = st;
    return keep;
}

// ---- rendering (StarDist's "full" mode) -----------------------------------------------------
void render_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
               const int32_t* faces, int n_faces, const int32_t* labels, int32_t* out, int64_t nz, int64_t ny,
               int64_t nx, int n_threads) {
    std::vector<float> polyverts(3 * n_rays);
    std::vector<double> kernel(4 * n_faces);
    for (int64_t i = 0; i < n; ++i) {
        const float* d = dist + i * n_rays;
        const float* c = points + 3 * i;
        int bbox[6];
        polyhedron_bbox(d, c, verts, n_rays, bbox);
        polyhedron_polyverts(d, c, verts, n_rays, polyverts.data());
        for (int f = 0; f < n_faces; ++f)
            kernel_halfspace(&polyverts[3 * faces[3 * f]], &polyverts[3 * faces[3 * f + 1]],
                             &polyverts[3 * faces[3 * f + 2]], &kernel[4 * f]);
        const int64_t z0 = std::max<int64_t>(0, bbox[0]), z1 = std::min<int64_t>(nz - 1, bbox[1]);
        const int64_t y0 = std::max<int64_t>(0, bbox[2]), y1 = std::min<int64_t>(ny - 1, bbox[3]);
        const int64_t x0 = std::max<int64_t>(0, bbox[4]), x1 = std::min<int64_t>(nx - 1, bbox[5]);
        if (z1 < z0 || y1 < y0 || x1 < x0) continue;
        const int32_t label = labels[i];
        parallel_for(z1 - z0 + 1, n_threads, [&](int64_t a, int64_t b) {
            for (int64_t z = z0 + a; z < z0 + b; ++z)
                for (int64_t y = y0; y <= y1; ++y)
                    for (int64_t x = x0; x <= x1; ++x) {
                        int32_t& o = out[(z * ny + y) * nx + x];
                        if (o != 0) continue;  // the first (highest scored) polyhedron keeps a voxel
                        // inside the kernel, or inside the triangle fan about the centre
                        bool in_kernel = true;
                        for (int f = 0; f < n_faces && in_kernel; ++f) {
                            const double* h = &kernel[4 * f];
                            if (h[0] * (double)z + h[1] * (double)y + h[2] * (double)x + h[3] > 0) in_kernel = false;
                        }
                        if (in_kernel || inside_polyhedron((float)z, (float)y, (float)x, c, polyverts.data(), faces, n_faces))
                            o = label;
                    }
        });
    }
}

}  // namespace starnms
}  // namespace segrt
