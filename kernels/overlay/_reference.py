"""Plain NumPy video frame kernels: label blending and network inputs (the references the
fast kernels are tested against)."""
from __future__ import annotations

import numpy as np


def _source_index(n_dst: int, n_src: int) -> np.ndarray:
    return ((2 * np.arange(n_dst, dtype=np.int64) + 1) * n_src) // (2 * n_dst)


def blend_labels(frame, labels, palette, a, out):
    H, W = frame.shape[:2]
    full = labels[_source_index(H, labels.shape[0])][:, _source_index(W, labels.shape[1])]
    colour = palette[np.minimum(full, len(palette) - 1)].astype(np.uint16)
    blended = ((frame.astype(np.uint16) * (256 - a) + colour * a + 128) >> 8).astype(np.uint8)
    np.copyto(out, np.where((full != 0)[..., None], blended, frame))
    return out


def _area_weights(n_dst: int, n_src: int) -> np.ndarray:
    """(n_dst, n_src) integer overlaps: destination pixel d spans [d n_src, (d + 1) n_src) and
    source pixel s spans [s n_dst, (s + 1) n_dst) on a common integer axis; each row sums to n_src."""
    d = np.arange(n_dst, dtype=np.int64)[:, None]
    s = np.arange(n_src, dtype=np.int64)[None, :]
    return np.maximum(0, np.minimum((d + 1) * n_src, (s + 1) * n_dst) - np.maximum(d * n_src, s * n_dst))


def area_resize(plane: np.ndarray, shape) -> np.ndarray:
    """uint8 area average with exact integer weights, rounded half to even."""
    wy, wx = _area_weights(shape[0], plane.shape[0]), _area_weights(shape[1], plane.shape[1])
    total = plane.shape[0] * plane.shape[1]
    sums = wy @ plane.astype(np.int64) @ wx.T
    q, r = np.divmod(sums, total)
    up = (2 * r > total) | ((2 * r == total) & (q % 2 == 1))
    return (q + up).astype(np.uint8)


def grey(bgr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR2GRAY for uint8: (1868 B + 9617 G + 4899 R + 2^13) >> 14."""
    b, g, r = (bgr[..., k].astype(np.int64) for k in range(3))
    return ((1868 * b + 9617 * g + 4899 * r + 8192) >> 14).astype(np.uint8)


def network_input(frame, scale, shift, out):
    h, w = out.shape[1:]
    if out.shape[0] == 1:  # resized first, then grey (as the host path's OpenCV calls)
        small = np.stack([area_resize(frame[..., k], (h, w)) for k in range(3)], -1) if frame.ndim == 3 else None
        planes = [grey(small) if small is not None else area_resize(frame, (h, w))]
    else:
        planes = [area_resize(frame[..., 2 - c] if frame.ndim == 3 else frame, (h, w)) for c in range(3)]
    for c, plane in enumerate(planes):
        np.multiply(plane, scale, out=out[c], casting="unsafe")
        out[c] += shift
    return out
