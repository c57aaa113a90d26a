"""Loading an ONNX model safely and running it on a backend: ``segrt.engine.load``."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from segrt._optional import is_available, optional_import
from segrt.export import metadata as md

__all__ = ["load", "Model", "IOInfo", "ModelFileError", "InvalidModelError", "InferInputError", "BACKENDS"]

BACKENDS = ("auto", "openvino", "ort", "ort-gpu", "trt")


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


def _all_tensors(graph):
    """Every TensorProto of a graph: initializers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


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
    for tensor in _all_tensors(proto.graph):
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
    else:
        meta = _metadata_from_graph(inputs)
        source = "graph"
    return proto, inputs, outputs, meta, source


def _metadata_from_graph(inputs) -> dict:
    """What the graph tells about a model without segrt metadata."""
    meta: dict = {}
    if len(inputs) == 1 and len(inputs[0].shape) in (4, 5):
        shape = inputs[0].shape
        meta["spatial_dims"] = len(shape) - 2
        if shape[1] is not None:
            meta["in_channels"] = shape[1]
        if all(s is not None for s in shape[2:]):
            meta["window"] = list(shape[2:])
    return meta


def _check_batch(x, info: IOInfo, path: str) -> np.ndarray:
    if hasattr(x, "__cuda_array_interface__"):
        raise InferInputError("this backend runs on the CPU; copy the device array to the host first")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != len(info.shape):
        raise InferInputError(f"{os.path.basename(path)} expects input {info.name!r} of rank {len(info.shape)} "
                              f"(shape {_shape_str(info.shape)}), got shape {x.shape}")
    for axis, (want, got) in enumerate(zip(info.shape, x.shape)):
        if want is not None and want != got:
            what = "channels" if axis == 1 else f"size along axis {axis}"
            raise InferInputError(f"{os.path.basename(path)} expects {want} {what} for input {info.name!r} "
                                  f"(shape {_shape_str(info.shape)}), got shape {x.shape}")
    if x.dtype.name != info.dtype:
        raise InferInputError(f"{os.path.basename(path)} expects {info.dtype} input, got {x.dtype}; "
                              f"convert with x.astype(np.{info.dtype})")
    # one vectorised float32 sum (1.4 ms for 8 M voxels); only a non-finite sum (NaN / Inf, or
    # an overflow of huge finite values) pays for the exact count
    if x.dtype.kind == "f" and x.size and not np.isfinite(x.sum()):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise InferInputError(f"the batch holds {bad} NaN or infinite value(s); clean the input first")
    return np.ascontiguousarray(x)


def _check_device_batch(x, info: IOInfo, path: str):
    """The checks of _check_batch for a CUDA array (counted on the device, no host copy)."""
    cupy = optional_import("cupy", extra="gpu", purpose="device inputs")
    x = cupy.asarray(x)  # wraps the caller's memory
    if x.ndim != len(info.shape) or any(w is not None and w != g for w, g in zip(info.shape, x.shape)):
        raise InferInputError(f"{os.path.basename(path)} expects input {info.name!r} of shape "
                              f"{_shape_str(info.shape)}, got {tuple(x.shape)}")
    if x.dtype.name != info.dtype:
        raise InferInputError(f"{os.path.basename(path)} expects {info.dtype} input, got {x.dtype}")
    if not bool(cupy.isfinite(x).all()):
        raise InferInputError("the batch holds NaN or infinite values; clean the input first")
    return cupy.ascontiguousarray(x)


def _shape_str(shape) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


class Model:
    """A loaded model: ``infer(batch)`` returns one array (one output) or a dict by output name."""

    def __init__(self, path, runner, backend: str, reason: str, inputs, outputs, metadata, metadata_source):
        self.path = path
        self._runner = runner
        self.backend = backend
        self.backend_reason = reason
        self.inputs = inputs
        self.outputs = outputs
        self.metadata = metadata
        self.metadata_source = metadata_source

    @property
    def input_names(self):
        return [i.name for i in self.inputs]

    @property
    def output_names(self):
        return [o.name for o in self.outputs]

    def infer(self, batch):
        if self.backend == "trt" and hasattr(batch, "__cuda_array_interface__"):
            x = _check_device_batch(batch, self.inputs[0], self.path)
        else:
            x = _check_batch(batch, self.inputs[0], self.path)
        outs = self._runner(x)
        if len(outs) == 1:
            return outs[0]
        return dict(zip(self.output_names, outs))

    __call__ = infer

    def __repr__(self) -> str:
        return (f"Model({os.path.basename(self.path)!r}, backend={self.backend!r}, inputs="
                f"{[(i.name, _shape_str(i.shape)) for i in self.inputs]}, outputs={self.output_names})")


def _gpu_count() -> int:
    try:
        cupy = optional_import("cupy")
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no device
        return 0


def _ort_gpu_available() -> bool:
    try:
        return "CUDAExecutionProvider" in optional_import("onnxruntime").get_available_providers()
    except ImportError:
        return False


def _choose(backend: str) -> tuple[str, str]:
    if backend != "auto":
        return backend, "requested"
    skipped = []
    gpus = _gpu_count()
    if not is_available("tensorrt"):
        skipped.append("trt: tensorrt is not installed")
    elif not gpus:
        skipped.append("trt: no CUDA device (or CuPy) found")
    else:
        return "trt", "trt: TensorRT and a CUDA device are present"
    if not _ort_gpu_available():
        skipped.append("ort-gpu: onnxruntime-gpu (CUDAExecutionProvider) is not installed")
    elif not gpus:
        skipped.append("ort-gpu: no CUDA device found")
    else:
        return "ort-gpu", "; ".join(skipped + ["ort-gpu: ONNX Runtime's CUDA provider and a device are present"])
    if is_available("openvino"):
        return "openvino", "; ".join(skipped + ["openvino: installed, the fastest CPU backend measured"])
    skipped.append("openvino: not installed")
    return "ort", "; ".join(skipped + ["ort: the portable CPU fallback"])


def _check_options(backend: str, options: dict) -> None:
    """Options a backend does not take are an error that lists the ones it does."""
    import inspect

    from segrt.engine import backends

    if backend == "trt":
        from segrt.engine.trt_backend import TrtRunner as runner
    else:
        runner = backends.OrtRunner if backend in ("ort", "ort-gpu") else backends.OpenVinoRunner
    internal = {"proto", "gpu", "window"}
    params = inspect.signature(runner.__init__).parameters
    accepted = [n for n, p in params.items() if p.kind is p.KEYWORD_ONLY and n not in internal]
    if backend == "ort":
        accepted.remove("device")
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"backend {backend!r} takes the options {accepted}, not {unknown}")
    threads = options.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer (or None: the backend's choice), got {threads!r}")


def load(path, *, backend="auto", **options) -> Model:
    """Load an ONNX model for inference.

    Args:
        path: the .onnx file (external data must sit in its folder).
        backend: "auto" (trt, then ort-gpu, then openvino, then ort; the choice and why are in
            ``model.backend_reason``), "openvino", "ort", "ort-gpu" or "trt".
        options: backend options: ort: ``threads`` (intra-op threads, default: ORT's choice),
            ``spinning`` (bool, default True); openvino: ``threads``, ``streams`` (calls that
            run at once from several threads, the threads split between them; default 1),
            ``precision`` ("f32", default; "bf16" is opt-in). An option the backend does not
            take is a ValueError that lists the ones it does.

    Returns:
        a Model with ``infer``, ``metadata``, ``backend``, ``inputs`` / ``outputs``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = os.fspath(path)
    proto, inputs, outputs, meta, source = inspect_model_file(path)
    if len(inputs) != 1:
        raise InvalidModelError(f"{path} has {len(inputs)} inputs; segrt models take one image batch")
    chosen, reason = _choose(backend)
    from segrt.engine import backends

    _check_options(chosen, options)
    if chosen == "ort":
        runner = backends.OrtRunner(path, inputs, outputs, proto=proto, **options)
    elif chosen == "openvino":
        runner = backends.OpenVinoRunner(path, inputs, outputs, proto=proto, **options)
    elif chosen == "ort-gpu":
        if not _ort_gpu_available():
            raise RuntimeError("backend 'ort-gpu' needs onnxruntime-gpu (its CUDAExecutionProvider is not available "
                               "here); install onnxruntime-gpu or use backend='openvino' / 'ort'")
        runner = backends.OrtRunner(path, inputs, outputs, gpu=True, proto=proto, **options)
    else:  # trt
        optional_import("tensorrt", extra="trt", purpose="the TensorRT backend")
        if not _gpu_count():
            raise RuntimeError("backend 'trt' needs a CUDA device, and CuPy found none")
        from segrt.engine.trt_backend import TrtRunner

        runner = TrtRunner(path, inputs, outputs, window=(meta or {}).get("window"), **options)
    return Model(path, runner, chosen, reason, inputs, outputs, meta, source)
