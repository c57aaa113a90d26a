// Connected components of multi-label images (cc3d's semantics), and the clean-ups built on
// them (remove small components, keep the largest per class).
//
// The image is seen as rows along its last (memory-contiguous) axis. Each row is cut into
// runs of one nonzero value; a run touches a run of the same value in a neighbouring row
// when their x ranges overlap (or meet diagonally, for 8 / 18 / 26 connectivity). Runs are
// numbered in raster order and joined by a union-find whose root is always the smallest
// run index, i.e. the run holding the component's first voxel in raster order; numbering
// components by their root's index therefore gives cc3d's numbering (1..N by first voxel).
// Rows are cut into slabs labelled in parallel; runs joining two slabs are merged after.
// Work and memory scale with the number of runs, not voxels (one read of the image, one
// write of the output).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "../parallel.hpp"

namespace segrt {
namespace label {

// A neighbouring row: dz planes and dy rows back (dz <= 0, and dy < 0 when dz == 0), and
// whether runs meeting only diagonally (x ranges one apart) touch.
struct RowOffset {
    int dz, dy;
    bool diagonal;
};

// Rows to look back at for each connectivity (2D: z is a single plane).
inline std::vector<RowOffset> row_offsets(int connectivity, bool is3d) {
    if (!is3d) {
        if (connectivity == 4) return {{0, -1, false}};
        if (connectivity == 8) return {{0, -1, true}};
    } else {
        if (connectivity == 6) return {{0, -1, false}, {-1, 0, false}};
        if (connectivity == 18) return {{0, -1, true}, {-1, 0, true}, {-1, -1, false}, {-1, 1, false}};
        if (connectivity == 26) return {{0, -1, true}, {-1, -1, true}, {-1, 0, true}, {-1, 1, true}};
    }
    throw std::invalid_argument("connectivity must be 4 or 8 in 2D, 6, 18 or 26 in 3D");
}

inline uint32_t find_root(uint32_t* parent, uint32_t a) {
    while (parent[a] != a) {
        parent[a] = parent[parent[a]];  // path halving
        a = parent[a];
    }
    return a;
}

// link to the smaller root: the root stays the run that comes first in raster order
inline uint32_t unite(uint32_t* parent, uint32_t a, uint32_t b) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a < b) parent[b] = a;
    else if (b < a) parent[a] = b;
    return std::min(a, b);
}

// T: the image's (unsigned) label type; C: x coordinates (uint16_t when rows are short
// enough, which keeps the runs small next to the output)
template <typename T, typename C = uint32_t>
struct Runs {
    int64_t Z = 1, Y = 0, X = 0;
    std::vector<uint32_t> row_start;  // rows + 1
    std::vector<C> x0, x1;            // [x0, x1)
    std::vector<T> value;
    std::vector<uint32_t> parent;     // union-find, then (after number()) the component label
    int64_t components = 0;

    int64_t rows() const { return Z * Y; }
    int64_t count() const { return (int64_t)x0.size(); }
    int64_t length(int64_t r) const { return (int64_t)x1[r] - (int64_t)x0[r]; }
};

namespace detail {

// Joins the runs of row r with those of row q (q < r) that touch them.
template <typename T, typename C>
inline void join_rows(Runs<T, C>& R, int64_t r, int64_t q, bool diagonal) {
    const int64_t a_end = R.row_start[r + 1], b_end = R.row_start[q + 1];
    int64_t b = R.row_start[q];
    if (b == b_end) return;
    const uint32_t d = diagonal ? 1 : 0;
    uint32_t* parent = R.parent.data();
    for (int64_t a = R.row_start[r]; a < a_end; ++a) {
        const uint32_t a0 = R.x0[a], a1 = R.x1[a];
        while (b < b_end && (uint32_t)R.x1[b] + d <= a0) ++b;  // runs wholly to the left
        uint32_t root = (uint32_t)-1;
        for (int64_t c = b; c < b_end && (uint32_t)R.x0[c] < a1 + d; ++c) {
            if (R.value[c] != R.value[a]) continue;
            if (root == (uint32_t)-1) root = find_root(parent, (uint32_t)a);
            const uint32_t other = find_root(parent, (uint32_t)c);
            if (other != root) {
                if (other < root) parent[root] = other, root = other;
                else parent[other] = root;
            }
        }
    }
}

template <typename T, typename C>
inline void join_row(Runs<T, C>& R, int64_t r, const std::vector<RowOffset>& offs, int64_t lowest_row) {
    const int64_t z = r / R.Y, y = r % R.Y;
    for (const RowOffset& o : offs) {
        const int64_t qz = z + o.dz, qy = y + o.dy;
        if (qz < 0 || qy < 0 || qy >= R.Y) continue;
        const int64_t q = qz * R.Y + qy;
        if (q < lowest_row) continue;
        join_rows(R, r, q, o.diagonal);
    }
}

}  // namespace detail

// Cuts the image (Z, Y, X, C order; Z = 1 for 2D) into runs and joins them.
template <typename T, typename C>
Runs<T, C> build_runs(const T* img, int64_t Z, int64_t Y, int64_t X, int connectivity, bool is3d, int threads) {
    Runs<T, C> R;
    R.Z = Z, R.Y = Y, R.X = X;
    const int64_t rows = Z * Y;
    const auto offs = row_offsets(connectivity, is3d);
    if (X > (int64_t)std::numeric_limits<C>::max())
        throw std::invalid_argument("rows longer than 2^32 - 1 voxels are not supported");
    threads = effective_threads(threads);
    // slabs of whole rows, a few per thread so uneven content still balances
    const int64_t n_slabs = std::max<int64_t>(1, std::min<int64_t>(rows, (int64_t)threads * 4));
    std::vector<int64_t> slab_row(n_slabs + 1);
    for (int64_t s = 0; s <= n_slabs; ++s) slab_row[s] = rows * s / n_slabs;
    struct Local {
        std::vector<C> x0, x1;
        std::vector<T> value;
        std::vector<int64_t> row_count;
    };
    std::vector<Local> local(n_slabs);
    parallel_for(n_slabs, threads, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
            Local& L = local[s];
            L.row_count.assign(slab_row[s + 1] - slab_row[s], 0);
            for (int64_t r = slab_row[s]; r < slab_row[s + 1]; ++r) {
                const T* row = img + r * X;
                const size_t before = L.x0.size();
                int64_t x = 0;
                while (x < X) {
                    const T v = row[x];
                    if (v == 0) {
                        ++x;
                        continue;
                    }
                    const int64_t start = x;
                    while (x < X && row[x] == v) ++x;
                    L.x0.push_back((C)start);
                    L.x1.push_back((C)x);
                    L.value.push_back(v);
                }
                L.row_count[r - slab_row[s]] = (int64_t)(L.x0.size() - before);
            }
        }
    });
    // concatenate in raster order
    std::vector<int64_t> slab_run(n_slabs + 1, 0);
    for (int64_t s = 0; s < n_slabs; ++s) slab_run[s + 1] = slab_run[s] + (int64_t)local[s].x0.size();
    const int64_t total = slab_run[n_slabs];
    if (total >= (int64_t)UINT32_MAX) throw std::invalid_argument("more than 2^32 - 2 runs are not supported");
    R.row_start.assign(rows + 1, 0);
    R.x0.resize(total);
    R.x1.resize(total);
    R.value.resize(total);
    R.parent.resize(total);
    parallel_for(n_slabs, threads, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s) {
            Local& L = local[s];
            const int64_t off = slab_run[s];
            std::copy(L.x0.begin(), L.x0.end(), R.x0.begin() + off);
            std::copy(L.x1.begin(), L.x1.end(), R.x1.begin() + off);
            std::copy(L.value.begin(), L.value.end(), R.value.begin() + off);
            int64_t acc = off;
            for (int64_t r = slab_row[s]; r < slab_row[s + 1]; ++r) {
                R.row_start[r] = (uint32_t)acc;
                acc += L.row_count[r - slab_row[s]];
            }
            for (int64_t k = off; k < slab_run[s + 1]; ++k) R.parent[k] = (uint32_t)k;
            std::vector<C>().swap(L.x0);
            std::vector<C>().swap(L.x1);
            std::vector<T>().swap(L.value);
        }
    });
    R.row_start[rows] = (uint32_t)total;
    // joins inside a slab touch only the slab's own runs: no races
    parallel_for(n_slabs, threads, [&](int64_t s0, int64_t s1) {
        for (int64_t s = s0; s < s1; ++s)
            for (int64_t r = slab_row[s]; r < slab_row[s + 1]; ++r) detail::join_row(R, r, offs, slab_row[s]);
    });
    // seams: rows near a slab's start that look back into earlier slabs
    for (int64_t s = 1; s < n_slabs; ++s) {
        const int64_t r_end = std::min(slab_row[s + 1], slab_row[s] + Y + 2);
        for (int64_t r = slab_row[s]; r < r_end; ++r) {
            const int64_t z = r / Y, y = r % Y;
            for (const RowOffset& o : offs) {
                const int64_t qz = z + o.dz, qy = y + o.dy;
                if (qz < 0 || qy < 0 || qy >= Y) continue;
                const int64_t q = qz * Y + qy;
                if (q < slab_row[s]) detail::join_rows(R, r, q, o.diagonal);
            }
        }
    }
    return R;
}

// Numbers components 1..N by their first run; parent[] then holds each run's label.
template <typename T, typename C>
int64_t number_components(Runs<T, C>& R) {
    uint32_t* p = R.parent.data();
    const int64_t n = R.count();
    uint32_t next = 0;
    for (int64_t r = 0; r < n; ++r) {
        const uint32_t q = p[r];
        // q < r was already relabelled with its component's label (the root is the smallest)
        p[r] = (q == (uint32_t)r) ? ++next : p[q];
    }
    R.components = next;
    return next;
}

// Writes run labels (or any per-run value) into a C-order output of the image's shape.
template <typename T, typename C, typename L, typename F>
void fill_rows(const Runs<T, C>& R, L* out, int threads, F&& value_of_run) {
    parallel_for(R.rows(), threads, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            L* row = out + r * R.X;
            int64_t x = 0;
            for (int64_t k = R.row_start[r]; k < R.row_start[r + 1]; ++k) {
                const int64_t a = R.x0[k], b = R.x1[k];
                if (a > x) std::memset(row + x, 0, sizeof(L) * (size_t)(a - x));
                const L v = (L)value_of_run(k);
                for (int64_t i = a; i < b; ++i) row[i] = v;
                x = b;
            }
            if (x < R.X) std::memset(row + x, 0, sizeof(L) * (size_t)(R.X - x));
        }
    });
}

// Voxel count of every component (index = label, 0 unused). Needs number_components.
template <typename T, typename C>
std::vector<uint64_t> component_sizes(const Runs<T, C>& R) {
    std::vector<uint64_t> size(R.components + 1, 0);
    for (int64_t k = 0; k < R.count(); ++k) size[R.parent[k]] += (uint64_t)R.length(k);
    return size;
}

// The value (class) of every component (index = label). Needs number_components.
template <typename T, typename C>
std::vector<T> component_values(const Runs<T, C>& R) {
    std::vector<T> v(R.components + 1, 0);
    for (int64_t k = 0; k < R.count(); ++k) v[R.parent[k]] = R.value[k];
    return v;
}

// Statistics of a label image (cc3d.statistics): counts, inclusive boxes, coordinate sums.
// labels: C-order, shape (d0, d1[, d2]); bbox: (max_label + 1) x 2 ndim as [min0, max0, ...].
template <typename L>
void label_statistics(const L* labels, const std::vector<int64_t>& shape, int64_t max_label, uint64_t* counts,
                      int64_t* bbox, double* sums, int threads) {
    const int nd = (int)shape.size();
    const int64_t n_lab = max_label + 1;
    int64_t total = 1;
    for (int64_t s : shape) total *= s;
    const int64_t last = shape[nd - 1];
    const int64_t rows = last ? total / last : 0;
    threads = effective_threads(threads);
    // per-thread tables while they stay small, one shared table otherwise
    const int64_t table = n_lab * (1 + 2 * nd + nd);
    int parts = threads;
    if ((double)table * 8.0 * threads > 256e6 || rows < 4 * threads) parts = 1;
    std::vector<std::vector<uint64_t>> cnt(parts, std::vector<uint64_t>(n_lab, 0));
    std::vector<std::vector<int64_t>> box(parts, std::vector<int64_t>(n_lab * 2 * nd));
    std::vector<std::vector<uint64_t>> sum(parts, std::vector<uint64_t>(n_lab * nd, 0));
    for (int p = 0; p < parts; ++p)
        for (int64_t l = 0; l < n_lab; ++l)
            for (int d = 0; d < nd; ++d) box[p][2 * (l * nd + d)] = INT64_MAX, box[p][2 * (l * nd + d) + 1] = -1;
    parallel_for_tid(parts, parts, [&](int64_t p0, int64_t p1, int) {
        for (int64_t p = p0; p < p1; ++p) {
            uint64_t* C = cnt[p].data();
            int64_t* B = box[p].data();
            uint64_t* S = sum[p].data();
            const int64_t r0 = rows * p / parts, r1 = rows * (p + 1) / parts;
            std::vector<int64_t> idx(nd, 0);
            for (int64_t r = r0; r < r1; ++r) {
                int64_t rem = r;
                for (int d = nd - 2; d >= 0; --d) idx[d] = rem % shape[d], rem /= shape[d];
                const L* row = labels + r * last;
                for (int64_t x = 0; x < last; ++x) {
                    const int64_t l = (int64_t)row[x];
                    ++C[l];
                    int64_t* b = B + 2 * l * nd;
                    for (int d = 0; d < nd - 1; ++d) {
                        b[2 * d] = std::min(b[2 * d], idx[d]);
                        b[2 * d + 1] = std::max(b[2 * d + 1], idx[d]);
                        S[l * nd + d] += (uint64_t)idx[d];
                    }
                    b[2 * (nd - 1)] = std::min(b[2 * (nd - 1)], x);
                    b[2 * (nd - 1) + 1] = std::max(b[2 * (nd - 1) + 1], x);
                    S[l * nd + nd - 1] += (uint64_t)x;
                }
            }
        }
    });
    for (int64_t l = 0; l < n_lab; ++l) {
        uint64_t c = 0;
        for (int p = 0; p < parts; ++p) c += cnt[p][l];
        counts[l] = c;
        for (int d = 0; d < nd; ++d) {
            int64_t lo = INT64_MAX, hi = -1;
            uint64_t s = 0;
            for (int p = 0; p < parts; ++p) {
                lo = std::min(lo, box[p][2 * (l * nd + d)]);
                hi = std::max(hi, box[p][2 * (l * nd + d) + 1]);
                s += sum[p][l * nd + d];
            }
            bbox[2 * (l * nd + d)] = lo;
            bbox[2 * (l * nd + d) + 1] = hi;
            sums[l * nd + d] = (double)s;
        }
    }
}

}  // namespace label
}  // namespace segrt
