// Polygon intersection through Clipper 6.4 (libpolyclipping), the library StarDist's 2D NMS
// calls. Used only to settle pairs whose overlap lies within a hair of the threshold, where
// Clipper's scan-line rounding (not the geometry) decides; absent when the build found no
// libpolyclipping, and then our own lattice geometry decides those pairs too.
#include "clipper_bridge.hpp"

#if SEGRT_HAVE_CLIPPER
#include <polyclipping/clipper.hpp>

#include <cstdlib>

namespace segrt {
namespace starnms {

bool clipper_available() { return true; }

double clipper_intersection_area(const int64_t* xy_a, int n_a, const int64_t* xy_b, int n_b) {
    ClipperLib::Path pa, pb;
    pa.reserve(n_a);
    pb.reserve(n_b);
    for (int k = 0; k < n_a; ++k) pa.push_back(ClipperLib::IntPoint(xy_a[2 * k], xy_a[2 * k + 1]));
    for (int k = 0; k < n_b; ++k) pb.push_back(ClipperLib::IntPoint(xy_b[2 * k], xy_b[2 * k + 1]));
    ClipperLib::Clipper c;
    ClipperLib::Paths res;
    // StarDist's order: the kept polygon is the clip path, the candidate the subject
    c.AddPath(pa, ClipperLib::ptClip, true);
    c.AddPath(pb, ClipperLib::ptSubject, true);
    c.Execute(ClipperLib::ctIntersection, res, ClipperLib::pftNonZero, ClipperLib::pftNonZero);
    float total = 0;
    for (const auto& ring : res) {
        float area = 0;
        const size_t n = ring.size();
        for (size_t i = 0; i < n; ++i) area += ring[i].X * ring[(i + 1) % n].Y - ring[i].Y * ring[(i + 1) % n].X;
        total += 0.5f * std::fabs(area);
    }
    return total;
}

}  // namespace starnms
}  // namespace segrt

#else

namespace segrt {
namespace starnms {
bool clipper_available() { return false; }
double clipper_intersection_area(const int64_t*, int, const int64_t*, int) { return -1.0; }
}  // namespace starnms
}  // namespace segrt

#endif
