"""Compiled CPU connected components: the C++ kernels of ``segrt.kernels._C`` (cpp/label/).

Rows are cut into runs of one value, runs are joined across neighbouring rows by a
union-find, slabs of rows are processed on all cores, and the clean-ups read the image once
and write the result once (no label image in between). The GIL is released around each call.
Inputs are C-contiguous unsigned arrays, as segrt.kernels.label prepares them.
"""
from __future__ import annotations

import numpy as np

from segrt.kernels._ext import extension


def _threads(arr: np.ndarray) -> int:
    """All cores (0) for large images; the calling thread alone below ~1 M voxels, where waking a
    thread team costs more than it saves and, next to a runtime's spinning workers (a video
    frame between two inferences), turns into latency spikes."""
    return 0 if arr.size >= 1 << 20 else 1


def connected_components(img, connectivity, out_dtype=""):
    return extension().label_connected_components(img, connectivity, out_dtype, _threads(img))


def statistics(labels, max_label):
    return extension().label_statistics(labels, max_label, _threads(labels))


def remove_small(img, connectivity, classes, sizes, fallback):
    return extension().label_remove_small(img, connectivity, classes, sizes, fallback, _threads(img))[0]


def keep_largest(img, connectivity, k, classes, per_class):
    every_class = classes is None
    keys = [] if every_class else classes.tolist()
    return extension().label_keep_largest(img, connectivity, k, keys, every_class, per_class, _threads(img))[0]
