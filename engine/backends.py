"""CPU backends: ONNX Runtime and OpenVINO. A runner maps a checked C-contiguous batch to the
list of output arrays, with nothing between the caller and the runtime call but a dict."""
from __future__ import annotations

import collections
import os
import threading

import numpy as np

from segrt._optional import optional_import

__all__ = ["OrtRunner", "OpenVinoRunner"]


def _physical_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _norm_inputs(node):
    """An InstanceNormalization node's (x, scale, bias, epsilon)."""
    x, scale, bias = node.input
    return x, scale, bias, next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)


def _affine_nodes(p: str, var: str, eps: float, scale: str, bias: str, nd: int) -> list:
    """Nodes shared by the InstanceNormalization rewrites: ``{p}std`` = sqrt(var + eps) and
    ``{p}scale`` / ``{p}bias`` unsqueezed to broadcast over (N, C, *nd spatial axes)."""
    from onnx import helper, numpy_helper

    axes = numpy_helper.from_array(np.array([0] + list(range(2, 2 + nd)), np.int64))
    return [helper.make_node("Constant", [], [p + "eps"], value=numpy_helper.from_array(np.array(eps, np.float32))),
            helper.make_node("Add", [var, p + "eps"], [p + "var_eps"]),
            helper.make_node("Sqrt", [p + "var_eps"], [p + "std"]),
            helper.make_node("Constant", [], [p + "axes"], value=axes),
            helper.make_node("Unsqueeze", [scale, p + "axes"], [p + "scale"]),
            helper.make_node("Unsqueeze", [bias, p + "axes"], [p + "bias"])]


def stable_instance_norm(proto, rank: int) -> int:
    """Rewrites every InstanceNormalization of ``proto`` in place as a two-pass mean / variance
    whose reductions run one spatial axis at a time; returns how many were rewritten.

    ONNX Runtime's InstanceNormalization kernel accumulates its statistics over all voxels of
    a channel in float32, which loses precision on volumes: on deepbet's 192x224x192 input its
    softmax output moved by up to 0.05 from torch's and 250 mask voxels flipped. Reducing axis
    by axis keeps each sum to a few hundred terms (max difference 5e-5, identical masks, same
    speed)."""
    from onnx import helper

    spatial = list(range(2, rank))
    nodes, count = [], 0
    for node in proto.graph.node:
        if node.op_type != "InstanceNormalization" or len(node.input) != 3:
            nodes.append(node)
            continue
        x, scale, bias, eps = _norm_inputs(node)
        p = f"_segrt_in{count}_"
        count += 1

        def staged_mean(src, name):
            out = []
            cur = src
            for i, axis in enumerate(reversed(spatial)):
                nxt = name if i == len(spatial) - 1 else f"{p}{name}_{axis}"
                out.append(helper.make_node("ReduceMean", [cur], [nxt], axes=[axis], keepdims=1))
                cur = nxt
            return out

        nodes += staged_mean(x, p + "mean")
        nodes += [helper.make_node("Sub", [x, p + "mean"], [p + "centred"]),
                  helper.make_node("Mul", [p + "centred", p + "centred"], [p + "square"])]
        nodes += staged_mean(p + "square", p + "var")
        nodes += _affine_nodes(p, p + "var", eps, scale, bias, len(spatial)) + [
            helper.make_node("Div", [p + "centred", p + "std"], [p + "normed"]),
            helper.make_node("Mul", [p + "normed", p + "scale"], [p + "scaled"]),
            helper.make_node("Add", [p + "scaled", p + "bias"], list(node.output)),
        ]
    if count:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return count


def pooled_instance_norm(proto, input_shape, min_elements: int = 10_000):
    """A copy of ``proto`` fixed to one input shape in which every InstanceNormalization over at
    least ``min_elements`` voxels per channel computes its statistics by AveragePool stages
    (one spatial axis each, so every sum is short) and normalises as ``x * a + b`` with
    per-channel ``a = scale / std``, ``b = bias - mean * a``. Returns (copy, count).

    OpenVINO turns InstanceNormalization into its MVN kernel, whose float32 statistics drift on
    long channels: on deepbet's 192x224x192 input the first norm was off by 1e-3 relative and
    994 mask voxels differed from torch. The staged ReduceMean rewrite that fixes ONNX Runtime
    is exact on a lone norm but made OpenVINO worse inside the network (cause not found);
    with pooling the masks equal torch's (max difference 4e-4) at 2.5x torch's speed. The
    kernels need static sizes, hence one rewrite per input shape (OpenVINO compiles per shape
    anyway)."""
    import onnx
    from onnx import helper, shape_inference

    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    for d, v in zip(fixed.graph.input[0].type.tensor_type.shape.dim, input_shape):
        d.ClearField("dim_param")
        d.dim_value = int(v)
    inferred = shape_inference.infer_shapes(fixed)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim] for vi in inferred.graph.value_info}
    nodes, count = [], 0
    for node in proto.graph.node:
        shape = shapes.get(node.input[0]) if node.op_type == "InstanceNormalization" else None
        spatial = shape[2:] if shape else []
        if not spatial or min(spatial) <= 0 or int(np.prod(spatial)) < min_elements or len(node.input) != 3:
            nodes.append(node)
            continue
        x, scale, bias, eps = _norm_inputs(node)
        p = f"_segrt_pool{count}_"
        count += 1
        nd = len(spatial)

        def pooled_mean(src, tag):
            out, cur = [], src
            for axis in reversed(range(nd)):
                kernel = [1] * nd
                kernel[axis] = spatial[axis]
                nxt = f"{p}{tag}{axis}"
                out.append(helper.make_node("AveragePool", [cur], [nxt], kernel_shape=kernel, strides=kernel))
                cur = nxt
            return out, cur

        mean_nodes, mean = pooled_mean(x, "mean")
        sq_nodes, mean_sq = pooled_mean(p + "sq", "msq")
        nodes += mean_nodes + [helper.make_node("Mul", [x, x], [p + "sq"])] + sq_nodes + [
            helper.make_node("Mul", [mean, mean], [p + "m2"]),
            helper.make_node("Sub", [mean_sq, p + "m2"], [p + "var"]),
        ] + _affine_nodes(p, p + "var", eps, scale, bias, nd) + [
            helper.make_node("Div", [p + "scale", p + "std"], [p + "a"]),
            helper.make_node("Mul", [mean, p + "a"], [p + "ma"]),
            helper.make_node("Sub", [p + "bias", p + "ma"], [p + "b"]),
            helper.make_node("Mul", [x, p + "a"], [p + "xa"]),
            helper.make_node("Add", [p + "xa", p + "b"], list(node.output)),
        ]
    if count:  # the shape-fixed copy is the result: it is compiled for that shape anyway
        del fixed.graph.node[:]
        fixed.graph.node.extend(nodes)
    return fixed, count


class OrtRunner:
    """ONNX Runtime on the CPU with tuned options: all graph optimisations, the memory arena
    and pattern planner, one intra-op thread per available core, sequential execution."""

    def __init__(self, path, inputs, outputs, *, threads=None, spinning=True, gpu=False, device=0,
                 stable_norm=True, proto=None):
        ort = optional_import("onnxruntime", purpose="the ONNX Runtime backend")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_cpu_mem_arena = True
        opts.enable_mem_pattern = True
        opts.intra_op_num_threads = int(threads) if threads else _physical_cores()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # spinning workers answer the next call faster but hold the cores in between
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        try:
            # ort-gpu: CUDA first (TensorRT's provider stalls on first run and on every new shape)
            providers = ([("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"] if gpu
                         else ["CPUExecutionProvider"])
            source = path
            if stable_norm and not gpu:
                source = self._stable_source(path, proto, len(inputs[0].shape)) or path
            self.session = ort.InferenceSession(source, opts, providers=providers)
        except Exception as err:
            raise RuntimeError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}") from None
        self.input_name = inputs[0].name
        self.run = self.session.run

    def __call__(self, x):
        return self.run(None, {self.input_name: x})

    @staticmethod
    def _stable_source(path, proto, rank):
        """The model's bytes with stable_instance_norm applied, or None when it has no
        InstanceNormalization (or is too large to hand over in memory). ``proto``: the model as
        segrt.engine.model.inspect_model_file parsed it (without external data), if at hand."""
        onnx = optional_import("onnx", purpose="reading ONNX models")
        if proto is None:
            proto = onnx.load(path, load_external_data=False)
        if not any(n.op_type == "InstanceNormalization" for n in proto.graph.node):
            return None
        full = onnx.ModelProto()
        full.CopyFrom(proto)
        # external data (already vetted) is read from the model's folder
        onnx.load_external_data_for_model(full, os.path.dirname(os.path.abspath(path)))
        stable_instance_norm(full, rank)
        if full.ByteSize() >= 2**31 - 1:
            return None
        return full.SerializeToString()


class OpenVinoRunner:
    """OpenVINO on the CPU, f32 unless asked otherwise; the model is compiled once per input
    shape (static shapes run fastest) and the compiled models are kept (8 shapes, LRU).

    Safe to call from several threads: each thread infers through its own request. With
    ``streams`` > 1 the ``threads`` are split into that many streams, so that as many calls
    run at once (separately compiled copies of a model would take turns instead)."""

    def __init__(self, path, inputs, outputs, *, threads=None, streams=1, precision="f32", cache_size=8,
                 stable_norm=True, proto=None):
        ov = optional_import("openvino", purpose="the OpenVINO backend")
        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision must be 'f32' or 'bf16', got {precision!r}")
        if isinstance(streams, bool) or not isinstance(streams, int) or streams < 1:
            raise ValueError(f"streams must be a positive integer, got {streams!r}")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(path)
        except Exception as err:
            raise RuntimeError(f"OpenVINO cannot read {path}: {str(err).splitlines()[0]}") from None
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        if streams > 1:
            self.config["NUM_STREAMS"] = streams
            self.config["INFERENCE_NUM_THREADS"] = max(int(threads or _physical_cores()), streams)
        self.input_name = inputs[0].name
        self._lock = threading.Lock()
        self._local = threading.local()
        self.n_outputs = len(outputs)
        self.compiled = collections.OrderedDict()
        self.cache_size = cache_size
        # InstanceNormalization gets exact statistics per input shape (see pooled_instance_norm)
        self.proto = None
        if stable_norm and proto is not None and any(n.op_type == "InstanceNormalization" for n in proto.graph.node):
            self.proto = proto

    def compiled_for(self, shape):
        with self._lock:
            return self._compiled_for(shape)

    def _compiled_for(self, shape):
        c = self.compiled.get(shape)
        if c is not None:
            self.compiled.move_to_end(shape)
            return c
        model = None
        if self.proto is not None:
            rewritten, count = pooled_instance_norm(self.proto, shape)
            if count:
                model = self.core.read_model(rewritten.SerializeToString(), b"")
        if model is None:
            model = self.model.clone()
        model.reshape({self.input_name: list(shape)})
        c = self.core.compile_model(model, "CPU", self.config)
        self.compiled[shape] = c
        if len(self.compiled) > self.cache_size:
            self.compiled.popitem(last=False)
        return c

    def __call__(self, x):
        compiled = self.compiled_for(x.shape)
        requests = self._local.__dict__.setdefault("requests", {})
        owner, request = requests.get(x.shape, (None, None))
        if owner is not compiled:  # first call on this thread, or recompiled since
            request = compiled.create_infer_request()
            requests.pop(x.shape, None)
            requests[x.shape] = (compiled, request)
            if len(requests) > self.cache_size:  # the oldest shape's request goes with its model
                requests.pop(next(iter(requests)))
        res = request.infer(x)
        return [res[i] for i in range(self.n_outputs)]
