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
