"""GPU star-convex NMS and rendering: Numba CUDA kernels on CuPy arrays (NumPy under the
simulator), with the CPU kernel's decisions, pair for pair.

How ``nms_2d`` runs (everything on the device but step 4):

1. Candidates: cells with ``prob > prob_thresh`` inside the border, ranked by descending
   score, ties by ascending flat index (a lexicographic sort); their rays are gathered and
   checked (finite, non-negative, under 32767 px), with the CPU kernel's errors.
2. Polygons, one thread each: the vertices in the CPU kernel's float32 arithmetic (each
   product and sum rounded to float32 as the CPU rounds it, so no fused multiply-add can
   move a vertex), truncated; twice the area (int64 shoelace); the bounding box the CPU
   kernel uses (the raw path's, or the cleaned path's for rays of 2000 px and more); whether
   the raw path is star-shaped about its centre (its triangle fan tiles it).
3. Pairs, one thread per candidate j: every higher-ranked candidate i whose box meets j's
   and whose box bound leaves room for the threshold (the CPU kernel's test, same doubles),
   listed per j (count, prefix scan, fill). Then one thread per pair: where both polygons are
   star-shaped about their own centres, the intersection area is the sum of the
   intersections of their fan triangles (Sutherland-Hodgman in float64), and the pair is
   decided when that area lies farther from the threshold than the CPU kernel's Clipper margin
   plus a bound on the lattice rounding (0.5 diagonal + 1 px^2 per edge crossing) and the
   float error. Every other pair is marked for the host.
4. The marked pairs (near the threshold, or a polygon not star-shaped) go to the host once:
   ``decide_pairs_2d`` of the C++ extension takes the CPU kernel's decision with its own
   arithmetic (lower bounds, exact lattice area, Clipper where it is linked).
5. The greedy pass as waves over the suppression lists: a candidate is suppressed once a
   suppressor is kept, kept once every suppressor is suppressed; each wave decides at least
   the best-ranked open candidate, so the result is the sequential greedy pass, exactly.

3D (``nms_3d``): candidates and their boxes on the device, isolated candidates kept there,
the rest through StarDist's cascade on the host (see the comment above ``nms_3d``).

``render_2d``: one thread per polygon and row of its box, the crossing test of the CPU kernel
(skimage.draw.polygon's rule) in float64; where polygons overlap the one drawn last wins (an
atomic max of the draw position, then its label).
"""
from __future__ import annotations

import math

import numpy as np

from segrt.kernels import gpu as _gpu
from segrt.kernels._ext import extension
from segrt.kernels.starnms._rays import sphere_scale_3d
from segrt.kernels.starnms._reference import ray_tables_float

# the kernels refer to the module-level ``cuda`` so that Numba's simulator can stand in for it
cuda = _gpu.cuda()

SIMPLE_RAY = 2000.0  # the CPU kernel takes the raw path's box below this ray length (kSimpleRay)
MAX_RAYS = 255
MAX_RAY = 32766.0  # vertices relative to their centre fit int16 on the CPU
CLIPPER_MARGIN, CLIPPER_SLACK = 0.06, 6.0  # the CPU kernel's kClipperMargin / kClipperSlack

# pair classes
NOT_SUPPRESSED, SUPPRESSED, TO_HOST = 0, 1, 2


@cuda.jit(device=True)
def _collinear(ax, ay, bx, by, cx, cy):
    return (bx - ax) * (cy - ay) == (by - ay) * (cx - ax)


@cuda.jit
def _polygons(d, cells, width, gy, gx, sin_t, cos_t, verts, area2, star, box, edge):
    i = cuda.grid(1)
    if i >= d.shape[0]:
        return
    n = d.shape[1]
    cell = cells[i]
    cx = (cell % width) * gx
    cy = (cell // width) * gy
    pxf = np.float32(cx)
    pyf = np.float32(cy)
    simple = True
    for k in range(n):
        r = d[i, k]
        if not r < SIMPLE_RAY:
            simple = False
        # float32 products and sums, each rounded once (exact in float64, then rounded)
        ry = np.float32(np.float64(r) * np.float64(sin_t[k]))
        rx = np.float32(np.float64(r) * np.float64(cos_t[k]))
        y = np.float32(np.float64(pyf) + np.float64(ry))
        x = np.float32(np.float64(pxf) + np.float64(rx))
        verts[i, k, 0] = np.int64(x) - cx  # truncation towards zero, as the CPU's cast
        verts[i, k, 1] = np.int64(y) - cy
    s2 = np.int64(0)
    bad = 0
    wraps = 0
    x0 = verts[i, 0, 0]
    x1 = x0
    y0 = verts[i, 0, 1]
    y1 = y0
    for k in range(n):
        xa = verts[i, k, 0]
        ya = verts[i, k, 1]
        kb = k + 1 if k + 1 < n else 0
        xb = verts[i, kb, 0]
        yb = verts[i, kb, 1]
        cross = xa * yb - ya * xb
        dot = xa * xb + ya * yb
        s2 += cross
        if cross < 0 or (cross == 0 and dot <= 0):
            bad += 1
        if ya < 0 and yb >= 0:
            wraps += 1
        x0 = min(x0, xa)
        x1 = max(x1, xa)
        y0 = min(y0, ya)
        y1 = max(y1, ya)
    area2[i] = s2
    star[i] = 1 if (bad == 0 and wraps == 1) else 0
    # the longest edge of the cleaned path (runs of collinear edges merged; twice round so
    # that a run may wrap): how far a rounded crossing's neighbours lie
    longest = 0.0
    run = 0.0
    ex = np.int64(0)
    ey = np.int64(0)
    for t in range(2 * n):
        k = t % n
        kb = k + 1 if k + 1 < n else 0
        fx = verts[i, kb, 0] - verts[i, k, 0]
        fy = verts[i, kb, 1] - verts[i, k, 1]
        if fx == 0 and fy == 0:
            continue
        length = math.sqrt(np.float64(fx * fx + fy * fy))
        if ex * fy - ey * fx == 0 and ex * fx + ey * fy > 0:
            run += length
        else:
            run = length
        ex = fx
        ey = fy
        longest = max(longest, run)
    edge[i] = longest
    if not simple:  # the box of the path as Clipper cleans it (spikes dropped)
        lx = cuda.local.array(MAX_RAYS, np.int64)
        ly = cuda.local.array(MAX_RAYS, np.int64)
        cnt = 0
        for k in range(n):
            px = verts[i, k, 0]
            py = verts[i, k, 1]
            if cnt > 0 and px == lx[cnt - 1] and py == ly[cnt - 1]:
                continue
            while cnt >= 2 and _collinear(lx[cnt - 2], ly[cnt - 2], lx[cnt - 1], ly[cnt - 1], px, py):
                cnt -= 1
            lx[cnt] = px
            ly[cnt] = py
            cnt += 1
        first = 0
        while cnt - first >= 3:
            if lx[cnt - 1] == lx[first] and ly[cnt - 1] == ly[first]:
                cnt -= 1
            elif _collinear(lx[cnt - 2], ly[cnt - 2], lx[cnt - 1], ly[cnt - 1], lx[first], ly[first]):
                cnt -= 1
            elif _collinear(lx[cnt - 1], ly[cnt - 1], lx[first], ly[first], lx[first + 1], ly[first + 1]):
                first += 1
            else:
                break
        x0 = np.int64(0)
        x1 = np.int64(0)
        y0 = np.int64(0)
        y1 = np.int64(0)
        if cnt > first:
            x0 = lx[first]
            x1 = x0
            y0 = ly[first]
            y1 = y0
        for k in range(first, cnt):
            x0 = min(x0, lx[k])
            x1 = max(x1, lx[k])
            y0 = min(y0, ly[k])
            y1 = max(y1, ly[k])
    box[i, 0] = x0 + cx
    box[i, 1] = x1 + cx
    box[i, 2] = y0 + cy
    box[i, 3] = y1 + cy


@cuda.jit(device=True)
def _area_f32(s2):
    return np.float64(np.float32(0.5 * abs(np.float64(s2))))


@cuda.jit
def _pairs(rank_of, cells, width, height, gy, gx, box, area2, reach, thresh_lo, start, partner, fill):
    """Per candidate j: the higher-ranked candidates i whose boxes leave room for the threshold
    (count into start[j + 1], or, with fill, write them at start[j]...)."""
    j = cuda.grid(1)
    if j >= cells.shape[0]:
        return
    bx0 = box[j, 0]
    bx1 = box[j, 1]
    by0 = box[j, 2]
    by1 = box[j, 3]
    area_j = _area_f32(area2[j])
    # a centre farther than `reach` from j's box has a box that misses it
    c0 = max(np.int64(0), -((reach - bx0) // gx))  # ceil((bx0 - reach) / gx)
    c1 = min(width - 1, (bx1 + reach) // gx)
    r0 = max(np.int64(0), -((reach - by0) // gy))
    r1 = min(height - 1, (by1 + reach) // gy)
    count = 0
    out = start[j]
    for r in range(r0, r1 + 1):
        for c in range(c0, c1 + 1):
            i = rank_of[r * width + c]
            if i < 0 or i >= j:
                continue
            w = min(box[i, 1], bx1) - max(box[i, 0], bx0)
            h = min(box[i, 3], by1) - max(box[i, 2], by0)
            if w <= 0 or h <= 0:
                continue
            amin = min(_area_f32(area2[i]), area_j)
            if np.float64(w) * np.float64(h) / (amin + 1.e-10) <= thresh_lo:
                continue
            if fill:
                partner[out + count] = i
            count += 1
    if not fill:
        start[j + 1] = count


@cuda.jit(device=True)
def _clip_half_plane(px, py, n, qx, qy, ax, ay, bx, by):
    """Clips the polygon (px, py)[:n] to the left of a -> b into (qx, qy); returns its size."""
    ex = bx - ax
    ey = by - ay
    m = 0
    for v in range(n):
        cx = px[v]
        cy = py[v]
        w = v + 1 if v + 1 < n else 0
        dx = px[w]
        dy = py[w]
        sc = ex * (cy - ay) - ey * (cx - ax)
        sd = ex * (dy - ay) - ey * (dx - ax)
        if sc >= 0:
            qx[m] = cx
            qy[m] = cy
            m += 1
        if (sc >= 0) != (sd >= 0):
            t = sc / (sc - sd)
            qx[m] = cx + t * (dx - cx)
            qy[m] = cy + t * (dy - cy)
            m += 1
    return m


@cuda.jit(device=True)
def _triangle_overlap(ax0, ay0, ax1, ay1, ax2, ay2, bx0, by0, bx1, by1, bx2, by2, px, py, qx, qy):
    """Area of the intersection of two counter-clockwise triangles."""
    px[0] = ax0
    py[0] = ay0
    px[1] = ax1
    py[1] = ay1
    px[2] = ax2
    py[2] = ay2
    n = _clip_half_plane(px, py, 3, qx, qy, bx0, by0, bx1, by1)
    if n == 0:
        return 0.0
    n = _clip_half_plane(qx, qy, n, px, py, bx1, by1, bx2, by2)
    if n == 0:
        return 0.0
    n = _clip_half_plane(px, py, n, qx, qy, bx2, by2, bx0, by0)
    s = 0.0
    for v in range(n):
        w = v + 1 if v + 1 < n else 0
        s += qx[v] * qy[w] - qy[v] * qx[w]
    return 0.5 * abs(s)


@cuda.jit(device=True)
def _side(ax, ay, bx, by, cx, cy):
    o = (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
    return 1 if o > 0 else (-1 if o < 0 else 0)


@cuda.jit(device=True)
def _owner(offsets, t):
    """The item a flat index belongs to: the last k with offsets[k] <= t (offsets ascending, the
    prefix sums of the items' sizes, ending with the total)."""
    lo = 0
    hi = offsets.shape[0] - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if offsets[mid] <= t:
            lo = mid
        else:
            hi = mid
    return lo


@cuda.jit
def _classify(start, partner, verts, cells, width, gy, gx, area2, star, edge, thresh, decision):
    """One thread per pair: decided on the device, or marked for the host (see the module text)."""
    q = cuda.grid(1)
    if q >= partner.shape[0]:
        return
    j = _owner(start, q)  # the candidate whose pair list holds pair q
    i = partner[q]
    if star[i] == 0 or star[j] == 0:
        decision[q] = TO_HOST
        return
    n = verts.shape[1]
    # j's centre relative to i's (i's centre is the origin)
    ox = (cells[j] % width) * gx - (cells[i] % width) * gx
    oy = (cells[j] // width) * gy - (cells[i] // width) * gy
    px = cuda.local.array(8, np.float64)
    py = cuda.local.array(8, np.float64)
    qx = cuda.local.array(8, np.float64)
    qy = cuda.local.array(8, np.float64)
    inter = 0.0
    crossings = 0
    reach2 = 0.0
    for k in range(n):
        k1 = k + 1 if k + 1 < n else 0
        ax1 = verts[i, k, 0]
        ay1 = verts[i, k, 1]
        ax2 = verts[i, k1, 0]
        ay2 = verts[i, k1, 1]
        reach2 = max(reach2, np.float64(ax1 * ax1 + ay1 * ay1))
        a_cross = ax1 * ay2 - ay1 * ax2
        for m in range(n):
            m1 = m + 1 if m + 1 < n else 0
            bx1 = verts[j, m, 0] + ox
            by1 = verts[j, m, 1] + oy
            bx2 = verts[j, m1, 0] + ox
            by2 = verts[j, m1, 1] + oy
            # edges that cross properly (exact integer orientations): each such crossing is a
            # vertex the lattice geometry rounds (touching vertices are lattice points already)
            if (min(ax1, ax2) <= max(bx1, bx2) and min(bx1, bx2) <= max(ax1, ax2)
                    and min(ay1, ay2) <= max(by1, by2) and min(by1, by2) <= max(ay1, ay2)):
                s1 = _side(ax1, ay1, ax2, ay2, bx1, by1)
                s2 = _side(ax1, ay1, ax2, ay2, bx2, by2)
                s3 = _side(bx1, by1, bx2, by2, ax1, ay1)
                s4 = _side(bx1, by1, bx2, by2, ax2, ay2)
                if s1 * s2 < 0 and s3 * s4 < 0:
                    crossings += 1
            b_cross = (bx1 - ox) * (by2 - oy) - (by1 - oy) * (bx2 - ox)
            if a_cross == 0 or b_cross == 0:
                continue  # a flat fan triangle has no area
            # fan triangles (centre, v_k, v_k+1); their boxes first
            tx0 = min(0, min(ax1, ax2))
            tx1 = max(0, max(ax1, ax2))
            ty0 = min(0, min(ay1, ay2))
            ty1 = max(0, max(ay1, ay2))
            ux0 = min(ox, min(bx1, bx2))
            ux1 = max(ox, max(bx1, bx2))
            uy0 = min(oy, min(by1, by2))
            uy1 = max(oy, max(by1, by2))
            if tx1 <= ux0 or ux1 <= tx0 or ty1 <= uy0 or uy1 <= ty0:
                continue
            inter += _triangle_overlap(0.0, 0.0, np.float64(ax1), np.float64(ay1), np.float64(ax2), np.float64(ay2),
                                       np.float64(ox), np.float64(oy), np.float64(bx1), np.float64(by1),
                                       np.float64(bx2), np.float64(by2), px, py, qx, qy)
    area_i = _area_f32(area2[i])
    area_j = _area_f32(area2[j])
    amin = min(area_i, area_j)
    # a crossing rounded by at most 0.71 px moves the area by at most half that times the
    # distance between its neighbours (each on one of the two edges), plus the second-order
    # term with a rounded neighbour
    rounding = crossings * (0.36 * (edge[i] + edge[j]) + 0.5) + 1.0
    float_error = 1.e-12 * n * n * (9.0 * reach2 + 1.0)
    margin = CLIPPER_MARGIN * amin + CLIPPER_SLACK + rounding + float_error
    target = np.float64(thresh) * amin
    if inter > target + margin:
        decision[q] = SUPPRESSED
    elif inter < target - margin:
        decision[q] = NOT_SUPPRESSED
    else:
        decision[q] = TO_HOST


@cuda.jit
def _wave(start, partner, decision, state, changed):
    """One step of the greedy pass: state 0 open, 1 kept, 2 suppressed."""
    j = cuda.grid(1)
    if j >= state.shape[0] or state[j] != 0:
        return
    pending = False
    for q in range(start[j], start[j + 1]):
        if decision[q] != SUPPRESSED:
            continue
        s = state[partner[q]]
        if s == 1:
            state[j] = 2
            changed[0] = 1
            return
        if s == 0:
            pending = True
    if not pending:
        state[j] = 1
        changed[0] = 1


def _check_rays(xp, d):
    """The CPU kernel's checks of the candidates' rays; returns the longest ray."""
    if d.size == 0:
        return 0.0
    ok = (d >= 0) & (d <= 3e38)  # NaN fails both
    if not bool(ok.all()):
        raise ValueError("dist of a candidate holds NaN, infinite or negative values, or rays longer than 3e38 "
                         "(the kernels compute areas of such polygons in float)")
    longest = float(d.max())
    if longest > MAX_RAY:
        raise ValueError("rays longer than 32767 pixels are not supported")
    return longest


def candidates(prob, prob_thresh, lo, hi):
    """Flat cell indices with prob > prob_thresh inside [lo, hi), by descending prob, ties by
    ascending index (device array); refuses NaN there as the CPU kernel does."""
    xp = _gpu.array_module()
    prob = _gpu.to_device(prob, xp)
    region = prob[tuple(slice(a, b) for a, b in zip(lo, hi))]
    nan_count = int(xp.count_nonzero(xp.isnan(region)))
    if nan_count:
        raise ValueError(f"prob contains {nan_count} NaN value(s)")
    index = xp.nonzero(region > prob.dtype.type(prob_thresh))
    cells = xp.zeros(index[0].shape, xp.int64)
    for axis, (coord, offset) in enumerate(zip(index, lo)):
        cells = cells * prob.shape[axis] + (coord.astype(xp.int64) + offset)
    if cells.size == 0:
        return cells
    scores = prob.reshape(-1)[cells].astype(xp.float64)
    order = xp.lexsort(xp.stack([cells.astype(xp.float64), -scores]))  # the last key sorts first
    return cells[order]


def nms_2d(prob, dist, prob_thresh, nms_thresh, grid, lo, hi, n_threads=0, stored=None, device_decides=True):
    """Kept flat cell indices in visiting order, the work counters, and the kept candidates'
    rows of dist (device arrays; see the module text). device_decides=False sends every pair
    to the host (a test of the host path)."""
    xp = _gpu.array_module()
    prob = _gpu.to_device(prob, xp)
    dist = _gpu.to_device(dist, xp)
    n_rays = dist.shape[-1]
    if n_rays > MAX_RAYS:
        raise ValueError("at most 255 rays are supported")
    height, width = prob.shape
    cells = candidates(prob, prob_thresh, lo, hi)
    dist2 = dist.reshape(-1, n_rays)
    if stored is None:
        rows = cells
    else:
        stored = _gpu.to_device(stored, xp)
        rows = xp.searchsorted(stored, cells)
        if cells.size and (int(rows.max()) >= stored.size or not bool((stored[rows] == cells).all())):
            raise ValueError("a candidate cell has no stored distances: store every cell with prob > prob_thresh")
    n = int(cells.size)
    stats = {"candidates": n, "kept": 0, "pairs_considered": 0, "pairs_device": 0, "pairs_host": 0, "waves": 0}
    d = xp.ascontiguousarray(dist2[rows], dtype=xp.float32)
    longest = _check_rays(xp, d)
    if n == 0:
        return cells, stats, rows
    thresh32 = np.float32(nms_thresh)
    sin_t, cos_t = (xp.asarray(t) for t in ray_tables_float(n_rays))
    verts = xp.empty((n, n_rays, 2), xp.int64)
    area2 = xp.empty(n, xp.int64)
    star = xp.empty(n, xp.uint8)
    box = xp.empty((n, 4), xp.int64)
    edge = xp.empty(n, xp.float64)
    _gpu.launch(_polygons, n, d, cells, width, grid[0], grid[1], sin_t, cos_t, verts, area2, star, box,
                                            edge)

    rank_of = xp.full(prob.size, -1, xp.int64)
    rank_of[cells] = xp.arange(n, dtype=xp.int64)
    reach = int(math.ceil(longest)) + 2
    thresh_lo = float(thresh32) * (1.0 - 1e-6)
    start = xp.zeros(n + 1, xp.int64)
    partner = xp.empty(0, xp.int64)
    args = (rank_of, cells, width, height, grid[0], grid[1], box, area2, reach, thresh_lo, start)
    _gpu.launch(_pairs, n, *args, partner, False)
    start = xp.cumsum(start)
    n_pairs = int(start[-1])
    partner = xp.empty(max(n_pairs, 1), xp.int64)
    _gpu.launch(_pairs, n, *args[:-1], start, partner, True)
    partner = partner[:n_pairs]
    decision = xp.zeros(max(n_pairs, 1), xp.uint8)[:n_pairs]
    if n_pairs:
        _gpu.launch(_classify, n_pairs, start, partner, verts, cells, width, grid[0], grid[1], area2,
                                                      star, edge, thresh32, decision)
        if not device_decides:
            decision[:] = TO_HOST
        host = xp.nonzero(decision == TO_HOST)[0]
        if host.size:
            _settle_on_host(xp, host, start, partner, d, cells, width, grid, thresh32, n_threads, decision)
        stats["pairs_host"] = int(host.size)
    stats["pairs_considered"] = n_pairs
    stats["pairs_device"] = n_pairs - stats["pairs_host"]

    state = xp.zeros(n, xp.uint8)
    changed = xp.zeros(1, xp.int32)
    waves = 0
    while True:
        changed[0] = 0
        _gpu.launch(_wave, n, start, partner, decision, state, changed)
        waves += 1
        if int(changed[0]) == 0:
            break
    if bool((state == 0).any()):  # cannot happen: each wave decides the best-ranked open candidate
        raise RuntimeError("the GPU star-convex NMS left candidates undecided; please report this")
    stats["waves"] = waves
    keep = state == 1
    stats["kept"] = int(xp.count_nonzero(keep))
    return cells[keep], stats, rows[keep]


def _settle_on_host(xp, host, start, partner, d, cells, width, grid, thresh32, n_threads, decision):
    """The CPU kernel's own decision for the pairs the device could not settle."""
    j = xp.searchsorted(start, host, side="right") - 1
    i = partner[host]
    involved = xp.unique(xp.concatenate([i, j]))
    local = xp.stack([xp.searchsorted(involved, i), xp.searchsorted(involved, j)], axis=1)
    decided = extension().decide_pairs_2d(
        np.ascontiguousarray(_gpu.to_host(d[involved])), np.ascontiguousarray(_gpu.to_host(cells[involved])),
        int(width), int(grid[0]), int(grid[1]), np.ascontiguousarray(_gpu.to_host(local)), float(thresh32),
        int(n_threads))
    decision[host] = xp.asarray(decided.astype(np.uint8))


@cuda.jit
def _render(rows, cols, box, order_pos, winner):
    """One thread per polygon and row of its box: atomic max of the draw position per pixel."""
    t = cuda.grid(1)
    n_rays = rows.shape[1]
    if t >= order_pos[order_pos.shape[0] - 1]:
        return
    p = _owner(order_pos, t)  # t enumerates (polygon, row of its box)
    r = box[p, 0] + (t - order_pos[p])
    c0 = box[p, 2]
    c1 = box[p, 3]
    y = np.float64(r)
    for c in range(c0, c1 + 1):
        cnt = 0
        jj = n_rays - 1
        for k in range(n_rays):
            yi = np.float64(rows[p, k])
            yj = np.float64(rows[p, jj])
            if (yi <= y and y < yj) or (yj <= y and y < yi):
                xi = np.float64(cols[p, k])
                xj = np.float64(cols[p, jj])
                x = (xj - xi) * (y - yi) / (yj - yi) + xi
                if np.float64(c) < x:
                    cnt += 1
            jj = k
        if cnt % 2 == 1:
            cuda.atomic.max(winner, (r, c), np.int32(p + 1))


def render_2d(dists, points, labels, shape):
    """Polygons filled in order, later ones winning (see the module text)."""
    xp = _gpu.array_module()
    dists = _gpu.to_device(dists, xp)
    points = _gpu.to_device(points, xp)
    labels = _gpu.to_device(labels, xp)
    height, width = shape
    n, n_rays = dists.shape
    winner = xp.zeros((height, width), xp.int32)
    if n == 0:
        return winner
    # stardist.geometry.dist_to_coord's arithmetic, as the CPU path's render_coords_2d
    phis = np.linspace(0, 2 * np.pi, n_rays, endpoint=False)
    table = xp.asarray(np.array([np.sin(phis), np.cos(phis)]))
    coord = (dists[:, None] * table).astype(xp.float32)
    coord += points[..., None]
    rows = xp.ascontiguousarray(coord[:, 0])
    cols = xp.ascontiguousarray(coord[:, 1])
    # the pixel range the CPU kernel scans: int(max(0, min)), int(ceil(max)), clipped
    r0 = xp.maximum(rows.min(axis=1), 0).astype(xp.int64)
    r1 = xp.minimum(xp.ceil(rows.max(axis=1)).astype(xp.int64), height - 1)
    c0 = xp.maximum(cols.min(axis=1), 0).astype(xp.int64)
    c1 = xp.minimum(xp.ceil(cols.max(axis=1)).astype(xp.int64), width - 1)
    box = xp.stack([r0, r1, c0, c1], axis=1)
    n_rows = xp.maximum(r1 - r0 + 1, 0)
    order_pos = xp.concatenate([xp.zeros(1, xp.int64), xp.cumsum(n_rows)])
    total = int(order_pos[-1])
    if total:
        _gpu.launch(_render, total, rows, cols, box, order_pos, winner)
    lut = xp.concatenate([xp.zeros(1, xp.int32), labels.astype(xp.int32)])
    return lut[winner]


# 3D: candidates and their boxes on the device. A candidate whose box shares no volume with any
# other candidate's box is kept: StarDist's first test keeps every such pair (the bound is
# min(sphere lens, box overlap) = 0), so it neither suppresses nor is suppressed. The others go
# through StarDist's cascade in the C++ kernels on the host, with the sphere tests' axis scale
# of the whole candidate set (their rays copied once each way).


@cuda.jit(device=True)
def _rint(v):
    """Round half to even (the CPU kernel's lrint) of a float32 value, in float64."""
    f = math.floor(v)
    diff = v - f
    if diff > 0.5 or (diff == 0.5 and f % 2 != 0):
        f += 1.0
    return np.int64(f)


@cuda.jit
def _boxes_3d(d, points, verts, box):
    """The CPU kernel's voxel box of each candidate: float32 vertices, rounded, inclusive."""
    i = cuda.grid(1)
    if i >= d.shape[0]:
        return
    for k in range(3):
        box[i, 2 * k] = 2147483647
        box[i, 2 * k + 1] = -1
    for j in range(d.shape[1]):
        for k in range(3):
            prod = np.float32(np.float64(d[i, j]) * np.float64(verts[j, k]))
            r = _rint(np.float64(np.float32(np.float64(points[i, k]) + np.float64(prod))))
            box[i, 2 * k] = min(box[i, 2 * k], r)
            box[i, 2 * k + 1] = max(box[i, 2 * k + 1], r)


@cuda.jit
def _touching_3d(box, points, origin, extent, rank_of, reach, involved):
    """involved[j] = 1 when another candidate's box shares volume with j's."""
    j = cuda.grid(1)
    if j >= box.shape[0]:
        return
    lo0 = max(np.int64(0), box[j, 0] - reach - origin[0])
    hi0 = min(extent[0] - 1, box[j, 1] + reach - origin[0])
    lo1 = max(np.int64(0), box[j, 2] - reach - origin[1])
    hi1 = min(extent[1] - 1, box[j, 3] + reach - origin[1])
    lo2 = max(np.int64(0), box[j, 4] - reach - origin[2])
    hi2 = min(extent[2] - 1, box[j, 5] + reach - origin[2])
    for z in range(lo0, hi0 + 1):
        for y in range(lo1, hi1 + 1):
            for x in range(lo2, hi2 + 1):
                i = rank_of[(z * extent[1] + y) * extent[2] + x]
                if i < 0 or i == j:
                    continue
                if (min(box[i, 1], box[j, 1]) > max(box[i, 0], box[j, 0])
                        and min(box[i, 3], box[j, 3]) > max(box[i, 2], box[j, 2])
                        and min(box[i, 5], box[j, 5]) > max(box[i, 4], box[j, 4])):
                    involved[j] = 1
                    return


def nms_3d(cand_dist, cand_points, verts, faces, nms_thresh, n_threads=0):
    """Keep flags (device array) of candidates given in visiting order, plus the work counters."""
    xp = _gpu.array_module()
    cand_dist = xp.ascontiguousarray(_gpu.to_device(cand_dist, xp), dtype=xp.float32)
    points = xp.ascontiguousarray(_gpu.to_device(cand_points, xp), dtype=xp.float32)
    n = cand_dist.shape[0]
    keep = xp.ones(n, bool)
    if n == 0:
        return keep, {"candidates": 0, "kept": 0, "isolated_on_device": 0}
    _check_rays(xp, cand_dist)
    box = xp.empty((n, 6), xp.int64)
    _gpu.launch(_boxes_3d, n, cand_dist, points, xp.asarray(verts, dtype=xp.float32), box)
    # the centres on a dense map of their bounding box (they are grid multiples)
    centre = points.astype(xp.int64)
    origin = centre.min(axis=0)
    extent = centre.max(axis=0) - origin + 1
    rank_of = xp.full(int(extent.prod()), -1, xp.int64)
    rel = centre - origin
    rank_of[(rel[:, 0] * extent[1] + rel[:, 1]) * extent[2] + rel[:, 2]] = xp.arange(n, dtype=xp.int64)
    reach = int(math.ceil(float(cand_dist.max()))) + 1  # a box reaches this far from its centre
    involved = xp.zeros(n, xp.uint8)
    _gpu.launch(_touching_3d, n, box, centre, origin, extent, rank_of, reach, involved)
    # StarDist's axis scale of the whole set, as the CPU kernel measures it
    aniso = sphere_scale_3d(_gpu.to_host(box))
    subset = xp.nonzero(involved)[0]
    stats = {"candidates": n, "isolated_on_device": int(n - subset.size)}
    if subset.size:
        kept_subset, host_stats = extension().nms_3d(
            np.ascontiguousarray(_gpu.to_host(cand_dist[subset])), np.ascontiguousarray(_gpu.to_host(points[subset])),
            verts, faces, float(nms_thresh), int(n_threads), aniso=[float(a) for a in aniso])
        keep[subset] = xp.asarray(kept_subset)
        stats.update({k: v for k, v in host_stats.items() if k != "candidates"})
    stats["kept"] = int(xp.count_nonzero(keep))
    return keep, stats


def render_3d(dists, points, verts, faces, labels, shape, n_threads=0):
    xp = _gpu.array_module()
    out = extension().render_3d(np.ascontiguousarray(_gpu.to_host(dists), np.float32),
                                np.ascontiguousarray(_gpu.to_host(points), np.float32), verts, faces,
                                np.ascontiguousarray(_gpu.to_host(labels), np.int32), list(shape), int(n_threads))
    return xp.asarray(out)
