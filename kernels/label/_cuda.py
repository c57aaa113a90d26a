"""GPU connected components: Numba CUDA kernels on CuPy arrays (NumPy under the simulator).

Every foreground voxel starts as its own tree (its parent is its flat index). One thread per
voxel joins it with each equal-valued neighbour that comes before it in memory order, by a
lock-free union-find: the larger of two roots is hooked under the smaller with an atomic min,
retried when another thread moved it first. Roots only ever get smaller, so each component
ends with its first voxel in memory order as root. Flattening every voxel to its root and
ranking the roots with a prefix scan numbers the components 1..N by their first voxel: the
CPU kernel's (and cc3d's) numbering, bit for bit. Indices are 64-bit, so volumes past 2^31
voxels are labelled like any other. The clean-ups and statistics work on the root of every
voxel (no numbered label image is built for them).

Inputs arrive as the CPU kernel's do: C-contiguous unsigned arrays of rank 2 or 3.
"""
from __future__ import annotations

import itertools

import numpy as np

from segrt.kernels import gpu as _gpu


def _backward_offsets(ndim: int, connectivity: int) -> np.ndarray:
    """(k, 3) neighbour offsets (dz, dy, dx) that come before a voxel in memory order."""
    reach = {4: 1, 8: 2, 6: 1, 18: 2, 26: 3}[connectivity]  # nonzero axes a neighbour may differ in
    out = [d for d in itertools.product((-1, 0, 1), repeat=3)
           if d < (0, 0, 0)  # lexicographically before: an earlier voxel in C order
           and not (ndim == 2 and d[0] != 0) and sum(abs(v) for v in d) <= reach]
    return np.array(out, np.int64)


# the kernels refer to the module-level ``cuda`` so that Numba's simulator can stand in for it
cuda = _gpu.cuda()


@cuda.jit(device=True)
def _find(parent, x):
    while parent[x] != x:
        x = parent[x]
    return x


@cuda.jit
def _init(flat, parent):
    i = cuda.grid(1)
    if i < flat.size:
        parent[i] = i if flat[i] != 0 else -1


@cuda.jit
def _merge(flat, parent, nz, ny, nx, offsets):
    i = cuda.grid(1)
    if i >= flat.size or flat[i] == 0:
        return
    z = i // (ny * nx)
    y = (i // nx) % ny
    x = i % nx
    for k in range(offsets.shape[0]):
        zz = z + offsets[k, 0]
        yy = y + offsets[k, 1]
        xx = x + offsets[k, 2]
        if zz < 0 or yy < 0 or xx < 0 or zz >= nz or yy >= ny or xx >= nx:
            continue
        j = (zz * ny + yy) * nx + xx
        if flat[j] != flat[i]:
            continue
        a = _find(parent, i)
        b = _find(parent, j)
        while a != b:
            if a < b:
                a, b = b, a
            old = cuda.atomic.min(parent, a, b)  # hook the larger root under the smaller
            if old == a:
                break
            a = _find(parent, old)  # another thread moved it first: join from its new root
            b = _find(parent, b)


@cuda.jit
def _flatten(parent):
    i = cuda.grid(1)
    if i < parent.size and parent[i] >= 0:
        parent[i] = _find(parent, i)


@cuda.jit
def _stats(labels, nz, ny, nx, counts, lo, hi, sums):
    i = cuda.grid(1)
    if i >= labels.size:
        return
    lab = labels[i]
    z = i // (ny * nx)
    y = (i // nx) % ny
    x = i % nx
    cuda.atomic.add(counts, lab, 1)
    cuda.atomic.min(lo, (lab, 0), z)
    cuda.atomic.max(hi, (lab, 0), z)
    cuda.atomic.min(lo, (lab, 1), y)
    cuda.atomic.max(hi, (lab, 1), y)
    cuda.atomic.min(lo, (lab, 2), x)
    cuda.atomic.max(hi, (lab, 2), x)
    cuda.atomic.add(sums, (lab, 0), float(z))
    cuda.atomic.add(sums, (lab, 1), float(y))
    cuda.atomic.add(sums, (lab, 2), float(x))



def _shape3(shape) -> tuple:
    return (1,) * (3 - len(shape)) + tuple(int(s) for s in shape)


def _roots(img, connectivity):
    """(array module, flat input, root of every voxel (-1 for background))."""
    xp = _gpu.array_module()
    img = _gpu.to_device(img, xp)
    flat = img.reshape(-1)
    parent = xp.empty(flat.size, np.int64)
    n = flat.size
    if n == 0:
        return xp, flat, parent
    nz, ny, nx = _shape3(img.shape)
    offsets = _gpu.to_device(_backward_offsets(img.ndim, connectivity), xp)
    _gpu.launch(_init, n, flat, parent)
    _gpu.launch(_merge, n, flat, parent, nz, ny, nx, offsets)
    _gpu.launch(_flatten, n, parent)
    return xp, flat, parent


def _numbering(xp, parent):
    """(1-based number of every voxel's component, 0 for background; component count)."""
    idx = xp.arange(parent.size, dtype=np.int64)
    is_root = parent == idx
    rank = xp.cumsum(is_root, dtype=np.int64)  # roots in memory order: cc3d's numbering
    n = int(rank[-1]) if parent.size else 0
    labels = xp.where(parent >= 0, rank[xp.maximum(parent, 0)], 0)
    return labels, n


def connected_components(img, connectivity, out_dtype=""):
    xp, _, parent = _roots(img, connectivity)
    labels, n = _numbering(xp, parent)
    dtype = out_dtype or ("uint16" if n <= 0xFFFF else "uint32" if n <= 0xFFFFFFFF else "uint64")
    if n > np.iinfo(dtype).max:
        raise ValueError(f"the image has {n} components, more than {dtype} can number; pass a wider out_dtype")
    return labels.astype(dtype).reshape(img.shape), n


def _components(img, connectivity):
    """(array module, flat input, each voxel's component number, count, sizes, class value of each)."""
    xp, flat, parent = _roots(img, connectivity)
    labels, n = _numbering(xp, parent)
    sizes = xp.bincount(labels, minlength=n + 1)
    values = xp.zeros(n + 1, np.uint64)
    values[labels] = flat.astype(np.uint64)
    return xp, flat, labels, n, sizes, values


def remove_small(img, connectivity, classes, sizes, fallback):
    xp, flat, labels, n, size, value = _components(img, connectivity)
    need = xp.full(n + 1, fallback, np.int64)
    for c, s in zip(np.asarray(classes).tolist(), np.asarray(sizes).tolist()):
        need[value == c] = s
    keep = size >= need
    keep[0] = True
    return xp.where(keep[labels], flat, 0).astype(flat.dtype).reshape(img.shape)


def keep_largest(img, connectivity, k, classes, per_class):
    xp, flat, labels, n, size, value = _components(img, connectivity)
    ids = xp.arange(1, n + 1, dtype=np.int64)
    group = value[1:] if per_class else xp.zeros(n, np.uint64)
    key = group.view(np.int64)  # a one-to-one key: equal classes stay together whatever their bits
    # by class, then size descending, then first voxel: the rank within a class decides
    order = xp.lexsort(xp.stack([ids, -size[1:].astype(np.int64), key]))
    sorted_group, sorted_key = group[order], key[order]
    first = xp.searchsorted(sorted_key, sorted_key, side="left")
    rank = xp.arange(n, dtype=np.int64) - first
    keep = xp.ones(n + 1, bool)
    drop = rank >= k
    if per_class and classes is not None:
        listed = _gpu.to_device(np.asarray(classes, np.uint64), xp)
        drop &= xp.isin(sorted_group, listed)
    keep[order[drop] + 1] = False
    return xp.where(keep[labels], flat, 0).astype(flat.dtype).reshape(img.shape)


def statistics(labels, max_label):
    """Counts, boxes and coordinate sums per label; returned on the host (N + 1 rows)."""
    xp = _gpu.array_module()
    labels = _gpu.to_device(labels, xp)
    ndim = labels.ndim
    n = max_label + 1
    counts = xp.zeros(n, np.int64)
    lo = xp.full((n, 3), np.iinfo(np.int64).max, np.int64)
    hi = xp.full((n, 3), -1, np.int64)
    sums = xp.zeros((n, 3), np.float64)
    if labels.size:
        nz, ny, nx = _shape3(labels.shape)
        _gpu.launch(_stats, labels.size, labels.reshape(-1).astype(np.int64), nz, ny, nx,
                                                              counts, lo, hi, sums)
    host = _gpu.to_host
    lo, hi, sums = host(lo)[:, 3 - ndim:], host(hi)[:, 3 - ndim:], host(sums)[:, 3 - ndim:]
    boxes = np.empty((n, 2 * ndim), np.int64)
    boxes[:, 0::2], boxes[:, 1::2] = lo, hi
    return host(counts).astype(np.uint64), boxes, np.ascontiguousarray(sums)
