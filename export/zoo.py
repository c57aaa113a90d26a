"""Models by name. ``segrt run deepbet study.nii.gz`` finds (and at first use converts) the
model; any other MODEL argument is a path to a segrt .onnx file.

- ``deepbet``: deepbet's 3D brain-extraction network for T1 MRI (MIT licence, the ``deepbet``
  package, installed with ``pip install --no-deps deepbet==1.0.2``), exported from its
  TorchScript files at first use into the cache with its localiser and its licence text;
  nothing of it is shipped with segrt.
- ``nuclei`` / ``instruments``: segrt's own demo models in ``models/`` (trained by scripts in
  the repository; see their model cards).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import warnings

__all__ = ["resolve", "cache_root", "deepbet", "NAMES", "DEEPBET_METADATA", "DEEPBET_LOCALIZER_METADATA"]

_NORMALIZATION = {"kind": "percentile", "low": 0.5, "high": 99.5, "clip": True, "standardize": True, "scale": 0.226,
                  "shift": 0.449}
# deepbet's own pipeline (deepbet.bet.BrainExtraction.run_model / postprocess), as metadata
DEEPBET_LOCALIZER_METADATA = {
    "task": "semantic", "spatial_dims": 3, "window": [128, 128, 128], "in_channels": 1,
    "class_names": ["background", "brain"], "resize": "fit", "interpolation": "nearest",
    "normalization": _NORMALIZATION, "postprocess": {"keep_largest": {1: 1}}, "outputs": ["probabilities"]}
DEEPBET_METADATA = {
    "task": "semantic", "spatial_dims": 3, "window": [256, 256, 256], "in_channels": 1, "modality": "MR",
    "class_names": ["background", "brain"], "resize": "fit", "interpolation": "nearest",
    "normalization": _NORMALIZATION,
    "crop": {"kind": "foreground", "margin": 0.1, "min_fraction": 0.02, "localizer": "deepbet-localizer.onnx"},
    "postprocess": {"keep_largest": {1: 1}, "fill_holes": [1]}, "outputs": ["probabilities"]}
DEEPBET_VERSION = "1.0.2"
NAMES = ("deepbet", "nuclei", "instruments")


def cache_root(cache_dir=None) -> str:
    return os.fspath(cache_dir or os.environ.get("SEGRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                                   "segrt"))


def _models_dir() -> str | None:
    spec = importlib.util.find_spec("segrt.models")
    return spec.submodule_search_locations[0] if spec is not None and spec.submodule_search_locations else None


def resolve(spec, *, cache_dir=None, verbose=False) -> str:
    """The .onnx path for ``spec``: an existing file, or a model name from NAMES."""
    spec = os.fspath(spec)
    if os.path.isfile(spec):
        return spec
    if spec == "deepbet":
        return deepbet(cache_dir=cache_dir, verbose=verbose)
    if spec in NAMES:
        folder = _models_dir()
        path = os.path.join(folder, f"{spec}.onnx") if folder else ""
        if os.path.isfile(path):
            return path
        raise FileNotFoundError(f"the demo model {spec!r} is not in this installation; train it with "
                                f"`python models/train_{spec}.py` (see models/README.md)")
    if os.path.exists(spec):
        raise ValueError(f"{spec} is not a file; expected a .onnx model or one of {NAMES}")
    raise FileNotFoundError(f"no model {spec!r}: expected a .onnx file or one of {NAMES}")


def _deepbet_files():
    spec = importlib.util.find_spec("deepbet")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the deepbet model needs the deepbet package: pip install --no-deps deepbet==1.0.2 "
                          "(its network files come with it; segrt converts them at first use)")
    site = os.path.dirname(spec.submodule_search_locations[0])
    model = os.path.join(site, "data", "models", "model.pt")
    bbox = os.path.join(site, "data", "models", "bbox_model.pt")
    for p in (model, bbox):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"deepbet is installed but its network file {p} is missing; reinstall it with "
                                    "pip install --no-deps --force-reinstall deepbet==1.0.2")
    licence = None
    for dist in os.listdir(site):
        if dist.lower().startswith("deepbet-") and dist.endswith(".dist-info"):
            cand = os.path.join(site, dist, "LICENSE")
            licence = cand if os.path.isfile(cand) else licence
    return model, bbox, licence


def deepbet(cache_dir=None, verbose=False) -> str:
    """Path of deepbet converted to segrt ONNX (converted now when the cache lacks it or holds
    a conversion of other network files)."""
    model_pt, bbox_pt, licence = _deepbet_files()
    folder = os.path.join(cache_root(cache_dir), "models", f"deepbet-{DEEPBET_VERSION}")
    target = os.path.join(folder, "deepbet.onnx")
    manifest_path = os.path.join(folder, "manifest.json")
    from segrt.engine import trust
    from segrt.engine.model_file import file_sha256

    sources = {"model.pt": file_sha256(model_pt), "bbox_model.pt": file_sha256(bbox_pt)}
    if os.path.isfile(manifest_path):
        try:
            record = trust.check_record(manifest_path, {name: os.path.join(folder, name) for name in CONVERTED},
                                        "converted deepbet")
            if record.get("sources") == sources and record.get("metadata") == _metadata_digest():
                return target
        except trust.CacheTrustError as err:  # never used: converted again from deepbet's own files
            if verbose:
                print(f"segrt: not using the cached conversion ({err})", file=sys.stderr)
    _convert_deepbet(model_pt, bbox_pt, licence, sources, folder, verbose)
    return target


CONVERTED = ("deepbet.onnx", "deepbet-localizer.onnx")


def _metadata_digest() -> str:
    """SHA-256 of the metadata segrt writes into the converted files: a cache converted with
    other metadata (an older segrt) is converted again."""
    import hashlib

    text = json.dumps([DEEPBET_METADATA, DEEPBET_LOCALIZER_METADATA], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _convert_deepbet(model_pt, bbox_pt, licence, sources, folder, verbose) -> None:
    import numpy as np

    from segrt.engine import trust

    from segrt._optional import optional_import
    from segrt.export.onnx_export import to_onnx

    torch = optional_import("torch", purpose="converting deepbet (once; cached afterwards)")
    if verbose:
        print(f"segrt: converting deepbet {DEEPBET_VERSION} to ONNX (once) into {folder}", file=sys.stderr)
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    work = tempfile.mkdtemp(prefix=".deepbet-", dir=os.path.dirname(folder))
    try:
        rng = np.random.default_rng(0)
        for pt, name, meta in ((bbox_pt, "deepbet-localizer.onnx", DEEPBET_LOCALIZER_METADATA),
                               (model_pt, "deepbet.onnx", DEEPBET_METADATA)):
            net = torch.jit.load(pt, map_location="cpu").eval()
            # verified on a 96^3 and a 64 x 96 x 128 input: the graph is fully convolutional, so
            # these prove it at any size divisible by 32 in seconds rather than minutes at 256^3
            example = rng.standard_normal((1, 1, 96, 96, 96)).astype(np.float32)
            with warnings.catch_warnings():  # torch's exporter notes about TorchScript: not the user's concern
                warnings.simplefilter("ignore", UserWarning)
                to_onnx(net, example, os.path.join(work, name), metadata=meta, output_names=meta["outputs"],
                        check_shapes=[(1, 1, 64, 96, 128)])
        if licence:
            shutil.copyfile(licence, os.path.join(work, "LICENSE-deepbet"))
        record = trust.signed_record({name: os.path.join(work, name) for name in CONVERTED},
                                     deepbet=DEEPBET_VERSION, sources=sources, metadata=_metadata_digest())
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump(record, f, indent=2)
        if os.path.isdir(folder):
            shutil.rmtree(folder)  # segrt's own cache folder, found stale or untrusted above
        os.replace(work, folder)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
