"""PyTorch backend (``torch``): the model file as a PyTorch module (``onnx_torch``), on a CUDA
device compiled with ``torch.compile`` (CUDA graphs for the fixed window shapes), or on the
CPU as a reference.

Device arrays (CuPy, PyTorch CUDA tensors, anything with DLPack) go in without a copy, run on
the caller's current CuPy stream, and the outputs come back as CuPy arrays on the same device;
host batches come back as NumPy. The GPU path is written against PyTorch's documented API and
has not run on a GPU in this project yet (``bench/gpu_check.py`` exercises it).
Precision: fp32 by default; fp16 / bf16 on request (the input is cast, the outputs returned
in float32).

Compile cache: compiling a window shape takes seconds to minutes, so each compiled shape's
artifacts (``torch.compiler.save_cache_artifacts``) are kept in the engine cache folder under a
key like the TensorRT engines' (model content, PyTorch and Triton versions, device name and
compute capability or CPU capability, precision, CUDA-graph mode, input shape and dtype), with a
record signed by this installation (``segrt.engine.trust``): the artifacts hold generated code
that runs when loaded, so a file segrt did not write is never loaded (it is recompiled).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
import warnings

import numpy as np

from segrt._optional import is_available, optional_import
from segrt.engine.backends.base import Runner
from segrt.engine.backends.cache import (EngineTrustError, check_cache_file, engine_cache_dir, onnx_content_hash,
                                         write_cache_file)
from segrt.engine.backends.onnx_torch import to_torch_module

__all__ = ["TorchRunner", "PRECISIONS", "compile_cache_key"]

CACHE_KIND = "torch compile cache"

PRECISIONS = ("fp32", "fp16", "bf16")


def _cuda_available() -> bool:
    try:
        return bool(optional_import("torch").cuda.is_available())
    except Exception:  # no torch, or a build without CUDA
        return False


def _device_identity(torch, device) -> dict:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"device": props.name, "compute_capability": f"{props.major}.{props.minor}"}
    return {"device": "cpu", "cpu_capability": str(torch.backends.cpu.get_cpu_capability())}


def _versions(torch) -> dict:
    from importlib import metadata

    versions = {"torch": torch.__version__}
    try:  # Triton writes the GPU code inductor compiles (installed with CUDA builds of PyTorch)
        versions["triton"] = metadata.version("triton")
    except metadata.PackageNotFoundError:
        pass
    return versions


def compile_cache_key(content_hash: str, versions: dict, device: dict, precision: str, cuda_graph: bool,
                      shape, dtype: str) -> str:
    """The cache key of one compiled input shape (same idea as the TensorRT engine cache's)."""
    fields = {"onnx": content_hash, "versions": versions, "device": device, "precision": precision,
              "cuda_graph": bool(cuda_graph), "shape": [int(s) for s in shape], "dtype": str(dtype)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


class TorchRunner(Runner):
    name = "torch"
    OPTIONS = {
        "device": "'cuda' (default where PyTorch sees a GPU), 'cuda:N', or 'cpu' (a reference)",
        "precision": "'fp32' (default), 'fp16' or 'bf16'",
        "compile": "torch.compile the module (default True on a GPU, False on the CPU)",
        "cuda_graph": "replay CUDA graphs per input shape (torch.compile mode 'reduce-overhead'; default True)",
        "cache_dir": "compile cache folder (default $SEGRT_CACHE/engines or ~/.cache/segrt/engines)",
    }
    CHOSEN_BECAUSE = "PyTorch sees a CUDA device (TensorRT is not installed)"
    DEVICE_ARRAYS = True

    @classmethod
    def unavailable(cls):
        if not is_available("torch"):
            return "torch is not installed; pip install 'segrt[export]' (or a CUDA build of PyTorch)"
        return None

    @classmethod
    def unavailable_for_auto(cls):
        why = cls.unavailable()
        if why is None and not _cuda_available():
            return "PyTorch sees no CUDA device (on the CPU it is a reference: backend='torch' runs it there)"
        return why

    def __init__(self, path, inputs, outputs, *, metadata=None, proto=None, device=None, precision="fp32",
                 compile=None, cuda_graph=True, cache_dir=None):
        torch = self.torch = optional_import("torch", purpose="the torch backend")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        device = device or ("cuda" if _cuda_available() else "cpu")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r} ({err})") from None
        if self.device.type == "cuda" and not _cuda_available():
            raise RuntimeError("backend='torch' with device='cuda' needs PyTorch with CUDA and a GPU; PyTorch sees "
                               "none here (device='cpu' runs the reference)")
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if proto is None:
            proto = optional_import("onnx").load(path)
        self.path, self.precision = path, precision
        self.dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
        module = to_torch_module(proto).to(self.device)
        if self.dtype != torch.float32:
            module = module.to(self.dtype)
        self.module = module
        compile = self.device.type == "cuda" if compile is None else bool(compile)
        self.compiled = compile
        self.first_call_seconds = {}  # input shape -> seconds of its first call (compilation included)
        self.compile_seconds = 0.0
        self.cache_loaded = []  # shapes whose compilation came from the compile cache
        self.cuda_graph = bool(compile and cuda_graph and self.device.type == "cuda")
        if compile:
            mode = "reduce-overhead" if self.cuda_graph else "default"
            self.module = torch.compile(module, mode=mode, dynamic=False)
            self.cache_dir = engine_cache_dir(cache_dir)
            self._content = onnx_content_hash(path, proto) if path else hashlib.sha256(
                proto.SerializeToString()).hexdigest()
        self.DEVICE_ARRAYS = self.device.type == "cuda"
        self._lock = threading.Lock()  # CUDA graph replays and compilation are not reentrant
        self._last_done = None  # CUDA-graph mode: an event after the previous call's output copies

    def _caller_stream(self, on_device):
        """Device arrays: run on the caller's CuPy stream, so that the kernels before and after
        this call are ordered with it without synchronising the device."""
        if not (on_device and self.device.type == "cuda"):
            return contextlib.nullcontext()
        cupy = optional_import("cupy", purpose="device inputs of the torch backend")
        ptr = cupy.cuda.get_current_stream().ptr
        if not ptr:  # the legacy default stream is PyTorch's default too
            return contextlib.nullcontext()
        return self.torch.cuda.stream(self.torch.cuda.ExternalStream(ptr, device=self.device))

    def compile_cache_path(self, shape) -> str:
        """The compile cache file of one input shape."""
        key = compile_cache_key(self._content, _versions(self.torch), _device_identity(self.torch, self.device),
                                self.precision, self.cuda_graph, shape, str(self.dtype).replace("torch.", ""))
        return os.path.join(self.cache_dir, f"torch-{key}.bin")

    def _load_compiled(self, path) -> bool:
        """Hot-loads a shape's artifacts when segrt's own signed record vouches for them."""
        if not os.path.isfile(path):
            return False
        try:
            check_cache_file(path, CACHE_KIND)
        except EngineTrustError as err:
            warnings.warn(f"{err}; compiling instead", RuntimeWarning, stacklevel=3)
            return False
        with open(path, "rb") as f:
            return self.torch.compiler.load_cache_artifacts(f.read()) is not None

    def _save_compiled(self, path, shape) -> None:
        artifacts = self.torch.compiler.save_cache_artifacts()
        if artifacts:
            os.makedirs(self.cache_dir, exist_ok=True)
            write_cache_file(path, artifacts[0], CACHE_KIND, shape=list(shape), precision=self.precision,
                             source=os.path.abspath(self.path) if self.path else None)

    def _run(self, t, on_device):
        shape = tuple(t.shape)
        first = shape not in self.first_call_seconds
        cache_path = self.compile_cache_path(shape) if (first and self.compiled) else None
        if cache_path and self._load_compiled(cache_path):
            self.cache_loaded.append(shape)
            cache_path = None  # nothing new to save
        t0 = time.perf_counter()
        with self._caller_stream(on_device):
            if self._last_done is not None:
                # a CUDA graph's static buffers are shared by every caller's stream: this replay
                # waits on the device (not the host) for the previous call's copies
                self.torch.cuda.current_stream(self.device).wait_event(self._last_done)
            outs = self.module(t)
            # a CUDA graph's outputs are overwritten by the next replay: keep copies
            outs = [o.float().clone() if o.is_floating_point() else o.clone() for o in outs]
            if self.cuda_graph:
                self._last_done = self.torch.cuda.Event()
                self._last_done.record()
        if first:
            if self.device.type == "cuda":
                self.torch.cuda.synchronize(self.device)
            self.first_call_seconds[shape] = time.perf_counter() - t0
            if self.compiled:  # a compiled shape's first call is its compilation
                self.compile_seconds += self.first_call_seconds[shape]
            if cache_path:
                self._save_compiled(cache_path, shape)
        return outs

    def __call__(self, x):
        torch = self.torch
        on_device = not isinstance(x, np.ndarray)
        t = torch.from_dlpack(x) if on_device else torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(self.device, non_blocking=True)
        if t.dtype != self.dtype and t.is_floating_point():
            t = t.to(self.dtype)
        try:
            with self._lock, torch.inference_mode():
                outs = self._run(t, on_device)
        except torch.cuda.OutOfMemoryError:
            raise MemoryError(f"out of GPU memory running a batch of shape {tuple(t.shape)} on {self.device}; lower "
                              "the batch (sw_batch_size) or the window, or use precision='fp16'") from None
        if on_device:
            cupy = optional_import("cupy", purpose="device outputs of the torch backend")
            return [cupy.from_dlpack(o.contiguous()) for o in outs]
        return [o.cpu().numpy() for o in outs]
