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
    pyclipper = optional_import("pyclipper", extra="test", purpose="the reference star-convex NMS")
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


def nms_2d(prob, dist, prob_thresh, nms_thresh, grid, lo, hi):
    """Greedy NMS over candidates in visiting order; returns kept flat cell indices in order."""
    order = candidates(prob, prob_thresh, lo, hi)
    n_rays = dist.shape[-1]
    tables = ray_tables_float(n_rays)
    width = prob.shape[1]
    dist_flat = dist.reshape(-1, n_rays)
    polys, areas, boxes = [], [], []
    for f in order:
        r, c = divmod(int(f), width)
        p = polygon_2d(dist_flat[f], r * grid[0], c * grid[1], tables)
        polys.append(p)
        areas.append(lattice_area(p))
        boxes.append((p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()))
    suppressed = np.zeros(len(order), bool)
    kept = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        kept.append(order[i])
        bi = boxes[i]
        for j in range(i + 1, len(order)):
            if suppressed[j]:
                continue
            bj = boxes[j]
            if bj[0] > bi[1] or bi[0] > bj[1] or bj[2] > bi[3] or bi[2] > bj[3]:
                continue
            inter = clipper_intersection_area(polys[i], polys[j])
            if overlap_exceeds(inter, areas[i], areas[j], nms_thresh):
                suppressed[j] = True
    return np.asarray(kept, np.int64)


def render_coords_2d(dists: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 2, n_rays) float32 row / column vertices, as stardist.geometry.dist_to_coord."""
    n_rays = dists.shape[1]
    phis = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    coord = (dists[:, np.newaxis] * np.array([np.sin(phis), np.cos(phis)])).astype(np.float32)
    coord += np.asarray(points)[..., np.newaxis]
    return coord


def render_2d(coords: np.ndarray, labels: np.ndarray, shape) -> np.ndarray:
    """Fill polygons in order with skimage.draw.polygon's crossing test at pixel centres."""
    out = np.zeros(shape, np.int32)
    for poly, lab in zip(coords, labels):
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
    return out
