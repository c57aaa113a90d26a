"""Array steps around the network: orientation, resizing, intensity normalisation and the
foreground box. Each step is invertible where the pipeline needs to go back."""
from __future__ import annotations

import dataclasses

import numpy as np

from segrt._optional import optional_import

__all__ = ["Orientation", "to_canonical", "resize_nearest", "resize_linear", "normalize", "foreground_box",
           "percentile_stats", "percentiles_from_ranks", "normalizes_crops", "luminance", "labels_from_scores",
           "image_planes", "nonzero_box", "postprocess_labels"]


@dataclasses.dataclass(frozen=True)
class Orientation:
    """How an (i, j, k) array maps onto RAS axes: ``perm[w]`` is the array axis along world
    axis w, ``flip[w]`` whether it runs from + to -."""

    perm: tuple
    flip: tuple

    def apply(self, arr: np.ndarray) -> np.ndarray:
        out = np.transpose(arr, self.perm)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]

    def undo(self, arr: np.ndarray) -> np.ndarray:
        out = arr[tuple(slice(None, None, -1) if f else slice(None) for f in self.flip)]
        return np.transpose(out, np.argsort(self.perm))


def to_canonical(array: np.ndarray, affine: np.ndarray):
    """(array in RAS+ axis order, its affine, the Orientation to undo it): nibabel's
    ``as_closest_canonical``. Each array axis goes to the world axis its direction is closest
    to, the strongest pairing first, so oblique scans map one axis to one axis."""
    rot = np.asarray(affine, float)[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    perm = [-1, -1, -1]
    used_array, used_world = set(), set()
    for flat in np.argsort(-np.abs(rot), axis=None, kind="stable"):
        w, a = divmod(int(flat), 3)
        if w in used_world or a in used_array:
            continue
        perm[w] = a
        used_world.add(w)
        used_array.add(a)
    flip = tuple(bool(rot[w, perm[w]] < 0) for w in range(3))
    orient = Orientation(tuple(perm), flip)
    shape = array.shape
    new_affine = np.asarray(affine, float)[:, list(perm) + [3]].copy()
    for w in range(3):
        if flip[w]:
            n = shape[perm[w]]
            new_affine[:, 3] += new_affine[:, w] * (n - 1)
            new_affine[:, w] *= -1
    return orient.apply(array), new_affine, orient


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # torch's "nearest-exact": the input sample under the centre of each output cell
    return np.minimum(((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def resize_nearest(arr: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of the leading ``len(shape)`` axes (cell-centre aligned)."""
    shape = tuple(int(s) for s in shape)
    if tuple(arr.shape[:len(shape)]) == shape:
        return arr
    index = np.ix_(*(_nearest_index(n, m) for n, m in zip(arr.shape, shape)))
    if not isinstance(arr, np.ndarray):  # a device array: index arrays on the device
        from segrt.kernels import gpu

        xp = gpu.array_module()
        index = tuple(xp.asarray(i) for i in index)
    return arr[index]


def _module_of(x):
    """NumPy for host arrays, else the GPU array module (CuPy; NumPy under the simulator)."""
    if isinstance(x, np.ndarray):
        return np
    from segrt.kernels import gpu

    return gpu.array_module()


def resize_linear(arr: np.ndarray, shape) -> np.ndarray:
    """Linear resize (cell-centre aligned, edges replicated), float32. A device array is
    resized on its GPU (CuPy's ``ndimage.zoom``, the same spline code as SciPy's)."""
    xp = _module_of(arr)
    if xp is np:
        from scipy import ndimage
    else:
        ndimage = optional_import("cupyx.scipy.ndimage", purpose="resizing on the GPU")
    shape = tuple(int(s) for s in shape)
    x = xp.asarray(arr, np.float32)
    if x.shape == shape:
        return x
    return ndimage.zoom(x, [m / n for m, n in zip(shape, x.shape)], order=1, mode="nearest", grid_mode=True,
                        output=np.float32)


def percentile_stats(arr: np.ndarray, spec: dict) -> dict:
    """The statistics a normalisation takes from the whole input (before any crop)."""
    if spec.get("kind") == "percentile":
        # on float32 values, as normalize sees them, whatever the input's dtype
        xp = _module_of(arr)
        flat = xp.asarray(arr, np.float32).reshape(-1)

        def select(ranks):
            part = xp.partition(flat, ranks)
            return [float(part[r]) for r in ranks]

        lo, hi = percentiles_from_ranks(flat.size, [spec["low"], spec["high"]], select)
        return {"low": lo, "high": hi}
    return {}


def percentiles_from_ranks(n: int, qs, select) -> list:
    """Percentiles (NumPy's default "linear" definition: position q / 100 * (n - 1) in the sorted
    values, interpolated in float64) from ``select(ranks) -> the values at those ranks``. One
    formula whatever finds the ranked values (a partition in memory, histograms over chunks),
    so a whole image and its chunks get the same statistics bit for bit."""
    if n == 0:
        return [0.0 for _ in qs]
    spots = []
    for q in qs:
        pos = float(q) / 100.0 * (n - 1)
        k = min(max(int(np.floor(pos)), 0), n - 1)
        spots.append((k, min(k + 1, n - 1), pos - k))
    ranks = sorted({r for k, k1, _ in spots for r in (k, k1)})
    value = dict(zip(ranks, select(ranks)))
    return [value[k] + (value[k1] - value[k]) * g for k, k1, g in spots]


def _mean_std(x: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation in two passes over float32 data, accumulated in float64
    blocks (exact enough for 10^8 voxels, and several times faster than x.std())."""
    xp = _module_of(x)
    flat = x.reshape(-1)
    n = flat.size
    if n == 0:
        return 0.0, 1.0
    block = 1 << 20
    total = sum(float(xp.add.reduce(flat[i:i + block], dtype=np.float64)) for i in range(0, n, block))
    mean = total / n
    sq = 0.0
    buf = xp.empty(min(block, n), np.float32)
    for i in range(0, n, block):
        part = buf[:min(block, n - i)]
        xp.subtract(flat[i:i + block], np.float32(mean), out=part)
        sq += float(xp.dot(part, part))
    return mean, (sq / n) ** 0.5


def normalizes_crops(spec: dict | None) -> bool:
    """Whether a crop can be normalised alone, given the whole image's statistics (not when the
    normalisation needs the normalised image's own: standardize, z-score without fixed mean and
    std, z-score over the non-zero region)."""
    spec = spec or {"kind": "none"}
    if spec.get("standardize"):
        return False
    return spec.get("kind") != "zscore" or (spec.get("mask") != "nonzero" and "mean" in spec and "std" in spec)


def normalize(x: np.ndarray, spec: dict | None, stats: dict | None = None) -> np.ndarray:
    """Intensity normalisation per the model's metadata (see segrt.engine.metadata), float32,
    computed in place on one new array (on the GPU for a device array)."""
    xp = _module_of(x)
    out = xp.array(x, dtype=np.float32, copy=True)
    kind = (spec or {}).get("kind", "none")
    if kind == "ct":
        lo, hi = spec["window"]
        xp.clip(out, lo, hi, out=out)
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo))
    elif kind == "percentile":
        stats = stats or percentile_stats(out, spec)
        lo, hi = stats["low"], stats["high"]
        out -= np.float32(lo)
        out *= np.float32(1.0 / (hi - lo if hi > lo else 1.0))
        if spec.get("clip", True):
            xp.clip(out, 0, 1, out=out)
    elif kind == "zscore" and spec.get("mask") == "nonzero":
        inside = out != 0  # nnU-Net's use_mask_for_norm: statistics of the non-zero region, the rest 0
        if bool(inside.any()):
            values = out[inside]
            mean, std = _mean_std(values)
            out[inside] = (values - np.float32(mean)) * np.float32(1.0 / max(std, 1e-8))
    elif kind == "zscore":
        own = (None, None) if "mean" in spec and "std" in spec else _mean_std(out)
        mean, std = spec.get("mean", own[0]), spec.get("std", own[1])
        out -= np.float32(mean)
        out *= np.float32(1.0 / (std if std > 0 else 1.0))
    if spec and spec.get("standardize"):
        mean, std = _mean_std(out)
        out -= np.float32(mean)
        out *= np.float32(1.0 / (std if std > 0 else 1.0))
    if spec and ("scale" in spec or "shift" in spec):
        out *= np.float32(spec.get("scale", 1.0))
        out += np.float32(spec.get("shift", 0.0))
    return out


def nonzero_box(arr):
    """Slices of the bounding box of the non-zero voxels (nnU-Net's crop), or None when every voxel
    is zero or the box is the whole array."""
    nz = arr != 0
    box = []
    for ax in range(arr.ndim):
        others = tuple(a for a in range(arr.ndim) if a != ax)
        profile = nz.any(axis=others)
        hits = np.flatnonzero(profile if isinstance(profile, np.ndarray) else profile.get())
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return None if all(b.start == 0 and b.stop == n for b, n in zip(box, arr.shape)) else tuple(box)


def foreground_box(mask: np.ndarray, margin: float, min_fraction: float, shape=None):
    """Slices of the foreground's bounding box grown by ``margin`` of its size on each side;
    along each axis, a slice counts when more than ``min_fraction`` of it is foreground.
    ``shape``: the grid the box is for, when ``mask`` is a resized copy of it (centre and
    size are scaled, then rounded). None when nothing passes."""
    shape = mask.shape if shape is None else tuple(shape)
    box = []
    for ax in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != ax)
        profile = mask.mean(axis=others, dtype=np.float64)
        hits = np.flatnonzero(profile > min_fraction)
        if hits.size == 0:
            return None
        scale = shape[ax] / mask.shape[ax]
        centre = round(scale * (hits[-1] + 1 + hits[0]) / 2)
        size = round(scale * (hits[-1] + 1 - hits[0]) * (1 + 2 * margin))
        lo, hi = int(centre - size / 2), int(centre + size / 2)
        box.append(slice(max(0, lo), min(shape[ax], hi)))
    return tuple(box)


def labels_from_scores(scores, device="auto", threshold=0.0):
    """Class labels of one (C, *spatial) score array: the compiled argmax (first maximum
    wins, as np.argmax), or foreground where a single score channel exceeds ``threshold`` (0
    for logits, 0.5 for probabilities: ``metadata.foreground_threshold``). Scores without
    channels, or holding NaN / infinity, are refused: every argmax would silently be 0 there.
    device="cuda": on the GPU (the scores stay there; the labels are a device array)."""
    xp = np
    if device == "cuda":
        from segrt.kernels import gpu

        xp = gpu.array_module()
        scores = gpu.to_device(scores, xp)
    if scores.ndim < 2 or scores.shape[0] == 0:
        raise ValueError(f"the model returned scores of shape {tuple(scores.shape)}: no class channels to take the "
                         "argmax over")
    if scores.dtype.kind == "f" and not bool(xp.isfinite(scores.sum())):
        bad = int(scores.size - int(xp.count_nonzero(xp.isfinite(scores))))
        if bad:
            raise ValueError(f"the model returned {bad} NaN or infinite score(s); its labels would be wrong there "
                             "(check the model and its input normalisation)")
    if scores.shape[0] == 1:
        return (scores[0] > threshold).astype(np.uint8)
    if scores.shape[0] > 65536:
        raise ValueError(f"at most 65536 classes are supported, the model returned {scores.shape[0]}")
    from segrt.kernels import stitch

    scores = xp.ascontiguousarray(scores, dtype=np.float32)
    labels = xp.empty(scores.shape[1:], np.uint8 if scores.shape[0] <= 256 else np.uint16)
    stitch.argmax_block(scores, labels, (0,) * labels.ndim, device="cuda" if device == "cuda" else "auto")
    return labels


def luminance(rgb: np.ndarray) -> np.ndarray:
    """(..., 3 or 4) colour to float32 luminance (ITU-R 601 weights), pixel by pixel in one order
    of float32 operations, so any crop of an image gets the values of the whole."""
    r, g, b = (rgb[..., k].astype(np.float32) for k in range(3))
    return r * np.float32(0.299) + g * np.float32(0.587) + b * np.float32(0.114)


def image_planes(image, ndim: int, channels: int, source: str) -> np.ndarray:
    """An image as the model's (C, *spatial) planes: (H, W) / (D, H, W) for one channel,
    channels last for several, colour to luminance for a grey 2D model. Refuses (InputFileError,
    naming the source) non-numeric, empty and NaN / infinite images and shapes that do not fit."""
    from segrt.engine import io

    x = np.asarray(image)
    if x.dtype.kind not in "biuf":
        raise io.InputFileError(f"{source}: expected a numeric image, got dtype {x.dtype}")
    if x.size == 0:
        raise io.InputFileError(f"{source}: the image is empty (shape {x.shape})")
    if x.dtype.kind == "f" and not np.isfinite(x.sum()):
        bad = ~np.isfinite(x)
        if bad.any():  # counted in the image as read, before any padding or tiling
            first = tuple(int(v) for v in np.unravel_index(np.argmax(bad), x.shape))
            raise io.InputFileError(f"{source}: {int(bad.sum())} of its {x.size} values are NaN or infinite "
                                    f"(the first at {first}); fill or mask them before segmenting")
    c = channels
    if x.ndim == ndim and c == 1:
        return x[None]
    if x.ndim == ndim + 1 and x.shape[-1] == c:
        return np.moveaxis(x, -1, 0)
    if x.ndim == ndim + 1 and c == 1 and x.shape[-1] in (3, 4) and ndim == 2:
        return luminance(x)[None]  # for a grey model
    raise io.InputFileError(f"{source}: an image of shape {x.shape} does not fit this {ndim}D model with "
                            f"{c} input channel(s); expected {'(H, W)' if ndim == 2 else '(D, H, W)'}"
                            + (f" with {c} channels last" if c > 1 else ""))


def postprocess_labels(labels, spec: dict, device="auto"):
    """The metadata's per-class clean-up (``remove_small``, ``keep_largest``, ``fill_holes``), in that
    order, on the host or the GPU."""
    from segrt.kernels import label

    if spec.get("remove_small"):
        labels = label.remove_small(labels, spec["remove_small"], device=device)
    for cls, k in (spec.get("keep_largest") or {}).items():
        labels = label.keep_largest(labels, k, classes=[cls], device=device)
    for cls in spec.get("fill_holes") or []:
        filled = label.fill_holes(labels == cls, device=device)
        labels[filled & (labels == 0)] = cls
    return labels
