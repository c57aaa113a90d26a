"""What every runtime backend is: a ``Runner`` that maps a checked batch to its outputs.

A runner is built once per model (``Runner(path, inputs, outputs, metadata=..., proto=...,
**options)``) and called with a C-contiguous batch of the model's input dtype; it returns the
list of output arrays in the graph's order. ``Model`` checks batches before a runner sees
them, so runners hold nothing between the caller and the runtime call but the runtime's own
objects. A runner class declares:

- ``name``: the backend's name in ``load(backend=...)`` and ``--backend``;
- ``OPTIONS``: the options it takes, each with a one-line description (``load`` refuses
  others, naming these);
- ``DEVICE_ARRAYS``: whether it takes CUDA arrays (``__cuda_array_interface__``) as they are;
- ``unavailable()``: None where it can run here, else why not and how to get it.
"""
from __future__ import annotations

import os

from segrt._optional import optional_import

__all__ = ["Runner", "usable_cpus", "cuda_device_count"]


class Runner:
    name: str = ""
    CHOSEN_BECAUSE = ""  # what auto says when it picks this backend
    OPTIONS: dict[str, str] = {}
    DEVICE_ARRAYS = False

    @classmethod
    def unavailable(cls) -> str | None:
        """None when this backend can run here; otherwise the reason and how to fix it."""
        return None

    def __call__(self, x) -> list:  # pragma: no cover - the interface
        raise NotImplementedError


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask; every CPU where there is none).

    A container or ``taskset`` limit is what a runtime's thread pool must respect, so this,
    not the machine's core count, sizes thread pools."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def cuda_device_count() -> int:
    """CUDA devices CuPy sees (0 without CuPy, a driver or a device)."""
    try:
        cupy = optional_import("cupy")
        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no CuPy, no driver, no device
        return 0
