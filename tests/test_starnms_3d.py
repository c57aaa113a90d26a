"""3D star-convex NMS and rendering: parity with StarDist and the reference, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import add_noise, fast_devices, nuclei_targets_3d

from segrt.kernels import starnms
from segrt.kernels.starnms import nms_3d, rays_3d, render_3d


def _crop(prob, dist, shape=(31, 40, 40)):
    sl = tuple(slice(0, s) for s in shape)
    return np.ascontiguousarray(prob[sl]), np.ascontiguousarray(dist[sl])


@pytest.mark.parametrize("n, anisotropy", [(4, None), (32, None), (96, None), (64, (2.0, 1.0, 1.0)), (48, (1, 0.5, 2))])
def test_rays_equal_stardist(n, anisotropy):
    stardist = pytest.importorskip("stardist")
    ref = stardist.Rays_GoldenSpiral(n, anisotropy=anisotropy)
    ours = rays_3d(n, anisotropy)
    np.testing.assert_array_equal(ours.vertices, ref.vertices)
    np.testing.assert_array_equal(ours.faces, ref.faces)
    assert ours.vertices.dtype == np.float32 and len(ours) == n


def test_matches_stardist_on_the_test_volume():
    from segrt.bench.peers import stardist_nms_3d

    mask, prob, dist, sd_rays = nuclei_targets_3d()
    pts, scores, dists, stats = nms_3d(prob, dist, rays_3d(96), prob_thresh=0.5, nms_thresh=0.4, return_stats=True)
    ref = stardist_nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=0.4, order="segrt")
    np.testing.assert_array_equal(pts, ref[0])
    np.testing.assert_array_equal(scores, ref[1])
    np.testing.assert_array_equal(dists, ref[2])
    assert stats["candidates"] > 5000 and stats["kept"] == len(pts) > 30
    # the bounds and the voxel count decided pairs on this data (the kernel and hull stages
    # are covered by test_matches_reference); the count goes first, and where it suppresses,
    # the fan bound mostly rules the hull test out
    assert stats["decided_upper_bound"] and stats["decided_render"]
    assert stats["hull_skipped"] > stats["decided_render"] // 2
    assert stats["hull_tested"] < stats["hull_skipped"] // 4


@pytest.mark.parametrize("noise, nms_thresh", [("mult", 0.3), ("mult", 0.5), ("abs", 0.4)])
def test_matches_stardist_with_noise(noise, nms_thresh):
    from segrt.bench.peers import stardist_nms_3d

    _, prob, dist, sd_rays = nuclei_targets_3d()
    prob, dist = add_noise(*_crop(prob, dist), seed=4, kind=noise)
    pts, _, _ = nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=nms_thresh)
    ref = stardist_nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=nms_thresh, order="segrt")
    np.testing.assert_array_equal(pts, ref[0])


def test_matches_stardist_public_api_without_ties():
    from segrt.bench.peers import stardist_nms_3d

    _, prob, dist, sd_rays = nuclei_targets_3d()
    prob, dist = _crop(prob, dist)
    prob = prob + np.random.default_rng(2).normal(0, 0.05, prob.shape)  # float64, no ties
    pts, _, _ = nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=0.4)
    ref = stardist_nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=0.4, order="stardist")
    np.testing.assert_array_equal(pts, ref[0])


def test_grid_and_anisotropic_rays():
    stardist = pytest.importorskip("stardist")
    from segrt.bench.peers import stardist_nms_3d

    aniso = (2.0, 1.0, 1.0)
    mask, _, _, _ = nuclei_targets_3d()
    rays = stardist.Rays_GoldenSpiral(64, anisotropy=aniso)
    prob = stardist.edt_prob(mask, anisotropy=aniso).astype(np.float32)[::2, ::2, ::2]
    dist = stardist.star_dist3D(mask, rays, grid=(2, 2, 2))
    prob = np.ascontiguousarray(prob[: dist.shape[0], : dist.shape[1], : dist.shape[2]])
    ours = nms_3d(prob, dist, rays_3d(64, aniso), prob_thresh=0.5, nms_thresh=0.4, grid=(2, 2, 2))
    ref = stardist_nms_3d(prob, dist, rays, prob_thresh=0.5, nms_thresh=0.4, grid=(2, 2, 2), order="segrt")
    np.testing.assert_array_equal(ours[0], ref[0])
    assert len(ours[0]) > 20 and (ours[0] % 2 == 0).all()


@pytest.mark.parametrize("device", fast_devices(starnms.IMPLEMENTATIONS))
def test_matches_reference(device):
    pytest.importorskip("scipy")
    rng = np.random.default_rng(2)  # data on which the kernel and hull tests decide some pairs
    rays = rays_3d(16)
    prob = np.zeros((12, 14, 14), np.float32)
    prob[4:8, 5:10, 5:10] = rng.uniform(0.55, 1.0, (4, 5, 5))
    base = rng.uniform(2, 4, 16)
    dist = (base * rng.uniform(0.8, 1.2, prob.shape + (16,))).astype(np.float32)
    stages = {}
    for thresh in (0.2, 0.7):
        fast = nms_3d(prob, dist, rays, nms_thresh=thresh, border=1, return_stats=True, device=device)
        for k, v in fast[3].items():
            if k != "anisotropy":  # the axis scale used, not a counter
                stages[k] = stages.get(k, 0) + v
        ref = nms_3d(prob, dist, rays, nms_thresh=thresh, border=1, device="reference")
        for a, b in zip(fast[:3], ref):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(render_3d(fast[2], fast[0], rays, prob.shape, scores=fast[1], device=device),
                                      render_3d(ref[2], ref[0], rays, prob.shape, scores=ref[1], device="reference"))
    # every stage of the cascade decided some pair, with and without the fan bound
    for stage in ("decided_upper_bound", "decided_kernel", "decided_hull", "decided_render", "hull_skipped"):
        assert stages[stage] > 0, stage


def test_render_matches_stardist():
    from segrt.bench.peers import stardist_render_3d

    _, prob, dist, sd_rays = nuclei_targets_3d()
    pts, scores, dists = nms_3d(prob, dist, sd_rays, prob_thresh=0.5, nms_thresh=0.4)
    ours = render_3d(dists, pts, sd_rays, prob.shape, scores=scores)
    ref = stardist_render_3d(dists, pts, sd_rays, prob.shape, scores=scores)
    assert ours.dtype == np.int32 and ours.shape == prob.shape
    agree = float((ours == ref).mean())
    # StarDist also tests a voxel against qhull's convex hull before its tetrahedra; segrt
    # skips that pre-filter, which can only differ on voxels lying on a hull face
    assert agree >= 0.999, agree
    fast_ref = render_3d(dists, pts, sd_rays, prob.shape, scores=scores, device="reference")
    np.testing.assert_array_equal(ours, fast_ref)


def test_render_first_drawn_keeps_overlap_and_clips_to_image():
    rays = rays_3d(32)
    pts = np.array([[5, 5, 5], [6, 6, 6], [0, 0, 0]])
    dists = np.full((3, 32), 3.0, np.float32)
    lab = render_3d(dists, pts, rays, (12, 12, 12), scores=np.array([0.5, 0.9, 0.7]))
    assert lab[6, 6, 6] == 2 and lab[5, 5, 5] == 2  # the highest score is drawn first and keeps voxels
    assert lab[0, 0, 0] == 3 and lab[11, 11, 11] == 0


def test_no_candidates_and_single_candidate():
    rays = rays_3d(16)
    prob = np.zeros((8, 8, 8), np.float32)
    dist = np.ones((8, 8, 8, 16), np.float32)
    pts, scores, dists = nms_3d(prob, dist, rays)
    assert pts.shape == (0, 3) and scores.shape == (0,) and dists.shape == (0, 16)
    prob[4, 4, 4] = 0.9
    assert nms_3d(prob, dist, rays)[0].tolist() == [[4, 4, 4]]


def test_candidates_without_volume_are_refused_by_place():
    # every ray zero: no polyhedron (render_3d refuses it too); some zero rays are fine
    rays = rays_3d(16)
    prob = np.zeros((10, 10, 10), np.float32)
    prob[4, 4, 4], prob[5, 5, 5] = 0.9, 0.8
    dist = np.full((10, 10, 10, 16), 2.0, np.float32)
    dist[5, 5, 5] = 0
    for device in ("cpu", "reference"):
        with pytest.raises(ValueError, match=r"1 candidate\(s\) have every ray zero .* at \(5, 5, 5\)"):
            nms_3d(prob, dist, rays, border=0, device=device)
    dist[5, 5, 5, ::2] = 1.5
    fast = nms_3d(prob, dist, rays, border=0)
    ref = nms_3d(prob, dist, rays, border=0, device="reference")
    np.testing.assert_array_equal(fast[0], ref[0])


@pytest.mark.parametrize(
    "case, match",
    [
        ("rank", "4 dimensions"),
        ("rays", "rays"),
        ("nan", "NaN"),
        ("negative", "negative"),
        ("norays", "vertices"),
    ],
)
def test_bad_input(case, match):
    rays = rays_3d(16)
    prob = np.full((6, 6, 6), 0.9, np.float32)
    dist = np.ones((6, 6, 6, 16), np.float32)
    if case == "rank":
        dist = dist[..., 0]
    elif case == "rays":
        rays = rays_3d(32)
    elif case == "nan":
        dist[3, 3, 3, 0] = np.nan
    elif case == "negative":
        dist[3, 3, 3, 0] = -1
    elif case == "norays":
        rays = object()
    with pytest.raises(ValueError, match=match):
        nms_3d(prob, dist, rays)


def test_rays_and_render_bad_input():
    with pytest.raises(ValueError, match="n_rays"):
        rays_3d(3)
    with pytest.raises(ValueError, match="anisotropy"):
        rays_3d(16, anisotropy=(1, 0, 1))
    rays = rays_3d(16)
    with pytest.raises(ValueError, match="positive"):
        render_3d(np.zeros((1, 16)), np.zeros((1, 3)), rays, (5, 5, 5))
    with pytest.raises(ValueError, match="points"):
        render_3d(np.ones((2, 16)), np.zeros((1, 3)), rays, (5, 5, 5))
    with pytest.raises(ValueError, match="rays"):
        render_3d(np.ones((1, 8)), np.zeros((1, 3)), rays, (5, 5, 5))


def test_the_sphere_scale_of_a_larger_set_can_be_given():
    """nms_3d(aniso=...) (the GPU path's subsets): the scale measured in Python as the kernel
    measures it gives the same work, another scale changes how the sphere tests decide."""
    from segrt.kernels._ext import extension

    C = extension()
    rng = np.random.default_rng(0)
    rays = rays_3d(12)
    verts, faces = np.asarray(rays.vertices, np.float32), np.asarray(rays.faces, np.int32)
    pts = rng.uniform(0, 10, (40, 3)).astype(np.float32)
    d = rng.uniform(1, 4, (40, 12)).astype(np.float32)
    own, own_stats = C.nms_3d(d, pts, verts, faces, 0.3)
    box = np.stack([np.rint(pts[:, None, k] + d * verts[None, :, k]) for k in range(3)], axis=-1)
    mean = np.cumsum((box.max(axis=1) - box.min(axis=1)).astype(np.float32) / np.float32(40), axis=0,
                     dtype=np.float32)[-1]
    given, given_stats = C.nms_3d(d, pts, verts, faces, 0.3, aniso=[float(v) for v in max(mean) / mean])
    np.testing.assert_array_equal(own, given)
    assert {k: v for k, v in own_stats.items() if "seconds" not in k} == \
        {k: v for k, v in given_stats.items() if "seconds" not in k}
    _, other_stats = C.nms_3d(d, pts, verts, faces, 0.3, aniso=[1.0, 3.0, 3.0])
    assert other_stats["decided_upper_bound"] != own_stats["decided_upper_bound"]


def test_blocks_certify_their_decisions_and_windows_render_as_the_whole():
    """NMS over blocks of a larger volume (origin, outside, the whole volume's sphere scale):
    every decision the certificate calls certain is the whole volume's, and inner candidates
    are certified; a window of the rendering equals that part of the whole rendering."""
    from segrt.kernels.starnms import _cpu, boxes_3d, sphere_scale_3d

    _, prob, dist, _ = nuclei_targets_3d(32, (2.0, 1.0, 1.0))
    prob, dist = add_noise(np.tile(prob, (1, 2, 2)), np.tile(dist, (1, 2, 2, 1)), seed=3)
    rays = rays_3d(32, (2.0, 1.0, 1.0))
    pts, scores, dists, stats = nms_3d(prob, dist, rays, return_stats=True)
    kept_whole = {tuple(p) for p in pts}
    # the sphere scale from the candidates' boxes, summed in visiting order, is the kernel's
    order = _cpu.candidates(prob, np.float32(0.5), [2, 2, 2], [n - 2 for n in prob.shape])
    cells = np.stack(np.unravel_index(order, prob.shape), axis=1)
    boxes = boxes_3d(dist.reshape(-1, 32)[order], cells, rays)
    np.testing.assert_array_equal(sphere_scale_3d(boxes), np.float32(stats["anisotropy"]))
    assert stats["anisotropy"][0] > 1.2  # the anisotropic rays make it matter
    longest = float(dist.reshape(-1, 32)[order].max())
    Z, Y, X = prob.shape
    certified = 0
    for box in [((0, Z), (0, 70), (0, X)), ((0, Z), (20, Y), (30, 100)), ((5, Z), (0, Y), (0, 60))]:
        sl = tuple(slice(a, b) for a, b in box)
        outside = tuple((longest if a > 0 else None, longest if b < n else None) for (a, b), n in zip(box, prob.shape))
        border = tuple((2 if a == 0 else 0, 2 if b == n else 0) for (a, b), n in zip(box, prob.shape))
        p, _, _, uncertain = nms_3d(np.ascontiguousarray(prob[sl]), np.ascontiguousarray(dist[sl]), rays,
                                    origin=[a for a, _ in box], outside=outside, border=border,
                                    sphere_scale=stats["anisotropy"], device="cpu")
        kept, doubted = {tuple(v) for v in p}, {tuple(v) for v in uncertain}
        block_order = _cpu.candidates(np.ascontiguousarray(prob[sl]), np.float32(0.5), [b[0] for b in border],
                                      [n - b[1] for n, b in zip(prob[sl].shape, border)])
        block_cells = np.stack(np.unravel_index(block_order, prob[sl].shape), axis=1) + [a for a, _ in box]
        sure = [tuple(c) for c in block_cells if tuple(c) not in doubted]
        assert all((c in kept) == (c in kept_whole) for c in sure)
        certified += len(sure)
    assert certified > 1000
    # a window of the rendering, the polyhedra given in the whole rendering's drawing order
    labels = render_3d(dists, pts, rays, prob.shape, scores=scores)
    drawn = np.argsort(scores)[::-1]
    window = (3, 20, 30, 20, 60, 50)
    part = render_3d(dists[drawn], pts[drawn], rays, prob.shape, ids=(drawn + 1).astype(np.int32), window=window)
    np.testing.assert_array_equal(part, labels[3:23, 20:80, 30:80])
    with pytest.raises(ValueError, match="CPU"):
        nms_3d(prob, dist, rays, outside=((None, None),) * 3, device="reference")
    with pytest.raises(ValueError, match="sphere_scale"):
        nms_3d(prob, dist, rays, sphere_scale=(1, 0, 1), device="cpu")
    with pytest.raises(ValueError, match="window"):
        render_3d(dists, pts, rays, prob.shape, ids=np.arange(1, len(pts) + 1), window=(0, 0, 0, Z + 1, 1, 1))
