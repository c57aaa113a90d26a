"""Plain reference star-convex NMS and rendering: slow, direct, obviously right.

The 2D overlap is computed with pyclipper (Clipper 6.4, the library StarDist's C++ calls),
on the same integer polygons StarDist builds, so these functions define the semantics the
fast kernels must reproduce. Needs the ``test`` extra (pyclipper).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math

import numpy as np

from segrt._optional import optional_import


def _libm_sinf_cosf():
    """C's sinf / cosf, which StarDist's float angle tables use (None where libm is absent)."""
    name = ctypes.util.find_library("m")
    if name is None:
        return None
    try:
        libm = ctypes.CDLL(name)
    except OSError:
        return None
    sinf, cosf = libm.sinf, libm.cosf
    sinf.restype = cosf.restype = ctypes.c_float
    sinf.argtypes = cosf.argtypes = [ctypes.c_float]
    return sinf, cosf


def ray_tables_float(n_rays: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 sin / cos of the angles 2 pi k / n_rays, computed in float as StarDist's C++ does."""
    step = np.float32(2 * math.pi / n_rays)
    phis = [np.float32(step * np.float32(k)) for k in range(n_rays)]
    fns = _libm_sinf_cosf()
    if fns is not None:
        s = np.array([fns[0](float(p)) for p in phis], np.float32)
        c = np.array([fns[1](float(p)) for p in phis], np.float32)
    else:
        s = np.array([math.sin(float(p)) for p in phis], np.float32)
        c = np.array([math.cos(float(p)) for p in phis], np.float32)
    return s, c


def candidates(prob: np.ndarray, prob_thresh: float, lo, hi) -> np.ndarray:
    """Flat indices of cells with prob > thresh inside [lo, hi), by descending prob, ties by index."""
    mask = np.zeros(prob.shape, bool)
    mask[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    mask &= prob > prob.dtype.type(prob_thresh)
    flat = np.flatnonzero(mask)
    order = np.argsort(-prob.reshape(-1)[flat], kind="stable")
    return flat[order]


def polygon_2d(dist_row: np.ndarray, centre_y: int, centre_x: int, tables) -> np.ndarray:
    """Integer (x, y) vertices: float32 p + d (sin, cos), truncated towards zero."""
    s, c = tables
    d = dist_row.astype(np.float32)
    y = np.float32(centre_y) + d * s
    x = np.float32(centre_x) + d * c
    return np.stack([np.trunc(x), np.trunc(y)], axis=1).astype(np.int64)


def lattice_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(int(np.sum(x * np.roll(y, -1) - y * np.roll(x, -1))))


def clipper_intersection_area(a: np.ndarray, b: np.ndarray) -> float:
    """Area of a n b as Clipper computes it (crossing points rounded to the lattice)."""
    pyclipper = optional_import("pyclipper", purpose="the reference star-convex NMS")
    pc = pyclipper.Pyclipper()
    try:
        pc.AddPath(a.tolist(), pyclipper.PT_CLIP, True)
        pc.AddPath(b.tolist(), pyclipper.PT_SUBJECT, True)
    except pyclipper.ClipperException:  # a degenerate path: Clipper drops it, nothing intersects
        return 0.0
    rings = pc.Execute(pyclipper.CT_INTERSECTION, pyclipper.PFT_NONZERO, pyclipper.PFT_NONZERO)
    return float(sum(lattice_area(np.asarray(r, np.int64)) for r in rings))


def overlap_exceeds(inter: float, area_a: float, area_b: float, thresh: float) -> bool:
    """StarDist's test in its precision: float areas, double ratio, float comparison."""
    inter32 = np.float32(inter)
    denom = min(float(np.float32(area_a)) + 1e-10, float(np.float32(area_b)) + 1e-10)
    return bool(np.float32(float(inter32) / denom) > np.float32(thresh))


def nms_2d(prob, dist, prob_thresh, nms_thresh, grid, lo, hi, stored=None, origin=(0, 0), exposed_of=None):
    """Greedy NMS over candidates in visiting order: (kept flat cell indices in order, work
    counters, the kept candidates' rows of dist[, uncertain cells]). ``stored``, ``origin``,
    ``exposed_of``: as in segrt.kernels.starnms._cpu."""
    order = candidates(prob, prob_thresh, lo, hi)
    n_rays = dist.shape[-1]
    tables = ray_tables_float(n_rays)
    width = prob.shape[1]
    if stored is None:
        dist_flat = dist.reshape(-1, n_rays)
    else:
        rows_of = dict(zip(stored.tolist(), range(len(stored))))
        if any(int(f) not in rows_of for f in order):
            raise ValueError("a candidate cell has no stored distances: store every cell with prob > prob_thresh")
        dist_flat = {int(f): dist[rows_of[int(f)]] for f in order}
    polys, areas, boxes, centres = [], [], [], []
    for f in order:
        r, c = divmod(int(f), width)
        centres.append(((r + origin[0]) * grid[0], (c + origin[1]) * grid[1]))
        p = polygon_2d(dist_flat[f], *centres[-1], tables)
        polys.append(p)
        areas.append(lattice_area(p))
        boxes.append((p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()))

    def suppresses(i, j):  # kept i suppresses later candidate j
        bi, bj = boxes[i], boxes[j]
        if bj[0] > bi[1] or bi[0] > bj[1] or bj[2] > bi[3] or bi[2] > bj[3]:
            return False
        return overlap_exceeds(clipper_intersection_area(polys[i], polys[j]), areas[i], areas[j], nms_thresh)

    suppressed = np.zeros(len(order), bool)
    kept = []
    pairs = 0
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(order[i])
        for j in range(i + 1, len(order)):
            if not suppressed[j]:
                pairs += 1
                suppressed[j] = suppresses(i, j)
    kept = np.asarray(kept, np.int64)
    rows = kept if stored is None else np.searchsorted(stored, kept)
    stats = {"candidates": len(order), "kept": len(kept), "pairs_overlap_tested": pairs}
    if exposed_of is None:
        return kept, stats, rows
    rays = np.stack([dist_flat[f] for f in order]) if len(order) else np.zeros((0, n_rays), np.float32)
    exposed = exposed_of(np.asarray(centres, np.int64).reshape(-1, 2), reach_2d(rays))
    certain = certify_2d(len(order), suppressed, exposed, suppresses)
    return kept, stats, rows, order[~certain]


def reach_2d(rows: np.ndarray) -> np.ndarray:
    """Longest ray rounded up plus 2 (the truncation to the lattice): how far a polygon reaches."""
    return (np.ceil(rows.max(axis=1, initial=0).astype(np.float64)) + 2).astype(np.int64)


def certify_2d(n, suppressed, exposed, suppresses):
    """Which of n candidates (visiting order) a block decides as the whole image does: a kept
    one when nothing outside reaches it and no uncertain earlier candidate suppresses it, a
    dropped one when a certain kept candidate suppresses it (see segrt.kernels.starnms.nms_2d)."""
    certain = np.ones(n, bool)
    for i in range(n):
        if not suppressed[i]:
            certain[i] = not exposed[i] and not any(suppresses(j, i) for j in range(i) if not certain[j])
        else:
            certain[i] = any(suppresses(j, i) for j in range(i) if certain[j] and not suppressed[j])
    return certain


def render_coords_2d(dists: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 2, n_rays) float32 row / column vertices, as stardist.geometry.dist_to_coord."""
    n_rays = dists.shape[1]
    phis = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    coord = (dists[:, np.newaxis] * np.array([np.sin(phis), np.cos(phis)])).astype(np.float32)
    coord += np.asarray(points)[..., np.newaxis]
    return coord


def render_2d(dists: np.ndarray, points: np.ndarray, labels: np.ndarray, shape, window=None) -> np.ndarray:
    """Fill polygons in order with skimage.draw.polygon's crossing test at pixel centres;
    window: (row0, col0, rows, cols) of the image to return."""
    out = np.zeros(shape, np.int32)
    for poly, lab in zip(render_coords_2d(dists, points), labels):
        rr, cc = poly[0].astype(np.float64), poly[1].astype(np.float64)
        r0 = int(max(0, rr.min()))
        r1 = min(shape[0] - 1, int(np.ceil(rr.max())))
        c0 = int(max(0, cc.min()))
        c1 = min(shape[1] - 1, int(np.ceil(cc.max())))
        if r1 < r0 or c1 < c0:
            continue
        ys, xs = np.mgrid[r0 : r1 + 1, c0 : c1 + 1].astype(np.float64)
        inside = np.zeros(ys.shape, bool)
        for i in range(len(rr)):
            j = i - 1
            yi, yj, xi, xj = rr[i], rr[j], cc[i], cc[j]
            with np.errstate(divide="ignore", invalid="ignore"):
                cond = ((yi <= ys) & (ys < yj)) | ((yj <= ys) & (ys < yi))
                cond &= xs < (xj - xi) * (ys - yi) / (yj - yi) + xi
            inside ^= cond
        out[r0 : r1 + 1, c0 : c1 + 1][inside] = lab
    if window is not None:
        return out[window[0]:window[0] + window[2], window[1]:window[1] + window[3]].copy()
    return out


# ---- 3D -------------------------------------------------------------------------------
# StarDist's float32 formulas, vectorised with NumPy (every operation rounds to float32 as
# the C++ does), and qhull (through SciPy) for the kernel and hull volumes, as StarDist.

_f = np.float32


def _det(A, B, C, P):
    """det of rows (B - A, C - A, P - A) in StarDist's operand order, float32."""
    M00, M01, M02 = B[..., 0] - A[..., 0], B[..., 1] - A[..., 1], B[..., 2] - A[..., 2]
    M10, M11, M12 = C[..., 0] - A[..., 0], C[..., 1] - A[..., 1], C[..., 2] - A[..., 2]
    M20, M21, M22 = P[..., 0] - A[..., 0], P[..., 1] - A[..., 1], P[..., 2] - A[..., 2]
    return M00 * (M11 * M22 - M21 * M12) - M01 * (M10 * M22 - M12 * M20) + M02 * (M10 * M21 - M11 * M20)


def inside_polyhedron(P, center, polyverts, faces):
    """(m,) bool: voxels P (m, 3) float32 inside one of the tetrahedra (centre, face)."""
    P = P.astype(_f)
    R = center.astype(_f)[None]
    inside = np.zeros(len(P), bool)
    for a, b, c in faces:
        A, B, C = polyverts[a][None], polyverts[b][None], polyverts[c][None]
        t = (_det(A, B, C, P) >= 0) & (_det(R, B, A, P) >= 0) & (_det(R, C, B, P) >= 0) & (_det(R, A, C, P) >= 0)
        inside |= t
    return inside


def polyhedron_volume(d, verts, faces):
    vol = _f(0)
    zero = np.zeros(3, _f)
    for a, b, c in faces:
        A, B, C = d[a] * verts[a], d[b] * verts[b], d[c] * verts[c]
        vol = _f(vol + _det(A, B, C, zero) / _f(6))
    return vol


def polyhedron_bbox(d, center, verts):
    pv = center[None].astype(_f) + d[:, None] * verts
    r = np.rint(pv).astype(np.int64)  # lrint: round half to even, like np.rint
    return [int(r[:, 0].min()), int(max(-1, r[:, 0].max())), int(r[:, 1].min()), int(max(-1, r[:, 1].max())),
            int(r[:, 2].min()), int(max(-1, r[:, 2].max()))]


def _radius_outer_iso(d, verts, aniso):
    s = aniso[None] * d[:, None] * verts
    return np.sqrt(np.max((s[:, 0] * s[:, 0] + s[:, 1] * s[:, 1]) + s[:, 2] * s[:, 2]).astype(_f))


def _radius_inner_iso(d, verts, faces, aniso):
    r = _f(np.inf)
    for a, b, c in faces:
        A, B, C = (aniso * d[a]) * verts[a], (aniso * d[b]) * verts[b], (aniso * d[c]) * verts[c]
        p, q = B - A, C - A
        N = np.array([p[1] * q[2] - p[2] * q[1], p[2] * q[0] - p[0] * q[2], p[0] * q[1] - p[1] * q[0]], _f)
        norm = _f(1.0 / (float(np.sqrt(_f(N[0] * N[0] + N[1] * N[1] + N[2] * N[2]))) + 1e-10))
        N = N * norm
        r = min(r, _f(A[0] * N[0] + A[1] * N[1] + A[2] * N[2]))
    return r


def _sphere_lens(r1, p1, r2, p2, aniso):
    dd = aniso * (p1 - p2)
    d = np.sqrt(_f(dd[0] * dd[0] + dd[1] * dd[1] + dd[2] * dd[2]))
    rmin, rmax = np.fmin(r1, r2), np.fmax(r1, r2)
    if d > _f(r1 + r2):
        return _f(0)
    if float(rmax) >= float(_f(d + rmin)) - 1e-10:
        return _f(np.pi * 4.0 / 3 * float(rmin) ** 3)
    t = _f(_f(_f(r1 + r2) - d) / _f(2)) / d
    h1, h2 = _f(_f(r2 - r1) + d) * t, _f(_f(r1 - r2) + d) * t
    v1 = _f(np.pi / 3 * float(h1) * float(h1) * float(_f(_f(3) * r1) - h1))
    v2 = _f(np.pi / 3 * float(h2) * float(h2) * float(_f(_f(3) * r2) - h2))
    return _f(_f(v1 + v2) / _f(_f(aniso[0] * aniso[1]) * aniso[2]))


def _box_overlap(b1, b2):
    w = [max(0.0, float(min(b1[2 * k + 1], b2[2 * k + 1]) - max(b1[2 * k], b2[2 * k]))) for k in range(3)]
    return _f(_f(_f(w[2]) * _f(w[1])) * _f(w[0]))


def _kernel_halfspaces(pv, faces):
    hs = []
    for a, b, c in faces:
        A, B, C = pv[a], pv[b], pv[c]
        P, Q = B - A, C - A
        N = np.array([-(P[1] * Q[2] - P[2] * Q[1]), -(P[2] * Q[0] - P[0] * Q[2]), -(P[0] * Q[1] - P[1] * Q[0])], _f)
        hs.append([N[0], N[1], N[2], -(A[0] * N[0] + A[1] * N[1] + A[2] * N[2])])
    return np.asarray(hs, np.float64)


def _qhull_volume(halfspaces, interior, failed):
    from scipy.spatial import ConvexHull, HalfspaceIntersection
    from scipy.spatial import QhullError

    try:
        hsi = HalfspaceIntersection(halfspaces, interior)
        return float(ConvexHull(hsi.intersections).volume)
    except (QhullError, ValueError):
        return failed


def nms_3d(cand_dist, cand_points, verts, faces, thresh):
    """StarDist's 3D cascade, pair by pair: (keep flags in visiting order, work counters)."""
    # degenerate polyhedra (zero rays) make NaN bounds, exactly as in StarDist's C
    with np.errstate(invalid="ignore", divide="ignore"):
        keep = _nms_3d(cand_dist, cand_points, verts, faces, thresh)
    return keep, {"candidates": len(keep), "kept": int(np.count_nonzero(keep))}


def _nms_3d(cand_dist, cand_points, verts, faces, thresh):
    from scipy.spatial import ConvexHull
    from scipy.spatial import QhullError

    n = len(cand_dist)
    thresh = _f(thresh)
    vol = [polyhedron_volume(cand_dist[i], verts, faces) for i in range(n)]
    box = [polyhedron_bbox(cand_dist[i], cand_points[i], verts) for i in range(n)]
    aniso = np.zeros(3, _f)
    for b in box:
        for k in range(3):
            aniso[k] = _f(aniso[k] + _f(_f(b[2 * k + 1] - b[2 * k]) / _f(n)))
    aniso = (np.max(aniso) / aniso).astype(_f)
    r_out = [_radius_outer_iso(cand_dist[i], verts, aniso) for i in range(n)]
    r_in = [_radius_inner_iso(cand_dist[i], verts, faces, aniso) for i in range(n)]
    pv = [cand_points[i][None].astype(_f) + cand_dist[i][:, None] * verts for i in range(n)]
    suppressed = np.zeros(n, bool)
    for i in range(n - 1):
        if suppressed[i]:
            continue
        for j in range(i + 1, n):
            if suppressed[j]:
                continue
            amin = min(vol[i], vol[j])
            # fmin / fmax as in C: a NaN bound (degenerate boxes) yields to the other operand
            inter = np.fmin(_sphere_lens(r_out[i], cand_points[i], r_out[j], cand_points[j], aniso), _box_overlap(box[i], box[j]))
            if inter < 1e-10 or _f(np.fmin(1.0, float(inter) / (float(amin) + 1e-10))) <= thresh:
                continue
            inter = _sphere_lens(r_in[i], cand_points[i], r_in[j], cand_points[j], aniso)
            if _f(np.fmax(0.0, float(inter) / (float(amin) + 1e-10))) > thresh:
                suppressed[j] = True
                continue
            mid = 0.5 * (cand_points[i].astype(np.float64) + cand_points[j].astype(np.float64))
            hs = np.vstack([_kernel_halfspaces(pv[i], faces), _kernel_halfspaces(pv[j], faces)])
            if _f(_f(_qhull_volume(hs, mid, 0.0)) / (float(amin) + 1e-10)) > thresh:
                suppressed[j] = True
                continue
            try:
                h = np.vstack([ConvexHull(pv[i].astype(np.float64)).equations, ConvexHull(pv[j].astype(np.float64)).equations])
                hull = _qhull_volume(h, mid, 1e10)
            except QhullError:
                hull = 1e10
            if _f(_f(hull) / (float(amin) + 1e-10)) <= thresh:
                continue
            b = box[i]
            zz, yy, xx = np.mgrid[b[0] : b[1] + 1, b[2] : b[3] + 1, b[4] : b[5] + 1]
            vox = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1).astype(_f)
            both = inside_polyhedron(vox, cand_points[i], pv[i], faces) & inside_polyhedron(vox, cand_points[j], pv[j], faces)
            if _f(float(_f(both.sum())) / (float(amin) + 1e-10)) > thresh:
                suppressed[j] = True
    return ~suppressed


def render_3d(dists, points, verts, faces, labels, shape):
    out = np.zeros(shape, np.int32)
    for d, c, lab in zip(dists, points, labels):
        b = polyhedron_bbox(d, c, verts)
        lo = [max(0, b[0]), max(0, b[2]), max(0, b[4])]
        hi = [min(shape[0] - 1, b[1]), min(shape[1] - 1, b[3]), min(shape[2] - 1, b[5])]
        if any(h < l for l, h in zip(lo, hi)):
            continue
        zz, yy, xx = np.mgrid[lo[0] : hi[0] + 1, lo[1] : hi[1] + 1, lo[2] : hi[2] + 1]
        vox = np.stack([zz.ravel(), yy.ravel(), xx.ravel()], 1)
        pv = c[None].astype(_f) + d[:, None] * verts
        hs = _kernel_halfspaces(pv, faces)
        in_kernel = np.all(vox.astype(np.float64) @ hs[:, :3].T + hs[:, 3] <= 0, axis=1)
        inside = in_kernel | inside_polyhedron(vox.astype(_f), c, pv, faces)
        tgt = out[vox[:, 0], vox[:, 1], vox[:, 2]]
        sel = inside & (tgt == 0)
        out[vox[sel, 0], vox[sel, 1], vox[sel, 2]] = lab
    return out
