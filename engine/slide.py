"""Whole-slide (and large-volume) star-convex instances in chunks on Dask: the same result as
the whole image. Semantic models in chunks: ``segment_semantic_chunked`` (below).

    slide or volume (zarr / OME-Zarr / tiled TIFF, read lazily)
      -> statistics of the whole slide (exact percentiles from histograms over chunks)
      -> per chunk, a task: the network over the chunk's tiles (each with its context) ->
         the candidate cells (prob > prob_thresh) and their rays              [inference]
      -> per chunk, a task: NMS over the chunk and its neighbours -> the objects whose
         centre lies in the chunk, with a certificate that the whole slide decides them
         the same way (else the chunk is redone with a wider margin)              [NMS]
      -> objects numbered by descending score over the slide                   [driver]
      -> per chunk, a task: the labels of the chunk rendered and written to zarr [render]
      -> labels .zarr, objects .csv, polygons .geojson, summary .json

The rule that keeps instances exact across seams: an object belongs to the chunk that holds
its centre, and a chunk's NMS sees every candidate within a margin around it.
Greedy NMS decides a candidate from the decisions of the higher-ranked candidates that would
suppress it, so a decision can differ from the whole slide's only through a chain of such
candidates that starts within reach of a polygon beyond the margin (reach: the longest ray of
the slide, measured). The NMS kernel follows those chains (``nms_2d(..., outside=...)``);
when one reaches the chunk, the margin is doubled and the chunk redone. So the labels, points,
scores and rays are those of ``InstancePipeline(model, tile=...).run(whole image)`` bit for
bit, whatever the size of the objects relative to the chunks (large objects cost wider margins,
never a wrong answer). 3D models (volumes) also need the volume's sphere scale for StarDist's
cascade (measured over every candidate, in the whole volume's order, by the driver) and draw
polyhedra in the whole rendering's order (see docs/pipelines.md).

Tiles are the whole image's tiles (chunks are whole tiles), normalised with the whole slide's
statistics: each cell's prediction is the one the whole-image run makes. Memory per task: one
chunk's tiles and the candidates within its margin; the driver holds one row per
object (points, score, rays). Candidates wait in the workers' memory between the inference and
the NMS (Dask spills them to disk when a worker's memory fills).
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
import time
import uuid

import numpy as np

from segrt._optional import optional_import
from segrt.engine import io

__all__ = ["LazyImage", "segment_slide", "segment_semantic_chunked", "SLIDE_SUFFIXES"]

SLIDE_SUFFIXES = (".zarr", ".ome.zarr", ".tif", ".tiff", ".ome.tif", ".ome.tiff", ".svs")
_HIST_BINS = 1 << 16
PIPELINE_KEY = "segrt-slide-pipeline"


# ---- reading ---------------------------------------------------------------------------------
class LazyImage:
    """A 2D image (or, with ``spatial_dims=3``, a volume) read a box at a time: a zarr array, an
    OME-Zarr image (its full-resolution level), a tiled TIFF (its first series, full
    resolution) or an in-memory array. Pickles as its description, so each worker opens the
    file itself.

    Layout: (Y, X), (Y, X, C) channels last (TIFF samples, RGB) or (C, Y, X) (OME-Zarr's c
    axis); volumes (Z, Y, X), (C, Z, Y, X) or (Z, Y, X, C). Other OME axes (t, and z for a 2D
    image) must have length 1."""

    def __init__(self, source, *, component: str | None = None, spatial_dims: int = 2):
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        self.spatial = "yx" if spatial_dims == 2 else "zyx"
        self._array = None
        if isinstance(source, (str, os.PathLike)):
            self.source = os.fspath(source)
            self.component = component
            self.memory = None
            if not os.path.exists(self.source):
                raise io.InputFileError(f"{self.source}: no such file or folder")
        else:
            self.source, self.component, self.memory = "array", None, source
        arr, axes = self._open()
        self.dtype = np.dtype(arr.dtype)
        if self.dtype.kind not in "biuf":
            raise io.InputFileError(f"{self.source}: expected a numeric image, got dtype {self.dtype}")
        self.axes = axes
        self.full_shape = tuple(int(v) for v in arr.shape)
        if len(axes) != len(self.full_shape):
            raise io.InputFileError(f"{self.source}: its metadata names {len(axes)} axes ({axes!r}) for an array of "
                                    f"shape {self.full_shape}")
        sizes = dict(zip(axes, self.full_shape))
        if any(a not in sizes for a in self.spatial) or [a for a in axes if a in self.spatial] != list(self.spatial):
            raise io.InputFileError(f"{self.source}: expected an image with {', '.join(self.spatial)} axes in that "
                                    f"order, got axes {axes!r} and shape {self.full_shape}")
        for a in axes:
            if a not in "c" + self.spatial and sizes[a] != 1:
                what = "a slide is one 2D image" if len(self.spatial) == 2 else "a volume is one 3D image"
                raise io.InputFileError(f"{self.source}: {what}; axis {a!r} has length {sizes[a]} "
                                        f"(pick one {'plane' if len(self.spatial) == 2 else 'volume'} first)")
        self.shape = tuple(sizes[a] for a in self.spatial)
        self.channels = sizes.get("c", 1)
        if min(self.shape) == 0:
            raise io.InputFileError(f"{self.source}: the image is empty (shape {self.full_shape})")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None
        return state

    def _open(self):
        n = len(self.spatial)
        if self.memory is not None:
            arr = self.memory
            if arr.ndim == n:
                return arr, self.spatial
            if arr.ndim == n + 1 and arr.shape[-1] <= 4:
                return arr, self.spatial + "c"
            want = "(H, W) or (H, W, C)" if n == 2 else "(D, H, W) or (D, H, W, C)"
            raise io.InputFileError(f"array: expected {want} with C <= 4, got shape {arr.shape}")
        path = self.source
        low = path.lower().rstrip("/\\")
        if low.endswith(".zarr") or os.path.isdir(path):
            return self._open_zarr(path)
        if low.endswith((".tif", ".tiff", ".svs")):
            return self._open_tiff(path)
        raise io.InputFileError(f"{path}: expected a zarr / OME-Zarr folder or a tiled TIFF for chunked inference")

    def _open_zarr(self, path):
        zarr = _zarr()
        try:
            node = zarr.open(path, mode="r")
        except Exception as err:  # zarr raises several types for a folder that is no zarr
            raise io.InputFileError(f"{path}: not a readable zarr store ({type(err).__name__}: {err})") from None
        axes = None
        if not hasattr(node, "shape"):  # a group: OME-Zarr multiscales, else the named array
            attrs = dict(node.attrs)
            ms = attrs.get("multiscales") or (attrs.get("ome") or {}).get("multiscales")
            if self.component is None and ms:
                level = ms[0]["datasets"][0]["path"]
                axes = "".join(str(a["name"] if isinstance(a, dict) else a)[0].lower() for a in ms[0].get("axes", []))
                node = node[level]
            elif self.component is not None:
                node = node[self.component]
            else:
                raise io.InputFileError(f"{path}: a zarr group without OME-Zarr multiscales metadata; name the array "
                                        "inside it (component)")
        if not axes:
            sp, n = self.spatial, len(self.spatial)
            axes = sp if len(node.shape) == n else None
            if len(node.shape) == n + 1:  # channels last where the last axis is short, else first
                axes = sp + "c" if node.shape[-1] <= 4 else "c" + sp
            if axes is None:
                want = "a 2D image (Y, X), (Y, X, C) or (C, Y, X)" if n == 2 else \
                    "a volume (Z, Y, X), (C, Z, Y, X) or (Z, Y, X, C)"
                raise io.InputFileError(f"{path}: expected {want}, got shape {tuple(node.shape)}")
        return node, axes

    def _open_tiff(self, path):
        tifffile = optional_import("tifffile", purpose="reading tiled TIFF slides")
        zarr = _zarr()
        try:
            tif = tifffile.TiffFile(path)
            series = tif.series[0]
            node = zarr.open(series.aszarr(level=0), mode="r")
        except Exception as err:
            raise io.InputFileError(f"{path}: not a readable TIFF ({type(err).__name__}: {err})") from None
        if hasattr(node, "shape") is False:  # a pyramid store: its full-resolution array
            node = node["0"]
        axes = series.axes.lower().replace("s", "c")
        return node, axes

    @property
    def array(self):
        if self._array is None:
            self._array = self._open()[0]
        return self._array

    def read(self, box) -> np.ndarray:
        """The (C, h, w) crop (volumes: (C, d, h, w)) of the image inside ``box`` (one slice per
        spatial axis), in the file's dtype."""
        index = []
        for a in self.axes:
            index.append(box[self.spatial.index(a)] if a in self.spatial else slice(None) if a == "c" else 0)
        crop = np.asarray(self.array[tuple(index)])
        kept = [a for a in self.axes if a in "c" + self.spatial]
        if "c" not in kept:
            return crop[None]
        return np.moveaxis(crop, kept.index("c"), 0)


def _zarr():
    return optional_import("zarr", purpose="chunked slides (zarr, OME-Zarr, tiled TIFF)")


def model_planes(crop: np.ndarray, channels: int, source: str) -> np.ndarray:
    """A (C, h, w) crop as the model's planes, as ``image_planes`` makes them from the whole
    image (colour to luminance for a grey model, pixel by pixel)."""
    from segrt.engine.preprocess import luminance

    if crop.shape[0] == channels:
        return crop
    if channels == 1 and crop.shape[0] in (3, 4):
        return luminance(np.moveaxis(crop, 0, -1))[None]
    raise io.InputFileError(f"{source}: {crop.shape[0]} channel(s) do not fit a model with {channels} input channel(s)")


# ---- statistics of the whole slide -----------------------------------------------------------
def _ordered_keys(values: np.ndarray) -> np.ndarray:
    """float32 values as uint32 keys in the same order (sign flipped, negatives inverted)."""
    bits = np.ascontiguousarray(values, np.float32).view(np.uint32)
    return np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))


def _key_value(key: int) -> float:
    bits = key & 0x7FFFFFFF if key & 0x80000000 else (~key) & 0xFFFFFFFF
    return float(np.array([bits], np.uint32).view(np.float32)[0])


def _histogram_task(image: LazyImage, box, channels: int, prefixes=None):
    """Per channel, counts of the float32 keys' high 16 bits (``prefixes`` None) or, for each
    given prefix, of the low 16 bits of the keys under it. Counts non-finite values too."""
    planes = model_planes(image.read(box), channels, image.source).astype(np.float32, copy=False)
    out, bad = [], 0
    for c, plane in enumerate(planes):
        flat = plane.reshape(-1)
        bad += int(flat.size - np.count_nonzero(np.isfinite(flat)))
        keys = _ordered_keys(flat)
        if prefixes is None:
            out.append(np.bincount(keys >> 16, minlength=_HIST_BINS).astype(np.int64))
        else:
            out.append({p: np.bincount(keys[(keys >> 16) == p] & 0xFFFF, minlength=_HIST_BINS).astype(np.int64)
                        for p in prefixes[c]})
    return out, bad


def slide_statistics(pipeline, image: LazyImage, boxes, mapper) -> list:
    """Per channel, the statistics ``percentile_stats`` takes from the whole image, computed
    exactly from two passes of histograms over the chunks (``mapper(fn, boxes)`` runs one task
    per box and returns the results)."""
    from segrt.engine import preprocess

    spec = pipeline.meta.get("normalization") or {"kind": "none"}
    channels = pipeline.in_channels
    if spec.get("kind") != "percentile":
        return [{} for _ in range(channels)]
    first = mapper(lambda box: _histogram_task(image, box, channels), boxes)
    bad = sum(b for _, b in first)
    if bad:
        raise io.InputFileError(f"{image.source}: {bad} values are NaN or infinite; fill or mask them before "
                                "segmenting")
    high = [sum(h[c] for h, _ in first) for c in range(channels)]
    n = int(high[0].sum())
    cumulative = [np.cumsum(h) for h in high]

    def prefix_of(c, rank):
        return int(np.searchsorted(cumulative[c], rank, side="right"))

    ranks = set()
    for q in (spec["low"], spec["high"]):
        k = min(max(int(np.floor(float(q) / 100.0 * (n - 1))), 0), n - 1)
        ranks.update((k, min(k + 1, n - 1)))
    wanted = [sorted({prefix_of(c, r) for r in ranks}) for c in range(channels)]
    second = mapper(lambda box: _histogram_task(image, box, channels, wanted), boxes)
    stats = []
    for c in range(channels):
        low = {p: sum(part[c][p] for part, _ in second) for p in wanted[c]}

        def select(rs, c=c, low=low):
            values = []
            for r in rs:
                p = prefix_of(c, r)
                before = int(cumulative[c][p - 1]) if p else 0
                rest = int(np.searchsorted(np.cumsum(low[p]), r - before, side="right"))
                values.append(_key_value((p << 16) | rest))
            return values

        lo, hi = preprocess.percentiles_from_ranks(n, [spec["low"], spec["high"]], select)
        stats.append({"low": lo, "high": hi})
    return stats


# ---- tasks -----------------------------------------------------------------------------------
def _pipeline_on_worker(options: dict, kind: str = "instances"):
    """The worker's pipeline (InstancePipeline; ImagePipeline for kind "semantic", VolumePipeline
    for "semantic3d") around the
    model its plugin loaded (made once per worker and options)."""
    from distributed import get_worker

    from segrt.engine.batch import PLUGIN_NAME

    if kind == "semantic":
        from segrt.engine.image import ImagePipeline as Pipeline
    elif kind == "semantic3d":
        from segrt.engine.volume import VolumePipeline as Pipeline
    else:
        from segrt.engine.instances import InstancePipeline as Pipeline
    plugin = get_worker().plugins[PLUGIN_NAME]
    # kept on the plugin: a run that registers another model replaces the plugin and its pipelines
    cache = plugin.__dict__.setdefault("pipelines", {})
    key = kind + json.dumps(options, sort_keys=True)
    if key not in cache:
        cache[key] = Pipeline(plugin.model, device="cpu", **options)
    return cache[key]


def candidates_of_chunk(pipeline, image: LazyImage, stats, chunk_box) -> dict:
    """The network over the whole image's tiles whose cores make up this chunk: the cells with
    prob >= prob_thresh ((k, ndim) image cells), their prob values and rays, the longest ray;
    3D also the candidates' rounded boxes (for StarDist's axis scale, measured over all of them)."""
    spatial = image.shape
    padded, mode, _, _ = pipeline.tile_plan(spatial)
    normalizer = pipeline._normalizer_of(stats)
    keep_cells = tuple(-(-s // g) for s, g in zip(spatial, pipeline.grid))
    starts = [range(a, min(b, p), t) for (a, b), p, t in zip(chunk_box, padded, pipeline.tile)]
    cells, probs, rays = [], [], []

    def read(box):
        return model_planes(image.read(box), pipeline.in_channels, image.source)

    for start in itertools.product(*starts):
        core, src = pipeline.tile_windows(start, padded)
        batch = pipeline.tile_input(read, src, spatial, mode, normalizer)
        prob, dist = pipeline._infer(batch)
        pipeline._check_outputs(prob, dist, tuple((b - a) // g for (a, b), g in zip(src, pipeline.grid)))
        coords, p, d = pipeline._tile_hits(prob, dist, core, src, keep_cells)
        cells.append(np.stack(coords, axis=1)), probs.append(p), rays.append(d)
    n_rays, nd = pipeline.n_rays, len(spatial)
    rays = np.concatenate(rays) if rays else np.zeros((0, n_rays), np.float32)
    out = {"cells": np.concatenate(cells).astype(np.int64) if cells else np.zeros((0, nd), np.int64),
           "probs": np.concatenate(probs).astype(np.float32) if probs else np.zeros(0, np.float32),
           "rays": np.ascontiguousarray(rays, np.float32)}
    cand = out["probs"] > np.float32(pipeline.prob_thresh)
    out["longest"] = float(out["rays"][cand].max()) if cand.any() else 0.0
    bad = ~np.isfinite(out["rays"]).all(axis=1) | (out["rays"] < 0).any(axis=1) if len(rays) else np.zeros(0, bool)
    if bad.any():
        raise ValueError(f"the network returned NaN, infinite or negative rays at {int(bad.sum())} candidate cells "
                         f"of chunk {chunk_box}")
    if nd == 3:
        from segrt.kernels.starnms import boxes_3d

        out["boxes"] = boxes_3d(out["rays"][cand], out["cells"][cand] * np.asarray(pipeline.grid), pipeline.rays)
    return out


def _candidate_boxes(part, keep_cells, prob_thresh):
    """A 3D chunk's candidates as the whole volume's NMS counts them (prob > prob_thresh, outside
    its border of 2 cells): (flat cell indices, prob values, rounded boxes)."""
    cand = part["probs"] > np.float32(prob_thresh)
    cells, probs = part["cells"][cand], part["probs"][cand]
    inside = ((cells >= 2) & (cells < np.asarray(keep_cells) - 2)).all(axis=1)
    return np.ravel_multi_index(tuple(cells[inside].T), keep_cells), probs[inside], part["boxes"][inside]


def sphere_scale_of(parts) -> np.ndarray:
    """StarDist's 3D axis scale over every candidate of the volume (``_candidate_boxes`` of each
    chunk), summed in the whole volume's visiting order as its NMS sums it."""
    from segrt.kernels.starnms import sphere_scale_3d

    flat = np.concatenate([p[0] for p in parts])
    probs = np.concatenate([p[1] for p in parts])
    boxes = np.concatenate([p[2] for p in parts])
    return sphere_scale_3d(boxes[np.lexsort((flat, -probs.astype(np.float64)))])


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (MB): Linux's VmHWM, which counts this program
    only (ru_maxrss also keeps the peak of a parent that forked it before exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _candidates_task(options, image, stats, chunk_box):
    pipeline = _pipeline_on_worker(options)
    out = candidates_of_chunk(pipeline, image, stats, chunk_box)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["backend"] = getattr(pipeline.model, "backend", "?")
    return out


def _nms_task(*args):
    out = nms_of_chunk(*args)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _render_task(*args):
    out = render_chunk(*args)
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def nms_of_chunk(parts, block, core, keep_cells, grid, prob_thresh, nms_thresh, reach, rays=None,
                 sphere_scale=None) -> dict:
    """NMS over the candidates inside a block (``parts``: candidates_of_chunk results of the
    chunks it meets; ``block`` / ``core``: per axis (lo, hi) cells of the block and of the chunk
    inside it; 3D: the rays and the whole volume's sphere scale). Returns the kept objects whose
    centre cell lies in the core, and whether every decision in the core is certain (else a
    wider block is needed)."""
    from segrt.kernels import starnms

    lo = np.array([a for a, _ in block])
    hi = np.array([b for _, b in block])
    size = tuple(int(v) for v in hi - lo)
    prob = np.full(size, -np.inf, np.float32)
    n_rays = parts[0]["rays"].shape[1]
    cells, rows = [], []
    for part in parts:
        inside = ((part["cells"] >= lo) & (part["cells"] < hi)).all(axis=1)
        local = np.ravel_multi_index(tuple((part["cells"][inside] - lo).T), size)
        prob.reshape(-1)[local] = part["probs"][inside]
        cells.append(local)
        rows.append(part["rays"][inside])
    cells = np.concatenate(cells) if cells else np.zeros(0, np.int64)
    rows = np.concatenate(rows) if rows else np.zeros((0, n_rays), np.float32)
    order = np.argsort(cells, kind="stable")
    # beyond the block's sides (not the image's edges) lie shapes reaching at most `reach`;
    # StarDist's border of 2 cells is the whole image's
    outside = tuple((reach if a > 0 else None, reach if b < n else None) for (a, b), n in zip(block, keep_cells))
    border = tuple((2 if a == 0 else 0, 2 if b == n else 0) for (a, b), n in zip(block, keep_cells))
    common = dict(cells=cells[order], origin=tuple(int(v) for v in lo), outside=outside, border=border,
                  prob_thresh=prob_thresh, nms_thresh=nms_thresh, grid=grid, device="cpu")
    if len(size) == 3:
        points, scores, dists, uncertain = starnms.nms_3d(prob, np.ascontiguousarray(rows[order]), rays,
                                                          sphere_scale=sphere_scale, **common)
    else:
        points, scores, dists, uncertain = starnms.nms_2d(prob, np.ascontiguousarray(rows[order]), **common)
    core_lo = np.array([a for a, _ in core])
    core_hi = np.array([b for _, b in core])

    def in_core(p):
        c = p // np.asarray(grid)
        return ((c >= core_lo) & (c < core_hi)).all(axis=1)

    mine = in_core(points)
    return {"points": points[mine], "scores": scores[mine], "dists": dists[mine],
            "certain": not bool(in_core(uncertain).any()), "candidates": int(len(cells))}


def render_chunk(box, shape, points, scores, dists, ids, labels_path=None, rays=None) -> dict:
    """The labels inside ``box`` (per axis (lo, hi) pixels) from the objects that reach it (their
    global ids; 3D: given in the whole rendering's drawing order, ``scores`` unused), written
    into the zarr array at ``labels_path``; returns the objects' pixel counts and coordinate
    sums inside the box (for the objects table)."""
    from segrt.kernels import starnms

    lo = [a for a, _ in box]
    size = [b - a for a, b in box]
    if len(box) == 2:
        labels = starnms.render_2d(dists, points, shape, scores=scores, ids=ids, window=(*lo, *size), device="cpu")
    else:
        labels = starnms.render_3d(dists, points, rays, shape, ids=ids, window=(*lo, *size), device="cpu")
    if labels_path is not None:
        _zarr().open_array(labels_path, mode="r+")[tuple(slice(a, b) for a, b in box)] = labels
    # pixel counts and coordinate sums per object, a slab of the first axis at a time (bounded
    # temporaries)
    present = np.unique(ids) if len(ids) else np.zeros(0, np.int32)
    lookup = np.concatenate([[0], present]).astype(np.int64)
    area = np.zeros(len(lookup), np.int64)
    sums = np.zeros((len(box), len(lookup)))
    band = max(1, (1 << 20) // max(1, math.prod(size[1:])))
    for a0 in range(0, size[0], band):
        part = labels[a0:a0 + band]
        index = np.searchsorted(lookup, part).reshape(-1)  # 0: background
        area += np.bincount(index, minlength=len(lookup))
        for axis in range(len(box)):
            shape_1 = [1] * part.ndim
            shape_1[axis] = part.shape[axis]
            coord = np.arange(part.shape[axis], dtype=np.float64) + lo[axis] + (a0 if axis == 0 else 0)
            weights = np.broadcast_to(coord.reshape(shape_1), part.shape).reshape(-1)
            sums[axis] += np.bincount(index, weights=weights, minlength=len(lookup))
    keep = (lookup > 0) & (area > 0)
    return {"ids": lookup[keep], "area": area[keep], "sums": sums[:, keep],
            "labels": None if labels_path is not None else labels}


# ---- shared by the instance and semantic drivers ---------------------------------------------
@contextlib.contextmanager
def dask_session(model_path, backend, client=None, scheduler=None, workers=None):
    """(client, the distributed module, a run id) with the model's worker plugin registered
    (each worker loads the model once): the caller's client, one on ``scheduler``, or a
    LocalCluster of ``workers`` single-threaded processes on the loopback (closed after)."""
    from segrt.engine.batch import PLUGIN_NAME, ModelPlugin, _as_worker_plugin, _distributed, _host

    distributed = _distributed()
    own_cluster = None
    owns_client = client is None
    if client is None:
        if scheduler:
            client = distributed.Client(scheduler)
        else:
            own_cluster = distributed.LocalCluster(n_workers=workers or 1, threads_per_worker=1, processes=True,
                                                   host="127.0.0.1", dashboard_address=None)
            client = distributed.Client(own_cluster)
    try:
        per_host: dict = {}
        for address in client.scheduler_info().get("workers", {}):
            per_host[_host(address)] = per_host.get(_host(address), 0) + 1
        client.register_plugin(_as_worker_plugin(ModelPlugin(model_path, backend, "f32", per_host)), name=PLUGIN_NAME)
        yield client, distributed, uuid.uuid4().hex[:8]
    finally:
        if owns_client:
            client.close()
        if own_cluster is not None:
            own_cluster.close()


@contextlib.contextmanager
def _removed_on_failure():
    """``partial(path)`` registers a folder being written; on failure it is removed (nothing half
    written is left where a complete output would go)."""
    paths = []

    def partial(path):
        paths.append(path)
        return path

    try:
        yield partial
    except BaseException:
        import shutil

        for path in paths:
            if os.path.exists(path):
                shutil.rmtree(path, ignore_errors=True)
        raise


def _partial_labels(output, run, shape, side, dtype) -> str:
    """A hidden zarr array beside ``output`` that the chunks write into; renamed into place
    once complete."""
    tmp = os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.partial-{run}")
    _zarr().open_array(tmp, mode="w-", shape=shape, chunks=(side,) * len(shape), dtype=dtype, fill_value=0)
    return tmp


def _chunk_boxes(shape, side) -> dict:
    """(i, j[, k]) -> per axis (lo, hi): the image cut into chunks of ``side`` along every axis."""
    return {k: tuple((i * side, min((i + 1) * side, n)) for i, n in zip(k, shape))
            for k in itertools.product(*(range(-(-n // side)) for n in shape))}


def _planned_slide_outputs(output, planned, image) -> list:
    """The files a run writes (``planned()``: the labels folder first), refused before any work
    when one exists, is the input, or the labels are not a .zarr folder; [] without output."""
    if output is None:
        return []
    if not output.lower().endswith(".zarr"):
        raise io.OutputPathError(f"{output}: slide labels are written to a .zarr folder")
    written = list(planned())
    io.check_outputs(written[1:], [] if image.source == "array" else [image.source])
    if os.path.exists(output):
        raise io.OutputPathError(f"{output} exists; segrt never replaces outputs: remove it or choose another name")
    return written


def _statistics(probe, image, chunk_boxes, client, run) -> list:
    """The whole slide's normalisation statistics (histogram passes as tasks; on the driver for
    an in-memory image, which would otherwise be shipped to every task)."""
    boxes = [tuple(slice(a, b) for a, b in box) for box in chunk_boxes.values()]
    if image.memory is not None:
        if (probe.meta.get("normalization") or {}).get("kind") != "percentile":
            return [{}] * probe.in_channels
        return slide_statistics(probe, image, boxes, lambda fn, bs: [fn(b) for b in bs])

    def mapper(fn, boxes):
        futs = client.map(lambda box, fn=fn: fn(box), boxes, key=[f"segrt-hist-{run}-{uuid.uuid4().hex[:6]}-{k}"
                                                                  for k in range(len(boxes))])
        return client.gather(futs)

    return slide_statistics(probe, image, boxes, mapper)


@contextlib.contextmanager
def _chunked_session(model_path, backend, client, scheduler, workers, probe, image, chunk_boxes, seconds):
    """What both chunked drivers open first: the Dask session with the model's plugin, the
    whole image's normalisation statistics (timed into ``seconds``), and ``partial`` (outputs
    being written, removed on failure). Yields (client, distributed, run id, statistics, partial)."""
    with dask_session(model_path, backend, client, scheduler, workers) as (client, distributed, run), \
            _removed_on_failure() as partial:
        t = time.perf_counter()
        stats = _statistics(probe, image, chunk_boxes, client, run)
        seconds["statistics"] = time.perf_counter() - t
        yield client, distributed, run, stats, partial


# ---- the driver ------------------------------------------------------------------------------
class _Bar:
    def __init__(self, enabled):
        self.enabled = enabled

    def show(self, stage, n, total):
        if self.enabled:
            sys.stderr.write(f"\rsegrt slide: {stage} {n}/{total}" + ("\n" if n >= total else ""))
            sys.stderr.flush()


def _chunk_size(pipeline, chunk) -> int:
    """Chunk side in pixels: whole tiles (so each cell is predicted by the whole image's tile)."""
    t = max(pipeline.tile)
    if chunk is None:
        chunk = (4 if len(pipeline.tile) == 2 else 2) * t
    chunk = int(chunk)
    if chunk < 1:
        raise ValueError(f"chunk must be a positive number of pixels, got {chunk}")
    if len(set(pipeline.tile)) != 1:
        raise ValueError(f"chunks need tiles of one side on every axis, got tile {pipeline.tile}")
    return -(-chunk // t) * t


def segment_slide(model, source, output=None, *, chunk=None, tile=None, prob_thresh=None, nms_thresh=None,
                  component=None, client=None, scheduler=None, workers=None, backend="auto", progress=True,
                  nms_margin=None, return_labels=False) -> dict:
    """Star-convex instances of a whole slide (2D model) or a large volume (3D model), chunk by
    chunk on Dask, equal to the whole-image run (``InstancePipeline(model, tile=tile).run(image)``;
    a zarr volume read as (Z, Y, X) at its own voxel grid) bit for bit.

    Args:
        model: a star-convex .onnx model file (loaded once per worker), or a model object
            (``infer`` and ``metadata``) that pickles, sent to each worker once.
        source: a zarr array / OME-Zarr image folder, a tiled TIFF, or an in-memory array
            ((H, W[, C]); volumes (Z, Y, X)).
        output: the labels' ``.zarr`` folder (int32, chunked as the image is processed); beside
            it ``<stem>.csv`` (objects), for 2D ``<stem>.geojson`` (polygons, QuPath's frame) and
            ``<stem>.json`` (summary). None: nothing written (with ``return_labels``).
        chunk: chunk side in pixels, rounded up to whole tiles (default 4 tiles in 2D, 2 in 3D).
        tile, prob_thresh, nms_thresh: as ``InstancePipeline``.
        component: the array inside a plain zarr group.
        client / scheduler / workers: a ``distributed.Client``, a scheduler address, or the
            number of LocalCluster processes on the loopback (default 1), as ``segrt batch``.
        nms_margin: the first margin (pixels) around a chunk its NMS sees; default four longest
            rays plus 24 px (3D: three plus 14 voxels). Doubled for a chunk whose certificate
            doubts a decision.
        return_labels: also return the whole label image (small inputs and tests).

    Returns:
        the summary (objects, chunks, seconds per stage, files written); with ``return_labels``
        also "labels", "points", "scores", "dists".
    """
    from segrt.engine.instances import InstancePipeline, planned_outputs

    t_all = time.perf_counter()
    options = {k: v for k, v in (("tile", tile), ("prob_thresh", prob_thresh), ("nms_thresh", nms_thresh))
               if v is not None}
    if hasattr(model, "infer") and hasattr(model, "metadata"):  # a model object: shipped to the workers
        model_path, probe = model, InstancePipeline(model, device="cpu", **options)
    else:
        model_path = os.path.abspath(os.fspath(model))
        # the driver's own pipeline reads the metadata only: the workers load and run the model
        probe = InstancePipeline(_MetadataOnly(model_path), device="cpu", **options)
    nd = probe.ndim
    image = source if isinstance(source, LazyImage) else LazyImage(source, component=component, spatial_dims=nd)
    if len(image.shape) != nd:
        raise io.InputFileError(f"{image.source}: a {len(image.shape)}D image for a {nd}D star-convex model")
    if image.channels not in (probe.in_channels, 3, 4) or (image.channels != probe.in_channels and probe.in_channels != 1):
        raise io.InputFileError(f"{image.source}: {image.channels} channel(s) do not fit a model with "
                                f"{probe.in_channels} input channel(s)")
    if not probe.crops_normalize:
        raise ValueError(f"{model}: its normalisation needs the normalised image's own statistics "
                         "(standardize / z-score without fixed mean and std); chunks cannot reproduce it")
    if not probe.crops_pad_alone(image.shape):
        raise ValueError(f"{image.source}: too small to chunk (its tiles cannot pad themselves as the whole image "
                         "is padded); run it whole with segrt run")
    side = _chunk_size(probe, chunk)
    grid = probe.grid
    shape = tuple(image.shape)
    keep_cells = tuple(-(-n // g) for n, g in zip(shape, grid))
    chunk_boxes = _chunk_boxes(shape, side)
    if output is not None:
        output = os.path.abspath(os.fspath(output))
    written = _planned_slide_outputs(output, lambda: planned_outputs(output, nd), image)
    rays = probe.rays if nd == 3 else None

    bar = _Bar(progress)
    seconds = {}
    with _chunked_session(model_path, backend, client, scheduler, workers, probe, image, chunk_boxes,
                          seconds) as (client, distributed, run, stats, partial):
        # 1. inference: candidates per chunk
        t = time.perf_counter()
        cand = {k: client.submit(_candidates_task, options, image, stats, box,
                                 key=f"segrt-infer-{run}-{'-'.join(map(str, k))}")
                for k, box in chunk_boxes.items()}
        done = 0
        longest = 0.0
        peak = 0.0
        ran_on = backend
        for fut in distributed.as_completed(list(cand.values())):
            head = client.submit(lambda r: (r["longest"], r["peak_rss_mb"], r["backend"]), fut, pure=False).result()
            longest, peak, ran_on = max(longest, head[0]), max(peak, head[1]), head[2]
            done += 1
            bar.show("inference", done, len(cand))
        sphere_scale = None
        if nd == 3:  # StarDist's axis scale is measured over every candidate of the volume
            boxes = client.gather([client.submit(_candidate_boxes, f, keep_cells, probe.prob_thresh, pure=False)
                                   for f in cand.values()])
            sphere_scale = sphere_scale_of(boxes)
            del boxes
        seconds["inference"] = time.perf_counter() - t

        # 2. NMS per chunk over the chunk and a margin around it, widened where the certificate asks
        t = time.perf_counter()
        cell_side = tuple(side // g for g in grid)

        def submit_nms(k, margin):
            core = tuple((i * c, min((i + 1) * c, n)) for i, c, n in zip(k, cell_side, keep_cells))
            block = tuple((max(0, a - -(-margin // g)), min(n, b + -(-margin // g)))
                          for (a, b), g, n in zip(core, grid, keep_cells))
            parts = [cand[q] for q in itertools.product(*(range(a // c, -(-b // c))
                                                          for (a, b), c in zip(block, cell_side)))]
            return client.submit(_nms_task, parts, block, core, keep_cells, grid, probe.prob_thresh, probe.nms_thresh,
                                 longest, rays, sphere_scale, key=f"segrt-nms-{run}-{'-'.join(map(str, k))}-{margin}")

        # the first margin: the band a shape beyond it can reach (twice the longest ray) and as
        # much again for chains of overlapping candidates; doubled while the chunk is in doubt
        # (3D: three rays and 8 voxels, the block's cost growing with the cube of its side)
        first = ((4 * (int(math.ceil(longest)) + 2) + 16 if nd == 2 else 3 * (int(math.ceil(longest)) + 2) + 8)
                 if nms_margin is None else max(1, int(nms_margin)))
        widest = max(shape)
        pending = {submit_nms(k, first): (k, first) for k in chunk_boxes}
        objects, margins = {}, {}
        flow = distributed.as_completed(list(pending))
        for fut in flow:
            k, margin = pending.pop(fut)
            res = fut.result()
            peak = max(peak, res["peak_rss_mb"])
            if res["certain"] or margin >= widest:  # a margin as wide as the image leaves nothing outside
                objects[k] = res
                margins[k] = margin
                bar.show("nms", len(objects), len(chunk_boxes))
            else:
                new = submit_nms(k, min(2 * margin, widest))
                pending[new] = (k, min(2 * margin, widest))
                flow.add(new)
        cand.clear()  # the candidates leave the workers' memory
        seconds["nms"] = time.perf_counter() - t

        # 3. the image's objects in the whole image's order: descending score, ties by cell
        t = time.perf_counter()
        pts = np.concatenate([o["points"] for o in objects.values()]) if objects else np.zeros((0, nd), np.int64)
        scs = np.concatenate([o["scores"] for o in objects.values()]) if objects else np.zeros(0, np.float32)
        dts = (np.concatenate([o["dists"] for o in objects.values()]) if objects
               else np.zeros((0, probe.n_rays), np.float32))
        flat = np.ravel_multi_index(tuple((pts // np.asarray(grid)).T), keep_cells)
        order = np.lexsort((flat, -scs.astype(np.float64)))
        pts, scs, dts = pts[order], scs[order], dts[order]
        ids = np.arange(1, len(pts) + 1, dtype=np.int32)
        # 2D polygons are drawn by ascending score (stable), 3D polyhedra in the order NumPy's
        # argsort(scores)[::-1] gives over the whole set (its ties are the whole run's)
        drawn = np.arange(len(pts)) if nd == 2 else np.argsort(scs)[::-1]

        # 4. labels per chunk, rendered and written
        tmp = partial(_partial_labels(output, run, shape, side, np.int32)) if output is not None else None
        reach = float(dts.max()) + 2 if len(dts) else 0.0
        renders = {}
        for k, box in chunk_boxes.items():
            near = np.ones(len(pts), bool)
            for a, (lo, hi) in enumerate(box):
                near &= (pts[:, a] >= lo - reach) & (pts[:, a] < hi + reach)
            sel = drawn[near[drawn]]
            renders[k] = client.submit(_render_task, box, shape, pts[sel], scs[sel], dts[sel], ids[sel], tmp, rays,
                                       key=f"segrt-render-{run}-{'-'.join(map(str, k))}")
        area = np.zeros(len(pts) + 1, np.int64)
        sums = np.zeros((nd, len(pts) + 1))
        labels = np.zeros(shape, np.int32) if return_labels and output is None else None
        n = 0
        for fut in distributed.as_completed(list(renders.values())):
            res = fut.result()
            peak = max(peak, res["peak_rss_mb"])
            area[res["ids"]] += res["area"]
            sums[:, res["ids"]] += res["sums"]
            n += 1
            bar.show("labels", n, len(renders))
        if labels is not None:
            for k, fut in renders.items():
                labels[tuple(slice(a, b) for a, b in chunk_boxes[k])] = fut.result()["labels"]
        seconds["render"] = time.perf_counter() - t

    from segrt.engine.instances import InstanceResult, objects_table

    rows = objects_table(area[1:], sums[:, 1:], scs, nd)
    seconds["total"] = time.perf_counter() - t_all
    summary = {"input": image.source, "shape": list(shape), "objects": int(len(pts)), "backend": ran_on,
               "chunk": side, "chunks": len(chunk_boxes), "tile": list(probe.tile),
               "nms_margins_px": {str(m): sum(1 for v in margins.values() if v == m) for m in sorted(set(margins.values()))},
               "longest_ray": longest, "timings_s": seconds, "worker_peak_rss_mb": peak,
               "driver_peak_rss_mb": _peak_rss_mb(), "outputs": written}
    if sphere_scale is not None:
        summary["sphere_scale"] = [float(v) for v in sphere_scale]
    if output is not None:
        result = InstanceResult(None, pts, scs, dts, image.source, seconds, ran_on, len(chunk_boxes), [],
                                probe.class_name)
        result.write_tables(output, rows, summary)
        os.replace(tmp, output)
    if return_labels:
        summary.update(labels=labels if labels is not None else np.asarray(_zarr().open_array(output, mode="r")[:]),
                       points=pts, scores=scs, dists=dts, rows=rows)
    return summary


# ---- 2D semantic models -----------------------------------------------------------------------
def semantic_labels_of_chunk(pipeline, image: LazyImage, stats, chunk_box, labels_path=None) -> dict:
    """The labels of one chunk (per spatial axis (lo, hi)) as the whole-image run labels them
    (``ImagePipeline.run``; for a volume, ``VolumePipeline.run`` on the voxels as stored): the
    whole image's windows that meet the chunk (their context read around it), normalised with
    the whole image's statistics, blended in the whole-image run's order. Written into the zarr
    array at ``labels_path``; returns the pixels (voxels) per class and the non-finite input
    values set to 0 (as the volume pipeline does)."""
    from segrt.engine import preprocess
    from segrt.engine.metadata import foreground_threshold
    from segrt.engine.sliding_window import argmax_region
    from segrt.engine.volume import _mirrored

    meta = pipeline.meta
    spec = meta.get("normalization")
    volume = len(image.shape) == 3
    bad = [0]

    def read(box):
        planes = model_planes(image.read(box), pipeline.in_channels, image.source).astype(np.float32, copy=False)
        if volume:
            finite = np.isfinite(planes)
            if not finite.all():
                bad[0] += int(finite.size - np.count_nonzero(finite))
                planes = np.where(finite, planes, np.float32(0))
        return np.stack([preprocess.normalize(ch, spec, st) for ch, st in zip(planes, stats)])

    predictor = _mirrored(pipeline.model.infer, pipeline.mirror_axes) if volume else pipeline.model.infer
    labels = argmax_region(read, image.shape, pipeline.window, predictor, chunk_box, overlap=pipeline.overlap,
                           mode=pipeline.mode, threshold=foreground_threshold(meta),
                           placement=getattr(pipeline, "placement", "monai"))
    if labels_path is not None:
        _zarr().open_array(labels_path, mode="r+")[tuple(slice(lo, hi) for lo, hi in chunk_box)] = labels
    return {"counts": np.bincount(labels.reshape(-1)), "non_finite": bad[0],
            "labels": None if labels_path is not None else labels}


def _semantic_task(kind, options, image, stats, chunk_box, labels_path):
    pipeline = _pipeline_on_worker(options, kind)
    out = semantic_labels_of_chunk(pipeline, image, stats, chunk_box, labels_path)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["backend"] = getattr(pipeline.model, "backend", "?")
    return out


def _semantic_probe(model, options):
    """(what the workers load, the driver's pipeline, its kind) for a 2D or 3D semantic model,
    refusing what chunks cannot reproduce before anything is loaded."""
    from segrt.engine.preprocess import normalizes_crops

    if hasattr(model, "infer") and hasattr(model, "metadata"):  # a model object: shipped to the workers
        shipped, meta_model, name = model, model, "the model"
    else:
        shipped = os.path.abspath(os.fspath(model))
        meta_model, name = _MetadataOnly(shipped), shipped
    meta = meta_model.metadata or {}
    if meta.get("task") != "semantic":
        raise ValueError(f"{name}: chunked semantic segmentation runs semantic models; this one's task is "
                         f"{meta.get('task')!r}")
    if meta.get("resize") == "fit":
        raise ValueError(f"{name}: it fits the whole image to its window; chunks cannot reproduce that: run it whole")
    if any(meta.get("postprocess") or {}):
        raise ValueError(f"{name}: its clean-up ({', '.join(sorted(meta['postprocess']))}) looks at the whole image's "
                         "regions at once, which chunks do not yet reproduce: run it whole")
    if meta.get("crop"):
        raise ValueError(f"{name}: it crops the study to a box found on the whole of it ({meta['crop'].get('kind')}); "
                         "chunks cannot reproduce that: run it whole")
    if not normalizes_crops(meta.get("normalization")):
        raise ValueError(f"{name}: its normalisation needs the normalised image's own statistics (standardize / "
                         "z-score without fixed mean and std); chunks cannot reproduce it")
    if len(meta.get("window") or []) == 3:
        from segrt.engine.volume import VolumePipeline

        return shipped, VolumePipeline(meta_model, device="cpu", **options), "semantic3d"
    from segrt.engine.image import ImagePipeline

    return shipped, ImagePipeline(meta_model, device="cpu", **options), "semantic"


def segment_semantic_chunked(model, source, output=None, *, chunk=None, overlap=None, mode=None, component=None,
                             client=None, scheduler=None, workers=None, backend="auto", progress=True,
                             return_labels=False) -> dict:
    """Class labels of a whole slide (2D semantic model) or a large volume (3D semantic model),
    chunk by chunk on Dask, equal to the whole-image run bit for bit: ``ImagePipeline(model).
    run(image)`` (the image at its own resolution), for a volume ``VolumePipeline(model).run``
    on the voxels as stored (a zarr volume is read as (Z, Y, X), the network's own order, at
    its own voxel grid).

    Each chunk runs the whole image's sliding windows that meet it (reading the context they
    see around the chunk: up to one window less a pixel on each side), normalised with the
    whole image's statistics, and blends them in the whole-image run's order; so every pixel
    sums the same predictions in the same order. Windows across a seam run once per chunk they
    meet (the cost of chunking: about (chunk + window) / chunk per axis).

    Args:
        model: a semantic .onnx model file (loaded once per worker), or a model object
            (``infer`` and ``metadata``) that pickles.
        source: a zarr array / OME-Zarr image folder, a tiled TIFF, or an in-memory array
            ((H, W[, C]); volumes (D, H, W)).
        output: the labels' ``.zarr`` folder (uint8, or uint16 past 256 classes), with
            ``<stem>.json`` (summary: pixels or voxels per class) beside it. None: nothing
            written (with ``return_labels``).
        chunk: chunk side in pixels (default 16 windows in 2D, 4 in 3D; memory per worker:
            one float32 score per class and chunk pixel besides the input).
        overlap, mode: as ``ImagePipeline`` / ``VolumePipeline`` (default: the metadata's,
            else 0.5 and "gaussian"); a volume model's window placement and test-time
            mirroring come from its metadata.
        component, client, scheduler, workers, backend, progress: as ``segment_slide``.
        return_labels: also return the whole label image (small inputs and tests).

    Refused, because chunks cannot reproduce them: models that fit the whole image to their
    window, crop it to a box found on the whole image, clean up regions (``postprocess``) or
    normalise with the normalised image's own statistics; images no larger than the window.
    """
    t_all = time.perf_counter()
    options = {k: v for k, v in (("overlap", overlap), ("mode", mode)) if v is not None}
    model_path, probe, kind = _semantic_probe(model, options)
    meta = probe.meta
    nd = len(probe.window) if kind == "semantic" else 3
    window = tuple(meta["window"])
    image = source if isinstance(source, LazyImage) else LazyImage(source, component=component, spatial_dims=nd)
    if len(image.shape) != nd:
        raise io.InputFileError(f"{image.source}: a {len(image.shape)}D image for a {nd}D model")
    in_channels = meta.get("in_channels", 1)
    if kind == "semantic3d" and image.channels != 1:
        raise io.InputFileError(f"{image.source}: {image.channels} channels; the volume pipeline takes one")
    if image.channels not in (in_channels, 3, 4) or (image.channels != in_channels and in_channels != 1):
        raise io.InputFileError(f"{image.source}: {image.channels} channel(s) do not fit a model with "
                                f"{in_channels} input channel(s)")
    if any(s < w for s, w in zip(image.shape, window)) or tuple(image.shape) == window:
        raise ValueError(f"{image.source}: {' x '.join(map(str, image.shape))} is not larger than the model's window "
                         f"{window} (the whole-image run pads it or runs one window); run it whole with segrt run")
    side = int(chunk) if chunk is not None else (16 if nd == 2 else 4) * max(window)
    if side < 1:
        raise ValueError(f"chunk must be a positive number of pixels, got {chunk}")
    names = list(meta.get("class_names") or [])
    n_classes = len(names) or int(meta.get("out_channels", 0) or 0)
    dtype = np.uint8 if 0 < n_classes <= 256 else np.uint16
    chunk_boxes = _chunk_boxes(image.shape, side)
    if output is not None:
        output = os.path.abspath(os.fspath(output))
    written = _planned_slide_outputs(output, lambda: [output, os.path.splitext(output)[0] + ".json"], image)

    bar = _Bar(progress)
    seconds = {}
    tmp = None
    counts = np.zeros(0, np.int64)
    peak, non_finite = 0.0, 0
    ran_on = backend
    labels = np.zeros(image.shape, dtype) if return_labels and output is None else None

    def _add_chunk(res, box):
        nonlocal counts, peak, ran_on, non_finite
        if res["counts"].size > np.iinfo(dtype).max + 1:
            raise ValueError(f"the model returned {res['counts'].size} classes, more than its metadata's "
                             f"{n_classes}; describe its classes (segrt describe --classes)")
        counts = np.pad(counts, (0, max(0, res["counts"].size - counts.size)))
        counts[:res["counts"].size] += res["counts"]
        peak, ran_on, non_finite = max(peak, res["peak_rss_mb"]), res["backend"], non_finite + res["non_finite"]
        if labels is not None:
            labels[tuple(slice(lo, hi) for lo, hi in box)] = res["labels"]

    with _chunked_session(model_path, backend, client, scheduler, workers, probe, image, chunk_boxes,
                          seconds) as (client, distributed, run, stats, partial):
        t = time.perf_counter()
        if output is not None:
            tmp = partial(_partial_labels(output, run, image.shape, side, dtype))
        futures = {client.submit(_semantic_task, kind, options, image, stats, box, tmp,
                                 key=f"segrt-semantic-{run}-{'-'.join(map(str, k))}"): k
                   for k, box in chunk_boxes.items()}
        try:
            for n, fut in enumerate(distributed.as_completed(list(futures)), 1):
                res = fut.result()
                _add_chunk(res, chunk_boxes[futures[fut]])
                bar.show("labels", n, len(futures))
        except BaseException:
            client.cancel(list(futures))  # the other chunks stop writing into the partial output
            raise
        seconds["inference"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t_all
    names = names or [f"class {c}" for c in range(max(len(counts), 1))]
    per_class = {(names[c] if c < len(names) else f"class {c}"): int(counts[c]) for c in range(1, len(counts))}
    notes = []
    if meta.get("spacing"):
        notes.append(f"ran at the input's own {'pixel' if nd == 2 else 'voxel'} size (the model was trained at "
                     f"{meta['spacing']} mm): give a pyramid level or a volume at that resolution where there is one")
    if non_finite:
        notes.append(f"{non_finite} NaN / infinite voxel(s) set to 0")
    summary = {"input": image.source, "shape": list(image.shape), "classes": names,
               ("pixels" if nd == 2 else "voxels"): per_class, "backend": ran_on, "chunk": side,
               "chunks": len(chunk_boxes), "window": list(window), "timings_s": seconds, "worker_peak_rss_mb": peak,
               "driver_peak_rss_mb": _peak_rss_mb(), "notes": notes, "outputs": written}
    if output is not None:
        with io.atomic_path(written[1]) as part, open(part, "w") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, output)
    if return_labels:
        summary["labels"] = labels if labels is not None else np.asarray(_zarr().open_array(output, mode="r")[:])
    return summary


class _MetadataOnly:
    """A model file's metadata without a runtime (the driver plans; workers run the network)."""

    backend = "none"

    def __init__(self, path):
        from segrt.engine.model_file import inspect_model_file

        self.path = path
        self.metadata = inspect_model_file(path)[3]

    def infer(self, batch):
        raise RuntimeError("the driver does not run the network")
