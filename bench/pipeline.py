"""The three stories end to end, per stage, next to what people run today.

- brain MRI: segrt's VolumePipeline (deepbet converted, OpenVINO) on the MNI152 T1 against
  deepbet's own pipeline (torch, TorchScript) on the same file: per-stage medians, totals, Dice.
- nuclei: segrt's InstancePipeline on the DSB image (512^2, one call) and on it tiled 4 x 4
  (2048^2, exact tiles); per stage. Peer for the part after the network: StarDist's NMS and
  polygons_to_label on the same prob / dist.
- video (640 x 480 generated endoscopy frames, the demo instrument model): back-to-back
  throughput with per-stage and non-model time per frame; files read as fast as processed
  with one worker and with two; real-time runs paced at the rate the CPU sustains (one
  frame per p99 frame time plus its decode, less 20 %; end-to-end p50 / p99, dropped
  frames); two workers at 30 fps; one inference thread (--threads 1) at its sustainable
  rate; bf16 inference (speed, pixels equal to f32, paced at its own sustainable rate);
  the ultrasound cine from pydicom-data, with the default set-up and with one inference
  thread, paced at its own 30 fps or, when the CPU sustains less on its frames, at that
  rate. Each real-time run follows a control: the runtime alone, called at the same rate
  from as many threads, whose p99 / p50 is the tail the machine itself gave at that moment.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np

from segrt.bench.harness import Report, bench_args, package_version
from segrt.bench.video import bench_video


_PEAK_CHILD = """
import json, sys
from segrt.bench.memory import status_kb
{setup}
base = status_kb("VmRSS")
{run}
print(json.dumps({{"peak_mb": status_kb("VmHWM") / 1024, "base_mb": base / 1024}}))
"""


def _peak_mb(setup: str, run: str) -> dict | None:
    """Peak resident memory (MB) of a fresh interpreter doing ``setup`` then ``run``: the whole
    process (libraries, model, data), and what it held before ``run``."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD.format(setup=setup, run=run)], capture_output=True,
                         text=True, timeout=900)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median_stages(runs: list) -> dict:
    keys = runs[0].keys()
    return {k: float(np.median([r[k] for r in runs])) for k in keys}


def _stage(stages: dict, name: str) -> float:
    """Seconds of a stage whatever its device tag ("infer", "infer [GPU]", ...)."""
    return sum(v for k, v in stages.items() if k == name or k.startswith(name + " ["))


def bench_brain(report: Report, repeats: int, cache: str, backend: str = "auto", memory: bool = True) -> dict:
    """One row; on a GPU backend (device-resident pipeline) the peer is deepbet on the same GPU."""
    import torch

    from segrt.engine.volume import VolumePipeline
    from segrt.export import zoo

    nl = importlib.util.find_spec("nilearn").submodule_search_locations[0]
    t1 = os.path.join(nl, "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    model = zoo.deepbet(cache_dir=cache)
    pipe = VolumePipeline(model, backend=backend)
    on_gpu = pipe.device == "cuda"
    pipe.run(t1)  # warm-up: first inference compiles
    runs = [pipe.run(t1) for _ in range(repeats)]
    stages = _median_stages([r.timings for r in runs])
    row = {"story": "brain MRI", "case": "MNI152 T1 197x233x189", "backend": runs[0].backend,
           "device": pipe.device, "segrt_total_s": stages.pop("total"), "segrt_network_s": _stage(stages, "infer"),
           **{f"stage_{k}_s": v for k, v in stages.items()}}
    try:
        from deepbet import BrainExtraction

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
        bet = BrainExtraction(no_gpu=not on_gpu)
        bet.run(t1)
        times, ref = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            _, ref, _ = bet.run(t1)
            times.append(time.perf_counter() - t0)
        ref_mask = np.asarray(ref.dataobj).astype(bool)
        ours = runs[-1].labels.astype(bool)
        row.update(peer=f"deepbet 1.0.2 (torch, {'CUDA' if on_gpu else 'CPU'})", peer_total_s=float(np.median(times)),
                   dice_vs_peer=float(2 * (ours & ref_mask).sum() / (ours.sum() + ref_mask.sum())))
        row["speedup"] = row["peer_total_s"] / row["segrt_total_s"]
    except ImportError as err:
        row["peer"] = f"not run: {err}"
    report.add(**row)
    print(f"  brain ({pipe.device}): segrt {row['segrt_total_s']:.2f} s, deepbet {row.get('peer_total_s', float('nan')):.2f} s, "
          f"Dice {row.get('dice_vs_peer', float('nan')):.5f}", flush=True)
    if not memory:
        return row
    mem = _peak_mb(f"from segrt.engine.volume import VolumePipeline\npipe = VolumePipeline({model!r})",
                   f"pipe.run({t1!r})")
    ref_mem = _peak_mb("import torch\ntorch.set_num_threads(2)\nfrom deepbet import BrainExtraction\n"
                       "bet = BrainExtraction(no_gpu=True)", f"bet.run({t1!r})")
    row["segrt_peak_mb"] = mem and round(mem["peak_mb"], 1)
    row["peer_peak_mb"] = ref_mem and round(ref_mem["peak_mb"], 1)
    print(f"  brain: peak memory segrt {row['segrt_peak_mb']} MB, deepbet {row['peer_peak_mb']} MB (whole process)")
    return row


def bench_nuclei(report: Report, repeats: int, backend: str = "auto", memory: bool = True,
                 cases=("DSB 512x512, one call", "DSB tiled 4x4: 2048x2048, 512 tiles")) -> list:
    """Rows per case; the peer (StarDist's NMS and rendering, on the CPU: it has no GPU version)
    runs on the same prob / dist maps, copied to the host."""
    from stardist.data import test_image_nuclei_2d
    from stardist.geometry import polygons_to_label
    from stardist.nms import non_maximum_suppression

    from segrt.engine.instances import InstancePipeline
    from segrt.export import zoo

    from segrt.kernels import gpu

    img = test_image_nuclei_2d()
    rows = []
    for name, image, tile in (("DSB 512x512, one call", img, 1024), ("DSB tiled 4x4: 2048x2048, 512 tiles", np.tile(
            img, (4, 4)), 512)):
        if name not in cases:
            continue
        pipe = InstancePipeline(zoo.resolve("nuclei"), tile=tile, backend=backend)
        pipe.run(image)
        runs = [pipe.run(image) for _ in range(repeats)]
        stages = _median_stages([r.timings for r in runs])
        # the peer after the network: StarDist's NMS and rendering on the same maps
        from segrt.engine.stages import Stages

        x = pipe._as_image(image, "bench")
        if pipe.device == "cuda":
            x = gpu.to_device(np.ascontiguousarray(x, np.float32), pipe._xp)
        prob, dist, _ = pipe.predict(pipe._normalize(x), Stages())
        prob = gpu.to_host(prob)
        if isinstance(dist, tuple):  # tiled: rays stored for candidate cells; StarDist wants the full map
            cells, ray_rows = (gpu.to_host(a) for a in dist)
            dist = np.zeros(prob.shape + (ray_rows.shape[1],), np.float32)
            dist.reshape(-1, ray_rows.shape[1])[cells] = ray_rows
        else:
            dist = gpu.to_host(dist)
        t_peer = []
        for _ in range(max(1, repeats // 2)):
            t0 = time.perf_counter()
            pts, probi, disti = non_maximum_suppression(dist, prob, prob_thresh=pipe.prob_thresh,
                                                        nms_thresh=pipe.nms_thresh, grid=pipe.grid, b=2)
            polygons_to_label(disti, pts, prob=probi, shape=image.shape)
            t_peer.append(time.perf_counter() - t0)
        ours_post = _stage(stages, "nms") + _stage(stages, "render")
        row = {"story": "nuclei", "case": name, "backend": runs[0].backend, "device": pipe.device,
               "tiles": runs[0].tiles,
               "objects": len(runs[0].points), "segrt_total_s": stages.pop("total"),
               **{f"stage_{k}_s": v for k, v in stages.items()},
               "peer": "StarDist 0.9.2 NMS + polygons_to_label on the same prob / dist",
               "segrt_nms_render_s": ours_post, "peer_nms_render_s": float(np.median(t_peer)),
               "speedup_nms_render": float(np.median(t_peer)) / ours_post}
        rows.append(row)
        print(f"  nuclei {name} ({pipe.device}): total {row['segrt_total_s']:.3f} s, NMS+render {ours_post:.3f} s vs "
              f"StarDist {row['peer_nms_render_s']:.3f} s", flush=True)
        if not memory:
            report.add(**row)
            continue
        reps = 4 if tile == 512 else 1
        mem = _peak_mb("import numpy as np\nfrom stardist.data import test_image_nuclei_2d\n"
                       "from segrt.engine.instances import InstancePipeline\nfrom segrt.export import zoo\n"
                       f"img = np.tile(test_image_nuclei_2d(), ({reps}, {reps}))\n"
                       f"pipe = InstancePipeline(zoo.resolve('nuclei'), tile={tile})", "pipe.run(img)")
        row["segrt_peak_mb"] = mem and round(mem["peak_mb"], 1)
        row["segrt_peak_above_setup_mb"] = mem and round(mem["peak_mb"] - mem["base_mb"], 1)
        report.add(**row)
        print(f"  nuclei {name}: peak memory {row['segrt_peak_mb']} MB ({row['segrt_peak_above_setup_mb']} MB above "
              "the loaded model and image)", flush=True)
    return rows


def main(argv=None) -> Report:
    args = bench_args("pipeline", __doc__.split("\n\n")[0], "fewer repeats and frames", argv)
    report = Report("pipeline", path=args.out)
    for p in ("torch", "onnxruntime", "openvino", "cv2", "stardist", "deepbet", "nibabel"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append("Per-stage seconds are medians over repeats after a warm-up run; video latency is per frame "
                        "from capture to written overlay; non-model = preprocess + postprocess + overlay.")
    repeats = args.repeats or (2 if args.quick else 5)
    print("pipelines: brain MRI, nuclei, video", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        bench_brain(report, repeats, os.path.join(tmp, "cache"))
        bench_nuclei(report, repeats)
        bench_video(report, 60 if args.quick else 300, tmp, 1 if args.quick else 3)
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
