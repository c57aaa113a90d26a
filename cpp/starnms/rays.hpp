// Reading candidate rays (internal): prefetching rows visited with gaps, and checking and
// measuring a row on the way. Shared by candidate selection and the 2D suppression loop.
#pragma once

#include <cstddef>
#include <cstdint>

namespace segrt {
namespace starnms {

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

}  // namespace starnms
}  // namespace segrt
