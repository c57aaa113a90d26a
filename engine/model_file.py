"""Reading and vetting ONNX model files before any runtime sees them.

``inspect_model_file`` parses a file, refuses what is not a complete ONNX model or keeps
external data outside the model's folder, and returns its inputs, outputs and segrt
metadata. Shared by ``load`` and the TensorRT engine cache.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os

from segrt._optional import optional_import
from segrt.engine import metadata as md

__all__ = ["ModelFileError", "InvalidModelError", "IOInfo", "all_tensors", "inspect_model_file", "file_sha256",
           "guess_layout", "split_axes", "output_activation", "check_layout",
           "shape_text"]


class ModelFileError(OSError):
    """The model file is missing or cannot be read."""


class InvalidModelError(ValueError):
    """The file is not a usable ONNX model (not ONNX, truncated, hostile external data...)."""


class InferInputError(ValueError):
    """A batch that does not fit the model's input (rank, channels, dtype, NaN / Inf)."""


@dataclasses.dataclass(frozen=True)
class IOInfo:
    name: str
    shape: tuple  # ints, or None for dynamic axes
    dtype: str


_ELEM = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
         11: "float64"}


def _value_info(v) -> IOInfo:
    t = v.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim)
    return IOInfo(v.name, dims, _ELEM.get(t.elem_type, f"onnx-type-{t.elem_type}"))


def all_tensors(graph):
    """Every TensorProto of a graph: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from all_tensors(attr.g)
            for g in attr.graphs:
                yield from all_tensors(g)


def inspect_model_file(path):
    """Parses and checks an ONNX file without running it: returns (proto, inputs, outputs, metadata).

    Refuses (InvalidModelError) a file that is not ONNX or is truncated, and external data
    that points outside the model's folder (as ONNX's fix for CVE-2022-25882 does).
    """
    onnx = optional_import("onnx", purpose="reading ONNX models")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise ModelFileError(f"model path is not a file: {path}")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ModelFileError(f"cannot read model file {path}: {err.strerror or err}") from None
    if not data:
        raise InvalidModelError(f"{path} is empty; expected an ONNX model")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as err:  # protobuf's DecodeError and friends: never leak them raw
        raise InvalidModelError(f"{path} is not an ONNX model, or it is truncated ({type(err).__name__})") from None
    if not proto.graph.node or not proto.graph.input or not proto.graph.output or not proto.opset_import:
        raise InvalidModelError(f"{path} is not a complete ONNX model (no graph nodes, inputs, outputs or opset); "
                                "is the file truncated?")
    folder = os.path.realpath(os.path.dirname(os.path.abspath(path)))
    external = False
    for tensor in all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        external = True
        loc = {e.key: e.value for e in tensor.external_data}.get("location", "")
        target = os.path.realpath(os.path.join(folder, loc))
        if not loc or os.path.isabs(loc) or os.path.commonpath([folder, target]) != folder:
            raise InvalidModelError(f"{path}: tensor {tensor.name!r} keeps its data at {loc!r}, outside the model's "
                                    "folder; refusing to read it")
        if not os.path.isfile(target):
            raise InvalidModelError(f"{path}: external data file {loc!r} of tensor {tensor.name!r} is missing")
    try:
        # with external data the checker must resolve it from the model's own folder
        onnx.checker.check_model(path if external else proto)
    except Exception as err:
        raise InvalidModelError(f"{path} fails the ONNX checker: {str(err).splitlines()[0]}") from None
    initializers = {t.name for t in proto.graph.initializer}
    inputs = [_value_info(v) for v in proto.graph.input if v.name not in initializers]
    outputs = [_value_info(v) for v in proto.graph.output]
    stored = {p.key: p.value for p in proto.metadata_props}
    if md.KEY in stored:
        meta = md.from_json(stored[md.KEY], source=path)
        source = "stored"
        graph_outputs = [o.name for o in outputs]
        missing = [n for n in meta.get("outputs", []) if n not in graph_outputs]
        if missing:
            raise InvalidModelError(f"{path}: its metadata names outputs {missing} that the graph does not have; the "
                                    f"graph's outputs are {graph_outputs} (fix the metadata's 'outputs')")
        check_layout(meta, inputs, path)
    else:
        meta = metadata_from_graph(inputs, proto)
        source = "graph"
    return proto, inputs, outputs, meta, source


def guess_layout(shape) -> str:
    """"channels_last" when an image input's last axis is small (<= 4: grey, RGB, RGBA) and its
    second is not; else "channels_first" (PyTorch's order, segrt's default)."""
    last, second = shape[-1], shape[1]
    if last is not None and last <= 4 and (second is None or second > 4):
        return "channels_last"
    return "channels_first"


def split_axes(shape, layout: str) -> tuple:
    """(channel axis size, spatial sizes) of an (N, C, *spatial) or (N, *spatial, C) shape."""
    if layout == "channels_last":
        return shape[-1], tuple(shape[1:-1])
    return shape[1], tuple(shape[2:])


def output_activation(proto) -> str | None:
    """"softmax" / "sigmoid" when the graph's first output comes out of such a node (through
    layout and shape ops), else None."""
    producers = {o: n for n in proto.graph.node for o in n.output}
    name = proto.graph.output[0].name
    for _ in range(8):
        node = producers.get(name)
        if node is None:
            return None
        if node.op_type in ("Softmax", "LogSoftmax", "Sigmoid"):
            return {"Softmax": "softmax", "Sigmoid": "sigmoid"}.get(node.op_type)
        if node.op_type not in ("Transpose", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Cast") or not node.input:
            return None
        name = node.input[0]
    return None


def metadata_from_graph(inputs, proto=None) -> dict:
    """What the graph tells about a model without segrt metadata: the axes (channels last when
    the input's last axis looks like colour channels) and a softmax / sigmoid output."""
    meta: dict = {}
    if len(inputs) == 1 and len(inputs[0].shape) in (4, 5):
        shape = inputs[0].shape
        layout = guess_layout(shape)
        if layout == "channels_last":
            meta["layout"] = layout
        channels, spatial = split_axes(shape, layout)
        meta["spatial_dims"] = len(shape) - 2
        if channels is not None:
            meta["in_channels"] = channels
        if all(s is not None for s in spatial):
            meta["window"] = list(spatial)
    if proto is not None:
        activation = output_activation(proto)
        if activation:
            meta["activation"] = activation
    return meta


def check_layout(meta: dict, inputs, path: str) -> None:
    """Refuses metadata whose layout contradicts the graph's input: the declared channels or
    window do not sit on the axes the layout says, or a model declared channels-first whose
    input looks channels-last."""
    if len(inputs) != 1 or len(inputs[0].shape) not in (4, 5):
        return
    shape, name = inputs[0].shape, inputs[0].name
    layout = meta.get("layout", "channels_first")
    channels, spatial = split_axes(shape, layout)
    where = "its last axis" if layout == "channels_last" else "axis 1"
    problems = []
    want = meta.get("in_channels")
    if want is not None and channels is not None and channels != want:
        problems.append(f"{want} input channel(s), but {where} holds {channels}")
    window = meta.get("window")
    if window is not None and len(window) == len(spatial) and any(s is not None and s != w
                                                                 for s, w in zip(spatial, window)):
        problems.append(f"window {window}, but the spatial axes hold {shape_text(spatial)}")
    looks_last = layout == "channels_first" and guess_layout(shape) == "channels_last" and shape[1] is not None
    if not problems and looks_last and "layout" not in meta:
        problems.append(f"channels first (the default), but axis 1 holds {shape[1]} and the last axis {shape[-1]}")
    if problems and looks_last:
        problems[-1] += ": it looks channels-last"
    if problems:
        other = "channels_first" if layout == "channels_last" else "channels_last"
        swapped = split_axes(shape, other)
        fits_other = (want is None or swapped[0] in (None, want)) and (
            window is None or all(s is None or s == w for s, w in zip(swapped[1], window)))
        fix = f"--layout {other}" if (looks_last or fits_other) else "--window ... --in-channels ..."
        raise InvalidModelError(
            f"{path}: its segrt metadata says layout {layout} with " + "; ".join(problems) + f" (input {name!r} has "
            f"shape {shape_text(shape)}). Fix the metadata, e.g. segrt describe {path} {fix} -o fixed.onnx")


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shape_text(shape) -> str:
    """(1, ?, 96, 96): a shape with dynamic axes shown as ``?``."""
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
