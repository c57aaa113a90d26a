"""Latency statistics of a video run: per-stage and end-to-end percentiles, the JSON summary
and a PNG latency CDF."""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from segrt.engine import io
from segrt.engine.video.sources import opencv

__all__ = ["VideoStats", "latency_cdf_png", "STAGES", "FRAME_STAGES"]

# "wait": from capture to a worker taking the frame (the capture's own delay included)
STAGES = ("wait", "preprocess", "infer", "postprocess", "overlay", "output")
FRAME_STAGES = STAGES[1:5]  # what VideoPipeline.process() times

# -- statistics ----------------------------------------------------------------------------

def _pcts(values) -> dict:
    v = np.asarray(values, np.float64) * 1000.0
    if v.size == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None, "n": 0}
    p50, p90, p99 = np.percentile(v, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3),
            "max_ms": round(float(v.max()), 3), "n": int(v.size)}


@dataclasses.dataclass
class VideoStats:
    source: str
    frames_read: int
    frames_processed: int
    frames_dropped: int
    wall_s: float
    source_fps: float
    stages: dict  # stage -> list of seconds per frame
    end_to_end: list  # seconds per frame
    stopped: str  # why the run ended
    backend: str = "?"

    @property
    def interrupted(self) -> bool:
        """True when the run was stopped by Ctrl-C (its figures cover the frames up to then)."""
        return self.stopped.startswith("interrupted")

    @property
    def effective_fps(self) -> float:
        return self.frames_processed / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self) -> dict:
        non_model = [sum(self.stages[s][i] for s in FRAME_STAGES if s != "infer")
                     for i in range(len(self.end_to_end))]
        return {"source": self.source, "backend": self.backend, "stopped": self.stopped,
                "interrupted": self.interrupted,
                "frames_read": self.frames_read, "frames_processed": self.frames_processed,
                "frames_dropped": self.frames_dropped, "source_fps": round(self.source_fps, 3),
                "effective_fps": round(self.effective_fps, 3), "wall_s": round(self.wall_s, 3),
                "end_to_end": _pcts(self.end_to_end), "non_model": _pcts(non_model),
                "stages": {s: _pcts(v) for s, v in self.stages.items()}}

    def line(self) -> str:
        e = _pcts(self.end_to_end)
        return (f"frames {self.frames_processed} (dropped {self.frames_dropped}), {self.effective_fps:.1f} fps, "
                f"latency p50 {e['p50_ms'] or 0:.1f} ms p99 {e['p99_ms'] or 0:.1f} ms max {e['max_ms'] or 0:.1f} ms")

    def save(self, json_path, png_path=None) -> list:
        with io.atomic_path(json_path) as tmp, open(tmp, "w") as f:
            json.dump(self.summary(), f, indent=2)
        written = [os.fspath(json_path)]
        if png_path is not None and self.end_to_end:
            written.append(latency_cdf_png(png_path, {"end to end": self.end_to_end,
                                                      "infer": self.stages["infer"]}))
        return written


def latency_cdf_png(path, series: dict, size=(640, 400)) -> str:
    """A latency CDF drawn with OpenCV (no plotting library needed)."""
    cv2 = opencv()
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 20, 30, 50
    all_ms = np.concatenate([np.asarray(v, float) * 1000 for v in series.values() if len(v)])
    x_max = float(np.percentile(all_ms, 100)) * 1.05 or 1.0
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    for frac in (0.0, 0.5, 0.9, 0.99, 1.0):
        y = int(h - bottom - frac * (h - top - bottom))
        cv2.line(img, (left, y), (w - right, y), (220, 220, 220), 1)
        cv2.putText(img, f"{frac:g}", (8, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    for i in range(6):
        v = x_max * i / 5
        x = int(left + i / 5 * (w - left - right))
        cv2.putText(img, f"{v:.0f}", (x - 10, h - bottom + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(img, "latency (ms)", (w // 2 - 40, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    colours = [(200, 80, 0), (0, 140, 255), (0, 160, 0)]
    for k, (name, vals) in enumerate(series.items()):
        v = np.sort(np.asarray(vals, float) * 1000)
        if v.size == 0:
            continue
        frac = np.arange(1, v.size + 1) / v.size
        pts = np.stack([left + v / x_max * (w - left - right), h - bottom - frac * (h - top - bottom)], 1)
        cv2.polylines(img, [pts.astype(np.int32).reshape(-1, 1, 2)], False, colours[k % 3], 2, cv2.LINE_AA)
        cv2.putText(img, name, (left + 10, top + 18 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colours[k % 3], 1,
                    cv2.LINE_AA)
    return io.write_png(path, img)
