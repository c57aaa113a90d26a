"""The GPU star-convex NMS (``device="cuda"``; Numba's simulator where there is no GPU): the CPU
kernel's kept sets, order and errors exactly, on small cases (the simulator is slow)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import add_noise, dsb_targets_2d

from segrt.kernels.starnms import nms_2d, render_2d

pytestmark = pytest.mark.cuda


def _same(prob, dist, **kw):
    """nms_2d on the GPU equals the CPU kernel: points, scores, rays and the pair counts."""
    gpu = nms_2d(prob, dist, device="cuda", return_stats=True, **kw)
    cpu = nms_2d(prob, dist, device="cpu", **kw)
    for a, b in zip(gpu[:3], cpu):
        np.testing.assert_array_equal(np.asarray(a), b)
    stats = gpu[3]
    assert stats["pairs_device"] + stats["pairs_host"] == stats["pairs_considered"]
    return gpu


def _crop(prob, dist, y, x, size):
    return (np.ascontiguousarray(prob[y:y + size, x:x + size]),
            np.ascontiguousarray(dist[y:y + size, x:x + size]))


@pytest.mark.parametrize("noise", [None, "mult", "abs"])
@pytest.mark.parametrize("nms_thresh", [0.3, 0.5])
def test_dsb_crop_with_neighbouring_nuclei(noise, nms_thresh):
    _, prob, dist = dsb_targets_2d(8)
    if noise:
        prob, dist = add_noise(prob, dist, seed=5, kind=noise)
    # a corner where several small nuclei touch, every second cell (grid 2)
    p, d = _crop(prob, dist, 184, 64, 40)
    p, d = np.ascontiguousarray(p[::2, ::2]), np.ascontiguousarray(d[::2, ::2])
    out = _same(p, d, prob_thresh=0.5, nms_thresh=nms_thresh, grid=(2, 2))
    assert len(out[0]) >= 2 and out[3]["pairs_considered"] > 20


def test_every_pair_settled_on_the_host_gives_the_same_result():
    from segrt.kernels.starnms import _cuda

    _, prob, dist = dsb_targets_2d(8)
    p, d = _crop(*add_noise(prob, dist, seed=2, kind="abs"), 190, 70, 24)
    lo, hi = [2, 2], [22, 22]
    # (the device's own pair decisions against the CPU kernel: the reference tests above)
    on_host = _cuda.nms_2d(p, d, 0.5, 0.4, (1, 1), lo, hi, device_decides=False)
    assert on_host[1]["pairs_host"] == on_host[1]["pairs_considered"] > 0
    cpu = nms_2d(p, d, prob_thresh=0.5, nms_thresh=0.4, device="cpu")[0]
    np.testing.assert_array_equal(on_host[0], cpu[:, 0] * 24 + cpu[:, 1])


def test_near_threshold_pairs():
    """Two candidates whose overlap sits within a hair of the threshold, swept across it."""
    prob = np.zeros((24, 24), np.float32)
    prob[10, 6], prob[11, 15] = 0.9, 0.8
    dist = np.full((24, 24, 8), 9.0, np.float32)
    where = {"pairs_device": 0, "pairs_host": 0}
    for thresh in np.linspace(0.02, 0.7, 12):
        stats = _same(prob, dist, nms_thresh=float(thresh), border=0)[3]
        for k in where:
            where[k] += stats[k]
    assert where["pairs_device"] > 0 and where["pairs_host"] > 0  # both paths decided some


def test_ties_border_zero_and_long_rays():
    prob = np.zeros((12, 12), np.float32)
    prob[4:8, 4:8] = 0.8  # identical scores: the first by flat index wins
    dist = np.full((12, 12, 6), 20.0, np.float32)
    assert _same(prob, dist, nms_thresh=0.5)[0].tolist() == [[4, 4]]
    prob2 = np.zeros((10, 10), np.float32)
    prob2[0, 0] = prob2[9, 9] = prob2[5, 5] = 0.9
    d2 = np.full((10, 10, 8), 1.0, np.float32)
    for border in (0, 2, None, ((0, 1), (0, 1))):
        _same(prob2, d2, border=border)
    d2[:] = 0.0  # zero-area polygons: all kept
    assert len(_same(prob2, d2, border=0)[0]) == 3
    d2[:] = 2500.0  # past the raw-path limit: the cleaned path's box, every polygon covers the others
    assert _same(prob2, d2, border=0)[0].tolist() == [[0, 0]]


def test_stored_rays_and_float64():
    rng = np.random.default_rng(7)
    prob = rng.random((10, 10)).astype(np.float32)
    dist = (rng.uniform(1, 4, 8) * rng.uniform(0.7, 1.3, (10, 10, 8))).astype(np.float32)
    cells = np.flatnonzero(prob > 0.55)
    got = nms_2d(prob, dist.reshape(-1, 8)[cells], cells=cells, prob_thresh=0.6, device="cuda")
    ref = nms_2d(prob, dist, prob_thresh=0.6, device="cpu")
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    _same(prob.astype(np.float64), dist.astype(np.float64), prob_thresh=0.6)
    with pytest.raises(ValueError, match="no stored distances"):
        missing = np.flatnonzero(prob > 0.8)
        nms_2d(prob, dist.reshape(-1, 8)[missing], cells=missing, prob_thresh=0.6, device="cuda")


@pytest.mark.parametrize("case, match", [
    ("nan prob", "NaN"), ("nan ray", "NaN, infinite or negative"), ("negative ray", "NaN, infinite or negative"),
    ("huge ray", "32767"), ("shapes", "share their spatial shape"), ("rank", "2 dimensions"),
])
def test_bad_input_gets_the_cpu_kernels_errors(case, match):
    prob = np.full((8, 8), 0.9, np.float32)
    dist = np.ones((8, 8, 6), np.float32)
    if case == "nan prob":
        prob[4, 4] = np.nan
    elif case == "nan ray":
        dist[4, 4, 1] = np.nan
    elif case == "negative ray":
        dist[4, 4, 1] = -1
    elif case == "huge ray":
        dist[4, 4, 1] = 40000.0
    elif case == "shapes":
        dist = np.ones((8, 9, 6), np.float32)
    elif case == "rank":
        prob = prob[0]
    for device in ("cpu", "cuda"):
        with pytest.raises(ValueError, match=match):
            nms_2d(prob, dist, device=device)


def test_render_with_ties_clipping_and_no_polygons():
    rng = np.random.default_rng(9)
    pts = rng.integers(-4, 24, (9, 2))
    dists = rng.uniform(0, 7, (9, 8)).astype(np.float32)
    scores = rng.choice([0.5, 0.7], 9).astype(np.float32)  # ties keep their given order
    for sc in (scores, None):
        np.testing.assert_array_equal(np.asarray(render_2d(dists, pts, (20, 22), scores=sc, device="cuda")),
                                      render_2d(dists, pts, (20, 22), scores=sc, device="cpu"))
    empty = render_2d(np.zeros((0, 8), np.float32), np.zeros((0, 2), int), (5, 5), device="cuda")
    assert np.asarray(empty).shape == (5, 5) and not np.asarray(empty).any()


@pytest.mark.parametrize("grid", [(1, 1, 1), (1, 2, 2)])
def test_3d_isolated_candidates_are_kept_on_the_device_and_the_rest_match_the_cpu(grid):
    from segrt.kernels.starnms import nms_3d, rays_3d

    rng = np.random.default_rng(4)
    rays = rays_3d(12)
    prob = np.zeros((10, 16, 16), np.float32)
    dist = np.zeros(prob.shape + (12,), np.float32)
    # a cluster of overlapping candidates, flat along z (the axis scale matters)...
    prob[4:6, 3:7, 3:7] = rng.uniform(0.6, 1.0, (2, 4, 4))
    dist[4:6, 3:7, 3:7] = rng.uniform(1.5, 3.0, (2, 4, 4, 12)) * np.array([0.5 if abs(v[0]) > 0.7 else 1.0
                                                                          for v in rays.vertices], np.float32)
    # ...and small candidates far from everything
    for z, y, x in ((3, 12, 12), (7, 12, 4), (6, 3, 12)):
        prob[z, y, x] = 0.9
        dist[z, y, x] = 1.0
    for thresh in (0.1, 0.4):
        gpu = nms_3d(prob, dist, rays, grid=grid, nms_thresh=thresh, border=1, return_stats=True, device="cuda")
        cpu = nms_3d(prob, dist, rays, grid=grid, nms_thresh=thresh, border=1, device="cpu")
        for a, b in zip(gpu[:3], cpu):
            np.testing.assert_array_equal(np.asarray(a), b)
        assert gpu[3]["isolated_on_device"] >= 3 and gpu[3]["candidates"] - gpu[3]["isolated_on_device"] > 10
