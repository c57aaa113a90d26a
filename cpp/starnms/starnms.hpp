// Star-convex non-maximum suppression and rendering (2D polygons, 3D polyhedra).
//
// The decisions reproduce StarDist's (stardist 0.9.x) exactly, including its geometry
// conventions, so the kept set is the same; the algorithm around them is ours:
//
// 2D. A candidate is the polygon p + d_k (sin t_k, cos t_k), t_k = 2 pi k / n, computed in
//     float32 and truncated to the integer lattice (StarDist hands integer points to
//     Clipper). The overlap of polygons a and b is |a n b| / min(|a|, |b|) where the
//     intersection polygon has its edge-crossing points rounded to the lattice with
//     Clipper's formulas. We never build Clipper's sweep: when both polygons are
//     star-shaped about one common point z (almost always: z = a's centre), the boundary
//     of a n b is the inner envelope of the two boundaries seen from z, found by merging
//     the two angularly sorted vertex lists in O(n + m) integer operations. Otherwise a
//     general O(n m) routine sums, by Green's theorem, the pieces of each boundary lying
//     inside the other polygon. Both give the exact lattice area in int64.
//     Most pairs never need it. Before exact work: a bounding-box bound; a lower bound
//     (the kept polygon's inscribed radius per angular sector about its centre, against
//     the candidate's triangle fan about that centre, each triangle shrunk to fit; also
//     with the roles swapped) that proves nearly every suppression; and a slab upper bound
//     for neighbours that barely touch. Decisions within a margin of the threshold that
//     covers Clipper's rounding always come from exact work (or Clipper itself).
//     The greedy loop is pulled: candidates, in rank order, test the kept polygons whose
//     boxes meet theirs (a per-bucket index of kept polygons, nearest first). Threads own
//     horizontal strips of equal candidate counts; a candidate near another strip may be
//     suppressed at once by what is already kept, but is kept only after that strip has
//     decided every candidate ranked before it. A kept polygon is also pushed onto the
//     later candidates centred inside it (by whichever thread has time): those its lower
//     bound suppresses are marked and skipped at their turn, which is most candidates.
//     A mark is set only where the pull would suppress too. The result never depends on
//     the threads.
//
// 3D. See starnms3d.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

// A function compiled twice, for AVX2 and for the baseline, the loader picking one for the
// CPU (ifunc: GCC / Clang on x86-64 ELF); elsewhere the baseline only.
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__))
#define SEGRT_AVX2_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define SEGRT_AVX2_CLONES
#endif

namespace segrt {
namespace starnms {

struct Nms2DStats {
    int64_t candidates = 0;
    int64_t kept = 0;
    int64_t pairs_considered = 0;    // kept polygons near a later candidate
    int64_t pairs_bound_rejected = 0;  // decided by the bounding-box bound
    int64_t pairs_exact_star = 0;    // exact overlap, common-star-centre merge
    int64_t pairs_exact_general = 0; // exact overlap, general routine
    int64_t pairs_exact_two_star = 0; // exact overlap, each star-shaped about its own centre
    int64_t pairs_lower_bound = 0;  // suppressed by the common-centre lower bound (no merge)
    int64_t pairs_upper_bound = 0;  // settled by the slab upper bound (no common centre)
    int64_t pairs_clipper = 0;   // near the threshold, settled by Clipper
    int64_t candidates_pushed = 0;  // dropped by a kept polygon's lower bound as it was kept
    double seconds_prepare = 0;  // centres, ray checks, the grid
    double seconds_suppress = 0; // the greedy loop (building each candidate's polygon included)
};

// The rays of the candidates, checked and measured as they are found (in memory order, so
// that nms_2d need not visit them in rank order, at random): dist holds one row of n_rays
// per cell of prob.
struct RayCheck {
    const float* dist = nullptr;
    int n_rays = 0;
    float longest = 0;  // out: the longest ray of any candidate
    bool bad = false;   // out: a candidate's rays hold NaN, infinite or negative values
};

// Flat indices of the cells with prob > thresh inside [border_lo, border_hi), by descending
// prob, ties by ascending index (a stable LSD radix sort on the float bits); NaN cells of that
// region counted in nan_count; the candidates' rays checked when `rays` is given.
template <typename T>
std::vector<int64_t> select_candidates(const T* prob, const std::vector<int64_t>& shape, T thresh,
                                       const std::vector<int64_t>& border_lo,
                                       const std::vector<int64_t>& border_hi, int64_t& nan_count,
                                       RayCheck* rays = nullptr);

// Greedy suppression over candidates given in visiting order (flat cell indices into a
// grid with `width` columns). dist: (cells, n_rays) float32, row order[i] for candidate i, or
// row rows[i] when rows is given (dist then holds the candidates' rows only). Returns keep flags.
// longest_ray: what select_candidates' RayCheck measured for these candidates (their rows
// were checked then), or negative to check and measure the rows here.
std::vector<uint8_t> nms_2d(const float* dist, int n_rays, const int64_t* order, int64_t n,
                            int64_t width, int grid_y, int grid_x, float thresh, int n_threads,
                            Nms2DStats* stats, const int64_t* rows = nullptr, float longest_ray = -1.0f);

// The suppression decision of nms_2d for each pair (i kept, j a later candidate), as 0 / 1:
// the pairs the GPU kernel cannot settle itself. dist: (n, n_rays) float32 rays of the
// candidates (checked), cells: their flat cell indices, pairs: (n_pairs, 2) indices into them.
std::vector<uint8_t> decide_pairs_2d(const float* dist, int n_rays, const int64_t* cells, int64_t width, int grid_y,
                                     int grid_x, const int64_t* pairs, int64_t n_pairs, float thresh, int n_threads);

// Which decisions of nms_2d over a block of a larger image are the whole image's (StarDist's
// greedy order is global, so a block's candidate can be decided differently only through a
// chain of higher-ranked conflicting candidates that reaches past the block). Candidates in
// visiting order as for nms_2d (cells with `width` columns, rows of dist), keep: the block's
// decisions, exposed: candidates a polygon centred outside the block could overlap. A
// candidate is certain when (kept) it is not exposed and no uncertain higher-ranked candidate
// suppresses it, or (dropped) a certain kept candidate suppresses it. Returns 0 / 1 per candidate.
std::vector<uint8_t> certify_2d(const float* dist, int n_rays, const int64_t* order, const int64_t* rows, int64_t n,
                                int64_t width, int grid_y, int grid_x, float thresh, const uint8_t* keep,
                                const uint8_t* exposed);

// Intersection area (as float, StarDist's convention) and own areas of two candidate
// polygons given by integer vertices; exposed for tests.
struct PairOverlap {
    double inter;
    double area_a;
    double area_b;
    int method;  // 1 common-centre merge, 2 general, 3 two-star
};
PairOverlap polygon_overlap_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y,
                               const int64_t* xy_b, int n_b, int64_t cb_x, int64_t cb_y,
                               int force_general);

// The bounds the NMS loop tries before exact work, as areas (-1: not applicable): lower
// when a is star-shaped about its centre and b about a's centre; upper when the centres differ.
// portable: the lower bound from the plain double routine, never the vector one.
struct OverlapBounds {
    double lower;
    double upper;
};
OverlapBounds polygon_overlap_bounds_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y,
                                        const int64_t* xy_b, int n_b, int64_t cb_x, int64_t cb_y,
                                        bool portable = false);
// Whether this CPU takes the vector lower bound (AVX2) where coordinates allow.
bool star_bound_vectorised();

// What a push computes for candidates (rows `cells` of dist, n_rays each, centres on the grid)
// against kept polygon a (star-shaped about its centre (ca_x, ca_y), else nothing is filled and
// false returned): twice the candidate's area and twice the lower bound on |a n candidate|,
// eight at a time in lanes (where the CPU has AVX2 and 3 <= n_rays <= 64; `lanes_done` 0
// otherwise) and one at a time as the scalar path makes them. made_scalar[i]: make_simple
// accepted the candidate; fallback[i]: the lanes handed it back (out of their range).
struct PushCheck {
    std::vector<double> lower_lanes, lower_scalar;
    std::vector<int64_t> area2_lanes, area2_scalar;
    std::vector<uint8_t> fallback, made_scalar;
    bool lanes_done = false;
};
bool push_bounds_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y, const float* dist, int n_rays,
                    const int64_t* cells, int64_t m, int64_t width, int grid_y, int grid_x, PushCheck* out);

// Seconds per exact overlap of one pair, over `reps` repetitions (a micro-benchmark).
double bench_overlap_2d(const int64_t* xy_a, int n_a, int64_t ca_x, int64_t ca_y, const int64_t* xy_b, int n_b,
                        int64_t cb_x, int64_t cb_y, int reps);

// Labels as skimage.draw.polygon fills them: pixel (r, c) is inside when a crossing test at
// its centre says so. coords: (n, 2, n_rays) float32 rows / cols, drawn in the given order,
// later polygons overwrite earlier ones. labels[i] is written for polygon i. out holds the
// window of out_height x out_width pixels at (row0, col0) of the height x width image.
void render_2d(const float* coords, int64_t n, int n_rays, const int32_t* labels, int32_t* out,
               int64_t height, int64_t width, int64_t row0, int64_t col0, int64_t out_height, int64_t out_width);

// ---- 3D ----
struct Nms3DStats {
    int64_t candidates = 0;
    int64_t kept = 0;
    int64_t pairs_considered = 0;
    int64_t decided_upper_bound = 0;
    int64_t decided_inner_sphere = 0;
    int64_t decided_kernel = 0;
    int64_t decided_hull = 0;
    int64_t decided_render = 0;
    int64_t hull_skipped = 0;  // hull volume not needed (a lower bound passed the threshold)
    int64_t kernel_tested = 0;  // pairs whose kernel / hull intersection was measured
    int64_t hull_tested = 0;
    double seconds_kernel = 0;  // summed over threads
    double seconds_hull = 0;
    double seconds_render = 0;
    double seconds_hull_build = 0;
    float aniso[3] = {0, 0, 0};  // the sphere tests' axis scale used
};

// StarDist's axis scale for the sphere tests: the candidates' mean box extent per axis (summed
// in float, in visiting order), inverted relative to the largest. extent(i, k): candidate i's
// rounded box extent along axis k.
template <class Extent>
void sphere_scale_3d(int64_t n, Extent extent, float* aniso) {
    for (int k = 0; k < 3; ++k) aniso[k] = 0.0f;
    for (int64_t i = 0; i < n; ++i)
        for (int k = 0; k < 3; ++k) aniso[k] += (float)extent(i, k) / n;
    const float amax = std::fmax(std::fmax(aniso[0], aniso[1]), aniso[2]);
    for (int k = 0; k < 3; ++k) aniso[k] = amax / aniso[k];
}

// aniso: the sphere tests' axis scale (StarDist's inverted mean box extent), or null to
// measure it on these candidates. suppressor (optional, n values): for each dropped candidate
// the kept one that suppressed it, -1 for kept ones.
std::vector<uint8_t> nms_3d(const float* dist, const float* points, int64_t n, int n_rays,
                            const float* verts, const int32_t* faces, int n_faces, float thresh,
                            int n_threads, Nms3DStats* stats, const float* aniso = nullptr,
                            int64_t* suppressor = nullptr);

// Rounded bounding boxes (z0, z1, y0, y1, x0, x1) of polyhedra, as nms_3d and render_3d round them.
void boxes_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts, int32_t* out);

// Which decisions of nms_3d over a block of a larger set are those of the whole set (the
// rule of certify_2d): keep, suppressor from that run, exposed: candidates a polyhedron
// outside the block can reach, reach: how far (voxels, any axis) each candidate's polyhedron
// reaches from its centre. Pairs are decided by nms_3d itself with the same axis scale.
std::vector<uint8_t> certify_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
                                const int32_t* faces, int n_faces, float thresh, const float* aniso,
                                const uint8_t* keep, const int64_t* suppressor, const uint8_t* exposed,
                                const int64_t* reach);

// Labels of polyhedra drawn in the given order (the first drawn keeps a voxel); out holds the
// nz x ny x nx window whose first voxel is (z0, y0, x0) of the image (voxel tests in the
// image's coordinates, so a window equals that part of the whole rendering).
void render_3d(const float* dist, const float* points, int64_t n, int n_rays, const float* verts,
               const int32_t* faces, int n_faces, const int32_t* labels, int32_t* out,
               int64_t nz, int64_t ny, int64_t nx, int n_threads, int64_t z0 = 0, int64_t y0 = 0, int64_t x0 = 0);

}  // namespace starnms
}  // namespace segrt
