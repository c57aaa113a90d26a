"""Sliding-window stitching: window planning, importance maps, weighted accumulation and
the streamed argmax (the pieces ``segrt.engine.sliding_window`` is built from).

Window positions and importance maps are MONAI's (``monai.inferers.sliding_window_inference``,
MONAI 1.x): per axis the step is ``int(roi * (1 - overlap))`` (at least 1; the whole axis
when the roi spans it), windows start at multiples of the step, and the last one is pulled
back to end at the border; the gaussian map is the outer product of 1D gaussians
``exp(-x^2 / (2 (sigma_scale * roi)^2))`` about the window centre, in float32, floored at
1e-3.

Each kernel has a NumPy reference (``device="reference"``) and a C++ version
(``device="cpu"``, in place, no temporaries, both cores). The array module is chosen in one
place (``array_module``) so the GPU path can slot in later.
"""
from __future__ import annotations

import functools
import itertools
import math
import time

import numpy as np

from segrt.kernels import _ext

__all__ = ["array_module", "scan_intervals", "window_grid", "windows", "pad_widths", "importance_map", "ThreadTuner",
           "zeros", "accumulate", "normalize", "argmax_block"]


def array_module(arr):
    """The array module an array lives in (NumPy today; CuPy arrays are refused for now)."""
    if hasattr(arr, "__cuda_array_interface__"):
        raise NotImplementedError("GPU stitching is not implemented yet; pass NumPy arrays")
    return np


def scan_intervals(image_size, roi_size, overlap) -> tuple[int, ...]:
    """MONAI's step per axis: ``int(roi * (1 - overlap))``, at least 1, the roi where it spans the axis."""
    out = []
    for size, roi, ov in zip(image_size, roi_size, overlap):
        if roi == size:
            out.append(int(roi))
        else:
            step = int(roi * (1 - ov))
            out.append(step if step > 0 else 1)
    return tuple(out)


def window_grid(image_size, roi_size, overlap) -> list[list[int]]:
    """Window start positions along each axis (image_size already padded to >= roi)."""
    steps = scan_intervals(image_size, roi_size, overlap)
    grid = []
    for size, roi, step in zip(image_size, roi_size, steps):
        num = int(math.ceil(float(size) / step))
        count = next((d + 1 for d in range(num) if d * step + roi >= size), 1)
        grid.append([i * step - max(i * step + roi - size, 0) for i in range(count)])
    return grid


def windows(image_size, roi_size, overlap) -> list[tuple[int, ...]]:
    """All window starts, last axis fastest (MONAI's order)."""
    return list(itertools.product(*window_grid(image_size, roi_size, overlap)))


def pad_widths(image_size, roi_size) -> list[tuple[int, int]]:
    """(before, after) padding per axis so the image is at least the roi (MONAI: floor half before)."""
    out = []
    for size, roi in zip(image_size, roi_size):
        diff = max(roi - size, 0)
        out.append((diff // 2, diff - diff // 2))
    return out


@functools.lru_cache(maxsize=32)
def _importance_map(roi_size: tuple, mode: str, sigma_scale: tuple, dtype: str) -> np.ndarray:
    if mode == "constant":
        imp = np.ones(roi_size, np.float32)
    elif mode == "gaussian":
        imp = None
        for n, s in zip(roi_size, sigma_scale):
            sigma = n * s
            x = (np.arange(n, dtype=np.float64) - (n - 1) / 2.0).astype(np.float32)
            g = np.exp(x * x / np.float32(-2 * sigma**2)).astype(np.float32)
            imp = g if imp is None else np.multiply.outer(imp, g).astype(np.float32)
    else:
        raise ValueError(f"mode must be 'constant' or 'gaussian', got {mode!r}")
    imp = np.maximum(imp, max(float(imp.min()), 1e-3)).astype(np.float32).astype(dtype)
    imp.setflags(write=False)
    return imp


def importance_map(roi_size, mode="constant", sigma_scale=0.125, dtype=np.float32) -> np.ndarray:
    """MONAI's importance map for a window (cached per roi / mode / sigma / dtype; read-only)."""
    roi = tuple(int(r) for r in roi_size)
    if isinstance(sigma_scale, (int, float)):
        sigma = (float(sigma_scale),) * len(roi)
    else:
        sigma = tuple(float(s) for s in sigma_scale)
        if len(sigma) != len(roi):
            raise ValueError(f"sigma_scale needs {len(roi)} values, got {len(sigma)}")
    return _importance_map(roi, str(mode), sigma, np.dtype(dtype).name)


# Below this many values a kernel runs on the calling thread: waking a thread team costs more
# than it saves there, and right after an ONNX Runtime call its spinning workers still hold
# the cores (measured: 3 ms instead of 36 ms of stitching for 8 windows of 3 x 32x48x48).
_PARALLEL_MIN = 1_000_000


def _threads(n_values: int, at: int = 8 * _PARALLEL_MIN) -> int:
    """All threads (0) from ``at`` values on, else the calling thread (1)."""
    return 0 if n_values >= at else 1


class ThreadTuner:
    """Picks one thread or all for the accumulation of one sliding-window run by timing both
    on its first large windows: whether a thread team pays depends on what the predictor
    leaves running on the cores (ONNX Runtime's spinning workers, torch's pool), which only
    a measurement tells."""

    def __init__(self):
        self.samples = {1: [], 0: []}
        self.choice = None

    def threads(self, n_values: int) -> int:
        if n_values < _PARALLEL_MIN:
            return 1
        if self.choice is not None:
            return self.choice
        return 1 if len(self.samples[1]) <= len(self.samples[0]) else 0

    def record(self, threads: int, n_values: int, seconds: float) -> None:
        if self.choice is None and n_values >= _PARALLEL_MIN:
            self.samples[threads].append(seconds / n_values)
            if min(len(v) for v in self.samples.values()) >= 2:
                self.choice = min(self.samples, key=lambda t: min(self.samples[t]))


def _slices(off, box):
    return tuple(slice(o, o + b) for o, b in zip(off, box))


def accumulate(dst, dst_off, pred, weight, *, src_off=None, box=None, device="cpu", tuner=None) -> None:
    """``dst[:, dst_off + p] += pred[:, src_off + p] * weight[src_off + p]`` over a box, in place.

    dst: (C, *S) float32 / float64, C-contiguous; pred: (C, *roi); weight: (*roi) of dst's
    dtype. The box defaults to the whole window. tuner: a ThreadTuner shared by the calls of
    one run (otherwise large boxes use all threads).
    """
    nd = pred.ndim - 1
    src_off = tuple(src_off) if src_off is not None else (0,) * nd
    box = tuple(box) if box is not None else tuple(pred.shape[1:])
    if device == "reference":
        dst[(slice(None),) + _slices(dst_off, box)] += (
            pred[(slice(None),) + _slices(src_off, box)] * weight[_slices(src_off, box)]).astype(dst.dtype)
        return
    n_values = pred.shape[0] * int(np.prod(box))
    threads = tuner.threads(n_values) if tuner is not None else _threads(n_values)
    t0 = time.perf_counter()
    _ext.extension().stitch_fma(dst, pred, weight, list(dst_off), list(src_off), list(box), threads)
    if tuner is not None:
        tuner.record(threads, n_values, time.perf_counter() - t0)


def zeros(shape, dtype, *, device="cpu") -> np.ndarray:
    """A zeroed output buffer; large ones are cleared on all cores (their first touch is where
    the OS clears the pages, so doing it in parallel halves that cost)."""
    if device == "reference" or _threads(int(np.prod(shape)), at=4 * _PARALLEL_MIN):
        return np.zeros(shape, dtype)
    out = np.empty(shape, dtype)
    _ext.extension().stitch_zero(out, 0)
    return out


def normalize(out, count, *, device="cpu") -> None:
    """``out[..., p] /= count[p]`` in place (out: (N, C, *S), count: (*S))."""
    if device == "reference":
        np.divide(out, count, out=out)
        return
    _ext.extension().stitch_divide(out, count, _threads(out.size, at=4 * _PARALLEL_MIN))


def argmax_block(acc, labels, label_off, *, device="cpu") -> None:
    """``labels[label_off + p] = argmax_c acc[c, p]`` for a whole (C, *B) block (first maximum wins)."""
    if device == "reference":
        labels[_slices(label_off, acc.shape[1:])] = np.argmax(acc, axis=0)
        return
    _ext.extension().stitch_argmax(acc, labels, list(label_off), _threads(acc.size))
