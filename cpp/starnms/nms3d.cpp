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
// checks the neighbours of a kept polyhedron on all cores. Two shortcuts change only the
// work, never the answer: tests 3-5 amount to "suppressed by 3, else by 5 unless 4 keeps",
// so test 5 runs first (3 follows only where 5 would keep; where 5 suppresses, a certified
// lower bound on the hull overlap, the candidate's tetrahedra shrunk into i's hull, mostly
// shows that 4 cannot keep j, and the hulls are built only for the rest); and test 5
// counts row by row: j's voxels in a row
// lie between the row's crossings of j's face triangles (parity), counted from i's row sums,
// so only voxels near a crossing take StarDist's float test; rows nearest j's centre go
// first, so a pair past the threshold stops early. Kept polyhedra are rendered by the same
// row crossings.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "../parallel.hpp"
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

// ---- which tetrahedra a voxel can lie in -----------------------------------------------
// The tetrahedron (centre, A, B, C) of a face lies in the cone spanned by the face's rays,
// whatever the ray lengths; so a voxel can only pass the float test of a face whose cone
// holds its direction (up to rounding). A cube map over directions lists, per cell, every
// face whose cone may meet the cell: the face's spherical triangle and the cell each lie in
// a cap (centre direction, angular radius), and a face is listed unless the caps are
// farther apart than their radii plus a margin far above rounding. The OR over that short
// list equals the OR over all faces. Degenerate polyhedra (a ray shorter than kMinRay) and
// the centre voxel itself take the full loop.
constexpr float kMinRay = 1e-3f;

struct FaceLocator {
    int G = 0;
    std::vector<int> start, list;

    static void unit(double* u) {
        const double l = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
        if (l > 0) u[0] /= l, u[1] /= l, u[2] /= l;
    }
    static double angle(const double* a, const double* b) {
        return std::acos(std::min(1.0, std::max(-1.0, a[0] * b[0] + a[1] * b[1] + a[2] * b[2])));
    }
    // direction of cube-map point (s, t) in [-1, 1]^2 on cube face `face` (axis, sign)
    void cube_dir(int face, double s, double t, double* u) const {
        const int axis = face / 2;
        const double sign = (face % 2) ? -1.0 : 1.0;
        u[axis] = sign;
        u[(axis + 1) % 3] = s;
        u[(axis + 2) % 3] = t;
        unit(u);
    }

    void build(const float* verts, int n_rays, const int32_t* faces, int n_faces) {
        G = std::max(4, (int)std::ceil(2.5 * std::sqrt((double)n_faces)));
        constexpr double kMargin = 1e-4;  // radians
        std::vector<double> fdir(3 * (size_t)n_faces), fcos(n_faces), fsin(n_faces);
        for (int f = 0; f < n_faces; ++f) {
            double v[3][3], c[3] = {0, 0, 0};
            for (int k = 0; k < 3; ++k) {
                for (int q = 0; q < 3; ++q) v[k][q] = verts[3 * faces[3 * f + k] + q];
                unit(v[k]);
                for (int q = 0; q < 3; ++q) c[q] += v[k][q];
            }
            unit(c);
            double r = 0;
            for (int k = 0; k < 3; ++k) r = std::max(r, angle(c, v[k]));
            // a cap holds the geodesic triangle only while it is convex: list huge faces everywhere
            r = r + kMargin > 1.2 ? M_PI : r + kMargin;
            for (int q = 0; q < 3; ++q) fdir[3 * f + q] = c[q];
            fcos[f] = std::cos(r);
            fsin[f] = std::sin(r);
        }
        const int cells = 6 * G * G;
        start.assign(cells + 1, 0);
        list.clear();
        for (int cell = 0; cell < cells; ++cell) {
            const int face = cell / (G * G), rem = cell % (G * G), ci = rem / G, cj = rem % G;
            double c[3], corner[3];
            cube_dir(face, 2.0 * (ci + 0.5) / G - 1.0, 2.0 * (cj + 0.5) / G - 1.0, c);
            double r = 0;
            for (int k = 0; k < 4; ++k) {
                cube_dir(face, 2.0 * (ci + (k & 1)) / G - 1.0, 2.0 * (cj + (k >> 1)) / G - 1.0, corner);
                r = std::max(r, angle(c, corner));
            }
            r += kMargin;
            const double cc = std::cos(r), sc = std::sin(r);
            for (int f = 0; f < n_faces; ++f) {
                const double d = c[0] * fdir[3 * f] + c[1] * fdir[3 * f + 1] + c[2] * fdir[3 * f + 2];
                // caps meet when the angle between centres is at most the sum of the radii
                const double sum_cos = cc * fcos[f] - sc * fsin[f];  // cos(r + r_f), r + r_f < pi
                if (r + std::acos(std::max(-1.0, std::min(1.0, fcos[f]))) >= M_PI || d >= sum_cos - 1e-12)
                    list.push_back(f);
            }
            start[cell + 1] = (int)list.size();
        }
    }

    // candidate faces for direction u (not zero)
    inline std::pair<const int*, const int*> faces_for(double uz, double uy, double ux) const {
        const double az = std::fabs(uz), ay = std::fabs(uy), ax = std::fabs(ux);
        int axis;
        double m, s, t, sign;
        if (az >= ay && az >= ax) axis = 0, m = az, sign = uz, s = uy, t = ux;
        else if (ay >= ax) axis = 1, m = ay, sign = uy, s = ux, t = uz;
        else axis = 2, m = ax, sign = ux, s = uz, t = uy;
        const int face = 2 * axis + (sign < 0 ? 1 : 0);
        int ci = (int)((s / m + 1.0) * 0.5 * G), cj = (int)((t / m + 1.0) * 0.5 * G);
        ci = std::min(std::max(ci, 0), G - 1);
        cj = std::min(std::max(cj, 0), G - 1);
        const int cell = face * G * G + ci * G + cj;
        return {list.data() + start[cell], list.data() + start[cell + 1]};
    }
};

// Per face of a polyhedron, squared radii about its centre that bracket the boundary inside
// the face's cone: below lo2 a point is nearer than the face's plane (inside its
// tetrahedron), above hi2 it is farther than all three corners (outside it). Both are
// pulled away from the boundary far past float rounding.
// Face f's plane distance from the centre and its farthest corner's squared distance, in a
// metric scaled per axis (scale: null for voxels).
inline void face_near_far(const float* center, const float* polyverts, const int32_t* face, const float* scale,
                          double& near, double& far2) {
    double P[3][3];
    far2 = 0;
    for (int k = 0; k < 3; ++k) {
        for (int q = 0; q < 3; ++q)
            P[k][q] = ((double)polyverts[3 * face[k] + q] - (double)center[q]) * (scale ? (double)scale[q] : 1.0);
        far2 = std::max(far2, P[k][0] * P[k][0] + P[k][1] * P[k][1] + P[k][2] * P[k][2]);
    }
    const double e1[3] = {P[1][0] - P[0][0], P[1][1] - P[0][1], P[1][2] - P[0][2]};
    const double e2[3] = {P[2][0] - P[0][0], P[2][1] - P[0][1], P[2][2] - P[0][2]};
    const double nz = e1[1] * e2[2] - e1[2] * e2[1], ny = e1[2] * e2[0] - e1[0] * e2[2], nx = e1[0] * e2[1] - e1[1] * e2[0];
    const double len = std::sqrt(nz * nz + ny * ny + nx * nx);
    near = len > 0 ? std::fabs(nz * P[0][0] + ny * P[0][1] + nx * P[0][2]) / len : 0.0;
}

void face_radii(const float* center, const float* polyverts, const int32_t* faces, int n_faces,
                std::vector<float>& out) {
    out.resize(2 * (size_t)n_faces);
    for (int f = 0; f < n_faces; ++f) {
        double near, far2;
        face_near_far(center, polyverts, faces + 3 * f, nullptr, near, far2);
        const double lo = std::max(0.0, near * (1.0 - 1e-4) - 1e-3);
        const double hi = std::sqrt(far2) * (1.0 + 1e-4) + 1e-3;
        out[2 * f] = (float)(lo * lo * (1.0 - 1e-5));
        out[2 * f + 1] = (float)(hi * hi * (1.0 + 1e-5));
    }
}

// inside_polyhedron through the locator; `full_loop` forces the test of every face.
// radii (face_radii, optional) settle most points without a tetrahedron test.
inline bool inside_polyhedron_fast(float z, float y, float x, const float* center, const float* polyverts,
                                   const int32_t* faces, int n_faces, const FaceLocator& loc, bool full_loop,
                                   const float* radii = nullptr) {
    const double uz = (double)z - center[0], uy = (double)y - center[1], ux = (double)x - center[2];
    if (full_loop || (uz == 0 && uy == 0 && ux == 0)) return inside_polyhedron(z, y, x, center, polyverts, faces, n_faces);
    const auto range = loc.faces_for(uz, uy, ux);
    if (radii) {
        const float d2 = (float)(uz * uz + uy * uy + ux * ux);
        float lo = std::numeric_limits<float>::infinity(), hi = 0;
        for (const int* f = range.first; f != range.second; ++f) {
            lo = std::min(lo, radii[2 * *f]);
            hi = std::max(hi, radii[2 * *f + 1]);
        }
        if (d2 < lo) return true;
        if (d2 > hi) return false;
    }
    for (const int* f = range.first; f != range.second; ++f)
        if (inside_tetrahedron(z, y, x, center, polyverts + 3 * faces[3 * *f], polyverts + 3 * faces[3 * *f + 1],
                               polyverts + 3 * faces[3 * *f + 2]))
            return true;
    return false;
}

inline bool has_short_ray(const float* d, int n_rays) {
    for (int k = 0; k < n_rays; ++k)
        if (d[k] < kMinRay) return true;
    return false;
}

// A polyhedron's voxels row by row. A row (a line along x) enters and leaves the polyhedron
// where it crosses a face triangle (the faces close around the centre: the union of the
// centre's tetrahedra is the inside), so between crossings its voxels are inside or outside
// by parity, and only voxels near a crossing need StarDist's float test. A crossing is
// found only far past rounding: a row within 1e-4 of a triangle's edge (seen along x), or
// along a triangle's plane, is "uncertain" and its voxels are all tested; a voxel is "near"
// a crossing within 1e-3 of the face's plane (along x: 1e-3 / |n_x| of the unit normal).
struct RowCrossings {
    static constexpr double kEdge = 1e-4, kPlane = 1e-3;
    struct Face {
        double az, ay, ax, bz, by, bx, cz, cy, cx;
        double inv_l0, inv_l1, inv_l2;  // edge lengths seen along x (a-b, b-c, c-a), inverted
        double sign, inv_area2, margin_x;
        float ylo, yhi;
        bool edge_on;  // seen edge-on along x: a row near it is uncertain
    };
    std::vector<Face> face;
    int z0 = 0;                          // the first integer dz listed
    std::vector<int> zstart, zlist;      // faces whose z extent holds each integer dz
    std::vector<float> band_ylo, band_yhi;  // their y extents, in the same order
    using Crossings = std::vector<std::pair<double, double>>;  // dx about the centre, margin along x

    void build(const float* center, const float* polyverts, const int32_t* faces, int n_faces) {
        face.resize(n_faces);
        double zmin = INFINITY, zmax = -INFINITY;
        std::vector<double>& zr = zrange;
        zr.resize(2 * (size_t)n_faces);
        for (int f = 0; f < n_faces; ++f) {
            double T[9];
            for (int k = 0; k < 3; ++k)
                for (int q = 0; q < 3; ++q) T[3 * k + q] = (double)polyverts[3 * faces[3 * f + k] + q] - (double)center[q];
            Face& F = face[f];
            F.az = T[0], F.ay = T[1], F.ax = T[2], F.bz = T[3], F.by = T[4], F.bx = T[5], F.cz = T[6], F.cy = T[7], F.cx = T[8];
            const double l0 = std::sqrt((F.bz - F.az) * (F.bz - F.az) + (F.by - F.ay) * (F.by - F.ay));
            const double l1 = std::sqrt((F.cz - F.bz) * (F.cz - F.bz) + (F.cy - F.by) * (F.cy - F.by));
            const double l2 = std::sqrt((F.az - F.cz) * (F.az - F.cz) + (F.ay - F.cy) * (F.ay - F.cy));
            const double area2 = (F.bz - F.az) * (F.cy - F.ay) - (F.by - F.ay) * (F.cz - F.az);
            F.edge_on = !(std::fabs(area2) > 1e-9 * (l0 * l1 + l1 * l2 + l2 * l0)) || !(l0 > 0 && l1 > 0 && l2 > 0);
            F.inv_l0 = F.edge_on ? 0 : 1 / l0, F.inv_l1 = F.edge_on ? 0 : 1 / l1, F.inv_l2 = F.edge_on ? 0 : 1 / l2;
            F.sign = area2 > 0 ? 1.0 : -1.0;
            F.inv_area2 = F.edge_on ? 0 : 1 / area2;
            const double ez[3] = {F.bz - F.az, F.by - F.ay, F.bx - F.ax}, ey[3] = {F.cz - F.az, F.cy - F.ay, F.cx - F.ax};
            const double nz = ez[1] * ey[2] - ez[2] * ey[1], ny = ez[2] * ey[0] - ez[0] * ey[2];
            F.margin_x = F.edge_on ? 0 : kPlane * std::sqrt(nz * nz + ny * ny + area2 * area2) / std::fabs(area2);
            const double lo_z = std::min({F.az, F.bz, F.cz}), hi_z = std::max({F.az, F.bz, F.cz});
            const double lo_y = std::min({F.ay, F.by, F.cy}), hi_y = std::max({F.ay, F.by, F.cy});
            const double w = 1e-3 + 1e-6 * std::max({std::fabs(lo_z), std::fabs(hi_z), std::fabs(lo_y), std::fabs(hi_y)});
            F.ylo = (float)(lo_y - w), F.yhi = (float)(hi_y + w);
            zr[2 * f] = lo_z - w, zr[2 * f + 1] = hi_z + w;
            zmin = std::min(zmin, zr[2 * f]), zmax = std::max(zmax, zr[2 * f + 1]);
        }
        z0 = (int)std::floor(zmin);
        const int nz = (int)std::ceil(zmax) - z0 + 1;
        zstart.assign(nz + 1, 0);
        for (int f = 0; f < n_faces; ++f)
            for (int z = (int)std::ceil(zr[2 * f]); z <= (int)std::floor(zr[2 * f + 1]); ++z) ++zstart[z - z0 + 1];
        for (int k = 0; k < nz; ++k) zstart[k + 1] += zstart[k];
        zlist.resize(zstart[nz]), band_ylo.resize(zstart[nz]), band_yhi.resize(zstart[nz]);
        fill.assign(zstart.begin(), zstart.end() - 1);
        for (int f = 0; f < n_faces; ++f)
            for (int z = (int)std::ceil(zr[2 * f]); z <= (int)std::floor(zr[2 * f + 1]); ++z) {
                const int t = fill[z - z0]++;
                zlist[t] = f, band_ylo[t] = face[f].ylo, band_yhi[t] = face[f].yhi;
            }
    }

    // the crossings of the row at integer offsets (dz, dy) from the centre, sorted; false:
    // uncertain (the centre lies on the lattice, so the offsets are integers)
    bool row(int dz, int dy, Crossings& xs) const {
        xs.clear();
        const int k = dz - z0;
        if (k < 0 || k + 1 >= (int)zstart.size()) return true;  // beyond every face: no crossing
        const double z = dz, y = dy;
        const float fy = (float)dy;
        const float* ylo = band_ylo.data();
        const float* yhi = band_yhi.data();
        for (int t = zstart[k]; t < zstart[k + 1]; ++t) {
            if (fy < ylo[t] || fy > yhi[t]) continue;
            const Face& F = face[zlist[t]];
            if (F.edge_on) return false;
            // edge functions of (z, y) against the triangle seen along x, as distances (> 0 inside)
            const double w0 = (F.bz - F.az) * (y - F.ay) - (F.by - F.ay) * (z - F.az);  // a-b: weight of c
            const double w1 = (F.cz - F.bz) * (y - F.by) - (F.cy - F.by) * (z - F.bz);  // b-c: weight of a
            const double w2 = (F.az - F.cz) * (y - F.cy) - (F.ay - F.cy) * (z - F.cz);  // c-a: weight of b
            const double d0 = F.sign * w0 * F.inv_l0, d1 = F.sign * w1 * F.inv_l1, d2 = F.sign * w2 * F.inv_l2;
            if (d0 < -kEdge || d1 < -kEdge || d2 < -kEdge) continue;  // the row misses it
            if (d0 <= kEdge || d1 <= kEdge || d2 <= kEdge) return false;  // too near an edge
            const double x = (w1 * F.ax + w2 * F.bx + w0 * F.cx) * F.inv_area2;
            xs.push_back({x, F.margin_x + 1e-9 * std::fabs(x)});
        }
        if (xs.size() % 2) return false;
        if (xs.size() == 2) {
            if (xs[1].first < xs[0].first) std::swap(xs[0], xs[1]);
        } else {
            std::sort(xs.begin(), xs.end());
        }
        return true;
    }

    // the k-th run of a row of n voxels whose centre column is cx: [a, b] strictly between
    // crossings k and k + 1 (false: empty)
    static bool run(const Crossings& xs, size_t k, double cx, int n, int& a, int& b) {
        a = std::max(0, (int)std::floor(cx + xs[k].first) + 1);
        b = std::min(n - 1, (int)std::ceil(cx + xs[k + 1].first) - 1);
        return a <= b;
    }

    // the voxels of a row near a crossing (and on the centre's row, the centre's voxel),
    // which take StarDist's test; sorted, without repeats
    static void near_voxels(const Crossings& xs, double cx, int n, bool centre_row, std::vector<int>& near) {
        near.clear();
        for (const auto& c : xs) {
            const int a = std::max(0, (int)std::ceil(cx + c.first - c.second));
            const int b = std::min(n - 1, (int)std::floor(cx + c.first + c.second));
            for (int x = a; x <= b; ++x) near.push_back(x);
        }
        if (centre_row) {
            const int c = (int)std::lrint(cx);
            if (c >= 0 && c < n) near.push_back(c);
        }
        if (near.size() > 1) {
            std::sort(near.begin(), near.end());
            near.erase(std::unique(near.begin(), near.end()), near.end());
        }
    }

  private:
    std::vector<double> zrange;
    std::vector<int> fill;
};

// ---- convex volumes without qhull -----------------------------------------------------

struct V3 {
    double z, y, x;
};
inline V3 sub(const V3& a, const V3& b) { return {a.z - b.z, a.y - b.y, a.x - b.x}; }
inline V3 cross(const V3& a, const V3& b) {
    return {a.y * b.x - a.x * b.y, a.x * b.z - a.z * b.x, a.z * b.y - a.y * b.z};
}
inline double dot(const V3& a, const V3& b) { return a.z * b.z + a.y * b.y + a.x * b.x; }

// A convex polytope: vertices (stored by coordinate, so the per-plane test vectorises) and
// face loops (counter-clockwise seen from outside), clipped by half-spaces in place with
// reused buffers.
struct Polytope {
    std::vector<double> vz, vy, vx;
    std::vector<int> idx, start;  // face loops, concatenated
    // scratch
    std::vector<double> sd, nz, ny, nx;
    std::vector<int> remap, nidx, nstart, cap_from, cap_to;
    std::vector<std::pair<int64_t, int>> edge_new;

    V3 at(int k) const { return {vz[k], vy[k], vx[k]}; }

    void box(const double* lo, const double* hi) {
        vz.clear(), vy.clear(), vx.clear();
        for (int k = 0; k < 8; ++k) {
            vz.push_back((k & 4) ? hi[0] : lo[0]);
            vy.push_back((k & 2) ? hi[1] : lo[1]);
            vx.push_back((k & 1) ? hi[2] : lo[2]);
        }
        static const int q[6][4] = {{0, 1, 3, 2}, {4, 6, 7, 5}, {0, 4, 5, 1}, {2, 3, 7, 6}, {0, 2, 6, 4}, {1, 5, 7, 3}};
        idx.clear();
        start.assign(1, 0);
        const V3 mid{0.5 * (lo[0] + hi[0]), 0.5 * (lo[1] + hi[1]), 0.5 * (lo[2] + hi[2])};
        for (int f = 0; f < 6; ++f) {
            int loop[4] = {q[f][0], q[f][1], q[f][2], q[f][3]};
            const V3 n = cross(sub(at(loop[1]), at(loop[0])), sub(at(loop[2]), at(loop[0])));
            if (dot(n, sub(at(loop[0]), mid)) < 0) std::reverse(loop, loop + 4);
            idx.insert(idx.end(), loop, loop + 4);
            start.push_back((int)idx.size());
        }
    }

    bool empty() const { return start.size() <= 1; }

    int crossing_vertex(int a, int b) {
        const int lo = std::min(a, b), hi = std::max(a, b);
        const int64_t key = (int64_t)lo * (int64_t)vz.size() + hi;
        for (const auto& e : edge_new)
            if (e.first == key) return e.second;
        // computed from the ordered pair so both faces sharing the edge get the same point
        const double t = sd[lo] / (sd[lo] - sd[hi]);
        nz.push_back(vz[lo] + t * (vz[hi] - vz[lo]));
        ny.push_back(vy[lo] + t * (vy[hi] - vy[lo]));
        nx.push_back(vx[lo] + t * (vx[hi] - vx[lo]));
        edge_new.push_back({key, (int)nz.size() - 1});
        return (int)nz.size() - 1;
    }

    // keep n . p + d <= 0
    void clip(const double* h) {
        const double hz = h[0], hy = h[1], hx = h[2], hd = h[3];
        const double scale = std::sqrt(hz * hz + hy * hy + hx * hx);
        if (!(scale > 0) || empty()) return;
        const double eps = 1e-12 * scale * (1.0 + std::fabs(hd) / scale);
        const size_t nvert = vz.size();
        sd.resize(nvert);
        double smax = -INFINITY, smin = INFINITY;
        const double* pz = vz.data();
        const double* py = vy.data();
        const double* px = vx.data();
        double* s = sd.data();
        for (size_t k = 0; k < nvert; ++k) {
            const double v = hz * pz[k] + hy * py[k] + hx * px[k] + hd;
            s[k] = v;
            smax = std::max(smax, v);
            smin = std::min(smin, v);
        }
        if (smax <= eps) return;
        if (smin > -eps) {
            vz.clear(), vy.clear(), vx.clear(), idx.clear();
            start.assign(1, 0);
            return;
        }
        for (size_t k = 0; k < nvert; ++k)
            if (std::fabs(s[k]) <= eps) s[k] = 0;
        nz.clear(), ny.clear(), nx.clear();
        remap.assign(nvert, -1);
        for (size_t k = 0; k < nvert; ++k)
            if (s[k] <= 0) {
                remap[k] = (int)nz.size();
                nz.push_back(vz[k]);
                ny.push_back(vy[k]);
                nx.push_back(vx[k]);
            }
        edge_new.clear();
        nidx.clear();
        nstart.assign(1, 0);
        cap_from.clear();
        cap_to.clear();
        const int nf = (int)start.size() - 1;
        for (int f = 0; f < nf; ++f) {
            const int s0 = start[f], s1 = start[f + 1], m = s1 - s0;
            const size_t before = nidx.size();
            int exit_pt = -1, entry_pt = -1;
            for (int k = 0; k < m; ++k) {
                const int a = idx[s0 + k], b = idx[s0 + (k + 1 == m ? 0 : k + 1)];
                const bool ina = s[a] <= 0, inb = s[b] <= 0;
                if (ina) nidx.push_back(remap[a]);
                if (ina && !inb) {
                    if (s[a] == 0) exit_pt = remap[a];
                    else nidx.push_back(exit_pt = crossing_vertex(a, b));
                } else if (!ina && inb) {
                    if (s[b] == 0) entry_pt = remap[b];
                    else nidx.push_back(entry_pt = crossing_vertex(a, b));
                }
            }
            if (nidx.size() - before >= 3) nstart.push_back((int)nidx.size());
            else nidx.resize(before);
            if (exit_pt >= 0 && entry_pt >= 0 && exit_pt != entry_pt) {
                // the cut face runs the other way along this face's new edge
                cap_from.push_back(entry_pt);
                cap_to.push_back(exit_pt);
            }
        }
        // chain the cut's edges into one loop
        if (cap_from.size() >= 3) {
            const size_t first = nidx.size();
            int cur = cap_from[0];
            for (size_t guard = 0; guard <= cap_from.size(); ++guard) {
                nidx.push_back(cur);
                int next = -1;
                for (size_t e = 0; e < cap_from.size(); ++e)
                    if (cap_from[e] == cur) {
                        next = cap_to[e];
                        break;
                    }
                if (next < 0 || next == cap_from[0]) break;
                cur = next;
            }
            if (nidx.size() - first >= 3) nstart.push_back((int)nidx.size());
            else nidx.resize(first);
        }
        vz.swap(nz), vy.swap(ny), vx.swap(nx);
        idx.swap(nidx);
        start.swap(nstart);
    }

    double volume() const {
        if (empty() || vz.empty()) return 0;
        const V3 ref = at(0);
        double s = 0;
        const int nf = (int)start.size() - 1;
        for (int f = 0; f < nf; ++f) {
            const V3 p0 = at(idx[start[f]]);
            for (int k = start[f] + 1; k + 1 < start[f + 1]; ++k)
                s += dot(sub(p0, ref), cross(sub(at(idx[k]), ref), sub(at(idx[k + 1]), ref)));
        }
        return std::fabs(s) / 6.0;
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
    // faces by coordinate (the visibility test over all faces vectorises); a face that a
    // point sees is marked dead rather than removed, and the dead are swept out only once
    // they are the majority: the living keep their order, so the facets come out as an eager
    // removal would give them
    struct Faces {
        std::vector<int> a, b, c;
        std::vector<double> nz, ny, nx, d, side;
        std::vector<uint8_t> alive;
        size_t dead = 0;
        size_t size() const { return a.size(); }
    } F;
    const V3 inner{(p[i0].z + p[i1].z + p[i2].z + p[i3].z) / 4, (p[i0].y + p[i1].y + p[i2].y + p[i3].y) / 4,
                   (p[i0].x + p[i1].x + p[i2].x + p[i3].x) / 4};
    auto add_face = [&](int a, int b, int c) {
        V3 nn = cross(sub(p[b], p[a]), sub(p[c], p[a]));
        const double len = std::sqrt(dot(nn, nn));
        if (len > 0) nn = {nn.z / len, nn.y / len, nn.x / len};
        F.a.push_back(a), F.b.push_back(b), F.c.push_back(c);
        F.nz.push_back(nn.z), F.ny.push_back(nn.y), F.nx.push_back(nn.x), F.d.push_back(-dot(nn, p[a]));
        F.alive.push_back(1);
    };
    auto make = [&](int a, int b, int c) {
        const V3 nn = cross(sub(p[b], p[a]), sub(p[c], p[a]));
        if (dot(nn, sub(inner, p[a])) > 0) std::swap(b, c);
        add_face(a, b, c);
    };
    auto sweep = [&]() {
        size_t w = 0;
        for (size_t f = 0; f < F.size(); ++f)
            if (F.alive[f]) {
                F.a[w] = F.a[f], F.b[w] = F.b[f], F.c[w] = F.c[f];
                F.nz[w] = F.nz[f], F.ny[w] = F.ny[f], F.nx[w] = F.nx[f], F.d[w] = F.d[f], F.alive[w] = 1;
                ++w;
            }
        for (auto* v : {&F.a, &F.b, &F.c}) v->resize(w);
        for (auto* v : {&F.nz, &F.ny, &F.nx, &F.d}) v->resize(w);
        F.alive.resize(w);
        F.dead = 0;
    };
    make(i0, i1, i2);
    make(i0, i1, i3);
    make(i0, i2, i3);
    make(i1, i2, i3);
    std::vector<std::pair<int, int>> horizon, vis_edges;
    std::vector<int> visible;
    std::vector<int> edge_stamp((size_t)n * n, 0);
    int stamp = 0;
    for (int i = 0; i < n; ++i) {
        if (i == i0 || i == i1 || i == i2 || i == i3) continue;
        const size_t nf = F.size();
        F.side.resize(nf);
        {
            const double pz = p[i].z, py = p[i].y, px = p[i].x;
            const double* __restrict nz = F.nz.data();
            const double* __restrict ny = F.ny.data();
            const double* __restrict nx = F.nx.data();
            const double* __restrict dd = F.d.data();
            double* __restrict side = F.side.data();
#pragma omp simd
            for (size_t f = 0; f < nf; ++f) side[f] = nz[f] * pz + ny[f] * py + nx[f] * px + dd[f];
        }
        visible.clear();
        for (size_t f = 0; f < nf; ++f)
            if (F.side[f] > eps && F.alive[f]) visible.push_back((int)f);
        if (visible.empty()) continue;
        // an edge of a visible face is on the horizon unless its reverse is an edge of another
        // visible face (every edge of the closed hull has one reverse): the visible faces'
        // edges are stamped in an n x n table, then each edge looks its reverse up
        ++stamp;
        vis_edges.clear();
        for (const int f : visible) {
            const int e[3][2] = {{F.a[f], F.b[f]}, {F.b[f], F.c[f]}, {F.c[f], F.a[f]}};
            for (const auto& ed : e) {
                vis_edges.push_back({ed[0], ed[1]});
                edge_stamp[(size_t)ed[0] * n + ed[1]] = stamp;
            }
        }
        horizon.clear();
        for (const auto& ed : vis_edges)
            if (edge_stamp[(size_t)ed.second * n + ed.first] != stamp) horizon.push_back(ed);
        // the visible faces go, the hole closes from the horizon
        for (const int f : visible) F.alive[f] = 0;
        F.dead += visible.size();
        if (2 * F.dead > F.size()) sweep();
        for (const auto& ed : horizon) add_face(ed.first, ed.second, i);
    }
    for (size_t f = 0; f < F.size(); ++f) {
        if (!F.alive[f]) continue;
        out.push_back(F.nz[f]);
        out.push_back(F.ny[f]);
        out.push_back(F.nx[f]);
        out.push_back(F.d[f]);
    }
    return out.size() >= 16;
}

// qhull builds a half-space intersection only from a point strictly inside every half-space.
bool strictly_inside(const double* hs, size_t count, const double* p) {
    for (size_t k = 0; k < count; ++k) {
        const double* h = hs + 4 * k;
        const double len = std::sqrt(h[0] * h[0] + h[1] * h[1] + h[2] * h[2]);
        if (!(len > 0)) return false;
        if ((h[0] * p[0] + h[1] * p[1] + h[2] * p[2] + h[3]) / len > -1e-9) return false;
    }
    return true;
}

// A lower bound of vol(region n polyhedron) for a convex region {h . p <= 0} holding the
// centre: each tetrahedron (centre, face) shrunk about the centre until its corners are in the
// region lies in both. 0 unless every tetrahedron is positively oriented (then they do not
// overlap). The sum stops once past `stop_above` (the caller's question is whether it is);
// a vertex's reach is found only when a face needs it.
// Half-spaces by coordinate (h_z, h_y, h_x, d), for loops that vectorise.
struct HalfSpaces {
    std::vector<double> z, y, x, d;
    void assign(const std::vector<double>& hs) {
        const size_t m = hs.size() / 4;
        z.resize(m), y.resize(m), x.resize(m), d.resize(m);
        for (size_t k = 0; k < m; ++k) z[k] = hs[4 * k], y[k] = hs[4 * k + 1], x[k] = hs[4 * k + 2], d[k] = hs[4 * k + 3];
    }
    size_t size() const { return z.size(); }
};

double fan_inside_volume(const float* center, const float* polyverts, const int32_t* faces, int n_faces,
                         const HalfSpaces& hs, std::vector<double>& work, double stop_above) {
    const size_t m = hs.size();
    const double c[3] = {center[0], center[1], center[2]};
    int n_verts = 0;
    for (int f = 0; f < 3 * n_faces; ++f) n_verts = std::max(n_verts, faces[f] + 1);
    work.resize(m + (size_t)n_verts + (size_t)n_faces);
    double* gap = work.data();           // how far inside each half-space the centre lies
    double* reach = gap + m;             // how far along centre -> vertex the region reaches
    double* vol6 = reach + n_verts;      // 6 x each tetrahedron's volume
    for (size_t k = 0; k < m; ++k) {
        gap[k] = -(hs.z[k] * c[0] + hs.y[k] * c[1] + hs.x[k] * c[2] + hs.d[k]);
        if (!(gap[k] > 0)) return 0;
    }
    for (int f = 0; f < n_faces; ++f) {
        double P[3][3];
        for (int k = 0; k < 3; ++k)
            for (int q = 0; q < 3; ++q) P[k][q] = (double)polyverts[3 * faces[3 * f + k] + q] - c[q];
        // StarDist's faces are oriented so that det(A, B, C) about the centre is negative
        const double det = P[0][0] * (P[1][1] * P[2][2] - P[1][2] * P[2][1]) -
                           P[0][1] * (P[1][0] * P[2][2] - P[1][2] * P[2][0]) +
                           P[0][2] * (P[1][0] * P[2][1] - P[1][1] * P[2][0]);
        if (!(det < 0)) return 0;
        vol6[f] = -det;
    }
    for (int a = 0; a < n_verts; ++a) reach[a] = -1;
    auto reach_of = [&](int a) {
        if (reach[a] >= 0) return reach[a];
        const double dz = polyverts[3 * a] - c[0], dy = polyverts[3 * a + 1] - c[1], dx = polyverts[3 * a + 2] - c[2];
        // only a half-space the vertex lies beyond (along > gap > 0) shortens the reach below 1
        double s = 1.0;
        const double* __restrict hz = hs.z.data();
        const double* __restrict hy = hs.y.data();
        const double* __restrict hx = hs.x.data();
        const double* __restrict g = gap;
#pragma omp simd reduction(min : s)
        for (size_t k = 0; k < m; ++k) {
            const double along = hz[k] * dz + hy[k] * dy + hx[k] * dx;
            s = std::min(s, along > g[k] ? g[k] / along : 1.0);
        }
        return reach[a] = std::max(0.0, s);
    };
    double vol = 0;
    for (int f = 0; f < n_faces; ++f) {
        const double s = std::min({reach_of(faces[3 * f]), reach_of(faces[3 * f + 1]), reach_of(faces[3 * f + 2])});
        vol += s * s * s * (vol6[f] / 6.0);
        if (vol * (1 - 1e-9) > stop_above) break;
    }
    return vol * (1 - 1e-9);
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
namespace {
std::vector<uint8_t> nms_3d_with(const FaceLocator& locator, const float* dist, const float* points, int64_t n,
                                 int n_rays, const float* verts, const int32_t* faces, int n_faces, float thresh,
                                 int n_threads, Nms3DStats* stats, const float* aniso_given, int64_t* suppressor);
}  // namespace

std::vector<uint8_t> nms_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
                            const int32_t* faces, int n_faces, float thresh, int n_threads, Nms3DStats* stats,
                            const float* aniso_given, int64_t* suppressor) {
    FaceLocator locator;
    if (n > 1) locator.build(verts, n_rays, faces, n_faces);
    return nms_3d_with(locator, dist, points, n, n_rays, verts, faces, n_faces, thresh, n_threads, stats, aniso_given,
                       suppressor);
}

namespace {
// nms_3d with the rays' face locator built once (certify_3d decides many pairs with it)
std::vector<uint8_t> nms_3d_with(const FaceLocator& locator, const float* dist, const float* points, int64_t n,
                                 int n_rays, const float* verts, const int32_t* faces, int n_faces, float thresh,
                                 int n_threads, Nms3DStats* stats, const float* aniso_given, int64_t* suppressor) {
    std::vector<uint8_t> keep(n, 0);
    if (suppressor) std::fill(suppressor, suppressor + n, (int64_t)-1);
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
        if (bad[t]) throw std::invalid_argument("dist of a candidate holds NaN, infinite or negative values, or rays longer than 3e38 (the kernels compute areas of such polygons in float)");
    // mean box extent per axis, inverted into "pixel sizes" as StarDist does
    // (or the scale given: that of a larger candidate set this one was taken from)
    float aniso[3] = {0, 0, 0};
    if (aniso_given) {
        for (int k = 0; k < 3; ++k) aniso[k] = aniso_given[k];
    } else {
        sphere_scale_3d(n, [&](int64_t i, int k) { return cand[i].bbox[2 * k + 1] - cand[i].bbox[2 * k]; }, aniso);
    }
    for (int k = 0; k < 3; ++k) st.aniso[k] = aniso[k];
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
    auto suppressed_by = [suppressor](int64_t j, int64_t i) {
        if (suppressor) suppressor[j] = i;
    };

    // per-thread scratch and work counters (one cache line apart: counters change per pair)
    struct alignas(64) Scratch {
        std::vector<float> polyverts;
        std::vector<double> hs, hull_j;
        Polytope P;
        std::vector<double> inside;
        RowCrossings crossings;
        RowCrossings::Crossings xs;  // a row's crossings
        std::vector<int> rows;      // i's box rows (z * Ny + y), j's centre outward
        std::vector<int> near;      // a row's voxels near a crossing
        std::vector<int64_t> hard;  // pairs steps 1-2 left undecided
        int64_t cnt[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        double secs[4] = {0, 0, 0, 0};  // kernel, hull, voxel count, hull building
    };
    std::vector<Scratch> scratch(threads);
    for (auto& s : scratch) s.polyverts.resize(3 * n_rays);
    std::vector<float> polyverts_i(3 * n_rays);
    std::vector<double> kernel_i, hull_i;
    HalfSpaces hull_i_soa;
    bool hull_i_ok = false;
    Polytope kernel_poly, hull_poly;
    double kernel_vol_i = 0;
    std::atomic<bool> kernel_poly_done{false};
    std::mutex kernel_mutex;
    std::vector<uint8_t> rendered;
    std::vector<int32_t> rendered_prefix;  // per row of i's box: voxels of i before each x
    RowCrossings crossings_i;
    std::vector<int64_t> todo, hard;
    using clock = std::chrono::steady_clock;

    for (int64_t i = 0; i < n - 1; ++i) {
        if (suppressed[i]) continue;
        keep[i] = 1;
        ++st.kept;
        const Cand& ci = cand[i];
        const float* di = dist + i * n_rays;

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

        // steps 1 and 2 (boxes and spheres: cheap); the pairs they leave go on to the team
        auto bounds = [&](int64_t t0_, int64_t t1_, int tid) {
            Scratch& S = scratch[tid];
            for (int64_t t = t0_; t < t1_; ++t) {
                const int64_t j = todo[t];
                const Cand& cj = cand[j];
                // 1. upper bound (boxes apart: no overlap whatever the spheres say)
                const float A_box = intersect_bbox(ci.bbox, cj.bbox);
                if (A_box < 1.e-10f) {
                    ++S.cnt[0];
                    continue;
                }
                const float A_min = std::fmin(ci.volume, cj.volume);
                float A_inter = std::fmin(intersect_sphere_isotropic(ci.r_outer_iso, ci.center, cj.r_outer_iso, cj.center, aniso),
                                          A_box);
                float iou = std::fmin(1.f, A_inter / (A_min + 1e-10));
                if (A_inter < 1.e-10 || iou <= thresh) {
                    ++S.cnt[0];
                    continue;
                }
                // 2. inner spheres
                A_inter = intersect_sphere_isotropic(ci.r_inner_iso, ci.center, cj.r_inner_iso, cj.center, aniso);
                iou = std::fmax(0.f, A_inter / (A_min + 1e-10));
                if (iou > thresh) {
                    ++S.cnt[1];
                    suppressed[j] = 1, suppressed_by(j, i);
                    continue;
                }
                S.hard.push_back(j);
            }
        };
        for (auto& S : scratch) S.hard.clear();
        if (threads > 1 && todo.size() >= 4096) parallel_for_tid((int64_t)todo.size(), threads, bounds);
        else bounds(0, (int64_t)todo.size(), 0);
        hard.clear();
        for (const auto& S : scratch) hard.insert(hard.end(), S.hard.begin(), S.hard.end());
        if (hard.empty()) continue;

        // what the remaining tests need of i, built before the team starts (a lazily built
        // piece under a lock would keep the other threads waiting): its kernel planes, hull,
        // and voxels (StarDist's inside test) with their running count along every row
        polyhedron_polyverts(di, ci.center, verts, n_rays, polyverts_i.data());
        kernel_i.resize(4 * n_faces);
        for (int f = 0; f < n_faces; ++f)
            kernel_halfspace(&polyverts_i[3 * faces[3 * f]], &polyverts_i[3 * faces[3 * f + 1]],
                             &polyverts_i[3 * faces[3 * f + 2]], &kernel_i[4 * f]);
        kernel_poly_done.store(false, std::memory_order_relaxed);
        {
            const auto t0 = clock::now();
            hull_i_ok = convex_hull_halfspaces(polyverts_i.data(), n_rays, hull_i);
            if (hull_i_ok) {
                hull_i_soa.assign(hull_i);
                double blo[3], bhi[3];
                for (int k = 0; k < 3; ++k) blo[k] = ci.bbox[2 * k] - 1.0, bhi[k] = ci.bbox[2 * k + 1] + 1.0;
                hull_poly.box(blo, bhi);
                for (size_t f = 0; f < hull_i.size() / 4; ++f) hull_poly.clip(&hull_i[4 * f]);
            }
            scratch[0].secs[3] += std::chrono::duration<double>(clock::now() - t0).count();
        }
        const int Nz = ci.bbox[1] - ci.bbox[0] + 1, Ny = ci.bbox[3] - ci.bbox[2] + 1, Nx = ci.bbox[5] - ci.bbox[4] + 1;
        {
            rendered.assign((size_t)Nz * Ny * Nx, 0);
            rendered_prefix.resize((size_t)Nz * Ny * (Nx + 1));
            const bool full_i = has_short_ray(di, n_rays);
            // by crossings, as the count below (i's centre on the lattice, no short ray), else
            // every voxel by StarDist's test
            const bool on_lattice = ci.center[0] == std::floor(ci.center[0]) && ci.center[1] == std::floor(ci.center[1]);
            const bool rows_by_test = full_i || !on_lattice;
            if (!rows_by_test) crossings_i.build(ci.center, polyverts_i.data(), faces, n_faces);
            const double cxi = ci.center[2] - ci.bbox[4];
            parallel_for_tid(Nz * Ny, threads, [&](int64_t r0, int64_t r1, int tid) {
                Scratch& S = scratch[tid];
                for (int64_t r = r0; r < r1; ++r) {
                    const int z = (int)(r / Ny), y = (int)(r % Ny);
                    uint8_t* row = &rendered[(size_t)r * Nx];
                    auto test = [&](int x) {
                        return inside_polyhedron_fast((float)(z + ci.bbox[0]), (float)(y + ci.bbox[2]),
                                                      (float)(x + ci.bbox[4]), ci.center, polyverts_i.data(), faces,
                                                      n_faces, locator, full_i);
                    };
                    const int dz = z + ci.bbox[0] - (int)ci.center[0], dy = y + ci.bbox[2] - (int)ci.center[1];
                    if (rows_by_test || !crossings_i.row(dz, dy, S.xs)) {
                        for (int x = 0; x < Nx; ++x) row[x] = test(x);
                    } else {
                        int a, b;
                        for (size_t k = 0; k + 1 < S.xs.size(); k += 2)
                            if (RowCrossings::run(S.xs, k, cxi, Nx, a, b)) std::fill(row + a, row + b + 1, 1);
                        RowCrossings::near_voxels(S.xs, cxi, Nx, dz == 0 && dy == 0, S.near);
                        for (const int x : S.near) row[x] = test(x);
                    }
                    int32_t* pre = &rendered_prefix[(size_t)r * (Nx + 1)];
                    pre[0] = 0;
                    for (int x = 0; x < Nx; ++x) pre[x + 1] = pre[x] + row[x];
                }
            });
        }
        // step 5: voxels of i's box inside i and j, counted until past the threshold
        auto count_voxels = [&](const Cand& cj, const float* dj, Scratch& S) -> int {
            const float A_min = std::fmin(ci.volume, cj.volume);
            const float overlap_maximal = (A_min + 1e-10) * thresh;
            const bool full_j = has_short_ray(dj, n_rays);
            // Every row of i's box, not only j's box: StarDist's float test takes a few voxels
            // outside the rounded box of jagged polyhedra (a measured mismatch when the count
            // was limited to it). j's voxels in a row from its crossings (RowCrossings), i's
            // counted from i's row sums; the voxels near a crossing, j's centre voxel (the full
            // loop) and uncertain rows by StarDist's test.
            // (rows meet j's centre at integer offsets: the centre lies on the voxel lattice, as
            // every candidate's does; a centre off it takes StarDist's test for every voxel)
            const bool on_lattice = cj.center[0] == std::floor(cj.center[0]) && cj.center[1] == std::floor(cj.center[1]);
            const bool rows_by_test = full_j || !on_lattice;
            if (!rows_by_test) S.crossings.build(cj.center, S.polyverts.data(), faces, n_faces);
            const int lo[3] = {0, 0, 0}, hi[3] = {Nz - 1, Ny - 1, Nx - 1};
            // rows nearest j's centre first (rings of growing max(|dz|, |dy|)): a pair that
            // passes the threshold is decided after few rows
            const int cz = (int)std::lrint(cj.center[0]) - ci.bbox[0], cy = (int)std::lrint(cj.center[1]) - ci.bbox[2];
            const int rings = std::max(std::max(cz - lo[0], hi[0] - cz), std::max(cy - lo[1], hi[1] - cy));
            S.rows.clear();
            for (int k = 0; k <= rings; ++k)
                for (int z = std::max(lo[0], cz - k); z <= std::min(hi[0], cz + k); ++z) {
                    if (z == cz - k || z == cz + k) {  // a whole edge of the ring
                        for (int y = std::max(lo[1], cy - k); y <= std::min(hi[1], cy + k); ++y) S.rows.push_back(z * Ny + y);
                    } else {  // its two sides
                        if (cy - k >= lo[1] && cy - k <= hi[1]) S.rows.push_back(z * Ny + cy - k);
                        if (k > 0 && cy + k >= lo[1] && cy + k <= hi[1]) S.rows.push_back(z * Ny + cy + k);
                    }
                }
            int res = 0;
            auto test = [&](int z, int y, int x) {
                return inside_polyhedron_fast((float)(z + ci.bbox[0]), (float)(y + ci.bbox[2]), (float)(x + ci.bbox[4]),
                                              cj.center, S.polyverts.data(), faces, n_faces, locator, full_j);
            };
            const double cxj = cj.center[2] - ci.bbox[4];  // j's centre column in box coordinates
            for (size_t v = 0; v < S.rows.size() && res <= overlap_maximal; ++v) {
                const int r = S.rows[v], z = r / Ny, y = r % Ny;
                const int32_t* pre = &rendered_prefix[(size_t)r * (Nx + 1)];
                if (pre[Nx] == 0) continue;  // none of i's voxels here
                const uint8_t* row = &rendered[(size_t)r * Nx];
                const int dz = z + ci.bbox[0] - (int)cj.center[0], dy = y + ci.bbox[2] - (int)cj.center[1];
                if (rows_by_test || !S.crossings.row(dz, dy, S.xs)) {
                    for (int x = 0; x < Nx; ++x)
                        if (row[x]) res += test(z, y, x);
                    continue;
                }
                // voxels near a crossing (and j's centre voxel) are tested, the rest counted
                RowCrossings::near_voxels(S.xs, cxj, Nx, dz == 0 && dy == 0, S.near);
                size_t q = 0;  // the first near voxel not yet passed
                for (size_t k = 0; k + 1 < S.xs.size(); k += 2) {
                    int a, b;
                    if (!RowCrossings::run(S.xs, k, cxj, Nx, a, b)) continue;
                    res += pre[b + 1] - pre[a];
                    // near voxels inside this run were counted: their test decides instead
                    while (q < S.near.size() && S.near[q] < a) ++q;
                    for (size_t u = q; u < S.near.size() && S.near[u] <= b; ++u) res -= row[S.near[u]];
                }
                for (const int x : S.near)
                    if (row[x]) res += test(z, y, x);
            }
            return res;
        };
        // steps 3-5 for the pairs left, one at a time to whichever thread is free (their
        // costs differ by orders of magnitude)
        auto work = [&](int64_t t0_, int64_t t1_, int tid) {
            Scratch& S = scratch[tid];
            for (int64_t t = t0_; t < t1_; ++t) {
                const int64_t j = hard[t];
                const Cand& cj = cand[j];
                const float A_min = std::fmin(ci.volume, cj.volume);
                const float* dj = dist + j * n_rays;
                polyhedron_polyverts(dj, cj.center, verts, n_rays, S.polyverts.data());
                const double mid[3] = {.5 * ((double)ci.center[0] + (double)cj.center[0]),
                                       .5 * ((double)ci.center[1] + (double)cj.center[1]),
                                       .5 * ((double)ci.center[2] + (double)cj.center[2])};
                // The outcome of steps 3-5 is: suppressed by 3, or else by 5 unless 4 keeps. So
                // the voxel count (5, cheap by rows) goes first: below the threshold only 3 can
                // still suppress; past it, j is suppressed unless 4 keeps it (and 3 does not
                // suppress), and the fan bound often shows that 4 cannot keep it, so that the
                // hulls are built only for the rest.
                auto kernel_suppresses = [&]() -> bool {
                    ++S.cnt[6];
                    // 3. kernels (a lower bound)
                    S.hs.resize(4 * n_faces);
                    for (int f = 0; f < n_faces; ++f)
                        kernel_halfspace(&S.polyverts[3 * faces[3 * f]], &S.polyverts[3 * faces[3 * f + 1]],
                                         &S.polyverts[3 * faces[3 * f + 2]], &S.hs[4 * f]);
                    const auto t0 = clock::now();
                    float A_kernel = 0.f;
                    if (strictly_inside(kernel_i.data(), n_faces, mid) && strictly_inside(S.hs.data(), n_faces, mid)) {
                        if (!kernel_poly_done.load(std::memory_order_acquire)) {
                            std::lock_guard<std::mutex> lock(kernel_mutex);
                            if (!kernel_poly_done.load(std::memory_order_relaxed)) {
                                double blo[3], bhi[3];
                                for (int k = 0; k < 3; ++k) blo[k] = ci.bbox[2 * k] - 1.0, bhi[k] = ci.bbox[2 * k + 1] + 1.0;
                                kernel_poly.box(blo, bhi);
                                for (int f = 0; f < n_faces; ++f) kernel_poly.clip(&kernel_i[4 * f]);
                                kernel_vol_i = kernel_poly.volume();
                                kernel_poly_done.store(true, std::memory_order_release);
                            }
                        }
                        // kernel_i n kernel_j lies in kernel_i: when that alone cannot pass the
                        // threshold, the exact volume cannot either
                        const double floor_vol = (double)thresh * ((double)A_min + 1e-10) * (1 - 1e-6);
                        if (kernel_vol_i > floor_vol) {
                            // clipping only shrinks the volume: j's box first, then j's planes in a
                            // strided order, stopping once the volume cannot pass the threshold
                            S.P = kernel_poly;
                            for (int k = 0; k < 3; ++k) {
                                double h[4] = {0, 0, 0, 0};
                                h[k] = 1, h[3] = -(cj.bbox[2 * k + 1] + 1.0);
                                S.P.clip(h);
                                h[k] = -1, h[3] = cj.bbox[2 * k] - 1.0;
                                S.P.clip(h);
                            }
                            bool below = S.P.volume() <= floor_vol;
                            const int stride = 16;
                            for (int r = 0; r < stride && !below && !S.P.empty(); ++r) {
                                for (int f = r; f < n_faces && !S.P.empty(); f += stride) S.P.clip(&S.hs[4 * f]);
                                if (r + 1 < stride && S.P.volume() <= floor_vol) below = true;
                            }
                            if (!below) A_kernel = (float)S.P.volume();
                        }
                    }
                    S.secs[0] += std::chrono::duration<double>(clock::now() - t0).count();
                    const float iou = A_kernel / (A_min + 1e-10);
                    return iou > thresh;
                };
                auto hull_keeps = [&]() -> bool {
                    ++S.cnt[7];
                    // 4. convex hulls (an upper bound)
                    const auto t0 = clock::now();
                    float A_hull = 1.e10f;
                    const bool hull_j_ok = hull_i_ok && convex_hull_halfspaces(S.polyverts.data(), n_rays, S.hull_j);
                    S.secs[3] += std::chrono::duration<double>(clock::now() - t0).count();
                    if (hull_j_ok && strictly_inside(hull_i.data(), hull_i.size() / 4, mid) &&
                        strictly_inside(S.hull_j.data(), S.hull_j.size() / 4, mid)) {
                        // clipping only shrinks the volume: j's corners' box first, then j's facets
                        // in a strided order, stopping once the volume is below the threshold
                        // (j is kept whatever the rest would cut)
                        const double keep_below = (double)thresh * ((double)A_min + 1e-10) * (1 - 1e-6);
                        S.P = hull_poly;
                        double jlo[3], jhi[3];
                        for (int k = 0; k < 3; ++k) jlo[k] = INFINITY, jhi[k] = -INFINITY;
                        for (int a = 0; a < n_rays; ++a)
                            for (int k = 0; k < 3; ++k) {
                                jlo[k] = std::min(jlo[k], (double)S.polyverts[3 * a + k]);
                                jhi[k] = std::max(jhi[k], (double)S.polyverts[3 * a + k]);
                            }
                        for (int k = 0; k < 3; ++k) {
                            double h[4] = {0, 0, 0, 0};
                            h[k] = 1, h[3] = -(jhi[k] + 1e-3);
                            S.P.clip(h);
                            h[k] = -1, h[3] = jlo[k] - 1e-3;
                            S.P.clip(h);
                        }
                        const size_t nh = S.hull_j.size() / 4;
                        const size_t stride = 16;
                        bool below = S.P.volume() <= keep_below;
                        for (size_t r = 0; r < stride && !below && !S.P.empty(); ++r) {
                            for (size_t f = r; f < nh && !S.P.empty(); f += stride) S.P.clip(&S.hull_j[4 * f]);
                            if (r + 1 < stride && S.P.volume() <= keep_below) below = true;
                        }
                        A_hull = below ? 0.f : (float)S.P.volume();
                    }
                    S.secs[1] += std::chrono::duration<double>(clock::now() - t0).count();
                    const float iou = A_hull / (A_min + 1e-10);  // StarDist's float ratio
                    return iou <= thresh;
                };
                auto t0 = clock::now();
                const int voxels = count_voxels(cj, dj, S);
                S.secs[2] += std::chrono::duration<double>(clock::now() - t0).count();
                const float iou = (float)voxels / (A_min + 1e-10);
                if (!(iou > thresh)) {
                    if (kernel_suppresses()) ++S.cnt[2], suppressed[j] = 1, suppressed_by(j, i);
                    else ++S.cnt[4];
                    continue;
                }
                const double hull_keeps_below = (double)thresh * ((double)A_min + 1e-10) * (1 + 1e-6) + 1e-9;
                if (!hull_i_ok || fan_inside_volume(cj.center, S.polyverts.data(), faces, n_faces, hull_i_soa, S.inside,
                                                    hull_keeps_below) > hull_keeps_below) {
                    ++S.cnt[5], ++S.cnt[4];
                    suppressed[j] = 1, suppressed_by(j, i);
                    continue;
                }
                if (!hull_keeps()) {
                    ++S.cnt[4];
                    suppressed[j] = 1, suppressed_by(j, i);
                    continue;
                }
                if (kernel_suppresses()) ++S.cnt[2], suppressed[j] = 1, suppressed_by(j, i);
                else ++S.cnt[3];
            }
        };
        const int64_t nt = (int64_t)hard.size();
        if (threads > 1 && nt >= 2) parallel_for_tid(nt, threads, work, 1);
        else work(0, nt, 0);
    }
    if (n > 0 && !suppressed[n - 1]) {
        keep[n - 1] = 1;
        ++st.kept;
    }
    for (const Scratch& S : scratch) {
        st.decided_upper_bound += S.cnt[0];
        st.decided_inner_sphere += S.cnt[1];
        st.decided_kernel += S.cnt[2];
        st.decided_hull += S.cnt[3];
        st.decided_render += S.cnt[4];
        st.hull_skipped += S.cnt[5];
        st.kernel_tested += S.cnt[6];
        st.hull_tested += S.cnt[7];
        st.seconds_kernel += S.secs[0];
        st.seconds_hull += S.secs[1];
        st.seconds_render += S.secs[2];
        st.seconds_hull_build += S.secs[3];
    }
    if (stats) *stats = st;
    return keep;
}
}  // namespace

// ---- boxes, and which decisions over a block are the whole set's ----------------------------
void boxes_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts, int32_t* out) {
    for (int64_t i = 0; i < n; ++i) {
        int bbox[6];
        polyhedron_bbox(dist + i * n_rays, points + 3 * i, verts, n_rays, bbox);
        for (int k = 0; k < 6; ++k) out[6 * i + k] = bbox[k];
    }
}

// The rule of certify_2d (nms2d.cpp), with two differences: a dropped candidate is certain
// when the kept one that suppressed it here is (else when another certain kept one would),
// and a pair's decision is that of nms_3d over the two alone with the whole set's axis scale
// (StarDist's cascade for a pair reads nothing else).
std::vector<uint8_t> certify_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
                                const int32_t* faces, int n_faces, float thresh, const float* aniso,
                                const uint8_t* keep, const int64_t* suppressor, const uint8_t* exposed,
                                const int64_t* reach) {
    std::vector<uint8_t> certain(n, 1);
    if (n == 0) return certain;
    std::vector<float> pair_dist(2 * n_rays), pair_points(6);
    FaceLocator locator;
    locator.build(verts, n_rays, faces, n_faces);
    auto suppresses = [&](int64_t j, int64_t i) {  // kept j (ranked first) drops i
        std::copy(dist + j * n_rays, dist + (j + 1) * n_rays, pair_dist.begin());
        std::copy(dist + i * n_rays, dist + (i + 1) * n_rays, pair_dist.begin() + n_rays);
        std::copy(points + 3 * j, points + 3 * j + 3, pair_points.begin());
        std::copy(points + 3 * i, points + 3 * i + 3, pair_points.begin() + 3);
        return nms_3d_with(locator, pair_dist.data(), pair_points.data(), 2, n_rays, verts, faces, n_faces, thresh, 1,
                           nullptr, aniso, nullptr)[1] == 0;
    };
    int64_t reach_max = 0, lo[3], hi[3];
    std::vector<int64_t> centre(3 * n);
    for (int k = 0; k < 3; ++k) lo[k] = std::numeric_limits<int64_t>::max(), hi[k] = std::numeric_limits<int64_t>::min();
    for (int64_t i = 0; i < n; ++i) {
        reach_max = std::max(reach_max, reach[i]);
        for (int k = 0; k < 3; ++k) {
            centre[3 * i + k] = (int64_t)std::floor(points[3 * i + k]);
            lo[k] = std::min(lo[k], centre[3 * i + k]), hi[k] = std::max(hi[k], centre[3 * i + k]);
        }
    }
    const int64_t bucket = std::max<int64_t>(16, reach_max);
    int64_t nb[3];
    for (int k = 0; k < 3; ++k) nb[k] = (hi[k] - lo[k]) / bucket + 1;
    std::vector<std::vector<int64_t>> uncertain(nb[0] * nb[1] * nb[2]), kept_certain(uncertain.size());
    std::vector<int64_t> near;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t* c = &centre[3 * i];
        const int64_t span = reach[i] + reach_max;
        int64_t b0[3], b1[3];
        for (int k = 0; k < 3; ++k) {
            b0[k] = std::max<int64_t>(0, (c[k] - span - lo[k]) / bucket);
            b1[k] = std::min<int64_t>(nb[k] - 1, (c[k] + span - lo[k]) / bucket);
        }
        auto within = [&](int64_t j) {
            const int64_t s = reach[i] + reach[j];
            for (int k = 0; k < 3; ++k)
                if (std::abs(centre[3 * j + k] - c[k]) > s) return false;
            return true;
        };
        auto gather = [&](const std::vector<std::vector<int64_t>>& from) {
            near.clear();
            for (int64_t z = b0[0]; z <= b1[0]; ++z)
                for (int64_t y = b0[1]; y <= b1[1]; ++y)
                    for (int64_t x = b0[2]; x <= b1[2]; ++x)
                        for (int64_t j : from[(z * nb[1] + y) * nb[2] + x])
                            if (within(j)) near.push_back(j);
        };
        bool ok;
        if (keep[i]) {
            // uncertain kept ones were tested against i here and did not drop it
            ok = !exposed[i];
            if (ok) gather(uncertain);
            for (size_t q = 0; ok && q < near.size(); ++q) ok = keep[near[q]] || !suppresses(near[q], i);
        } else {
            const int64_t s = suppressor[i];
            ok = s >= 0 && s < i && certain[s];
            if (!ok) {
                gather(kept_certain);
                for (size_t q = 0; !ok && q < near.size(); ++q) ok = suppresses(near[q], i);
            }
        }
        certain[i] = ok;
        const int64_t b = (((c[0] - lo[0]) / bucket) * nb[1] + (c[1] - lo[1]) / bucket) * nb[2] + (c[2] - lo[2]) / bucket;
        if (!ok)
            uncertain[b].push_back(i);
        else if (keep[i])
            kept_certain[b].push_back(i);
    }
    return certain;
}

// ---- rendering (StarDist's "full" mode) -----------------------------------------------------
void render_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
               const int32_t* faces, int n_faces, const int32_t* labels, int32_t* out, int64_t nz, int64_t ny,
               int64_t nx, int n_threads, int64_t oz, int64_t oy, int64_t ox) {
    std::vector<float> polyverts(3 * n_rays);
    std::vector<double> kernel(4 * n_faces);
    std::vector<float> radii;
    FaceLocator locator;
    locator.build(verts, n_rays, faces, n_faces);
    for (int64_t i = 0; i < n; ++i) {
        const float* d = dist + i * n_rays;
        const float* c = points + 3 * i;
        int bbox[6];
        polyhedron_bbox(d, c, verts, n_rays, bbox);
        polyhedron_polyverts(d, c, verts, n_rays, polyverts.data());
        for (int f = 0; f < n_faces; ++f)
            kernel_halfspace(&polyverts[3 * faces[3 * f]], &polyverts[3 * faces[3 * f + 1]],
                             &polyverts[3 * faces[3 * f + 2]], &kernel[4 * f]);
        const int64_t z0 = std::max<int64_t>(oz, bbox[0]), z1 = std::min<int64_t>(oz + nz - 1, bbox[1]);
        const int64_t y0 = std::max<int64_t>(oy, bbox[2]), y1 = std::min<int64_t>(oy + ny - 1, bbox[3]);
        const int64_t x0 = std::max<int64_t>(ox, bbox[4]), x1 = std::min<int64_t>(ox + nx - 1, bbox[5]);
        if (z1 < z0 || y1 < y0 || x1 < x0) continue;
        const int32_t label = labels[i];
        const bool full = has_short_ray(d, n_rays);
        face_radii(c, polyverts.data(), faces, n_faces, radii);
        parallel_for(z1 - z0 + 1, n_threads, [&](int64_t a, int64_t b) {
            for (int64_t z = z0 + a; z < z0 + b; ++z)
                for (int64_t y = y0; y <= y1; ++y)
                    for (int64_t x = x0; x <= x1; ++x) {
                        int32_t& o = out[((z - oz) * ny + y - oy) * nx + x - ox];
                        if (o != 0) continue;  // the first (highest scored) polyhedron keeps a voxel
                        // inside the triangle fan about the centre, or inside the kernel
                        bool inside = inside_polyhedron_fast((float)z, (float)y, (float)x, c, polyverts.data(), faces,
                                                             n_faces, locator, full, radii.data());
                        for (int f = 0; f < n_faces && !inside; ++f) {
                            const double* h = &kernel[4 * f];
                            if (h[0] * (double)z + h[1] * (double)y + h[2] * (double)x + h[3] > 0) break;
                            if (f + 1 == n_faces) inside = true;
                        }
                        if (inside) o = label;
                    }
        });
    }
}

}  // namespace starnms
}  // namespace segrt
