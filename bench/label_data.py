"""Synthetic label data for the connected-component benchmark and tests.

``ct_like`` mimics a multi-organ CT segmentation: a body of soft tissue, organs as
overlapping ellipsoids of six classes, and the speckle a network leaves behind (isolated
voxels and small blobs of a wrong class, small holes). ``video_frame`` mimics a surgical
video mask at 1080p: a few instrument-like bars and blobs with noisy edges.
"""
from __future__ import annotations

import numpy as np


def _ellipsoid(shape, centre, radii, out, value):
    """Writes value into the ellipsoid's voxels, scanning only its bounding box."""
    lo = [max(0, int(c - r)) for c, r in zip(centre, radii)]
    hi = [min(s, int(c + r) + 1) for s, c, r in zip(shape, centre, radii)]
    if any(h <= l for l, h in zip(lo, hi)):
        return
    grids = np.ogrid[tuple(slice(l, h) for l, h in zip(lo, hi))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii)) <= 1.0
    view = out[tuple(slice(l, h) for l, h in zip(lo, hi))]
    view[inside] = value


def ct_like(shape=(300, 512, 512), classes=6, speckle=0.002, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vol = np.zeros(shape, np.uint8)
    z, y, x = shape
    for _ in range(4 * classes):
        c = int(rng.integers(1, classes + 1))
        centre = (rng.uniform(0.15, 0.85) * z, rng.uniform(0.25, 0.75) * y, rng.uniform(0.25, 0.75) * x)
        radii = (rng.uniform(0.05, 0.2) * z, rng.uniform(0.05, 0.15) * y, rng.uniform(0.05, 0.15) * x)
        _ellipsoid(shape, centre, radii, vol, c)
    # speckle: isolated wrong-class voxels, holes and small blobs
    n = int(speckle * vol.size)
    idx = rng.integers(0, vol.size, n)
    vol.reshape(-1)[idx] = rng.integers(0, classes + 1, n).astype(np.uint8)
    for _ in range(200):
        centre = rng.uniform(0, 1, 3) * np.array(shape)
        _ellipsoid(shape, centre, rng.uniform(1, 4, 3), vol, int(rng.integers(1, classes + 1)))
    return vol


def video_frame(shape=(1080, 1920), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    frame = np.zeros(shape, np.uint8)
    h, w = shape
    for _ in range(6):
        _ellipsoid(shape, (rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w),
                   (rng.uniform(0.05, 0.25) * h, rng.uniform(0.02, 0.2) * w), frame, 1)
    noise = rng.random(shape) < 0.01
    frame[noise] ^= 1
    return frame


def nuclei_2d(shape=(2048, 2048), n_rays=32, spacing=24, seed=0):
    """StarDist-like "perfect prediction" targets of ellipse nuclei on a jittered grid, made
    without StarDist: prob falls from 1 at a nucleus' centre to 0 at its rim, dist holds the
    exact ray lengths (directions 2 pi k / n_rays as (sin, cos)) to the rim. Nuclei do not touch.

    Returns (prob (H, W) float32, dist (H, W, n_rays) float32).
    """
    rng = np.random.default_rng(seed)
    prob = np.zeros(shape, np.float32)
    dist = np.zeros(shape + (n_rays,), np.float32)
    phis = 2 * np.pi * np.arange(n_rays) / n_rays
    uy, ux = np.sin(phis), np.cos(phis)
    half = spacing / 2 - 1
    for cy in np.arange(spacing / 2, shape[0] - spacing / 2, spacing):
        for cx in np.arange(spacing / 2, shape[1] - spacing / 2, spacing):
            a, b = rng.uniform(0.5 * half, half), rng.uniform(0.5 * half, half)  # semi-axes
            theta = rng.uniform(0, np.pi)
            y0, x0 = cy + rng.uniform(-1, 1), cx + rng.uniform(-1, 1)
            ys, xs = np.mgrid[int(y0 - half):int(y0 + half) + 1, int(x0 - half):int(x0 + half) + 1]
            c, s = np.cos(theta), np.sin(theta)

            def frame(vy, vx):  # into the ellipse's unit-circle frame
                return (c * vx + s * vy) / a, (-s * vx + c * vy) / b

            qx, qy = frame(ys - y0, xs - x0)
            rho = np.sqrt(qx ** 2 + qy ** 2)
            inside = rho < 1
            qx, qy = qx[inside][:, None], qy[inside][:, None]
            vx, vy = frame(uy[None, :], ux[None, :])  # each ray direction in that frame
            uu = vx ** 2 + vy ** 2
            qu = qx * vx + qy * vy
            t = (-qu + np.sqrt(qu ** 2 - uu * (qx ** 2 + qy ** 2 - 1))) / uu
            yy, xx = ys[inside], xs[inside]
            prob[yy, xx] = 1 - rho[inside]
            dist[yy, xx] = t
    return prob, dist
