// Reading candidate rays (internal): prefetching rows visited with gaps, and checking and
// measuring a row on the way. Shared by candidate selection and the 2D suppression loop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "starnms.hpp"

namespace segrt {
namespace starnms {

namespace {
// Starts fetching a row of distances the loop will read soon (rows are visited with gaps).
inline void fetch_row(const float* row, size_t bytes) {
    for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch((const char*)row + off);
}

// The longest ray of a row into *longest; *bad set when a ray is NaN, infinite or negative.
// On the bit patterns, so that it vectorises: a float's bits read as an unsigned integer
// order the non-negative floats as the floats do, and NaN, infinities, negative values and
// anything above 3e38 all read above 3e38's bits (-0.0 is taken as 0, as a float compare does).
SEGRT_AVX2_CLONES inline void scan_rays(const float* d, int n_rays, float* longest, int32_t* bad) {
    constexpr uint32_t kLimit = 0x7F61B1E6u;  // 3.0e38f
    uint32_t top = 0;
    for (int k = 0; k < n_rays; ++k) {
        uint32_t u;
        std::memcpy(&u, d + k, 4);
        u = u == 0x80000000u ? 0u : u;
        top = u > top ? u : top;
    }
    float r;
    const uint32_t valid_top = top > kLimit ? 0u : top;
    std::memcpy(&r, &valid_top, 4);
    *longest = r > *longest ? r : *longest;
    *bad |= top > kLimit;
}
}  // namespace

}  // namespace starnms
}  // namespace segrt
