"""Connected components of label images and the clean-ups built on them.

Pinned semantics (identical to ``cc3d`` 4.x, connected-components-3d):

- 2D (connectivity 4 or 8) and 3D (6, 18 or 26; the default is the largest). Voxels join
  only when they hold the same nonzero value (multi-label; 0 is background); bool, signed
  and unsigned integers of any width are accepted (labels are compared bit for bit).
- Components are numbered 1..N by their first voxel in raster order of the array's memory
  layout: C order, or Fortran order for a Fortran-contiguous array, as cc3d numbers them;
  the output has the input's layout.
- ``remove_small`` equals ``cc3d.dust(seg, threshold=min_size, in_place=False)``: a
  component with fewer than ``min_size`` voxels becomes 0.
- ``keep_largest`` keeps, per class, the ``k`` largest components (ties: the component
  whose first voxel comes first); ``per_class=False`` ranks all components together, which
  equals masking with ``cc3d.largest_k`` (whose ties are arbitrary for k > 1).

Implementations (``device=``, see ``segrt.kernels._device``): ``"reference"`` (``_reference.py``,
NumPy label propagation), ``"cpu"`` (``_cpu.py``: run-length union-find in C++ on all cores,
clean-ups in one read and one write) and ``"cuda"`` (``_cuda.py``: a lock-free union-find with
one thread per voxel, Numba CUDA on CuPy arrays; a GPU array in gives a GPU array out, a NumPy
array with device="cuda" is copied to the GPU once); ``"auto"`` follows the data.
"""
from __future__ import annotations

import numbers

import numpy as np

from segrt.kernels import _device
from segrt.kernels.label import _validate

__all__ = ["connected_components", "component_stats", "remove_small", "keep_largest", "fill_holes"]

_OUT_DTYPES = ("uint8", "uint16", "uint32", "uint64")

# the dispatch table: device -> implementation module (same function names in each)
IMPLEMENTATIONS = {"reference": "segrt.kernels.label._reference", "cpu": "segrt.kernels.label._cpu",
                   "cuda": "segrt.kernels.label._cuda"}


def _prepare(image, connectivity, device, name="image"):
    dev, impl = _device.implementation("label", IMPLEMENTATIONS, device, image)
    arr = _validate.label_image(image, name)
    conn = _validate.connectivity(connectivity, arr.ndim) if connectivity is not False else None
    return impl, arr, conn


def _restore(out: np.ndarray, transposed: bool) -> np.ndarray:
    return out.T if transposed else out


def connected_components(image, connectivity=None, *, out_dtype=None, return_n=False, device="auto"):
    """Labels of the connected components of a 2D or 3D label image (cc3d's numbering).

    Args:
        image: (H, W) or (D, H, W) bool or integer labels; 0 is background.
        connectivity: 4 / 8 in 2D, 6 / 18 / 26 in 3D (default: 8, 26).
        out_dtype: unsigned integer dtype of the labels; by default the narrowest of
            uint16, uint32, uint64 that holds the component count.
        return_n: also return the number of components.
        device: "auto", "reference", "cpu" or "cuda" (see ``segrt.kernels._device``).

    Returns:
        labels of the input's shape and memory layout (and N when return_n).
    """
    impl, arr, conn = _prepare(image, connectivity, device)
    want = None
    if out_dtype is not None:
        want = np.dtype(out_dtype).name
        if want not in _OUT_DTYPES:
            raise ValueError(f"out_dtype must be one of {_OUT_DTYPES}, got {out_dtype!r}")
    work, transposed = _validate.as_unsigned_c(arr)
    labels, n = impl.connected_components(work, conn, want or "")
    labels = _restore(labels, transposed)
    return (labels, int(n)) if return_n else labels


def component_stats(labels, *, no_slice_conversion=False, device="auto"):
    """Per-label voxel counts, bounding boxes and centroids, as ``cc3d.statistics``.

    Args:
        labels: 2D or 3D non-negative integer labels (e.g. from connected_components).
        no_slice_conversion: boxes as an (N + 1, 2 ndim) array of inclusive
            [min0, max0, min1, max1, ...] instead of slice tuples.

    Returns:
        dict with "voxel_counts" (N + 1,), "bounding_boxes" (slice tuples, None where a label
        is absent) and "centroids" (N + 1, ndim) float64 (NaN where absent); index 0 is the
        background.
    """
    impl, arr, _ = _prepare(labels, False, device, "labels")
    if arr.dtype.kind == "i" and arr.size and arr.min() < 0:
        raise ValueError("labels must be non-negative; relabel with connected_components first")
    work, transposed = _validate.as_unsigned_c(arr)
    max_label = int(work.max()) if work.size else 0
    if max_label > 2**31:
        raise ValueError(f"labels go up to {max_label}; renumber them (connected_components) before statistics")
    counts, boxes, sums = impl.statistics(work, max_label)
    nd = arr.ndim
    if transposed:  # back to the caller's axis order
        boxes = boxes.reshape(-1, nd, 2)[:, ::-1, :].reshape(-1, 2 * nd)
        sums = sums[:, ::-1]
    counts_out = counts.astype(np.uint32 if arr.size < 2**32 else np.uint64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centroids = np.ascontiguousarray(sums / counts[:, None].astype(np.float64))
    centroids[counts == 0] = np.nan
    present = counts > 0
    if no_slice_conversion:
        big = max(arr.shape) if arr.shape else 0
        bdtype = np.uint16 if big < 2**16 else np.uint32 if big < 2**32 else np.uint64
        out_boxes = np.zeros(boxes.shape, bdtype)
        out_boxes[present] = boxes[present]
        out_boxes[~present, 0::2] = np.iinfo(bdtype).max
        bounding = out_boxes
    else:
        bounding = [
            tuple(slice(int(b[2 * d]), int(b[2 * d + 1]) + 1) for d in range(nd)) if ok else None
            for b, ok in zip(boxes, present)
        ]
    return {"voxel_counts": counts_out, "bounding_boxes": bounding, "centroids": centroids}


def _class_sizes(min_size):
    """(classes, sizes, fallback) for a scalar or per-class dict of minimum sizes."""
    if isinstance(min_size, dict):
        items = []
        for cls, size in min_size.items():
            if isinstance(cls, bool) or not isinstance(cls, numbers.Integral):
                raise ValueError(f"min_size keys must be integer class values, got {cls!r}")
            items.append((int(cls), _validate.non_negative_int(size, f"min_size[{cls}]")))
        items.sort()
        return items, 0
    return [], _validate.non_negative_int(min_size, "min_size")


def _class_keys(items, arr: np.ndarray):
    """Class values as the unsigned bit patterns the kernels compare (any value the image's dtype
    holds, uint64 values past 2**63 included)."""
    if not items:
        return np.zeros(0, np.uint64)
    vals = [int(v) for v, _ in items] if isinstance(items[0], tuple) else [int(v) for v in items]
    if arr.dtype.kind == "b":
        return np.array([bool(v) for v in vals], np.uint64)
    info = np.iinfo(arr.dtype)
    bad = [v for v in vals if v < info.min or v > info.max]
    if bad:
        raise ValueError(f"class {bad[0]} cannot occur in an image of dtype {arr.dtype}")
    return np.array(vals, dtype=arr.dtype).view(_validate.UNSIGNED[arr.dtype.itemsize]).astype(np.uint64)


def remove_small(seg, min_size, connectivity=None, *, device="auto"):
    """Zero every component smaller than ``min_size`` voxels (``cc3d.dust``).

    Args:
        seg: 2D or 3D bool or integer labels.
        min_size: voxels a component needs to stay; an int for all classes or a dict
            {class value: min size} (classes not listed are kept whole).
        connectivity: as in connected_components.

    Returns:
        a new array like ``seg`` (same dtype and layout) with small components set to 0.
    """
    impl, arr, conn = _prepare(seg, connectivity, device, "seg")
    items, fallback = _class_sizes(min_size)
    keys = _class_keys(items, arr)
    sizes = np.array([s for _, s in items], np.int64)
    order = np.argsort(keys, kind="stable")
    work, transposed = _validate.as_unsigned_c(arr)
    out = impl.remove_small(work, conn, keys[order], sizes[order], fallback)
    return _restore(out, transposed).view(arr.dtype)


def keep_largest(seg, k=1, connectivity=None, classes=None, *, per_class=True, device="auto"):
    """Keep the ``k`` largest components of each class (or of the whole image).

    Args:
        seg: 2D or 3D bool or integer labels.
        k: components kept per class (0 removes the class).
        connectivity: as in connected_components.
        classes: class values to clean (default: every class); other classes stay whole.
        per_class: False ranks all components of all classes together (cc3d.largest_k
            used as a mask); ``classes`` must then be None.

    Returns:
        a new array like ``seg`` where the other components are 0. Ties in size go to the
        component whose first voxel comes first in raster order.
    """
    impl, arr, conn = _prepare(seg, connectivity, device, "seg")
    k = _validate.non_negative_int(k, "k")
    if classes is not None and not per_class:
        raise ValueError("classes applies only with per_class=True; pass classes=None to rank all components together")
    if classes is not None:
        if isinstance(classes, numbers.Integral):
            classes = [classes]
        try:
            listed = [int(c) for c in classes]
        except (TypeError, ValueError):
            raise ValueError(f"classes must be integer class values, got {classes!r}") from None
        keys = _class_keys(listed, arr)
    else:
        keys = np.zeros(0, np.uint64)
    work, transposed = _validate.as_unsigned_c(arr)
    out = impl.keep_largest(work, conn, k, None if classes is None else keys, per_class)
    return _restore(out, transposed).view(arr.dtype)


def fill_holes(mask, connectivity=None, *, device="auto"):
    """Fill the holes of a 2D or 3D binary mask: background regions that do not reach the
    array's border become foreground (``scipy.ndimage.binary_fill_holes``, ``fill_voids``).

    Args:
        mask: 2D or 3D bool or integer array (non-zero = foreground).
        connectivity: connectivity of the *background* (default the smallest, 4 / 6, as
            scipy's default structure: a hole touching the outside only by a corner is a hole).

    Returns:
        a bool array of the mask's shape.
    """
    if connectivity is None:
        connectivity = 6 if np.ndim(mask) == 3 else 4
    _, arr, conn = _prepare(mask, connectivity, device, "mask")
    fg = arr != 0
    if fg.size == 0:
        return fg
    background = connected_components(~fg, conn, device=device)
    xp = _device.array_module_of(background)
    border = [background[(slice(None),) * a + (i,)] for a in range(fg.ndim) for i in (0, -1)]
    outside = xp.zeros(int(background.max()) + 1, bool)
    for face in border:
        outside[face.reshape(-1)] = True
    outside[0] = True  # label 0 is the foreground itself
    return fg | ~outside[background]
