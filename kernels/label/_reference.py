"""Plain NumPy reference of the connected-component ops (slow; for tests).

Inputs are C-contiguous unsigned arrays (see segrt.kernels.label). Components are found by
label propagation: every foreground voxel starts with its own flat index, takes the
smallest index among equal-valued neighbours until nothing changes (with pointer jumps to
converge in few rounds), so a component ends labelled by its first voxel in raster order.
"""
from __future__ import annotations

import itertools

import numpy as np


def neighbour_offsets(ndim: int, connectivity: int) -> list[tuple[int, ...]]:
    """All nonzero offsets within the connectivity (both directions)."""
    max_nonzero = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]
    return [o for o in itertools.product((-1, 0, 1), repeat=ndim) if 0 < sum(map(abs, o)) <= max_nonzero]


def _shift_slices(offset):
    """(target, source) slices so that target[p] and source[p] are neighbours p, p + offset."""
    tgt, src = [], []
    for o in offset:
        if o > 0:
            tgt.append(slice(0, -o)), src.append(slice(o, None))
        elif o < 0:
            tgt.append(slice(-o, None)), src.append(slice(0, o))
        else:
            tgt.append(slice(None)), src.append(slice(None))
    return tuple(tgt), tuple(src)


def root_index(img: np.ndarray, connectivity: int) -> np.ndarray:
    """Per voxel, the flat index of its component's first voxel (-1 for background)."""
    fg = img != 0
    big = np.iinfo(np.int64).max
    lab = np.where(fg, np.arange(img.size, dtype=np.int64).reshape(img.shape), big)
    pairs = [_shift_slices(o) for o in neighbour_offsets(img.ndim, connectivity)]
    same = [(t, s, (img[t] == img[s]) & fg[t] & fg[s]) for t, s in pairs]
    while True:
        before = lab.copy()
        for t, s, m in same:
            view = lab[t]
            np.minimum(view, np.where(m, lab[s], big), out=view)
        flat = lab.reshape(-1)
        while True:  # pointer jumping: take the label of the voxel named by the label
            jumped = np.where(flat < big, flat[np.minimum(flat, flat.size - 1)], big)
            if np.array_equal(jumped, flat):
                break
            flat[:] = jumped
        if np.array_equal(before, lab):
            break
    return np.where(fg, lab, -1)


def _labels(img: np.ndarray, connectivity: int):
    """(int64 labels numbered by first voxel in raster order, component count)."""
    root = root_index(img, connectivity)
    firsts = np.unique(root[root >= 0])  # ascending = raster order of first voxels
    labels = np.zeros(img.shape, np.int64)
    fg = root >= 0
    labels[fg] = np.searchsorted(firsts, root[fg]) + 1
    return labels, len(firsts)


def connected_components(img: np.ndarray, connectivity: int, out_dtype: str = ""):
    """(labels, N); labels in ``out_dtype`` or the narrowest of uint16 / uint32 / uint64 for N."""
    labels, n = _labels(img, connectivity)
    dtype = out_dtype or ("uint16" if n <= 0xFFFF else "uint32" if n <= 0xFFFFFFFF else "uint64")
    if n > np.iinfo(dtype).max:
        raise ValueError(f"the image has {n} components, more than {dtype} can number; pass a wider out_dtype")
    return labels.astype(dtype), n


def statistics(labels: np.ndarray, max_label: int):
    n = max_label + 1
    flat = labels.reshape(-1).astype(np.int64)
    counts = np.bincount(flat, minlength=n).astype(np.uint64)
    coords = np.indices(labels.shape).reshape(labels.ndim, -1)
    boxes = np.zeros((n, 2 * labels.ndim), np.int64)
    sums = np.zeros((n, labels.ndim))
    for d in range(labels.ndim):
        sums[:, d] = np.bincount(flat, weights=coords[d], minlength=n)
        lo = np.full(n, np.iinfo(np.int64).max)
        hi = np.full(n, -1)
        np.minimum.at(lo, flat, coords[d])
        np.maximum.at(hi, flat, coords[d])
        boxes[:, 2 * d], boxes[:, 2 * d + 1] = lo, hi
    return counts, boxes, sums


def _component_table(img, connectivity):
    labels, n = _labels(img, connectivity)
    sizes = np.bincount(labels.reshape(-1), minlength=n + 1)
    values = np.zeros(n + 1, np.uint64)
    values[labels.reshape(-1)] = img.reshape(-1)
    return labels, n, sizes, values


def remove_small(img, connectivity, classes, sizes, fallback):
    labels, n, size, value = _component_table(img, connectivity)
    need = np.full(n + 1, fallback, np.int64)
    for c, s in zip(classes.tolist(), sizes.tolist()):
        need[value == c] = s
    keep = size >= need
    keep[0] = True
    return np.where(keep[labels], img, 0).astype(img.dtype)


def keep_largest(img, connectivity, k, classes, per_class):
    labels, n, size, value = _component_table(img, connectivity)
    keep = np.ones(n + 1, bool)
    ids = np.arange(1, n + 1)
    groups = [ids] if not per_class else [ids[value[1:] == v] for v in np.unique(value[1:])]
    for g in groups:
        if per_class and classes is not None and len(g) and value[g[0]] not in set(classes.tolist()):
            continue
        ranked = sorted(g.tolist(), key=lambda l: (-size[l], l))
        keep[ranked[k:]] = False
    return np.where(keep[labels], img, 0).astype(img.dtype)
