"""The one device resolver every op uses: ``device="auto" | "reference" | "cpu" | "cuda"``.

- ``"auto"`` follows the data: arrays on a GPU (``__cuda_array_interface__``, or a DLPack
  device that is CUDA) run the op's CUDA implementation, host arrays the compiled CPU one.
- ``"reference"``: the op's plain NumPy implementation (slow, obviously right).
- ``"cpu"``: the compiled C++ kernels (``segrt.kernels._C``).
- ``"cuda"``: the op's Numba CUDA kernels on CuPy arrays.

Each op lists its implementations in one table, ``{device: module name}``;
``implementation(op, table, device, *arrays)`` returns ``(device, module)`` or raises an error
that says why the device cannot serve and what to do instead.
"""
from __future__ import annotations

import importlib

import numpy as np

from segrt.kernels import _ext

__all__ = ["DEVICES", "on_gpu", "gpu_index", "resolve", "implementation", "array_module_of"]

DEVICES = ("auto", "reference", "cpu", "cuda")
_DLPACK_CUDA = (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def on_gpu(array) -> bool:
    """True for arrays that live in GPU memory (CuPy, PyTorch CUDA tensors, Numba device arrays)."""
    if hasattr(array, "__cuda_array_interface__"):
        return True
    dlpack_device = getattr(array, "__dlpack_device__", None)
    if dlpack_device is not None:
        try:
            return int(dlpack_device()[0]) in _DLPACK_CUDA
        except Exception:  # not a DLPack producer after all
            return False
    return False


def gpu_index(array):
    """The index of the GPU an array lives on (DLPack device, or CuPy's ``.device.id``), or None."""
    dlpack_device = getattr(array, "__dlpack_device__", None)
    if dlpack_device is not None:
        try:
            kind, index = dlpack_device()
            if int(kind) in _DLPACK_CUDA:
                return int(index)
        except Exception:  # not a DLPack producer after all
            pass
    index = getattr(getattr(array, "device", None), "id", None)
    return int(index) if isinstance(index, int) else None


def resolve(op: str, table: dict, device, *arrays) -> str:
    """The device that runs ``op`` for these arrays (see the module text)."""
    if not isinstance(device, str) or device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    gpu_arrays = any(on_gpu(a) for a in arrays)
    indices = sorted({i for i in (gpu_index(a) for a in arrays if on_gpu(a)) if i is not None})
    if len(indices) > 1:
        raise ValueError(f"{op}: the inputs live on different GPUs ({', '.join(map(str, indices))}); copy them to "
                         "one device first (e.g. with cupy.cuda.Device(i): cupy.asarray(x))")
    if device == "auto":
        device = "cuda" if gpu_arrays else "cpu"
    if device == "cuda":
        if "cuda" not in table:
            where = ("the arrays are on a GPU; copy them to the host (e.g. cupy.asnumpy(x)) and "
                     if gpu_arrays else "")
            raise NotImplementedError(f"{op}: the GPU (CUDA) implementation is not available in this version of "
                                      f"segrt; {where}use device='cpu'")
        from segrt.kernels import gpu as _gpu

        _gpu.array_module()  # CuPy and a device (or the simulator), else an error that says what is missing
        _gpu.cuda()
        return device
    if gpu_arrays:
        raise ValueError(f"{op}: device={device!r} runs on the host, but an input is a GPU array; copy it to the "
                         "host first (e.g. cupy.asnumpy(x)) or pass device='auto'")
    if device == "cpu":
        _ext.extension()  # raises ImportError with the load failure and how to fix it
    return device


def implementation(op: str, table: dict, device, *arrays):
    """(device, the module that implements ``op`` there)."""
    device = resolve(op, table, device, *arrays)
    return device, importlib.import_module(table[device])


def array_module_of(array):
    """CuPy for arrays on a GPU, NumPy otherwise (the module an op's glue works with)."""
    if on_gpu(array):
        from segrt._optional import optional_import

        return optional_import("cupy", purpose="arrays on a GPU")
    return np
