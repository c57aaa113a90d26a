"""Star-convex non-maximum suppression (StarDist, CPP-Net, SplineDist) and rendering.

Pinned semantics (identical to StarDist 0.9.x, ``stardist.nms`` / ``stardist.geometry``):

- Candidates are cells with ``prob > prob_thresh`` (compared in prob's dtype) outside a
  border of ``border`` cells; a candidate's point is its cell index times ``grid``.
- Candidates are visited by descending score, ties by ascending flat cell index. (StarDist
  orders ties by NumPy's unstable ``argsort``, which differs between CPUs; segrt's order is
  the same everywhere.)
- 2D: candidate polygons have vertices ``p + d_k (sin t_k, cos t_k)``, ``t_k = 2 pi k / n``,
  computed in float32 and truncated to integer coordinates. The overlap of two polygons is
  ``area(a n b) / min(area(a), area(b))`` with the intersection's edge crossings rounded to
  integers as Clipper rounds them; a candidate is suppressed when its overlap with an
  already kept polygon exceeds ``nms_thresh``.
- 3D: polyhedra ``p + d_k v_k`` over the rays' triangle faces (``rays_3d``); a candidate
  is dropped by StarDist's cascade of tests (bounding spheres and boxes, kernels, convex
  hulls, then a voxel count), reproduced with the same float formulas; see ``nms_3d``.

Each op has a plain reference (``device="reference"``, pure NumPy / pyclipper) and a fast
C++ implementation (``device="cpu"``); ``device="auto"`` follows the data. The GPU version
(``device="cuda"``) is planned and raises a clear error until it lands.
"""
from __future__ import annotations

import numpy as np

from segrt.kernels import _ext
from segrt.kernels.starnms import _validate

from segrt.kernels.starnms._rays import Rays3D, as_rays

__all__ = ["nms_2d", "render_2d", "rays_3d", "nms_3d", "render_3d", "last_stats", "Rays3D"]

_last_stats: dict = {}


def last_stats() -> dict:
    """Work counters of the last fast NMS call in this process (candidates, kept, pairs...)."""
    return dict(_last_stats)


def _resolve_device(device: str, *arrays) -> str:
    device = _validate.check_device(device)
    on_gpu = any(hasattr(a, "__cuda_array_interface__") for a in arrays)
    if device == "auto":
        device = "cuda" if on_gpu else "cpu"
    if device == "cuda":
        raise NotImplementedError(
            "the GPU star-convex NMS is not implemented yet; pass NumPy arrays with device='cpu' "
            "(copy device arrays with cupy.asnumpy)"
        )
    if device == "cpu" and not _ext.available():
        _ext.extension()  # raises ImportError with the load failure and how to fix it
    return device


def _nms_inputs(prob, dist, ndim, prob_thresh, nms_thresh, grid, border, device):
    """Checked inputs shared by nms_2d and nms_3d: device, arrays, thresholds, grid, border."""
    dev = _resolve_device(device, prob, dist)
    # the C++ kernels check the values they read (prob everywhere, dist of candidates)
    prob_a, dist_a = _validate.check_prob_dist(prob, dist, ndim, scan=dev == "reference")
    prob_thresh = _validate.check_threshold(prob_thresh, "prob_thresh")
    nms_thresh = _validate.check_threshold(nms_thresh, "nms_thresh", 0.0, 1.0)
    grid = _validate.check_grid(grid, ndim)
    lo, hi = _validate.border_bounds(border, prob_a.shape)
    return dev, prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi


def nms_2d(prob, dist, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1), border=2, device="auto"):
    """Star-convex polygon NMS, same result as ``stardist.nms.non_maximum_suppression``.

    Args:
        prob: (H, W) float object probabilities (one per grid cell).
        dist: (H, W, n_rays) float ray lengths in image pixels, n_rays >= 3, non-negative.
        prob_thresh: candidates need ``prob > prob_thresh``.
        nms_thresh: in [0, 1]; a candidate whose overlap
            ``area(a n b) / min(area(a), area(b))`` with a kept polygon exceeds it is dropped.
        grid: (gy, gx) cell size in pixels of the prediction grid.
        border: cells closer than this to the edge are no candidates (int, None, or per-axis
            (before, after) pairs).
        device: "auto", "cpu" (C++), "reference" (pure Python) or "cuda" (not yet available).

    Returns:
        points: (K, 2) int64 (y, x) pixel coordinates, by descending score.
        scores: (K,) prob values of the kept candidates (prob's dtype).
        dists: (K, n_rays) their ray lengths (dist's dtype).
    """
    dev, prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi = _nms_inputs(
        prob, dist, 2, prob_thresh, nms_thresh, grid, border, device)
    n_rays = dist_a.shape[-1]
    if dev == "reference":
        from segrt.kernels.starnms import _reference

        kept = _reference.nms_2d(prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi)
    else:
        from segrt.kernels.starnms import _cpu

        try:
            kept, stats, _ = _cpu.nms_2d(prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi)
        except ValueError as err:
            raise ValueError(f"{err} (prob {prob_a.shape}, dist {dist_a.shape}); clean the network output first") from None
        _last_stats.clear()
        _last_stats.update(stats)
    rows, cols = np.unravel_index(kept, prob_a.shape)
    points = np.stack([rows * grid[0], cols * grid[1]], axis=1).astype(np.int64).reshape(-1, 2)
    scores = np.asarray(prob).reshape(-1)[kept]
    dists = np.asarray(dist).reshape(-1, n_rays)[kept]
    return points, scores, dists


def _nms_2d_stored(prob, cells, dists, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1), border=2):
    """nms_2d for a prob map whose ray lengths are stored for some cells only: ``cells``
    ascending flat indices (every cell with prob > prob_thresh among them), ``dists`` their
    (k, n_rays) rows. Same result as nms_2d on the dense array, with memory for the
    candidates only (the tiled instance pipeline on large images)."""
    prob_a = _validate.as_float_array(prob, "prob", 2, scan=False)
    dists_a = _validate.as_float_array(dists, "dists", 2, scan=False)
    cells = np.asarray(cells, np.int64)
    if cells.shape != (dists_a.shape[0],) or dists_a.shape[1] < 3:
        raise ValueError(f"cells {cells.shape} and dists {dists_a.shape} must be (k,) and (k, n_rays >= 3)")
    prob_thresh = _validate.check_threshold(prob_thresh, "prob_thresh")
    nms_thresh = _validate.check_threshold(nms_thresh, "nms_thresh", 0.0, 1.0)
    grid = _validate.check_grid(grid, 2)
    lo, hi = _validate.border_bounds(border, prob_a.shape)
    from segrt.kernels.starnms import _cpu

    kept, stats, rows = _cpu.nms_2d(prob_a, dists_a, prob_thresh, nms_thresh, grid, lo, hi, stored=cells)
    _last_stats.clear()
    _last_stats.update(stats)
    r, c = np.unravel_index(kept, prob_a.shape)
    points = np.stack([r * grid[0], c * grid[1]], axis=1).astype(np.int64).reshape(-1, 2)
    return points, prob_a.reshape(-1)[kept], dists_a[rows]


def render_2d(dists, points, shape, scores=None, *, device="auto"):
    """Label image of polygons, same as ``stardist.geometry.polygons_to_label``.

    Polygon i gets label i + 1. Polygons are drawn in ascending score order (stable; all
    equal when ``scores`` is None), so higher scores win where polygons overlap. A pixel
    belongs to a polygon when the crossing test of ``skimage.draw.polygon`` at its centre says
    so (vertices ``p + d_k (sin t_k, cos t_k)`` in float32).

    Args:
        dists: (N, n_rays) ray lengths.
        points: (N, 2) (y, x) centres.
        shape: (H, W) of the output.
        scores: (N,) or None.

    Returns:
        (H, W) int32 labels, 0 is background.
    """
    dev = _resolve_device(device, dists, points)
    dists_a, pts, scores_a = _validate.check_polygons(dists, points, 2, scores)
    shape = _validate.check_shape(shape, 2)
    from segrt.kernels.starnms import _reference

    order = (
        np.arange(len(pts)) if scores_a is None else np.argsort(scores_a, kind="stable")
    )
    coords = _reference.render_coords_2d(dists_a[order], pts[order])
    labels = (order + 1).astype(np.int32)
    if dev == "reference":
        return _reference.render_2d(coords, labels, shape)
    from segrt.kernels.starnms import _cpu

    return _cpu.render_2d(np.ascontiguousarray(coords), labels, shape)


def rays_3d(n_rays: int = 96, anisotropy=None) -> Rays3D:
    """Golden-spiral ray directions, equal to ``stardist.Rays_GoldenSpiral(n_rays, anisotropy)``.

    Returns an object with ``.vertices`` ((n_rays, 3) float32 (z, y, x) unit vectors) and
    ``.faces`` ((n_faces, 3) int, outward triangles); StarDist's own Rays objects are
    accepted wherever segrt takes rays.
    """
    return Rays3D(n_rays, anisotropy)


def nms_3d(prob, dist, rays, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1, 1), border=2, device="auto"):
    """Star-convex polyhedron NMS, same result as ``stardist.nms.non_maximum_suppression_3d``.

    Candidates and visiting order as in ``nms_2d``. Candidate j is tested against each
    kept polyhedron i by StarDist's cascade, the first decisive test winning: (1) keep if
    min(outer-sphere lens, box overlap) / min volume <= nms_thresh; (2) drop if the
    inner-sphere lens / min volume > nms_thresh; (3) drop if vol(kernel_i n kernel_j) /
    min volume > nms_thresh; (4) keep if vol(hull_i n hull_j) / min volume <= nms_thresh;
    (5) drop if the voxels of i's box inside both / min volume > nms_thresh. Spheres are
    measured after scaling by the candidates' mean box anisotropy, volumes are the exact
    polyhedron volumes (float), and (3) / (4) count as undecided where qhull would refuse
    the intersection (the midpoint of the centres not strictly inside).

    Args:
        prob: (Z, Y, X) float probabilities.
        dist: (Z, Y, X, n_rays) float ray lengths (voxels), non-negative.
        rays: ``rays_3d(n_rays)`` or a StarDist Rays object.

    Returns:
        points: (K, 3) int64 (z, y, x), by descending score; scores: (K,); dists: (K, n_rays).
    """
    dev, prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi = _nms_inputs(
        prob, dist, 3, prob_thresh, nms_thresh, grid, border, device)
    verts, faces = as_rays(rays)
    if dist_a.shape[-1] != len(verts):
        raise ValueError(f"dist has {dist_a.shape[-1]} rays but rays has {len(verts)} directions")
    n_rays = dist_a.shape[-1]
    if dev == "reference":
        from segrt.kernels.starnms import _reference

        order = _reference.candidates(prob_a, prob_thresh, lo, hi)
    else:
        from segrt.kernels.starnms import _cpu

        try:
            order = _cpu.candidates(prob_a, prob_thresh, lo, hi)
        except ValueError as err:
            raise ValueError(f"{err} (prob {prob_a.shape}); clean the network output first") from None
    points = np.stack(np.unravel_index(order, prob_a.shape), axis=1).astype(np.int64).reshape(-1, 3) * np.asarray(grid)
    cand_dist = np.ascontiguousarray(dist_a.reshape(-1, n_rays)[order], dtype=np.float32)
    if dev == "reference":
        from segrt.kernels.starnms import _reference

        keep = _reference.nms_3d(cand_dist, points.astype(np.float32), verts, faces, nms_thresh)
    else:
        from segrt.kernels.starnms import _cpu

        try:
            keep, stats = _cpu.nms_3d(cand_dist, points.astype(np.float32), verts, faces, nms_thresh)
        except ValueError as err:
            raise ValueError(f"{err} (prob {prob_a.shape}, dist {dist_a.shape}); clean the network output first") from None
        _last_stats.clear()
        _last_stats.update(stats)
    kept = order[keep]
    return points[keep], np.asarray(prob).reshape(-1)[kept], np.asarray(dist).reshape(-1, n_rays)[kept]


def render_3d(dists, points, rays, shape, scores=None, *, device="auto"):
    """Label volume of polyhedra, same as ``stardist.geometry.polyhedron_to_label``.

    Polyhedron i gets label i + 1; polyhedra are drawn by descending score (in the order
    NumPy's ``argsort(scores)[::-1]`` gives, as StarDist does) and the first one drawn keeps
    a voxel. A voxel belongs to a polyhedron when it lies in its kernel or in one of the
    tetrahedra between its centre and its faces (StarDist's float test).

    Args:
        dists: (N, n_rays) ray lengths, positive.
        points: (N, 3) (z, y, x) centres.
        rays: ``rays_3d(...)`` or a StarDist Rays object.
        shape: (Z, Y, X) of the output.
        scores: (N,) or None.

    Returns:
        (Z, Y, X) int32 labels.
    """
    dev = _resolve_device(device, dists, points)
    dists_a, pts, scores_a = _validate.check_polygons(dists, points, 3, scores)
    shape = _validate.check_shape(shape, 3)
    verts, faces = as_rays(rays)
    if dists_a.shape[1] != len(verts):
        raise ValueError(f"dists has {dists_a.shape[1]} rays but rays has {len(verts)} directions")
    if len(dists_a) and float(dists_a.min()) <= 0:
        raise ValueError(f"dists must be positive to render polyhedra, minimum is {float(dists_a.min())}")
    prob = np.ones(len(pts)) if scores_a is None else scores_a
    order = np.argsort(prob)[::-1]
    labels = (np.arange(1, len(pts) + 1, dtype=np.int32))[order]
    d = np.ascontiguousarray(dists_a[order], dtype=np.float32)
    p = np.ascontiguousarray(pts[order], dtype=np.float32)
    if dev == "reference":
        from segrt.kernels.starnms import _reference

        return _reference.render_3d(d, p, verts, faces, labels, shape)
    from segrt.kernels.starnms import _cpu

    return _cpu.render_3d(d, p, verts, faces, labels, shape)
