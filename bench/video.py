"""The video story of ``python -m segrt.bench pipeline``: 640 x 480 generated endoscopy
frames through the demo instrument model, back to back and paced in real time, each real-time
run after a control (the runtime alone at the same rate), and the ultrasound cine of
pydicom-data where it is installed. See pipeline.py's text for the rows."""
from __future__ import annotations

import os
import time

import numpy as np

from segrt.bench.harness import Report

__all__ = ["bench_video"]


def _ultrasound_cine() -> str | None:
    """The path of pydicom-data's ultrasound cine, or None where it is not installed."""
    try:
        from pydicom.data import get_testdata_file

        return get_testdata_file("color3d_jpeg_baseline.dcm")
    except Exception:  # pydicom or its data missing: the other rows still count
        return None


def bench_video(report: Report, frames: int, tmp: str, runs: int) -> None:
    from segrt.engine.video import VideoPipeline
    from segrt.export import zoo
    from segrt.bench.synthetic import EndoscopyScene, write_clip

    pipe = VideoPipeline(zoo.resolve("instruments"))
    scene = EndoscopyScene(4321)
    clip_frames = [scene.frame(i / 30)[0] for i in range(frames)]
    times: dict = {}
    for f in clip_frames[:10]:
        pipe.process(f)
    t0 = time.perf_counter()
    for f in clip_frames:
        pipe.process(f, times)
    wall = time.perf_counter() - t0
    per_frame = [sum(v[i] for v in times.values()) for i in range(frames)]
    non_model = [sum(times[s][i] for s in ("preprocess", "postprocess", "overlay")) for i in range(frames)]
    sustained = 1.0 / float(np.median(per_frame))
    # the rate the CPU sustains: 99 % of frames (with their capture and decode) done before
    # the next one arrives, with room for slow phases; faster only trades waiting for drops
    sustainable = _sustainable_fps(per_frame, clip_frames[0])
    row = {"story": "video", "case": "back-to-back, 640x480 frames from memory", "backend": pipe.model.backend,
           "frames": frames, "fps": frames / wall, "median_rate_fps": sustained, "sustainable_fps": sustainable,
           "non_model_p50_ms": 1000 * float(np.median(non_model)),
           "non_model_p99_ms": 1000 * float(np.percentile(non_model, 99)),
           **{f"stage_{k}_p50_ms": 1000 * float(np.median(v)) for k, v in times.items()}}
    report.add(**row)
    print(f"  video back-to-back: {row['fps']:.1f} fps, non-model p50 {row['non_model_p50_ms']:.2f} ms p99 "
          f"{row['non_model_p99_ms']:.2f} ms", flush=True)
    _overlay_kernel_row(report, pipe, clip_frames)
    x = pipe.preprocess(clip_frames[0]).copy()
    # throughput with one worker and with two (each frame in flight on its share of the cores)
    offline = write_clip(os.path.join(tmp, "offline.avi"), seed=4321, seconds=frames / 30, fps=30)
    two = VideoPipeline(zoo.resolve("instruments"), workers=2)
    for p, name in ((pipe, "1 worker"), (two, "2 workers")):
        s = p.run(offline).summary()
        report.add(story="video", case=f"file read as fast as it is processed, {name}", backend=p.model.backend,
                   workers=p.workers, frames=s["frames_processed"], fps=s["effective_fps"],
                   infer_p50_ms=s["stages"]["infer"]["p50_ms"], infer_p99_ms=s["stages"]["infer"]["p99_ms"])
        print(f"  video {name}, file as fast as processed: {s['effective_fps']:.1f} fps, infer p50 "
              f"{s['stages']['infer']['p50_ms']:.1f} ms", flush=True)
    rate = round(sustainable, 1)
    clip = write_clip(os.path.join(tmp, "paced.avi"), seed=4321, seconds=frames / rate, fps=rate)
    # several runs each, every one reported, each right after its control: the runtime alone
    # at the same pace. On a shared VM the host slows the cores in bursts; the control shows
    # whether a run's tail came from the pipeline or from the machine
    for run in range(runs + 2):  # the default set-up: two more runs
        _video_row(report, f"real time, generated clip paced at {rate} fps (the sustainable rate), run {run + 1}",
                   *_run_paced(pipe, clip, x, rate, frames))
    at30 = write_clip(os.path.join(tmp, "paced30.avi"), seed=4321, seconds=frames / 30, fps=30)
    for run in range(runs):
        _video_row(report, f"real time, generated clip at 30 fps, 2 workers, run {run + 1}",
                   *_run_paced(two, at30, x, 30.0, frames))
    # one inference thread (--threads 1): immune to a stalled second core, twice the inference
    one = VideoPipeline(zoo.resolve("instruments"), threads=1)
    rate_one = _back_to_back_row(report, one, "back-to-back, one inference thread", clip_frames)[0]["sustainable_fps"]
    paced_one = write_clip(os.path.join(tmp, "paced_one.avi"), seed=4321, seconds=frames / rate_one, fps=rate_one)
    for run in range(runs + 2):  # the steadiest set-up: two more runs
        _video_row(report, f"real time, one inference thread, generated clip paced at {rate_one} fps (its sustainable "
                   f"rate), run {run + 1}", *_run_paced(one, paced_one, x, rate_one, frames))
    if pipe.model.backend == "openvino":  # bfloat16 inference: its speed, its agreement with f32, its tail
        bf16 = VideoPipeline(zoo.resolve("instruments"), backend="openvino", precision="bf16")
        row, labels_bf = _back_to_back_row(report, bf16, "back-to-back, bf16 inference", clip_frames,
                                           backend="openvino bf16")
        agree = [float((labels == pipe.process(f)[1]).mean()) for f, labels in zip(clip_frames, labels_bf)]
        row.update(pixels_equal_f32_min=min(agree), pixels_equal_f32_mean=float(np.mean(agree)))
        rate_bf = row["sustainable_fps"]
        print(f"  video bf16: infer p50 {row['infer_p50_ms']:.1f} ms, pixels equal to f32 "
              f"{np.mean(agree):.6f} (min {min(agree):.6f})", flush=True)
        paced_bf = write_clip(os.path.join(tmp, "paced_bf16.avi"), seed=4321, seconds=frames / rate_bf, fps=rate_bf)
        for run in range(runs):
            _video_row(report, f"real time, bf16, generated clip paced at {rate_bf} fps (its sustainable rate), run "
                       f"{run + 1}", *_run_paced(bf16, paced_bf, x, rate_bf, frames))
    cine = _ultrasound_cine()
    if cine is None:
        report.notes.append("ultrasound cine rows skipped: pydicom-data is not installed (pip install "
                            "'segrt[test]')")
    else:
        from segrt.engine.video import open_source

        # the cine at its own rate, or at the rate the CPU sustains on its frames when that is
        # lower (near saturation a frame waits for the one before it, which is not the bound)
        src = open_source(cine)
        native, cine_frames = src.fps, []
        while (frame := src.read()) is not None:
            cine_frames.append(frame)
        src.close()
        for setup, p in (("", pipe), ("one inference thread, ", one)):  # the default and the steadiest
            for frame in cine_frames[:10]:
                p.process(frame)
            per_frame = []
            for frame in cine_frames:
                t0 = time.perf_counter()
                p.process(frame)
                per_frame.append(time.perf_counter() - t0)
            cine_rate = round(min(native, _sustainable_fps(per_frame, cine_frames[0])), 1)
            for run in range(runs):
                src = open_source(cine)
                src.fps = cine_rate
                _video_row(report, f"real time, {setup}ultrasound cine (pydicom-data) paced at {cine_rate:g} fps (own "
                           f"rate {native:.1f} fps; sustainable rate if lower), run {run + 1}",
                           *_run_paced(p, src, p.preprocess(cine_frames[0]).copy(), cine_rate, len(cine_frames)))
    _video_summary(report)


def _overlay_kernel_row(report, pipe, clip_frames, repeats: int = 5) -> None:
    """The overlay's colours, segrt's one-pass kernel against the OpenCV calls it replaced
    (nearest resize of the labels, grey to BGR, LUT, addWeighted, masked copy, on the box
    around the labels), on the clip's frames and labels: medians of per-frame times."""
    import cv2

    from segrt.engine.video import PALETTE
    from segrt.kernels.overlay import blend_labels

    labels = [pipe.process(f)[1] for f in clip_frames]
    lut = np.zeros((1, 256, 3), np.uint8)
    lut[0, :len(PALETTE)] = PALETTE
    lut[0, len(PALETTE):] = PALETTE[-1]
    alpha = pipe.alpha

    def opencv(frame, small):
        h, w = frame.shape[:2]
        out = frame.copy()
        x, y, bw, bh = cv2.boundingRect(small)
        if bw == 0:
            return out
        full = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
        sy, sx = h / small.shape[0], w / small.shape[1]
        y0, y1 = max(0, int(y * sy) - 1), min(h, int(np.ceil((y + bh) * sy)) + 1)
        x0, x1 = max(0, int(x * sx) - 1), min(w, int(np.ceil((x + bw) * sx)) + 1)
        roi = full[y0:y1, x0:x1]
        colour = cv2.LUT(cv2.cvtColor(roi, cv2.COLOR_GRAY2BGR), lut)
        blended = cv2.addWeighted(frame[y0:y1, x0:x1], 1 - alpha, colour, alpha, 0)
        cv2.copyTo(blended, (roi != 0).view(np.uint8), out[y0:y1, x0:x1])
        return out

    def ours(frame, small):
        return blend_labels(frame, small, PALETTE, alpha)

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as during a video run
    try:
        worst = max(int(np.abs(ours(f, lab).astype(int) - opencv(f, lab)).max()) for f, lab in zip(clip_frames, labels))
        times = {"segrt": [], "opencv": []}
        for _ in range(repeats):
            for name, fn in (("segrt", ours), ("opencv", opencv)):
                for f, lab in zip(clip_frames, labels):
                    t0 = time.perf_counter()
                    fn(f, lab)
                    times[name].append(time.perf_counter() - t0)
    finally:
        cv2.setNumThreads(threads)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    report.add(story="video", case="overlay colours per 640x480 frame: segrt blend_labels vs OpenCV", backend="cpu",
               frames=len(clip_frames), segrt_ms=ms["segrt"], opencv_ms=ms["opencv"],
               speedup=ms["opencv"] / ms["segrt"], max_level_difference=worst)
    print(f"  video overlay colours: segrt {ms['segrt']:.3f} ms, OpenCV {ms['opencv']:.3f} ms "
          f"({ms['opencv'] / ms['segrt']:.1f}x), largest difference {worst} level(s)", flush=True)


def _cpu_steal_s() -> float:
    """Seconds of CPU time the hypervisor took from this VM so far (all cores; Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _control_at_rate(pipe, batch, rate: float, frames: int) -> np.ndarray:
    """Milliseconds per call of the pipeline's runtime alone, called at ``rate`` from as many
    threads as the pipeline has workers (each at rate / workers, staggered): the load the
    pipeline puts on the runtime, without capture, pre- and post-processing."""
    import threading

    n = pipe.workers
    calls: list = [[] for _ in range(n)]
    t_start = time.perf_counter() + 0.1

    def loop(worker):
        pipe.model.infer(batch)  # this thread's infer request, before the clock starts
        for k in range(worker, frames, n):
            delay = t_start + k / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            pipe.model.infer(batch)
            calls[worker].append(time.perf_counter() - t0)

    threads = [threading.Thread(target=loop, args=(w,)) for w in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return np.concatenate([np.asarray(c) for c in calls]) * 1000


def _run_paced(pipe, source, batch, rate, frames):
    control = _control_at_rate(pipe, batch, rate, frames)
    steal0, t0 = _cpu_steal_s(), time.perf_counter()
    stats = pipe.run(source, realtime=True)
    stolen = _cpu_steal_s() - steal0
    cores = len(os.sched_getaffinity(0))
    return stats, 100.0 * stolen / ((time.perf_counter() - t0) * cores), control


def _video_summary(report) -> None:
    """How often the bound p99 <= 1.25 x p50 held: for the pipeline; for the runtime alone
    (the controls); and for the pipeline in the runs whose own inference stage stayed within
    1.2 x its p50 at p99, where what the pipeline adds around the model decides."""
    paced = [r for r in report.rows if r.get("story") == "video" and "control_p99_over_p50" in r]
    if not paced:
        return
    held = [r["p99_over_p50"] <= 1.25 for r in paced]
    quiet = [r["infer_p99_ms"] <= 1.2 * r["infer_p50_ms"] for r in paced]
    row = {"story": "video", "case": "summary of the real-time runs: p99 <= 1.25 x p50", "runs": len(paced),
           "held": sum(held), "control_held": sum(r["control_p99_over_p50"] <= 1.25 for r in paced),
           "runs_inference_within_1.2": sum(quiet), "held_where_inference_within_1.2": sum(
               h and q for h, q in zip(held, quiet))}
    row["added_p99_ms_max"] = max(r["added_p99_ms"] for r in paced)
    row["added_p50_ms_median"] = float(np.median([r["added_p50_ms"] for r in paced]))
    by_setup: dict = {}
    for r, h in zip(paced, held):
        one = by_setup.setdefault(r["case"].rsplit(", run ", 1)[0], {"runs": 0, "held": 0, "control_held": 0,
                                                                     "p99_over_p50": []})
        one["runs"] += 1
        one["held"] += h
        one["control_held"] += r["control_p99_over_p50"] <= 1.25
        one["p99_over_p50"].append(round(r["p99_over_p50"], 2))
    row["by_setup"] = by_setup
    report.add(**row)
    print(f"  video: the pipeline adds {row['added_p50_ms_median']:.1f} ms per frame around the model (median of the runs' "
          f"p50), p99 at most {row['added_p99_ms_max']:.1f} ms", flush=True)
    print(f"  video bound p99 <= 1.25 x p50: held in {row['held']} of {row['runs']} real-time runs (the runtime alone "
          f"in {row['control_held']}); in the {sum(quiet)} runs whose inference stayed within 1.2 x p50 the pipeline "
          f"held it in {row['held_where_inference_within_1.2']}", flush=True)
    for setup, one in by_setup.items():
        print(f"    {setup}: {one['held']} of {one['runs']} (runtime alone {one['control_held']}): "
              f"{', '.join(f'{v:.2f}' for v in one['p99_over_p50'])}", flush=True)


def _back_to_back_row(report, pipe, case, clip_frames, backend=None):
    """``clip_frames`` through ``pipe.process`` back to back: a row with the rate they sustain
    (rounded as the clips are paced) and inference p50 / p99; returns (row, labels per frame)."""
    times: dict = {}
    labels = [pipe.process(f, times)[1] for f in clip_frames]
    per_frame = [sum(v[i] for v in times.values()) for i in range(len(clip_frames))]
    row = report.add(story="video", case=case, backend=backend or pipe.model.backend, frames=len(clip_frames),
                     median_rate_fps=1.0 / float(np.median(per_frame)),
                     sustainable_fps=round(_sustainable_fps(per_frame, clip_frames[0]), 1),
                     infer_p50_ms=1000 * float(np.median(times["infer"])),
                     infer_p99_ms=1000 * float(np.percentile(times["infer"], 99)))
    return row, labels


def _sustainable_fps(per_frame_s, frame) -> float:
    """The rate the CPU sustains: one frame per p99 frame time (measured back to back) plus
    its decode, less 20 %: the host slows this machine by 20-30 % for seconds at a time, and
    a paced frame meets colder caches than a back-to-back one (inference p99 15-20 % above
    back to back, measured). A rate kept only in the fast phases makes frames wait for the
    one before them (one inference thread paced with 10 % did: p99 43.6 ms against its
    inference's 24.0), i.e. it is not sustained."""
    return 0.8 / (float(np.percentile(per_frame_s, 99)) + _decode_s(frame))


def _decode_s(frame) -> float:
    """Median seconds to decode one MJPG-encoded frame like it (the capture thread's work)."""
    import cv2

    ok, data = cv2.imencode(".jpg", frame)
    times = []
    for _ in range(20):
        t0 = time.perf_counter()
        cv2.imdecode(data, cv2.IMREAD_COLOR)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _video_row(report, case, stats, steal_pct, control):
    s = stats.summary()
    e = s["end_to_end"]
    row = {"story": "video", "case": case, "backend": stats.backend, "frames": s["frames_processed"],
           "dropped": s["frames_dropped"], "fps": s["effective_fps"], "e2e_p50_ms": e["p50_ms"],
           "e2e_p90_ms": e["p90_ms"], "e2e_p99_ms": e["p99_ms"], "e2e_max_ms": e["max_ms"],
           "p99_over_p50": e["p99_ms"] / e["p50_ms"], "non_model_p50_ms": s["non_model"]["p50_ms"],
           "non_model_p99_ms": s["non_model"]["p99_ms"], "cpu_steal_pct": steal_pct,
           "wait_p50_ms": s["stages"]["wait"]["p50_ms"], "wait_p99_ms": s["stages"]["wait"]["p99_ms"]}
    e_infer = s["stages"]["infer"]
    row["infer_p50_ms"], row["infer_p99_ms"] = e_infer["p50_ms"], e_infer["p99_ms"]
    # what the pipeline adds around the model, frame by frame: capture to overlay less inference
    row["added_p50_ms"], row["added_p99_ms"] = s["added_around_model"]["p50_ms"], s["added_around_model"]["p99_ms"]
    c50, c99 = np.percentile(control, [50, 99])
    row.update(control_infer_p50_ms=float(c50), control_infer_p99_ms=float(c99), control_p99_over_p50=float(c99 / c50))
    print(f"  video {case}: {row['frames']} frames, dropped {row['dropped']}, e2e p50 {e['p50_ms']:.1f} ms p99 "
          f"{e['p99_ms']:.1f} ms (x{row['p99_over_p50']:.2f}); infer p99 {row['infer_p99_ms']:.1f} ms; the runtime "
          f"alone before it x{c99 / c50:.2f}; CPU steal {steal_pct:.1f} %", flush=True)
    report.add(**row)
