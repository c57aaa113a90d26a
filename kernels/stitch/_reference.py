"""Plain NumPy stitching kernels (the reference the compiled ones are tested against)."""
from __future__ import annotations

import numpy as np


def _slices(off, box):
    return tuple(slice(o, o + b) for o, b in zip(off, box))


def accumulate(dst, dst_off, pred, weight, src_off, box, tuner=None) -> None:
    dst[(slice(None),) + _slices(dst_off, box)] += (
        pred[(slice(None),) + _slices(src_off, box)] * weight[_slices(src_off, box)]).astype(dst.dtype)


def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def normalize(out, count) -> None:
    np.divide(out, count, out=out)


def argmax_block(acc, labels, label_off) -> None:
    labels[_slices(label_off, acc.shape[1:])] = np.argmax(acc, axis=0)
