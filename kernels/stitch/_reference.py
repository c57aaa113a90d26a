"""Plain NumPy stitching kernels (the reference the compiled ones are tested against)."""
from __future__ import annotations

import numpy as np


def _slices(off, box):
    return tuple(slice(o, o + b) for o, b in zip(off, box))


def accumulate(dst, dst_off, pred, weight, src_off, box, fresh, last, count, tuner=None) -> bool:
    src = pred[(slice(None),) + _slices(src_off, box)]
    region = dst[(slice(None),) + _slices(dst_off, box)]
    # a first visit: the sum starts from zero there (dst may hold anything)
    region[(slice(None),) + tuple(slice(f, None) for f in fresh)] = 0
    region += (src * weight[_slices(src_off, box)]).astype(dst.dtype)
    if all(last):  # a last visit: the sum is complete, normalise it
        final = _slices((0,) * len(box), last)
        region[(slice(None),) + final] /= count[_slices(dst_off, box)][final]
    return bool(np.isfinite(src).all())


def zeros(shape, dtype):
    return np.zeros(shape, dtype)


def normalize(out, count) -> None:
    np.divide(out, count, out=out)


def argmax_block(acc, labels, label_off) -> None:
    labels[_slices(label_off, acc.shape[1:])] = np.argmax(acc, axis=0)
