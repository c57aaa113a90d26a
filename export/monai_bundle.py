"""``segrt import monai-bundle``: a MONAI bundle folder as one self-describing ONNX model.

The network is built by MONAI's own config parser from ``configs/inference.json``'s
``network_def`` and loaded from ``models/model.pt``. The preprocessing transforms and the
inferer become segrt metadata; a transform segrt cannot reproduce is refused by name, never
skipped:

===============================================  ===========================================
MONAI                                            segrt
===============================================  ===========================================
LoadImage(d), EnsureChannelFirst(d), EnsureType  (reading: nothing to map)
(d), ToTensor(d), CastToType(d), Identity(d)
Orientation(d) axcodes "RAS"                     reorientation to RAS (always done)
Spacing(d) pixdim, mode                          ``spacing``, ``interpolation``
ScaleIntensityRange(d) a_min..a_max -> b_min..   ``normalization: ct`` window (clip true) with
b_max                                            scale / shift to [b_min, b_max]
NormalizeIntensity(d) (nonzero)                  ``zscore`` (``mask: nonzero``)
ScaleIntensity(d) minv..maxv                     ``percentile`` 0..100, unclipped, scaled
SlidingWindowInferer roi_size, overlap, mode     ``window``, ``sliding_window``
channel names in configs/metadata.json           ``class_names``
===============================================  ===========================================
"""
from __future__ import annotations

import json
import os

import numpy as np

from segrt._optional import optional_import

__all__ = ["import_monai_bundle", "BundleImportError"]

_PASS_THROUGH = {"LoadImage", "EnsureChannelFirst", "EnsureType", "ToTensor", "CastToType", "Identity",
                 "AddChannel", "ToDevice"}


class BundleImportError(ValueError):
    """A bundle segrt cannot import (the message names the part and why)."""


_MAPPED = {"Orientation", "Spacing", "ScaleIntensityRange", "NormalizeIntensity", "ScaleIntensity"}


def _name(target) -> str:
    """"monai.transforms.Spacingd" / "$monai.transforms.Spacingd" / "Spacingd" -> "Spacing"."""
    name = str(target).lstrip("$").rsplit(".", 1)[-1]
    if name.endswith("d") and name[:-1] in _PASS_THROUGH | _MAPPED:
        return name[:-1]
    return name


def _transforms(parser, folder) -> tuple[str, list]:
    """(the config id of the transform list, the list as written)."""
    from monai.bundle.utils import ID_SEP_KEY

    for key in ("preprocessing", "pre_transforms"):
        if key in parser.config:
            pre, base = parser.config[key], key
            break
    else:
        raise BundleImportError(f"{folder}: configs/inference.json has no 'preprocessing' section")
    if isinstance(pre, dict) and "transforms" in pre:
        pre, base = pre["transforms"], f"{base}{ID_SEP_KEY}transforms"
    if not isinstance(pre, list):
        raise BundleImportError(f"{folder}: 'preprocessing' is not a Compose of a transform list")
    return base, pre


def _value(parser, config_id: str, value):
    """A config value, its @references and $expressions evaluated by MONAI's parser."""
    if isinstance(value, str) and value[:1] in ("@", "$"):
        return parser.get_parsed_content(config_id)
    return value


def import_monai_bundle(folder, output, *, verify=True):
    """Builds the bundle's network with MONAI's config parser, maps its preprocessing and
    inferer onto segrt metadata, and exports it to ``output``. Returns the ExportReport."""
    folder = os.fspath(folder)
    config_path = os.path.join(folder, "configs", "inference.json")
    weights = os.path.join(folder, "models", "model.pt")
    for path, what in ((config_path, "configs/inference.json"), (weights, "models/model.pt")):
        if not os.path.isfile(path):
            raise BundleImportError(f"{folder}: no {what}; give a MONAI bundle folder (configs/inference.json, "
                                    "models/model.pt)")
    torch = optional_import("torch", purpose="importing MONAI bundles")
    bundle = optional_import("monai.bundle", purpose="importing MONAI bundles")
    from segrt.export import to_onnx

    parser = bundle.ConfigParser()
    parser.read_config(config_path)
    parser["bundle_root"] = folder
    if "network_def" not in parser.config:
        raise BundleImportError(f"{folder}: configs/inference.json has no 'network_def'")
    try:
        net = parser.get_parsed_content("network_def")
    except Exception as err:
        raise BundleImportError(f"{folder}: MONAI cannot build 'network_def' ({type(err).__name__}: {err})") from None
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise BundleImportError(f"{folder}: models/model.pt does not fit 'network_def' "
                                f"({str(err).splitlines()[0]})") from None
    net.eval()

    meta: dict = {"task": "semantic", "resize": "spacing"}
    norm = None
    from monai.bundle.utils import ID_SEP_KEY

    base, transforms = _transforms(parser, folder)
    for i, t in enumerate(transforms):
        target = t.get("_target_", "") if isinstance(t, dict) else ""
        name = _name(target)
        args = ({k: _value(parser, f"{base}{ID_SEP_KEY}{i}{ID_SEP_KEY}{k}", v) for k, v in t.items()
                 if not k.startswith("_")} if isinstance(t, dict) else {})
        if name in _PASS_THROUGH:
            continue
        if name == "Orientation":
            if str(args.get("axcodes", "RAS")).upper() != "RAS":
                raise BundleImportError(f"{folder}: Orientation to {args.get('axcodes')!r}; segrt runs networks in RAS "
                                        "orientation")
        elif name == "Spacing":
            pixdim = args.get("pixdim")
            meta["spacing"] = [float(p) for p in (pixdim if isinstance(pixdim, (list, tuple)) else [pixdim] * 3)]
            mode = args.get("mode", "bilinear")
            mode = mode[0] if isinstance(mode, (list, tuple)) else mode
            meta["interpolation"] = "nearest" if str(mode) == "nearest" else "linear"
        elif name == "ScaleIntensityRange":
            if not args.get("clip", False):
                raise BundleImportError(f"{folder}: ScaleIntensityRange without clip; segrt's CT window clips (set "
                                        "clip=True if the model was trained so)")
            b_min, b_max = float(args.get("b_min", 0.0)), float(args.get("b_max", 1.0))
            norm = {"kind": "ct", "window": [float(args["a_min"]), float(args["a_max"])]}
            if (b_min, b_max) != (0.0, 1.0):
                norm.update(scale=b_max - b_min, shift=b_min)
        elif name == "NormalizeIntensity":
            if args.get("subtrahend") is not None or args.get("divisor") is not None:
                raise BundleImportError(f"{folder}: NormalizeIntensity with fixed subtrahend / divisor is not mapped")
            norm = {"kind": "zscore", **({"mask": "nonzero"} if args.get("nonzero") else {})}
        elif name == "ScaleIntensity":
            lo, hi = float(args.get("minv", 0.0)), float(args.get("maxv", 1.0))
            norm = {"kind": "percentile", "low": 0.0, "high": 100.0, "clip": False}
            if (lo, hi) != (0.0, 1.0):
                norm.update(scale=hi - lo, shift=lo)
        else:
            raise BundleImportError(f"{folder}: the preprocessing transform {target!r} has no segrt equivalent; "
                                    "segrt maps Orientation(RAS), Spacing, ScaleIntensityRange, NormalizeIntensity and "
                                    "ScaleIntensity (and loading / type transforms)")
    meta["normalization"] = norm or {"kind": "none"}

    inferer = parser.config.get("inferer") or {}
    if _name(inferer.get("_target_", "")) != "SlidingWindowInferer":
        raise BundleImportError(f"{folder}: inferer {inferer.get('_target_')!r}; segrt maps SlidingWindowInferer")
    def setting(key, default):
        return _value(parser, f"inferer{ID_SEP_KEY}{key}", inferer.get(key, default))

    roi = setting("roi_size", None)
    meta["window"] = [int(r) for r in (roi if isinstance(roi, (list, tuple)) else [roi] * 3)]
    meta["sliding_window"] = {"overlap": float(setting("overlap", 0.25)), "mode": str(setting("mode", "constant")),
                              "placement": "monai"}
    channels = int(getattr(net, "in_channels", 1) or 1)
    meta["in_channels"] = channels
    names = _class_names(folder)
    if names:
        meta["class_names"] = names
    example = np.random.default_rng(0).standard_normal((1, channels, *meta["window"])).astype(np.float32)
    return to_onnx(net, example, output, metadata=meta, verify=verify)


def _class_names(folder) -> list | None:
    """Channel names of the network's output from configs/metadata.json, by channel index."""
    path = os.path.join(folder, "configs", "metadata.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        meta = json.load(f)
    outputs = (meta.get("network_data_format") or {}).get("outputs") or {}
    for entry in outputs.values():
        channels = entry.get("channel_def") if isinstance(entry, dict) else None
        if isinstance(channels, dict) and channels:
            return [str(channels[k]) for k in sorted(channels, key=lambda k: int(k))]
    return None
