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


# ---- connected components --------------------------------------------------------------
def _cc3d():
    return optional_import("cc3d", purpose="comparing against cc3d")


def cc3d_label(seg, connectivity=26):
    return _cc3d().connected_components(seg, connectivity=connectivity)


def cc3d_dust(seg, min_size, connectivity=26):
    return _cc3d().dust(seg, threshold=min_size, connectivity=connectivity, in_place=False)


def cc3d_keep_largest_loop(seg, k=1, connectivity=26):
    """The per-class clean-up nnU-Net and TotalSegmentator run, with cc3d as the labeller:
    for each class, label its mask and zero all but its k largest components."""
    cc3d = _cc3d()
    out = seg.copy()
    for cls in np.unique(seg):
        if cls == 0:
            continue
        mask = seg == cls
        lab, n = cc3d.connected_components(mask, connectivity=connectivity, return_N=True)
        if n <= k:
            continue
        sizes = np.bincount(lab.reshape(-1), minlength=n + 1)[1:]
        keep = np.zeros(n + 1, bool)
        keep[1 + np.argsort(-sizes, kind="stable")[:k]] = True
        out[mask & ~keep[lab]] = 0
    return out


def cc3d_largest_k_mask(seg, k=1, connectivity=26):
    return np.where(_cc3d().largest_k(seg, k, connectivity=connectivity) > 0, seg, 0)


def scipy_label(mask, connectivity):
    """scipy.ndimage.label of a binary mask (it has no multi-label mode)."""
    ndimage = optional_import("scipy.ndimage", purpose="comparing against scipy")
    rank = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    return ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, rank))[0]


def skimage_label(seg, connectivity):
    measure = optional_import("skimage.measure", purpose="comparing against scikit-image")
    rank = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    return measure.label(seg, background=0, connectivity=rank)


def opencv_label(mask, connectivity=8):
    """OpenCV's connectedComponents on a binary 2D mask (int32 labels)."""
    cv2 = optional_import("cv2", purpose="comparing against OpenCV")
    return cv2.connectedComponents(mask.view(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S)[1]
