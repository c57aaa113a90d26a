"""Class colours blended into video frames: the colour half of ``segrt video``'s overlay.

Pinned semantics of ``blend_labels(frame, labels, palette, alpha)``:

- ``labels`` (h, w) may be smaller or larger than ``frame`` (H, W, 3): frame pixel (Y, X) takes the
  label at the pixel that holds its centre, ``((2 Y + 1) h) // (2 H)`` (and the same for X),
  in exact integers; that is OpenCV's ``INTER_NEAREST`` where H / h and W / w are integers.
- Where the label is 0 the frame is copied; elsewhere each channel becomes
  ``(frame * (256 - a) + colour * a + 128) >> 8`` with ``a = round(alpha * 256)`` and
  ``colour = palette[min(label, K - 1)]`` (labels past the palette take its last colour).
  That is ``cv2.addWeighted(frame, 1 - alpha, colour, alpha, 0)`` to within one level, in
  integers, so the reference and the kernel agree exactly.

Implementations (``device=``, see ``segrt.kernels._device``): ``"reference"``
(``_reference.py``: a full-size label image, a colour image, a blend, a select, in NumPy),
``"cpu"`` (``_cpu.py``: C++ that copies the frame and blends only the runs of labelled pixels,
in one pass without temporaries; its speed against the OpenCV calls it replaces is the
"overlay colours" row of ``python -m segrt.bench pipeline``) and ``"cuda"`` (``_cuda.py``: one
thread per pixel, Numba CUDA on CuPy arrays; a host frame is copied to the GPU once).
"""
from __future__ import annotations

import numpy as np

from segrt.kernels import _device

__all__ = ["blend_labels", "IMPLEMENTATIONS"]

# the dispatch table: device -> implementation module (same function names in each)
IMPLEMENTATIONS = {"reference": "segrt.kernels.overlay._reference", "cpu": "segrt.kernels.overlay._cpu",
                   "cuda": "segrt.kernels.overlay._cuda"}


def _alpha_level(alpha) -> int:
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}") from None
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0: frame only, 1: class colours only), got {alpha!r}")
    return int(round(a * 256))


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "ndim")


def _check(frame, labels, palette, out):
    if not _is_array(frame) or frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be an (H, W, 3) uint8 image, got "
                         f"{getattr(frame, 'shape', type(frame).__name__)} {getattr(frame, 'dtype', '')}")
    if not _is_array(labels) or labels.ndim != 2 or labels.dtype.kind not in "uib":
        raise ValueError(f"labels must be a 2D integer array, got {getattr(labels, 'shape', type(labels).__name__)} "
                         f"{getattr(labels, 'dtype', '')}")
    if labels.size == 0:
        raise ValueError(f"labels must not be empty, got shape {labels.shape}")
    if labels.dtype.kind == "i" and labels.size and int(labels.min()) < 0:
        raise ValueError("labels must be >= 0 (0 is background)")
    palette = np.asarray(palette) if not _device.on_gpu(palette) else palette
    if palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= len(palette) <= 256 or palette.dtype != np.uint8:
        raise ValueError(f"palette must be a (K, 3) uint8 array of colours, K <= 256, got {palette.shape} {palette.dtype}")
    if out is not None and (not _is_array(out) or out.dtype != np.uint8 or out.shape != frame.shape
                            or not out.flags.c_contiguous or _device.on_gpu(out) != _device.on_gpu(frame)):
        raise ValueError(f"out must be a C-contiguous uint8 array of the frame's shape {frame.shape}, where the "
                         "frame is (host or GPU)")
    if out is not None and out is not frame and not _device.on_gpu(out) and np.shares_memory(out, frame):
        raise ValueError("out may be the frame itself, or memory apart from it, not a part of it")
    return palette


def blend_labels(frame, labels, palette, alpha, *, out=None, device="auto"):
    """``frame`` with class colours blended in where ``labels`` are set (semantics above).

    Args:
        frame: (H, W, 3) uint8 image.
        labels: (h, w) class labels, any size (0: background, left as it is).
        palette: (K, 3) uint8 colours by label value (row 0 unused).
        alpha: colour opacity in [0, 1].
        out: where to write (the frame itself for in place; default a new array).
        device: "auto", "reference", "cpu" or "cuda" (see ``segrt.kernels._device``).
    """
    dev, impl = _device.implementation("overlay", IMPLEMENTATIONS, device, frame, labels)
    palette = _check(frame, labels, palette, out)
    a = _alpha_level(alpha)
    if dev == "cuda":  # a device frame stays there; a host frame is copied once (the result is on the GPU)
        from segrt.kernels import gpu as _gpu

        xp = _gpu.array_module()
        frame, labels, palette = (_gpu.to_device(v, xp) for v in (frame, labels, palette))
        if out is not None:
            out = _gpu.to_device(out, xp)
    else:
        xp = np
    frame = xp.ascontiguousarray(frame)
    lab = labels if labels.dtype == np.uint8 else xp.minimum(labels, 255).astype(np.uint8)
    if out is None:
        out = xp.empty_like(frame)
    impl.blend_labels(frame, xp.ascontiguousarray(lab), xp.ascontiguousarray(palette), a, out)
    return out
