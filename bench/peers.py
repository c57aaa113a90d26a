"""The peers segrt is measured against, called the way their users call them.

StarDist orders tied scores with NumPy's unstable ``argsort``, whose order differs between
CPUs; segrt orders ties by flat index. ``stardist_nms_2d(..., order="segrt")`` feeds
StarDist's own suppression routine the candidates in segrt's order, so the two can be
compared exactly; ``order="stardist"`` is StarDist's public function, as users call it.
"""
from __future__ import annotations

import numpy as np

from segrt._optional import optional_import


def _stardist(module: str = "stardist.nms"):
    return optional_import(module, extra="peers", purpose="comparing against StarDist")


def _candidates(prob, prob_thresh, border):
    nms = _stardist()
    mask = nms._ind_prob_thresh(prob, prob_thresh, border)
    flat = np.flatnonzero(mask)
    return flat[np.argsort(-prob.reshape(-1)[flat], kind="stable")]


def stardist_nms_2d(prob, dist, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1), border=2, order="stardist"):
    """(points, scores, dists) from StarDist's 2D NMS."""
    nms = _stardist()
    if order == "stardist":
        return nms.non_maximum_suppression(
            dist, prob, grid=grid, b=border, nms_thresh=nms_thresh, prob_thresh=prob_thresh
        )
    cand = _candidates(prob, prob_thresh, border)
    points = np.stack(np.unravel_index(cand, prob.shape), axis=1) * np.asarray(grid).reshape(1, 2)
    scores = prob.reshape(-1)[cand]
    dists = dist.reshape(-1, dist.shape[-1])[cand]
    keep = nms.non_maximum_suppression_inds(
        dists, points.astype(np.int32), scores=scores, thresh=nms_thresh, verbose=False
    )
    return points[keep], scores[keep], dists[keep]


def stardist_nms_3d(prob, dist, rays, *, prob_thresh=0.5, nms_thresh=0.4, grid=(1, 1, 1), border=2, order="stardist"):
    """(points, scores, dists) from StarDist's 3D NMS."""
    nms = _stardist()
    if order == "stardist":
        return nms.non_maximum_suppression_3d(
            dist, prob, rays, grid=grid, b=border, nms_thresh=nms_thresh, prob_thresh=prob_thresh
        )
    cand = _candidates(prob, prob_thresh, border)
    points = np.stack(np.unravel_index(cand, prob.shape), axis=1) * np.asarray(grid).reshape(1, 3)
    scores = prob.reshape(-1)[cand]
    dists = dist.reshape(-1, dist.shape[-1])[cand]
    # StarDist re-sorts by score inside; strictly decreasing stand-in scores keep our order
    surrogate = np.arange(len(cand), 0, -1, dtype=np.float64)
    keep = nms.non_maximum_suppression_3d_inds(
        dists, points, rays=rays, scores=surrogate, thresh=nms_thresh, verbose=False
    )
    return points[keep], scores[keep], dists[keep]


def stardist_render_2d(dists, points, shape, scores=None):
    geom = _stardist("stardist.geometry")
    return geom.polygons_to_label(dists, points, shape, prob=scores)


def stardist_render_3d(dists, points, rays, shape, scores=None):
    geom = _stardist("stardist.geometry")
    return geom.polyhedron_to_label(dists, points, rays, shape, prob=scores, verbose=False)
