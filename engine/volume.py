"""The volume pipeline: a study in, a label volume aligned with it out, every step taken from
the model's metadata (see segrt.engine.metadata).

    reorient to RAS -> [localise and crop to the foreground] -> resample (to the model's spacing,
    or fit to its window) -> normalise -> infer (sliding window with streaming argmax, or one
    fitted window) -> labels back to the input grid (nearest) -> per-class clean-up -> volumes
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from segrt.engine import io, preprocess
from segrt.engine.metadata import foreground_threshold
from segrt.engine.model import ModelTaskError, as_model
from segrt.engine.stages import COMPILE_STAGE, Stages, compile_seconds, pipeline_device

__all__ = ["VolumePipeline", "VolumeResult", "ModelTaskError"]


@dataclasses.dataclass
class VolumeResult:
    labels: np.ndarray  # in the input's grid and axis order
    volume: io.Volume
    class_names: list
    volumes_ml: dict  # class name -> mL
    timings: dict  # stage -> seconds
    backend: str
    crop: tuple | None  # the box the model ran on, in RAS-canonical voxels
    notes: list
    class_codes: dict | None = None  # from the metadata, for DICOM SEG
    model_name: str = "segrt model"

    def summary(self) -> dict:
        return {"input": self.volume.source, "shape": list(self.labels.shape),
                "spacing_mm": [round(s, 6) for s in self.volume.spacing], "backend": self.backend,
                "classes": self.class_names, "volumes_ml": self.volumes_ml,
                "crop_ras_voxels": None if self.crop is None else [[s.start, s.stop] for s in self.crop],
                "timings_s": self.timings, "notes": self.notes}

    def save(self, path, *, dicom_seg=None) -> tuple:
        """Writes the labels (format from the suffix) and ``<stem>.json`` with the summary, each
        complete or not at all. ``path`` ending in .dcm, or ``dicom_seg``: also a DICOM SEG
        referencing the source series (the labels then go to ``<stem>.nii.gz``). Returns the
        paths written: labels, JSON[, SEG]."""
        path, sidecar, seg = planned_outputs(path, dicom_seg)
        sources = [self.volume.source, *self.volume.dicom_files]
        io.check_outputs([path], sources, suffixes=io.LABEL_SUFFIXES)
        io.check_outputs([sidecar] + ([seg] if seg else []), sources)
        if seg and (self.volume.kind != "dicom" or not self.volume.dicom_files):
            from segrt.engine.dicom_seg import DicomSegError

            raise DicomSegError(f"{self.volume.source}: a DICOM SEG references the DICOM images it segments; this "
                                f"input is {self.volume.kind}: write {os.path.splitext(path)[0]}.nii.gz instead")
        io.write_labels(path, self.labels, self.volume)
        with io.atomic_path(sidecar) as tmp, open(tmp, "w") as f:
            json.dump(self.summary(), f, indent=2)
        if not seg:
            return path, sidecar
        from segrt.engine.dicom_seg import write_dicom_seg

        write_dicom_seg(seg, self.labels, self.volume, self.class_names, class_codes=self.class_codes,
                        model_name=self.model_name)
        return path, sidecar, seg


MIN_SIZE = 2  # voxels along every axis: a single voxel or slab cannot be resampled and segmented


def planned_outputs(path, dicom_seg=None) -> tuple:
    """The files ``VolumeResult.save(path, dicom_seg=...)`` writes: the labels, ``<stem>.json``
    and the DICOM SEG (None without one). A .dcm ``path`` is the SEG, the labels go to
    ``<stem>.nii.gz``."""
    path = os.fspath(path)
    if path.lower().endswith(".dcm"):
        dicom_seg, path = path, path[:-4] + ".nii.gz"
    stem = path[:-7] if path.lower().endswith(".nii.gz") else os.path.splitext(path)[0]
    return path, stem + ".json", (os.fspath(dicom_seg) if dicom_seg else None)


class VolumePipeline:
    """Semantic segmentation of 3D studies with a segrt model.

    Args:
        model: a .onnx file exported by segrt (its metadata drives every step) or a loaded Model.
        backend: as in ``segrt.engine.load``.
        overlap, mode, sw_batch_size: sliding-window settings (models with resize "spacing");
            overlap and mode default to the metadata's ``sliding_window``, else 0.5 and
            "gaussian" (window placement and test-time mirroring come from the metadata too).
        localizer: a coarse model for ``crop`` (default: the file named in the metadata,
            beside the model; else the model itself on the fitted whole volume).
        verbose: stage read-out and a progress bar on stderr.
        device: "cpu", "cuda" or "auto". "cuda": the reoriented study is uploaded once; the
            normalisation statistics, the localiser's crop, resampling to the model's grid,
            normalisation, the network passes, sliding-window blending, argmax, resampling back
            and clean-up run in device memory, and the uint8 labels come down once (the
            localiser's foreground box is measured on a small download of its mask).
            Reading, reorientation and the NaN scan stay on the host. It needs a backend that
            takes device arrays (torch, trt). "auto": "cuda" when the model's backend takes
            device arrays, else "cpu".
    """

    def __init__(self, model, *, backend="auto", overlap=None, mode=None, sw_batch_size=1, localizer=None,
                 verbose=False, device="auto", **backend_options):
        self.model = as_model(model, backend, backend_options)
        self.meta = meta = self.model.metadata or {}
        path = getattr(self.model, "path", "model")
        if meta.get("task") != "semantic":
            raise ModelTaskError(f"{path}: the volume pipeline runs semantic models; this model's task is "
                                 f"{meta.get('task')!r}" + (" (use the instance pipeline)" if meta.get("task") else
                                                            "; export it with metadata {'task': 'semantic', ...}"))
        if meta.get("spatial_dims", len(meta.get("window", [0, 0, 0]))) != 3:
            raise ModelTaskError(f"{path}: the volume pipeline needs a 3D model; this one has spatial_dims "
                                 f"{meta.get('spatial_dims')}")
        if "window" not in meta:
            raise ModelTaskError(f"{path}: the model's metadata has no window; re-export it with metadata "
                                 "{'window': [D, H, W], ...}")
        # one window's input and scores must fit the memory budget before anything runs
        io.check_input_size([meta.get("in_channels", 1) + 1] + list(meta["window"]), f"{path}: its metadata window")
        self.window = tuple(meta["window"])
        self.in_channels = 1  # the network sees the study's one channel
        sw = meta.get("sliding_window") or {}
        self.overlap = sw.get("overlap", 0.5) if overlap is None else overlap
        self.mode = sw.get("mode", "gaussian") if mode is None else mode
        self.placement, self.mirror_axes = sw.get("placement", "monai"), tuple(sw.get("mirror_axes", ()))
        self.sw_batch_size, self.verbose = sw_batch_size, verbose
        self.localizer = None
        crop = meta.get("crop")
        if localizer is not None:
            self.localizer = as_model(localizer, backend, backend_options)
        elif crop and crop.get("kind") == "foreground" and crop.get("localizer"):
            loc_path = os.path.join(os.path.dirname(os.path.abspath(path)), crop["localizer"])
            if not os.path.isfile(loc_path):
                raise ModelTaskError(f"{path}: its metadata names the localizer {crop['localizer']!r}, which is not "
                                     f"beside it ({loc_path})")
            self.localizer = as_model(loc_path, backend, backend_options)
        if crop and crop.get("kind") == "nonzero":
            pass  # a box measured on the image itself: no network
        elif crop and self.localizer is None and meta.get("resize") != "fit":
            raise ModelTaskError(f"{path}: crop without a localizer needs resize 'fit' (the model localises on the "
                                 "whole volume fitted to its window)")
        self.class_names = meta.get("class_names") or []
        networks = [self.model] + ([self.localizer] if self.localizer else [])
        self.device, self._xp = pipeline_device(device, networks, path)

    # -- one network pass in the RAS grid: fit or sliding window -> labels of x's shape
    def _segment(self, model, x: np.ndarray, spacing, stats, stages: Stages, back: bool = True) -> np.ndarray:
        meta = model.metadata or {}
        window = tuple(meta["window"])
        nearest = meta.get("interpolation", "linear") == "nearest"
        if meta.get("resize") == "fit":
            target = window
        elif meta.get("spacing"):
            target = tuple(max(1, round(n * s / t)) for n, s, t in zip(x.shape, spacing, meta["spacing"]))
        else:
            target = x.shape
        gpu = self.device == "cuda"
        where = " [GPU]" if gpu else ""  # x is already on the device there
        resize = preprocess.resize_nearest if nearest else preprocess.resize_linear
        if meta.get("normalize_before_resample"):  # nnU-Net's order
            with stages("normalize" + where):
                xr = preprocess.normalize(x, meta.get("normalization"), stats)
            with stages("resample" + where):
                xn = resize(xr, target)
        else:
            with stages("resample" + where):
                xr = resize(x, target)
            with stages("normalize" + where):
                xn = preprocess.normalize(xr, meta.get("normalization"), stats)
        del xr
        threshold = foreground_threshold(meta)
        # nnU-Net's way back: the class scores resampled linearly, then the argmax (smoother, and
        # small structures keep their size); needs the scores in the model's grid in memory
        n_classes = len(meta.get("class_names") or []) or 2
        scores_back = (back and meta.get("resample_back") == "scores" and tuple(target) != tuple(x.shape)
                       and 4 * n_classes * math.prod(target) < io.memory_budget() // 2)
        compiled_before = compile_seconds(model)
        with stages("infer" + where):
            batch = xn[None, None]
            predictor = _mirrored(model.infer, self.mirror_axes) if model is self.model else model.infer
            if target == window:
                scores = predictor(batch)
                scores = (scores if not isinstance(scores, dict) else next(iter(scores.values())))[0]
            else:
                from segrt.engine.sliding_window import sliding_window

                scores = sliding_window(batch, window, predictor, sw_batch_size=self.sw_batch_size,
                                        overlap=self.overlap, mode=self.mode,
                                        reduce=None if scores_back else "argmax", threshold=threshold,
                                        placement=self.placement, progress=self.verbose,
                                        device="cuda" if gpu else "auto")[0]
            if not scores_back:
                labels = (scores if scores.ndim == len(target) else
                          preprocess.labels_from_scores(scores, device="cuda" if gpu else "auto", threshold=threshold))
        stages.move("infer" + where, COMPILE_STAGE, compile_seconds(model) - compiled_before)
        if not back:
            return labels
        with stages("resample back [GPU]" if gpu else "resample back"):
            if scores_back:
                return _argmax_resampled(scores, tuple(x.shape), threshold, self._xp)
            return preprocess.resize_nearest(labels, x.shape)

    def _localize(self, x, spacing, stats, stages: Stages):
        crop = self.meta["crop"]
        model = self.localizer or self.model
        with stages("localize [GPU]" if self.device == "cuda" else "localize"):
            inner = Stages()
            # the box is measured in the localiser's own grid and scaled, as deepbet does
            fg = self._segment(model, x, spacing, stats, inner, back=False) > 0
            if bool(fg.any()):
                from segrt.kernels.label import keep_largest

                fg = keep_largest(fg.view(np.uint8), device="cuda" if self.device == "cuda" else "auto").view(bool)
            if self.device == "cuda":  # the box is measured on the host: one small download
                from segrt.kernels import gpu as _gpu

                fg = _gpu.to_host(fg)
            return preprocess.foreground_box(fg, crop["margin"], crop["min_fraction"], shape=x.shape)

    def run(self, volume, *, spacing=None, series=None) -> VolumeResult:
        """Segments a Volume, a path (see segrt.engine.io.read_volume) or a 3D array. ``series``:
        the SeriesInstanceUID to read from a DICOM folder that holds several."""
        stages = Stages(self.verbose, events=self._xp if self._xp is not np else None)  # GPU stages: CUDA events
        notes = []
        if not isinstance(volume, io.Volume):
            with stages("read"):
                volume = (io.Volume.from_array(volume, spacing) if isinstance(volume, np.ndarray)
                          else io.read_volume(volume, spacing=spacing, series=series))
        data = np.asarray(volume.array)
        if data.ndim != 3:
            raise io.InputFileError(f"{volume.source}: expected a 3D volume, got shape {data.shape}")
        if data.dtype.kind not in "biuf":
            raise io.InputFileError(f"{volume.source}: expected a numeric image, got dtype {data.dtype}")
        if min(data.shape) < MIN_SIZE:
            single = volume.kind == "dicom" and sorted(data.shape)[0] == 1
            raise io.InputFileError(f"{volume.source}: a volume of {' x '.join(map(str, data.shape))} voxels is too "
                                    f"small to segment; expected at least {MIN_SIZE} voxels along every axis"
                                    + ("; this is one DICOM slice: give the folder that holds the whole series"
                                       if single else ""))
        want = self.meta.get("modality")
        if want and volume.modality and volume.modality != want:
            model_name = getattr(self.model, "path", "the model")
            raise ModelTaskError(f"{volume.source}: a {volume.modality} study, but {model_name} "
                                 f"was trained on {want}; segment it with a {volume.modality} model")
        with stages("reorient"):
            if self.meta.get("input_axes"):  # the network's own axis order of the stored array (nnU-Net)
                orient = preprocess.Orientation(tuple(self.meta["input_axes"]), (False,) * 3)
                ras, ras_affine = orient.apply(data), np.asarray(volume.affine, float)[:, list(orient.perm) + [3]]
            else:
                ras, ras_affine, orient = preprocess.to_canonical(data, volume.affine)
            ras = np.asarray(ras, np.float32)
            bad = ~np.isfinite(ras)
            n_bad = int(bad.sum())
            if n_bad == ras.size:
                raise io.InputFileError(f"{volume.source}: every voxel is NaN or infinite; there is no image to "
                                        "segment")
            if n_bad:
                notes.append(f"{n_bad} NaN / infinite voxel(s) set to 0")
                ras = np.where(bad, np.float32(0), ras)
            lo, hi = float(ras.min()), float(ras.max())
            if lo == hi and not n_bad:
                raise io.InputFileError(f"{volume.source}: every voxel holds the same value ({lo:g}); a blank study "
                                        "has nothing to segment")
            if want == "CT" and lo > -500:  # air is about -1000 HU; a CT without any is rare, an MR common
                notes.append(f"the model expects CT in Hounsfield units, but no voxel is below -500 (minimum {lo:g}); "
                             "is this study CT, rescaled to HU?")
            elif want and want != "CT" and lo <= -900 and float(np.mean(ras <= -900)) > 0.05:
                notes.append(f"the model was trained on {want}, but this study looks like CT in Hounsfield units "
                             f"({float(np.mean(ras <= -900)) * 100:.0f} % of voxels at -900 or below, as air is in "
                             "CT); its labels may be meaningless")
        ras_spacing = tuple(np.linalg.norm(ras_affine[:3, :3], axis=0))
        gpu = self.device == "cuda"
        if gpu:
            from segrt.kernels import gpu as _gpu

            with stages("upload [GPU]"):  # the one upload: the reoriented float32 study
                ras = _gpu.to_device(np.ascontiguousarray(ras), self._xp)
        with stages("statistics [GPU]" if gpu else "statistics"):
            stats = preprocess.percentile_stats(ras, self.meta.get("normalization") or {})
        box = None
        crop = self.meta.get("crop")
        if crop and crop["kind"] == "nonzero":
            with stages("crop"):
                box = preprocess.nonzero_box(ras)
        elif crop:
            box = self._localize(ras, ras_spacing, stats, stages)
            if box is None:
                notes.append("the localizer found no foreground; the model ran on the whole volume")
        region = ras[box] if box is not None else ras
        labels_region = self._segment(self.model, region, ras_spacing, stats, stages)
        with stages("postprocess [GPU]" if gpu else "postprocess"):
            labels = self._xp.zeros(ras.shape, labels_region.dtype)
            labels[box if box is not None else ...] = labels_region
            labels = preprocess.postprocess_labels(labels, self.meta.get("postprocess") or {},
                                                   "cuda" if gpu else "auto")
            if gpu:  # the one download: uint8 labels
                from segrt.kernels import gpu as _gpu

                labels = _gpu.to_host(labels)
            labels = np.ascontiguousarray(orient.undo(labels))
        names = self.class_names or [f"class {c}" for c in range(int(labels.max(initial=0)) + 1)]
        counts = np.bincount(labels.reshape(-1), minlength=len(names))
        volumes = {names[c] if c < len(names) else f"class {c}": round(float(counts[c]) * volume.voxel_volume_ml, 4)
                   for c in range(1, len(counts))}
        timings = dict(stages.timings)
        timings["total"] = stages.total()
        return VolumeResult(labels, volume, names, volumes, timings, self.model.backend, box, notes,
                            self.meta.get("class_codes"),
                            os.path.splitext(os.path.basename(getattr(self.model, "path", "segrt model")))[0])


def _argmax_resampled(scores, shape, threshold, xp):
    """Labels of ``scores`` (C, *grid) resampled linearly to ``shape``, one class at a time
    (memory: two float32 volumes of ``shape``, not C); first maximum wins, as np.argmax."""
    if scores.shape[0] == 1:
        return (preprocess.resize_linear(scores[0], shape) > threshold).astype(np.uint8)
    best = preprocess.resize_linear(scores[0], shape)
    labels = xp.zeros(shape, np.uint8 if scores.shape[0] <= 256 else np.uint16)
    for c in range(1, scores.shape[0]):
        cand = preprocess.resize_linear(scores[c], shape)
        better = cand > best
        labels[better] = c
        xp.maximum(best, cand, out=best)
    return labels


def _mirrored(infer, axes):
    """Test-time mirroring: the network on the batch flipped along every combination of the
    spatial ``axes`` (nnU-Net's TTA), each result flipped back, the scores averaged."""
    if not axes:
        return infer
    import itertools

    combos = [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]

    from segrt.kernels import gpu

    def run(batch):
        xp = np if isinstance(batch, np.ndarray) else gpu.array_module()
        total = None
        for combo in combos:
            dims = tuple(2 + a for a in combo)
            x = batch[(slice(None),) * 2 + tuple(slice(None, None, -1) if d in dims else slice(None)
                                                 for d in range(2, batch.ndim))] if dims else batch
            out = infer(xp.ascontiguousarray(x))
            out = out if not isinstance(out, dict) else next(iter(out.values()))
            out = out[(slice(None),) * 2 + tuple(slice(None, None, -1) if d in dims else slice(None)
                                               for d in range(2, out.ndim))] if dims else out
            total = out.astype(np.float32, copy=True) if total is None else total + out
        return total / np.float32(len(combos))

    return run
