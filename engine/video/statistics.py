"""Latency statistics of a video run: per-stage and end-to-end percentiles, the JSON summary
and a PNG latency CDF."""
from __future__ import annotations

import dataclasses
import json
import math
import os

import numpy as np

from segrt.engine import io
from segrt.engine.video.sources import opencv

__all__ = ["VideoStats", "LatencySketch", "FrameTimes", "latency_cdf_png", "STAGES", "FRAME_STAGES"]

# "wait": from capture to a worker taking the frame (the capture's own delay included)
STAGES = ("wait", "preprocess", "infer", "postprocess", "overlay", "output")
FRAME_STAGES = STAGES[1:5]  # what VideoPipeline.process() times

# -- statistics ----------------------------------------------------------------------------

class LatencySketch:
    """Latencies of a stream of any length in fixed memory: a histogram of log-spaced bins,
    each ``RATIO`` times wider than the one before, from 1 microsecond to about 17 minutes
    (values outside fall in the end bins; the exact maximum is kept). A percentile is the
    geometric middle of the bin that holds it, so it is within ``RELATIVE_ERROR`` of the exact
    percentile of the samples (numpy's "lower" method); memory is ``BINS`` counters whatever
    the number of frames."""

    RATIO = 1.01
    LOW = 1e-6  # seconds
    BINS = 2084  # LOW * RATIO ** BINS is about 1000 s
    RELATIVE_ERROR = RATIO ** 0.5 - 1  # half a bin: 0.5 %

    def __init__(self):
        self.counts = np.zeros(self.BINS, np.int64)
        self.n = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        seconds = float(seconds)
        k = 0 if seconds <= self.LOW else min(self.BINS - 1, int(math.log(seconds / self.LOW, self.RATIO)) + 1)
        self.counts[k] += 1
        self.n += 1
        self.total += seconds
        self.max = max(self.max, seconds)

    def __len__(self) -> int:
        return self.n

    def _value(self, k: int) -> float:
        if k == 0:
            return self.LOW
        return min(self.LOW * self.RATIO ** (k - 0.5), self.max)  # a bin's geometric middle, at most the max

    def percentile(self, q: float) -> float:
        """The q-th percentile in seconds (the sample of rank floor(q / 100 * (n - 1)))."""
        if self.n == 0:
            raise ValueError("no samples")
        rank = int(q / 100.0 * (self.n - 1))
        k = int(np.searchsorted(np.cumsum(self.counts), rank + 1))
        return self._value(k)

    def cdf(self):
        """(seconds, fraction of samples at or below) at the middle of every bin in use."""
        used = np.flatnonzero(self.counts)
        return (np.array([self._value(k) for k in used]), np.cumsum(self.counts)[used] / max(self.n, 1))

    def summary(self) -> dict:
        if self.n == 0:
            return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
        p50, p90, p99 = (1000.0 * self.percentile(q) for q in (50, 90, 99))
        return {"p50_ms": round(p50, 3), "p90_ms": round(p90, 3), "p99_ms": round(p99, 3),
                "max_ms": round(1000.0 * self.max, 3), "n": int(self.n)}


class FrameTimes:
    """Per-frame stage times of a run, recorded frame by frame into sketches: each stage, the
    end-to-end latency, the non-model work (the frame stages but inference) and what the
    pipeline adds around the model (end to end less inference)."""

    def __init__(self):
        self.stages = {s: LatencySketch() for s in STAGES}
        self.end_to_end = LatencySketch()
        self.non_model = LatencySketch()
        self.added = LatencySketch()

    def frame(self, stage_seconds: dict, end_to_end: float) -> None:
        for name, seconds in stage_seconds.items():
            self.stages.setdefault(name, LatencySketch()).add(seconds)
        self.end_to_end.add(end_to_end)
        self.non_model.add(sum(stage_seconds.get(s, 0.0) for s in FRAME_STAGES if s != "infer"))
        self.added.add(end_to_end - stage_seconds.get("infer", 0.0))


@dataclasses.dataclass
class VideoStats:
    source: str
    frames_read: int
    frames_processed: int
    frames_dropped: int
    wall_s: float
    source_fps: float
    times: FrameTimes
    stopped: str  # why the run ended
    backend: str = "?"

    @property
    def stages(self) -> dict:
        """stage -> LatencySketch of its seconds per frame."""
        return self.times.stages

    @property
    def end_to_end(self) -> LatencySketch:
        return self.times.end_to_end

    @property
    def interrupted(self) -> bool:
        """True when the run was stopped by Ctrl-C (its figures cover the frames up to then)."""
        return self.stopped.startswith("interrupted")

    @property
    def effective_fps(self) -> float:
        return self.frames_processed / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        return {"source": self.source, "backend": self.backend, "stopped": self.stopped,
                "interrupted": self.interrupted,
                "frames_read": self.frames_read, "frames_processed": self.frames_processed,
                "frames_dropped": self.frames_dropped, "source_fps": round(self.source_fps, 3),
                "effective_fps": round(self.effective_fps, 3), "wall_s": round(self.wall_s, 3),
                "end_to_end": self.times.end_to_end.summary(), "non_model": self.times.non_model.summary(),
                "added_around_model": self.times.added.summary(),
                "percentile_relative_error": round(LatencySketch.RELATIVE_ERROR, 4),
                "stages": {s: v.summary() for s, v in self.stages.items()}}

    def line(self) -> str:
        e = self.end_to_end.summary()
        return (f"frames {self.frames_processed} (dropped {self.frames_dropped}), {self.effective_fps:.1f} fps, "
                f"latency p50 {e['p50_ms'] or 0:.1f} ms p99 {e['p99_ms'] or 0:.1f} ms max {e['max_ms'] or 0:.1f} ms")

    def save(self, json_path, png_path=None) -> list:
        with io.atomic_path(json_path) as tmp, open(tmp, "w") as f:
            json.dump(self.summary(), f, indent=2)
        written = [os.fspath(json_path)]
        if png_path is not None and len(self.end_to_end):
            written.append(latency_cdf_png(png_path, {"end to end": self.end_to_end,
                                                      "infer": self.stages["infer"]}))
        return written


def _nice_step(span: float, ticks: int = 6) -> float:
    """A 1 / 2 / 5 x 10^k tick step giving about ``ticks`` ticks over ``span``."""
    raw = max(span, 1e-9) / ticks
    power = 10 ** np.floor(np.log10(raw))
    return float(next(m * power for m in (1, 2, 5, 10) if m * power >= raw))


def latency_cdf_png(path, series: dict, size=(720, 440)) -> str:
    """A latency CDF drawn with OpenCV (no plotting library needed): the fraction of frames at
    or under each latency, readable ticks on both axes, each series' p50 and p99 in its legend
    and marked on its curve."""
    cv2 = opencv()
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 70, 24, 44, 56
    series = {k: v.cdf() if isinstance(v, LatencySketch) else (np.sort(np.asarray(v, float)),
                                                                 np.arange(1, len(v) + 1) / max(len(v), 1))
              for k, v in series.items() if len(v)}
    x_top = max(float(sec.max()) * 1000 for sec, _ in series.values()) if series else 1.0
    step = _nice_step(x_top)
    x_max = step * np.ceil(x_top * 1.02 / step) or 1.0
    plot_w, plot_h = w - left - right, h - top - bottom
    text = (0, 0, 0)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.rectangle(img, (left, top), (w - right, h - bottom), text, 1)
    for frac in (0.0, 0.25, 0.5, 0.75, 0.9, 1.0):
        y = int(h - bottom - frac * plot_h)
        cv2.line(img, (left, y), (w - right, y), (225, 225, 225), 1)
        cv2.putText(img, f"{frac:g}", (left - 38, y + 5), font, 0.45, text, 1, cv2.LINE_AA)
    for i in range(int(round(x_max / step)) + 1):
        v = i * step
        x = int(left + v / x_max * plot_w)
        cv2.line(img, (x, h - bottom), (x, h - bottom + 5), text, 1)
        label = f"{v:g}"
        cv2.putText(img, label, (x - 4 * len(label), h - bottom + 22), font, 0.45, text, 1, cv2.LINE_AA)
    cv2.putText(img, "latency per frame, capture to overlay (ms)", (left + plot_w // 2 - 170, h - 12), font, 0.5,
                text, 1, cv2.LINE_AA)
    cv2.putText(img, "fraction of frames at or under that latency", (left - 60, top - 16), font, 0.5, text, 1,
                cv2.LINE_AA)
    colours = [(200, 80, 0), (0, 140, 255), (0, 160, 0)]
    for k, (name, (seconds, frac)) in enumerate(series.items()):
        v = seconds * 1000
        colour = colours[k % 3]
        pts = np.stack([left + v / x_max * plot_w, h - bottom - frac * plot_h], 1)
        cv2.polylines(img, [pts.astype(np.int32).reshape(-1, 1, 2)], False, colour, 2, cv2.LINE_AA)
        p50, p99 = (float(np.interp(q, frac, v)) for q in (0.5, 0.99))
        for q, val in ((0.5, p50), (0.99, p99)):
            cv2.circle(img, (int(left + val / x_max * plot_w), int(h - bottom - q * plot_h)), 4, colour, -1,
                       cv2.LINE_AA)
        legend = f"{name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        # lower right, inside the plot: under a CDF's curves that corner stays empty
        y = h - bottom - 16 - 22 * (len(series) - 1 - k)
        x = w - right - 12 - cv2.getTextSize(legend, font, 0.45, 1)[0][0]
        cv2.line(img, (x - 28, y - 5), (x - 6, y - 5), colour, 2, cv2.LINE_AA)
        cv2.putText(img, legend, (x, y), font, 0.45, colour, 1, cv2.LINE_AA)
    return io.write_png(path, img)
