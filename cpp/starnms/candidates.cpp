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

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

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

// Items (32-bit key << 32 | position) sorted by key, stably (positions are unique and
// ascending, so this is also their full order): LSD radix over the key's bits below the
// highest one that differs between keys (`varying`: the OR of every key XOR one of them), in
// digits of at most 12 bits (two passes for scores in (0.5, 1]), each pass's histogram and
// scatter split over the threads in order (stable).
void radix_sort_packed(std::vector<uint64_t>& items, uint32_t varying, int threads) {
    const int64_t n = (int64_t)items.size();
    if (varying == 0) return;  // one key: already in order
    const int bits = 32 - __builtin_clz(varying);
    const int passes = (bits + 11) / 12, kBits = (bits + passes - 1) / passes, kDigits = 1 << kBits;
    threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, n / 65536));
    std::vector<uint64_t> other(n);
    std::vector<int64_t> count((size_t)threads * kDigits);
    for (int shift = 32; shift < 32 + bits; shift += kBits) {
        std::fill(count.begin(), count.end(), 0);
        auto part = [&](int t) { return std::make_pair(n * t / threads, n * (t + 1) / threads); };
        parallel_for(threads, threads, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                int64_t* c = &count[(size_t)t * kDigits];
                const auto r = part((int)t);
                for (int64_t i = r.first; i < r.second; ++i) ++c[(items[i] >> shift) & (kDigits - 1)];
            }
        });
        // offsets: by digit, then by thread (each thread's items of a digit follow the
        // previous thread's)
        int64_t sum = 0;
        bool single = false;
        for (int d = 0; d < kDigits; ++d) {
            int64_t digit_total = 0;
            for (int t = 0; t < threads; ++t) {
                const int64_t c = count[(size_t)t * kDigits + d];
                count[(size_t)t * kDigits + d] = sum;
                sum += c;
                digit_total += c;
            }
            if (digit_total == n) single = true;
        }
        if (single) continue;  // every key has this digit: the pass would not move anything
        parallel_for(threads, threads, [&](int64_t t0, int64_t t1) {
            for (int64_t t = t0; t < t1; ++t) {
                int64_t* c = &count[(size_t)t * kDigits];
                const auto r = part((int)t);
                for (int64_t i = r.first; i < r.second; ++i) {
                    const uint64_t v = items[i];
                    other[c[(v >> shift) & (kDigits - 1)]++] = v;
                }
            }
        });
        items.swap(other);
    }
}

// Whether any of the cells is above the threshold or NaN.
template <typename T>
inline bool block_any_above(const T* v, int64_t length, T thresh) {
    bool any = false;
    for (int64_t x = 0; x < length; ++x) any |= !(v[x] <= thresh);
    return any;
}
// The same for a block of kLength cells: SSE2 compares on x86-64 (the plain loop stayed
// scalar, sixteen compares and branches a block).
template <int64_t kLength, typename T>
inline bool block_any_above(const T* v, T thresh) {
#if defined(__x86_64__)
    if constexpr (sizeof(T) == 4) {
        const __m128 t = _mm_set1_ps(thresh);
        __m128 any = _mm_setzero_ps();
        for (int64_t x = 0; x < kLength; x += 4) any = _mm_or_ps(any, _mm_cmpnle_ps(_mm_loadu_ps(v + x), t));
        return _mm_movemask_ps(any) != 0;
    } else {
        const __m128d t = _mm_set1_pd(thresh);
        __m128d any = _mm_setzero_pd();
        for (int64_t x = 0; x < kLength; x += 2) any = _mm_or_pd(any, _mm_cmpnle_pd(_mm_loadu_pd(v + x), t));
        return _mm_movemask_pd(any) != 0;
    }
#else
    return block_any_above(v, kLength, thresh);
#endif
}

// a growable buffer written past its end without bounds checks (room is made per row)
template <typename V>
struct Collected {
    std::unique_ptr<V[]> data;
    size_t size = 0, capacity = 0;
    void room(size_t more) {
        if (size + more <= capacity) return;
        const size_t cap = std::max(size + more, 2 * capacity);
        std::unique_ptr<V[]> bigger(new V[cap]);
        std::copy(data.get(), data.get() + size, bigger.get());
        data.swap(bigger);
        capacity = cap;
    }
};
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
    std::vector<Collected<K>> part_keys(parts);
    std::vector<Collected<int64_t>> part_idx(parts);
    std::vector<int64_t> part_nan(parts, 0);
    std::vector<float> part_longest(parts, 0.0f);
    std::vector<uint8_t> part_bad(parts, 0);
    const int64_t row_len = hi[nd - 1] - lo[nd - 1];
    parallel_for(parts, parts, [&](int64_t p0, int64_t p1) {
        for (int64_t part = p0; part < p1; ++part) {
            Collected<K>& keys = part_keys[part];
            Collected<int64_t>& idx = part_idx[part];
            int64_t nans = 0;
            // walk the rows of the last axis inside the border
            std::vector<int64_t> pos(lo.begin(), lo.end()), end(hi.begin(), hi.end());
            pos[0] = lo[0] + first * part / parts;
            end[0] = lo[0] + first * (part + 1) / parts;
            // room for candidates on 1 cell in 16 (network outputs hold fewer) before any
            // regrowth copies
            int64_t cells = end[0] - pos[0];
            for (int d = 1; d < nd; ++d) cells *= hi[d] - lo[d];
            keys.room(cells / 16 + row_len);
            idx.room(cells / 16 + row_len);
            while (true) {
                int64_t base = 0;
                for (int d = 0; d < nd - 1; ++d) base += pos[d] * strides[d];
                // branch-free: every cell is written, the count advances past candidates only
                // (which cells pass is unpredictable on noisy maps)
                keys.room(row_len);
                idx.room(row_len);
                const T* row = prob + base;
                K* kp = keys.data.get() + keys.size;
                int64_t* ip = idx.data.get() + idx.size;
                size_t c = 0;
                int64_t row_nans = 0;
                constexpr int64_t kBlock = 16;
                for (int64_t x0 = lo[nd - 1]; x0 < hi[nd - 1]; x0 += kBlock) {
                    const int64_t x1 = std::min(hi[nd - 1], x0 + kBlock);
                    // most blocks hold no candidate (and no NaN): one vectorised look skips them
                    if (x1 - x0 == kBlock ? !block_any_above<kBlock>(row + x0, thresh)
                                          : !block_any_above(row + x0, x1 - x0, thresh))
                        continue;
                    for (int64_t x = x0; x < x1; ++x) {
                        const T v = row[x];
                        kp[c] = order_key(v);
                        ip[c] = base + x;
                        c += (v > thresh);
                        row_nans += (v != v);
                    }
                }
                keys.size += c;
                idx.size += c;
                nans += row_nans;
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
                const int64_t* ids = idx.data.get();
                for (size_t c = 0; c < idx.size; ++c) {
                    if (c + 8 < idx.size) fetch_row(dist + ids[c + 8] * n_rays, row_bytes);
                    scan_rays(dist + ids[c] * n_rays, n_rays, &longest, &bad);
                }
                part_longest[part] = longest;
                part_bad[part] = (uint8_t)bad;
            }
        }
    });
    size_t total = 0;
    for (int part = 0; part < parts; ++part) {
        total += part_idx[part].size;
        nan_count += part_nan[part];
        if (rays) {
            rays->longest = std::max(rays->longest, part_longest[part]);
            rays->bad = rays->bad || part_bad[part];
        }
    }
    std::vector<size_t> part_at(parts + 1, 0);  // where each part's candidates start
    for (int part = 0; part < parts; ++part) part_at[part + 1] = part_at[part] + part_idx[part].size;
    std::vector<int64_t> idx(total);
    if (sizeof(K) == 4 && total < ((size_t)1 << 32)) {
        // (key, position) in one word: the sort moves 8 bytes an item, and positions restore
        // the flat indices after it; the parts copied out by their threads
        std::vector<uint64_t> items(total);
        K first = 0;
        for (int part = 0; part < parts && total; ++part)
            if (part_keys[part].size) {
                first = part_keys[part].data[0];
                break;
            }
        std::vector<uint32_t> part_varying(parts, 0);
        parallel_for(parts, parts, [&](int64_t p0, int64_t p1) {
            for (int64_t part = p0; part < p1; ++part) {
                const K* k = part_keys[part].data.get();
                const size_t at = part_at[part], count = part_idx[part].size;
                std::copy(part_idx[part].data.get(), part_idx[part].data.get() + count, idx.begin() + at);
                uint32_t varying = 0;
                for (size_t c = 0; c < count; ++c) {
                    items[at + c] = (uint64_t)k[c] << 32 | (at + c);
                    varying |= (uint32_t)(k[c] ^ first);
                }
                part_varying[part] = varying;
                part_keys[part] = Collected<K>();
                part_idx[part] = Collected<int64_t>();
            }
        });
        uint32_t varying = 0;
        for (int part = 0; part < parts; ++part) varying |= part_varying[part];
        radix_sort_packed(items, varying, effective_threads(0));
        std::vector<int64_t> out(total);
        parallel_for((int64_t)total, effective_threads(0), [&](int64_t a, int64_t b) {
            for (int64_t c = a; c < b; ++c) out[c] = idx[items[c] & 0xFFFFFFFFu];
        });
        return out;
    }
    for (int part = 0; part < parts; ++part)
        std::copy(part_idx[part].data.get(), part_idx[part].data.get() + part_idx[part].size, idx.begin() + part_at[part]);
    std::vector<K> keys;
    keys.reserve(total);
    for (int part = 0; part < parts; ++part)
        keys.insert(keys.end(), part_keys[part].data.get(), part_keys[part].data.get() + part_keys[part].size);
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
