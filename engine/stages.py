"""Per-stage wall-clock timings, with a one-line read-out on stderr for long runs, and where a
pipeline runs (host or GPU)."""
from __future__ import annotations

import contextlib
import sys
import time

import numpy as np

__all__ = ["Stages", "pipeline_device", "compile_seconds", "COMPILE_STAGE"]

COMPILE_STAGE = "compile (first use of an input size)"


def compile_seconds(model) -> float:
    """Seconds the model's backend has spent compiling for new input shapes so far (0 for
    backends that compile when they load)."""
    return float(getattr(getattr(model, "runner", None), "compile_seconds", 0.0))


class Stages:
    """``with stages("resample"): ...`` records the seconds each stage took (summed when a
    stage runs more than once); ``verbose`` prints each stage as it starts and ends.

    events: CuPy (or None). Stages whose name ends in "[GPU]" are then timed with CUDA events
    on the current stream: the device time between the stage's start and end, read when the
    timings are (one synchronisation at the end, none inside the run), because the wall clock
    of asynchronous work measures only its launch."""

    def __init__(self, verbose: bool = False, prefix: str = "segrt", events=None):
        self._timings: dict = {}
        self._pending: list = []
        self._events = events
        self.verbose = verbose
        self.prefix = prefix
        self._t0 = time.perf_counter()

    @property
    def timings(self) -> dict:
        """Seconds per stage (the GPU stages' events are read here)."""
        for name, start, stop in self._pending:
            stop.synchronize()
            dt = self._events.cuda.get_elapsed_time(start, stop) / 1000.0
            self._timings[name] = self._timings.get(name, 0.0) + dt
        self._pending.clear()
        return self._timings

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.verbose:
            sys.stderr.write(f"{self.prefix}: {name} ...")
            sys.stderr.flush()
        on_device = self._events is not None and name.endswith("[GPU]")
        if on_device:
            start, stop = self._events.cuda.Event(), self._events.cuda.Event()
            start.record()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if on_device:
                stop.record()
                self._pending.append((name, start, stop))
                if self.verbose:  # the read-out needs the stage's time now
                    before = self._timings.get(name, 0.0)
                    dt = self.timings[name] - before
                    sys.stderr.write(f" {dt:.2f} s\n")
                    sys.stderr.flush()
            else:
                dt = time.perf_counter() - t0
                self._timings[name] = self._timings.get(name, 0.0) + dt
                if self.verbose:
                    sys.stderr.write(f" {dt:.2f} s\n")
                    sys.stderr.flush()

    def move(self, src: str, dst: str, seconds: float) -> None:
        """Books ``seconds`` of stage ``src`` under ``dst`` (e.g. the compilation inside the first
        inference, shown as its own stage)."""
        if seconds <= 0:
            return
        timings = self.timings
        timings[src] = max(0.0, timings.get(src, 0.0) - seconds)
        timings[dst] = timings.get(dst, 0.0) + seconds

    def total(self) -> float:
        return time.perf_counter() - self._t0


def pipeline_device(device, models, path):
    """("cpu", NumPy) or ("cuda", its array module) for a pipeline whose networks are ``models``:
    "cuda" keeps the data in GPU memory and needs backends that take device arrays (torch, trt);
    "auto" picks it where they all do. A host backend asked for "cuda" is refused by name
    (nothing is copied silently)."""
    from segrt.engine.model import ModelTaskError

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    takes_device_arrays = all(getattr(getattr(m, "runner", m), "DEVICE_ARRAYS", False) for m in models)
    if device == "auto":
        device = "cuda" if takes_device_arrays else "cpu"
    if device == "cpu":
        return device, np
    if not takes_device_arrays:
        backend = getattr(models[0], "backend", "?")
        raise ModelTaskError(f"{path}: device='cuda' keeps the data in GPU memory, but the {backend} backend runs "
                             "on the host; load the model with backend='torch' or 'trt' (or use device='cpu')")
    from segrt.kernels import gpu

    return device, gpu.array_module()
