"""Per-stage wall-clock timings, with a one-line read-out on stderr for long runs."""
from __future__ import annotations

import contextlib
import sys
import time

__all__ = ["Stages"]


class Stages:
    """``with stages("resample"): ...`` records the seconds each stage took (summed when a
    stage runs more than once); ``verbose`` prints each stage as it starts and ends."""

    def __init__(self, verbose: bool = False, prefix: str = "segrt"):
        self.timings: dict = {}
        self.verbose = verbose
        self.prefix = prefix
        self._t0 = time.perf_counter()

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.verbose:
            sys.stderr.write(f"{self.prefix}: {name} ...")
            sys.stderr.flush()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.timings[name] = self.timings.get(name, 0.0) + dt
            if self.verbose:
                sys.stderr.write(f" {dt:.2f} s\n")
                sys.stderr.flush()

    def total(self) -> float:
        return time.perf_counter() - self._t0
