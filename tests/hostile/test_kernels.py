"""Hostile inputs to the kernels and to sliding-window inference: each gives a clear error
that names the problem (or, where the input is valid after all, the right result)."""
from __future__ import annotations

import numpy as np
import pytest

from segrt.engine import sliding_window
from segrt.kernels import label, overlay, starnms, stitch

F32_MAX = np.finfo(np.float32).max
RAYS = starnms.rays_3d(16)


def _one_candidate_2d(value):
    prob = np.zeros((8, 8), np.float32)
    prob[4, 4] = 0.9
    dist = np.full((8, 8, 8), 2.0, np.float32)
    dist[4, 4, 3] = value
    return prob, dist


def _one_candidate_3d(value):
    prob = np.zeros((8, 8, 8), np.float32)
    prob[4, 4, 4] = 0.9
    dist = np.full((8, 8, 8, 16), 2.0, np.float32)
    dist[4, 4, 4, 3] = value
    return prob, dist


CASES = [
    # (name, call, error type, message pattern)
    ("2D ray NaN", lambda: starnms.nms_2d(*_one_candidate_2d(np.nan), border=0), ValueError, "NaN, infinite"),
    ("2D ray float32 max, finite but absurd", lambda: starnms.nms_2d(*_one_candidate_2d(F32_MAX), border=0),
     ValueError, "longer than 3e38"),
    ("2D ray of a million pixels", lambda: starnms.nms_2d(*_one_candidate_2d(1e6), border=0), ValueError,
     "longer than 32767 pixels"),
    ("2D ray negative", lambda: starnms.nms_2d(*_one_candidate_2d(-1.0), border=0), ValueError, "negative"),
    ("3D ray NaN", lambda: starnms.nms_3d(*_one_candidate_3d(np.nan), RAYS, border=0), ValueError, "NaN, infinite"),
    ("3D ray infinite", lambda: starnms.nms_3d(*_one_candidate_3d(np.inf), RAYS, border=0), ValueError,
     "NaN, infinite"),
    ("3D all rays zero", lambda: starnms.nms_3d(_one_candidate_3d(2.0)[0], np.zeros((8, 8, 8, 16), np.float32), RAYS,
                                                border=0), ValueError, "every ray zero"),
    ("render_3d NaN", lambda: starnms.render_3d(np.full((1, 16), np.nan, np.float32), [[4, 4, 4]], RAYS, (8, 8, 8)),
     ValueError, "NaN"),
    ("render_3d zero rays", lambda: starnms.render_3d(np.zeros((1, 16), np.float32), [[4, 4, 4]], RAYS, (8, 8, 8)),
     ValueError, "positive"),
    ("prob NaN", lambda: starnms.nms_2d(np.full((8, 8), np.nan, np.float32), np.ones((8, 8, 8), np.float32)),
     ValueError, "NaN"),
    ("prob and dist shapes differ", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((8, 9, 8))), ValueError,
     "share their spatial shape"),
    ("two rays", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((8, 8, 2))), ValueError, "at least 3 rays"),
    ("nms_thresh above 1", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((8, 8, 8)), nms_thresh=1.5), ValueError,
     "nms_thresh"),
    ("prob_thresh NaN", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((8, 8, 8)), prob_thresh=float("nan")),
     ValueError, "prob_thresh must be a finite"),
    ("grid zero", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((8, 8, 8)), grid=(0, 1)), ValueError, "grid"),
    ("border negative", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((8, 8, 8)), border=-1), ValueError,
     "border"),
    ("3D rays and dist disagree", lambda: starnms.nms_3d(np.zeros((8, 8, 8)), np.ones((8, 8, 8, 12)), RAYS),
     ValueError, "12 rays but rays has 16"),
    ("cells not ascending", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((2, 8)), cells=np.array([5, 3])),
     ValueError, "ascending"),
    ("cells past the image", lambda: starnms.nms_2d(np.zeros((8, 8)), np.ones((1, 8)), cells=np.array([64])),
     ValueError, "ascending flat indices"),
    ("render shape zero", lambda: starnms.render_2d(np.ones((1, 8)), [[2, 2]], (0, 5)), ValueError, "shape"),
    ("label 4D", lambda: label.connected_components(np.zeros((2, 2, 2, 2), np.uint8)), ValueError, "2D or 3D"),
    ("label float", lambda: label.connected_components(np.zeros((4, 4), np.float32)), ValueError, "integer labels"),
    ("remove_small 2**70", lambda: label.remove_small(np.zeros((4, 4), np.uint8), 2**70), ValueError,
     "below 2\\*\\*63"),
    ("remove_small float size", lambda: label.remove_small(np.zeros((4, 4), np.uint8), 2.5), ValueError,
     "non-negative integer"),
    ("keep_largest k bool", lambda: label.keep_largest(np.zeros((4, 4), np.uint8), True), ValueError,
     "non-negative integer"),
    ("keep_largest class out of dtype", lambda: label.keep_largest(np.zeros((4, 4), np.uint8), 1, classes=[-1]),
     ValueError, "cannot occur"),
    ("component_stats negative", lambda: label.component_stats(-np.ones((3, 3), np.int16)), ValueError,
     "non-negative"),
    ("connectivity 5", lambda: label.connected_components(np.zeros((4, 4), np.uint8), 5), ValueError,
     "connectivity"),
    ("overlay float frame", lambda: overlay.blend_labels(np.zeros((4, 4, 3), np.float32), np.zeros((2, 2), np.uint8),
                                                         np.zeros((2, 3), np.uint8), 0.5), ValueError, "uint8 image"),
    ("overlay alpha 2", lambda: overlay.blend_labels(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2), np.uint8),
                                                     np.zeros((2, 3), np.uint8), 2), ValueError, "alpha"),
    ("overlay negative labels", lambda: overlay.blend_labels(np.zeros((4, 4, 3), np.uint8),
                                                             -np.ones((2, 2), np.int8), np.zeros((2, 3), np.uint8),
                                                             0.5), ValueError, ">= 0"),
    ("importance map unknown mode", lambda: stitch.importance_map((4, 4), "cosine"), ValueError, "mode"),
    ("sliding window N = 0", lambda: sliding_window(np.zeros((0, 1, 16, 16), np.float32), (8, 8), lambda x: x),
     ValueError, "at least one image"),
    ("sliding window C = 0", lambda: sliding_window(np.zeros((1, 0, 16, 16), np.float32), (8, 8), lambda x: x),
     ValueError, "at least one image of at least one channel"),
    ("sliding window NaN input", lambda: sliding_window(np.full((1, 1, 8, 8), np.nan, np.float32), (4, 4),
                                                        lambda x: x), ValueError, "NaN"),
    ("predictor returns NaN", lambda: sliding_window(np.zeros((1, 1, 16, 16), np.float32), (8, 8),
                                                     lambda x: x * np.nan), ValueError,
     "NaN or infinite score"),
    ("predictor returns no channels", lambda: sliding_window(np.zeros((1, 1, 16, 16), np.float32), (8, 8),
                                                             lambda x: x[:, :0]), ValueError, "no channels"),
    ("predictor returns integers", lambda: sliding_window(np.zeros((1, 1, 16, 16), np.float32), (8, 8),
                                                          lambda x: x.astype(np.int32)), ValueError,
     "floating-point"),
    ("predictor returns the wrong size", lambda: sliding_window(np.zeros((1, 1, 16, 16), np.float32), (8, 8),
                                                                lambda x: x[..., :4]), ValueError, "spatial size"),
    ("overlap 1", lambda: sliding_window(np.zeros((1, 1, 16, 16), np.float32), (8, 8), lambda x: x, overlap=1.0),
     ValueError, "overlap"),
    ("roi zero", lambda: sliding_window(np.zeros((1, 1, 16, 16), np.float32), (0, 8), lambda x: x), ValueError,
     "roi"),
    ("device unknown", lambda: label.connected_components(np.zeros((4, 4), np.uint8), device="tpu"), ValueError,
     "device must be one of"),
]


@pytest.mark.parametrize("call, error, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_kernel_input_is_refused_with_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_rays_just_below_the_limit_still_work():
    # large but sane rays (a polygon bigger than the image) are valid input, clipped when drawn
    prob, dist = _one_candidate_2d(30000.0)
    points, _, _ = starnms.nms_2d(prob, dist, border=0)
    assert points.tolist() == [[4, 4]]
