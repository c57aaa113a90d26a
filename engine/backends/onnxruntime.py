"""ONNX Runtime: ``ort`` on the CPU and ``ort-gpu`` through its CUDA execution provider."""
from __future__ import annotations

import collections
import os
import threading

from segrt._optional import optional_import
from segrt.engine import graph_rewrites
from segrt.engine.backends.base import Runner, cuda_device_count, usable_cpus

__all__ = ["OrtRunner", "OrtGpuRunner"]


class OrtRunner(Runner):
    """ONNX Runtime on the CPU with tuned options: all graph optimisations, the memory arena
    and pattern planner, one intra-op thread per usable CPU, sequential execution.

    InstanceNormalization over long channels is computed with short sums
    (``graph_rewrites.stable_instance_norm``), only for the norms that are long at the shape
    being run: a model without such norms runs the file as it is."""

    name = "ort"
    OPTIONS = {
        "threads": "intra-op threads (default: one per usable CPU)",
        "spinning": "keep idle workers spinning between calls: faster next call, busier cores (default True)",
        "stable_norm": "exact InstanceNormalization statistics on long channels (default True)",
    }
    CHOSEN_BECAUSE = "the portable CPU fallback"
    _providers = staticmethod(lambda device: ["CPUExecutionProvider"])

    @classmethod
    def unavailable(cls):
        try:
            optional_import("onnxruntime")
        except ImportError as err:
            return f"onnxruntime cannot be imported ({str(err).split(':')[-1].strip()}); pip install onnxruntime"
        return None

    def __init__(self, path, inputs, outputs, *, metadata=None, proto=None, threads=None, spinning=True,
                 stable_norm=True, device=0):
        ort = optional_import("onnxruntime", purpose="the ONNX Runtime backend")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.enable_cpu_mem_arena = True
        opts.enable_mem_pattern = True
        opts.intra_op_num_threads = int(threads) if threads else usable_cpus()
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # spinning workers answer the next call faster but hold the cores in between
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self._ort, self._options, self.path = ort, opts, path
        self._provider_list = self._providers(device)
        self.input_name = inputs[0].name
        self.rank = len(inputs[0].shape)
        self._lock = threading.Lock()
        # the model as parsed by inspect_model_file; kept only when some norm may need a rewrite
        if proto is None:
            proto = optional_import("onnx").load(path, load_external_data=False)
        self._proto = proto if stable_norm and graph_rewrites.has_instance_norm(proto) else None
        self._rewrites_by_shape: dict = {}
        self._sessions: collections.OrderedDict = collections.OrderedDict()
        self._sessions[frozenset()] = self._session(path)  # the file as it is: also vets it now

    def _session(self, source):
        try:
            return self._ort.InferenceSession(source, self._options, providers=self._provider_list)
        except Exception as err:
            raise RuntimeError(f"ONNX Runtime cannot load {self.path}: {str(err).splitlines()[0]}") from None

    def session_for(self, shape):
        """The session that runs input ``shape``: the plain one, or one whose long norms are rewritten."""
        shape = tuple(shape)
        with self._lock:
            norms = self._rewrites_by_shape.get(shape)
            if norms is None:
                norms = frozenset() if self._proto is None else graph_rewrites.long_instance_norms(
                    self._proto, shape, graph_rewrites.LONG_CHANNEL_ORT)
                if len(self._rewrites_by_shape) >= 256:  # shapes that vary without end: forget, recompute
                    self._rewrites_by_shape.clear()
                self._rewrites_by_shape[shape] = norms
            session = self._sessions.get(norms)
            if session is None:
                session = self._sessions[norms] = self._session(self._rewritten(norms))
                if len(self._sessions) > 4:  # the plain session stays first
                    del self._sessions[next(k for k in self._sessions if k)]
            return session

    def _rewritten(self, norms):
        """The model's bytes with the given norms rewritten (external data read from its folder)."""
        onnx = optional_import("onnx", purpose="reading ONNX models")
        full = onnx.ModelProto()
        full.CopyFrom(self._proto)
        onnx.load_external_data_for_model(full, os.path.dirname(os.path.abspath(self.path)))
        graph_rewrites.stable_instance_norm(full, self.rank, only=norms)
        if full.ByteSize() >= 2**31 - 1:
            raise RuntimeError(f"{self.path} is too large to rewrite in memory; load it with stable_norm=False")
        return full.SerializeToString()

    def __call__(self, x):
        session = self._sessions[frozenset()] if self._proto is None else self.session_for(x.shape)
        return session.run(None, {self.input_name: x})


class OrtGpuRunner(OrtRunner):
    """ONNX Runtime's CUDA execution provider (CPU fallback for unsupported nodes). TensorRT's
    provider is not used: it stalls on the first run and on every new shape."""

    name = "ort-gpu"
    OPTIONS = {
        "threads": "intra-op threads for nodes on the CPU",
        "device": "CUDA device index (default 0)",
    }
    CHOSEN_BECAUSE = "ONNX Runtime's CUDA provider and a device are present"
    _providers = staticmethod(lambda device: [("CUDAExecutionProvider", {"device_id": device}),
                                              "CPUExecutionProvider"])

    @classmethod
    def unavailable(cls):
        try:
            providers = optional_import("onnxruntime").get_available_providers()
        except ImportError:
            providers = []
        if "CUDAExecutionProvider" not in providers:
            return "onnxruntime-gpu (CUDAExecutionProvider) is not installed; pip install onnxruntime-gpu"
        if not cuda_device_count():
            return "no CUDA device found"
        return None

    def __init__(self, path, inputs, outputs, *, metadata=None, proto=None, threads=None, device=0):
        # the GPU kernel's statistics do not drift as the CPU one's: the file runs as it is
        super().__init__(path, inputs, outputs, metadata=metadata, proto=proto, threads=threads, stable_norm=False,
                         device=device)

