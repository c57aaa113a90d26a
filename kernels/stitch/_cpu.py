"""Compiled CPU stitching kernels: ``segrt.kernels._C`` (cpp/stitch/), in place, no temporaries.

Small blocks run on the calling thread and large ones on all cores; the weighted accumulate
of a sliding-window run picks by timing both (``ThreadTuner``).
"""
from __future__ import annotations

import time
import weakref

import numpy as np

from segrt.kernels._ext import extension

# Below this many values a kernel runs on the calling thread: waking a thread team costs more
# than it saves there, and right after an ONNX Runtime call its spinning workers still hold
# the cores (measured: 3 ms instead of 36 ms of stitching for 8 windows of 3 x 32x48x48).
_PARALLEL_MIN = 1_000_000


def _threads(n_values: int, at: int = 8 * _PARALLEL_MIN) -> int:
    """All threads (0) from ``at`` values on, else the calling thread (1)."""
    return 0 if n_values >= at else 1


class ThreadTuner:
    """Picks one thread or all for the accumulation of one sliding-window run by timing both
    on its first large windows: whether a thread team pays depends on what the predictor
    leaves running on the cores (ONNX Runtime's spinning workers, torch's pool), which only
    a measurement tells. Measured on 2 cores right after ONNX Runtime calls: 64 ms on one
    thread, 180 ms on both for the same 32 windows; without a predictor holding the cores the
    team is about 1.5x faster. The team must win clearly (``MARGIN``): a wrong choice costs
    more than the small gain of a close one. The first large call is not timed: its output
    pages are touched for the first time there, which is the OS's cost, not the threads'."""

    MARGIN = 0.8
    # predictor -> the choice a run with it settled on: later runs with the same predictor start
    # from it (each trial of the losing choice costs a window's accumulate)
    _settled: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, predictor=None):
        self.samples = {1: [], 0: []}
        self.choice = None
        self.skipped = False
        self._predictor = None
        if predictor is not None:
            try:  # remembered for predictors that can be weakly referenced and hashed
                self.choice = self._settled.get(predictor)
                self._predictor = weakref.ref(predictor)
            except TypeError:
                pass

    def threads(self, n_values: int) -> int:
        if n_values < _PARALLEL_MIN:
            return 1
        if self.choice is not None:
            return self.choice
        return 1 if len(self.samples[1]) <= len(self.samples[0]) else 0

    def record(self, threads: int, n_values: int, seconds: float) -> None:
        if self.choice is not None or n_values < _PARALLEL_MIN:
            return
        if not self.skipped:
            self.skipped = True
            return
        self.samples[threads].append(seconds / n_values)
        one, team = min(self.samples[1], default=None), min(self.samples[0], default=None)
        if one is None or team is None:
            return
        if team * self.MARGIN > one:  # the team clearly slower: no second try (each costs a window)
            self.choice = 1
        elif min(len(v) for v in self.samples.values()) >= 2:
            self.choice = 0 if team < self.MARGIN * one else 1
        predictor = self._predictor() if self._predictor is not None else None
        if self.choice is not None and predictor is not None:
            self._settled[predictor] = self.choice


def accumulate(dst, dst_off, pred, weight, src_off, box, fresh, last, count, tuner=None) -> bool:
    n_values = pred.shape[0] * int(np.prod(box))
    threads = tuner.threads(n_values) if tuner is not None else _threads(n_values)
    t0 = time.perf_counter()
    finite = extension().stitch_fma(dst, pred, weight, list(dst_off), list(src_off), list(box), list(fresh),
                                    list(last), count if all(last) else None, threads)
    if tuner is not None:
        tuner.record(threads, n_values, time.perf_counter() - t0)
    return finite


def zeros(shape, dtype) -> np.ndarray:
    # a small buffer is cleared faster by NumPy's calloc (pages arrive zeroed) than by a pass
    if _threads(int(np.prod(shape)), at=4 * _PARALLEL_MIN):
        return np.zeros(shape, dtype)
    out = np.empty(shape, dtype)
    extension().stitch_zero(out, 0)
    return out


def normalize(out, count) -> None:
    extension().stitch_divide(out, count, _threads(out.size, at=4 * _PARALLEL_MIN))


def argmax_block(acc, labels, label_off) -> None:
    extension().stitch_argmax(acc, labels, list(label_off), _threads(acc.size))
