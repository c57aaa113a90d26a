"""Video frame kernels: class colours blended into frames (the colour half of ``segrt video``'s
overlay), and frames made into a network's input planes.

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

Pinned semantics of ``network_input(frame, window, scale, shift, channels)``:

- The frame (H, W, 3) BGR or (H, W) grey uint8 is resized to the window (h, w) by area
  averaging: input pixel (y, x) averages the frame over ``[y H / h, (y + 1) H / h)`` x
  ``[x W / w, (x + 1) W / w)`` with each frame pixel weighted by the area it covers, rounded
  to a uint8 level (the reference and the GPU kernel in exact integers, ties to even; the CPU
  implementation is OpenCV's ``INTER_AREA``, within one level of that).
- One channel: the resized BGR planes become grey by OpenCV's fixed-point weights
  ``(1868 B + 9617 G + 4899 R + 2^13) >> 14``; three channels: RGB planes.
- Each level v becomes ``float32(v * scale) + shift`` in float32.
"""
from __future__ import annotations

import numpy as np

from segrt.kernels import _device

__all__ = ["blend_labels", "network_input", "IMPLEMENTATIONS"]

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


def network_input(frame, window, scale=1.0 / 255.0, shift=0.0, channels=3, *, out=None, device="auto"):
    """A video frame as the network's (channels, h, w) float32 input (semantics above).

    Args:
        frame: (H, W, 3) BGR or (H, W) grey uint8 image.
        window: (h, w) of the network's input.
        scale, shift: each level v becomes ``v * scale + shift``.
        channels: 1 (grey) or 3 (RGB planes).
        out: a C-contiguous (channels, h, w) float32 array where the frame is (host or GPU) to
            write into (a pipeline's reused batch); default a new one.
        device: "auto", "reference", "cpu" or "cuda".
    """
    dev, impl = _device.implementation("overlay", IMPLEMENTATIONS, device, frame)
    if not _is_array(frame) or frame.dtype != np.uint8 or not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] == 3)):
        raise ValueError(f"frame must be an (H, W, 3) BGR or (H, W) grey uint8 image, got "
                         f"{getattr(frame, 'shape', type(frame).__name__)} {getattr(frame, 'dtype', '')}")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise ValueError(f"frame must not be empty, got shape {frame.shape}")
    try:
        h, w = (int(v) for v in window)
    except (TypeError, ValueError):
        raise ValueError(f"window must be (h, w) positive integers, got {window!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"window must be (h, w) positive integers, got {window!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    try:
        scale32, shift32 = np.float32(scale), np.float32(shift)
    except (TypeError, ValueError):
        raise ValueError(f"scale and shift must be numbers, got {scale!r} and {shift!r}") from None
    if not (np.isfinite(scale32) and np.isfinite(shift32)):
        raise ValueError(f"scale and shift must be finite numbers, got {scale!r} and {shift!r}")
    xp = np
    if dev == "cuda":
        from segrt.kernels import gpu as _gpu

        xp = _gpu.array_module()
        frame = _gpu.to_device(frame, xp)
    if out is None:
        out = xp.empty((channels, h, w), np.float32)
    elif (not _is_array(out) or out.dtype != np.float32 or tuple(out.shape) != (channels, h, w)
          or not out.flags.c_contiguous or _device.on_gpu(out) != (dev == "cuda" and xp is not np)):
        raise ValueError(f"out must be a C-contiguous ({channels}, {h}, {w}) float32 array where the frame is "
                         f"(host or GPU), got {getattr(out, 'shape', type(out).__name__)} {getattr(out, 'dtype', '')}")
    return impl.network_input(xp.ascontiguousarray(frame), scale32, shift32, out)
