"""Compiled label blending: ``segrt.kernels._C`` (cpp/overlay/), one pass, labelled runs only."""
from __future__ import annotations

from segrt.kernels._ext import extension


def blend_labels(frame, labels, palette, a, out):
    extension().blend_labels(frame, labels, palette, a, out)
    return out
