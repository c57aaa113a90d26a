"""Native TensorRT backend: CuPy-owned device buffers, one CUDA stream, optional CUDA graph
capture for a fixed shape, device-array inputs (``__cuda_array_interface__``) without copies.

Written against TensorRT 10's documented Python API (``Runtime.deserialize_cuda_engine``,
``IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3``). TensorRT
cannot be installed where this project is developed: these calls are unverified here; the
engine cache and trust checks they rely on are tested (``tensorrt_build``).
"""
from __future__ import annotations

import numpy as np

from segrt._optional import is_available, optional_import
from segrt.engine.backends.base import Runner, cuda_device_count
from segrt.engine.backends.tensorrt_build import build_engine, verify_engine_file

__all__ = ["TrtRunner"]


class TrtRunner(Runner):
    name = "trt"
    OPTIONS = {
        "precision": "'fp32', 'fp16' (default), 'int8' or 'best' (int8 needs calibration)",
        "cache_dir": "engine cache folder (default $SEGRT_CACHE/engines or ~/.cache/segrt/engines)",
        "calibration": "int8 calibration windows: a folder of .npy files or an iterable of arrays",
        "batch_sizes": "(min, opt, max) batch of the optimisation profile (default (1, 1, 4))",
        "trust_foreign_engine": "load an .engine segrt's cache did not write (deserialising runs code)",
        "cuda_graph": "capture each input shape's run in a CUDA graph",
        "device": "CUDA device index (default 0)",
    }
    CHOSEN_BECAUSE = "TensorRT and a CUDA device are present"
    DEVICE_ARRAYS = True

    @classmethod
    def unavailable(cls):
        if not is_available("tensorrt"):
            return "tensorrt is not installed; pip install 'segrt[trt]'"
        if not cuda_device_count():
            return "no CUDA device (or CuPy) found; pip install 'segrt[gpu]' on a machine with an NVIDIA GPU"
        return None

    def __init__(self, path, inputs, outputs, *, metadata=None, proto=None, precision="fp16", cache_dir=None,
                 calibration=None, batch_sizes=(1, 1, 4), trust_foreign_engine=False, cuda_graph=False, device=0):
        trt = optional_import("tensorrt", purpose="the TensorRT backend")
        self.cupy = cupy = optional_import("cupy", purpose="the TensorRT backend")
        window = (metadata or {}).get("window")

        if str(path).endswith(".engine"):
            verify_engine_file(str(path), trust_foreign_engine=trust_foreign_engine)
            engine_path = str(path)
        else:
            engine_path = build_engine(path, precision=precision, calibration=calibration, cache_dir=cache_dir,
                                       window=window, batch_sizes=batch_sizes, device=device).path
        cupy.cuda.Device(device).use()
        self.logger = trt.Logger(trt.Logger.WARNING)
        with open(engine_path, "rb") as f:
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialise {engine_path} (built by another version?)")
        self.context = self.engine.create_execution_context()
        self.stream = cupy.cuda.Stream(non_blocking=True)
        self.input_name = inputs[0].name
        self.output_names = [o.name for o in outputs]
        self.cuda_graph = cuda_graph
        self._buffers = {}  # shape -> (device input, device outputs, captured graph or None)
        self.device_outputs = False

    def _setup(self, shape):
        cupy = self.cupy
        entry = self._buffers.get(shape)
        if entry is not None:
            return entry
        self.context.set_input_shape(self.input_name, shape)
        d_in = cupy.empty(shape, cupy.float32)
        d_out = []
        for name in self.output_names:
            out_shape = tuple(self.context.get_tensor_shape(name))
            d_out.append(cupy.empty(out_shape, cupy.float32))
            self.context.set_tensor_address(name, int(d_out[-1].data.ptr))
        self.context.set_tensor_address(self.input_name, int(d_in.data.ptr))
        graph = None
        if self.cuda_graph:
            self.context.execute_async_v3(self.stream.ptr)  # TensorRT's first run allocates: outside the capture
            self.stream.begin_capture()
            self.context.execute_async_v3(self.stream.ptr)
            graph = self.stream.end_capture()
        entry = self._buffers[shape] = (d_in, d_out, graph)
        return entry

    def __call__(self, x):
        cupy = self.cupy
        on_device = hasattr(x, "__cuda_array_interface__")
        shape = tuple(int(s) for s in x.shape)
        d_in, d_out, graph = self._setup(shape)
        self.context.set_input_shape(self.input_name, shape)
        self.context.set_tensor_address(self.input_name, int(d_in.data.ptr))
        with self.stream:
            if on_device:
                src = cupy.asarray(x)  # no copy: wraps the caller's memory
                if graph is None and src.flags.c_contiguous and src.dtype == cupy.float32:
                    self.context.set_tensor_address(self.input_name, int(src.data.ptr))
                else:
                    d_in[...] = src
            else:
                d_in.set(np.ascontiguousarray(x, dtype=np.float32), stream=self.stream)
            if graph is not None:
                graph.launch(self.stream)
            else:
                self.context.execute_async_v3(self.stream.ptr)
        self.stream.synchronize()
        if on_device:
            return [o.copy() for o in d_out]  # the caller gets arrays the next call will not overwrite
        return [cupy.asnumpy(o, stream=self.stream) for o in d_out]
