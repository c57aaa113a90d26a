// 2D star-convex NMS: see starnms.hpp for the algorithm and the conventions it keeps.
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

#include "clipper_bridge.hpp"
#include "parallel.hpp"
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

inline double segment_distance(const Pt& z, const Pt& p, const Pt& q) {
    const double ex = (double)(q.x - p.x), ey = (double)(q.y - p.y);
    const double wx = (double)(z.x - p.x), wy = (double)(z.y - p.y);
    const double len2 = ex * ex + ey * ey;
    double t = len2 > 0 ? (wx * ex + wy * ey) / len2 : 0.0;
    t = t < 0 ? 0 : (t > 1 ? 1 : t);
    const double dx = wx - t * ex, dy = wy - t * ey;
    return std::sqrt(dx * dx + dy * dy);
}

// rot / rot_key: a rotated by rotate_star about z (keys ascending, rot[n] == rot[0]).
void star_profile(const Pt* rot, const double* rot_key, int n, const Pt& z, StarProfile& P) {
    double profile[kSectors];
    for (int s = 0; s < kSectors; ++s) profile[s] = std::numeric_limits<double>::infinity();
    for (int k = 0; k < n; ++k) {
        const double d = segment_distance(z, rot[k], rot[k + 1]);
        const int s0 = key_sector(rot_key[k]);
        const int s1 = k + 1 < n ? key_sector(rot_key[k + 1]) : key_sector(rot_key[0]) + kSectors;
        for (int s = s0; s <= s1; ++s) {
            double& r = profile[s < kSectors ? s : s - kSectors];
            r = d < r ? d : r;
        }
    }
    double top = 0;
    for (int s = 0; s < kSectors; ++s) top = std::max(top, profile[s]);
    // q * unit is exact in double (q < 2^8, unit a float) and never above the radius, so a
    // radius inside a stays inside
    P.unit = top > 0 && std::isfinite(top) ? (double)(float)(top / 255.0) : 0.0;  // 0: every radius 0
    for (int s = 0; s < kSectors; ++s) {
        double r = profile[s];
        for (int l = 0; l < kSpan; ++l) {
            r = std::min(r, profile[(s + l) & (kSectors - 1)]);
            int q = P.unit > 0 ? (int)std::min(255.0, std::floor(r / P.unit)) : 0;
            while (q > 0 && q * P.unit > r) --q;
            P.min_over[s][l] = (uint8_t)q;
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
__attribute__((target_clones("avx2", "default"))) double star_lower_bound2(const StarProfile& P, const int16_t* rel, int m, int64_t dzx, int64_t dzy, bool simple) {
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

struct PolygonMaker {
    const float* dist;
    int n_rays;
    int64_t width;
    int gy, gx;
    std::vector<float> sin_t, cos_t;

    PolygonMaker(const float* d, int r, int64_t w, int y, int x) : dist(d), n_rays(r), width(w), gy(y), gx(x) {
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
        return Pt{(cell % width) * gx, (cell / width) * gy};
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
__attribute__((target_clones("avx2", "default"))) bool make_simple(const PolygonMaker& M, int64_t cell, const Pt& c, int16_t* rel, Box* box, int64_t* area2,
                 bool* own_star) {
    const int n = M.n_rays;
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

OverlapBounds polygon_overlap_bounds_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y,
                                        const int64_t* xy_b, int n_b, int64_t cb_x, int64_t cb_y) {
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
            double lb2 = star_lower_bound2(profile, raw.data(), n_b, cb_x - ca_x, cb_y - ca_y, false);
            if (lb2 < 0 && m >= 3 && star_prepare(P.b.data(), m, Pt{2 * cb_x, 2 * cb_y}, P.kb.data()) >= 0)
                lb2 = star_lower_bound2(profile, clean.data(), m, cb_x - ca_x, cb_y - ca_y, true);
            if (lb2 >= 0) r.lower = 0.5 * lb2;
        }
    }
    if ((ca_x != cb_x || ca_y != cb_y) && P.A.n >= 3 && m >= 3)
        r.upper = 0.5 * slab_upper_bound2(P.a.data(), P.A.n, P.A.z, P.b.data(), m, P.zb);
    return r;
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

// ---- candidate selection -------------------------------------------------------------------
namespace {
inline uint32_t order_key(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ~u;  // descending
}
inline uint64_t order_key(double v) {
    uint64_t u;
    std::memcpy(&u, &v, 8);
    u = (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
    return ~u;
}

template <typename K>
void radix_sort_stable(std::vector<K>& keys, std::vector<int64_t>& vals) {
    const size_t n = keys.size();
    std::vector<K> k2(n);
    std::vector<int64_t> v2(n);
    for (int shift = 0; shift < (int)(8 * sizeof(K)); shift += 8) {
        size_t count[257] = {0};
        for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 0xFF) + 1];
        bool single = false;
        for (int d = 0; d < 256; ++d)
            if (count[d + 1] == n) single = true;
        if (single) continue;  // every key has this digit: the pass would not move anything
        for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
        for (size_t i = 0; i < n; ++i) {
            const size_t pos = count[(keys[i] >> shift) & 0xFF]++;
            k2[pos] = keys[i];
            v2[pos] = vals[i];
        }
        keys.swap(k2);
        vals.swap(v2);
    }
}
}  // namespace

namespace {
// Starts fetching a row of distances the loop will read soon (rows are visited with gaps).
inline void fetch_row(const float* row, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char*)row + off);
}

// The longest ray of a row into *longest; *bad set when a ray is NaN, infinite or negative.
inline void scan_rays(const float* d, int n_rays, float* longest, int32_t* bad) {
    float r = *longest;
    int32_t b = 0;
    for (int k = 0; k < n_rays; ++k) {
        b |= !(d[k] >= 0.0f && d[k] <= 3.0e38f);  // NaN fails too
        r = d[k] > r ? d[k] : r;
    }
    *longest = r;
    *bad |= b;
}
}  // namespace

template <typename T>
std::vector<int64_t> select_candidates(const T* prob, const std::vector<int64_t>& shape, T thresh,
                                       const std::vector<int64_t>& lo, const std::vector<int64_t>& hi,
                                       int64_t& nan_count, RayCheck* rays) {
    nan_count = 0;
    const int nd = (int)shape.size();
    for (int d = 0; d < nd; ++d)
        if (lo[d] >= hi[d]) return {};
    std::vector<int64_t> strides(nd, 1);
    for (int d = nd - 2; d >= 0; --d) strides[d] = strides[d + 1] * shape[d + 1];
    using K = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
    // the first axis in parts, one per thread, concatenated in order: flat indices stay
    // ascending, which the stable sort turns into the tie order
    const int64_t first = hi[0] - lo[0];
    const int parts = (int)std::min<int64_t>(effective_threads(0), first);
    std::vector<std::vector<K>> part_keys(parts);
    std::vector<std::vector<int64_t>> part_idx(parts);
    std::vector<int64_t> part_nan(parts, 0);
    std::vector<float> part_longest(parts, 0.0f);
    std::vector<uint8_t> part_bad(parts, 0);
    parallel_for(parts, parts, [&](int64_t p0, int64_t p1) {
        for (int64_t part = p0; part < p1; ++part) {
            std::vector<K>& keys = part_keys[part];
            std::vector<int64_t>& idx = part_idx[part];
            int64_t nans = 0;
            // walk the rows of the last axis inside the border
            std::vector<int64_t> pos(lo.begin(), lo.end()), end(hi.begin(), hi.end());
            pos[0] = lo[0] + first * part / parts;
            end[0] = lo[0] + first * (part + 1) / parts;
            // room for candidates on 1 cell in 16 (network outputs hold fewer) before any
            // regrowth copies
            int64_t cells = end[0] - pos[0];
            for (int d = 1; d < nd; ++d) cells *= hi[d] - lo[d];
            keys.reserve(cells / 16);
            idx.reserve(cells / 16);
            while (true) {
                int64_t base = 0;
                for (int d = 0; d < nd - 1; ++d) base += pos[d] * strides[d];
                for (int64_t x = lo[nd - 1]; x < hi[nd - 1]; ++x) {
                    const T v = prob[base + x];
                    if (v > thresh) {
                        keys.push_back(order_key(v));
                        idx.push_back(base + x);
                    }
                    nans += (v != v);
                }
                int d = nd - 2;
                while (d >= 0) {
                    if (++pos[d] < end[d]) break;
                    pos[d] = lo[d];
                    --d;
                }
                if (d < 0) break;
            }
            part_nan[part] = nans;
            if (rays) {  // this part's candidates, still in memory order: their rows in turn
                const float* dist = rays->dist;
                const int n_rays = rays->n_rays;
                const size_t row_bytes = sizeof(float) * (size_t)n_rays;
                float longest = 0.0f;
                int32_t bad = 0;
                for (size_t c = 0; c < idx.size(); ++c) {
                    if (c + 8 < idx.size()) fetch_row(dist + idx[c + 8] * n_rays, row_bytes);
                    scan_rays(dist + idx[c] * n_rays, n_rays, &longest, &bad);
                }
                part_longest[part] = longest;
                part_bad[part] = (uint8_t)bad;
            }
        }
    });
    std::vector<K> keys;
    std::vector<int64_t> idx;
    for (int part = 0; part < parts; ++part) {
        keys.insert(keys.end(), part_keys[part].begin(), part_keys[part].end());
        idx.insert(idx.end(), part_idx[part].begin(), part_idx[part].end());
        nan_count += part_nan[part];
        if (rays) {
            rays->longest = std::max(rays->longest, part_longest[part]);
            rays->bad = rays->bad || part_bad[part];
        }
    }
    radix_sort_stable(keys, idx);
    return idx;
}

template std::vector<int64_t> select_candidates<float>(const float*, const std::vector<int64_t>&, float,
                                                       const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                       int64_t&, RayCheck*);
template std::vector<int64_t> select_candidates<double>(const double*, const std::vector<int64_t>&, double,
                                                        const std::vector<int64_t>&, const std::vector<int64_t>&,
                                                        int64_t&, RayCheck*);

// ---- NMS ---------------------------------------------------------------------------------
std::vector<uint8_t> nms_2d(const float* dist, int n_rays, const int64_t* order, int64_t n, int64_t width,
                            int grid_y, int grid_x, float thresh, int n_threads, Nms2DStats* stats,
                            const int64_t* rows, float longest_ray) {
    const int64_t* row = rows ? rows : order;  // candidate i's distances: row row[i] of dist
    std::vector<uint8_t> keep(n, 0);
    Nms2DStats st;
    st.candidates = n;
    if (n == 0) {
        if (stats) *stats = st;
        return keep;
    }
    if (n_rays > kMaxRays) throw std::invalid_argument("at most 255 rays are supported");
    const PolygonMaker maker(dist, n_rays, width, grid_y, grid_x);
    const int threads = effective_threads(n_threads);
    constexpr size_t kFetchAhead = 16;  // rows fetched this many candidates ahead (8 left stalls here)
    const auto t_start = std::chrono::steady_clock::now();

    // 1. centres, and the longest ray of any candidate (how far a polygon reaches from its
    //    centre), checking every candidate's rays on the way, unless select_candidates did
    std::vector<Pt> centre(n);
    const bool measured = longest_ray >= 0.0f;
    std::vector<float> longest(threads, 0.0f);
    std::vector<uint8_t> bad(threads, 0);
    parallel_for_tid(n, threads, [&](int64_t a, int64_t b, int tid) {
        if (measured) {
            for (int64_t i = a; i < b; ++i) centre[i] = maker.centre(order[i]);
            return;
        }
        float r = longest[tid];
        int32_t is_bad = 0;
        const size_t row_bytes = sizeof(float) * (size_t)n_rays;
        for (int64_t i = a; i < b; ++i) {
            // rank order visits the rows at random: fetch ahead
            if (i + (int64_t)kFetchAhead < b) fetch_row(dist + row[i + kFetchAhead] * n_rays, row_bytes);
            centre[i] = maker.centre(order[i]);
            scan_rays(dist + row[i] * n_rays, n_rays, &r, &is_bad);
        }
        longest[tid] = r;
        bad[tid] |= (uint8_t)is_bad;
    });
    float rmax_all = measured ? longest_ray : 0.0f;
    for (int t = 0; t < threads; ++t) {
        if (bad[t]) throw std::invalid_argument("dist of a candidate holds NaN, infinite or negative values");
        rmax_all = std::max(rmax_all, longest[t]);
    }
    // vertices are stored relative to their centre in int16
    if (rmax_all > 32766.0f) throw std::invalid_argument("rays longer than 32767 pixels are not supported");
    // a polygon's lattice vertices lie within rmax + 1 of its centre (truncation)
    const int64_t reach = (int64_t)std::ceil(rmax_all) + 2;
    int64_t cx0 = std::numeric_limits<int64_t>::max(), cy0 = cx0, cx1 = std::numeric_limits<int64_t>::min(), cy1 = cx1;
    for (int64_t i = 0; i < n; ++i) {
        const Pt c = centre[i];
        cx0 = std::min(cx0, c.x);
        cx1 = std::max(cx1, c.x);
        cy0 = std::min(cy0, c.y);
        cy1 = std::max(cy1, c.y);
    }
    // a uniform grid over the centres for the index of kept polygons
    const int64_t bucket = 32;  // pixels
    const int64_t nbx = (cx1 - cx0) / bucket + 1, nby = (cy1 - cy0) / bucket + 1;
    std::vector<int64_t> row_start(nby + 1, 0);  // candidates per bucket row, for strips of equal work
    for (int64_t i = 0; i < n; ++i) ++row_start[(centre[i].y - cy0) / bucket + 1];
    for (int64_t by = 0; by < nby; ++by) row_start[by + 1] += row_start[by];
    const auto t_prepared = std::chrono::steady_clock::now();
    st.seconds_prepare = std::chrono::duration<double>(t_prepared - t_start).count();

    // 2. greedy suppression, pulled: each candidate, in rank order, builds its polygon and
    //    is tested against the kept polygons near it (a per-bucket index of kept polygons);
    //    it is kept when none suppresses it: the same decisions as pushing each kept polygon
    //    onto the later candidates. Threads own horizontal strips of buckets with equal
    //    candidate counts and run their candidates in rank order; a candidate whose
    //    neighbourhood reaches into another strip is kept only once that strip has decided
    //    every candidate ranked before it (a suppression by what is already kept is final).
    //    The thread holding the lowest undecided rank never waits, so all finish.
    struct Kept {
        Pt z;
        int64_t rank;
        int nverts;
        float area;
        bool star;  // star-shaped about its centre: profile valid
        StarProfile profile;
        const int16_t* rel;  // vertices relative to z
    };
    // bucket b lists the kept polygons whose boxes meet it (a pushed-onto list: a polygon near
    // a strip's edge may be listed in the next strip's buckets by that strip's thread)
    struct Node {  // what the box bound needs is copied in, so that rejected pairs read nothing else
        Box box;
        float area;
        int32_t pad;
        int64_t rank;
        const Kept* kept;
        Node* next;
    };
    constexpr int64_t kChunk = 64;
    std::vector<std::vector<std::unique_ptr<Kept[]>>> kept_store(threads);
    std::vector<std::vector<std::unique_ptr<Node[]>>> node_store(threads);
    std::vector<std::vector<std::unique_ptr<int16_t[]>>> rel_store(threads);
    std::unique_ptr<std::atomic<Node*>[]> kept_head(new std::atomic<Node*>[nbx * nby]);
    for (int64_t b = 0; b < nbx * nby; ++b) kept_head[b].store(nullptr, std::memory_order_relaxed);
    auto bucket_x = [&](int64_t x) { return std::min<int64_t>(nbx - 1, std::max<int64_t>(0, (x - cx0) / bucket)); };
    auto bucket_y = [&](int64_t y) { return std::min<int64_t>(nby - 1, std::max<int64_t>(0, (y - cy0) / bucket)); };
    struct alignas(64) Progress {
        std::atomic<int64_t> rank;  // every candidate of the strip ranked below this is decided
    };
    std::unique_ptr<Progress[]> progress(new Progress[threads]);
    for (int t = 0; t < threads; ++t) progress[t].rank.store(-1, std::memory_order_relaxed);
    std::vector<int64_t> counts(7 * threads, 0), counts_clipper(threads, 0);
    const bool use_clipper = clipper_available();
    const double thresh_lo = (double)thresh * (1.0 - 1e-6);

    // a failure in one strip (out of memory) stops them all and is raised after the team
    std::exception_ptr failure;
    std::atomic<bool> failed(false);
    parallel_team(threads, [&](int tid, int team) {
        try {
            // this thread's strip of bucket rows: [row_lo, row_hi)
            std::vector<int64_t> strip_lo(team + 1, nby);
            for (int t = 0; t < team; ++t)
                strip_lo[t] = std::min<int64_t>(
                    nby, std::lower_bound(row_start.begin(), row_start.end(), n * t / team) - row_start.begin());
            strip_lo[0] = 0;
            const int64_t row_lo = strip_lo[tid], row_hi = strip_lo[tid + 1];
            auto strip_of = [&](int64_t by) {
                return (int)(std::upper_bound(strip_lo.begin(), strip_lo.end(), by) - strip_lo.begin()) - 1;
            };
            std::vector<int64_t> mine;  // this strip's candidates in rank order
            mine.reserve(row_start[row_hi] - row_start[row_lo]);
            for (int64_t i = 0; i < n; ++i) {
                const int64_t by = (centre[i].y - cy0) / bucket;
                if (by >= row_lo && by < row_hi) mine.push_back(i);
            }
            progress[tid].rank.store(mine.empty() ? n : mine[0], std::memory_order_release);

            auto& store = kept_store[tid];
            auto& nodes = node_store[tid];
            int64_t stored = 0, noded = 0;
            PairScratch s;
            s.reserve(n_rays);
            std::vector<Pt> pj(n_rays), pa(n_rays), rot_a(n_rays + 1), rot_j(n_rays + 1);
            std::vector<double> key_a(n_rays), rot_key_a(n_rays + 1), keys_j(n_rays), rot_key_j(n_rays + 1);
            std::vector<ClipEdge> clip_a(n_rays);
            std::vector<int16_t> rel_j(2 * n_rays), rel_raw(2 * n_rays);
            StarProfile j_profile;
            std::vector<int64_t> clip_buf(4 * n_rays);
            std::vector<std::pair<int64_t, const Kept*>> near;  // squared centre distance, kept polygon
            int64_t cnt[7] = {0, 0, 0, 0, 0, 0, 0};  // this thread's counters (no shared cache line)
            auto absolute = [](const int16_t* r, int nv, const Pt& c, Pt* out) {
                for (int k = 0; k < nv; ++k) out[k] = Pt{c.x + r[2 * k], c.y + r[2 * k + 1]};
                return nv;
            };
            const size_t row_bytes = sizeof(float) * (size_t)n_rays;

            for (size_t q = 0; q < mine.size(); ++q) {
                if (failed.load(std::memory_order_relaxed)) {
                    progress[tid].rank.store(n, std::memory_order_release);
                    break;
                }
                // rank order visits the distance rows at random: fetch ahead
                if (q + kFetchAhead < mine.size()) fetch_row(dist + row[mine[q + kFetchAhead]] * n_rays, row_bytes);
                const int64_t j = mine[q];
                const Pt zj = centre[j];
                // j's polygon: vertices relative to its centre (raw: before Clipper's clean-up,
                // which the first bound does not need), box, area
                Box box_j;
                int nv_j = 0;
                int64_t s2;
                bool cleaned = false;
                bool raw_star = false;  // j's raw path star-shaped about its centre: j is simple
                if (!make_simple(maker, row[j], zj, rel_raw.data(), &box_j, &s2, &raw_star)) {
                    nv_j = maker.make(row[j], zj, pj.data());
                    int64_t x0 = zj.x, x1 = zj.x, y0 = zj.y, y1 = zj.y;
                    if (nv_j > 0) x0 = x1 = pj[0].x, y0 = y1 = pj[0].y;
                    for (int k = 0; k < nv_j; ++k) {
                        x0 = std::min(x0, pj[k].x);
                        x1 = std::max(x1, pj[k].x);
                        y0 = std::min(y0, pj[k].y);
                        y1 = std::max(y1, pj[k].y);
                        rel_j[2 * k] = (int16_t)(pj[k].x - zj.x);
                        rel_j[2 * k + 1] = (int16_t)(pj[k].y - zj.y);
                    }
                    box_j = Box{(int32_t)x0, (int32_t)x1, (int32_t)y0, (int32_t)y1};
                    s2 = shoelace2(pj.data(), nv_j);
                    cleaned = true;
                }
                const int16_t* first_rel = cleaned ? rel_j.data() : rel_raw.data();
                const int first_n = cleaned ? nv_j : n_rays;
                auto clean = [&]() {
                    if (!cleaned) nv_j = clean_simple(rel_raw.data(), n_rays, rel_j.data());
                    cleaned = true;
                };
                const float area_j = (float)(0.5 * (double)(s2 < 0 ? -s2 : s2));
                const int64_t qy0 = std::max<int64_t>(0, (box_j.y0 - reach - cy0) / bucket);
                const int64_t qy1 = std::min<int64_t>(nby - 1, std::max<int64_t>(-1, (box_j.y1 + reach - cy0)) / bucket);
                const bool seam = box_j.y0 - reach < cy0 + row_lo * bucket || box_j.y1 + reach >= cy0 + row_hi * bucket;
                auto others_ready = [&](bool wait) {
                    for (int u = strip_of(qy0); u <= strip_of(qy1); ++u) {
                        if (u == tid) continue;
                        while (progress[u].rank.load(std::memory_order_acquire) < j) {
                            if (!wait) return false;
                            spin_pause();
                        }
                    }
                    return true;
                };
                bool ready = !seam || others_ready(false);
                bool have_pj = false;
                int b_star = -1;          // j star-shaped about its own centre: unknown / no / yes
                int j_profile_state = 0;  // j_profile: not made / made / j not star-shaped
                bool suppressed = false;
                for (int attempt = 0; attempt < 2 && !suppressed; ++attempt) {
                    if (attempt == 1) {
                        if (ready) break;
                        ready = others_ready(true);
                    }
                    // kept polygons whose boxes meet j's and leave room for the threshold, nearest
                    // first; a pair is looked at in the one bucket that holds its boxes' common corner
                    near.clear();
                    const int64_t bx0 = bucket_x(box_j.x0), bx1 = bucket_x(box_j.x1);
                    const int64_t by0 = bucket_y(box_j.y0), by1 = bucket_y(box_j.y1);
                    for (int64_t by = by0; by <= by1; ++by) {
                        for (int64_t bx = bx0; bx <= bx1; ++bx) {
                            for (const Node* e = kept_head[by * nbx + bx].load(std::memory_order_acquire); e; e = e->next) {
                                if (e->rank > j) continue;  // another strip ran ahead
                                const Box& bi = e->box;
                                if (bucket_x(std::max(bi.x0, box_j.x0)) != bx || bucket_y(std::max(bi.y0, box_j.y0)) != by)
                                    continue;
                                ++cnt[5];
                                const int64_t w = (int64_t)std::min(bi.x1, box_j.x1) - std::max(bi.x0, box_j.x0);
                                const int64_t h = (int64_t)std::min(bi.y1, box_j.y1) - std::max(bi.y0, box_j.y0);
                                // the intersection lies inside both boxes: an upper bound on its area
                                if (w <= 0 || h <= 0 ||
                                    (double)w * (double)h / (std::min((double)e->area, (double)area_j) + 1.e-10) <= thresh_lo) {
                                    ++cnt[6];
                                    continue;
                                }
                                const Pt zi = e->kept->z;
                                near.emplace_back((zi.x - zj.x) * (zi.x - zj.x) + (zi.y - zj.y) * (zi.y - zj.y), e->kept);
                            }
                        }
                    }
                    std::sort(near.begin(), near.end(), [](const auto& u, const auto& v) { return u.first < v.first; });
                    for (const auto& entry : near) {
                        const Kept& K = *entry.second;
                        const Pt zi = K.z;
                        const float area_i = K.area;
                        const double amin = std::min((double)area_i, (double)area_j);
                        // past this the pair is suppressed whatever the exact area: a margin above the
                        // threshold that covers Clipper's rounding (kClipperMargin); under `below` it is not
                        const int64_t enough = (int64_t)std::ceil(2.0 * ((double)thresh * amin + clipper_gap(amin))) + 1;
                        double lb = K.star ? star_lower_bound2(K.profile, first_rel, first_n, zj.x - zi.x, zj.y - zi.y, raw_star) : 0;
                        if (lb >= (double)enough) {
                            ++cnt[3];
                            suppressed = true;
                            break;
                        }
                        clean();
                        if (!have_pj) {
                            absolute(rel_j.data(), nv_j, zj, pj.data());
                            have_pj = true;
                        }
                        // noisy outlines are often star-shaped about their own centre only: j's star
                        // test (once per candidate) for the bound with clockwise triangles about i's
                        // centre, then j's profile (once per candidate, when needed) for the bound
                        // about j's centre
                        int start_j = -1;
                        if (b_star < 0) {
                            start_j = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, keys_j.data());
                            b_star = start_j >= 0;
                            if (!b_star) j_profile_state = 2;
                        }
                        if (K.star && lb < 0 && b_star == 1)
                            lb = star_lower_bound2(K.profile, rel_j.data(), nv_j, zj.x - zi.x, zj.y - zi.y, true);
                        if (lb < (double)enough && j_profile_state == 0) {
                            if (start_j < 0) start_j = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, keys_j.data());
                            rotate_star(pj.data(), keys_j.data(), nv_j, start_j, rot_j.data(), rot_key_j.data());
                            star_profile(rot_j.data(), rot_key_j.data(), nv_j, zj, j_profile);
                            j_profile_state = 1;
                        }
                        if (lb < (double)enough && j_profile_state == 1)
                            lb = std::max(lb, star_lower_bound2(j_profile, K.rel, K.nverts, zi.x - zj.x, zi.y - zj.y, K.star));
                        if (lb >= (double)enough) {
                            ++cnt[3];
                            suppressed = true;
                            break;
                        }
                        const int64_t below = (int64_t)std::floor(2.0 * ((double)thresh * amin - clipper_gap(amin))) - 1;
                        const int na = absolute(K.rel, K.nverts, zi, pa.data());
                        const int start_a = K.star ? star_prepare(pa.data(), na, Pt{2 * zi.x, 2 * zi.y}, key_a.data()) : -1;
                        if (start_a >= 0) {
                            rotate_star(pa.data(), key_a.data(), na, start_a, rot_a.data(), rot_key_a.data());
                            for (int k = 0; k < na; ++k) clip_a[k] = make_clip_edge(rot_a[k], rot_a[k + 1]);
                        }
                        const PreparedA A{pa.data(), na, zi, start_a, key_a.data(), rot_a.data(), rot_key_a.data(), clip_a.data()};
                        int method = 0;
                        auto j_star = [&]() { return b_star == 1; };
                        // polygons that are star-shaped about no common point are jagged (spikes, noise);
                        // there Clipper's rounding can move the area far from the geometry, so Clipper
                        // decides them outright when it is linked
                        const int64_t i2 = intersection_area2(A, pj.data(), nv_j, zj, j_star, s, &method, 0, use_clipper, enough, below);
                        ++cnt[method - 1];
                        double inter2 = (double)i2;
                        if (use_clipper && (i2 < 0 || near_threshold((double)i2, area_i, area_j, thresh))) {
                            ++counts_clipper[tid];
                            for (int k = 0; k < na; ++k) clip_buf[2 * k] = pa[k].x, clip_buf[2 * k + 1] = pa[k].y;
                            for (int k = 0; k < nv_j; ++k) clip_buf[2 * na + 2 * k] = pj[k].x, clip_buf[2 * na + 2 * k + 1] = pj[k].y;
                            inter2 = 2.0 * clipper_intersection_area(clip_buf.data(), na, clip_buf.data() + 2 * na, nv_j);
                        }
                        if (overlap_exceeds(inter2, area_i, area_j, thresh)) {
                            suppressed = true;
                            break;
                        }
                    }
                }
                if (!suppressed) {
                    keep[j] = 1;
                    clean();
                    if (stored % kChunk == 0) {
                        store.emplace_back(new Kept[kChunk]);
                        rel_store[tid].emplace_back(new int16_t[kChunk * 2 * n_rays]);
                    }
                    Kept& K = store.back()[stored % kChunk];
                    int16_t* kept_rel = rel_store[tid].back().get() + (stored % kChunk) * 2 * n_rays;
                    ++stored;
                    K.z = zj;
                    K.rank = j;
                    K.nverts = nv_j;
                    K.area = area_j;
                    std::copy(rel_j.begin(), rel_j.begin() + 2 * nv_j, kept_rel);
                    K.rel = kept_rel;
                    if (!have_pj) absolute(rel_j.data(), nv_j, zj, pj.data());
                    const int start = star_prepare(pj.data(), nv_j, Pt{2 * zj.x, 2 * zj.y}, key_a.data());
                    K.star = start >= 0;
                    if (K.star) {
                        rotate_star(pj.data(), key_a.data(), nv_j, start, rot_a.data(), rot_key_a.data());
                        star_profile(rot_a.data(), rot_key_a.data(), nv_j, zj, K.profile);
                    }
                    for (int64_t by = bucket_y(box_j.y0); by <= bucket_y(box_j.y1); ++by) {
                        for (int64_t bx = bucket_x(box_j.x0); bx <= bucket_x(box_j.x1); ++bx) {
                            if (noded % kChunk == 0) nodes.emplace_back(new Node[kChunk]);
                            Node* e = &nodes.back()[noded % kChunk];
                            ++noded;
                            e->box = box_j;
                            e->area = area_j;
                            e->rank = j;
                            e->kept = &K;
                            std::atomic<Node*>& head = kept_head[by * nbx + bx];
                            e->next = head.load(std::memory_order_relaxed);
                            while (!head.compare_exchange_weak(e->next, e, std::memory_order_release,
                                                               std::memory_order_relaxed)) {
                            }
                        }
                    }
                }
                progress[tid].rank.store(q + 1 < mine.size() ? mine[q + 1] : n, std::memory_order_release);
            }
            std::copy(cnt, cnt + 7, &counts[7 * tid]);
        } catch (...) {
            if (!failed.exchange(true)) failure = std::current_exception();
            progress[tid].rank.store(n, std::memory_order_release);  // nobody waits on this strip
        }
    });
    if (failure) std::rethrow_exception(failure);
    for (int t = 0; t < threads; ++t) {
        st.pairs_exact_star += counts[7 * t];
        st.pairs_exact_general += counts[7 * t + 1];
        st.pairs_exact_two_star += counts[7 * t + 2];
        st.pairs_lower_bound += counts[7 * t + 3];
        st.pairs_upper_bound += counts[7 * t + 4];
        st.pairs_considered += counts[7 * t + 5];
        st.pairs_bound_rejected += counts[7 * t + 6];
        st.pairs_clipper += counts_clipper[t];
    }
    for (int64_t i = 0; i < n; ++i) st.kept += keep[i];
    st.seconds_suppress = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_prepared).count();
    if (stats) *stats = st;
    return keep;
}

// ---- rendering (skimage.draw.polygon's pixel rule) -----------------------------------------
void render_2d(const float* coords, int64_t n, int n_rays, const int32_t* labels, int32_t* out, int64_t height,
               int64_t width) {
    std::vector<double> xs;
    for (int64_t i = 0; i < n; ++i) {
        const float* rr = coords + i * 2 * n_rays;
        const float* cc = rr + n_rays;
        float rmin = rr[0], rmx = rr[0], cmin = cc[0], cmx = cc[0];
        for (int k = 1; k < n_rays; ++k) {
            rmin = std::min(rmin, rr[k]);
            rmx = std::max(rmx, rr[k]);
            cmin = std::min(cmin, cc[k]);
            cmx = std::max(cmx, cc[k]);
        }
        // the pixel range skimage scans: int(max(0, min)), int(ceil(max)), clipped to the image
        const int64_t r0 = (int64_t)std::max(0.0f, rmin);
        const int64_t r1 = std::min<int64_t>(height - 1, (int64_t)std::ceil(rmx));
        const int64_t c0 = (int64_t)std::max(0.0f, cmin);
        const int64_t c1 = std::min<int64_t>(width - 1, (int64_t)std::ceil(cmx));
        for (int64_t r = r0; r <= r1; ++r) {
            const double y = (double)r;
            xs.clear();
            for (int k = 0, j = n_rays - 1; k < n_rays; j = k++) {
                const double yi = rr[k], yj = rr[j], xi = cc[k], xj = cc[j];
                if (((yi <= y) && (y < yj)) || ((yj <= y) && (y < yi)))
                    xs.push_back((xj - xi) * (y - yi) / (yj - yi) + xi);
            }
            if (xs.empty()) continue;
            std::sort(xs.begin(), xs.end());
            int32_t* row = out + r * width;
            if (xs.size() % 2 == 0) {
                // inside <=> an odd number of crossings lie at or left of the pixel
                for (size_t s = 0; s + 1 < xs.size(); s += 2) {
                    int64_t a = (int64_t)std::ceil(xs[s]);
                    int64_t b = (int64_t)std::ceil(xs[s + 1]) - 1;
                    a = std::max(a, c0);
                    b = std::min(b, c1);
                    for (int64_t c = a; c <= b; ++c) row[c] = labels[i];
                }
            } else {
                for (int64_t c = c0; c <= c1; ++c) {
                    size_t cnt = 0;
                    for (double x : xs) cnt += ((double)c < x);
                    if (cnt & 1) row[c] = labels[i];
                }
            }
        }
    }
}

}  // namespace starnms
}  // namespace segrt
