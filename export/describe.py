"""``segrt describe``: read or attach segrt metadata on any ONNX file, without PyTorch.

A network trained elsewhere (a Keras nucleus detector, a MONAI or nnU-Net export, a vendor's
file) carries no segrt metadata. ``describe_model`` says what the file declares, what segrt
reads from its graph (axes, layout, a softmax / sigmoid output) and what is still missing;
``attach_metadata`` writes a copy with the metadata set (fields given override the declared
ones, which override what the graph says). The input file is never modified.
"""
from __future__ import annotations

import json
import os

from segrt._optional import optional_import
from segrt.engine import io
from segrt.engine import metadata as md
from segrt.engine.model_file import (InvalidModelError, all_tensors, check_layout, inspect_model_file,
                                     metadata_from_graph, shape_text)
from segrt.export.onnx_export import store_metadata

__all__ = ["describe_model", "attach_metadata", "parse_layout", "parse_normalization", "format_description"]

# what a user passes for --layout
_LAYOUT_NAMES = {"nchw": "channels_first", "ncdhw": "channels_first", "channels_first": "channels_first",
                 "nhwc": "channels_last", "ndhwc": "channels_last", "channels_last": "channels_last"}


def parse_layout(text: str) -> str:
    """"NHWC" / "NDHWC" / "channels_last" -> "channels_last"; "NCHW" / ... -> "channels_first"."""
    key = str(text).strip().lower()
    if key not in _LAYOUT_NAMES:
        raise ValueError(f"layout must be NCHW / NCDHW / channels_first or NHWC / NDHWC / channels_last, got {text!r}")
    return _LAYOUT_NAMES[key]


def parse_normalization(text: str) -> dict:
    """"none", "zscore", "zscore:MEAN,STD", "ct:LOW,HIGH", "percentile:LOW,HIGH", or a JSON object."""
    text = str(text).strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError as err:
            raise ValueError(f"normalization JSON does not parse: {err}") from None
    kind, _, args = text.partition(":")
    try:
        values = [float(v) for v in args.split(",")] if args else []
    except ValueError:
        raise ValueError(f"normalization numbers must be numbers, got {args!r}") from None
    if kind == "none" and not values:
        return {"kind": "none"}
    if kind == "zscore" and len(values) in (0, 2):
        return {"kind": "zscore", **({"mean": values[0], "std": values[1]} if values else {})}
    if kind == "ct" and len(values) == 2:
        return {"kind": "ct", "window": values}
    if kind == "percentile" and len(values) == 2:
        return {"kind": "percentile", "low": values[0], "high": values[1]}
    raise ValueError(f"normalization must be none, zscore[:MEAN,STD], ct:LOW,HIGH, percentile:LOW,HIGH or a JSON "
                     f"object, got {text!r}")


def _missing(meta: dict) -> list:
    """What segrt still needs (or would assume) to run the model, in words."""
    out = []
    if meta.get("task") not in md.TASKS:
        out.append(f"task (one of {', '.join(md.TASKS)}): segrt does not know what the outputs mean")
    if "window" not in meta:
        out.append("window: the input's spatial axes are dynamic; give the size the network was trained on")
    if "in_channels" not in meta:
        out.append("in_channels: the input's channel axis is dynamic")
    if "normalization" not in meta:
        out.append("normalization: none declared, so inputs go in unscaled (give e.g. percentile:1,99.8 or zscore)")
    if meta.get("task") == "semantic" and "class_names" not in meta:
        out.append("class_names: labels are reported as class 1, class 2, ...")
    if meta.get("task") == "semantic" and meta.get("spatial_dims") == 3 and "spacing" not in meta:
        out.append("spacing: volumes run at their own resolution (no resampling)")
    if str(meta.get("task", "")).startswith("star") and "star" not in meta:
        out.append("star: n_rays, grid and thresholds of the star-convex model")
    return out


def describe_model(path) -> dict:
    """{"declared": stored metadata or None, "inferred": from the graph, "inputs", "outputs",
    "missing": what segrt still needs, in words}."""
    path = os.fspath(path)
    proto, inputs, outputs, meta, source = inspect_model_file(path)
    inferred = metadata_from_graph(inputs, proto)
    effective = meta if source == "stored" else inferred
    return {"model": path, "declared": meta if source == "stored" else None, "inferred": inferred,
            "inputs": [(i.name, shape_text(i.shape), i.dtype) for i in inputs],
            "outputs": [(o.name, shape_text(o.shape), o.dtype) for o in outputs],
            "missing": _missing(effective)}


def format_description(info: dict) -> str:
    lines = [f"{info['model']}"]
    for name, shape, dtype in info["inputs"]:
        lines.append(f"  input  {name!r}: {shape} {dtype}")
    for name, shape, dtype in info["outputs"]:
        lines.append(f"  output {name!r}: {shape} {dtype}")
    if info["declared"] is None:
        lines.append("  declared: no segrt metadata")
    else:
        lines.append("  declared: " + json.dumps(info["declared"], sort_keys=True))
    lines.append("  from the graph: " + (json.dumps(info["inferred"], sort_keys=True) or "nothing"))
    if info["missing"]:
        lines.append("  missing:")
        lines += [f"    - {m}" for m in info["missing"]]
        lines.append(f"  attach it with: segrt describe {info['model']} --task ... [--layout ... --window ... "
                     "--normalization ...] -o described.onnx")
    else:
        lines.append("  nothing missing: segrt run / check take this model as it is")
    return "\n".join(lines)


def attach_metadata(path, output, fields: dict) -> dict:
    """Writes ``output``: the model at ``path`` with segrt metadata = what it declares (or, with
    none, what its graph says) updated with ``fields`` (a field set to None is removed).
    Validated against the schema and the graph's input before anything is written; the model
    file itself is never modified. Returns the metadata written."""
    onnx = optional_import("onnx", purpose="writing ONNX metadata")
    path, output = os.fspath(path), os.fspath(output)
    proto, inputs, _, meta, source = inspect_model_file(path)
    merged = dict(meta if source == "stored" else metadata_from_graph(inputs, proto))
    for key, value in fields.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = value
    merged.pop("schema", None)
    if "task" not in merged:
        raise md.MetadataError(f"{path}: segrt metadata needs a task; pass --task ({', '.join(md.TASKS)})")
    if merged.get("spatial_dims") and merged.get("window") and len(merged["window"]) != merged["spatial_dims"]:
        merged.pop("spatial_dims")  # the window the user gave wins over the graph's guess
    checked = md.validate(merged)
    check_layout(checked, inputs, path)
    io.check_outputs([output], [path], suffixes=(".onnx",))
    has_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in all_tensors(proto.graph))
    if has_external and os.path.dirname(os.path.abspath(output)) != os.path.dirname(os.path.abspath(path)):
        raise InvalidModelError(f"{path} keeps its weights in external data files; write the described copy into "
                                f"the same folder ({os.path.dirname(os.path.abspath(path))}) so it finds them")
    store_metadata(proto, checked)
    with io.atomic_path(output) as tmp:
        onnx.save(proto, tmp)
    return checked

