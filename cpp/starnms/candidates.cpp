// Candidate selection, shared by 2D and 3D NMS: cells above the threshold inside the border,
// ranked by descending score (ties by ascending flat index) with a stable radix sort on
// order-preserving keys; optionally checks and measures the candidates' rays on the way.
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

#include "../parallel.hpp"
#include "rays.hpp"
#include "starnms.hpp"

namespace segrt {
namespace starnms {

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

}  // namespace starnms
}  // namespace segrt
