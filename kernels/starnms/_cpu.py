"""Fast CPU star-convex NMS: the C++ kernels of ``segrt.kernels._C`` (GIL released, OpenMP)."""
from __future__ import annotations

import numpy as np

from segrt.kernels._ext import extension
from segrt.kernels.starnms._reference import render_coords_2d


def candidates(prob: np.ndarray, prob_thresh: float, lo, hi, dist=None):
    """Candidate cells by rank; with dist (cells, n_rays) float32 also their longest ray,
    their rows checked on the way: (cells, longest)."""
    return extension().select_candidates(prob, float(prob.dtype.type(prob_thresh)), list(lo), list(hi), dist=dist)


def nms_2d(prob, dist, prob_thresh, nms_thresh, grid, lo, hi, n_threads=0, stored=None):
    """Kept flat cell indices in visiting order, plus the kernel's work counters.

    stored: None when dist holds every cell (..., n_rays); else the ascending flat indices of
    the cells whose rows dist (k, n_rays) holds, a superset of the candidates.
    Returns (kept cells, stats, the kept candidates' rows of dist)."""
    C = extension()
    n_rays = dist.shape[-1]
    dist32 = (dist if dist.dtype == np.float32 else dist.astype(np.float32)).reshape(-1, n_rays)
    rows = None
    longest = -1.0
    if stored is None:  # the candidates' rays are checked as they are found, in memory order
        order, longest = candidates(prob, prob_thresh, lo, hi, dist=dist32)
    else:
        order = candidates(prob, prob_thresh, lo, hi)
        rows = np.searchsorted(stored, order)
        if order.size and (rows.max() >= stored.size or not np.array_equal(stored[rows], order)):
            raise ValueError("a candidate cell has no stored distances: store every cell with prob > prob_thresh")
    keep, stats = C.nms_2d(
        dist32, order, prob.shape[1], grid[0], grid[1], float(nms_thresh), int(n_threads), rows=rows,
        longest_ray=longest,
    )
    return order[keep], stats, (order if rows is None else rows)[keep]


def render_2d(dists: np.ndarray, points: np.ndarray, labels: np.ndarray, shape) -> np.ndarray:
    """Polygons filled in order (vertices as the reference computes them, so both agree)."""
    coords = np.ascontiguousarray(render_coords_2d(dists, points))
    return extension().render_2d(coords, labels.astype(np.int32), int(shape[0]), int(shape[1]))


def nms_3d(cand_dist, cand_points, verts, faces, nms_thresh, n_threads=0):
    """Keep flags of candidates given in visiting order, plus the work counters."""
    return extension().nms_3d(cand_dist, cand_points, verts, faces, float(nms_thresh), int(n_threads))


def render_3d(dists, points, verts, faces, labels, shape, n_threads=0):
    return extension().render_3d(dists, points, verts, faces, labels, list(shape), int(n_threads))
