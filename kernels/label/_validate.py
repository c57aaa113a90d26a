"""Input checks shared by the connected-component ops; each error names what was expected,
what arrived and what to do."""
from __future__ import annotations

import numbers

import numpy as np

CONNECTIVITY = {2: (4, 8), 3: (6, 18, 26)}
UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


def label_image(image, name: str = "image") -> np.ndarray:
    """The image as an ndarray of rank 2 or 3 holding bool or integer labels."""
    from segrt.kernels._device import array_module_of

    xp = array_module_of(image)
    arr = xp.asarray(image) if xp is not np else np.asarray(image)
    if arr.ndim not in (2, 3):
        raise ValueError(f"{name} must be a 2D or 3D label image, got shape {arr.shape}")
    if arr.dtype.kind not in "biu":
        raise ValueError(
            f"{name} must hold bool or integer labels, got dtype {arr.dtype}; "
            f"threshold or round it first (e.g. (prob > 0.5) or np.rint(x).astype(np.uint16))")
    return arr


def connectivity(value, ndim: int) -> int:
    allowed = CONNECTIVITY[ndim]
    if value is None:
        return allowed[-1]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) not in allowed:
        raise ValueError(f"connectivity for a {ndim}D image must be one of {allowed}, got {value!r}")
    return int(value)


def as_unsigned_c(arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """A C-contiguous unsigned view (labels compared by bits) and whether it is the transpose.

    Fortran-ordered arrays are processed as their (C-ordered) transpose, so components are
    numbered in memory order, as cc3d numbers them; other layouts are copied to C order.
    """
    transposed = False
    if not arr.flags.c_contiguous:
        if arr.flags.f_contiguous:
            arr, transposed = arr.T, True
        else:
            arr = arr.copy(order="C")
    return arr.view(UNSIGNED[arr.dtype.itemsize]), transposed


def non_negative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if value >= 2**63:
        raise ValueError(f"{name} must be below 2**63 (no image has that many voxels), got {value!r}")
    return int(value)
