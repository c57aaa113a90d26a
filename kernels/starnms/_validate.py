"""Input checks shared by every star-convex NMS implementation.

Each check raises a ValueError that names what was expected, what arrived and what to do.
"""
from __future__ import annotations

import numbers

import numpy as np

def _module_array(x):
    """``x`` as an array of its own module: CuPy for GPU arrays (no copy), NumPy otherwise."""
    from segrt.kernels._device import array_module_of

    xp = array_module_of(x)
    return xp.asarray(x) if xp is not np else np.asarray(x)


def as_float_array(x, name: str, ndim: int, *, scan: bool = True):
    """A C-contiguous floating array of rank ``ndim`` (float16 and integers are widened), on
    the device it came from.

    scan: look at every value for NaN / infinity (the fast kernels check the values they
    use themselves, without a separate pass over large arrays).
    """
    arr = _module_array(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype.kind == "b" or arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float32)
    from segrt.kernels._device import array_module_of

    xp = array_module_of(arr)
    arr = xp.ascontiguousarray(arr)
    if scan and arr.size and not bool(xp.isfinite(arr).all()):
        bad = int(arr.size - int(xp.count_nonzero(xp.isfinite(arr))))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); clean the network output first")
    return arr


def check_threshold(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    v = float(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {v}")
    return v


def check_grid(grid, ndim: int) -> tuple[int, ...]:
    if isinstance(grid, numbers.Integral):
        grid = (int(grid),) * ndim
    try:
        g = tuple(int(v) for v in grid)
    except TypeError:
        raise ValueError(f"grid must be {ndim} positive integers, got {grid!r}") from None
    if len(g) != ndim or any(v < 1 for v in g) or any(int(v) != v for v in grid):
        raise ValueError(f"grid must be {ndim} positive integers, got {grid!r}")
    return g


def border_bounds(border, shape: tuple[int, ...]) -> tuple[list[int], list[int]]:
    """Half-open index bounds of the cells a candidate may occupy (StarDist's ``b``)."""
    ndim = len(shape)
    if border is None:
        pairs = ((0, 0),) * ndim
    elif isinstance(border, numbers.Integral) and not isinstance(border, bool):
        if border < 0:
            raise ValueError(f"border must be >= 0, got {border}")
        pairs = ((int(border), int(border)),) * ndim
    else:
        try:
            pairs = tuple((int(a), int(b)) for a, b in border)
        except (TypeError, ValueError):
            raise ValueError(
                f"border must be an int, None or {ndim} (before, after) pairs, got {border!r}"
            ) from None
        if len(pairs) != ndim or any(a < 0 or b < 0 for a, b in pairs):
            raise ValueError(f"border must be {ndim} non-negative (before, after) pairs, got {border!r}")
    lo = [a for a, _ in pairs]
    hi = [s - b for s, (_, b) in zip(shape, pairs)]
    return lo, hi


def check_prob_dist(prob, dist, ndim: int, scan: bool = True):
    """prob (*spatial), dist (*spatial, n_rays): shapes agree; with scan, finite and non-negative."""
    prob = as_float_array(prob, "prob", ndim, scan=scan)
    dist = as_float_array(dist, "dist", ndim + 1, scan=scan)
    if prob.shape != dist.shape[:ndim]:
        raise ValueError(
            f"prob and dist must share their spatial shape: prob {prob.shape}, dist {dist.shape} "
            f"(expected dist of shape {prob.shape + ('n_rays',)})"
        )
    n_rays = dist.shape[-1]
    if n_rays < 3:
        raise ValueError(f"need at least 3 rays, dist has {n_rays} (shape {dist.shape})")
    if scan and dist.size and float(dist.min()) < 0:
        raise ValueError(f"dist must be non-negative, its minimum is {float(dist.min())}")
    return prob, dist


def check_polygons(dists, points, ndim: int, scores=None):
    dists = as_float_array(dists, "dists", 2)
    pts = _module_array(points)
    if pts.ndim != 2 or pts.shape[1] != ndim or pts.shape[0] != dists.shape[0]:
        raise ValueError(
            f"points must be ({dists.shape[0]}, {ndim}) to match dists {dists.shape}, got shape {pts.shape}"
        )
    if pts.dtype.kind not in "iuf" or (pts.size and not bool((pts == pts).all() & (abs(pts) < float("inf")).all())):
        raise ValueError(f"points must be finite numbers, got dtype {pts.dtype}")
    if dists.shape[1] < 3:
        raise ValueError(f"need at least 3 rays, dists has shape {dists.shape}")
    if dists.size and float(dists.min()) < 0:
        raise ValueError(f"dists must be non-negative, its minimum is {float(dists.min())}")
    if scores is not None:
        scores = _module_array(scores)
        if scores.shape != (dists.shape[0],):
            raise ValueError(f"scores must be ({dists.shape[0]},), got shape {scores.shape}")
        s64 = scores.astype(np.float64)
        if scores.size and not bool(((s64 == s64) & (abs(s64) < float("inf"))).all()):
            raise ValueError("scores contain NaN or infinite values")
    return dists, pts, scores


def check_shape(shape, ndim: int) -> tuple[int, ...]:
    try:
        s = tuple(int(v) for v in shape)
    except TypeError:
        raise ValueError(f"shape must be {ndim} positive integers, got {shape!r}") from None
    if len(s) != ndim or any(v < 1 for v in s):
        raise ValueError(f"shape must be {ndim} positive integers, got {shape!r}")
    return s
