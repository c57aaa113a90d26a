"""Self-describing models: the metadata segrt stores inside an ONNX file.

The metadata is one JSON object under the ONNX ``metadata_props`` key ``segrt`` (so it
round-trips exactly), validated against the schema below on write and on load.

Schema (version 1); every field is optional unless noted:

- ``schema``: 1 (written by segrt).
- ``task`` (required): "semantic", "star-convex-2d" or "star-convex-3d".
- ``spatial_dims``: 2 or 3 (star-convex-2d implies 2, star-convex-3d implies 3).
- ``window``: the network's window, one positive int per spatial axis.
- ``in_channels``: positive int.
- ``class_names``: list of strings (semantic: index = class id, background first).
- ``spacing``: voxel / pixel spacing the network expects, one positive number per axis (mm).
- ``normalization``: {"kind": "none" | "ct" | "zscore" | "percentile", ...}:
  ct: "window": [low, high] (clipped, mapped to [0, 1]); percentile: "low", "high" (percent,
  0 <= low < high <= 100; percentiles of the whole input, mapped to [0, 1]) and "clip"
  (bool, default true); zscore: optional "mean", "std" (else the image's own), and "mask":
  "nonzero" (statistics of the non-zero voxels only, the others set to 0, as nnU-Net's
  use_mask_for_norm). Any kind may
  add "standardize" (bool: then z-score over the network input) and "scale", "shift"
  (finally ``x * scale + shift``).
- ``resize``: "spacing" (default: resample to ``spacing`` when given, then sliding windows of
  ``window``) or "fit" (resample the, possibly cropped, input to exactly ``window`` and run
  once: for networks trained on whole, fitted volumes); ``interpolation``: "nearest" or
  "linear" (default) for the image; labels always go back by nearest neighbour.
- ``crop``: {"kind": "foreground", "margin": fraction added per side (default 0.1),
  "min_fraction": a slice counts as foreground above this fraction (default 0.02),
  "localizer": file name of a coarse model beside this one (optional; without it the model
  localises on the fitted whole volume itself)}: run on the bounding box of the predicted
  foreground (largest component) grown by the margin. {"kind": "nonzero"}: run on the bounding
  box of the non-zero voxels (nnU-Net's crop), labels outside it are background.
- ``postprocess``: {"keep_largest": {class id: k} , "remove_small": {class id: min voxels},
  "fill_holes": [class id, ...]} (class ids as strings in JSON, ints in Python).
- ``star``: for star-convex tasks: {"n_rays": int >= 3, "grid": [int, ...],
  "prob_thresh": float, "nms_thresh": float, "rays_anisotropy": [float, float, float] | null}.
- ``divisor``: input sizes must be multiples of this (the network's total downsampling);
  inputs are padded up to it.
- ``context``: pixels (voxels) of context a tile needs on each side for its centre to equal
  whole-image inference; tiled instance inference keeps only tile centres.
- ``outputs``: output names in the order the network returns them (e.g. ["prob", "dist"]).
- ``layout``: "channels_first" (default: (N, C, *spatial), PyTorch's order) or
  "channels_last" ((N, *spatial, C), TensorFlow's / Keras's order). segrt hands every backend
  channels-first batches and transposes them for a channels-last model (and its outputs
  back), so pipelines, ``sliding_window`` and ``segrt check`` see one order.
- ``activation``: what the network's scores are: "logits" (default), "softmax" or "sigmoid"
  (probabilities). One score channel is foreground where it exceeds 0 (logits) or 0.5
  (softmax / sigmoid); several channels take the argmax whatever the activation.
- ``sliding_window``: how windows are placed and blended: {"overlap": fraction in [0, 1),
  "mode": "constant" | "gaussian" | "gaussian_nnunet", "placement": "monai" | "nnunet",
  "mirror_axes": [spatial axis, ...] (test-time augmentation: the network also runs on the
  window flipped along every combination of these axes, the logits averaged)}; a pipeline's
  own arguments override it.
- ``normalize_before_resample``: true to normalise the study before resampling it to the model's
  grid (nnU-Net's order: a clipping CT window then interpolates clipped values, so boundaries
  against air do not erode); default false (resample, then normalise: MONAI's usual order).
- ``resample_back``: "labels" (default: the labels go back to the study's grid by nearest
  neighbour) or "scores" (the class scores are resampled linearly, then the argmax: nnU-Net's
  way; used when the scores in the model's grid fit half the memory budget, else "labels").
- ``input_axes``: the network takes the stored array's axes in this order (a permutation of
  the spatial axes), without reorientation to RAS: nnU-Net works on the array as stored
  (SimpleITK's z, y, x order, then its plans' transpose), so its models declare e.g. [2, 1, 0].
- ``class_codes``: coded concepts of the classes for DICOM SEG, {class id: {"category":
  [code value, coding scheme, meaning], "type": [...]}} (e.g. SNOMED CT "SCT"); classes
  without one are written as "Tissue".
- ``modality``: the imaging modality the network was trained on, as DICOM names it ("CT",
  "MR", "PT", "US", ...): a DICOM study of another modality is refused, and a CT model given
  values that cannot be Hounsfield units gets a note.
"""
from __future__ import annotations

import json
import math
import numbers
import os

__all__ = ["MetadataError", "KEY", "TASKS", "LAYOUTS", "ACTIVATIONS", "validate", "to_json", "from_json",
           "foreground_threshold"]

KEY = "segrt"
MAX_WINDOW = 4096  # per axis; a window beyond it is a typo or a hostile file, not a network
SCHEMA_VERSION = 1
TASKS = ("semantic", "star-convex-2d", "star-convex-3d")
NORMALIZATIONS = ("none", "ct", "zscore", "percentile")
LAYOUTS = ("channels_first", "channels_last")
ACTIVATIONS = ("logits", "softmax", "sigmoid")
_FIELDS = ("layout", "activation", "class_codes", "sliding_window", "input_axes", "normalize_before_resample",
           "resample_back", "schema", "task", "spatial_dims", "window", "in_channels", "class_names", "spacing", "normalization",
           "resize", "interpolation", "crop", "postprocess", "star", "divisor", "context", "outputs", "modality")


class MetadataError(ValueError):
    """Model metadata that does not follow the schema (the message names the field)."""


def _fail(field: str, expected: str, got) -> None:
    raise MetadataError(f"metadata field {field!r} must be {expected}, got {got!r}")


def _int(v, field, lo=None):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or (lo is not None and v < lo):
        _fail(field, f"an integer >= {lo}" if lo is not None else "an integer", v)
    return int(v)


def _num(v, field, positive=False):
    if (isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v))
            or (positive and v <= 0)):
        _fail(field, "a finite positive number" if positive else "a finite number", v)
    return float(v)


def _list(v, field, n=None):
    if not isinstance(v, (list, tuple)) or (n is not None and len(v) != n):
        _fail(field, f"a list of {n} values" if n is not None else "a list", v)
    return list(v)


def _class_map(v, field, lo):
    if not isinstance(v, dict):
        _fail(field, "a mapping {class id: integer}", v)
    out = {}
    for k, n in v.items():
        try:
            cls = int(k)
        except (TypeError, ValueError):
            _fail(field, "a mapping with integer class ids", k)
        if isinstance(k, str) and k.strip() != str(cls):
            _fail(field, "a mapping with integer class ids", k)
        out[cls] = _int(n, f"{field}[{k}]", lo)
    return out


def validate(meta: dict) -> dict:
    """A checked, normalised copy of ``meta`` (ints as ints, tuples as lists); raises MetadataError."""
    if not isinstance(meta, dict):
        raise MetadataError(f"metadata must be a dict, got {type(meta).__name__}")
    unknown = sorted(set(meta) - set(_FIELDS))
    if unknown:
        raise MetadataError(f"unknown metadata field(s) {unknown}; known fields: {list(_FIELDS)}")
    out: dict = {"schema": SCHEMA_VERSION}
    if "schema" in meta and meta["schema"] != SCHEMA_VERSION:
        raise MetadataError(f"metadata schema {meta['schema']!r} is not supported (this segrt reads {SCHEMA_VERSION})")
    task = meta.get("task")
    if task not in TASKS:
        _fail("task", f"one of {TASKS}", task)
    out["task"] = task
    implied = {"star-convex-2d": 2, "star-convex-3d": 3}.get(task)
    dims = meta.get("spatial_dims", implied)
    if dims is not None:
        if dims not in (2, 3) or isinstance(dims, bool):
            _fail("spatial_dims", "2 or 3", dims)
        if implied is not None and dims != implied:
            _fail("spatial_dims", f"{implied} for task {task}", dims)
        out["spatial_dims"] = int(dims)
    if "window" in meta:
        out["window"] = [_int(w, "window", 1) for w in _list(meta["window"], "window", dims)]
        if max(out["window"], default=0) > MAX_WINDOW:
            _fail("window", f"sizes of at most {MAX_WINDOW} (a network's input window, in voxels)", meta["window"])
        if dims is None:
            if len(out["window"]) not in (2, 3):
                _fail("window", "2 or 3 sizes", meta["window"])
            out["spatial_dims"] = dims = len(out["window"])
    if "in_channels" in meta:
        out["in_channels"] = _int(meta["in_channels"], "in_channels", 1)
    if "class_names" in meta:
        names = _list(meta["class_names"], "class_names")
        if not all(isinstance(n, str) for n in names):
            _fail("class_names", "a list of strings", names)
        out["class_names"] = names
    if "spacing" in meta:
        out["spacing"] = [_num(s, "spacing", True) for s in _list(meta["spacing"], "spacing", dims)]
    if "normalization" in meta:
        out["normalization"] = _normalization(meta["normalization"])
    if "postprocess" in meta:
        pp = meta["postprocess"]
        if not isinstance(pp, dict) or set(pp) - {"keep_largest", "remove_small", "fill_holes"}:
            _fail("postprocess", "a dict with keep_largest / remove_small / fill_holes", pp)
        out["postprocess"] = {k: _class_map(v, f"postprocess.{k}", 0 if k == "remove_small" else 1)
                              for k, v in pp.items() if k != "fill_holes"}
        if "fill_holes" in pp:
            out["postprocess"]["fill_holes"] = [_int(c, "postprocess.fill_holes", 1)
                                                for c in _list(pp["fill_holes"], "postprocess.fill_holes")]
    for key, choices in (("resize", ("spacing", "fit")), ("interpolation", ("nearest", "linear")),
                         ("resample_back", ("labels", "scores")),
                         ("layout", LAYOUTS), ("activation", ACTIVATIONS)):
        if key in meta:
            if meta[key] not in choices:
                _fail(key, f"one of {choices}", meta[key])
            out[key] = meta[key]
    if out.get("resize") == "fit" and "window" not in out:
        _fail("window", 'given when resize is "fit"', None)
    if "crop" in meta:
        out["crop"] = _crop(meta["crop"])
    if "divisor" in meta:
        out["divisor"] = _int(meta["divisor"], "divisor", 1)
    if "context" in meta:
        out["context"] = _int(meta["context"], "context", 0)
    if "star" in meta:
        if not task.startswith("star"):
            _fail("star", f"absent for task {task}", meta["star"])
        out["star"] = _star(meta["star"], dims)
    if "normalize_before_resample" in meta:
        out["normalize_before_resample"] = _bool(meta["normalize_before_resample"], "normalize_before_resample")
    if "sliding_window" in meta:
        out["sliding_window"] = _sliding_window(meta["sliding_window"], dims)
    if "input_axes" in meta:
        axes = [_int(a, "input_axes", 0) for a in _list(meta["input_axes"], "input_axes", dims)]
        if sorted(axes) != list(range(len(axes))):
            _fail("input_axes", f"a permutation of {list(range(len(axes)))}", meta["input_axes"])
        out["input_axes"] = axes
    if "class_codes" in meta:
        out["class_codes"] = _class_codes(meta["class_codes"])
    if "modality" in meta:
        m = meta["modality"]
        if not isinstance(m, str) or not m.isalnum() or not 1 < len(m) <= 4 or m != m.upper():
            _fail("modality", 'a DICOM modality code such as "CT" or "MR"', m)
        out["modality"] = m
    if "outputs" in meta:
        names = _list(meta["outputs"], "outputs")
        if not names or not all(isinstance(n, str) and n for n in names):
            _fail("outputs", "a list of output names", names)
        out["outputs"] = names
    return out


def _normalization(v) -> dict:
    if not isinstance(v, dict) or v.get("kind") not in NORMALIZATIONS:
        _fail("normalization", f"a dict with kind in {NORMALIZATIONS}", v)
    kind = v["kind"]
    out = {"kind": kind}
    if kind == "ct":
        lo, hi = (_num(x, "normalization.window") for x in _list(v.get("window"), "normalization.window", 2))
        if not lo < hi:
            _fail("normalization.window", "[low, high] with low < high", v.get("window"))
        out["window"] = [lo, hi]
    elif kind == "percentile":
        lo, hi = _num(v.get("low"), "normalization.low"), _num(v.get("high"), "normalization.high")
        if not 0 <= lo < hi <= 100:
            _fail("normalization", "percentiles with 0 <= low < high <= 100", v)
        out["low"], out["high"] = lo, hi
    elif kind == "zscore":
        if "mean" in v:
            out["mean"] = _num(v["mean"], "normalization.mean")
        if "std" in v:
            out["std"] = _num(v["std"], "normalization.std", True)
        if "mask" in v:
            if v["mask"] != "nonzero" or "mean" in v:
                _fail("normalization.mask", '"nonzero" (with the image\'s own mean and std)', v["mask"])
            out["mask"] = "nonzero"
    if kind == "percentile":
        out["clip"] = _bool(v.get("clip", True), "normalization.clip")
    if "standardize" in v:
        out["standardize"] = _bool(v["standardize"], "normalization.standardize")
    for k in ("scale", "shift"):
        if k in v:
            out[k] = _num(v[k], f"normalization.{k}")
    extra = set(v) - set(out) - {"kind"}
    if extra:
        _fail("normalization", f"without the fields {sorted(extra)} for kind {kind!r}", v)
    return out


def _sliding_window(v, dims) -> dict:
    from segrt.kernels.stitch import MODES, PLACEMENTS

    if not isinstance(v, dict) or set(v) - {"overlap", "mode", "placement", "mirror_axes"}:
        _fail("sliding_window", "a dict with overlap / mode / placement / mirror_axes", v)
    out = {}
    if "overlap" in v:
        out["overlap"] = _num(v["overlap"], "sliding_window.overlap")
        if not 0 <= out["overlap"] < 1:
            _fail("sliding_window.overlap", "a fraction in [0, 1)", v["overlap"])
    for key, choices in (("mode", MODES), ("placement", PLACEMENTS)):
        if key in v:
            if v[key] not in choices:
                _fail(f"sliding_window.{key}", f"one of {choices}", v[key])
            out[key] = v[key]
    if "mirror_axes" in v:
        axes = [_int(a, "sliding_window.mirror_axes", 0) for a in _list(v["mirror_axes"], "sliding_window.mirror_axes")]
        if len(set(axes)) != len(axes) or (dims is not None and any(a >= dims for a in axes)):
            _fail("sliding_window.mirror_axes", "distinct spatial axes", v["mirror_axes"])
        out["mirror_axes"] = axes
    return out


def _class_codes(v) -> dict:
    if not isinstance(v, dict):
        _fail("class_codes", "a mapping {class id: {category: [...], type: [...]}}", v)
    out = {}
    for k, entry in v.items():
        try:
            cls = int(k)
        except (TypeError, ValueError):
            _fail("class_codes", "a mapping with integer class ids", k)
        if cls < 1 or not isinstance(entry, dict) or not entry or set(entry) - {"category", "type"}:
            _fail(f"class_codes[{k}]", "a dict with category and / or type, for a class id >= 1", entry)
        codes = {}
        for part, triple in entry.items():
            if (not isinstance(triple, (list, tuple)) or len(triple) != 3
                    or not all(isinstance(t, str) and t.strip() for t in triple)):
                _fail(f"class_codes[{k}].{part}", "[code value, coding scheme, meaning] as strings", triple)
            codes[part] = list(triple)
        out[str(cls)] = codes
    return out


def _bool(v, field) -> bool:
    if not isinstance(v, bool):
        _fail(field, "true or false", v)
    return v


def _crop(v) -> dict:
    if isinstance(v, dict) and v.get("kind") == "nonzero":
        if set(v) != {"kind"}:
            _fail("crop", 'only {"kind": "nonzero"} for a non-zero crop', v)
        return {"kind": "nonzero"}
    if not isinstance(v, dict) or v.get("kind") != "foreground":
        _fail("crop", 'a dict with kind "foreground" or "nonzero"', v)
    extra = set(v) - {"kind", "margin", "min_fraction", "localizer"}
    if extra:
        _fail("crop", f"without the fields {sorted(extra)}", v)
    out = {"kind": "foreground", "margin": _num(v.get("margin", 0.1), "crop.margin"),
           "min_fraction": _num(v.get("min_fraction", 0.02), "crop.min_fraction")}
    if not 0 <= out["margin"] <= 1 or not 0 <= out["min_fraction"] < 1:
        _fail("crop", "margin in [0, 1] and min_fraction in [0, 1)", v)
    if "localizer" in v:
        name = v["localizer"]
        plain = isinstance(name, str) and os.path.basename(name) == name and "\\" not in name
        if not plain or not name.endswith(".onnx") or name.startswith("."):
            _fail("crop.localizer", "a plain .onnx file name beside the model (no folders)", name)
        out["localizer"] = name
    return out


def _star(v, dims) -> dict:
    if not isinstance(v, dict):
        _fail("star", "a dict", v)
    extra = set(v) - {"n_rays", "grid", "prob_thresh", "nms_thresh", "rays_anisotropy"}
    if extra:
        _fail("star", f"without the fields {sorted(extra)}", v)
    out = {"n_rays": _int(v.get("n_rays"), "star.n_rays", 3)}
    if "grid" in v:
        out["grid"] = [_int(g, "star.grid", 1) for g in _list(v["grid"], "star.grid", dims)]
    for k in ("prob_thresh", "nms_thresh"):
        if k in v:
            t = _num(v[k], f"star.{k}")
            if not 0 <= t <= 1:
                _fail(f"star.{k}", "a number in [0, 1]", v[k])
            out[k] = t
    if v.get("rays_anisotropy") is not None:
        out["rays_anisotropy"] = [_num(a, "star.rays_anisotropy", True)
                                  for a in _list(v["rays_anisotropy"], "star.rays_anisotropy", 3)]
    return out


def to_json(meta: dict) -> str:
    """The JSON stored in the model (validated; stable key order)."""
    checked = validate(meta)
    if "postprocess" in checked:
        checked["postprocess"] = {k: {str(c): n for c, n in v.items()} if isinstance(v, dict) else v
                                  for k, v in checked["postprocess"].items()}
    return json.dumps(checked, sort_keys=True, separators=(",", ":"))


def from_json(text: str, source: str = "model") -> dict:
    """Parses and validates stored metadata; errors name the source file."""
    try:
        raw = json.loads(text)
    except (TypeError, ValueError) as err:
        raise MetadataError(f"{source}: segrt metadata is not valid JSON ({err})") from None
    except RecursionError:
        raise MetadataError(f"{source}: segrt metadata nests too deeply to be read (a damaged or hostile file)") \
            from None
    try:
        return validate(raw)
    except MetadataError as err:
        raise MetadataError(f"{source}: {err}") from None


def foreground_threshold(meta: dict | None) -> float:
    """Where one score channel counts as foreground: above 0 for logits, 0.5 for probabilities."""
    return 0.5 if (meta or {}).get("activation") in ("softmax", "sigmoid") else 0.0
