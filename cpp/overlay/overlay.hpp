// Label overlay for video: class colours blended into a frame at the frame's own size, the
// (smaller) label image looked up at each pixel's centre, in one pass. It replaces an
// upscaled label image, a colour image, a blend and a masked copy (four full-frame passes)
// with a copy of the frame and a blend of the labelled spans only.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "../parallel.hpp"

namespace segrt {
namespace overlay {

// Source index of destination index i when n_src pixels are stretched over n_dst: the source
// pixel that holds the destination pixel's centre, floor((i + 1/2) * n_src / n_dst).
inline int64_t centre_source(int64_t i, int64_t n_src, int64_t n_dst) { return ((2 * i + 1) * n_src) / (2 * n_dst); }

// o[i] = (f[i] * inv + t[i]) >> 8 over one span. A function of its own: its arguments are
// locals, so the byte stores cannot alias them (inside the OpenMP-outlined lambda they
// could alias every captured variable, and the loop ran 3x slower, measured).
inline void blend_span(const uint8_t* __restrict f, const uint16_t* __restrict t, uint8_t* __restrict o, int64_t n,
                       uint16_t inv) {
    for (int64_t i = 0; i < n; ++i) o[i] = (uint8_t)((uint16_t)((uint16_t)(f[i] * inv) + t[i]) >> 8);
}

// One frame row: copied, then every run of equal nonzero labels in its label row blended.
inline void blend_row(const uint8_t* f, uint8_t* o, const uint8_t* row, int64_t w, int64_t W,
                      const int64_t* col_start, const std::array<std::vector<uint16_t>, 256>& tiled, uint16_t inv) {
    if (o != f) std::memcpy(o, f, (size_t)(W * 3));
    for (int64_t x = 0; x < w;) {
        const uint8_t l = row[x];
        int64_t e = x + 1;
        while (e < w && row[e] == l) ++e;
        if (l != 0) {
            const int64_t b = 3 * col_start[x];
            blend_span(f + b, tiled[l].data() + b, o + b, 3 * col_start[e] - b, inv);
        }
        x = e;
    }
}

// out (H, W, 3) = frame where the label is 0, else per channel
// (frame * (256 - a) + colour * a + 128) >> 8, colour = palette[min(label, K - 1)];
// labels (h, w), smaller or larger than the frame; a in [0, 256]. out may be frame itself.
// The sum stays below 2^16 (frame * (256 - a) + colour * a <= 255 * 256), so 16-bit lanes hold it.
inline void blend_labels(const uint8_t* frame, int64_t H, int64_t W, const uint8_t* labels, int64_t h, int64_t w,
                  const uint8_t* palette, int64_t K, int a, uint8_t* out, int threads) {
    // first destination column of each source column: runs of equal labels become spans
    std::vector<int64_t> col_start(w + 1, W);
    for (int64_t X = W - 1; X >= 0; --X) col_start[centre_source(X, w, W)] = X;
    for (int64_t x = w - 1; x >= 0; --x) col_start[x] = std::min(col_start[x], col_start[x + 1]);
    // colour * a + 128 laid out along a whole row, per label value met: the blend of a span
    // is then one loop over bytes, which the compiler vectorises
    std::array<std::vector<uint16_t>, 256> tiled;
    std::array<bool, 256> met{};
    for (int64_t i = 0, n = h * w; i < n; ++i) met[labels[i]] = true;
    for (int l = 1; l < 256; ++l) {
        if (!met[l]) continue;
        const uint8_t* c = palette + 3 * std::min<int64_t>(l, K - 1);
        tiled[l].resize(3 * W);
        for (int64_t X = 0; X < W; ++X)
            for (int k = 0; k < 3; ++k) tiled[l][3 * X + k] = (uint16_t)(c[k] * a + 128);
    }
    const uint16_t inv = (uint16_t)(256 - a);
    parallel_for_tid(H, threads, [&](int64_t r0, int64_t r1, int) {
        for (int64_t Y = r0; Y < r1; ++Y)
            blend_row(frame + Y * W * 3, out + Y * W * 3, labels + centre_source(Y, h, H) * w, w, W, col_start.data(),
                      tiled, inv);
    });
}

}  // namespace overlay
}  // namespace segrt

