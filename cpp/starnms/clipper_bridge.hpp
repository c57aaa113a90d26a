#pragma once
#include <cmath>
#include <cstdint>

namespace segrt {
namespace starnms {
// True when the build linked libpolyclipping.
bool clipper_available();
// Intersection area of two integer polygons ((x, y) pairs) as StarDist computes it with
// Clipper; -1 when Clipper is not available.
double clipper_intersection_area(const int64_t* xy_a, int n_a, const int64_t* xy_b, int n_b);
}  // namespace starnms
}  // namespace segrt
