"""The 2D semantic pipeline: an image (or each page of a multi-page TIFF) in, a label image of
the same size out, every step taken from the model's metadata.

    planes (grey / colour as the model takes them) -> [resample to the model's pixel size] ->
    normalise -> infer (sliding windows with streaming argmax, or one fitted window) -> labels
    back to the image grid (nearest) -> per-class clean-up -> areas

Memory for large images: the image as read, its normalised float32 planes and the uint8
labels; the class scores are never held for the whole image (the streaming argmax frees each
region once its last window is in).
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from segrt.engine import io, preprocess
from segrt.engine.metadata import foreground_threshold
from segrt.engine.model import ModelTaskError, as_model
from segrt.engine.stages import COMPILE_STAGE, Stages, compile_seconds, pipeline_device

__all__ = ["ImagePipeline", "ImageResult", "planned_outputs"]


@dataclasses.dataclass
class ImageResult:
    labels: np.ndarray  # (H, W), or (pages, H, W) for a multi-page input
    source: str
    class_names: list
    pixel_size_mm: tuple | None  # (row, column)
    areas_px: dict  # class name -> pixels (all pages)
    timings: dict
    backend: str
    notes: list

    @property
    def areas_mm2(self) -> dict | None:
        if self.pixel_size_mm is None:
            return None
        px = self.pixel_size_mm[0] * self.pixel_size_mm[1]
        return {k: round(v * px, 9) for k, v in self.areas_px.items()}

    def summary(self) -> dict:
        mm2 = self.areas_mm2
        return {"input": self.source, "shape": list(self.labels.shape), "backend": self.backend,
                "pixel_size_mm": None if self.pixel_size_mm is None else list(self.pixel_size_mm),
                "classes": self.class_names, "areas_px": self.areas_px, "areas_mm2": mm2,
                "areas_um2": None if mm2 is None else {k: round(v * 1e6, 3) for k, v in mm2.items()},
                "timings_s": self.timings, "notes": self.notes}

    def save(self, path) -> tuple[str, str]:
        """Writes the labels (TIFF with the pixel size, or .npy) and ``<stem>.json``; both appear
        complete or not at all."""
        path, sidecar = planned_outputs(path)
        io.check_outputs([path], [self.source], suffixes=(".tif", ".tiff", ".npy"))
        io.check_outputs([sidecar], [self.source])
        io.write_labels(path, self.labels, pixel_size_mm=self.pixel_size_mm)
        with io.atomic_path(sidecar) as tmp, open(tmp, "w") as f:
            json.dump(self.summary(), f, indent=2)
        return path, sidecar


def planned_outputs(path) -> tuple[str, str]:
    """The files ``ImageResult.save(path)`` writes: the labels and ``<stem>.json``."""
    path = os.fspath(path)
    return path, os.path.splitext(path)[0] + ".json"


class ImagePipeline:
    """Semantic segmentation of 2D images with a segrt model (task semantic, 2D window).

    Args:
        model: a .onnx file with segrt metadata, or a loaded Model.
        backend: as in ``segrt.engine.load``.
        overlap, mode, sw_batch_size: sliding-window settings.
        verbose: stage read-out and a progress bar on stderr.
        device: "cpu", "cuda" or "auto", as in ``VolumePipeline``.
    """

    def __init__(self, model, *, backend="auto", overlap=0.5, mode="gaussian", sw_batch_size=1, verbose=False,
                 device="auto", **backend_options):
        self.model = as_model(model, backend, backend_options)
        self.meta = meta = self.model.metadata or {}
        path = getattr(self.model, "path", "model")
        if meta.get("task") != "semantic":
            raise ModelTaskError(f"{path}: the image pipeline runs semantic models; this model's task is "
                                 f"{meta.get('task')!r}" + ("" if meta.get("task") else
                                                            f"; describe it: segrt describe {path} --task semantic "
                                                            "-o described.onnx"))
        window = meta.get("window")
        if window is None or len(window) != 2:
            raise ModelTaskError(f"{path}: the image pipeline needs a 2D model with a window [H, W] in its metadata, "
                                 f"got window {window}; add it: segrt describe {path} --window H,W -o described.onnx")
        self.window = tuple(window)
        self.in_channels = meta.get("in_channels", 1)
        self.overlap, self.mode, self.sw_batch_size, self.verbose = overlap, mode, sw_batch_size, verbose
        self.class_names = meta.get("class_names") or []
        self.device, self._xp = pipeline_device(device, [self.model], path)

    def _plane(self, image, source, pixel_size, stages: Stages):
        meta = self.meta
        gpu = self.device == "cuda"
        where = " [GPU]" if gpu else ""
        with stages("planes"):
            x = preprocess.image_planes(image, 2, self.in_channels, source).astype(np.float32, copy=False)
        shape = x.shape[1:]
        if gpu:
            from segrt.kernels import gpu as _gpu

            with stages("upload [GPU]"):
                x = _gpu.to_device(np.ascontiguousarray(x), self._xp)
        if meta.get("resize") == "fit":
            target = self.window
        elif meta.get("spacing") and pixel_size is not None:
            target = tuple(max(1, round(n * s / t)) for n, s, t in zip(shape, pixel_size, meta["spacing"]))
        else:
            target = shape
        spec = meta.get("normalization")
        with stages("normalize" + where):  # statistics of the whole image, per channel
            xn = self._xp.stack([preprocess.normalize(ch, spec) for ch in x])
        del x
        with stages("resample" + where):
            if target != shape:
                xn = self._xp.stack([preprocess.resize_linear(ch, target) for ch in xn])
        threshold = foreground_threshold(meta)
        compiled_before = compile_seconds(self.model)
        with stages("infer" + where):
            if target == self.window:
                scores = self.model.infer(xn[None])
                scores = scores if not isinstance(scores, dict) else next(iter(scores.values()))
                labels = preprocess.labels_from_scores(scores[0], device="cuda" if gpu else "auto",
                                                       threshold=threshold)
            else:
                from segrt.engine.sliding_window import sliding_window

                labels = sliding_window(xn[None], self.window, self.model.infer, sw_batch_size=self.sw_batch_size,
                                        overlap=self.overlap, mode=self.mode, reduce="argmax", threshold=threshold,
                                        progress=self.verbose, device="cuda" if gpu else "auto")[0]
        del xn
        stages.move("infer" + where, COMPILE_STAGE, compile_seconds(self.model) - compiled_before)
        with stages("resample back" + where):
            labels = preprocess.resize_nearest(labels, shape)
        with stages("postprocess" + where):
            labels = preprocess.postprocess_labels(self._xp.ascontiguousarray(labels), meta.get("postprocess") or {},
                                                   "cuda" if gpu else "auto")
            if gpu:
                from segrt.kernels import gpu as _gpu

                labels = _gpu.to_host(labels)
        return np.ascontiguousarray(labels)

    def run(self, image, *, pixel_size_mm=None, source=None) -> ImageResult:
        """Segments an image: a path (TIFF, OME-TIFF, multi-page TIFF, PNG, JPEG, .npy) or an
        array ((H, W), (H, W, C), or (pages, H, W) with ``pages``). ``pixel_size_mm``: (row,
        column) size in mm when the file does not say (a file's own size wins when given
        neither)."""
        stages = Stages(self.verbose, events=self._xp if self._xp is not np else None)
        notes = []
        pages = False
        if isinstance(image, (str, os.PathLike)):
            source = os.fspath(image)
            with stages("read"):
                image, read_size, pages = io.read_image_planes(source)
            if pixel_size_mm is None and read_size is not None:
                pixel_size_mm = read_size
                notes.append(f"pixel size {read_size[0] * 1e3:g} x {read_size[1] * 1e3:g} um read from the file")
        else:
            image = np.asarray(image)
            colour = image.ndim == 3 and (image.shape[-1] == self.in_channels or
                                          (self.in_channels == 1 and image.shape[-1] in (3, 4)))
            pages = image.ndim == 3 and not colour
        source = source or "array"
        if pixel_size_mm is not None:
            pixel_size_mm = tuple(float(s) for s in pixel_size_mm)
            if len(pixel_size_mm) != 2 or not all(np.isfinite(pixel_size_mm)) or min(pixel_size_mm) <= 0:
                raise ValueError(f"pixel_size_mm must be two positive sizes (row, column) in mm, got {pixel_size_mm}")
        elif self.meta.get("spacing"):
            notes.append("the image's pixel size is unknown, so it ran at its own resolution (the model expects "
                         f"{self.meta['spacing']} mm); pass --spacing to resample")
        planes = list(image) if pages else [image]
        labels = np.stack([self._plane(p, source, pixel_size_mm, stages) for p in planes]) if pages else \
            self._plane(image, source, pixel_size_mm, stages)
        n_classes = max(len(self.class_names), int(labels.max(initial=0)) + 1)
        names = self.class_names or [f"class {c}" for c in range(n_classes)]
        counts = np.bincount(labels.reshape(-1), minlength=n_classes)
        areas = {(names[c] if c < len(names) else f"class {c}"): int(counts[c]) for c in range(1, len(counts))}
        timings = dict(stages.timings)
        timings["total"] = stages.total()
        return ImageResult(labels, source, names, pixel_size_mm, areas, timings, self.model.backend, notes)
