"""Peak memory, measured one way for every benchmark.

- ``peak_rss()``: a context manager; ``.peak_bytes`` is the highest resident memory above
  the starting point inside it (Linux: the kernel's own high-water mark, reset on entry).
- ``peak_memory_subprocess(fn, arrays)``: the peak one call adds, in a fresh interpreter, so
  memory an earlier call freed cannot hide it.
- ``rss_bytes()``, ``status_kb(field)``, ``reset_peak()``: the /proc readings they are built on
  (for child scripts that measure themselves).
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np

__all__ = ["peak_rss", "peak_memory_subprocess", "rss_bytes", "status_kb", "reset_peak", "return_freed_memory"]


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_malloc_fixed = False


def return_freed_memory() -> None:
    """Make glibc serve large blocks with mmap and return them when freed, so RSS follows
    what is in use and a later call's peak is not hidden by memory an earlier one freed."""
    global _malloc_fixed
    if _malloc_fixed:
        return
    _malloc_fixed = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 16)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 16)
    except (OSError, AttributeError):
        pass


class peak_rss:
    """Context manager: ``.peak_bytes`` is the highest RSS above the starting RSS inside.

    On Linux the kernel's own high-water mark is reset on entry and read on exit, so no
    allocation is missed; elsewhere a thread samples the RSS every ``interval`` seconds
    (a lower bound).

    return_freed: first make glibc return freed memory (``return_freed_memory``), so that
    memory an earlier call freed cannot hide this one's peak. That setting stays for the whole
    process and makes every large allocation fault in fresh pages, so timed code should not
    run under it (``measure`` does not); fresh interpreters (``peak_memory_subprocess``) give
    the peaks the reports quote.
    """

    def __init__(self, interval: float = 0.0005, return_freed: bool = True):
        self.interval = interval
        self.return_freed = return_freed
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        if self.return_freed:
            return_freed_memory()
        self._base = rss_bytes()
        self._max = self._base
        self._hwm = reset_peak() and status_kb("VmHWM") is not None
        if not self._hwm:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self._max = max(self._max, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._max = max(self._max, rss_bytes())
        if self._hwm:
            self._max = max(self._max, (status_kb("VmHWM") or 0) * 1024)
        self.peak_bytes = max(0, self._max - self._base)
        return False


_CHILD = r"""
import importlib, json, sys, numpy as np
from segrt.bench.memory import reset_peak, rss_bytes, status_kb
spec = json.loads(sys.argv[1])
data = np.load(spec["data"], allow_pickle=False)
args = [data[k] for k in spec["array_args"]]
extra = spec.get("extra")
if extra:
    mod, _, name = extra.rpartition(".")
    args.append(getattr(importlib.import_module(mod), name)(*spec.get("extra_args", [])))
mod, _, name = spec["fn"].rpartition(".")
fn = getattr(importlib.import_module(mod), name)
base = rss_bytes()
reset_peak()
fn(*args, **spec.get("kwargs", {}))
hwm = (status_kb("VmHWM") or 0) * 1024
print(json.dumps({"peak_mb": max(0, max(hwm, rss_bytes()) - base) / 2**20}))
"""


def peak_memory_subprocess(fn: str, arrays: dict, *, kwargs: dict | None = None, extra: str | None = None,
                           extra_args: list | None = None, timeout: float = 1800) -> float | None:
    """Peak RSS (MB) that one call of ``fn(*arrays.values(), [extra(*extra_args)], **kwargs)``
    adds, measured in a fresh interpreter so no memory freed by earlier work can hide it.
    ``fn`` / ``extra`` are dotted names; returns None where the kernel's counter is missing."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, **arrays)
        spec = {"fn": fn, "data": path, "array_args": list(arrays), "kwargs": kwargs or {},
                "extra": extra, "extra_args": extra_args or []}
        out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0 or status_kb("VmHWM") is None:
            return None
        return float(json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"])
