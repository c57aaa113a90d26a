"""GPU label blending: one thread per frame pixel looks up its label at the pixel's centre and
blends its colour in integers, as the CPU kernel does (byte-identical). Numba CUDA on CuPy
arrays (NumPy under the simulator); in place when ``out`` is the frame (each thread reads and
writes its own pixel)."""
from __future__ import annotations

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
    _blend[_gpu.blocks(n), _gpu.THREADS](frame, labels, palette, int(a), out)
    return out
