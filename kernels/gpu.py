"""GPU support the ops' CUDA implementations share, public for benchmarks and callers that move
data: where the GPU libraries come from, the array module, copies to the device, launch sizes.

The kernels are Numba CUDA kernels launched on CuPy arrays. With ``NUMBA_ENABLE_CUDASIM=1``
Numba runs the same kernels in its CUDA simulator on NumPy arrays, so their logic is tested on
machines without a GPU (slowly: keep such cases small). Nothing here is imported by
``import segrt``.
"""
from __future__ import annotations

import os

import numpy as np

from segrt._optional import optional_import

__all__ = ["simulated", "cuda", "array_module", "to_device", "to_host", "blocks", "launch", "THREADS"]

THREADS = 256  # threads per block of the 1D launches


def simulated() -> bool:
    """True when Numba's CUDA simulator stands in for a GPU (NumPy arrays, no device)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") == "1"


def cuda():
    """``numba.cuda``, or an ImportError naming the extra that brings it."""
    return optional_import("numba.cuda", purpose="the GPU kernels")


def array_module():
    """CuPy on a GPU; NumPy under the simulator. Raises an error that says what is missing."""
    if simulated():
        return np
    cupy = optional_import("cupy", purpose="the GPU kernels")
    try:
        count = int(cupy.cuda.runtime.getDeviceCount())
    except Exception as err:  # no driver
        raise RuntimeError(f"device='cuda' needs an NVIDIA GPU and its driver; CuPy found none ({err})") from None
    if count == 0:
        raise RuntimeError("device='cuda' needs an NVIDIA GPU; CuPy sees no CUDA device")
    return cupy


def to_device(x, xp):
    """``x`` as an array of ``xp``: no copy for device arrays (CUDA array interface, DLPack), one
    copy from the host for NumPy input (the documented cost of device='cuda' on host data)."""
    if xp is np:  # the simulator copies every kernel argument back: read-only inputs need a copy
        x = np.asarray(x)
        return x if x.flags.writeable else x.copy()
    if hasattr(x, "__cuda_array_interface__"):
        return xp.asarray(x)
    if hasattr(x, "__dlpack__") and not isinstance(x, np.ndarray):
        return xp.from_dlpack(x)
    return xp.asarray(np.asarray(x))


def to_host(x) -> np.ndarray:
    """``x`` as a NumPy array (a CuPy array is copied back from its GPU)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def blocks(n: int, threads: int = THREADS) -> int:
    return max(1, (int(n) + threads - 1) // threads)


_streams: dict = {}  # CuPy stream pointer -> Numba's handle of it


def _current_stream():
    """Numba's handle of CuPy's current stream (None for the legacy default stream)."""
    cupy = optional_import("cupy", purpose="the GPU kernels")
    ptr = int(cupy.cuda.get_current_stream().ptr)
    if not ptr:
        return None
    handle = _streams.get(ptr)
    if handle is None:
        handle = _streams[ptr] = cuda().external_stream(ptr)
    return handle


def launch(kernel, n: int, *args, threads: int = THREADS) -> None:
    """Launches ``kernel`` over ``n`` threads on CuPy's current stream, so that it is ordered with
    the CuPy work (and the torch / TensorRT calls, which run on that stream too) before and
    after it without synchronising the host. The arrays are handed to Numba without its
    default synchronisation of their stream: the launch is on that stream already."""
    config = (blocks(n, threads), threads)
    if simulated():
        kernel[config](*args)
        return
    numba_cuda = cuda()
    stream = _current_stream()
    args = [numba_cuda.as_cuda_array(a, sync=False) if hasattr(a, "__cuda_array_interface__") else a
            for a in args]
    kernel[config + ((stream,) if stream is not None else ())](*args)
