"""A video tower never restarts: latency statistics take fixed memory however long a stream
runs, and their percentiles stay within the stated error of the exact ones."""
from __future__ import annotations

import tracemalloc

import numpy as np

from segrt.engine.video.statistics import FrameTimes, LatencySketch, VideoStats


def _frames(rng, n):
    # a realistic mix: a fast mode, a slow tail, rare stalls
    infer = np.where(rng.random(n) < 0.97, rng.normal(0.010, 0.001, n), rng.uniform(0.02, 0.08, n)).clip(1e-4)
    pre = rng.gamma(4.0, 0.0003, n)
    post = rng.gamma(3.0, 0.0002, n)
    return infer, pre, post


def test_statistics_memory_is_flat_over_100000_frames():
    rng = np.random.default_rng(0)
    infer, pre, post = _frames(rng, 100_000)
    times = FrameTimes()
    tracemalloc.start()
    for i in range(1000):
        times.frame({"wait": 1e-4, "preprocess": pre[i], "infer": infer[i], "postprocess": post[i],
                     "overlay": 2e-4, "output": 1e-4}, pre[i] + infer[i] + post[i] + 4e-4)
    after_1000 = tracemalloc.get_traced_memory()[0]
    for i in range(1000, 100_000):
        times.frame({"wait": 1e-4, "preprocess": pre[i], "infer": infer[i], "postprocess": post[i],
                     "overlay": 2e-4, "output": 1e-4}, pre[i] + infer[i] + post[i] + 4e-4)
    after_100000 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert after_100000 - after_1000 < 4096, (after_1000, after_100000)  # no growth per frame
    assert len(times.end_to_end) == 100_000


def test_percentiles_are_within_the_stated_error():
    rng = np.random.default_rng(1)
    infer, pre, post = _frames(rng, 100_000)
    e2e = pre + infer + post + 4e-4
    times = FrameTimes()
    for i in range(len(e2e)):
        times.frame({"preprocess": pre[i], "infer": infer[i], "postprocess": post[i], "overlay": 2e-4}, e2e[i])
    err = LatencySketch.RELATIVE_ERROR
    assert err <= 0.005
    for sketch, exact in ((times.end_to_end, e2e), (times.stages["infer"], infer),
                          (times.non_model, pre + post + 2e-4), (times.added, e2e - infer)):
        for q in (50, 90, 99, 99.9):
            want = float(np.percentile(exact, q, method="lower"))
            got = sketch.percentile(q)
            assert abs(got - want) <= err * want * 1.0001, (q, got, want)
        assert sketch.max == float(exact.max())


def test_summary_reports_the_sketch_and_its_error():
    times = FrameTimes()
    for ms in (10, 11, 12, 50):
        times.frame({"infer": ms / 1000 - 0.002, "preprocess": 0.001}, ms / 1000)
    stats = VideoStats("s", 4, 4, 0, 1.0, 30.0, times, "end of stream", "ort")
    s = stats.summary()
    assert s["end_to_end"]["n"] == 4 and s["end_to_end"]["max_ms"] == 50.0
    assert abs(s["end_to_end"]["p50_ms"] - 11.0) <= 11.0 * LatencySketch.RELATIVE_ERROR
    assert s["percentile_relative_error"] == round(LatencySketch.RELATIVE_ERROR, 4)
    assert s["stages"]["infer"]["n"] == 4 and s["added_around_model"]["n"] == 4


def test_extreme_latencies_land_in_the_end_bins_and_the_max_stays_exact():
    sketch = LatencySketch()
    for v in (0.0, 1e-9, 5000.0):
        sketch.add(v)
    assert sketch.max == 5000.0 and len(sketch) == 3
    assert sketch.percentile(0) == LatencySketch.LOW and sketch.percentile(100) <= 5000.0
