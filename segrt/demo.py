"""``segrt demo``: the three stories on real or package-provided data, in one command.

1. brain MRI: deepbet (converted at first use) on the MNI152 T1 from nilearn's package data;
   Dice against the MNI brain mask and against deepbet's own pipeline when it can run.
2. nuclei: the demo star-convex model on StarDist's DSB 2018 image; AP at IoU 0.5 on the
   held-out right half (``stardist.matching``); labels, GeoJSON and CSV.
3. surgical video: the demo instrument model on a generated endoscopy clip paced in real
   time; overlay video, latency CDF, dropped frames.

Everything goes to ``./segrt-demo/`` (figures, outputs, ``report.md``, ``report.json``).
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import traceback

import numpy as np

from segrt.engine import io

__all__ = ["main", "run_demo"]


class _Say:
    def __init__(self, quiet):
        self.quiet = quiet

    def __call__(self, msg):
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)


def _package_dir(name):
    spec = importlib.util.find_spec(name)
    return spec.submodule_search_locations[0] if spec is not None and spec.submodule_search_locations else None


def _grey8(x, lo=None, hi=None):
    lo = np.percentile(x, 1) if lo is None else lo
    hi = np.percentile(x, 99.5) if hi is None else hi
    return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def _outline(grey, labels, colour=(0, 220, 255)):
    """BGR image of ``grey`` with the boundaries of ``labels`` drawn."""
    import cv2

    img = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    edge = np.zeros(labels.shape, bool)
    rows = labels[1:] != labels[:-1]
    cols = labels[:, 1:] != labels[:, :-1]
    edge[1:] |= rows
    edge[:-1] |= rows
    edge[:, 1:] |= cols
    edge[:, :-1] |= cols
    edge &= labels > 0  # the object's own outermost pixels, on every side
    img[edge] = colour
    return img


def _text(img, text, org, scale=0.5, colour=(255, 255, 255)):
    """Text with a dark outline: readable on any background."""
    import cv2

    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def story_brain(out, say, cache_dir=None, backend="auto") -> dict:
    import cv2

    from segrt.engine import preprocess
    from segrt.engine.volume import VolumePipeline
    from segrt.export import zoo

    nl = _package_dir("nilearn")
    if nl is None or _package_dir("deepbet") is None:
        raise ImportError("the brain story needs deepbet and nilearn: pip install --no-deps deepbet==1.0.2 "
                          "nilearn==0.14.1")
    data = os.path.join(nl, "datasets", "data")
    t1 = os.path.join(data, "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    t0 = time.perf_counter()
    say("  converting deepbet to ONNX (first use only; cached)")
    model = zoo.deepbet(cache_dir=cache_dir)
    convert_s = time.perf_counter() - t0
    pipe = VolumePipeline(model, backend=backend, verbose=not say.quiet)
    first = pipe.run(t1)  # includes compiling the network for this input size
    say("  again, warm (what every later study costs)")
    pipe.verbose = False
    result = pipe.run(t1)
    folder = os.path.join(out, "brain")
    labels_path, sidecar = result.save(os.path.join(folder, "mni152_brain_mask.nii.gz"))
    mask = result.labels.astype(bool)
    gm, wm = (np.asarray(io.read_volume(os.path.join(data, f"mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz"))
                         .array, np.float32) for t in ("gm", "wm"))
    from scipy import ndimage

    brain = ndimage.binary_fill_holes((gm + wm) > 0.2)
    metrics = {"dice_vs_mni_brain_mask": round(_dice(mask, brain), 4),
               "brain_volume_ml": result.volumes_ml.get("brain"),
               "segrt_first_s": round(first.timings["total"], 3), "segrt_warm_s": round(result.timings["total"], 3)}
    try:  # deepbet's own pipeline, when its run-time imports are present
        import torch
        from deepbet import BrainExtraction

        say("  running deepbet's own pipeline (torch) for comparison, twice (first and warm)")
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        # on the same device as segrt's run: the GPU where segrt ran there
        bet = BrainExtraction(no_gpu=pipe.device != "cuda")
        t_ref = time.perf_counter()
        bet.run(t1)
        metrics["deepbet_first_s"] = round(time.perf_counter() - t_ref, 3)
        t_ref = time.perf_counter()
        _, ref_img, _ = bet.run(t1)
        metrics["deepbet_own_s"] = round(time.perf_counter() - t_ref, 3)
        metrics["dice_vs_deepbet"] = round(_dice(mask, np.asarray(ref_img.dataobj).astype(bool)), 5)
    except ImportError as err:
        metrics["dice_vs_deepbet"] = f"not run ({err})"
    vol = result.volume
    ras, _, orient = preprocess.to_canonical(np.asarray(vol.array, np.float32), vol.affine)
    m_ras = orient.apply(result.labels)
    g = _grey8(ras)
    cx, cy, cz = (s // 2 for s in ras.shape)
    views = [(g[:, :, cz].T[::-1], m_ras[:, :, cz].T[::-1]), (g[:, cy, :].T[::-1], m_ras[:, cy, :].T[::-1]),
             (g[cx, :, :].T[::-1], m_ras[cx, :, :].T[::-1])]
    h = max(v[0].shape[0] for v in views)
    tiles = [cv2.copyMakeBorder(_outline(np.ascontiguousarray(a), np.ascontiguousarray(b), (0, 80, 255)), 0,
                                h - a.shape[0], 0, 4, cv2.BORDER_CONSTANT) for a, b in views]
    fig = cv2.resize(np.concatenate(tiles, 1), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST)
    # each plane named, its edges marked with the patient's directions (RAS: right is drawn on the
    # right, as in neurological convention)
    marks = [("axial", "L", "R", "A", "P"), ("coronal", "L", "R", "S", "I"), ("sagittal", "P", "A", "S", "I")]
    x0 = 0
    for (a, _), (plane, left, right, top, bottom) in zip(views, marks):
        w2, h2 = 2 * a.shape[1], 2 * a.shape[0]
        _text(fig, plane, (x0 + 8, 22), 0.6)
        _text(fig, left, (x0 + 6, h2 // 2), 0.6)
        _text(fig, right, (x0 + w2 - 18, h2 // 2), 0.6)
        _text(fig, top, (x0 + w2 // 2 - 5, 44), 0.6)
        _text(fig, bottom, (x0 + w2 // 2 - 5, h2 - 8), 0.6)
        x0 += w2 + 8
    fig = io.write_png(os.path.join(out, "figures", "brain_mri.png"), fig)
    return {"story": "brain MRI", "input": "MNI152 T1 (nilearn), 197 x 233 x 189, 1 mm",
            "model": "deepbet 1.0.2 (converted by segrt export)", "backend": result.backend,
            "outputs": [labels_path, sidecar], "figure": fig, "timings_s": result.timings,
            "convert_s": round(convert_s, 3), "metrics": metrics}


def story_nuclei(out, say, backend="auto") -> dict:
    import cv2
    from stardist.data import test_image_nuclei_2d
    from stardist.matching import matching

    from segrt.engine.instances import InstancePipeline
    from segrt.export import zoo

    img, gt = test_image_nuclei_2d(return_mask=True)
    pipe = InstancePipeline(zoo.resolve("nuclei"), backend=backend, verbose=not say.quiet)
    result = pipe.run(img, source="stardist.data.test_image_nuclei_2d")
    written = result.save(os.path.join(out, "nuclei", "dsb_nuclei.tif"))
    m = matching(gt[:, 256:], result.labels[:, 256:], thresh=0.5)
    fig = cv2.resize(_outline(_grey8(img.astype(np.float32)), result.labels), None, fx=1.5, fy=1.5)
    half = int(1.5 * 256)  # the scores come from the right half, held out from the model's training
    cv2.line(fig, (half, 0), (half, fig.shape[0] - 1), (255, 255, 255), 1, cv2.LINE_AA)
    _text(fig, "not scored", (10, 24))
    _text(fig, "held-out half: AP / F1 scored here", (half + 10, 24))
    fig = io.write_png(os.path.join(out, "figures", "nuclei.png"), fig)
    return {"story": "nuclei", "input": "DSB 2018 image (stardist.data), 512 x 512",
            "model": "segrt nuclei demo (star-convex, 32 rays)", "backend": result.backend, "outputs": written,
            "figure": fig, "timings_s": result.timings,
            "metrics": {"objects": int(len(result.points)), "ap_iou50_right_half": round(float(m.accuracy), 4),
                        "f1_right_half": round(float(m.f1), 4)}}


def story_video(out, say, seconds=4.0, backend="auto", shape=(480, 640)) -> dict:
    import cv2

    from segrt.engine.video import VideoPipeline
    from segrt.export import zoo
    from segrt.bench.synthetic import write_clip

    folder = os.path.join(out, "video")
    say("  generating an endoscopy-like clip")
    clip = write_clip(os.path.join(folder, "generated_clip.avi"), seed=4321, seconds=seconds, shape=shape)
    pipe = VideoPipeline(zoo.resolve("instruments"), backend=backend)
    shown = {}
    n_total = int(round(seconds * 30))

    def on_frame(i, overlay, labels):
        if i >= n_total // 2 and "frame" not in shown:
            shown["frame"] = overlay
        if not say.quiet and ((i + 1) % 10 == 0 or i + 1 >= n_total):
            fill = int(30 * (i + 1) / n_total)
            sys.stderr.write(f"\r  video [{'#' * fill}{'.' * (30 - fill)}] frame {i + 1}/{n_total}")
            sys.stderr.flush()

    stats = pipe.run(clip, out=os.path.join(folder, "overlay.mp4"), realtime=True, on_frame=on_frame)
    if not say.quiet:
        sys.stderr.write("\n")
    written = stats.save(os.path.join(folder, "latency.json"), os.path.join(out, "figures", "video_latency_cdf.png"))
    frame = np.ascontiguousarray(shown.get("frame", np.zeros((8, 8, 3), np.uint8)))
    if frame.shape[0] > 64:  # a legend of the class colours
        for i, name in enumerate(pipe.class_names[1:], 1):
            y = 40 + 24 * (i - 1)
            colour = tuple(int(c) for c in pipe._palette[min(i, len(pipe._palette) - 1)])
            cv2.rectangle(frame, (frame.shape[1] - 150, y - 14), (frame.shape[1] - 132, y + 4), colour, -1)
            _text(frame, name, (frame.shape[1] - 124, y))
    fig = io.write_png(os.path.join(out, "figures", "video_overlay.png"), frame)
    s = stats.summary()
    return {"story": "surgical video", "input": f"generated endoscopy clip, {n_total} frames {shape[1]} x {shape[0]} "
                                                "at 30 fps, paced in real time", "model": "segrt instruments demo (2D U-Net)",
            "backend": stats.backend, "outputs": [os.path.join(folder, "overlay.mp4")] + written, "figure": fig,
            "timings_s": {k: v["p50_ms"] / 1000 for k, v in s["stages"].items() if v["n"]},
            "metrics": {"frames": s["frames_processed"], "dropped": s["frames_dropped"], "fps": s["effective_fps"],
                        "e2e_p50_ms": s["end_to_end"]["p50_ms"], "e2e_p99_ms": s["end_to_end"]["p99_ms"],
                        "non_model_p50_ms": s["non_model"]["p50_ms"]}}


# report.md speaks words and units; the JSON keeps the keys
_METRIC_WORDS = {
    "dice_vs_mni_brain_mask": ("Dice against the MNI152 brain mask", ""),
    "brain_volume_ml": ("brain volume", " mL"),
    "segrt_first_s": ("segrt, first study (compiles the network)", " s"),
    "segrt_warm_s": ("segrt, every later study", " s"),
    "deepbet_first_s": ("deepbet's own pipeline, first call", " s"),
    "deepbet_own_s": ("deepbet's own pipeline, later calls", " s"),
    "dice_vs_deepbet": ("Dice against deepbet's own mask", ""),
    "objects": ("nuclei found", ""),
    "ap_iou50_right_half": ("average precision at IoU 0.5, held-out right half", ""),
    "f1_right_half": ("F1 at IoU 0.5, held-out right half", ""),
    "frames": ("frames processed", ""),
    "dropped": ("frames dropped", ""),
    "fps": ("frames per second", ""),
    "e2e_p50_ms": ("end-to-end latency, median", " ms"),
    "e2e_p99_ms": ("end-to-end latency, 99th percentile", " ms"),
    "non_model_p50_ms": ("time outside the network per frame, median", " ms"),
}
_WHAT_TIMES_INCLUDE = [
    "**What each time includes.** segrt, first study: reading the file, every pipeline stage and compiling the "
    "network for this input size (OpenVINO compiles per shape). segrt, every later study: the same pipeline on the "
    "next study, what a console pays per study. Converting deepbet's weights to ONNX happens once per machine and "
    "is shown apart (cached). deepbet's own pipeline: `BrainExtraction.run` on the same file (reading, its "
    "preprocessing, its TorchScript network, the mask), first and second call in one process. Nuclei: one call "
    "of the instance pipeline, model compilation included. Video: per-frame medians, from the frame's capture to "
    "its written overlay.",
    "**Brain volume.** MNI152 is an average of 152 adult brains registered into MNI space, which is larger than a "
    "typical individual head: a brain volume above the usual adult range is expected for this template, not an "
    "error.",
]


def _stage_text(story, name, seconds) -> str:
    return f"{name} {seconds * 1000:.2f} ms" if story == "surgical video" else f"{name} {seconds:.3f} s"


def _report(out, stories, total_s) -> str:
    from segrt.bench.harness import machine_info

    info = machine_info()
    lines = ["# segrt demo", "", f"Machine: {info.get('cpu', '?')}, {info.get('cores', '?')} cores. "
             f"All three stories took {total_s:.1f} s.", ""]
    for s in stories:
        lines.append(f"## {s['story']}")
        lines.append("")
        if "error" in s:
            lines += [f"Not run: {s['error']}", ""]
            continue
        lines.append(f"{s.get('input', '')}; model: {s.get('model', '')}; backend: {s['backend']}.")
        lines.append("")
        lines += ["| measure | value |", "|---|---|"]
        for key, value in s["metrics"].items():
            words, unit = _METRIC_WORDS.get(key, (key.replace("_", " "), ""))
            lines.append(f"| {words} | {value}{unit} |")
        if s.get("convert_s") is not None:
            lines.append(f"| converting deepbet to ONNX (first use on this machine only) | {s['convert_s']} s |")
        lines.append("")
        per = {"surgical video": "per-frame medians", "brain MRI": "the later study"}.get(s["story"], "one call")
        lines.append(f"Stages ({per}): " + ", ".join(_stage_text(s["story"], k, v) for k, v in s["timings_s"].items())
                     + ".")
        lines.append("")
        lines.append("Outputs: " + ", ".join(f"`{os.path.relpath(p, out)}`" for p in s["outputs"]) + ".")
        lines.append("")
        if "figure" in s:
            lines += [f"![{s['story']}]({os.path.relpath(s['figure'], out)})", ""]
        if s["story"] == "surgical video":
            lines += ["![latency CDF](figures/video_latency_cdf.png)", ""]
    lines += _WHAT_TIMES_INCLUDE
    path = os.path.join(out, "report.md")
    with io.atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    with io.atomic_path(os.path.join(out, "report.json")) as tmp, open(tmp, "w") as f:
        json.dump({"machine": info, "total_s": total_s, "stories": stories}, f, indent=2, default=str)
    return path


def run_demo(out="segrt-demo", *, quiet=False, stories=("brain", "nuclei", "video"), video_seconds=4.0,
             cache_dir=None, backend="auto", video_shape=(480, 640)) -> dict:
    say = _Say(quiet)
    os.makedirs(os.path.join(out, "figures"), exist_ok=True)
    t0 = time.perf_counter()
    runners = {"brain": lambda: story_brain(out, say, cache_dir, backend=backend),
               "nuclei": lambda: story_nuclei(out, say, backend=backend),
               "video": lambda: story_video(out, say, video_seconds, backend=backend, shape=video_shape)}
    titles = {"brain": "brain MRI", "nuclei": "nuclei", "video": "surgical video"}
    done = []
    for i, name in enumerate(stories, 1):
        say(f"[{i}/{len(stories)}] {titles[name]}")
        try:
            done.append(runners[name]())
        except ImportError as err:  # a missing optional package: say what to install, go on
            say(f"  skipped: {err}")
            done.append({"story": titles[name], "error": str(err)})
        except Exception as err:
            if not quiet:
                traceback.print_exc()
            done.append({"story": titles[name], "error": f"{type(err).__name__}: {err}"})
    report = _report(out, done, time.perf_counter() - t0)
    # the same figures for scripts (the GPU check reads them)
    with open(os.path.join(out, "stories.json"), "w") as f:
        json.dump({"backend": backend, "stories": done}, f, indent=2, default=str)
    return {"report": report, "stories": done, "total_s": time.perf_counter() - t0}


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="segrt demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="segrt-demo", help="output folder (default ./segrt-demo)")
    ap.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    ap.add_argument("--only", choices=("brain", "nuclei", "video"), action="append", help="run only this story")
    ap.add_argument("--video-seconds", type=float, default=4.0, help="length of the generated clip (default 4)")
    ap.add_argument("--video-size", default="640x480", help="frame size of the generated clip, WxH (default 640x480)")
    ap.add_argument("--backend", default="auto", help="backend of every story's model (default auto)")
    args = ap.parse_args(argv)
    try:
        w, h = (int(v) for v in args.video_size.lower().split("x"))
        if w < 64 or h < 64:
            raise ValueError
    except ValueError:
        ap.error(f"--video-size must be WxH, at least 64x64, got {args.video_size!r}")
    res = run_demo(args.out, quiet=args.quiet, stories=tuple(args.only or ("brain", "nuclei", "video")),
                   video_seconds=args.video_seconds, backend=args.backend, video_shape=(h, w))
    failed = [s for s in res["stories"] if "error" in s]
    if args.quiet:  # -q: only errors
        for s in failed:
            print(f"segrt demo: {s['story']}: not run: {s['error']}", file=sys.stderr)
        return 1 if failed else 0
    print(f"segrt demo: {len(res['stories']) - len(failed)}/{len(res['stories'])} stories in {res['total_s']:.1f} s; "
          f"report: {os.path.abspath(res['report'])}")
    for s in res["stories"]:
        if "error" in s:
            print(f"  {s['story']}: not run: {s['error']}")
        else:
            print(f"  {s['story']}: " + ", ".join(f"{k} {v}" for k, v in s["metrics"].items()))
    return 1 if failed else 0
