"""Sliding-window stitching: window planning, importance maps, weighted accumulation and
the streamed argmax (the pieces ``segrt.engine.sliding_window`` is built from).

Window positions and importance maps are MONAI's (``monai.inferers.sliding_window_inference``,
MONAI 1.x): per axis the step is ``int(roi * (1 - overlap))`` (at least 1; the whole axis
when the roi spans it), windows start at multiples of the step, and the last one is pulled
back to end at the border; the gaussian map is the outer product of 1D gaussians
``exp(-x^2 / (2 (sigma_scale * roi)^2))`` about the window centre, in float32, floored at
1e-3.

Planning (``windows``, ``window_grid``, ``pad_widths``, ``importance_map``) is plain Python for
every device. The array kernels (``zeros``, ``accumulate``, ``normalize``, ``argmax_block``)
have a NumPy reference (``device="reference"``, ``_reference.py``), a C++ version
(``device="cpu"``, ``_cpu.py``: in place, no temporaries, all cores for large blocks) and a GPU
version (``device="cuda"``, ``_cuda.py``: the weighted accumulate as a Numba CUDA kernel on
CuPy arrays, within float rounding of the others); ``"auto"`` follows the data (see
``segrt.kernels._device``).
"""
from __future__ import annotations

import functools
import itertools
import math

import numpy as np

from segrt.kernels import _device
from segrt.kernels.stitch._cpu import ThreadTuner  # timing-based thread choice of the compiled kernel

__all__ = ["scan_intervals", "window_grid", "windows", "pad_widths", "importance_map", "ThreadTuner", "zeros",
           "accumulate", "normalize", "argmax_block", "resolve_device", "IMPLEMENTATIONS", "MODES", "PLACEMENTS"]

# the dispatch table: device -> implementation module (same function names in each)
IMPLEMENTATIONS = {"reference": "segrt.kernels.stitch._reference", "cpu": "segrt.kernels.stitch._cpu",
                   "cuda": "segrt.kernels.stitch._cuda"}


def _implementation(device, *arrays):
    return _device.implementation("stitch", IMPLEMENTATIONS, device, *arrays)[1]


def resolve_device(device, *arrays) -> str:
    """The device the stitching kernels run on for these arrays ("auto" resolved once per run)."""
    return _device.resolve("stitch", IMPLEMENTATIONS, device, *arrays)


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


PLACEMENTS = ("monai", "nnunet")


def _nnunet_starts(size: int, roi: int, overlap: float) -> list[int]:
    """nnU-Net v2's window starts: ceil((size - roi) / (roi * step)) + 1 windows spread evenly
    from 0 to size - roi (step = 1 - overlap), rounded half to even as NumPy rounds."""
    target = roi * (1.0 - overlap)
    count = int(math.ceil((size - roi) / target)) + 1
    if count == 1:
        return [0]
    actual = (size - roi) / (count - 1)
    return [int(np.round(actual * i)) for i in range(count)]


def window_grid(image_size, roi_size, overlap, placement="monai") -> list[list[int]]:
    """Window start positions along each axis (image_size already padded to >= roi), placed as
    MONAI does (default: steps of int(roi * (1 - overlap)), the last window flush with the end)
    or as nnU-Net v2 does ("nnunet": evenly spread)."""
    if placement == "nnunet":
        return [_nnunet_starts(int(n), int(r), float(o)) for n, r, o in zip(image_size, roi_size, overlap)]
    if placement != "monai":
        raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
    steps = scan_intervals(image_size, roi_size, overlap)
    grid = []
    for size, roi, step in zip(image_size, roi_size, steps):
        num = int(math.ceil(float(size) / step))
        count = next((d + 1 for d in range(num) if d * step + roi >= size), 1)
        grid.append([i * step - max(i * step + roi - size, 0) for i in range(count)])
    return grid


def windows(image_size, roi_size, overlap, placement="monai") -> list[tuple[int, ...]]:
    """All window starts, last axis fastest (MONAI's order)."""
    return list(itertools.product(*window_grid(image_size, roi_size, overlap, placement)))


def pad_widths(image_size, roi_size) -> list[tuple[int, int]]:
    """(before, after) padding per axis so the image is at least the roi (MONAI: floor half before)."""
    out = []
    for size, roi in zip(image_size, roi_size):
        diff = max(roi - size, 0)
        out.append((diff // 2, diff - diff // 2))
    return out


MODES = ("constant", "gaussian", "gaussian_nnunet")


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
    elif mode == "gaussian_nnunet":
        # nnU-Net v2's map: a unit impulse at roi // 2 blurred (scipy, zero outside), scaled to a
        # maximum of 1; zeros take the smallest non-zero value
        from scipy import ndimage

        delta = np.zeros(roi_size, np.float64)
        delta[tuple(n // 2 for n in roi_size)] = 1.0
        g = ndimage.gaussian_filter(delta, [n * s for n, s in zip(roi_size, sigma_scale)], 0, mode="constant",
                                    cval=0)
        g /= g.max()
        g[g == 0] = g[g > 0].min()
        imp = g.astype(np.float32).astype(dtype)
        imp.setflags(write=False)
        return imp
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    imp = np.maximum(imp, max(float(imp.min()), 1e-3)).astype(np.float32).astype(dtype)
    imp.setflags(write=False)
    return imp


def importance_map(roi_size, mode="constant", sigma_scale=0.125, dtype=np.float32) -> np.ndarray:
    """The importance map of a window (cached per roi / mode / sigma / dtype; read-only): MONAI's
    ("constant", "gaussian") or nnU-Net v2's ("gaussian_nnunet")."""
    roi = tuple(int(r) for r in roi_size)
    if isinstance(sigma_scale, (int, float)):
        sigma = (float(sigma_scale),) * len(roi)
    else:
        sigma = tuple(float(s) for s in sigma_scale)
        if len(sigma) != len(roi):
            raise ValueError(f"sigma_scale needs {len(roi)} values, got {len(sigma)}")
    return _importance_map(roi, str(mode), sigma, np.dtype(dtype).name)


def accumulate(dst, dst_off, pred, weight, *, src_off=None, box=None, fresh=None, last=None, count=None,
               device="auto", tuner=None) -> bool:
    """``dst[:, dst_off + q] += pred[:, src_off + q] * weight[src_off + q]`` for q in a box, in place.

    dst: (C, *S) float32 / float64, C-contiguous; pred: (C, *roi); weight: (*roi) of dst's
    dtype. The box defaults to the whole window. A sliding-window run folds a voxel's first and
    last visit into this pass (so its sum needs neither a zeroing pass before nor a normalising
    pass after): where q >= ``fresh`` on every axis the sum is assigned, not added (dst may hold
    anything there), and where q < ``last`` on every axis it is then divided by
    ``count[dst_off + q]`` (count: dst's spatial shape). fresh defaults to the box (add
    everywhere), last to nothing. tuner: a ThreadTuner shared by the calls of one run (the
    compiled kernel; otherwise large boxes use all threads).

    Returns False when a value read from pred is NaN or infinite (the blended result is then
    wrong there), True otherwise.
    """
    nd = pred.ndim - 1
    src_off = tuple(src_off) if src_off is not None else (0,) * nd
    box = tuple(box) if box is not None else tuple(pred.shape[1:])
    fresh = tuple(fresh) if fresh is not None else box
    last = tuple(last) if last is not None else (0,) * nd
    if any(int(v) < 0 for v in fresh + last) or len(fresh) != nd or len(last) != nd:
        raise ValueError(f"accumulate: fresh and last need {nd} non-negative offsets, got {fresh} and {last}")
    if all(last) and count is None:
        raise ValueError("accumulate: a last box divides by the count map; pass count=")
    return bool(_implementation(device, dst, pred).accumulate(dst, tuple(dst_off), pred, weight, src_off, box, fresh,
                                                              last, count, tuner))


def zeros(shape, dtype, *, device="auto"):
    """A zeroed output buffer (large ones cleared on all cores by the compiled kernel: the first
    touch is where the OS clears the pages, so doing it in parallel halves that cost)."""
    return _implementation(device).zeros(tuple(shape), dtype)


def normalize(out, count, *, device="auto") -> None:
    """``out[..., p] /= count[p]`` in place (out: (N, C, *S), count: (*S))."""
    _implementation(device, out, count).normalize(out, count)


def argmax_block(acc, labels, label_off, *, device="auto") -> None:
    """``labels[label_off + p] = argmax_c acc[c, p]`` for a whole (C, *B) block (first maximum wins)."""
    _implementation(device, acc, labels).argmax_block(acc, labels, tuple(label_off))
