"""The instance pipeline for star-convex models (StarDist-style, 2D and 3D).

    image -> percentile normalisation (statistics of the whole image) -> prob and dist, whole
    or in tiles -> star-convex NMS over the whole image -> rendered labels, polygons, table

Tiles are exact, not blended: each tile is predicted with ``context`` pixels of margin on every
side (the model's metadata says how much its receptive field needs) and only its centre is
kept, tile corners aligned to the network's ``divisor``. The stitched prob / dist maps are
therefore the whole-image maps, and NMS runs once over all of them: no object is cut at a
seam, duplicated or dropped, whatever its size relative to the tile or the margin (unlike
stitching per-tile NMS results, where objects wider than the overlap fail). Memory: the
stitched maps hold (1 + n_rays) float32 values per prediction cell.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import sys

import numpy as np

from segrt.engine import io
from segrt.engine.stages import COMPILE_STAGE, Stages, compile_seconds, pipeline_device
from segrt.engine.model import ModelTaskError, as_model

__all__ = ["InstancePipeline", "InstanceResult"]


@dataclasses.dataclass
class InstanceResult:
    labels: np.ndarray  # (H, W) or (D, H, W) int32, object i + 1 for the i-th point
    points: np.ndarray  # (K, ndim) int64 pixel coordinates, by descending score
    scores: np.ndarray  # (K,)
    dists: np.ndarray  # (K, n_rays)
    source: str
    timings: dict
    backend: str
    tiles: int
    notes: list
    class_name: str = "object"
    rays: object = None  # 3D: the Rays3D used

    def polygons(self) -> np.ndarray:
        """(K, n_rays, 2) polygon vertices (y, x) in pixel coordinates (pixel centres at integers)."""
        if self.points.shape[1] != 2:
            raise ValueError("polygons exist for 2D results only")
        n_rays = self.dists.shape[1]
        phi = 2 * np.pi * np.arange(n_rays) / n_rays
        d = self.dists.astype(np.float64)
        ys = self.points[:, 0:1] + d * np.sin(phi)
        xs = self.points[:, 1:2] + d * np.cos(phi)
        return np.stack([ys, xs], axis=-1)

    def objects(self) -> list:
        """One row per object: id, centroid (of its rendered pixels), area (pixels), score."""
        nd = self.labels.ndim
        k = len(self.points)
        flat = self.labels.reshape(-1)
        area = np.bincount(flat, minlength=k + 1)[1:k + 1]
        coords = np.indices(self.labels.shape).reshape(nd, -1)
        sums = [np.bincount(flat, weights=c, minlength=k + 1)[1:k + 1] for c in coords]
        return objects_table(area, sums, self.scores, nd)

    def geojson(self) -> dict:
        """A GeoJSON FeatureCollection of the polygons in QuPath's pixel frame (x, y; a pixel's
        centre at +0.5), one detection per object: QuPath opens it with File > Import objects."""
        return {"type": "FeatureCollection", "features": list(self._features())}

    def _features(self, block: int = 4096):
        for start in range(0, len(self.points), block):  # polygons a block at a time
            part = InstanceResult(self.labels, self.points[start:start + block], self.scores[start:start + block],
                                  self.dists[start:start + block], self.source, {}, self.backend, 0, [],
                                  self.class_name)
            yield from part._block_features(start)

    def _block_features(self, offset: int):
        for k, poly in enumerate(self.polygons()):
            i = offset + k
            ring = [[round(float(x) + 0.5, 3), round(float(y) + 0.5, 3)] for y, x in poly]
            ring.append(ring[0])
            yield {"type": "Feature", "id": str(i + 1),
                   "geometry": {"type": "Polygon", "coordinates": [ring]},
                   "properties": {"objectType": "detection", "name": str(i + 1),
                                  "classification": {"name": self.class_name},
                                  "measurements": {"score": round(float(self.scores[k]), 6)}}}

    def summary(self) -> dict:
        return {"input": self.source, "shape": list(self.labels.shape), "objects": int(len(self.points)),
                "backend": self.backend, "tiles": self.tiles, "timings_s": self.timings, "notes": self.notes}

    def save(self, path) -> list:
        """Writes the labels (TIFF / .npy by suffix) and beside them ``<stem>.csv``,
        ``<stem>.json`` and, for 2D, ``<stem>.geojson``; each file appears complete or not at all."""
        path = os.fspath(path)
        planned = planned_outputs(path, self.labels.ndim)
        io.check_outputs(planned[:1], [self.source], suffixes=LABEL_SUFFIXES)
        io.check_outputs(planned[1:], [self.source])
        written = [io.write_labels(path, self.labels)]
        return written + self.write_tables(path, self.objects(), self.summary())

    def write_tables(self, path, rows: list, summary: dict) -> list:
        """``<stem>.csv`` (the objects table), for 2D ``<stem>.geojson``, then ``<stem>.json``
        (the summary, last: its presence marks a finished result), each written atomically."""
        stem = os.path.splitext(os.fspath(path))[0]
        written = []
        with io.atomic_path(stem + ".csv") as tmp, open(tmp, "w", newline="") as f:
            fields = list(rows[0]) if rows else ["id", "score"]
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
        written.append(stem + ".csv")
        if self.points.shape[1] == 2:
            with io.atomic_path(stem + ".geojson") as tmp, open(tmp, "w") as f:
                # feature by feature (a slide's million polygons are never one document in memory);
                # the same text json.dump(self.geojson()) writes
                f.write('{"type": "FeatureCollection", "features": [')
                for k, feature in enumerate(self._features()):
                    f.write((", " if k else "") + json.dumps(feature))
                f.write("]}")
            written.append(stem + ".geojson")
        with io.atomic_path(stem + ".json") as tmp, open(tmp, "w") as f:
            json.dump(summary, f, indent=2)
        written.append(stem + ".json")
        return written


def objects_table(area, sums, scores, nd: int) -> list:
    """Rows of the objects table from each object's pixel count, coordinate sums (per axis) and
    score: id, centroid, area (2D) or volume (3D), score."""
    rows = []
    axes = "zyx"[-nd:]
    for i in range(len(scores)):
        row = {"id": i + 1}
        for a, s in zip(axes, sums):
            row[f"centroid_{a}"] = round(float(s[i] / area[i]), 3) if area[i] else float("nan")
        row["area" if nd == 2 else "volume"] = int(area[i])
        row["score"] = round(float(scores[i]), 6)
        rows.append(row)
    return rows


LABEL_SUFFIXES = (".tif", ".tiff", ".npy")
MIN_TILE = 16


def planned_outputs(path, ndim: int = 2) -> list:
    """The files ``InstanceResult.save(path)`` writes: labels, CSV, GeoJSON (2D) and JSON."""
    path = os.fspath(path)
    stem = os.path.splitext(path)[0]
    return [path, stem + ".csv"] + ([stem + ".geojson"] if ndim == 2 else []) + [stem + ".json"]


class InstancePipeline:
    """Star-convex instance segmentation with a segrt model (task star-convex-2d / -3d).

    Args:
        model: a .onnx file exported by segrt, or a loaded Model (anything with ``infer`` and
            ``metadata``).
        tile: tile size per axis (pixels of output kept per tile), rounded up to the model's
            divisor; inputs up to this size run whole. Default 512 (2D) / 128 (3D). Memory (2D):
            the runtime's buffers for one tile (about 0.4 GB for the demo model at 512) plus
            8 bytes per pixel (prob, labels) beside the input image (tiles are normalised and
            padded one at a time) plus the candidates' rays;
            1024 px tiles run about 15 % faster with twice the runtime buffers.
        prob_thresh, nms_thresh: override the metadata's thresholds.
        verbose: stage read-out on stderr.
        device: "cpu", "cuda" or "auto". "cuda": the image is uploaded once; normalisation,
            padding, tiles, the network, prob / dist, the candidates' rays, NMS and rendering
            stay in device memory, and the labels, points, scores and rays come down once (3D:
            the NMS cascade and rendering run on the host and say so). Needs a backend that
            takes device arrays (torch, trt). "auto": "cuda" when the model's backend takes
            device arrays, else "cpu".
    """

    def __init__(self, model, *, backend="auto", tile=None, prob_thresh=None, nms_thresh=None, verbose=False,
                 device="auto", **backend_options):
        self.model = as_model(model, backend, backend_options)
        meta = self.meta = dict(getattr(self.model, "metadata", None) or {})
        path = getattr(self.model, "path", "model")
        task = meta.get("task")
        if task not in ("star-convex-2d", "star-convex-3d"):
            raise ModelTaskError(f"{path}: the instance pipeline runs star-convex models; this model's task is "
                                 f"{task!r}" + (" (use the volume pipeline)" if task == "semantic" else ""))
        self.ndim = 2 if task == "star-convex-2d" else 3
        star = meta.get("star") or {}
        if "n_rays" not in star:
            raise ModelTaskError(f"{path}: star-convex metadata without star.n_rays")
        self.n_rays = star["n_rays"]
        self.grid = tuple(star.get("grid", (1,) * self.ndim))
        self.prob_thresh = star.get("prob_thresh", 0.5) if prob_thresh is None else float(prob_thresh)
        self.nms_thresh = star.get("nms_thresh", 0.4) if nms_thresh is None else float(nms_thresh)
        self.in_channels = meta.get("in_channels", 1)
        self.outputs = meta.get("outputs", ["prob", "dist"])
        step = math.lcm(meta.get("divisor", 1), *self.grid)
        self.step = step
        self.context = -(-meta.get("context", 0) // step) * step
        default_tile = 512 if self.ndim == 2 else 128
        t = default_tile if tile is None else tile
        tiles = (t,) * self.ndim if np.isscalar(t) else tuple(t)
        if len(tiles) != self.ndim or min(tiles) < 1:
            raise ValueError(f"tile must be a positive size or {self.ndim} sizes, got {tile!r}")
        self.tile = tuple(-(-int(v) // step) * step for v in tiles)
        # each tile is predicted with its context margin on every side: below this the margins
        # are most of the work (tile 1 with 48 px of context predicts 97^2 pixels per kept pixel)
        min_tile = max(MIN_TILE, step)
        if min(self.tile) < min_tile:
            raise ValueError(f"tile must be at least {min_tile} pixels per axis (each tile is predicted with "
                             f"{self.context} pixels of context on every side), got {tile!r}")
        self.verbose = verbose
        self.rays = None
        if self.ndim == 3:
            from segrt.kernels.starnms import rays_3d

            self.rays = rays_3d(self.n_rays, star.get("rays_anisotropy"))
        names = meta.get("class_names") or []
        self.class_name = names[1] if len(names) > 1 else "object"
        self.device, self._xp = pipeline_device(device, [self.model], path)

    def _as_image(self, image, source):
        from segrt.engine.preprocess import image_planes

        return image_planes(image, self.ndim, self.in_channels, source)

    def _normalize(self, x):
        from segrt.engine import preprocess

        spec = self.meta.get("normalization")
        # statistics of the whole image, per channel, so tiles and the whole image agree
        return self._xp.stack([preprocess.normalize(ch, spec) for ch in x])

    def _tile_normalizer(self, x):
        """A function normalising any crop of ``x`` exactly as ``_normalize`` normalises the
        whole, from statistics of the whole image; None where the normalisation needs the
        normalised image's own statistics (standardize, z-score without fixed mean / std)."""
        from segrt.engine import preprocess

        if not self.crops_normalize:
            return None
        spec = self.meta.get("normalization") or {"kind": "none"}
        return self._normalizer_of([preprocess.percentile_stats(ch, spec) for ch in x])

    @property
    def crops_normalize(self) -> bool:
        """Whether a crop can be normalised alone, given the whole image's statistics (not when
        the normalisation needs the normalised image's own statistics: standardize, z-score
        without fixed mean / std)."""
        from segrt.engine.preprocess import normalizes_crops

        return normalizes_crops(self.meta.get("normalization"))

    def _normalizer_of(self, stats):
        """Normalises any (C, ...) crop with per-channel statistics of the whole image."""
        from segrt.engine import preprocess

        spec = self.meta.get("normalization") or {"kind": "none"}
        return lambda crop: self._xp.stack([preprocess.normalize(ch, spec, st) for ch, st in zip(crop, stats)])

    def tile_plan(self, spatial):
        """How an image of this size is tiled: (padded size, padding mode, whether it runs whole,
        the first pixel of every tile per axis)."""
        padded = tuple(-(-s // self.step) * self.step for s in spatial)
        mode = "reflect" if all(p - s < s for p, s in zip(padded, spatial)) else "edge"
        whole = all(p <= t for p, t in zip(padded, self.tile))
        return padded, mode, whole, [range(0, p, t) for p, t in zip(padded, self.tile)]

    def tile_windows(self, start, padded):
        """A tile's kept core and the window of padded input it is predicted from: every tile
        reads the same input size (one compiled shape, one set of buffers); at the image's
        edges the window slides inwards, which only widens the context on the inner side."""
        core = [(a, min(a + t, p)) for a, t, p in zip(start, self.tile, padded)]
        src = []
        for (a, b), t, p in zip(core, self.tile, padded):
            n = min(p, t + 2 * self.context)
            lo = min(max(0, a - self.context), p - n)
            src.append((lo, lo + n))
        return core, src

    def _tile_hits(self, prob, dist, core, src, keep_cells):
        """The cells of a tile's core with prob >= prob_thresh inside the image: their image cell
        indices (one array per axis), prob values and (k, n_rays) rays."""
        am = self._xp
        in_sl = tuple(slice((a - s) // g, (b - s) // g) for (a, b), (s, _), g in zip(core, src, self.grid))
        tile_prob = prob[(0, 0) + in_sl]
        hits = am.nonzero(tile_prob >= np.float32(self.prob_thresh))
        coords = [h + a // g for h, (a, _), g in zip(hits, core, self.grid)]
        inside = coords[0] < keep_cells[0]
        for c, k in zip(coords[1:], keep_cells[1:]):
            inside &= c < k
        local = tuple(h[inside] for h in hits)
        return (tuple(c[inside] for c in coords), tile_prob[local],
                dist[(0, slice(None)) + in_sl][(slice(None),) + local].T)

    def _infer(self, batch):
        out = self.model.infer(batch)
        if isinstance(out, dict):
            prob, dist = out[self.outputs[0]], out[self.outputs[1]]
        elif isinstance(out, (list, tuple)):
            prob, dist = out
        else:
            raise ModelTaskError("a star-convex model must return two outputs (prob, dist)")
        if self.device == "cuda":  # device outputs stay on the device
            from segrt.kernels import gpu

            return (gpu.to_device(prob, self._xp).astype(np.float32, copy=False),
                    gpu.to_device(dist, self._xp).astype(np.float32, copy=False))
        return np.asarray(prob, np.float32), np.asarray(dist, np.float32)

    def predict(self, x: np.ndarray, stages: Stages, normalizer=None):
        """prob (*cells) and dist (*cells, n_rays) of a normalised (C, *spatial) image, tiled when
        it is larger than the tile. Returns (prob, dist, number of tiles); tiled 2D returns
        dist as (ascending flat cells, their (k, n_rays) rows) for the cells with
        prob >= prob_thresh only."""
        spatial = x.shape[1:]
        padded, mode, whole, starts = self.tile_plan(spatial)
        pads = [(0, 0)] + [(0, p - s) for p, s in zip(padded, spatial)]
        # a tile pads itself like the whole image is padded when it holds enough image to reflect
        gpu = self.device == "cuda"
        # on the device the whole normalised image is uploaded once (tiles are cut there)
        per_tile = normalizer is not None and not whole and not gpu and self.crops_pad_alone(spatial)
        if normalizer is not None and not per_tile:
            x = normalizer(x)
        am = self._xp  # the array module of x (on the device: uploaded by run), prob and dist
        xp = None if per_tile else (am.pad(x, pads, mode=mode) if padded != spatial else x)
        if gpu:
            xp = am.ascontiguousarray(xp, dtype=np.float32)

        def tile_input(src):
            if not per_tile:
                return xp[(None, slice(None)) + tuple(slice(a, b) for a, b in src)]
            return self.tile_input(lambda box: x[(slice(None),) + box], src, spatial, mode, normalizer)

        cells = tuple(p // g for p, g in zip(padded, self.grid))
        if whole:
            with stages("infer [GPU]" if gpu else "infer"):
                prob, dist = self._infer(xp[None])
            self._check_outputs(prob, dist, cells)
            prob_full, dist_full, n_tiles = prob[0, 0], am.moveaxis(dist[0], 0, -1), 1
        else:
            # 2D: ray lengths are kept for candidate cells only (prob >= prob_thresh), so memory
            # follows the objects, not (1 + n_rays) floats per cell; 3D keeps the full maps
            sparse = self.ndim == 2
            prob_full = am.empty(cells, np.float32)
            dist_full = None if sparse else am.empty(cells + (self.n_rays,), np.float32)
            stored_cells, stored_dists = [], []
            n_tiles = 0
            total = math.prod(len(s) for s in starts)
            keep_cells = tuple(-(-s // g) for s, g in zip(spatial, self.grid))
            for start in itertools.product(*starts):
                core, src = self.tile_windows(start, padded)
                batch = tile_input(src)
                with stages("infer [GPU]" if gpu else "infer"):
                    prob, dist = self._infer(batch)
                self._check_outputs(prob, dist, tuple((b - a) // g for (a, b), g in zip(src, self.grid)))
                out_sl = tuple(slice(a // g, b // g) for (a, b), g in zip(core, self.grid))
                in_sl = tuple(slice((a - s) // g, (b - s) // g) for (a, b), (s, _), g in zip(core, src, self.grid))
                prob_full[out_sl] = prob[(0, 0) + in_sl]
                if not sparse:
                    dist_full[out_sl] = am.moveaxis(dist[(0, slice(None)) + in_sl], 0, -1)
                else:
                    (rows, cols), _, rays = self._tile_hits(prob, dist, core, src, keep_cells)
                    stored_cells.append(rows * keep_cells[1] + cols)
                    stored_dists.append(rays)
                n_tiles += 1
                if self.verbose:
                    print(f"\rsegrt: tiles {n_tiles}/{total}", end="" if n_tiles < total else "\n", flush=True,
                          file=sys.stderr)
            if sparse:
                cells_all = am.concatenate(stored_cells) if stored_cells else am.zeros(0, np.int64)
                order = am.argsort(cells_all)  # the cells are distinct: any sort gives one order
                dists_all = (am.concatenate(stored_dists) if stored_dists else
                             am.zeros((0, self.n_rays), np.float32))[order]
                prob_keep = am.ascontiguousarray(prob_full[tuple(slice(0, k) for k in keep_cells)])
                return prob_keep, (cells_all[order].astype(np.int64),
                                   am.ascontiguousarray(dists_all, dtype=np.float32)), n_tiles
        keep = tuple(slice(0, -(-s // g)) for s, g in zip(spatial, self.grid))
        return prob_full[keep], dist_full[keep], n_tiles

    def crops_pad_alone(self, spatial) -> bool:
        """Whether every tile's crop of the image holds enough image to pad itself as the whole
        image is padded (reflect needs more image than padding)."""
        padded = tuple(-(-s // self.step) * self.step for s in spatial)
        return all(min(p, t + 2 * self.context) > 2 * (p - s) for p, t, s in zip(padded, self.tile, spatial))

    def tile_input(self, read, src, spatial, mode, normalizer):
        """A tile's (1, C, ...) input from the raw image: ``read(box)`` returns the (C, ...) crop
        of the image inside ``box`` (slices), normalised here and padded past the image's end
        as the whole padded image would be."""
        box = tuple(slice(a, min(b, s)) for (a, b), s in zip(src, spatial))
        crop = normalizer(read(box))
        extra = [(0, 0)] + [(0, max(0, b - s)) for (_, b), s in zip(src, spatial)]
        return (np.pad(crop, extra, mode=mode) if any(e for _, e in extra) else crop)[None]

    def _check_outputs(self, prob, dist, cells):
        want_p = (1, 1) + cells
        want_d = (1, self.n_rays) + cells
        if tuple(prob.shape) != want_p or tuple(dist.shape) != want_d:
            raise ModelTaskError(f"the model returned prob {tuple(prob.shape)} and dist {tuple(dist.shape)}; expected "
                                 f"{want_p} and {want_d} (grid {self.grid}, {self.n_rays} rays) for this input")

    def run(self, image, *, source=None) -> InstanceResult:
        """Segments an image (array, or a TIFF / PNG / JPEG / .npy path; 3D: a TIFF stack / .npy)."""
        from segrt.kernels import starnms

        stages = Stages(self.verbose, events=self._xp if self._xp is not np else None)  # GPU stages: CUDA events
        if isinstance(image, (str, os.PathLike)):
            source = os.fspath(image)
            with stages("read"):
                image = io.read_image(source)
        source = source or "array"
        x = self._as_image(image, source)
        gpu = self.device == "cuda"
        if gpu:
            from segrt.kernels import gpu as _gpu

            with stages("upload [GPU]"):  # the one upload: the image as float32
                x = _gpu.to_device(np.ascontiguousarray(x, np.float32), self._xp)
        with stages("normalize [GPU]" if gpu else "normalize"):
            normalizer = self._tile_normalizer(x) if self.ndim == 2 else None
            if normalizer is None:
                x = self._normalize(x)
        compiled_before = compile_seconds(self.model)
        prob, dist, n_tiles = self.predict(x, stages, normalizer)
        stages.move("infer [GPU]" if gpu else "infer", COMPILE_STAGE, compile_seconds(self.model) - compiled_before)
        shape = x.shape[1:]
        # 3D on the GPU: candidates on the device, StarDist's cascade in the C++ kernels (see starnms)
        kernels = "cuda" if gpu else "auto"
        where = "" if not gpu else (" [GPU]" if self.ndim == 2 else " [GPU + host cascade]")
        with stages("nms" + where):
            if isinstance(dist, tuple):  # tiled 2D: ray lengths stored for candidate cells only
                cells, rows = dist
                points, scores, dists = starnms.nms_2d(prob, rows, cells=cells, prob_thresh=self.prob_thresh,
                                                       nms_thresh=self.nms_thresh, grid=self.grid, device=kernels)
            elif self.ndim == 2:
                points, scores, dists = starnms.nms_2d(prob, dist, prob_thresh=self.prob_thresh,
                                                       nms_thresh=self.nms_thresh, grid=self.grid, device=kernels)
            else:
                points, scores, dists = starnms.nms_3d(prob, dist, self.rays, prob_thresh=self.prob_thresh,
                                                       nms_thresh=self.nms_thresh, grid=self.grid, device=kernels)
        with stages("render" + ("" if not gpu else " [GPU]" if self.ndim == 2 else " [host]")):
            if self.ndim == 2:
                labels = starnms.render_2d(dists, points, shape, scores=scores, device=kernels)
            else:
                labels = starnms.render_3d(dists, points, self.rays, shape, scores=scores, device=kernels)
        if gpu:  # the one download
            from segrt.kernels import gpu as _gpu

            labels, points, scores, dists = (_gpu.to_host(v) for v in (labels, points, scores, dists))
        timings = dict(stages.timings)
        timings["total"] = stages.total()
        return InstanceResult(labels, points, scores, dists, source, timings, getattr(self.model, "backend", "?"),
                              n_tiles, [], self.class_name, self.rays)
