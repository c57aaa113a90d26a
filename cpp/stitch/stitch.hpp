// Sliding-window stitching kernels (header-only templates; bindings in bindings.cpp): weighted accumulation of a window's prediction into a
// larger buffer (no temporary for prediction x weight), and the per-voxel argmax over
// classes of a finished block. Shapes are (C, D0, D1, D2) with D0 = 1 for 2D data; boxes
// are given by offsets into the source and destination.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "../parallel.hpp"

namespace segrt {
namespace stitch {

using Box = std::array<int64_t, 3>;

// rows of the destination requested ahead of the accumulate (box_fma)
constexpr int64_t kPrefetchRows = 4;

// One window's weighted prediction into the blended sum, for q in the box (box coordinates):
//   dst[c, doff + q] += src[c, soff + q] * w[soff + q]
// with the first and the last visit of a voxel folded in, so the sum needs no zeroing pass
// before and no normalising pass after:
//   where q >= fresh on every axis (no earlier window covers the voxel) the sum is assigned,
//   not added (dst may hold anything there);
//   where q < last on every axis (no later window covers it) the sum is then divided by
//   count[doff + q] (count: dst's spatial shape; unused when some last[k] is 0).
// fresh = box and last = 0 give the plain accumulate. Returns false when a source value read
// is NaN or infinite (checked on the values already in registers: no extra pass).
template <typename T, typename S>
bool box_fma(T* dst, int64_t C, const Box& dshape, const Box& doff, const S* src, const Box& sshape,
             const Box& soff, const T* w, const Box& box, const Box& fresh, const Box& last, const T* count,
             int threads) {
    const int64_t dvox = dshape[0] * dshape[1] * dshape[2], svox = sshape[0] * sshape[1] * sshape[2];
    const int64_t rows = box[0] * box[1];
    const int64_t n = box[2];
    const int64_t fresh_x = std::min(std::max(fresh[2], (int64_t)0), n);
    const int64_t last_x = std::min(std::max(last[2], (int64_t)0), n);
    std::vector<unsigned char> bad_of(std::max(rows, (int64_t)1), 0);
    // rows outside, classes inside: a row of weights is read once for every class, and a row
    // is divided while it is still in the L1 cache
    parallel_for(rows, threads, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t a = r / box[1], b = r % box[1];
            const int64_t dof = ((doff[0] + a) * dshape[1] + (doff[1] + b)) * dshape[2] + doff[2];
            const int64_t so = ((soff[0] + a) * sshape[1] + (soff[1] + b)) * sshape[2] + soff[2];
            const bool row_fresh = a >= fresh[0] && b >= fresh[1];
            const int64_t add_to = row_fresh ? fresh_x : n;
            const int64_t divide_to = (a < last[0] && b < last[1]) ? last_x : 0;
            const T* ww = w + so;
            const T* cc = count != nullptr ? count + dof : nullptr;
            unsigned bad = 0;
            if (r + kPrefetchRows < r1) {
                // a row's destination is C short runs far apart, which the hardware prefetcher
                // does not follow: request them a few rows ahead (measured: about 15 % of the
                // call with the destination out of cache, as after a model's forward pass)
                const int64_t p = r + kPrefetchRows, pa = p / box[1], pb = p % box[1];
                const T* pd = dst + ((doff[0] + pa) * dshape[1] + (doff[1] + pb)) * dshape[2] + doff[2];
                for (int64_t c = 0; c < C; ++c)
                    for (int64_t x = 0; x < n; x += 64 / (int64_t)sizeof(T)) __builtin_prefetch(pd + c * dvox + x, 1);
            }
            for (int64_t c = 0; c < C; ++c) {
                T* __restrict d = dst + c * dvox + dof;
                const S* __restrict s = src + c * svox + so;
                for (int64_t x = 0; x < add_to; ++x) {
                    const T v = (T)s[x];
                    bad |= (unsigned)(v - v != (T)0);  // NaN for NaN and for +-inf
                    d[x] += v * ww[x];
                }
                for (int64_t x = add_to; x < n; ++x) {
                    const T v = (T)s[x];
                    bad |= (unsigned)(v - v != (T)0);
                    d[x] = v * ww[x];
                }
                for (int64_t x = 0; x < divide_to; ++x) d[x] /= cc[x];
            }
            bad_of[r] = (unsigned char)(bad != 0);
        }
    });
    for (unsigned char b : bad_of)
        if (b) return false;
    return true;
}

// labels[off + p] = argmax_c acc[c, p] over a whole (C, B0, B1, B2) block; first maximum wins.
template <typename T, typename L>
void argmax_block(const T* acc, int64_t C, const Box& bshape, L* labels, const Box& lshape, const Box& loff,
                  int threads) {
    const int64_t vox = bshape[0] * bshape[1] * bshape[2];
    const int64_t rows = bshape[0] * bshape[1];
    parallel_for(rows, threads, [&](int64_t r0, int64_t r1) {
        const int64_t n = bshape[2];  // a local: byte stores (uint8 labels) could alias a captured one
        std::vector<T> best(n);
        std::vector<L> arg(n);
        for (int64_t r = r0; r < r1; ++r) {
            const T* base = acc + r * n;
            for (int64_t x = 0; x < n; ++x) best[x] = base[x], arg[x] = 0;
            T* __restrict bv = best.data();
            L* __restrict iv = arg.data();
            for (int64_t c = 1; c < C; ++c) {
                const T* p = base + c * vox;
                // the index is selected with a mask, not a conditional: GCC vectorises this
                // form and not the other (0.62 -> 0.044 ms for 3 x 240 x 320, one thread)
                for (int64_t x = 0; x < n; ++x) {
                    const T v = p[x];
                    const L m = (L)((L)0 - (L)(v > bv[x]));
                    bv[x] = v > bv[x] ? v : bv[x];
                    iv[x] = (L)((iv[x] & (L)~m) | ((L)c & m));
                }
            }
            const int64_t a = r / bshape[1], b = r % bshape[1];
            L* out = labels + ((loff[0] + a) * lshape[1] + (loff[1] + b)) * lshape[2] + loff[2];
            for (int64_t x = 0; x < n; ++x) out[x] = arg[x];
        }
    });
}

// out[n, c, p] /= count[p] for every n, c (count broadcast over the leading axes).
template <typename T>
void divide_by(T* out, int64_t lead, const T* count, int64_t vox, int threads) {
    const int64_t chunk = 1 << 16;
    const int64_t per = (vox + chunk - 1) / chunk;
    parallel_for(lead * per, threads, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
            const int64_t l = r / per, b = (r % per) * chunk, e = std::min(vox, b + chunk);
            T* o = out + l * vox;
            for (int64_t i = b; i < e; ++i) o[i] /= count[i];
        }
    });
}

}  // namespace stitch
}  // namespace segrt

