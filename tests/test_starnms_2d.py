"""2D star-convex NMS and rendering: parity with StarDist, the reference, and edge cases."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import add_noise, dsb_targets_2d, fast_devices
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segrt.kernels import _ext
from segrt.kernels import starnms
from segrt.kernels.starnms import _reference, nms_2d, render_2d

C = _ext.extension()
# the gap allowed between Clipper's intersection area and segrt's lattice geometry (as
# kClipperMargin / kClipperSlack in cpp/starnms2d.cpp); closer pairs go to Clipper
CLIPPER_MARGIN, CLIPPER_SLACK = 0.06, 6.0


def clipper_gap(amin):
    return CLIPPER_MARGIN * amin + CLIPPER_SLACK


def _as_set(points):
    return set(map(tuple, np.asarray(points).tolist()))


def _near_threshold_pairs(point, kept, prob, dist, grid, nms_thresh):
    """Kept polygons whose Clipper overlap with `point`'s polygon lies within the margin."""
    tables = _reference.ray_tables_float(dist.shape[-1])
    cell = tuple(np.asarray(point) // np.asarray(grid))
    poly = _reference.polygon_2d(dist[cell], point[0], point[1], tables)
    near = []
    for other in kept:
        if other == tuple(point):
            continue
        oc = tuple(np.asarray(other) // np.asarray(grid))
        op = _reference.polygon_2d(dist[oc], other[0], other[1], tables)
        inter = _reference.clipper_intersection_area(op, poly)
        amin = min(_reference.lattice_area(op), _reference.lattice_area(poly))
        if abs(inter - nms_thresh * amin) <= clipper_gap(amin):
            near.append((other, inter / max(amin, 1e-10)))
    return near


def assert_same_kept(ours, ref, prob, dist, grid, nms_thresh):
    """Identical kept sets; with libpolyclipping linked that is required, without it a
    difference must come from a pair whose overlap lies within the Clipper margin."""
    a, b = _as_set(ours), _as_set(ref)
    diff = a ^ b
    if not diff:
        assert np.array_equal(np.asarray(ours), np.asarray(ref))  # same order too
        return 0
    assert not C.has_clipper, f"kept sets differ at {sorted(diff)[:10]}"
    for p in diff:
        near = _near_threshold_pairs(p, a | b, prob, dist, grid, nms_thresh)
        assert near, f"{p} differs but has no near-threshold pair"
    return len(diff)


@pytest.mark.parametrize("noise", [None, "mult", "abs"])
@pytest.mark.parametrize("grid", [(1, 1), (2, 2)])
@pytest.mark.parametrize("nms_thresh", [0.3, 0.4, 0.5])
def test_matches_stardist_on_dsb_targets(noise, grid, nms_thresh):
    from segrt.bench.peers import stardist_nms_2d

    _, prob, dist = dsb_targets_2d()
    if noise:
        prob, dist = add_noise(prob, dist, seed=3, kind=noise)
    prob = np.ascontiguousarray(prob[:: grid[0], :: grid[1]])
    dist = np.ascontiguousarray(dist[:: grid[0], :: grid[1]])
    pts, scores, dists = nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=nms_thresh, grid=grid)
    ref_pts, ref_scores, ref_dists = stardist_nms_2d(
        prob, dist, prob_thresh=0.5, nms_thresh=nms_thresh, grid=grid, order="segrt"
    )
    differing = assert_same_kept(pts, ref_pts, prob, dist, grid, nms_thresh)
    if not differing:
        np.testing.assert_array_equal(scores, ref_scores)
        np.testing.assert_array_equal(dists, ref_dists)
    assert len(pts) > 20


@pytest.mark.parametrize("n_rays", [8, 96])
def test_pushes_one_at_a_time_and_in_lanes_keep_stardists_set(n_rays):
    """Pushes test candidates eight at a time in vector lanes up to 64 rays and one at a time
    above (and on CPUs without AVX2): the kept set is StarDist's either way. (With 96 rays on
    these small nuclei pushes settle far fewer candidates: 14 %.)"""
    from segrt.bench.peers import stardist_nms_2d

    _, prob, dist = dsb_targets_2d(n_rays)
    prob, dist = add_noise(prob, dist, seed=5, kind="mult")
    pts, _, _, stats = nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, return_stats=True)
    ref_pts, _, _ = stardist_nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, order="segrt")
    assert assert_same_kept(pts, ref_pts, prob, dist, (1, 1), 0.4) == 0
    assert stats["candidates_pushed"] > (0.8 if n_rays <= 64 else 0.05) * stats["candidates"], stats


def test_matches_stardist_public_api_without_ties():
    """With continuous (noisy) scores there are no ties, so StarDist's own public call agrees."""
    from segrt.bench.peers import stardist_nms_2d

    _, prob, dist = dsb_targets_2d()
    _, dist = add_noise(prob, dist, seed=11, kind="mult")
    prob = prob + np.random.default_rng(11).normal(0, 0.05, prob.shape)  # float64, unclipped
    cand = prob[prob > 0.5]
    assert len(np.unique(cand)) == len(cand)
    pts, _, _ = nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4)
    ref, _, _ = stardist_nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, order="stardist")
    np.testing.assert_array_equal(pts, ref)


def test_perfect_targets_recover_every_object():
    _, prob, dist = dsb_targets_2d()
    mask = dsb_targets_2d()[0]
    pts, _, _ = nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4)
    labels_hit = set(mask[tuple(pts.T)].tolist()) - {0}
    assert len(labels_hit) == len(np.unique(mask)) - 1 == len(pts)


def test_render_matches_stardist():
    from segrt.bench.peers import stardist_render_2d

    _, prob, dist = dsb_targets_2d()
    pts, scores, dists = nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4)
    for sc in (scores, None):
        ours = render_2d(dists, pts, prob.shape, scores=sc)
        ref = stardist_render_2d(dists, pts, prob.shape, scores=sc)
        assert ours.dtype == np.int32 and ours.shape == prob.shape
        np.testing.assert_array_equal(ours, ref)


def test_render_reference_equals_fast_and_overlaps_go_to_higher_score():
    rng = np.random.default_rng(0)
    pts = np.array([[20, 20], [24, 22], [40, 10]])
    dists = rng.uniform(4, 12, (3, 16)).astype(np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    fast = render_2d(dists, pts, (50, 45), scores=scores)
    ref = render_2d(dists, pts, (50, 45), scores=scores, device="reference")
    np.testing.assert_array_equal(fast, ref)
    assert fast[24, 22] == 2  # the higher-scored polygon wins where they overlap
    assert set(np.unique(fast)) == {0, 1, 2, 3}


def test_render_clips_polygons_leaving_the_image():
    pts = np.array([[0, 0], [29, 29]])
    dists = np.full((2, 8), 10.0, np.float32)
    lab = render_2d(dists, pts, (30, 30))
    assert lab[0, 0] == 1 and lab[29, 29] == 2 and lab[15, 15] == 0


# ---- overlap geometry ---------------------------------------------------------------

def _random_pairs(n, seed, noise, reach=8):
    _, prob, dist = dsb_targets_2d()
    if noise:
        prob, dist = add_noise(prob, dist, seed=seed, kind=noise)
    rng = np.random.default_rng(seed)
    idx = np.argwhere(prob > 0.5)
    tables = _reference.ray_tables_float(dist.shape[-1])
    out = []
    while len(out) < n:
        a = idx[rng.integers(len(idx))]
        b = a + rng.integers(-reach, reach + 1, 2)
        if not (0 <= b[0] < prob.shape[0] and 0 <= b[1] < prob.shape[1]) or prob[tuple(b)] <= 0.5:
            continue
        pa = _reference.polygon_2d(dist[tuple(a)], a[0], a[1], tables)
        pb = _reference.polygon_2d(dist[tuple(b)], b[0], b[1], tables)
        out.append((pa, a, pb, b))
    return out


@pytest.mark.parametrize("noise", [None, "mult", "abs"])
def test_overlap_routines_agree_and_stay_within_clipper_margin(noise):
    """The three exact routines (common-centre merge, two-star, general) give the same
    lattice area; Clipper's area differs from it by less than the margin."""
    worst = 0.0
    methods = set()
    for pa, a, pb, b in _random_pairs(1500, seed=5, noise=noise):
        auto = C.polygon_overlap_2d(pa, a[1], a[0], pb, b[1], b[0], 0)
        general = C.polygon_overlap_2d(pa, a[1], a[0], pb, b[1], b[0], 1)
        two_star = C.polygon_overlap_2d(pa, a[1], a[0], pb, b[1], b[0], 2)
        assert auto[0] == general[0] == two_star[0], (a, b, auto, general, two_star)
        methods.add(auto[3])
        amin = min(auto[1], auto[2])
        if auto[3] != 2:  # the general routine's pairs always go to Clipper
            clip = _reference.clipper_intersection_area(pa, pb)
            worst = max(worst, abs(clip - auto[0]) / clipper_gap(amin))
    assert 1 in methods
    # half the allowed gap: the measured deviations stay well inside it
    assert worst < 0.5, worst


def _geometric_area(pa, pb):
    """|a n b| of the lattice polygons without Clipper's rounding (to about 1e-9 px^2):
    Clipper on coordinates scaled by 2^20."""
    s = 1 << 20
    return _reference.clipper_intersection_area(pa * s, pb * s) / s / s


@pytest.mark.parametrize("noise", [None, "mult", "abs"])
def test_overlap_bounds_hold_and_are_tight(noise):
    """The lower bound (about either centre; clockwise triangles taken off when the other
    polygon is not star-shaped about it) and the slab upper bound the NMS loop settles most
    pairs with bracket the geometric intersection area; the lower one is tight enough to
    matter (the loop needs overlap - margin above the threshold)."""
    lower_ratio, upper_excess = [], []
    for pa, a, pb, b in _random_pairs(600, seed=11, noise=noise, reach=20):
        lo, hi = C.polygon_overlap_bounds_2d(pa, a[1], a[0], pb, b[1], b[0])
        lo_swapped, _ = C.polygon_overlap_bounds_2d(pb, b[1], b[0], pa, a[1], a[0])
        true = _geometric_area(pa, pb)
        amin = min(_reference.lattice_area(pa), _reference.lattice_area(pb))
        assert lo_swapped <= true + 1e-6, (a, b, lo_swapped, true)
        if lo >= 0:
            assert lo <= true + 1e-6, (a, b, lo, true)
            if true > 0.5 * amin:
                lower_ratio.append(lo / true)
        if hi >= 0:
            assert hi >= true - 1e-6, (a, b, hi, true)
            if true < 0.1 * amin:
                upper_excess.append((hi - true) / amin)
    assert len(lower_ratio) > 50 and len(upper_excess) > 50
    assert np.median(lower_ratio) > 0.7, np.median(lower_ratio)
    assert np.median(upper_excess) < 0.3, np.median(upper_excess)


@settings(max_examples=60, deadline=None)
@given(st.integers(3, 40), st.integers(-12, 12), st.integers(-12, 12), st.integers(0, 2**31 - 1))
def test_overlap_bounds_hold_on_random_star_polygons(n_rays, dy, dx, seed):
    rng = np.random.default_rng(seed)
    tables = _reference.ray_tables_float(n_rays)
    # spiky or smooth, small or large: the bounds may be loose, never wrong
    scale = rng.uniform(1, 15)
    da = (scale * rng.uniform(0.2, 1.5, n_rays)).astype(np.float32)
    db = (scale * rng.uniform(0.2, 1.5, n_rays)).astype(np.float32)
    a, b = np.array([50, 50]), np.array([50 + dy, 50 + dx])
    pa = _reference.polygon_2d(da, a[0], a[1], tables)
    pb = _reference.polygon_2d(db, b[0], b[1], tables)
    if _reference.lattice_area(pa) == 0 or _reference.lattice_area(pb) == 0:
        return
    lo, hi = C.polygon_overlap_bounds_2d(pa, a[1], a[0], pb, b[1], b[0])
    lo_swapped, _ = C.polygon_overlap_bounds_2d(pb, b[1], b[0], pa, a[1], a[0])
    true = _geometric_area(pa, pb)
    slack = 1e-6 * max(1.0, true)  # double rounding of the clipped area: relative to its size
    assert lo <= true + slack and lo_swapped <= true + slack
    assert hi < 0 or hi >= true - slack


@pytest.mark.parametrize("portable", [False, True])
def test_profile_follows_long_edges_sector_by_sector(portable):
    """A long thin polygon (a rhombus 80 x 12 px) and a 28-gon inside it about the same
    centre (a lattice ellipse 36 x 5 px): the overlap is the 28-gon's whole area. Each edge of
    the rhombus spans a quarter turn and comes within 6 px of the centre at one end only; a
    profile taking that distance for every sector the edge spans proves about a third of the
    overlap, one measuring each sector's own piece of the edge proves all of it."""
    c = (100, 100)
    rhombus = np.array([[40, 0], [0, 6], [-40, 0], [0, -6]], np.int64) + np.array(c)
    t = np.linspace(0, 2 * np.pi, 33)[:-1]
    ellipse = np.stack([np.round(18 * np.cos(t)), np.round(2.5 * np.sin(t))], axis=1).astype(np.int64)
    ellipse = ellipse[np.any(ellipse != np.roll(ellipse, 1, axis=0), axis=1)] + np.array(c)  # no repeated vertex
    lo, _ = C.polygon_overlap_bounds_2d(rhombus, c[1], c[0], ellipse, c[1], c[0], portable=portable)
    area = _geometric_area(rhombus, ellipse)
    assert len(ellipse) == 28 and area == pytest.approx(126.0)
    assert 0.95 * area <= lo <= area


@pytest.mark.parametrize("noise", [None, "mult", "abs"])
def test_vector_lower_bound_equals_the_portable_one(noise):
    """The AVX2 float lower bound (where the CPU has it) against the plain double routine:
    the same star test (-1 on the same pairs), values within their rounding margins, both
    below the geometric area."""
    if not C.star_bound_vectorised:
        pytest.skip("this CPU has no AVX2: the NMS takes the portable bound only")
    compared = 0
    for pa, a, pb, b in _random_pairs(400, seed=5, noise=noise, reach=20):
        for (p, c), (q, d) in (((pa, a), (pb, b)), ((pb, b), (pa, a))):
            lo, _ = C.polygon_overlap_bounds_2d(p, c[1], c[0], q, d[1], d[0])
            lo_portable, _ = C.polygon_overlap_bounds_2d(p, c[1], c[0], q, d[1], d[0], portable=True)
            assert (lo < 0) == (lo_portable < 0), (c, d, lo, lo_portable)
            if lo >= 0:
                assert abs(lo - lo_portable) <= 1e-4 * max(1.0, lo_portable), (c, d, lo, lo_portable)
                assert lo <= _geometric_area(p, q) + 1e-6
                compared += lo_portable > 0
    assert compared > 200


def _push_check(n_rays, kept_rays, cand_rays, cand_points, kept_point, width, grid=(1, 1)):
    """push_bounds_2d on candidates at cand_points (y, x) with cand_rays, against the kept
    polygon of kept_rays at kept_point; returns the result and the polygons."""
    tables = _reference.ray_tables_float(n_rays)
    pa = _reference.polygon_2d(kept_rays, kept_point[0], kept_point[1], tables)
    height = max(p[0] for p in cand_points) // grid[0] + 1
    dist = np.zeros((height * width, n_rays), np.float32)
    cells = np.array([(p[0] // grid[0]) * width + p[1] // grid[1] for p in cand_points], np.int64)
    dist[cells] = cand_rays
    res = C.push_bounds_2d(pa, kept_point[1], kept_point[0], dist, cells, width, grid[0], grid[1])
    return res, pa, tables


@pytest.mark.parametrize("n_rays", [3, 5, 17, 32, 64, 65])
def test_push_lanes_match_the_scalar_path(n_rays):
    """Pushes test eight candidates at a time (one per vector lane): each candidate's area and
    both star tests exactly as the one-at-a-time path takes them, the lower bound within its
    rounding of that path's and never above the geometric area; candidates outside the lanes'
    range (a ray NaN, negative or >= 2000) handed back to the one-at-a-time path, which
    refuses them too. Above 64 rays the lanes are not used."""
    rng = np.random.default_rng(n_rays)
    kept_rays = (9 * rng.uniform(0.8, 1.2, n_rays)).astype(np.float32)
    centre = (40, 40)
    points, rays, bad = [], [], []
    for i in range(203):  # not a multiple of eight: the last lanes are spare
        dy, dx = rng.integers(-7, 8, 2)
        r = 9 * rng.uniform(0.75, 1.25, n_rays) * (3.0 if i % 17 == 0 else 1.0)  # some far larger than a
        if i % 29 == 0:
            r = rng.uniform(0, 25, n_rays)  # spiky: often star-shaped about neither centre
        is_bad = i % 23 == 5
        if is_bad:
            r[rng.integers(n_rays)] = (np.nan, -1.0, 2000.0, np.inf)[i % 4]
        points.append((centre[0] + dy, centre[1] + dx))
        rays.append(r)
        bad.append(is_bad)
    # distinct cells: later duplicates dropped
    seen, keep = set(), []
    for i, p in enumerate(points):
        if p not in seen:
            seen.add(p)
            keep.append(i)
    points = [points[i] for i in keep]
    rays = np.array([rays[i] for i in keep], np.float32)
    bad = np.array([bad[i] for i in keep])
    res, pa, tables = _push_check(n_rays, kept_rays, rays, points, centre, width=100)
    assert res is not None  # a smooth kept polygon is star-shaped about its centre
    np.testing.assert_array_equal(res["made_scalar"], ~bad)
    if n_rays > 64 or not C.star_bound_vectorised:
        assert not res["lanes_done"]
        return
    assert res["lanes_done"] and bad.sum() >= 3
    np.testing.assert_array_equal(res["fallback"], bad)
    ok = ~bad
    np.testing.assert_array_equal(res["area2_lanes"][ok], res["area2_scalar"][ok])
    lanes, scalar = res["lower_lanes"][ok], res["lower_scalar"][ok]
    np.testing.assert_array_equal(lanes < 0, scalar < 0)
    assert (scalar > 0).sum() >= 50
    if n_rays >= 17:  # spiky polygons star-shaped about neither centre: no bound
        assert (scalar < 0).sum() >= 1
    valid = scalar >= 0
    assert np.all(np.abs(lanes[valid] - scalar[valid]) <= 1e-4 * np.maximum(1.0, scalar[valid]))
    for i in np.flatnonzero(ok):
        if res["lower_lanes"][i] > 0:
            pb = _reference.polygon_2d(rays[i], points[i][0], points[i][1], tables)
            assert res["lower_lanes"][i] / 2 <= _geometric_area(pa, pb) + 1e-6, i


def test_push_lanes_hand_back_far_candidates():
    """Coordinates past 2047 about the kept polygon's centre (where float products stop being
    exact) go back to the one-at-a-time path, which takes its double bound there."""
    n_rays = 32
    rays = np.full((3, n_rays), 10.0, np.float32)
    # on a grid of 1500 px: candidates at x = 1500 (the kept centre), 3000 and 4500
    res, _, _ = _push_check(n_rays, np.full(n_rays, 10.0, np.float32), rays, [(0, 1500), (0, 3000), (0, 4500)],
                            (0, 1500), width=4, grid=(1, 1500))
    if not res["lanes_done"]:
        pytest.skip("this CPU has no AVX2: pushes test one candidate at a time")
    np.testing.assert_array_equal(res["fallback"], [False, False, True])
    np.testing.assert_array_equal(res["made_scalar"], [True, True, True])
    assert res["lower_lanes"][0] == pytest.approx(res["lower_scalar"][0], rel=1e-4)
    assert res["lower_lanes"][1] == 0 and res["lower_scalar"][1] == 0  # far apart: no overlap


def test_threads_and_pushed_candidates_give_the_same_result():
    """Kept polygons marking the candidates they drop (from any thread) decide nothing
    differently: one thread or two, run after run, the same kept cells in the same order
    as StarDist on a 1024 x 1024 image (about 70 000 candidates), most of them pushed."""
    from segrt.bench.peers import stardist_nms_2d
    from segrt.kernels.starnms import _cpu

    _, prob, dist = dsb_targets_2d()
    prob, dist = add_noise(np.tile(prob, (2, 2)), np.tile(dist, (2, 2, 1)), seed=7, kind="mult")
    lo, hi = (2, 2), (prob.shape[0] - 2, prob.shape[1] - 2)
    runs = [_cpu.nms_2d(prob, dist, 0.5, 0.4, (1, 1), lo, hi, n_threads=t) for t in (1, 2, 2, 2, 1)]
    kept, stats = runs[0][0], runs[0][1]
    for other, other_stats in (r[:2] for r in runs[1:]):
        np.testing.assert_array_equal(other, kept)
        assert other_stats["kept"] == stats["kept"]
    assert stats["candidates_pushed"] > 0.8 * stats["candidates"], stats
    ref, _, _ = stardist_nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, order="segrt")
    np.testing.assert_array_equal(np.stack([kept // prob.shape[1], kept % prob.shape[1]], axis=1), ref)


def test_clipper_bridge_equals_pyclipper():
    if not C.has_clipper:
        pytest.skip("segrt was built without libpolyclipping")
    for pa, a, pb, b in _random_pairs(300, seed=9, noise="abs"):
        assert C.clipper_intersection_area(pa, pb) == _reference.clipper_intersection_area(pa, pb)


# ---- fast vs reference on random star-convex configurations --------------------------

@st.composite
def configurations(draw):
    n_rays = draw(st.sampled_from([3, 6, 8, 16]))
    size = draw(st.integers(12, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    prob = rng.uniform(0, 1, (size, size)).astype(np.float32)
    # clustered candidates with similar shapes make near-threshold overlaps common
    base = rng.uniform(1, 8, n_rays)
    dist = (base * rng.uniform(0.7, 1.3, (size, size, n_rays))).astype(np.float32)
    thresh = draw(st.sampled_from([0.0, 0.1, 0.3, 0.5, 0.7, 0.95]))
    return prob, dist, thresh


def _fast(on_device: bool) -> list:
    """The fast implementations run on the device (cuda) or not."""
    return [d for d in fast_devices(starnms.IMPLEMENTATIONS) if (getattr(d, "values", (d,))[0] == "cuda") == on_device]


@pytest.mark.parametrize("device", _fast(on_device=False))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_matches_reference(device, cfg):
    _check_against_reference(device, cfg)


# fewer examples: under the simulator every GPU thread runs in Python (a second an example)
@pytest.mark.parametrize("device", _fast(on_device=True))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_matches_reference_on_the_device(device, cfg):
    _check_against_reference(device, cfg)


def _check_against_reference(device, cfg):
    prob, dist, thresh = cfg
    if device == "cuda":  # the simulator runs every GPU thread in Python: a corner of the case
        prob, dist = np.ascontiguousarray(prob[:10, :10]), np.ascontiguousarray(dist[:10, :10])
    fast = nms_2d(prob, dist, prob_thresh=0.6, nms_thresh=thresh, border=1, device=device, return_stats=True)
    ref = nms_2d(prob, dist, prob_thresh=0.6, nms_thresh=thresh, border=1, device="reference", return_stats=True)
    assert_same_kept(fast[0], ref[0], prob, dist, (1, 1), thresh)
    assert fast[3]["candidates"] == ref[3]["candidates"] and fast[3]["kept"] == len(fast[0])
    if device == "cuda":  # the GPU kernel takes the CPU kernel's decisions, pair for pair
        cpu = nms_2d(prob, dist, prob_thresh=0.6, nms_thresh=thresh, border=1, device="cpu")
        for a, b in zip(fast[:3], cpu):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("device", fast_devices(starnms.IMPLEMENTATIONS))
def test_render_matches_reference(device):
    rng = np.random.default_rng(4)
    pts = rng.integers(-5, 60, (25, 2))
    dists = rng.uniform(0, 14, (25, 12)).astype(np.float32)
    scores = rng.random(25).astype(np.float32)
    np.testing.assert_array_equal(render_2d(dists, pts, (55, 48), scores=scores, device=device),
                                  render_2d(dists, pts, (55, 48), scores=scores, device="reference"))


def test_stored_rays_on_the_reference_give_the_dense_result():
    _, prob, dist = dsb_targets_2d(8)
    prob, dist = prob[:96, :96], dist[:96, :96]
    cells = np.flatnonzero(prob > 0.5)
    dense = nms_2d(prob, dist, device="reference")
    stored = nms_2d(prob, dist.reshape(-1, 8)[cells], cells=cells, device="reference")
    for a, b in zip(stored, dense):
        np.testing.assert_array_equal(a, b)


# ---- edge cases ---------------------------------------------------------------------

def test_no_candidates():
    prob = np.zeros((20, 20), np.float32)
    dist = np.ones((20, 20, 8), np.float32)
    pts, scores, dists = nms_2d(prob, dist)
    assert pts.shape == (0, 2) and scores.shape == (0,) and dists.shape == (0, 8)
    assert render_2d(dists, pts, (20, 20)).max() == 0


def test_single_candidate():
    prob = np.zeros((20, 20), np.float32)
    prob[10, 12] = 0.9
    dist = np.full((20, 20, 8), 3.0, np.float32)
    pts, scores, _ = nms_2d(prob, dist)
    assert pts.tolist() == [[10, 12]] and scores.tolist() == [np.float32(0.9)]


def test_identical_candidates_keep_the_first_by_flat_index():
    prob = np.zeros((20, 20), np.float32)
    prob[8:12, 8:12] = 0.8
    dist = np.full((20, 20, 8), 20.0, np.float32)
    pts, _, _ = nms_2d(prob, dist, nms_thresh=0.5)
    assert pts.tolist() == [[8, 8]]


def test_border_candidates():
    prob = np.zeros((10, 10), np.float32)
    prob[0, 0] = prob[9, 9] = 0.9
    dist = np.full((10, 10, 8), 1.0, np.float32)
    assert len(nms_2d(prob, dist, border=2)[0]) == 0
    assert _as_set(nms_2d(prob, dist, border=0)[0]) == {(0, 0), (9, 9)}
    assert _as_set(nms_2d(prob, dist, border=None)[0]) == {(0, 0), (9, 9)}
    assert _as_set(nms_2d(prob, dist, border=((0, 1), (0, 1)))[0]) == {(0, 0)}


def test_zero_length_and_very_long_rays():
    prob = np.zeros((30, 30), np.float32)
    prob[10, 10], prob[12, 12], prob[20, 20] = 0.9, 0.8, 0.7
    dist = np.zeros((30, 30, 16), np.float32)
    # zero rays: zero-area polygons never overlap anything, all are kept
    assert len(nms_2d(prob, dist, border=0)[0]) == 3
    # rays far beyond the image: every polygon covers the others
    dist[:] = 1000.0
    assert nms_2d(prob, dist, border=0)[0].tolist() == [[10, 10]]


def test_float64_and_non_contiguous_inputs_agree():
    _, prob, dist = dsb_targets_2d()
    p, d = add_noise(prob, dist, seed=2)
    ref = nms_2d(p, d)
    p64, d64 = p.astype(np.float64), d.astype(np.float64)
    out64 = nms_2d(p64, d64)
    assert out64[1].dtype == np.float64 and out64[2].dtype == np.float64
    # float64 scores order the same way here (no ties are created by the cast)
    np.testing.assert_array_equal(out64[0], ref[0])
    pt = np.ascontiguousarray(p.T).T  # Fortran-ordered view with the same values
    dt = np.asfortranarray(d)
    assert not pt.flags.c_contiguous and not dt.flags.c_contiguous
    np.testing.assert_array_equal(nms_2d(pt, dt)[0], ref[0])


# ---- bad input ------------------------------------------------------------------------

@pytest.mark.parametrize(
    "prob_shape, dist_shape, match",
    [
        ((10,), (10, 8), "2 dimensions"),
        ((10, 10), (10, 10), "3 dimensions"),
        ((10, 10), (10, 11, 8), "share their spatial shape"),
        ((10, 10), (10, 10, 2), "at least 3 rays"),
    ],
)
def test_bad_shapes(prob_shape, dist_shape, match):
    with pytest.raises(ValueError, match=match):
        nms_2d(np.zeros(prob_shape, np.float32), np.ones(dist_shape, np.float32))


def test_nan_and_negative_values():
    prob = np.full((10, 10), 0.9, np.float32)
    dist = np.ones((10, 10, 8), np.float32)
    bad = prob.copy()
    bad[5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nms_2d(bad, dist)
    d = dist.copy()
    d[5, 5, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        nms_2d(prob, d)
    d[5, 5, 2] = -1
    with pytest.raises(ValueError, match="negative"):
        nms_2d(prob, d)
    with pytest.raises(ValueError, match="negative"):
        nms_2d(prob, d, device="reference")


def test_only_the_candidates_rays_are_checked_and_measured():
    from segrt.kernels._ext import extension

    rng = np.random.default_rng(3)
    prob = rng.random((40, 50)).astype(np.float32)
    dist = (rng.random((40, 50, 16)) * 9 + 0.5).astype(np.float32)
    dist[prob <= 0.5] = np.nan  # no candidate there: never read
    dist[:2] = -1.0  # in the border: never read
    rows = dist.reshape(-1, 16)
    order, longest = extension().select_candidates(prob, 0.5, [2, 2], [38, 48], dist=rows)
    assert np.array_equal(order, extension().select_candidates(prob, 0.5, [2, 2], [38, 48]))
    assert longest == rows[order].max()
    points, _, _ = nms_2d(prob, dist)
    assert len(points) > 0
    rows[order[len(order) // 2], 3] = np.inf
    with pytest.raises(ValueError, match="NaN, infinite or negative"):
        nms_2d(prob, dist)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nms_thresh": 1.5}, "nms_thresh"),
        ({"nms_thresh": float("nan")}, "nms_thresh"),
        ({"prob_thresh": "high"}, "prob_thresh"),
        ({"grid": (0, 1)}, "grid"),
        ({"grid": (1, 1, 1)}, "grid"),
        ({"border": -1}, "border"),
        ({"border": ((1, 2),)}, "border"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_bad_parameters(kwargs, match):
    prob = np.full((10, 10), 0.9, np.float32)
    dist = np.ones((10, 10, 8), np.float32)
    with pytest.raises(ValueError, match=match):
        nms_2d(prob, dist, **kwargs)


def test_render_bad_input():
    with pytest.raises(ValueError, match="points"):
        render_2d(np.ones((3, 8)), np.zeros((2, 2)), (10, 10))
    with pytest.raises(ValueError, match="shape"):
        render_2d(np.ones((3, 8)), np.zeros((3, 2)), (10, 0))
    with pytest.raises(ValueError, match="scores"):
        render_2d(np.ones((3, 8)), np.zeros((3, 2)), (10, 10), scores=np.ones(2))
    with pytest.raises(ValueError, match="NaN"):
        render_2d(np.full((3, 8), np.nan), np.zeros((3, 2)), (10, 10))


def test_stored_rays_give_the_dense_result():
    """The tiled pipeline's path: ray lengths stored for a superset of the candidates only."""

    rng = np.random.default_rng(3)
    _, prob, dist = dsb_targets_2d()
    ref = nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4)
    extra = rng.random(prob.shape) < 0.05  # stored cells: the candidates and some others
    cells = np.flatnonzero((prob > 0.5) | extra)
    got = nms_2d(prob, dist.reshape(-1, 32)[cells], cells=cells, prob_thresh=0.5, nms_thresh=0.4)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a, b)
    missing = np.flatnonzero(prob > 0.6)
    with pytest.raises(ValueError, match="no stored distances"):
        nms_2d(prob, dist.reshape(-1, 32)[missing], cells=missing, prob_thresh=0.5)


# ---- NMS over blocks of a larger image: origin, the certificate, windows ---------------------
def _block_nms(prob, dist, block, core, reach, grid=(1, 1), device="cpu", nms_thresh=0.4):
    """nms_2d over prob[block] as a block of the whole image; (kept points in core, uncertain in core)."""
    (r0, r1), (c0, c1) = block
    H, W = prob.shape
    outside = ((reach if r0 > 0 else None, reach if r1 < H else None), (reach if c0 > 0 else None, reach if c1 < W else None))
    border = ((2 if r0 == 0 else 0, 2 if r1 == H else 0), (2 if c0 == 0 else 0, 2 if c1 == W else 0))
    pts, _, _, unc = nms_2d(prob[r0:r1, c0:c1], dist[r0:r1, c0:c1], origin=(r0, c0), outside=outside, border=border,
                            grid=grid, nms_thresh=nms_thresh, device=device)
    (k0, k1), (l0, l1) = core

    def inside(p):
        return (p[:, 0] // grid[0] >= k0) & (p[:, 0] // grid[0] < k1) & (p[:, 1] // grid[1] >= l0) & (p[:, 1] // grid[1] < l1)
    return _as_set(pts[inside(pts)]), _as_set(unc[inside(unc)])


@pytest.mark.parametrize("noise", ["mult", "abs"])
@pytest.mark.parametrize("side", [40, 96, 160])
def test_block_decisions_are_the_whole_images_where_certified(noise, side):
    """Every block of the image (with a ring of one block around it): the kept points its
    certificate vouches for are the whole image's, and with blocks wide enough none is doubted."""
    _, prob, dist = dsb_targets_2d()
    prob, dist = add_noise(prob, dist, seed=5, kind=noise)
    whole = _as_set(nms_2d(prob, dist, device="cpu")[0])
    reach = float(dist[prob > 0.5].max())
    H, W = prob.shape
    found, doubted = set(), 0
    for y in range(0, H, side):
        for x in range(0, W, side):
            core = ((y, min(y + side, H)), (x, min(x + side, W)))
            block = ((max(0, y - side), min(H, y + 2 * side)), (max(0, x - side), min(W, x + 2 * side)))
            kept, unc = _block_nms(prob, dist, block, core, reach)
            # an uncertain candidate may be decided either way; every other one as the whole image
            core_whole = {p for p in whole if core[0][0] <= p[0] < core[0][1] and core[1][0] <= p[1] < core[1][1]}
            assert kept - unc == core_whole - unc
            found |= kept
            doubted += len(unc)
    if side >= 160:  # a ring wider than twice the longest ray: every decision certified
        assert doubted == 0 and found == whole


def test_a_suppression_chain_across_the_block_is_caught():
    """Candidates in a row, each suppressing the next and ranked above it: the whole image keeps
    every other one; a block that misses the first flips them all, and says so."""
    n, step = 12, 4
    prob = np.zeros((16, n * step + 8), np.float32)
    dist = np.zeros(prob.shape + (16,), np.float32)
    for i in range(n):
        prob[8, 4 + i * step] = 0.99 - 0.03 * i
        dist[8, 4 + i * step] = 5.0  # radius 5, 4 px apart: overlap 0.5; 8 px apart: 0.1
    whole = _as_set(nms_2d(prob, dist, border=0, device="cpu")[0])
    assert whole == {(8, 4 + i * step) for i in range(0, n, 2)}
    reach = 5.0
    block = ((0, 16), (4 + step - 2, prob.shape[1]))  # starts just past the first candidate
    core = ((0, 16), (4 + 8 * step - 2, prob.shape[1]))
    (r0, r1), (c0, c1) = block
    kept_naive = _as_set(nms_2d(prob[r0:r1, c0:c1], dist[r0:r1, c0:c1], origin=(r0, c0), border=0, device="cpu")[0])
    assert kept_naive != {p for p in whole if p[1] >= c0}  # without the certificate: wrong
    for device in ("cpu", "reference"):
        kept, unc = _block_nms(prob, dist, block, core, reach, device=device)
        assert {(8, 4 + i * step) for i in range(8, n)} <= unc  # the chain reaches the core: doubted


@pytest.mark.parametrize("seed", range(6))
def test_certificate_matches_the_reference(seed):
    rng = np.random.default_rng(seed)
    size = 30
    prob = rng.uniform(0, 1, (size, size)).astype(np.float32)
    dist = (rng.uniform(2, 6, 8) * rng.uniform(0.7, 1.3, (size, size, 8))).astype(np.float32)
    kw = dict(origin=(7, 3), outside=((4.0, None), (6.0, 2.0)), border=((0, 2), (0, 0)), prob_thresh=0.7, grid=(2, 1))
    ours = nms_2d(prob, dist, device="cpu", **kw)
    ref = nms_2d(prob, dist, device="reference", **kw)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    assert len(ours[3]) > 0  # exposed candidates exist on the open sides
    # points in the larger image's pixels (the block's cells start at (7, 3), grid (2, 1))
    assert ours[0][:, 0].min() >= 14 and ours[0][:, 0].max() < 2 * (7 + size)
    assert ours[0][:, 1].min() >= 3 and ours[0][:, 1].max() < 3 + size


def test_block_arguments_are_checked():
    prob, dist = np.zeros((8, 8), np.float32), np.ones((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="origin"):
        nms_2d(prob, dist, origin=(-1, 0), device="cpu")
    with pytest.raises(ValueError, match="outside"):
        nms_2d(prob, dist, outside=(1.0, 2.0), device="cpu")
    with pytest.raises(ValueError, match="outside"):
        nms_2d(prob, dist, outside=((1.0, -2.0), (None, None)), device="cpu")


@pytest.mark.parametrize("device", ["cpu", "reference"])
def test_render_window_and_ids(device):
    rng = np.random.default_rng(7)
    pts = rng.integers(-5, 80, (40, 2))
    dists = rng.uniform(0, 14, (40, 16)).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    full = render_2d(dists, pts, (75, 90), scores=scores, device=device)
    for window in [(0, 0, 75, 90), (10, 20, 30, 41), (74, 89, 1, 1), (33, 0, 0, 90)]:
        r0, c0, h, w = window
        np.testing.assert_array_equal(render_2d(dists, pts, (75, 90), scores=scores, window=window, device=device),
                                      full[r0:r0 + h, c0:c0 + w])
    # a subset with its own ids draws what the whole set draws where only the subset reaches
    sub = np.flatnonzero(pts[:, 0] > 40)
    part = render_2d(dists[sub], pts[sub], (75, 90), scores=scores[sub], ids=sub + 1, device=device)
    reach = np.isin(full, sub + 1) | (part > 0)
    others = render_2d(np.delete(dists, sub, 0), np.delete(pts, sub, 0), (75, 90), device=device) > 0
    np.testing.assert_array_equal(part[reach & ~others], full[reach & ~others])
    with pytest.raises(ValueError, match="window"):
        render_2d(dists, pts, (75, 90), window=(70, 0, 10, 5), device=device)
    with pytest.raises(ValueError, match="ids"):
        render_2d(dists, pts, (75, 90), ids=np.zeros(40, np.int32), device=device)
