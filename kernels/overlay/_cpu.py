"""Compiled video frame kernels: label blending in ``segrt.kernels._C`` (cpp/overlay/, one pass,
labelled runs only); network inputs through OpenCV's area resize and colour conversion."""
from __future__ import annotations

import numpy as np

from segrt._optional import optional_import
from segrt.kernels._ext import extension


def blend_labels(frame, labels, palette, a, out):
    extension().blend_labels(frame, labels, palette, a, out)
    return out


def network_input(frame, scale, shift, out):
    cv2 = optional_import("cv2", purpose="video frames")
    h, w = out.shape[1:]
    small = cv2.resize(frame, (w, h), interpolation=cv2.INTER_AREA)
    if out.shape[0] == 1:
        plane = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
        np.multiply(plane, scale, out=out[0], casting="unsafe")
        out[0] += shift
        return out
    for c in range(3):  # BGR frame -> RGB planes
        np.multiply(small[..., 2 - c] if small.ndim == 3 else small, scale, out=out[c], casting="unsafe")
        out[c] += shift
    return out
