"""GPU video frame kernels, Numba CUDA on CuPy arrays (NumPy under the simulator).

Label blending: one thread per frame pixel looks up its label at the pixel's centre and blends
its colour in integers, as the CPU kernel does (byte-identical); in place when ``out`` is the
frame (each thread reads and writes its own pixel).

Network input: one thread per input pixel sums the frame pixels its area covers with exact
integer weights (the reference's arithmetic), rounds half to even, converts to grey with
OpenCV's fixed-point weights where one channel is wanted, and scales in float32 (each product
rounded to float32 before the shift is added, as NumPy does on the host)."""
from __future__ import annotations

import numpy as np

from segrt.kernels import gpu as _gpu

# the kernels refer to the module-level ``cuda`` so that Numba's simulator can stand in for it
cuda = _gpu.cuda()


@cuda.jit
def _blend(frame, labels, palette, a, out):
    i = cuda.grid(1)
    H, W = frame.shape[0], frame.shape[1]
    if i >= H * W:
        return
    Y = i // W
    X = i % W
    h, w = labels.shape[0], labels.shape[1]
    lab = labels[((2 * Y + 1) * h) // (2 * H), ((2 * X + 1) * w) // (2 * W)]
    if lab == 0:
        for c in range(3):
            out[Y, X, c] = frame[Y, X, c]
        return
    k = lab if lab < palette.shape[0] else palette.shape[0] - 1
    for c in range(3):
        out[Y, X, c] = (int(frame[Y, X, c]) * (256 - a) + int(palette[k, c]) * a + 128) >> 8


def blend_labels(frame, labels, palette, a, out):
    xp = _gpu.array_module()
    frame, labels, palette = (_gpu.to_device(v, xp) for v in (frame, labels, palette))
    n = frame.shape[0] * frame.shape[1]
    _gpu.launch(_blend, n, frame, labels, palette, int(a), out)
    return out


@cuda.jit(device=True)
def _area_value(frame, channel, y, x, h, w):
    """The area average of one channel (2 = R of BGR; -1: a 2D frame) at input pixel (y, x)."""
    H = frame.shape[0]
    W = frame.shape[1]
    total = np.int64(H) * W
    s = np.int64(0)
    for i in range((y * H) // h, ((y + 1) * H + h - 1) // h):
        wy = min((y + 1) * H, (i + 1) * h) - max(y * H, i * h)
        if wy <= 0:
            continue
        for j in range((x * W) // w, ((x + 1) * W + w - 1) // w):
            wx = min((x + 1) * W, (j + 1) * w) - max(x * W, j * w)
            if wx <= 0:
                continue
            v = frame[i, j] if channel < 0 else frame[i, j, channel]
            s += np.int64(wy) * wx * v
    q = s // total
    r = s - q * total
    if 2 * r > total or (2 * r == total and q % 2 == 1):
        q += 1
    return q


@cuda.jit
def _network_input(frame, colour, scale, shift, out):
    t = cuda.grid(1)
    h = out.shape[1]
    w = out.shape[2]
    if t >= h * w:
        return
    y = t // w
    x = t % w
    if out.shape[0] == 1:
        if colour:
            b = _area_value(frame, 0, y, x, h, w)
            g = _area_value(frame, 1, y, x, h, w)
            r = _area_value(frame, 2, y, x, h, w)
            v = (1868 * b + 9617 * g + 4899 * r + 8192) >> 14
        else:
            v = _area_value(frame, -1, y, x, h, w)
        out[0, y, x] = np.float32(np.float64(v) * np.float64(scale)) + shift
        return
    for c in range(3):
        v = _area_value(frame, 2 - c, y, x, h, w) if colour else _area_value(frame, -1, y, x, h, w)
        out[c, y, x] = np.float32(np.float64(v) * np.float64(scale)) + shift


def network_input(frame, scale, shift, out):
    xp = _gpu.array_module()
    frame = _gpu.to_device(frame, xp)
    n = out.shape[1] * out.shape[2]
    _gpu.launch(_network_input, n, frame, frame.ndim == 3, np.float32(scale), np.float32(shift), out)
    return out
