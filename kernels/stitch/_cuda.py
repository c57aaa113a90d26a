"""GPU stitching kernels: the fused weighted accumulate as a Numba CUDA kernel (one thread per
output value of the box: no temporary for prediction x weight), the normalisation and the
argmax as array operations on the device. CuPy arrays on a GPU, NumPy under the simulator.

On a GPU the compiler may fuse ``dst + pred * weight`` into one multiply-add, rounding once
where the CPU kernel rounds twice: results agree to float rounding (1e-6 relative), not bit
for bit."""
from __future__ import annotations

import math

from segrt.kernels import gpu as _gpu

# the kernels refer to the module-level ``cuda`` so that Numba's simulator can stand in for it
cuda = _gpu.cuda()


@cuda.jit
def _fma(dst, pred, weight, d0, d1, d2, s0, s1, s2, b0, b1, b2, f0, f1, f2, l0, l1, l2, count, bad):
    i = cuda.grid(1)
    per_channel = b0 * b1 * b2
    if i >= dst.shape[0] * per_channel:
        return
    c = i // per_channel
    r = i % per_channel
    z = r // (b1 * b2)
    y = (r // b2) % b1
    x = r % b2
    v = pred[c, s0 + z, s1 + y, s2 + x]
    if not math.isfinite(v):
        bad[0] = 1
    term = v * weight[s0 + z, s1 + y, s2 + x]
    if z >= f0 and y >= f1 and x >= f2:  # the voxel's first visit
        total = term
    else:
        total = dst[c, d0 + z, d1 + y, d2 + x] + term
    if z < l0 and y < l1 and x < l2:  # its last visit: the sum is complete
        total = total / count[d0 + z, d1 + y, d2 + x]
    dst[c, d0 + z, d1 + y, d2 + x] = total


def _as3d(a, channels: bool):
    """A view with exactly three spatial axes (a leading 1 for 2D data)."""
    spatial = a.ndim - (1 if channels else 0)
    return a.reshape(a.shape[:1] + (1,) * (3 - spatial) + a.shape[1:]) if channels else \
        a.reshape((1,) * (3 - spatial) + a.shape)


def _pad3(t):
    return (0,) * (3 - len(t)) + tuple(int(v) for v in t)


def accumulate(dst, dst_off, pred, weight, src_off, box, fresh, last, count, tuner=None) -> bool:
    xp = _gpu.array_module()
    pred, weight = _gpu.to_device(pred, xp), _gpu.to_device(weight, xp)
    d, p, w = _as3d(dst, True), _as3d(pred, True), _as3d(weight, False)
    (d0, d1, d2), (s0, s1, s2), (b0, b1, b2) = _pad3(dst_off), _pad3(src_off), (1,) * (3 - len(box)) + tuple(box)
    f0, f1, f2 = _pad3(fresh)
    l0, l1, l2 = (1,) * (3 - len(last)) + tuple(int(v) for v in last)
    if not (l0 and l1 and l2):
        l0 = l1 = l2 = 0
        count = xp.empty((1, 1, 1), dst.dtype)  # never read: a placeholder of the right rank (not a view
        # of dst: host arrays are copied back after a simulated launch, a view would undo the writes)
    else:
        count = _as3d(_gpu.to_device(count, xp), False)
    bad = xp.zeros(1, xp.int32)
    n = d.shape[0] * b0 * b1 * b2
    if n:
        _gpu.launch(_fma, n, d, p, w, d0, d1, d2, s0, s1, s2, b0, b1, b2, f0, f1, f2, l0, l1, l2, count, bad)
    return not bool(bad[0])  # one flag read per window: the check NaN scores need


def zeros(shape, dtype):
    return _gpu.array_module().zeros(shape, dtype)


def normalize(out, count) -> None:
    xp = _gpu.array_module()
    xp.divide(out, _gpu.to_device(count, xp), out=out)


def argmax_block(acc, labels, label_off) -> None:
    xp = _gpu.array_module()
    block = tuple(slice(o, o + s) for o, s in zip(label_off, acc.shape[1:]))
    labels[block] = xp.argmax(_gpu.to_device(acc, xp), axis=0)  # the first maximum wins, as on the CPU
