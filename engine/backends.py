"""CPU backends: ONNX Runtime and OpenVINO. A runner maps a checked C-contiguous batch to the
list of output arrays, with nothing between the caller and the runtime call but a dict."""
from __future__ import annotations

import collections
import os

from segrt._optional import optional_import

__all__ = ["OrtRunner", "OpenVinoRunner"]


def _physical_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class OrtRunner:
    """ONNX Runtime on the CPU with tuned options: all graph optimisations, the memory arena
    and pattern planner, one intra-op thread per available core, sequential execution."""

    def __init__(self, path, inputs, outputs, *, threads=None, spinning=True, gpu=False, device=0):
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
            self.session = ort.InferenceSession(path, opts, providers=providers)
        except Exception as err:
            raise RuntimeError(f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}") from None
        self.input_name = inputs[0].name
        self.run = self.session.run

    def __call__(self, x):
        return self.run(None, {self.input_name: x})


class OpenVinoRunner:
    """OpenVINO on the CPU, f32 unless asked otherwise; the model is compiled once per input
    shape (static shapes run fastest) and the compiled models are kept (8 shapes, LRU)."""

    def __init__(self, path, inputs, outputs, *, threads=None, precision="f32", cache_size=8):
        ov = optional_import("openvino", purpose="the OpenVINO backend")
        if precision not in ("f32", "bf16"):
            raise ValueError(f"precision must be 'f32' or 'bf16', got {precision!r}")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(path)
        except Exception as err:
            raise RuntimeError(f"OpenVINO cannot read {path}: {str(err).splitlines()[0]}") from None
        self.config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.input_name = inputs[0].name
        self.n_outputs = len(outputs)
        self.compiled = collections.OrderedDict()
        self.cache_size = cache_size

    def compiled_for(self, shape):
        c = self.compiled.get(shape)
        if c is not None:
            self.compiled.move_to_end(shape)
            return c
        model = self.model.clone()
        model.reshape({self.input_name: list(shape)})
        c = self.core.compile_model(model, "CPU", self.config)
        self.compiled[shape] = c
        if len(self.compiled) > self.cache_size:
            self.compiled.popitem(last=False)
        return c

    def __call__(self, x):
        res = self.compiled_for(x.shape)(x)
        return [res[i] for i in range(self.n_outputs)]
