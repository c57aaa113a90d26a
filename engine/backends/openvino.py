"""OpenVINO on the CPU: the fastest CPU runtime measured for this project's 2D and 3D UNets."""
from __future__ import annotations

import collections
import threading
import time

from segrt._optional import optional_import
from segrt.engine import graph_rewrites
from segrt.engine.backends.base import Runner, usable_cpus

__all__ = ["OpenVinoRunner"]


class OpenVinoRunner(Runner):
    """OpenVINO on the CPU, f32 unless asked otherwise; the model is compiled once per input
    shape (static shapes run fastest) and the compiled models are kept (8 shapes, LRU).

    Safe to call from several threads: each thread infers through its own request. With
    ``streams`` > 1 the ``threads`` are split into that many streams, so that as many calls
    run at once (separately compiled copies of a model would take turns instead)."""

    name = "openvino"
    OPTIONS = {
        "threads": "inference threads (default: OpenVINO's choice, one per core)",
        "streams": "calls that run at once from several threads, the threads split between them (default 1)",
        "precision": "'f32' (default) or 'bf16' (faster on CPUs with bfloat16 units; a few pixels differ)",
        "stable_norm": "exact InstanceNormalization statistics on long channels (default True)",
    }
    CHOSEN_BECAUSE = "installed, the fastest CPU backend measured"

    @classmethod
    def unavailable(cls):
        try:
            optional_import("openvino")
        except ImportError as err:
            return f"openvino cannot be imported ({str(err).split(':')[-1].strip()}); pip install openvino"
        return None

    def __init__(self, path, inputs, outputs, *, metadata=None, proto=None, threads=None, streams=1,
                 precision="f32", stable_norm=True, cache_size=8):
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
            self.config["INFERENCE_NUM_THREADS"] = max(int(threads or usable_cpus()), streams)
        self.input_name = inputs[0].name
        self._lock = threading.Lock()
        self._local = threading.local()
        self.n_outputs = len(outputs)
        self.compiled = collections.OrderedDict()
        self.compile_seconds = 0.0  # spent compiling per input shape (shown as its own stage)
        self.cache_size = cache_size
        # InstanceNormalization gets exact statistics per input shape (see graph_rewrites.pooled_instance_norm)
        self.proto = None
        if stable_norm and proto is not None and graph_rewrites.has_instance_norm(proto):
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
            rewritten, count = graph_rewrites.pooled_instance_norm(self.proto, shape)
            if count:
                model = self.core.read_model(rewritten.SerializeToString(), b"")
        if model is None:
            model = self.model.clone()
        model.reshape({self.input_name: list(shape)})
        t0 = time.perf_counter()
        c = self.core.compile_model(model, "CPU", self.config)
        self.compile_seconds += time.perf_counter() - t0
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
