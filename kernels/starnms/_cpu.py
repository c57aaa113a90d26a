"""Fast CPU star-convex NMS: the C++ kernels of ``segrt.kernels._C`` (GIL released, OpenMP)."""
from __future__ import annotations

import numpy as np

from segrt.kernels._ext import extension
from segrt.kernels.starnms._reference import render_coords_2d


def candidates(prob: np.ndarray, prob_thresh: float, lo, hi, dist=None):
    """Candidate cells by rank; with dist (cells, n_rays) float32 also their longest ray,
    their rows checked on the way: (cells, longest)."""
    return extension().select_candidates(prob, float(prob.dtype.type(prob_thresh)), list(lo), list(hi), dist=dist)


def nms_2d(prob, dist, prob_thresh, nms_thresh, grid, lo, hi, n_threads=0, stored=None, origin=(0, 0),
           exposed_of=None):
    """Kept flat cell indices in visiting order, plus the kernel's work counters.

    stored: None when dist holds every cell (..., n_rays); else the ascending flat indices of
    the cells whose rows dist (k, n_rays) holds, a superset of the candidates.
    origin: (row, col) of prob's first cell in a larger grid whose coordinates the polygons use.
    exposed_of: with a block, a function (centres (k, 2), reach (k,)) -> which candidates a
    polygon centred outside the block could overlap; then the uncertain candidates' cells are
    returned as a fourth value.
    Returns (kept cells, stats, the kept candidates' rows of dist[, uncertain cells])."""
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
    # in the larger grid's flat indices (any width past the block's right edge gives the same
    # centres and the same (row, col) order)
    width = prob.shape[1] + origin[1]
    cells = order if origin == (0, 0) else (order // prob.shape[1] + origin[0]) * width + order % prob.shape[1] + origin[1]
    row_of = order if rows is None else rows
    keep, stats = C.nms_2d(
        dist32, cells, width, grid[0], grid[1], float(nms_thresh), int(n_threads),
        rows=None if rows is None and cells is order else row_of,
        longest_ray=longest,
    )
    if exposed_of is None:
        return order[keep], stats, row_of[keep]
    centres = np.stack([cells // width * grid[0], cells % width * grid[1]], axis=1)
    exposed = exposed_of(centres, reach_2d(dist32[row_of]))
    certain = C.certify_2d(dist32, cells, row_of, width, grid[0], grid[1], float(nms_thresh), keep, exposed)
    return order[keep], stats, row_of[keep], order[~certain]


def reach_2d(rows: np.ndarray) -> np.ndarray:
    """How far (pixels, per axis) a polygon's lattice vertices can lie from its centre:
    its longest ray, rounded up, plus the truncation to the lattice (as the kernels bound it)."""
    return (np.ceil(rows.max(axis=1, initial=0).astype(np.float64)) + 2).astype(np.int64)


def certify_2d(dist, cells, rows, width, grid, nms_thresh, keep, exposed):
    return extension().certify_2d(np.ascontiguousarray(dist, np.float32), cells, rows, width, grid[0], grid[1],
                                  float(nms_thresh), keep, exposed)


def render_2d(dists: np.ndarray, points: np.ndarray, labels: np.ndarray, shape, window=None) -> np.ndarray:
    """Polygons filled in order (vertices as the reference computes them, so both agree);
    window: (row0, col0, rows, cols) of the image to return, or None for all of it."""
    coords = np.ascontiguousarray(render_coords_2d(dists, points))
    return extension().render_2d(coords, labels.astype(np.int32), int(shape[0]), int(shape[1]),
                                 window=None if window is None else [int(v) for v in window])


def nms_3d(cand_dist, cand_points, verts, faces, nms_thresh, n_threads=0, aniso=None, suppressors=False):
    """Keep flags of candidates given in visiting order, plus the work counters (and, with
    ``suppressors``, for each dropped candidate the one that dropped it, -1 for kept ones).
    aniso: the sphere tests' axis scale of a larger set these candidates belong to."""
    return extension().nms_3d(cand_dist, cand_points, verts, faces, float(nms_thresh), int(n_threads),
                              aniso=None if aniso is None else [float(a) for a in aniso], suppressors=suppressors)


def boxes_3d(cand_dist, cand_points, verts) -> np.ndarray:
    """(n, 6) int32 rounded boxes (z0, z1, y0, y1, x0, x1) of the polyhedra, as the kernels round them."""
    return extension().boxes_3d(np.ascontiguousarray(cand_dist, np.float32), np.ascontiguousarray(cand_points, np.float32),
                                np.ascontiguousarray(verts, np.float32))


def certify_3d(cand_dist, cand_points, verts, faces, nms_thresh, aniso, keep, suppressor, exposed, reach):
    return extension().certify_3d(cand_dist, cand_points, verts, faces, float(nms_thresh), [float(a) for a in aniso],
                                  keep, suppressor, exposed, reach)


def render_3d(dists, points, verts, faces, labels, shape, n_threads=0, origin=(0, 0, 0)):
    return extension().render_3d(dists, points, verts, faces, labels, list(shape), int(n_threads),
                                 origin=[int(v) for v in origin])
