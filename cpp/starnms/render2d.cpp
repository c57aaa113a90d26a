// 2D rendering: polygons filled in order with skimage.draw.polygon's pixel rule.
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

#include "starnms.hpp"

namespace segrt {
namespace starnms {

// ---- rendering (skimage.draw.polygon's pixel rule) -----------------------------------------
void render_2d(const float* coords, int64_t n, int n_rays, const int32_t* labels, int32_t* out, int64_t height,
               int64_t width, int64_t row0, int64_t col0, int64_t out_height, int64_t out_width) {
    // the window [row0, row0 + out_height) x [col0, col0 + out_width) of the (height, width)
    // image: every pixel is decided with the image's own coordinates, so a window is the crop
    // of the whole rendering bit for bit
    const int64_t row_end = std::min(height, row0 + out_height), col_end = std::min(width, col0 + out_width);
    std::vector<double> xs;
    for (int64_t i = 0; i < n; ++i) {
        const float* rr = coords + i * 2 * n_rays;
        const float* cc = rr + n_rays;
        float rmin = rr[0], rmx = rr[0], cmin = cc[0], cmx = cc[0];
        for (int k = 1; k < n_rays; ++k) {
            rmin = std::min(rmin, rr[k]);
            rmx = std::max(rmx, rr[k]);
            cmin = std::min(cmin, cc[k]);
            cmx = std::max(cmx, cc[k]);
        }
        // the pixel range skimage scans: int(max(0, min)), int(ceil(max)), clipped to the image
        const int64_t r0 = std::max(row0, (int64_t)std::max(0.0f, rmin));
        const int64_t r1 = std::min<int64_t>(row_end - 1, (int64_t)std::ceil(rmx));
        const int64_t c0 = std::max(col0, (int64_t)std::max(0.0f, cmin));
        const int64_t c1 = std::min<int64_t>(col_end - 1, (int64_t)std::ceil(cmx));
        for (int64_t r = r0; r <= r1; ++r) {
            const double y = (double)r;
            xs.clear();
            for (int k = 0, j = n_rays - 1; k < n_rays; j = k++) {
                const double yi = rr[k], yj = rr[j], xi = cc[k], xj = cc[j];
                if (((yi <= y) && (y < yj)) || ((yj <= y) && (y < yi)))
                    xs.push_back((xj - xi) * (y - yi) / (yj - yi) + xi);
            }
            if (xs.empty()) continue;
            std::sort(xs.begin(), xs.end());
            int32_t* row = out + (r - row0) * out_width;
            if (xs.size() % 2 == 0) {
                // inside <=> an odd number of crossings lie at or left of the pixel
                for (size_t s = 0; s + 1 < xs.size(); s += 2) {
                    int64_t a = (int64_t)std::ceil(xs[s]);
                    int64_t b = (int64_t)std::ceil(xs[s + 1]) - 1;
                    a = std::max(a, c0);
                    b = std::min(b, c1);
                    for (int64_t c = a; c <= b; ++c) row[c - col0] = labels[i];
                }
            } else {
                for (int64_t c = c0; c <= c1; ++c) {
                    size_t cnt = 0;
                    for (double x : xs) cnt += ((double)c < x);
                    if (cnt & 1) row[c - col0] = labels[i];
                }
            }
        }
    }
}

}  // namespace starnms
}  // namespace segrt
