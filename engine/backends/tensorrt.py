"""Native TensorRT backend: CuPy-owned device buffers, optional CUDA graph capture for a fixed
shape, device-array inputs (``__cuda_array_interface__``) without copies. Device inputs run on
the caller's current CuPy stream (shared with the kernels around the call, no host sync);
host inputs on the runner's own stream.

Written against TensorRT 10's documented Python API (``Runtime.deserialize_cuda_engine``,
``IExecutionContext.set_input_shape / set_tensor_address / execute_async_v3``). TensorRT
cannot be installed where this project is developed: these calls are unverified here; the
engine cache and trust checks they rely on are tested (``tensorrt_build``).
"""
from __future__ import annotations

import threading

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
        self._lock = threading.Lock()  # the buffers and the context are shared by every caller
        self._last_done = None  # an event after the previous call's outputs were taken

    def _setup(self, shape, stream):
        cupy = self.cupy
        entry = self._buffers.get(shape)
        if entry is not None:
            return entry
        if not self.context.set_input_shape(self.input_name, shape):
            raise ValueError(f"TensorRT refuses the input shape {shape}: the engine's optimisation profile does not "
                             "cover it (rebuild the engine with batch_sizes / a window that do)")
        try:
            d_in = cupy.empty(shape, cupy.float32)
            d_out = []
            for name in self.output_names:
                out_shape = tuple(self.context.get_tensor_shape(name))
                d_out.append(cupy.empty(out_shape, cupy.float32))
                self.context.set_tensor_address(name, int(d_out[-1].data.ptr))
        except cupy.cuda.memory.OutOfMemoryError:
            raise _out_of_memory(shape) from None
        self.context.set_tensor_address(self.input_name, int(d_in.data.ptr))
        graph = None
        if self.cuda_graph:
            self._execute(stream, shape)  # TensorRT's first run allocates: outside the capture
            stream.begin_capture()
            self._execute(stream, shape)
            graph = stream.end_capture()
        entry = self._buffers[shape] = (d_in, d_out, graph)
        return entry

    def _execute(self, stream, shape):
        if not self.context.execute_async_v3(stream.ptr):
            raise RuntimeError(f"TensorRT failed to run a batch of shape {shape} (see its log above; out of device "
                               "memory shows there: lower the batch (sw_batch_size) or the window)")

    def _stream(self, on_device):
        """The caller's current CuPy stream for device inputs (the kernels before and after this
        call are ordered with it without a host sync), else this runner's own."""
        if on_device:
            current = self.cupy.cuda.get_current_stream()
            if current.ptr:
                return current
        return self.stream

    def __call__(self, x):
        cupy = self.cupy
        on_device = hasattr(x, "__cuda_array_interface__")
        shape = tuple(int(s) for s in x.shape)
        stream = self._stream(on_device)
        with self._lock, stream:
            if self._last_done is not None:  # the shared buffers: wait (on the device) for the previous call
                stream.wait_event(self._last_done)
            d_in, d_out, graph = self._setup(shape, stream)
            self.context.set_input_shape(self.input_name, shape)
            self.context.set_tensor_address(self.input_name, int(d_in.data.ptr))
            if on_device:
                src = cupy.asarray(x)  # no copy: wraps the caller's memory
                if graph is None and src.flags.c_contiguous and src.dtype == cupy.float32:
                    self.context.set_tensor_address(self.input_name, int(src.data.ptr))
                else:
                    d_in[...] = src
            else:
                d_in.set(np.ascontiguousarray(x, dtype=np.float32), stream=stream)
            if graph is not None:
                graph.launch(stream)
            else:
                self._execute(stream, shape)
            if on_device:
                try:  # the caller gets arrays the next call will not overwrite, ordered on its stream
                    outs = [o.copy() for o in d_out]
                except cupy.cuda.memory.OutOfMemoryError:
                    raise _out_of_memory(shape) from None
            else:
                outs = [cupy.asnumpy(o, stream=stream) for o in d_out]
                stream.synchronize()
            self._last_done = cupy.cuda.Event()
            self._last_done.record(stream)
        return outs


def _out_of_memory(shape) -> MemoryError:
    return MemoryError(f"out of GPU memory for TensorRT's buffers of a batch of shape {shape}; lower the batch "
                       "(sw_batch_size) or the window, or build the engine with precision='fp16'")
