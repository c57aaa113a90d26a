// 2D polygon overlap routines (internal): exact intersection areas as Clipper rounds them,
// the bounds that settle most pairs without them, and the polygon preparation of the NMS loop.
// Everything sits in an anonymous namespace so that each file including this header (the
// suppression loop, the pairwise test entry points) gets its own copy, inlined where it is
// hot, exactly as when they shared one translation unit. See starnms.hpp for the conventions.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SEGRT_X86_AVX2 1
#else
#define SEGRT_X86_AVX2 0
#endif

#include "clipper_bridge.hpp"
#include "../parallel.hpp"
#include "starnms.hpp"

namespace segrt {
namespace starnms {

namespace {

struct Pt {
    int64_t x, y;
};

inline int64_t orient(const Pt& a, const Pt& b, const Pt& c) {
    return (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x);
}
inline int sgn(int64_t v) { return (v > 0) - (v < 0); }

// ---- Clipper-compatible rounding of an edge crossing ---------------------------------
// Clipper orders an edge bottom (larger y) to top and keeps dx = dX/dY; crossings are
// rounded half away from zero, the row from the line equations and the column from the
// steeper edge; a crossing with a horizontal edge takes the other edge's column at that row.
struct ClipEdge {
    Pt bot, top;
    double dx;
    bool horizontal;
};

inline ClipEdge make_clip_edge(const Pt& cur, const Pt& next) {
    ClipEdge e;
    if (cur.y >= next.y) {
        e.bot = cur;
        e.top = next;
    } else {
        e.bot = next;
        e.top = cur;
    }
    const int64_t dy = e.top.y - e.bot.y;
    e.horizontal = (dy == 0);
    e.dx = e.horizontal ? -1.0e40 : (double)(e.top.x - e.bot.x) / (double)dy;
    return e;
}

inline int64_t clip_round(double v) { return v < 0 ? (int64_t)(v - 0.5) : (int64_t)(v + 0.5); }

inline int64_t top_x(const ClipEdge& e, int64_t y) {
    return y == e.top.y ? e.top.x : e.bot.x + clip_round(e.dx * (double)(y - e.bot.y));
}

Pt clipper_crossing(const ClipEdge& a, const ClipEdge& b) {
    if (a.horizontal) return Pt{top_x(b, a.bot.y), a.bot.y};
    if (b.horizontal) return Pt{top_x(a, b.bot.y), b.bot.y};
    // Clipper's first edge is the one on the left just below the crossing: the smaller dx.
    const ClipEdge& e1 = (a.dx < b.dx) ? a : b;
    const ClipEdge& e2 = (a.dx < b.dx) ? b : a;
    Pt ip;
    if (e1.dx == 0) {
        ip.x = e1.bot.x;
        const double b2 = (double)e2.bot.y - ((double)e2.bot.x / e2.dx);
        ip.y = clip_round((double)ip.x / e2.dx + b2);
    } else if (e2.dx == 0) {
        ip.x = e2.bot.x;
        const double b1 = (double)e1.bot.y - ((double)e1.bot.x / e1.dx);
        ip.y = clip_round((double)ip.x / e1.dx + b1);
    } else {
        const double b1 = (double)e1.bot.x - (double)e1.bot.y * e1.dx;
        const double b2 = (double)e2.bot.x - (double)e2.bot.y * e2.dx;
        const double q = (b2 - b1) / (e1.dx - e2.dx);
        ip.y = clip_round(q);
        ip.x = std::fabs(e1.dx) < std::fabs(e2.dx) ? clip_round(e1.dx * q + b1)
                                                   : clip_round(e2.dx * q + b2);
    }
    if (ip.y < e1.top.y || ip.y < e2.top.y) {
        ip.y = std::max(e1.top.y, e2.top.y);
        ip.x = std::fabs(e1.dx) < std::fabs(e2.dx) ? top_x(e1, ip.y) : top_x(e2, ip.y);
    }
    const int64_t bottom = std::min(e1.bot.y, e2.bot.y);
    if (ip.y > bottom) {
        ip.y = bottom;
        ip.x = std::fabs(e1.dx) > std::fabs(e2.dx) ? top_x(e2, ip.y) : top_x(e1, ip.y);
    }
    return ip;
}

// ---- polygon helpers -------------------------------------------------------------------
inline int64_t shoelace2(const Pt* v, int n) {
    int64_t s = 0;
    for (int k = 0; k < n; ++k) {
        const Pt& a = v[k];
        const Pt& b = v[k + 1 == n ? 0 : k + 1];
        s += a.x * b.y - a.y * b.x;
    }
    return s;
}

// An exact, order-preserving key of a direction's angle in [0, 4) ("diamond angle"). For
// integer vectors below 2^26 distinct directions differ by far more than a rounding step, and
// parallel vectors give bit-identical keys (IEEE division rounds equal rationals equally).
inline double angle_key(double x, double y) {
    // branch-free so the loops computing keys vectorise
    const bool up = y >= 0, right = x >= 0, left = x < 0;
    const double base = up ? (right ? 0.0 : 1.0) : (left ? 2.0 : 3.0);
    const double num = up ? (right ? y : -x) : (left ? -y : x);
    const double den = up ? (right ? x + y : y - x) : (left ? -x - y : x - y);
    return base + num / den;
}

// Star-shapedness about a centre z given doubled (z2 = 2 z, so z may be a midpoint).
// Weakly star-shaped is enough: an edge may run radially (truncation puts consecutive
// vertices on one ray), but no vertex may sit on z and the boundary winds once.
// Writes each vertex's angle key about z and returns the index of the first vertex in
// angular order, or -1 when the polygon is not star-shaped about z.
int star_prepare(const Pt* v, int n, const Pt& z2, double* key) {
    if (n < 3) return -1;
    for (int k = 0; k < n; ++k) key[k] = angle_key((double)(2 * v[k].x - z2.x), (double)(2 * v[k].y - z2.y));
    int wraps = 0, start = -1;
    bool bad = false;
    int64_t px = 2 * v[n - 1].x - z2.x, py = 2 * v[n - 1].y - z2.y;
    double pk = key[n - 1];
    for (int k = 0; k < n; ++k) {
        const int64_t x = 2 * v[k].x - z2.x, y = 2 * v[k].y - z2.y;
        const int64_t c = px * y - py * x;
        // a clockwise step, a step through z, or a vertex on z
        bad |= (c < 0) | ((c == 0) & (px * x + py * y <= 0));
        const bool wrap = key[k] < pk;
        wraps += wrap;
        start = wrap ? k : start;
        px = x;
        py = y;
        pk = key[k];
    }
    return (!bad && wraps == 1) ? start : -1;
}

// Copies a polygon starting at its first vertex in angular order, closing vertex and an
// infinite key appended, so the merge below needs neither modulo nor end tests.
inline void rotate_star(const Pt* v, const double* key, int n, int start, Pt* out, double* okey) {
    int k = start;
    for (int i = 0; i < n; ++i) {
        out[i] = v[k];
        okey[i] = key[k];
        if (++k == n) k = 0;
    }
    out[n] = out[0];
    okey[n] = std::numeric_limits<double>::infinity();
}


// Twice the lattice area of a n b when both are star-shaped about z: seen from z, the
// boundary of a n b is the inner of the two boundaries at every angle. Events are the
// vertices of both in angular order (A, B rotated by rotate_star); between two events one
// edge of each is active, and where the inner one changes strictly inside a wedge those two
// edges cross. The ring comes out in angular order, so its area accumulates as triangles
// about z that are never negative (up to crossing rounding): once the running sum reaches
// `enough` (twice an area) the answer is certain and the merge stops early.
// AC: Clipper edges of A's rotated edges (null: computed here).
int64_t star_intersection_area2(const Pt* A, const double* AK, const ClipEdge* AC, int n, const Pt* B,
                                const double* BK, int m, const Pt& z2, int64_t enough, bool* stopped_early) {
    const int ne = n + m;
    int ia = 0, ib = 0, la = n - 1, lb = m - 1;
    int g_first = 0, gp = 0, pla = 0, plb = 0;
    bool have_first = false;
    int64_t fx = 0, fy = 0, px = 0, py = 0, acc4 = 0;
    const int64_t enough4 = enough >= std::numeric_limits<int64_t>::max() / 4 ? std::numeric_limits<int64_t>::max() : 4 * enough;
    *stopped_early = false;
    auto push = [&](const Pt& p) {
        const int64_t x = 2 * p.x - z2.x, y = 2 * p.y - z2.y;
        if (have_first) acc4 += px * y - py * x;
        else {
            fx = x;
            fy = y;
            have_first = true;
        }
        px = x;
        py = y;
    };
    auto crossing = [&](int ea, int eb) {
        const ClipEdge ca = AC ? AC[ea] : make_clip_edge(A[ea], A[ea + 1]);
        return clipper_crossing(ca, make_clip_edge(B[eb], B[eb + 1]));
    };
    for (int e = 0; e < ne; ++e) {
        const bool take_a = AK[ia] <= BK[ib];
        const Pt v = take_a ? A[ia] : B[ib];
        la = take_a ? ia : la;
        lb = take_a ? lb : ib;
        const Pt o0 = take_a ? B[lb] : A[la];
        const Pt o1 = take_a ? B[lb + 1] : A[la + 1];
        const int side = sgn(orient(o0, o1, v));
        // +1: a is the inner boundary here, -1: b is, 0: they touch
        const int g = take_a ? side : -side;
        if (e == 0) g_first = g;
        else if (gp * g < 0) push(crossing(pla, plb));
        // keep the event vertex when its own polygon is the inner one (or they touch)
        if (take_a ? g >= 0 : g <= 0) push(v);
        gp = g;
        pla = la;
        plb = lb;
        ia += take_a;
        ib += !take_a;
        if ((e & 7) == 7 && acc4 >= enough4) {
            *stopped_early = true;
            return acc4 / 4;
        }
    }
    if (gp * g_first < 0) push(crossing(pla, plb));
    if (!have_first) return 0;
    acc4 += px * fy - py * fx;
    const int64_t a2 = acc4 / 4;
    return a2 < 0 ? -a2 : a2;
}

// ---- a lower bound for a common star centre ------------------------------------------
// Nearly every pair that reaches exact work ends in a suppression with room to spare; a bound
// that proves it costs a fraction of the merge. Angles about a's centre z are cut into
// kSectors equal steps of the angle key. profile[s] is a radius within which a holds every
// point of sector s: the least distance from z to an edge whose angular span meets the
// sector (a is star-shaped about z, so its boundary at any angle lies on such an edge).
constexpr int kSectors = 64;
constexpr int kSpan = 4;  // StarProfile keeps minima over up to kSpan consecutive sectors
constexpr int kMaxRays = 255;

struct StarProfile {
    // [s][l]: least profile over sectors s .. s + l (cyclic) in steps of `unit` (1/255 of the
    // largest), rounded down. One byte each: a kept polygon's profile is read from anywhere
    // in the image (rank order is random in space), so its cache lines are most of a
    // lookup's cost; the coarser radii settle 3 in 10 000 fewer pairs.
    uint8_t min_over[kSectors][kSpan];
    double unit;
    // least profile over sectors s0 .. s1, cyclic
    inline double range(int s0, int s1) const {
        const int l = (s1 - s0) & (kSectors - 1);
        if (l < kSpan) return min_over[s0][l] * unit;
        uint8_t r = min_over[s0][kSpan - 1];
        for (int s = s0 + kSpan; s <= s0 + l; ++s) r = std::min(r, min_over[s & (kSectors - 1)][0]);
        return r * unit;
    }
};

inline int key_sector(double key) {
    const int s = (int)(key * (kSectors / 4.0));
    return s < kSectors ? s : kSectors - 1;
}

// The point where the ray from the origin at angle key `key` (in [0, 4)) meets the line
// through p along e (relative to the centre; the ray must cross the line).
inline void ray_meets_line(double key, double px, double py, double ex, double ey, double* x, double* y) {
    const int quadrant = (int)key;
    const double t = key - quadrant;
    // the direction whose angle_key is `key`: (1 - t, t) turned by quadrant quarter turns
    double dx = 1.0 - t, dy = t;
    for (int q = 0; q < quadrant; ++q) {
        const double turned = -dy;
        dy = dx;
        dx = turned;
    }
    const double s = (px * ey - py * ex) / (dx * ey - dy * ex);
    *x = s * dx;
    *y = s * dy;
}

inline double segment_distance(double px, double py, double qx, double qy) {
    const double ex = qx - px, ey = qy - py;
    const double len2 = ex * ex + ey * ey;
    double t = len2 > 0 ? -(px * ex + py * ey) / len2 : 0.0;
    t = t < 0 ? 0 : (t > 1 ? 1 : t);
    const double dx = px + t * ex, dy = py + t * ey;
    return std::sqrt(dx * dx + dy * dy);
}

// rot / rot_key: a rotated by rotate_star about z (keys ascending, rot[n] == rot[0]).
// An edge spanning several sectors counts in each with the distance of its own piece there
// (cut at the sector's bounding rays): a long oblique edge comes close to z in one sector
// only, and the radii of the others are what most bounds are made of.
void star_profile(const Pt* rot, const double* rot_key, int n, const Pt& z, StarProfile& P) {
    double profile[kSectors];
    for (int s = 0; s < kSectors; ++s) profile[s] = std::numeric_limits<double>::infinity();
    constexpr double kCutError = 1e-9;  // relative; far above the rounding of a cut point
    for (int k = 0; k < n; ++k) {
        const double px = (double)(rot[k].x - z.x), py = (double)(rot[k].y - z.y);
        const double qx = (double)(rot[k + 1].x - z.x), qy = (double)(rot[k + 1].y - z.y);
        const int s0 = key_sector(rot_key[k]);
        const int s1 = k + 1 < n ? key_sector(rot_key[k + 1]) : key_sector(rot_key[0]) + kSectors;
        double ax = px, ay = py;  // where the edge enters sector s
        for (int s = s0; s <= s1; ++s) {
            double bx = qx, by = qy;  // where it leaves
            if (s < s1) {
                const int next = s + 1 < kSectors ? s + 1 : s + 1 - kSectors;
                ray_meets_line(next * (4.0 / kSectors), px, py, qx - px, qy - py, &bx, &by);
            }
            const double d = segment_distance(ax, ay, bx, by) * (1.0 - kCutError);
            double& r = profile[s < kSectors ? s : s - kSectors];
            r = d < r ? d : r;
            ax = bx, ay = by;
        }
    }
    double top = 0;
    for (int s = 0; s < kSectors; ++s) top = std::max(top, profile[s]);
    // q * unit is exact in double (q < 2^8, unit a float) and never above the radius, so a
    // radius inside a stays inside
    P.unit = top > 0 && std::isfinite(top) ? (double)(float)(top / 255.0) : 0.0;  // 0: every radius 0
    // each sector's radius in units (the largest q with q * unit <= r), then the least over
    // spans: quantising is monotone, so the least of the quantised radii is the quantised least
    uint8_t quantised[kSectors];
    for (int s = 0; s < kSectors; ++s) {
        const double r = profile[s];
        int q = P.unit > 0 ? (int)std::min(255.0, std::floor(r / P.unit)) : 0;
        while (q > 0 && q * P.unit > r) --q;
        quantised[s] = (uint8_t)q;
    }
    for (int s = 0; s < kSectors; ++s) {
        uint8_t q = quantised[s];
        for (int l = 0; l < kSpan; ++l) {
            q = std::min(q, quantised[(s + l) & (kSectors - 1)]);
            P.min_over[s][l] = q;
        }
    }
}

// Twice a lower bound on |a n b|. b: its vertices relative to its own centre, (x, y) pairs,
// which lies at z + dz (z: a's centre, about which P is a's profile). Seen from z, b is the
// signed sum of the triangles (z, b_k, b_k+1) (for a simple b its winding number is that
// sum); each counter-clockwise triangle, shrunk towards z until no point of it lies beyond
// the profile over its wedge, lies in a, and a clockwise one can take away at most its own
// area. Counter-clockwise triangles only when b is star-shaped about z (the test
// star_prepare makes); otherwise b must be known to be simple (`simple`: star-shaped about
// its own centre) or -1 is returned.
// This bound is most of the NMS's work, so the per-vertex loops are written to vectorise:
// angles and radii in float, each vertex's sector range widened by the key's rounding error
// and the radius lowered by its own, so that the bound stays a bound; the star test and
// the sum in double (exact products: coordinates below 2^17). m <= kMaxRays.
// AVX2 where the CPU has it, chosen at load time (the build stays portable)
__attribute__((target_clones("avx2", "default"))) double star_lower_bound2_double(const StarProfile& P, const int16_t* rel, int m, int64_t dzx, int64_t dzy, bool simple) {
    constexpr float kKeyError = 1e-5f;  // far above float rounding of a key in [0, 4)
    // local arrays: the compiler sees they alias nothing and vectorises without run-time checks
    double X[kMaxRays + 1], Y[kMaxRays + 1], inv_rho[kMaxRays + 1];  // the first vertex repeated at m
    double cross[kMaxRays], R[kMaxRays];
    float inv_rho_f[kMaxRays];
    int32_t sec_lo[kMaxRays + 1], sec_hi[kMaxRays + 1];
    const float fx = (float)dzx, fy = (float)dzy;
    for (int k = 0; k < m; ++k) {
        const float x = fx + (float)rel[2 * k], y = fy + (float)rel[2 * k + 1];
        const float ax = std::fabs(x), ay = std::fabs(y);
        const bool up = y >= 0, right = x >= 0;
        // angle_key: quadrant base plus the diamond fraction
        const float base = up ? (right ? 0.0f : 1.0f) : (right ? 3.0f : 2.0f);
        const float key = base + (up != right ? ax : ay) / (ax + ay);
        inv_rho_f[k] = 1.0f / std::sqrt(x * x + y * y);
        const float lo = key - kKeyError, hi = key + kKeyError;
        const int32_t slo = (int32_t)((lo < 0.0f ? lo + 4.0f : lo) * (kSectors / 4.0f));
        const int32_t shi = (int32_t)((hi >= 4.0f ? hi - 4.0f : hi) * (kSectors / 4.0f));
        // clamped: a vertex on z has no angle (its triangles have no area and no wedge)
        sec_lo[k] = std::min(std::max(slo, 0), kSectors - 1);
        sec_hi[k] = std::min(std::max(shi, 0), kSectors - 1);
    }
    const int32_t ix = (int32_t)dzx, iy = (int32_t)dzy;
    for (int k = 0; k < m; ++k) {
        X[k] = (double)(ix + (int32_t)rel[2 * k]);
        Y[k] = (double)(iy + (int32_t)rel[2 * k + 1]);
        inv_rho[k] = (double)inv_rho_f[k] * (1.0 - 1e-5);  // below 1 / rho despite float rounding
    }
    X[m] = X[0];
    Y[m] = Y[0];
    inv_rho[m] = inv_rho[0];
    sec_hi[m] = sec_hi[0];
    // star-shaped about z: every step counter-clockwise (or radial, outwards), once around
    // (the angle key wraps exactly where a counter-clockwise step enters y >= 0 from y < 0)
    double bad = 0, wraps = 0;
    for (int k = 0; k < m; ++k) {
        const double c = X[k] * Y[k + 1] - Y[k] * X[k + 1];
        const double d = X[k] * X[k + 1] + Y[k] * Y[k + 1];
        cross[k] = c;
        bad += (c < 0 || (c == 0 && d <= 0)) ? 1.0 : 0.0;
        wraps += (Y[k] < 0 && Y[k + 1] >= 0) ? 1.0 : 0.0;
    }
    if ((bad != 0 || wraps != 1) && !simple) return -1;
    // each counter-clockwise wedge's radius
    for (int k = 0; k < m; ++k) R[k] = cross[k] > 0 ? P.range(sec_lo[k], sec_hi[k + 1]) : 0.0;
    double sum = 0;
    for (int k = 0; k < m; ++k) {
        const double f0 = R[k] * inv_rho[k], f1 = R[k] * inv_rho[k + 1];  // shrink: min(1, r / rho)
        sum += cross[k] > 0 ? cross[k] * (f0 < 1.0 ? f0 : 1.0) * (f1 < 1.0 ? f1 : 1.0) : cross[k];
    }
    if (sum <= 0) return 0;
    return sum * (1.0 - 1e-9);
}

#if SEGRT_X86_AVX2
// The same bound eight vertices at a time in float, for coordinates below 2^11 about z
// (every polygon of a nucleus-sized object): there the cross and dot products are exact in
// float, so the star test is the double one's; the radii, shrink factors and sums round,
// each by a few float ulps relative to a term of one sign, so the positive sum is lowered
// and the negative one raised by 1e-5 (far above that rounding) and the result stays a bound.
// Returns -2 where it does not apply (coordinates too large); the caller takes the double one.
__attribute__((target("avx2"))) double star_lower_bound2_avx2(const StarProfile& P, const int16_t* rel, int m,
                                                              int64_t dzx, int64_t dzy, bool simple) {
    if (std::abs(dzx) >= 2048 || std::abs(dzy) >= 2048) return -2;
    alignas(32) float X[kMaxRays + 17], Y[kMaxRays + 17], IR[kMaxRays + 17];
    alignas(32) int32_t SL[kMaxRays + 17], SH[kMaxRays + 17];
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256 fx = _mm256_set1_ps((float)dzx), fy = _mm256_set1_ps((float)dzy);
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), four = _mm256_set1_ps(4.0f);
    const __m256 sign = _mm256_set1_ps(-0.0f), key_err = _mm256_set1_ps(1e-5f), sectors = _mm256_set1_ps(kSectors / 4.0f);
    const __m256i top_sector = _mm256_set1_epi32(kSectors - 1), izero = _mm256_setzero_si256();
    const __m256 limit = _mm256_set1_ps(2047.0f);
    __m256 far = zero;
    for (int k = 0; k < m; k += 8) {
        const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(m - k), lane);
        // (x, y) int16 pairs: one 32-bit lane per vertex, x in the low half
        const __m256i v = _mm256_maskload_epi32((const int*)(rel + 2 * k), valid);
        const __m256 x = _mm256_add_ps(fx, _mm256_cvtepi32_ps(_mm256_srai_epi32(_mm256_slli_epi32(v, 16), 16)));
        const __m256 y = _mm256_add_ps(fy, _mm256_cvtepi32_ps(_mm256_srai_epi32(v, 16)));
        const __m256 ax = _mm256_andnot_ps(sign, x), ay = _mm256_andnot_ps(sign, y);
        far = _mm256_or_ps(far, _mm256_cmp_ps(_mm256_max_ps(ax, ay), limit, _CMP_GT_OQ));
        const __m256 up = _mm256_cmp_ps(y, zero, _CMP_GE_OQ), right = _mm256_cmp_ps(x, zero, _CMP_GE_OQ);
        // angle_key: quadrant base plus the diamond fraction, as the double bound takes it
        const __m256 base = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_set1_ps(2.0f), _mm256_set1_ps(3.0f), right),
                                             _mm256_blendv_ps(one, zero, right), up);
        const __m256 across = _mm256_xor_ps(up, right);  // up != right
        const __m256 key = _mm256_add_ps(base, _mm256_div_ps(_mm256_blendv_ps(ay, ax, across), _mm256_add_ps(ax, ay)));
        const __m256 rho2 = _mm256_add_ps(_mm256_mul_ps(x, x), _mm256_mul_ps(y, y));
        _mm256_store_ps(IR + k, _mm256_div_ps(one, _mm256_sqrt_ps(rho2)));
        const __m256 lo = _mm256_sub_ps(key, key_err), hi = _mm256_add_ps(key, key_err);
        const __m256 lo_w = _mm256_blendv_ps(lo, _mm256_add_ps(lo, four), _mm256_cmp_ps(lo, zero, _CMP_LT_OQ));
        const __m256 hi_w = _mm256_blendv_ps(hi, _mm256_sub_ps(hi, four), _mm256_cmp_ps(hi, four, _CMP_GE_OQ));
        // a vertex on z (NaN key) converts to INT_MIN and clamps to 0: its triangles have no area
        const __m256i slo = _mm256_cvttps_epi32(_mm256_mul_ps(lo_w, sectors));
        const __m256i shi = _mm256_cvttps_epi32(_mm256_mul_ps(hi_w, sectors));
        _mm256_store_si256((__m256i*)(SL + k), _mm256_min_epi32(_mm256_max_epi32(slo, izero), top_sector));
        _mm256_store_si256((__m256i*)(SH + k), _mm256_min_epi32(_mm256_max_epi32(shi, izero), top_sector));
        _mm256_store_ps(X + k, x);
        _mm256_store_ps(Y + k, y);
    }
    if (_mm256_movemask_ps(far)) return -2;
    X[m] = X[0], Y[m] = Y[0], IR[m] = IR[0], SH[m] = SH[0];
    const __m256 unit = _mm256_set1_ps((float)P.unit);  // a float (star_profile)
    const __m256i span_max = _mm256_set1_epi32(kSpan - 1), wrap = _mm256_set1_epi32(kSectors - 1);
    const __m256i byte = _mm256_set1_epi32(0xFF), span = _mm256_set1_epi32(kSpan), minus_one = _mm256_set1_epi32(-1);
    __m256 pos = zero, neg = zero, bad = zero;
    __m256i wraps = izero;
    for (int k = 0; k < m; k += 8) {
        const __m256 valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(m - k), lane));
        const __m256 x0 = _mm256_load_ps(X + k), y0 = _mm256_load_ps(Y + k);
        const __m256 x1 = _mm256_loadu_ps(X + k + 1), y1 = _mm256_loadu_ps(Y + k + 1);
        const __m256 cross = _mm256_sub_ps(_mm256_mul_ps(x0, y1), _mm256_mul_ps(y0, x1));
        const __m256 dot = _mm256_add_ps(_mm256_mul_ps(x0, x1), _mm256_mul_ps(y0, y1));
        // star-shaped about z: every step counter-clockwise (or radial, outwards), once around
        const __m256 backwards = _mm256_or_ps(_mm256_cmp_ps(cross, zero, _CMP_LT_OQ),
                                              _mm256_and_ps(_mm256_cmp_ps(cross, zero, _CMP_EQ_OQ),
                                                            _mm256_cmp_ps(dot, zero, _CMP_LE_OQ)));
        bad = _mm256_or_ps(bad, _mm256_and_ps(valid, backwards));
        const __m256 wrapped = _mm256_and_ps(valid, _mm256_and_ps(_mm256_cmp_ps(y0, zero, _CMP_LT_OQ),
                                                                  _mm256_cmp_ps(y1, zero, _CMP_GE_OQ)));
        wraps = _mm256_sub_epi32(wraps, _mm256_castps_si256(wrapped));  // -1 per wrapping lane
        const __m256 ccw = _mm256_and_ps(valid, _mm256_cmp_ps(cross, zero, _CMP_GT_OQ));
        neg = _mm256_add_ps(neg, _mm256_and_ps(_mm256_and_ps(valid, _mm256_cmp_ps(cross, zero, _CMP_LT_OQ)), cross));
        if (_mm256_movemask_ps(ccw) == 0) continue;
        // each counter-clockwise wedge's radius: the profile's least over sectors s0 .. s1
        const __m256i s0 = _mm256_load_si256((const __m256i*)(SL + k));
        const __m256i s1 = _mm256_loadu_si256((const __m256i*)(SH + k + 1));
        const __m256i l = _mm256_and_si256(_mm256_sub_epi32(s1, s0), wrap);
        const __m256i idx = _mm256_add_epi32(_mm256_slli_epi32(s0, 2), _mm256_min_epi32(l, span_max));
        // bytes kSpan * s0 + l of min_over, read as 32-bit words (the struct continues past it)
        __m256i q = _mm256_and_si256(
            _mm256_mask_i32gather_epi32(izero, (const int*)&P.min_over[0][0], idx, _mm256_castps_si256(ccw), 1), byte);
        // wedges over more than kSpan sectors: the least over the next kSpan sectors, and so on
        __m256i rest = _mm256_sub_epi32(l, span), from = _mm256_add_epi32(s0, span);
        __m256i wide = _mm256_and_si256(_mm256_castps_si256(ccw), _mm256_cmpgt_epi32(rest, minus_one));
        while (_mm256_movemask_epi8(wide)) {
            const __m256i at = _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(from, wrap), 2),
                                                _mm256_min_epi32(rest, span_max));
            const __m256i more = _mm256_and_si256(
                _mm256_mask_i32gather_epi32(byte, (const int*)&P.min_over[0][0], at, wide, 1), byte);
            q = _mm256_min_epi32(q, more);
            rest = _mm256_sub_epi32(rest, span);
            from = _mm256_add_epi32(from, span);
            wide = _mm256_and_si256(wide, _mm256_cmpgt_epi32(rest, minus_one));
        }
        const __m256 R = _mm256_mul_ps(_mm256_cvtepi32_ps(q), unit);
        // shrink towards z: min(1, r / rho) at both ends
        const __m256 f0 = _mm256_min_ps(_mm256_mul_ps(R, _mm256_load_ps(IR + k)), one);
        const __m256 f1 = _mm256_min_ps(_mm256_mul_ps(R, _mm256_loadu_ps(IR + k + 1)), one);
        pos = _mm256_add_ps(pos, _mm256_and_ps(ccw, _mm256_mul_ps(_mm256_mul_ps(cross, f0), f1)));
    }
    alignas(32) int32_t w8[8];
    _mm256_store_si256((__m256i*)w8, wraps);
    const int wrap_count = w8[0] + w8[1] + w8[2] + w8[3] + w8[4] + w8[5] + w8[6] + w8[7];
    if ((_mm256_movemask_ps(bad) != 0 || wrap_count != 1) && !simple) return -1;
    alignas(32) float p8[8], n8[8];
    _mm256_store_ps(p8, pos);
    _mm256_store_ps(n8, neg);
    double sp = 0, sn = 0;
    for (int b = 0; b < 8; ++b) sp += p8[b], sn += n8[b];
    const double sum = sp * (1.0 - 1e-5) + sn * (1.0 + 1e-5);
    return sum <= 0 ? 0 : sum;
}
#endif

inline bool star_bound_simd_available() {
#if SEGRT_X86_AVX2
    static const bool avx2 = __builtin_cpu_supports("avx2");
    return avx2;
#else
    return false;
#endif
}

// Twice a lower bound on |a n b|, as star_lower_bound2_double (the float one where it applies).
inline double star_lower_bound2(const StarProfile& P, const int16_t* rel, int m, int64_t dzx, int64_t dzy, bool simple) {
#if SEGRT_X86_AVX2
    if (star_bound_simd_available()) {
        const double lb = star_lower_bound2_avx2(P, rel, m, dzx, dzy, simple);
        if (lb != -2) return lb;
    }
#endif
    return star_lower_bound2_double(P, rel, m, dzx, dzy, simple);
}

// ---- an upper bound for pairs without a common centre -------------------------------------
// Such pairs are mostly neighbours that barely touch. Along u = zb - za, a n b lies between
// b's lowest and a's highest support value, so its area is at most that of either polygon
// cut by the other's support line: O(n + m), no crossings to round.

// Twice the area of the part of polygon v where sign * (u . x - h) >= 0 (one-plane
// Sutherland-Hodgman; exact up to double rounding for any simple polygon).
double halfplane_area2(const Pt* v, int n, int64_t ux, int64_t uy, int64_t h, int sign, const Pt& o) {
    double acc = 0, px = 0, py = 0, fx = 0, fy = 0;
    bool have = false;
    auto emit = [&](double x, double y) {
        if (have) acc += px * y - py * x;
        else fx = x, fy = y, have = true;
        px = x, py = y;
    };
    int64_t fp = sign * (ux * v[n - 1].x + uy * v[n - 1].y - h);
    for (int k = 0; k < n; ++k) {
        const Pt& p = v[k == 0 ? n - 1 : k - 1];
        const Pt& q = v[k];
        const int64_t fq = sign * (ux * q.x + uy * q.y - h);
        if ((fp >= 0) != (fq >= 0)) {
            const double t = (double)fp / (double)(fp - fq);
            emit((double)(p.x - o.x) + t * (double)(q.x - p.x), (double)(p.y - o.y) + t * (double)(q.y - p.y));
        }
        if (fq >= 0) emit((double)(q.x - o.x), (double)(q.y - o.y));
        fp = fq;
    }
    if (!have) return 0;
    acc += px * fy - py * fx;
    return acc < 0 ? -acc : acc;
}

// Twice an upper bound on |a n b| (a, b simple polygons, za != zb).
double slab_upper_bound2(const Pt* a, int n, const Pt& za, const Pt* b, int m, const Pt& zb) {
    const int64_t ux = zb.x - za.x, uy = zb.y - za.y;
    int64_t ha = std::numeric_limits<int64_t>::min(), hb = std::numeric_limits<int64_t>::max();
    for (int k = 0; k < n; ++k) ha = std::max(ha, ux * a[k].x + uy * a[k].y);
    for (int k = 0; k < m; ++k) hb = std::min(hb, ux * b[k].x + uy * b[k].y);
    if (ha <= hb) return 0;  // a separating line
    const double cap_a = halfplane_area2(a, n, ux, uy, hb, 1, za);
    const double cap_b = halfplane_area2(b, m, ux, uy, ha, -1, za);
    return std::min(cap_a, cap_b) * (1.0 + 1e-9) + 1e-6;
}

// ---- general routine -------------------------------------------------------------------
// For any pair (self-intersecting, spiky, degenerate polygons included): split every edge of
// both polygons at every contact with any other edge (crossings rounded as Clipper rounds
// them), keep each distinct piece once, and add a piece to the boundary integral when the
// NonZero intersection region lies on exactly one of its sides.
struct Split {
    double t;
    Pt p;
};

struct Piece {
    Pt s, e;
    double mx, my, dx, dy;
};

int winding(const Pt* v, int n, double x, double y) {
    int w = 0;
    for (int k = 0; k < n; ++k) {
        const Pt& a = v[k];
        const Pt& b = v[k + 1 == n ? 0 : k + 1];
        const double cr = (double)(b.x - a.x) * (y - (double)a.y) - (double)(b.y - a.y) * (x - (double)a.x);
        if ((double)a.y <= y) {
            if ((double)b.y > y && cr > 0) ++w;
        } else {
            if ((double)b.y <= y && cr < 0) --w;
        }
    }
    return w;
}

inline bool strictly_inside_segment(const Pt& p, const Pt& a, const Pt& b) {
    return (p.x - a.x) * (b.x - a.x) + (p.y - a.y) * (b.y - a.y) > 0 &&
           (p.x - b.x) * (a.x - b.x) + (p.y - b.y) * (a.y - b.y) > 0;
}

struct GeneralScratch {
    std::vector<Pt> ep, eq;
    std::vector<ClipEdge> ce;
    std::vector<Split> splits;
    std::vector<Piece> pieces;
};

int64_t general_intersection_area2(const Pt* a, int n, const Pt* b, int m, GeneralScratch& S) {
    S.ep.clear();
    S.eq.clear();
    S.ce.clear();
    S.pieces.clear();
    for (int k = 0; k < n; ++k) {
        const Pt& p = a[k];
        const Pt& q = a[k + 1 == n ? 0 : k + 1];
        if (p.x != q.x || p.y != q.y) {
            S.ep.push_back(p);
            S.eq.push_back(q);
        }
    }
    for (int k = 0; k < m; ++k) {
        const Pt& p = b[k];
        const Pt& q = b[k + 1 == m ? 0 : k + 1];
        if (p.x != q.x || p.y != q.y) {
            S.ep.push_back(p);
            S.eq.push_back(q);
        }
    }
    const int ne = (int)S.ep.size();
    for (int i = 0; i < ne; ++i) S.ce.push_back(make_clip_edge(S.ep[i], S.eq[i]));
    for (int i = 0; i < ne; ++i) {
        const Pt p0 = S.ep[i], p1 = S.eq[i];
        const int64_t ex0 = std::min(p0.x, p1.x), ex1 = std::max(p0.x, p1.x);
        const int64_t ey0 = std::min(p0.y, p1.y), ey1 = std::max(p0.y, p1.y);
        const double len2 = (double)((p1.x - p0.x) * (p1.x - p0.x) + (p1.y - p0.y) * (p1.y - p0.y));
        auto param = [&](const Pt& q) {
            return (double)((q.x - p0.x) * (p1.x - p0.x) + (q.y - p0.y) * (p1.y - p0.y)) / len2;
        };
        S.splits.clear();
        S.splits.push_back({0.0, p0});
        S.splits.push_back({1.0, p1});
        for (int j = 0; j < ne; ++j) {
            if (j == i) continue;
            const Pt q0 = S.ep[j], q1 = S.eq[j];
            if (std::max(q0.x, q1.x) < ex0 || std::min(q0.x, q1.x) > ex1 || std::max(q0.y, q1.y) < ey0 ||
                std::min(q0.y, q1.y) > ey1)
                continue;
            const int64_t o1 = orient(p0, p1, q0), o2 = orient(p0, p1, q1);
            if (o1 == 0 && o2 == 0) {
                if (strictly_inside_segment(q0, p0, p1)) S.splits.push_back({param(q0), q0});
                if (strictly_inside_segment(q1, p0, p1)) S.splits.push_back({param(q1), q1});
                continue;
            }
            const int64_t o3 = orient(q0, q1, p0), o4 = orient(q0, q1, p1);
            if (((o1 > 0 && o2 < 0) || (o1 < 0 && o2 > 0)) && ((o3 > 0 && o4 < 0) || (o3 < 0 && o4 > 0))) {
                S.splits.push_back({(double)o3 / (double)(o3 - o4), clipper_crossing(S.ce[i], S.ce[j])});
            } else {
                if (o1 == 0 && strictly_inside_segment(q0, p0, p1)) S.splits.push_back({param(q0), q0});
                if (o2 == 0 && strictly_inside_segment(q1, p0, p1)) S.splits.push_back({param(q1), q1});
            }
        }
        std::sort(S.splits.begin(), S.splits.end(), [](const Split& u, const Split& v) { return u.t < v.t; });
        const double dx = (double)(p1.x - p0.x), dy = (double)(p1.y - p0.y);
        for (size_t s = 0; s + 1 < S.splits.size(); ++s) {
            const double ta = S.splits[s].t, tb = S.splits[s + 1].t;
            if (!(tb - ta > 1e-12)) continue;
            const double tm = 0.5 * (ta + tb);
            S.pieces.push_back(Piece{S.splits[s].p, S.splits[s + 1].p, (double)p0.x + tm * dx, (double)p0.y + tm * dy,
                                     dx, dy});
        }
    }
    // collinear overlapping pieces (shared by both polygons, or spikes of one) count once
    std::sort(S.pieces.begin(), S.pieces.end(), [](const Piece& u, const Piece& v) {
        return u.mx < v.mx || (u.mx == v.mx && u.my < v.my);
    });
    int64_t total = 0;
    const double tol = 1e-7;
    for (size_t k = 0; k < S.pieces.size(); ++k) {
        const Piece& pc = S.pieces[k];
        bool dup = false;
        for (size_t l = k; l-- > 0;) {
            if (pc.mx - S.pieces[l].mx > tol) break;
            if (std::fabs(pc.my - S.pieces[l].my) <= tol) {
                dup = true;
                break;
            }
        }
        if (dup) continue;
        const double len = std::sqrt(pc.dx * pc.dx + pc.dy * pc.dy);
        const double eps = 1e-6;
        const double nx = -pc.dy / len * eps, ny = pc.dx / len * eps;
        const bool in_left = winding(a, n, pc.mx + nx, pc.my + ny) != 0 && winding(b, m, pc.mx + nx, pc.my + ny) != 0;
        const bool in_right = winding(a, n, pc.mx - nx, pc.my - ny) != 0 && winding(b, m, pc.mx - nx, pc.my - ny) != 0;
        if (in_left == in_right) continue;
        // the region on the left: the piece runs counter-clockwise around it
        const Pt& u = in_left ? pc.s : pc.e;
        const Pt& v = in_left ? pc.e : pc.s;
        total += u.x * v.y - u.y * v.x;
    }
    return total < 0 ? -total : total;
}

// ---- two-star routine -------------------------------------------------------------------
// Each polygon is star-shaped about its own centre but no common centre was found. Each
// polygon's edges partition the angles about its centre, so the edges of b an edge of a can
// touch are those in the angular sectors (about b's centre) that the edge spans, and a point
// lies inside b when it lies on the centre's side of the one edge of its sector.
struct StarView {
    const Pt* v;
    int n;
    Pt z2;          // doubled centre
    int start;      // first vertex in angular order
    const double* key;  // angle keys about the centre
    inline int at(int i) const {
        const int k = start + i;
        return k >= n ? k - n : k;
    }
};

// Rotated position of the last vertex whose angle key is <= k (wrapping to n - 1).
inline int sector_pos(const StarView& P, double k) {
    int lo = 0, hi = P.n - 1, ans = P.n - 1;
    while (lo <= hi) {
        const int mid = (lo + hi) >> 1;
        if (P.key[P.at(mid)] <= k) {
            ans = mid;
            lo = mid + 1;
        } else {
            hi = mid - 1;
        }
    }
    return ans;
}

inline bool inside_star(const StarView& P, double x, double y) {
    const double dx = 2 * x - (double)P.z2.x, dy = 2 * y - (double)P.z2.y;
    if (dx == 0 && dy == 0) return true;
    const int k = P.at(sector_pos(P, angle_key(dx, dy)));
    const Pt& a = P.v[k];
    const Pt& b = P.v[k + 1 == P.n ? 0 : k + 1];
    const double cr = (double)(b.x - a.x) * (y - (double)a.y) - (double)(b.y - a.y) * (x - (double)a.x);
    return cr > 0;
}

struct SharedSpan {
    double lo, hi;
    bool same_dir;
};

// Twice the signed area of the pieces of A's boundary inside B (plus, when count_shared,
// those running along B's boundary in the same direction).
int64_t star_pieces_inside(const StarView& A, const StarView& B, bool count_shared, std::vector<Split>& splits,
                           std::vector<SharedSpan>& shared, std::vector<int>& vpos, std::vector<int8_t>& vside) {
    int64_t total = 0;
    const int m = B.n;
    // each vertex of A once: its sector about B's centre and whether it lies inside B
    // (+1), outside (-1) or on B's boundary / at its centre (0, decided per piece)
    vpos.resize(A.n);
    vside.resize(A.n);
    for (int k = 0; k < A.n; ++k) {
        const Pt& p = A.v[k];
        const int64_t dx = 2 * p.x - B.z2.x, dy = 2 * p.y - B.z2.y;
        if (dx == 0 && dy == 0) {
            vpos[k] = 0;
            vside[k] = 0;
            continue;
        }
        const int pos = sector_pos(B, angle_key((double)dx, (double)dy));
        vpos[k] = pos;
        const int e = B.at(pos);
        const Pt& q0 = B.v[e];
        const Pt& q1 = B.v[e + 1 == m ? 0 : e + 1];
        vside[k] = (int8_t)sgn(orient(q0, q1, p));
    }
    for (int k = 0; k < A.n; ++k) {
        const int k1 = k + 1 == A.n ? 0 : k + 1;
        const Pt& p0 = A.v[k];
        const Pt& p1 = A.v[k1];
        if (p0.x == p1.x && p0.y == p1.y) continue;
        const double len2 = (double)((p1.x - p0.x) * (p1.x - p0.x) + (p1.y - p0.y) * (p1.y - p0.y));
        auto param = [&](const Pt& q) {
            return (double)((q.x - p0.x) * (p1.x - p0.x) + (q.y - p0.y) * (p1.y - p0.y)) / len2;
        };
        // edges of B in the angular range the edge spans about B's centre (one sector margin)
        const int64_t ax = 2 * p0.x - B.z2.x, ay = 2 * p0.y - B.z2.y;
        const int64_t bx = 2 * p1.x - B.z2.x, by = 2 * p1.y - B.z2.y;
        const int64_t turn = ax * by - ay * bx;
        int first = 0, count = m;
        if ((turn != 0 || ax * bx + ay * by > 0) && !(ax == 0 && ay == 0) && !(bx == 0 && by == 0)) {
            int s0 = vpos[k], s1 = vpos[k1];
            if (turn < 0) std::swap(s0, s1);
            int span = s1 - s0;
            if (span < 0) span += m;
            if (turn == 0) span = std::min(span, m - span), s0 = std::min(s0, s1);
            first = s0 - 1;
            if (first < 0) first += m;
            count = std::min(m, span + 3);
        }
        splits.clear();
        shared.clear();
        splits.push_back({0.0, p0});
        splits.push_back({1.0, p1});
        const ClipEdge ce = make_clip_edge(p0, p1);
        for (int c = 0; c < count; ++c) {
            int pos = first + c;
            if (pos >= m) pos -= m;
            const int l = B.at(pos);
            const Pt& q0 = B.v[l];
            const Pt& q1 = B.v[l + 1 == m ? 0 : l + 1];
            const int64_t o1 = orient(p0, p1, q0), o2 = orient(p0, p1, q1);
            if (o1 == 0 && o2 == 0) {
                const double t0 = param(q0), t1 = param(q1);
                const double lo = std::max(0.0, std::min(t0, t1)), hi = std::min(1.0, std::max(t0, t1));
                if (hi > lo) {
                    if (t0 > 0 && t0 < 1) splits.push_back({t0, q0});
                    if (t1 > 0 && t1 < 1) splits.push_back({t1, q1});
                    shared.push_back({lo, hi, t1 > t0});
                }
                continue;
            }
            if ((o1 > 0 && o2 > 0) || (o1 < 0 && o2 < 0)) continue;  // B's edge wholly on one side
            const int64_t o3 = orient(q0, q1, p0), o4 = orient(q0, q1, p1);
            if (((o1 > 0 && o2 < 0) || (o1 < 0 && o2 > 0)) && ((o3 > 0 && o4 < 0) || (o3 < 0 && o4 > 0))) {
                splits.push_back({(double)o3 / (double)(o3 - o4), clipper_crossing(ce, make_clip_edge(q0, q1))});
            } else {
                if (o1 == 0 && strictly_inside_segment(q0, p0, p1)) splits.push_back({param(q0), q0});
                if (o2 == 0 && strictly_inside_segment(q1, p0, p1)) splits.push_back({param(q1), q1});
            }
        }
        if (splits.size() == 2 && shared.empty()) {
            // no contact inside the edge: one piece, inside B as its strict endpoints say
            const int side = (vside[k] != 0 && vside[k] == vside[k1]) ? vside[k] : 0;
            const bool include = side != 0 ? side > 0
                                           : inside_star(B, 0.5 * (double)(p0.x + p1.x), 0.5 * (double)(p0.y + p1.y));
            if (include) total += p0.x * p1.y - p0.y * p1.x;
            continue;
        }
        if (splits.size() > 2)
            std::sort(splits.begin(), splits.end(), [](const Split& u, const Split& v) { return u.t < v.t; });
        for (size_t s = 0; s + 1 < splits.size(); ++s) {
            const double ta = splits[s].t, tb = splits[s + 1].t;
            if (!(tb > ta)) continue;
            const double tm = 0.5 * (ta + tb);
            int on_shared = -1;
            for (const SharedSpan& sp : shared)
                if (tm > sp.lo && tm < sp.hi) {
                    on_shared = sp.same_dir ? 1 : 0;
                    break;
                }
            bool include;
            if (on_shared >= 0) include = count_shared && on_shared == 1;
            else include = inside_star(B, (double)p0.x + tm * (double)(p1.x - p0.x), (double)p0.y + tm * (double)(p1.y - p0.y));
            if (include) {
                const Pt& u = splits[s].p;
                const Pt& v = splits[s + 1].p;
                total += u.x * v.y - u.y * v.x;
            }
        }
    }
    return total;
}

struct PairScratch {
    std::vector<Pt> arot, brot;
    std::vector<double> akey, bkey, bkey_own, akrot, bkrot;
    std::vector<Split> splits;
    std::vector<SharedSpan> shared;
    std::vector<int> vpos;
    std::vector<int8_t> vside;
    GeneralScratch general;
    void reserve(int n_rays) {
        akey.resize(n_rays);
        bkey.resize(n_rays);
        bkey_own.resize(n_rays);
        arot.resize(n_rays + 1);
        brot.resize(n_rays + 1);
        akrot.resize(n_rays + 1);
        bkrot.resize(n_rays + 1);
    }
};

// Polygon a prepared about its own centre (done once per kept polygon).
struct PreparedA {
    const Pt* v;
    int n;
    Pt z;
    int start;          // -1 when a is not star-shaped about its centre
    const double* key;  // angle keys about z
    const Pt* rot;      // rotated by rotate_star (valid when start >= 0)
    const double* rot_key;
    const ClipEdge* rot_clip;  // Clipper edges of rot (may be null)
};

// Twice the intersection area. Tries a common star centre (a's centre, b's centre, their
// midpoint) for the O(n + m) merge, then the two-star routine, then the general one.
// force: 0 automatic, 1 general routine only, 2 skip the common-centre merge (tests).
// Returns -1 with method 2 when skip_general is set and only the general routine would do.
// enough: twice an area past which the exact value no longer matters (the merge may stop);
// below: twice an area under which it does not matter either (an upper bound may settle it;
// 0 is returned then).
template <typename StarFn>
int64_t intersection_area2(const PreparedA& A, const Pt* b, int m, const Pt& zb, StarFn&& b_star_fn, PairScratch& s,
                           int* method, int force = 0, bool skip_general = false,
                           int64_t enough = std::numeric_limits<int64_t>::max(), int64_t below = 0) {
    const Pt* a = A.v;
    const int n = A.n;
    const Pt za = A.z;
    const Pt za2{2 * za.x, 2 * za.y}, zb2{2 * zb.x, 2 * zb.y};
    if (force != 1) {
        if (force != 2) {
            if (A.start >= 0) {
                const int sb = star_prepare(b, m, za2, s.bkey.data());
                if (sb >= 0) {
                    *method = 1;
                    rotate_star(b, s.bkey.data(), m, sb, s.brot.data(), s.bkrot.data());
                    bool early = false;
                    return star_intersection_area2(A.rot, A.rot_key, A.rot_clip, n, s.brot.data(), s.bkrot.data(), m,
                                                   za2, enough, &early);
                }
            }
            if (below > 0 && (za.x != zb.x || za.y != zb.y) && slab_upper_bound2(a, n, za, b, m, zb) <= (double)below) {
                *method = 5;
                return 0;
            }
            const Pt others[2] = {zb2, Pt{za.x + zb.x, za.y + zb.y}};
            for (int c = 0; c < 2; ++c) {
                if (c == 0 && !b_star_fn()) continue;
                if (c == 1 && za.x == zb.x && za.y == zb.y) break;
                const int sb = star_prepare(b, m, others[c], s.bkey.data());
                if (sb < 0) continue;
                const int sa = star_prepare(a, n, others[c], s.akey.data());
                if (sa < 0) continue;
                *method = 1;
                rotate_star(a, s.akey.data(), n, sa, s.arot.data(), s.akrot.data());
                rotate_star(b, s.bkey.data(), m, sb, s.brot.data(), s.bkrot.data());
                bool early = false;
                return star_intersection_area2(s.arot.data(), s.akrot.data(), nullptr, n, s.brot.data(), s.bkrot.data(),
                                               m, others[c], enough, &early);
            }
        }
        if (A.start >= 0 && b_star_fn()) {
            const StarView VA{a, n, za2, A.start, A.key};
            const StarView VB{b, m, zb2, star_prepare(b, m, zb2, s.bkey_own.data()), s.bkey_own.data()};
            if (VB.start >= 0) {
                *method = 3;
                int64_t t = star_pieces_inside(VA, VB, true, s.splits, s.shared, s.vpos, s.vside);
                t += star_pieces_inside(VB, VA, false, s.splits, s.shared, s.vpos, s.vside);
                return t < 0 ? -t : t;
            }
        }
    }
    *method = 2;
    if (skip_general) return -1;
    return general_intersection_area2(a, n, b, m, s.general);
}

// Clipper decides crossings on a rounded scan-line grid, so its intersection area differs
// from the lattice geometry: on the pairs we measured (DSB 2018 targets, clean and noisy,
// and random tiny polygons; tests/test_starnms_2d.py) by up to 3.1 % of the smaller polygon
// plus about 3 px^2. Pairs closer to the threshold than twice that are handed to Clipper
// when it is linked.
constexpr double kClipperMargin = 0.06;  // of the smaller area
constexpr double kClipperSlack = 6.0;    // px^2

inline double clipper_gap(double amin) { return kClipperMargin * amin + kClipperSlack; }

// Twice the intersection area past which a pair is suppressed whatever Clipper's rounding
// (enough), and below which it is not (below), for the smaller area amin.
inline int64_t suppressing_area2(float thresh, double amin) {
    return (int64_t)std::ceil(2.0 * ((double)thresh * amin + clipper_gap(amin))) + 1;
}
inline int64_t sparing_area2(float thresh, double amin) {
    return (int64_t)std::floor(2.0 * ((double)thresh * amin - clipper_gap(amin))) - 1;
}

inline bool near_threshold(double inter2, float area_a, float area_b, float thresh) {
    const double amin = std::fmin((double)area_a, (double)area_b);
    return std::fabs(0.5 * inter2 - (double)thresh * amin) <= clipper_gap(amin);
}

// StarDist's overlap, evaluated in its precision: float areas, double ratio, float result.
inline bool overlap_exceeds(double inter2, float area_a, float area_b, float thresh) {
    const float inter = (float)(0.5 * inter2);
    const double denom = std::fmin((double)area_a + 1.e-10, (double)area_b + 1.e-10);
    const float overlap = (float)((double)inter / denom);
    return overlap > thresh;
}

// Drops repeated points and vertices collinear with their neighbours, in place, as Clipper
// does when a path is added; returns the new count (fewer than 3: no area). T: the type the
// collinearity test multiplies in (int32 where the coordinates allow it, on the hot path).
template <typename T, typename P>
int clean_points(P* v, int n) {
    auto collinear = [](const P& a, const P& b, const P& c) {
        return (T)(b.x - a.x) * (T)(c.y - a.y) == (T)(b.y - a.y) * (T)(c.x - a.x);
    };
    int cnt = 0;
    for (int k = 0; k < n; ++k) {
        const P p = v[k];
        if (cnt > 0 && p.x == v[cnt - 1].x && p.y == v[cnt - 1].y) continue;
        while (cnt >= 2 && collinear(v[cnt - 2], v[cnt - 1], p)) --cnt;
        v[cnt++] = p;
    }
    int first = 0;  // the closing vertices (dropping the first shifts the start)
    while (cnt - first >= 3) {
        if (v[cnt - 1].x == v[first].x && v[cnt - 1].y == v[first].y) --cnt;
        else if (collinear(v[cnt - 2], v[cnt - 1], v[first])) --cnt;
        else if (collinear(v[cnt - 1], v[first], v[first + 1])) ++first;
        else break;
    }
    if (first > 0) std::memmove(v, v + first, sizeof(P) * (cnt - first));
    return cnt - first;
}

int clean_path(Pt* v, int n) { return clean_points<int64_t>(v, n); }

// A box with 64-bit bounds (extents of centres).
struct Box64 {
    int64_t x0, x1, y0, y1;
};

// Flat cell index -> (row, column) for one row width, without a 64-bit division per cell: the
// quotient from a double reciprocal is off by at most one either way, which the remainder
// corrects (cells below 2^52).
struct CellDivider {
    int64_t width;
    double inverse;
    explicit CellDivider(int64_t w) : width(w), inverse(1.0 / (double)w) {}
    inline void split(int64_t cell, int64_t* row, int64_t* col) const {
        int64_t q = (int64_t)((double)cell * inverse);
        int64_t r = cell - q * width;
        if (r < 0) --q, r += width;
        if (r >= width) ++q, r -= width;
        *row = q;
        *col = r;
    }
};

struct PolygonMaker {
    const float* dist;
    int n_rays;
    int64_t width;
    int gy, gx;
    std::vector<float> sin_t, cos_t;
    CellDivider cell_row;

    PolygonMaker(const float* d, int r, int64_t w, int y, int x)
        : dist(d), n_rays(r), width(w), gy(y), gx(x), cell_row(w) {
        // float angle step and float sin / cos, as StarDist's C++ computes them
        const float step = (float)(2 * M_PI / r);
        sin_t.resize(r);
        cos_t.resize(r);
        for (int k = 0; k < r; ++k) {
            const float phi = step * (float)k;
            sin_t[k] = std::sin(phi);
            cos_t[k] = std::cos(phi);
        }
    }
    inline Pt centre(int64_t cell) const {
        int64_t row, col;
        cell_row.split(cell, &row, &col);
        return Pt{col * gx, row * gy};
    }
    // Vertices truncated towards zero (Clipper's integer points), cleaned as Clipper cleans
    // a path (clean_path). Returns the vertex count.
    inline int make(int64_t cell, const Pt& c, Pt* out) const {
        const float py = (float)c.y, px = (float)c.x;
        const float* d = dist + cell * n_rays;
        for (int k = 0; k < n_rays; ++k) {
            const float y = py + d[k] * sin_t[k];
            const float x = px + d[k] * cos_t[k];
            out[k] = Pt{(int64_t)x, (int64_t)y};
        }
        return clean_path(out, n_rays);
    }
};

struct Box {
    int32_t x0, x1, y0, y1;
};

// make() before the clean-up, when every ray is finite, non-negative and below kSimpleRay
// (returns false otherwise, nothing usable written), written to vectorise: the n_rays
// vertices relative to the centre as (x, y) int16 pairs, the bounding box, twice the area,
// and whether the path is star-shaped about the centre (star_lower_bound2's test, so then
// the polygon is simple). The path Clipper cleans (clean_simple) bounds the same region:
// the clean-up drops only repeated and collinear vertices (spikes included), which add no
// area, so the box holds the polygon and the lower bounds may use the raw path.
constexpr float kSimpleRay = 2000.0f;  // int32 products below: coordinates under 2^11

// AVX2 where the CPU has it, chosen at load time (the build stays portable): same values
// (unused in some translation units that include this header)
__attribute__((target_clones("avx2", "default"), unused)) bool make_simple(const PolygonMaker& M, int64_t cell,
                                                                           const Pt& c, int16_t* rel, Box* box,
                                                                           int64_t* area2, bool* own_star) {
    const int n = M.n_rays;
    if (n < 3) return false;  // polygons have at least 3 rays (checked at the entry points)
    const float* d = M.dist + cell * n;
    const float* cos_t = M.cos_t.data();
    const float* sin_t = M.sin_t.data();
    int32_t out_of_range = 0;
    for (int k = 0; k < n; ++k) out_of_range |= !(d[k] >= 0.0f && d[k] < kSimpleRay);  // NaN fails too
    if (out_of_range) return false;
    int32_t X[kMaxRays + 1], Y[kMaxRays + 1];
    const float px = (float)c.x, py = (float)c.y;
    const int32_t cx = (int32_t)c.x, cy = (int32_t)c.y;
    for (int k = 0; k < n; ++k) {
        X[k] = (int32_t)(px + d[k] * cos_t[k]) - cx;  // truncation, as make()
        Y[k] = (int32_t)(py + d[k] * sin_t[k]) - cy;
    }
    X[n] = X[0], Y[n] = Y[0];
    int32_t s2 = 0, bad = 0, wraps = 0;
    int32_t x0 = X[0], x1 = X[0], y0 = Y[0], y1 = Y[0];
    for (int k = 0; k < n; ++k) {
        const int32_t cross = X[k] * Y[k + 1] - Y[k] * X[k + 1];
        const int32_t dot = X[k] * X[k + 1] + Y[k] * Y[k + 1];
        s2 += cross;
        bad += (cross < 0) | ((cross == 0) & (dot <= 0));
        wraps += (Y[k] < 0) & (Y[k + 1] >= 0);
        x0 = X[k] < x0 ? X[k] : x0;
        x1 = X[k] > x1 ? X[k] : x1;
        y0 = Y[k] < y0 ? Y[k] : y0;
        y1 = Y[k] > y1 ? Y[k] : y1;
        rel[2 * k] = (int16_t)X[k];
        rel[2 * k + 1] = (int16_t)Y[k];
    }
    *box = Box{x0 + cx, x1 + cx, y0 + cy, y1 + cy};
    *area2 = (int64_t)s2;
    *own_star = bad == 0 && wraps == 1;
    return true;
}

// ---- pushes: eight candidates at a time ------------------------------------------------------
// A push tests the later candidates centred inside a kept polygon a, nearly all of which it
// suppresses. make_simple and star_lower_bound2_avx2 vectorise over one candidate's rays, with
// horizontal steps (reductions, per-block branches, the wrap from the last vertex to the
// first). push_bounds8 takes eight candidates, one per lane, and walks their rays in step
// (measured, 32 rays, rows in cache: 122 ns per candidate against 179 ns for the two
// routines; in the 2D NMS at 2048^2, one thread, from 50 % to 45 % of its samples): each
// candidate's polygon as make_simple makes it (same float steps, so the same lattice points),
// its twice-area and its own star test, and the bound of star_lower_bound2_avx2 about a's
// centre (same terms; the sum runs over the rays in float, n - 1 roundings of one sign each,
// far below the 1e-5 margin for n <= kPushRays).
constexpr int kPushRays = 64;

struct PushLanes {
    double lower2[8];   // twice a lower bound on |a n candidate|; -1: not star-shaped about a's centre or its own
    int64_t area2[8];   // twice the candidate's signed area (make_simple's area2)
    uint32_t fallback;  // bit per lane: make_simple refuses it, or coordinates past 2047 about a's centre
};

#if SEGRT_X86_AVX2
// The eight candidates' own outlines, a step (p -> c, about their own centres) at a time:
// twice the area and make_simple's star test, in int32 (coordinates below 2^11).
struct PushOutline {
    __m256i s2, bad, wraps;

    __attribute__((target("avx2"), always_inline)) inline void step(const __m256i& Xp, const __m256i& Yp,
                                                                     const __m256i& X, const __m256i& Y) {
        const __m256i zero = _mm256_setzero_si256();
        const __m256i cross = _mm256_sub_epi32(_mm256_mullo_epi32(Xp, Y), _mm256_mullo_epi32(Yp, X));
        const __m256i dot = _mm256_add_epi32(_mm256_mullo_epi32(Xp, X), _mm256_mullo_epi32(Yp, Y));
        s2 = _mm256_add_epi32(s2, cross);
        // clockwise, or back through the centre
        bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi32(zero, cross),
                                                   _mm256_andnot_si256(_mm256_cmpgt_epi32(dot, zero),
                                                                       _mm256_cmpeq_epi32(cross, zero))));
        // into y >= 0 from y < 0: once around
        wraps = _mm256_sub_epi32(wraps, _mm256_andnot_si256(_mm256_cmpgt_epi32(zero, Y), _mm256_cmpgt_epi32(zero, Yp)));
    }
};

// rows[i]: candidate i's n rays (n in [3, kPushRays]); (cx[i], cy[i]): its centre; (zx, zy): a's.
// Two passes over the rays, each with few values live (one pass kept more than the 16
// registers hold): the vertices, their own star test and area, stored per vertex; then the
// steps between vertices about a's centre.
__attribute__((target("avx2"), unused)) void push_bounds8_avx2(const StarProfile& P, const float* const* rows, int n,
                                                              const float* cos_t, const float* sin_t,
                                                              const int32_t* cx, const int32_t* cy, int32_t zx,
                                                              int32_t zy, PushLanes* out) {
    alignas(32) float T[kPushRays][8];  // the rays transposed: T[k] holds ray k of the eight candidates
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int b = 0; b < n; b += 8) {
        const __m256i take = _mm256_cmpgt_epi32(_mm256_set1_epi32(n - b), lane);
        __m256 v[8];
        for (int i = 0; i < 8; ++i) v[i] = _mm256_maskload_ps(rows[i] + b, take);
        const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
        const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
        const __m256 t4 = _mm256_unpacklo_ps(v[4], v[5]), t5 = _mm256_unpackhi_ps(v[4], v[5]);
        const __m256 t6 = _mm256_unpacklo_ps(v[6], v[7]), t7 = _mm256_unpackhi_ps(v[6], v[7]);
        const __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
        const __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
        const __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
        const __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
        const __m256 w[8] = {_mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
                             _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
                             _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
                             _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
        for (int k = 0; k < 8 && b + k < n; ++k) _mm256_store_ps(T[b + k], w[k]);
    }
    const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f), four = _mm256_set1_ps(4.0f);
    const __m256i izero = _mm256_setzero_si256(), one_i = _mm256_set1_epi32(1);
    // pass 1: per vertex, the lattice point as make_simple makes it (same float steps), the
    // candidate's own star test and twice its area (int32: coordinates below 2^11), and about
    // a's centre: x, y (float, exact), the sector range of the angle key and 1 / distance
    // (star_lower_bound2_avx2's)
    alignas(32) float VX[kPushRays][8], VY[kPushRays][8], VR[kPushRays][8];
    alignas(32) int32_t VL[kPushRays][8], VH[kPushRays][8];
    const __m256i icx = _mm256_loadu_si256((const __m256i*)cx), icy = _mm256_loadu_si256((const __m256i*)cy);
    const __m256 px = _mm256_cvtepi32_ps(icx), py = _mm256_cvtepi32_ps(icy);
    __m256 fallback = zero;  // make_simple refuses the lane, or a coordinate about a's centre is past 2047
    PushOutline own{izero, izero, izero};
    __m256i X0 = izero, Y0 = izero, Xp = izero, Yp = izero;
    for (int k = 0; k < n; ++k) {
        const __m256 d = _mm256_load_ps(T[k]);
        fallback = _mm256_or_ps(fallback, _mm256_or_ps(_mm256_cmp_ps(d, zero, _CMP_NGE_UQ),  // NaN fails too
                                                       _mm256_cmp_ps(d, _mm256_set1_ps(kSimpleRay), _CMP_NLT_UQ)));
        const __m256i Lx = _mm256_cvttps_epi32(_mm256_add_ps(px, _mm256_mul_ps(d, _mm256_set1_ps(cos_t[k]))));
        const __m256i Ly = _mm256_cvttps_epi32(_mm256_add_ps(py, _mm256_mul_ps(d, _mm256_set1_ps(sin_t[k]))));
        const __m256i X = _mm256_sub_epi32(Lx, icx), Y = _mm256_sub_epi32(Ly, icy);
        if (k == 0)
            X0 = X, Y0 = Y;
        else
            own.step(Xp, Yp, X, Y);
        Xp = X, Yp = Y;
        const __m256 x = _mm256_cvtepi32_ps(_mm256_sub_epi32(Lx, _mm256_set1_epi32(zx)));
        const __m256 y = _mm256_cvtepi32_ps(_mm256_sub_epi32(Ly, _mm256_set1_epi32(zy)));
        const __m256 ax = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x), ay = _mm256_andnot_ps(_mm256_set1_ps(-0.0f), y);
        fallback = _mm256_or_ps(fallback, _mm256_cmp_ps(_mm256_max_ps(ax, ay), _mm256_set1_ps(2047.0f), _CMP_GT_OQ));
        const __m256 up = _mm256_cmp_ps(y, zero, _CMP_GE_OQ), right = _mm256_cmp_ps(x, zero, _CMP_GE_OQ);
        const __m256 base = _mm256_blendv_ps(_mm256_blendv_ps(_mm256_set1_ps(2.0f), _mm256_set1_ps(3.0f), right),
                                             _mm256_blendv_ps(one, zero, right), up);
        const __m256 key = _mm256_add_ps(
            base, _mm256_div_ps(_mm256_blendv_ps(ay, ax, _mm256_xor_ps(up, right)), _mm256_add_ps(ax, ay)));
        const __m256 lo = _mm256_sub_ps(key, _mm256_set1_ps(1e-5f)), hi = _mm256_add_ps(key, _mm256_set1_ps(1e-5f));
        const __m256 lo_w = _mm256_blendv_ps(lo, _mm256_add_ps(lo, four), _mm256_cmp_ps(lo, zero, _CMP_LT_OQ));
        const __m256 hi_w = _mm256_blendv_ps(hi, _mm256_sub_ps(hi, four), _mm256_cmp_ps(hi, four, _CMP_GE_OQ));
        // a vertex on a's centre (NaN key) converts to INT_MIN and clamps to 0: its triangles have no area
        const __m256i top = _mm256_set1_epi32(kSectors - 1);
        const __m256 sectors = _mm256_set1_ps(kSectors / 4.0f);
        _mm256_store_si256((__m256i*)VL[k],
                           _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(_mm256_mul_ps(lo_w, sectors)), izero), top));
        _mm256_store_si256((__m256i*)VH[k],
                           _mm256_min_epi32(_mm256_max_epi32(_mm256_cvttps_epi32(_mm256_mul_ps(hi_w, sectors)), izero), top));
        _mm256_store_ps(VR[k], _mm256_div_ps(one, _mm256_sqrt_ps(_mm256_add_ps(_mm256_mul_ps(x, x), _mm256_mul_ps(y, y)))));
        _mm256_store_ps(VX[k], x);
        _mm256_store_ps(VY[k], y);
    }
    own.step(Xp, Yp, X0, Y0);  // from the last vertex back to the first
    // pass 2: the steps about a's centre: its star test, and each counter-clockwise triangle
    // shrunk into the profile's least radius over its wedge (clockwise ones subtract)
    const __m256i wrap = _mm256_set1_epi32(kSectors - 1), span_max = _mm256_set1_epi32(kSpan - 1);
    const __m256i byte = _mm256_set1_epi32(0xFF), span = _mm256_set1_epi32(kSpan), minus_one = _mm256_set1_epi32(-1);
    const uint8_t* table = &P.min_over[0][0];
    __m256 pos = zero, neg = zero, bad = zero;
    __m256i wraps = izero;
    for (int k = 0; k < n; ++k) {
        const int c = k + 1 < n ? k + 1 : 0;
        const __m256 x0 = _mm256_load_ps(VX[k]), y0 = _mm256_load_ps(VY[k]);
        const __m256 x1 = _mm256_load_ps(VX[c]), y1 = _mm256_load_ps(VY[c]);
        const __m256 cross = _mm256_sub_ps(_mm256_mul_ps(x0, y1), _mm256_mul_ps(y0, x1));
        const __m256 dot = _mm256_add_ps(_mm256_mul_ps(x0, x1), _mm256_mul_ps(y0, y1));
        bad = _mm256_or_ps(bad, _mm256_or_ps(_mm256_cmp_ps(cross, zero, _CMP_LT_OQ),
                                             _mm256_and_ps(_mm256_cmp_ps(cross, zero, _CMP_EQ_OQ),
                                                           _mm256_cmp_ps(dot, zero, _CMP_LE_OQ))));
        wraps = _mm256_sub_epi32(wraps, _mm256_castps_si256(_mm256_and_ps(_mm256_cmp_ps(y0, zero, _CMP_LT_OQ),
                                                                          _mm256_cmp_ps(y1, zero, _CMP_GE_OQ))));
        neg = _mm256_add_ps(neg, _mm256_and_ps(_mm256_cmp_ps(cross, zero, _CMP_LT_OQ), cross));
        const __m256 ccw = _mm256_cmp_ps(cross, zero, _CMP_GT_OQ);
        if (_mm256_movemask_ps(ccw) == 0) continue;
        // the wedge's radius: the profile's least over sectors lo(k) .. hi(k + 1), kSpan at a
        // time; byte loads, not a gather (a gather costs several times as much on CPUs with
        // the gather data sampling fix: measured, a quarter of this function)
        const __m256i s0 = _mm256_load_si256((const __m256i*)VL[k]);
        const __m256i l = _mm256_and_si256(_mm256_sub_epi32(_mm256_load_si256((const __m256i*)VH[c]), s0), wrap);
        alignas(32) int32_t at[8];
        _mm256_store_si256((__m256i*)at, _mm256_add_epi32(_mm256_slli_epi32(s0, 2), _mm256_min_epi32(l, span_max)));
        __m256i q = _mm256_setr_epi32(table[at[0]], table[at[1]], table[at[2]], table[at[3]], table[at[4]], table[at[5]],
                                      table[at[6]], table[at[7]]);
        // wedges over more than kSpan sectors (rare): the least over the next kSpan, and so on
        __m256i rest = _mm256_sub_epi32(l, span), from = _mm256_add_epi32(s0, span);
        __m256i wide = _mm256_and_si256(_mm256_castps_si256(ccw), _mm256_cmpgt_epi32(rest, minus_one));
        while (_mm256_movemask_epi8(wide)) {
            const __m256i idx = _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(from, wrap), 2),
                                                 _mm256_min_epi32(rest, span_max));
            const __m256i more =
                _mm256_and_si256(_mm256_mask_i32gather_epi32(byte, (const int*)table, idx, wide, 1), byte);
            q = _mm256_min_epi32(q, more);
            rest = _mm256_sub_epi32(rest, span);
            from = _mm256_add_epi32(from, span);
            wide = _mm256_and_si256(wide, _mm256_cmpgt_epi32(rest, minus_one));
        }
        const __m256 R = _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps((float)P.unit));  // unit: a float
        // shrink towards a's centre: min(1, r / rho) at both ends
        const __m256 f0 = _mm256_min_ps(_mm256_mul_ps(R, _mm256_load_ps(VR[k])), one);
        const __m256 f1 = _mm256_min_ps(_mm256_mul_ps(R, _mm256_load_ps(VR[c])), one);
        pos = _mm256_add_ps(pos, _mm256_and_ps(ccw, _mm256_mul_ps(_mm256_mul_ps(cross, f0), f1)));
    }
    // per lane: twice the area, the two star tests, the bound
    alignas(32) int32_t area[8], own_ok[8], star_ok[8];
    alignas(32) float p8[8], n8[8];
    _mm256_store_si256((__m256i*)area, own.s2);
    _mm256_store_si256((__m256i*)own_ok, _mm256_andnot_si256(own.bad, _mm256_cmpeq_epi32(own.wraps, one_i)));
    _mm256_store_si256((__m256i*)star_ok, _mm256_andnot_si256(_mm256_castps_si256(bad), _mm256_cmpeq_epi32(wraps, one_i)));
    _mm256_store_ps(p8, pos);
    _mm256_store_ps(n8, neg);
    out->fallback = (uint32_t)_mm256_movemask_ps(fallback);
    for (int i = 0; i < 8; ++i) {
        out->area2[i] = area[i];
        if (!star_ok[i] && !own_ok[i]) {
            out->lower2[i] = -1;
            continue;
        }
        const double sum = (double)p8[i] * (1.0 - 1e-5) + (double)n8[i] * (1.0 + 1e-5);
        out->lower2[i] = sum <= 0 ? 0 : sum;
    }
}
#endif

// clean_path on make_simple's raw path, multiplying in int32 (products below 2^24);
// returns the vertex count.
inline int clean_simple(const int16_t* raw, int n, int16_t* rel) {
    struct P32 {
        int32_t x, y;
    };
    P32 v[kMaxRays];
    for (int k = 0; k < n; ++k) v[k] = P32{raw[2 * k], raw[2 * k + 1]};
    const int cnt = clean_points<int32_t>(v, n);
    for (int k = 0; k < cnt; ++k) {
        rel[2 * k] = (int16_t)v[k].x;
        rel[2 * k + 1] = (int16_t)v[k].y;
    }
    return cnt;
}

}  // namespace

}  // namespace starnms
}  // namespace segrt
