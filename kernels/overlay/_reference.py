"""Plain NumPy label blending (the reference the compiled kernel equals exactly)."""
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
