"""A Triton Inference Server model repository for a segrt model (``segrt export --triton REPO``).

    REPO/<name>/config.pbtxt        the pipeline: Python backend, dynamic batching; inputs
    REPO/<name>/1/model.py          image (+ optional spacing), outputs labels and summary,
                                    as ``segrt serve`` answers (segrt.engine.triton_models)
    REPO/<name>_net/config.pbtxt    the network: ONNX Runtime backend (default), a TensorRT
    REPO/<name>_net/1/model.onnx    plan (model.plan, built by the caller for the server's GPU),
                                    or ONNX Runtime inside the Python backend (``network="python"``,
                                    for servers without the ONNX Runtime backend)

The pipeline calls the network through Triton's business logic scripting, once per tile or
window; a static ensemble cannot, since the number of calls depends on the image. The
server's Python environment needs segrt (``pip install segrt``) for the pipeline model.
"""
from __future__ import annotations

import json
import os
import shutil

__all__ = ["write_model_repository", "NETWORK_KINDS"]

NETWORK_KINDS = ("onnxruntime", "tensorrt", "python")
_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
          "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL", "float64": "TYPE_FP64"}


def _dims(shape) -> str:
    return "[ " + ", ".join(str(d if isinstance(d, int) and d > 0 else -1) for d in shape) + " ]"


def _tensor(name, dtype, shape, optional=False) -> str:
    text = f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: {_dims(shape)}\n'
    if optional:
        text += "    optional: true\n"
    return text + "  }"


def _io_type(info) -> str:
    dtype = str(getattr(info, "dtype", "float32")).replace("tensor(", "").replace(")", "")
    dtype = {"float": "float32", "double": "float64", "int64_t": "int64"}.get(dtype, dtype)
    if dtype not in _TYPES:
        raise ValueError(f"tensor {info.name}: type {dtype} has no Triton equivalent here")
    return _TYPES[dtype]


def write_model_repository(model, repo, *, name=None, network: str = "onnxruntime", max_batch_size: int = 8,
                           queue_delay_us: int = 2000, instances: int = 1, plan=None, options=None) -> list:
    """Writes the repository (the folders must not exist yet). Returns the files written.

    Args:
        model: a segrt .onnx file (with metadata).
        repo: the repository folder (created; existing model folders in it are never replaced).
        name: the pipeline model's name (default: the file's stem); the network is ``<name>_net``.
        network: "onnxruntime" (Triton's ONNX Runtime backend), "tensorrt" (``plan``: a
            TensorRT engine file built for the server's GPU), or "python" (ONNX Runtime in the
            Python backend).
        max_batch_size, queue_delay_us: the pipeline model's dynamic batcher.
        instances: pipeline model instances (each runs requests one at a time).
        options: pipeline options (tile, prob_thresh, nms_thresh, overlap).
    """
    from segrt.engine import io
    from segrt.engine.model_file import inspect_model_file
    from segrt.engine.serve import model_name

    if network not in NETWORK_KINDS:
        raise ValueError(f"network must be one of {NETWORK_KINDS}, got {network!r}")
    if network == "tensorrt" and (plan is None or not os.path.isfile(plan)):
        raise ValueError("network='tensorrt' needs plan=<a TensorRT engine file built for the server's GPU "
                         "(segrt build MODEL writes one)>")
    if max_batch_size < 1 or instances < 1:
        raise ValueError("max_batch_size and instances must be at least 1")
    path = os.fspath(model)
    _, inputs, outputs, meta, _ = inspect_model_file(path)
    task = (meta or {}).get("task")
    if task is None:
        raise ValueError(f"{path} has no segrt metadata: describe it first (segrt describe {path} --task ...)")
    if len(inputs) != 1:
        raise ValueError(f"{path} has {len(inputs)} inputs; segrt models take one image batch")
    name = name or model_name(path)
    net = f"{name}_net"
    repo = os.path.abspath(os.fspath(repo))
    for folder in (name, net):
        if os.path.exists(os.path.join(repo, folder)):
            raise io.OutputPathError(f"{os.path.join(repo, folder)} exists; segrt never replaces a model in a "
                                     "repository: remove it or choose another --name")
    ndim = 3 if (meta.get("spatial_dims") == 3 or task == "star-convex-3d") else 2
    channels = int(meta.get("in_channels", 1))
    image = (-1,) * 3 if ndim == 3 else ((-1, -1) if channels == 1 else (-1, -1, channels))
    written = []

    def write(rel, text):
        target = os.path.join(repo, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with io.atomic_path(target) as tmp, open(tmp, "w") as f:
            f.write(text)
        written.append(target)

    # the network
    config = [f'name: "{net}"']
    if network == "onnxruntime":
        config.append('platform: "onnxruntime_onnx"')
    elif network == "tensorrt":
        config.append('platform: "tensorrt_plan"')
    else:
        config.append('backend: "python"')
    config.append("max_batch_size: 0")  # the ONNX shapes carry their own batch axis
    config.append("input [\n" + ",\n".join(_tensor(i.name, _io_type(i), i.shape) for i in inputs) + "\n]")
    config.append("output [\n" + ",\n".join(_tensor(o.name, _io_type(o), o.shape) for o in outputs) + "\n]")
    write(os.path.join(net, "config.pbtxt"), "\n".join(config) + "\n")
    os.makedirs(os.path.join(repo, net, "1"), exist_ok=True)
    if network == "tensorrt":
        shutil.copyfile(plan, os.path.join(repo, net, "1", "model.plan"))
        written.append(os.path.join(repo, net, "1", "model.plan"))
    # the ONNX file also carries the metadata the pipeline model reads
    shutil.copyfile(path, os.path.join(repo, net, "1", "model.onnx"))
    written.append(os.path.join(repo, net, "1", "model.onnx"))
    if network == "python":
        write(os.path.join(net, "1", "model.py"),
              '"""segrt: the network through ONNX Runtime (segrt.engine.triton_models.Network)."""\n'
              "from segrt.engine.triton_models import Network as TritonPythonModel  # noqa: F401\n")

    # the pipeline
    params = {"network": net, "network_input": inputs[0].name,
              "network_outputs": json.dumps([o.name for o in outputs]),
              "pipeline_options": json.dumps({k: v for k, v in (options or {}).items() if v is not None})}
    config = [f'name: "{name}"', 'backend: "python"', f"max_batch_size: {int(max_batch_size)}",
              f"dynamic_batching {{\n  max_queue_delay_microseconds: {int(queue_delay_us)}\n}}",
              "input [\n" + _tensor("image", "TYPE_FP32", image) + ",\n" +
              _tensor("spacing", "TYPE_FP32", (ndim,), optional=True) + "\n]",
              "output [\n" + _tensor("labels", "TYPE_INT32", image[:ndim]) + ",\n" +
              _tensor("summary", "TYPE_STRING", (1,)) + "\n]",
              f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: KIND_CPU\n  }}\n]"]
    config += [f'parameters {{\n  key: "{k}"\n  value: {{ string_value: {json.dumps(v)} }}\n}}'
               for k, v in params.items()]
    write(os.path.join(name, "config.pbtxt"), "\n".join(config) + "\n")
    write(os.path.join(name, "1", "model.py"),
          '"""segrt: the pipeline around the network model (segrt.engine.triton_models.Pipeline)."""\n'
          "from segrt.engine.triton_models import Pipeline as TritonPythonModel  # noqa: F401\n")
    return written
