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

Implementations (``device=``, see ``segrt.kernels._device``): ``"reference"``
(``_reference.py``, NumPy / pyclipper / qhull, pair by pair), ``"cpu"`` (``_cpu.py``, the C++
kernels in ``cpp/starnms/``) and ``"cuda"`` (``_cuda.py``: Numba CUDA kernels on CuPy arrays,
the CPU kernel's decisions pair for pair; pairs near the threshold and StarDist's 3D cascade
are settled by the C++ kernels on the host); ``"auto"`` follows the data.
"""
from __future__ import annotations

import math

import numpy as np

from segrt.kernels import _device
from segrt.kernels.starnms import _validate
from segrt.kernels.starnms._rays import Rays3D, as_rays, sphere_scale_3d

__all__ = ["nms_2d", "render_2d", "rays_3d", "nms_3d", "render_3d", "boxes_3d", "sphere_scale_3d", "Rays3D",
           "IMPLEMENTATIONS"]

# the dispatch table: device -> implementation module (same function names in each)
IMPLEMENTATIONS = {"reference": "segrt.kernels.starnms._reference", "cpu": "segrt.kernels.starnms._cpu",
                   "cuda": "segrt.kernels.starnms._cuda"}


def _host(a) -> np.ndarray:
    """``a`` as a NumPy array (a CuPy array copied back)."""
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _implementation(device, *arrays):
    return _device.implementation("star-convex NMS", IMPLEMENTATIONS, device, *arrays)


def _nms_inputs(prob, dist, ndim, prob_thresh, nms_thresh, grid, border, device, cells=None):
    """Checked inputs shared by nms_2d and nms_3d: implementation, arrays, thresholds, grid, border."""
    dev, impl = _implementation(device, prob, dist)
    scan = dev == "reference"  # the compiled kernels check the values they read themselves
    if cells is None:
        prob_a, dist_a = _validate.check_prob_dist(prob, dist, ndim, scan=scan)
    else:
        prob_a = _validate.as_float_array(prob, "prob", ndim, scan=scan)
        dist_a = _validate.as_float_array(dist, "dist", 2, scan=scan)
        cells = _validate._module_array(cells)
        if cells.dtype.kind not in "iu" or cells.shape != (dist_a.shape[0],) or dist_a.shape[1] < 3:
            raise ValueError(f"with cells, dist must be (k, n_rays >= 3) rows for the k cells listed in cells (k,) "
                             f"integers; got cells {cells.shape} {cells.dtype} and dist {dist_a.shape}")
        cells = cells.astype(np.int64)
        if cells.size and (int(cells[0]) < 0 or int(cells[-1]) >= prob_a.size or bool((cells[1:] <= cells[:-1]).any())):
            raise ValueError(f"cells must be ascending flat indices into prob {prob_a.shape}, without repeats")
        if scan and dist_a.size and float(dist_a.min()) < 0:
            raise ValueError(f"dist must be non-negative, its minimum is {float(dist_a.min())}")
    prob_thresh = _validate.check_threshold(prob_thresh, "prob_thresh")
    nms_thresh = _validate.check_threshold(nms_thresh, "nms_thresh", 0.0, 1.0)
    grid = _validate.check_grid(grid, ndim)
    lo, hi = _validate.border_bounds(border, prob_a.shape)
    return impl, prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi, cells


def nms_2d(prob, dist, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1), border=2, cells=None, origin=None,
           outside=None, return_stats=False, device="auto"):
    """Star-convex polygon NMS, same result as ``stardist.nms.non_maximum_suppression``.

    Args:
        prob: (H, W) float object probabilities (one per grid cell).
        dist: (H, W, n_rays) float ray lengths in image pixels, n_rays >= 3, non-negative; or,
            with ``cells``, (k, n_rays) rows for those cells only.
        prob_thresh: candidates need ``prob > prob_thresh``.
        nms_thresh: in [0, 1]; a candidate whose overlap
            ``area(a n b) / min(area(a), area(b))`` with a kept polygon exceeds it is dropped.
        grid: (gy, gx) cell size in pixels of the prediction grid.
        border: cells closer than this to the edge are no candidates (int, None, or per-axis
            (before, after) pairs).
        cells: None (dist holds every cell), or (k,) ascending flat cell indices whose rays
            ``dist`` holds, every cell with ``prob > prob_thresh`` among them: the same result
            with memory for the candidates only (tiled inference on large images).
        origin: (row, col): prob is the block of a larger image's prob map whose first cell is
            this cell of the larger map. Polygons are built in the larger image's coordinates
            (the same float arithmetic, so the same decisions) and points are returned there.
        outside: with a block, ((top, bottom), (left, right)): how far (pixels) polygons centred
            beyond each side of the block reach (their longest ray), or None on a side where
            nothing lies beyond (the image's edge). Then ``uncertain`` is also returned: the
            points of the block's candidates whose decision may differ from the whole image's.
            The decision of a candidate follows from those of the higher-ranked candidates that
            would suppress it, so it can change only through a chain of such candidates that
            starts within reach of a polygon beyond the block; the kernel follows such chains
            from the block's edges inwards (a kept candidate is certain when nothing beyond can
            reach it and no uncertain higher-ranked candidate suppresses it, a dropped one when
            a certain kept candidate suppresses it). Points not listed are decided exactly as
            the whole image decides them. CPU and reference implementations only.
        return_stats: also return the work counters (candidates, kept, pairs tested, ...).
        device: "auto", "reference", "cpu" or "cuda" (see ``segrt.kernels._device``).

    Returns:
        points: (K, 2) int64 (y, x) pixel coordinates, by descending score.
        scores: (K,) prob values of the kept candidates (prob's dtype).
        dists: (K, n_rays) their ray lengths (dist's dtype).
        uncertain: (U, 2) int64 points (only with ``outside``).
        stats: dict of work counters (only with ``return_stats``).
    """
    impl, prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi, cells = _nms_inputs(
        prob, dist, 2, prob_thresh, nms_thresh, grid, border, device, cells)
    n_rays = dist_a.shape[-1]
    block = {}
    if origin is not None or outside is not None:
        if impl.__name__.endswith("_cuda"):
            raise ValueError("origin= and outside= (NMS over a block of a larger image) run on the CPU kernels: "
                             "pass device='cpu' with host arrays")
        origin = (0, 0) if origin is None else tuple(int(v) for v in origin)
        if len(origin) != 2 or min(origin) < 0:
            raise ValueError(f"origin must be a (row, col) cell of the larger image, got {origin!r}")
        block["origin"] = origin
        if outside is not None:
            block["exposed_of"] = _exposure(outside, origin, prob_a.shape, grid)
    try:
        kept, stats, rows, *uncertain = impl.nms_2d(prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi,
                                                    stored=cells, **block)
    except ValueError as err:
        raise ValueError(f"{err} (prob {prob_a.shape}, dist {dist_a.shape}); clean the network output first") from None
    xp = _device.array_module_of(kept)
    oy, ox = block.get("origin", (0, 0))

    def pixels(flat):
        r, c = flat // prob_a.shape[1] + oy, flat % prob_a.shape[1] + ox
        return xp.stack([r * grid[0], c * grid[1]], axis=1).astype(xp.int64).reshape(-1, 2)

    points = pixels(kept)
    scores = _validate._module_array(prob).reshape(-1)[kept]
    dists = _validate._module_array(dist).reshape(-1, n_rays)[rows]
    out = (points, scores, dists) + tuple(pixels(u) for u in uncertain)
    return (*out, stats) if return_stats else out


def _exposure(outside, origin, shape, grid):
    """The test the block certificates start from: which candidates (centres, reach) a shape
    centred beyond the block's sides could overlap (two shapes meet only when their centres
    are within the sum of their reaches on each axis)."""
    nd = len(shape)
    try:
        sides = [tuple(None if v is None else float(v) for v in pair) for pair in outside]
    except TypeError:
        sides = []
    if len(sides) != nd or any(len(p) != 2 for p in sides) or any(v is not None and v < 0 for p in sides for v in p):
        want = "((top, bottom), (left, right))" if nd == 2 else "one (before, after) pair per axis"
        raise ValueError(f"outside must be {want} reaches in pixels or None, got {outside!r}")
    # the nearest pixel coordinate a centre beyond each side can have
    first = [(origin[a] - 1) * grid[a] for a in range(nd)]
    last = [(origin[a] + shape[a]) * grid[a] for a in range(nd)]

    def exposed(centres, reach):
        hit = np.zeros(len(centres), bool)
        for a in range(nd):
            (before, after), c = sides[a], centres[:, a]
            if before is not None:
                hit |= c - first[a] <= reach + math.ceil(before) + 2
            if after is not None:
                hit |= last[a] - c <= reach + math.ceil(after) + 2
        return hit
    return exposed


def _checked_window(window, shape, impl, runs_on):
    """A rendering window (first pixel per axis, then sizes) inside ``shape``, as ints."""
    nd = len(shape)
    try:
        w = tuple(int(v) for v in window)
    except (TypeError, ValueError):
        w = ()
    if len(w) != 2 * nd or min(w) < 0 or any(w[a] + w[a + nd] > shape[a] for a in range(nd)):
        form = "(row0, col0, rows, cols)" if nd == 2 else "(z0, y0, x0, nz, ny, nx)"
        raise ValueError(f"window must be {form} inside the {'image' if nd == 2 else 'volume'} {shape}, "
                         f"got {window!r}")
    if impl.__name__.rsplit("._", 1)[-1] not in runs_on:
        raise ValueError("window= runs on the CPU kernels: pass device='cpu' with host arrays")
    return w


def render_2d(dists, points, shape, scores=None, *, ids=None, window=None, device="auto"):
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
        ids: (N,) positive labels to draw instead of i + 1 (a subset of a larger set of
            polygons keeps its labels and, in the same relative order, its drawing order).
        window: (row0, col0, rows, cols): return only this window of the (H, W) image, each
            pixel decided exactly as in the whole rendering (for writing a large image in
            chunks: pass the polygons that reach the window). CPU and reference only.

    Returns:
        (H, W) int32 labels, 0 is background (the window's (rows, cols) with ``window``).
    """
    _, impl = _implementation(device, dists, points)
    dists_a, pts, scores_a = _validate.check_polygons(dists, points, 2, scores)
    shape = _validate.check_shape(shape, 2)
    extra = {}
    if window is not None:
        extra["window"] = _checked_window(window, shape, impl, ("reference", "cpu"))
    xp = _device.array_module_of(dists_a)
    if scores_a is None:
        order = xp.arange(len(pts))
    elif xp is np:
        order = np.argsort(scores_a, kind="stable")
    else:  # a stable order on any device: ties by position
        order = xp.lexsort(xp.stack([xp.arange(len(pts), dtype=xp.float64), scores_a.astype(xp.float64)]))
    if ids is None:
        labels = (order + 1).astype(xp.int32)
    else:
        ids_a = xp.asarray(ids)
        if ids_a.shape != (len(pts),) or ids_a.dtype.kind not in "iu" or (len(pts) and int(ids_a.min()) < 1):
            raise ValueError(f"ids must be ({len(pts)},) positive integers, got {ids_a.shape} {ids_a.dtype}")
        labels = ids_a[order].astype(xp.int32)
    return impl.render_2d(dists_a[order], pts[order], labels, shape, **extra)


def rays_3d(n_rays: int = 96, anisotropy=None) -> Rays3D:
    """Golden-spiral ray directions, equal to ``stardist.Rays_GoldenSpiral(n_rays, anisotropy)``.

    Returns an object with ``.vertices`` ((n_rays, 3) float32 (z, y, x) unit vectors) and
    ``.faces`` ((n_faces, 3) int, outward triangles); StarDist's own Rays objects are
    accepted wherever segrt takes rays.
    """
    return Rays3D(n_rays, anisotropy)


def nms_3d(prob, dist, rays, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1, 1), border=2, cells=None, origin=None,
           outside=None, sphere_scale=None, return_stats=False, device="auto"):
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
        dist: (Z, Y, X, n_rays) float ray lengths (voxels), non-negative; a candidate's rays may
            not all be zero (a polyhedron without volume is refused, as ``render_3d`` refuses it);
            or, with ``cells``, (k, n_rays) rows for those cells only.
        rays: ``rays_3d(n_rays)`` or a StarDist Rays object.
        cells, origin: as ``nms_2d`` ((z, y, x) origin): a block of a larger volume's maps.
        outside: with a block, one (before, after) pair per axis: how far (voxels) polyhedra
            centred beyond each side of the block reach, or None where nothing lies beyond;
            then ``uncertain`` is also returned, by the rule of ``nms_2d``.
        sphere_scale: (3,) the sphere tests' axis scale of the larger volume's candidates a
            block belongs to (``stats["anisotropy"]`` of its run, or ``sphere_scale_3d`` of
            the ``boxes_3d`` of its candidates in visiting order): StarDist measures it over
            every candidate, so a block decides as the whole volume only with the whole
            volume's scale. Default: measured on these candidates.
        return_stats: also return the work counters (pairs decided by each test, ...) and the
            axis scale used ("anisotropy").

    Returns:
        points: (K, 3) int64 (z, y, x), by descending score; scores: (K,); dists: (K, n_rays);
        uncertain: (U, 3) int64 points (only with ``outside``); stats (only with ``return_stats``).
    """
    impl, prob_a, dist_a, prob_thresh, nms_thresh, grid, lo, hi, cells = _nms_inputs(
        prob, dist, 3, prob_thresh, nms_thresh, grid, border, device, cells)
    verts, faces = as_rays(rays)
    if dist_a.shape[-1] != len(verts):
        raise ValueError(f"dist has {dist_a.shape[-1]} rays but rays has {len(verts)} directions")
    n_rays = dist_a.shape[-1]
    block = origin is not None or outside is not None or sphere_scale is not None
    if block and not impl.__name__.endswith("_cpu"):
        raise ValueError("origin=, outside= and sphere_scale= (NMS over a block of a larger volume) run on the CPU "
                         "kernels: pass device='cpu' with host arrays")
    origin = (0, 0, 0) if origin is None else tuple(int(v) for v in origin)
    if len(origin) != 3 or min(origin) < 0:
        raise ValueError(f"origin must be a (z, y, x) cell of the larger volume, got {origin!r}")
    if sphere_scale is not None:
        sphere_scale = np.asarray(sphere_scale, np.float32).reshape(-1)
        if sphere_scale.shape != (3,) or not (np.isfinite(sphere_scale).all() and (sphere_scale > 0).all()):
            raise ValueError(f"sphere_scale must be 3 positive numbers, got {sphere_scale!r}")
    try:
        order = impl.candidates(prob_a, prob_thresh, lo, hi)
        xp = _device.array_module_of(order)
        ny_nx = prob_a.shape[1] * prob_a.shape[2]
        points = xp.stack([order // ny_nx + origin[0], (order // prob_a.shape[2]) % prob_a.shape[1] + origin[1],
                           order % prob_a.shape[2] + origin[2]], axis=1).astype(xp.int64).reshape(-1, 3)
        points *= xp.asarray(grid)
        if cells is None:
            rows = order
        else:
            stored = xp.asarray(cells)
            rows = xp.searchsorted(stored, order)
            if order.size and (int(rows.max()) >= stored.size or not bool(xp.array_equal(stored[rows], order))):
                raise ValueError("a candidate cell has no stored distances: store every cell with prob > prob_thresh")
        cand_dist = xp.ascontiguousarray(dist_a.reshape(-1, n_rays)[rows], dtype=xp.float32)
        empty = ~cand_dist.any(axis=1)
        if bool(empty.any()):  # a polyhedron without volume is no object; rendering would refuse it later
            raise ValueError(f"{int(empty.sum())} candidate(s) have every ray zero (no volume), the first at "
                             f"{tuple(int(v) for v in points[int(xp.argmax(empty))])}")
        cand_points = points.astype(np.float32)
        extra = {} if sphere_scale is None else {"aniso": sphere_scale}
        if outside is None:
            keep, stats = impl.nms_3d(cand_dist, cand_points, verts, faces, nms_thresh, **extra)
        else:
            keep, stats, suppressor = impl.nms_3d(cand_dist, cand_points, verts, faces, nms_thresh, suppressors=True,
                                                  **extra)
            reach = reach_3d(cand_dist, verts)
            exposed = _exposure(outside, origin, prob_a.shape, grid)(points, reach)
            certain = impl.certify_3d(cand_dist, cand_points, verts, faces, nms_thresh, stats["anisotropy"], keep,
                                      suppressor, exposed, reach)
    except ValueError as err:
        raise ValueError(f"{err} (prob {prob_a.shape}, dist {dist_a.shape}); clean the network output first") from None
    kept = order[keep]
    out = (points[keep], _validate._module_array(prob).reshape(-1)[kept],
           _validate._module_array(dist).reshape(-1, n_rays)[rows[keep]])
    if outside is not None:
        out += (points[~certain],)
    return (*out, stats) if return_stats else out


def boxes_3d(dists, points, rays) -> np.ndarray:
    """(N, 6) int32 rounded boxes (z0, z1, y0, y1, x0, x1) of polyhedra, as ``nms_3d`` rounds
    them. With ``sphere_scale_3d`` over the boxes of every candidate (in visiting order), the
    ``sphere_scale`` a block of a larger volume needs (CPU)."""
    dists_a, pts, _ = _validate.check_polygons(dists, points, 3, None)
    verts, _ = as_rays(rays)
    if dists_a.shape[1] != len(verts):
        raise ValueError(f"dists has {dists_a.shape[1]} rays but rays has {len(verts)} directions")
    from segrt.kernels.starnms import _cpu

    return _cpu.boxes_3d(_host(dists_a), _host(pts).astype(np.float32), verts)


def reach_3d(dists, verts) -> np.ndarray:
    """How far (voxels, along any axis) each polyhedron's vertices lie from its centre, rounded
    up with a margin for the boxes' rounding: (n,) int64."""
    far = (np.asarray(dists, np.float64) * np.linalg.norm(np.asarray(verts, np.float64), axis=1)).max(axis=1, initial=0)
    return (np.ceil(far) + 2).astype(np.int64)


def render_3d(dists, points, rays, shape, scores=None, *, ids=None, window=None, device="auto"):
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
        ids: (N,) positive labels to draw instead of i + 1; the polyhedra are then drawn in
            the order given (no scores): a subset of a larger rendering, given in that
            rendering's drawing order (``np.argsort(scores)[::-1]`` of the whole set) with its
            labels, renders as it does.
        window: (z0, y0, x0, nz, ny, nx): return only this box of the (Z, Y, X) volume, each
            voxel decided exactly as in the whole rendering. CPU only.

    Returns:
        (Z, Y, X) int32 labels (the window's (nz, ny, nx) with ``window``).
    """
    dev, impl = _implementation(device, dists, points)
    dists_a, pts, scores_a = _validate.check_polygons(dists, points, 3, scores)
    shape = _validate.check_shape(shape, 3)
    verts, faces = as_rays(rays)
    if dists_a.shape[1] != len(verts):
        raise ValueError(f"dists has {dists_a.shape[1]} rays but rays has {len(verts)} directions")
    if len(dists_a) and float(dists_a.min()) <= 0:
        raise ValueError(f"dists must be positive to render polyhedra, minimum is {float(dists_a.min())}")
    xp = _device.array_module_of(dists_a)
    extra = {}
    if window is not None:
        window = _checked_window(window, shape, impl, ("cpu",))
        extra["origin"], shape = window[:3], window[3:]
    if ids is not None:
        if scores_a is not None:
            raise ValueError("pass ids (drawn in the order given) or scores (drawn by descending score), not both")
        ids_a = _host(ids)
        if ids_a.shape != (len(pts),) or ids_a.dtype.kind not in "iu" or (len(pts) and int(ids_a.min()) < 1):
            raise ValueError(f"ids must be ({len(pts)},) positive integers, got {ids_a.shape} {ids_a.dtype}")
        order, labels = np.arange(len(pts)), ids_a.astype(np.int32)
    else:
        # NumPy's own (unstable) order, as StarDist draws: computed on the host for every device
        prob = np.ones(len(pts)) if scores_a is None else (scores_a.get() if xp is not np else scores_a)
        order = np.argsort(prob)[::-1]
        labels = (np.arange(1, len(pts) + 1, dtype=np.int32))[order]
    order = xp.asarray(order)
    d = xp.ascontiguousarray(dists_a[order], dtype=xp.float32)
    p = xp.ascontiguousarray(pts[order], dtype=xp.float32)
    return impl.render_3d(d, p, verts, faces, labels, shape, **extra)
