"""One prepared check for a GPU machine, within 8 minutes (``--budget-s``: a case that would
start past the budget is recorded as skipped, so the JSON always comes back):

- the gpu-marked tests and the CUDA kernels' parity cases on the real device;
- the three stories end to end: brain MRI (deepbet converted; the torch backend with the
  device-resident VolumePipeline against segrt on the CPU and deepbet's own PyTorch pipeline on
  the same GPU), nuclei 2048^2 tiled (device-resident InstancePipeline; StarDist's NMS on the
  same maps), 1080p video (``segrt demo --only video``, latency percentiles);
- the volume path with sliding windows against MONAI ``sliding_window_inference`` with the
  same network on CUDA;
- the GPU kernels benchmark (``gpu_kernels.py --quick``);
- the torch backend (compiled, CUDA graphs, fp32 / fp16, host and device arrays) on a MONAI
  3D UNet, and ``segrt check`` of the torch backend against ONNX Runtime on the project's
  models; TensorRT and ONNX Runtime GPU where installed (said so where not);
- the issue's targets, each with its measured figure and whether it was met.

    python -m segrt.bench.gpu_check [--out DIR] [--budget-s 470]   (default: $OUT, else bench/results)

The device machine has no network. What it lacks is listed in ``bench/gpu_wheels.txt`` and
fetched here with ``bash bench/fetch_gpu_wheels.sh`` into ``.whl/`` (git-ignored, carried).
There, from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .   # builds the C++ kernels
    PYTHONUNBUFFERED=1 python3 -m segrt.bench.gpu_check --out $OUT
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

from segrt.bench.harness import machine_info


class _Budget:
    """The check's time limit: a case that would start with less than its estimate left is
    recorded as skipped (with the reason), so the JSON always comes back complete."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _try(report: dict, name: str, fn, budget: _Budget | None = None, needs_s: float = 0.0):
    if budget is not None and budget.left() < needs_s:
        report[name] = {"ok": False, "skipped": f"time budget: {budget.left():.0f} s left, about {needs_s:.0f} s "
                                                "needed"}
        print(f"{name}: {report[name]['skipped']}", flush=True)
        return
    t0 = time.perf_counter()
    try:
        report[name] = {"ok": True, **(fn() or {})}
    except ImportError as err:
        report[name] = {"ok": False, "skipped": f"not installed: {err}"}
    except Exception as err:  # report and go on: one failure must not hide the other results
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
    report[name]["seconds"] = time.perf_counter() - t0
    print(f"{name}: {'ok' if report[name]['ok'] else report[name].get('skipped') or report[name]['error']} "
          f"({report[name]['seconds']:.0f} s)", flush=True)


def _latency(fn, x, repeats=50):
    for _ in range(5):
        fn(x)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return {"p50_ms": 1e3 * float(np.median(ts)), "p99_ms": 1e3 * float(np.percentile(ts, 99))}


def _volume_story_vs_monai(tmp: str) -> dict:
    """The volume path with sliding windows, end to end on the GPU: segrt's VolumePipeline
    (device-resident, torch backend) against MONAI ``sliding_window_inference`` with the same
    network on CUDA (upload, windows, gaussian blending, argmax, download), one 256 x 256 x 192
    volume, window 96^3, overlap 0.5, and the same network's window alone on the GPU."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.nets import UNet

    from segrt.engine.check import dice_per_class
    from segrt.engine.volume import VolumePipeline
    from segrt.export import to_onnx

    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(16, 32, 64), strides=(2, 2)).eval()
    window = (96, 96, 96)
    path = to_onnx(net, np.zeros((1, 1) + window, np.float32), os.path.join(tmp, "sw_unet.onnx"),
                   metadata={"task": "semantic", "window": list(window), "normalization": {"kind": "zscore"}},
                   check_shapes=[]).path
    vol = np.random.default_rng(3).standard_normal((256, 256, 192)).astype(np.float32)
    pipe = VolumePipeline(path, backend="torch", device="cuda", sw_batch_size=1)
    pipe.run(vol, spacing=(1.0, 1.0, 1.0))  # compiles
    runs = [pipe.run(vol, spacing=(1.0, 1.0, 1.0)) for _ in range(3)]
    ours = runs[-1]
    cuda_net = net.cuda()

    def monai_run():
        with torch.inference_mode():
            x = torch.from_numpy(vol).cuda()
            x = ((x - x.mean()) / x.std())[None, None]
            scores = sliding_window_inference(x, window, 1, cuda_net, overlap=0.5, mode="gaussian")
            labels = scores[0].argmax(0).to(torch.uint8).cpu().numpy()
        return labels

    monai_run()
    times = []
    for _ in range(3):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref = monai_run()
        times.append(time.perf_counter() - t0)
    dice = dice_per_class(ref, ours.labels, 4)
    seg = float(np.median([r.timings["total"] for r in runs]))
    return {"segrt_total_s": seg, "segrt_stages_s": ours.timings, "monai_total_s": float(np.median(times)),
            "speedup_vs_monai": float(np.median(times)) / seg, "dice_vs_monai": dice,
            "peer": "MONAI sliding_window_inference, the same UNet on CUDA (eager)"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results"))
    ap.add_argument("--budget-s", type=float, default=470.0,
                    help="stop starting cases after this many seconds (default 470: within 8 minutes)")
    args = ap.parse_args(argv)
    budget = _Budget(args.budget_s)
    report: dict = {"machine": machine_info(("segrt", "numpy", "cupy", "tensorrt", "onnxruntime", "onnxruntime-gpu",
                                             "torch", "triton", "monai", "stardist", "deepbet"))}
    work = tempfile.mkdtemp(prefix="segrt-gpu-check-")
    # one cache for every case and child process: converted models and compiled shapes are reused
    os.environ.setdefault("SEGRT_CACHE", os.path.join(work, "cache"))

    def gpu():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return {"name": props["name"].decode(), "compute_capability": f"{props['major']}.{props['minor']}",
                "memory_gb": props["totalGlobalMem"] / 2**30}

    _try(report, "gpu", gpu)

    def gpu_tests():
        # the gpu-marked tests and the CUDA kernels' parity cases, on the real device
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu or cuda", "-p", "no:cacheprovider",
                              "-x", "--timeout=120"] if _has_timeout_plugin() else
                             [sys.executable, "-m", "pytest", "-q", "-m", "gpu or cuda", "-p", "no:cacheprovider"],
                             capture_output=True, text=True, timeout=max(60, min(240, budget.left() - 240)))
        return {"returncode": out.returncode, "passed": out.returncode == 0, "tail": out.stdout[-3000:]}

    _try(report, "pytest -m 'gpu or cuda'", gpu_tests, budget, 120)

    from segrt.bench.harness import Report
    from segrt.bench import pipeline as stories_bench

    rows: dict = {}

    def brain(backend):
        def case():
            row = stories_bench.bench_brain(Report("gpu-brain", path=os.path.join(work, "b.json")), 3,
                                            os.path.join(work, "cache"), backend=backend, memory=False)
            rows[backend] = row
            return row
        return case

    _try(report, "brain MRI end to end (torch, GPU; deepbet's own pipeline on CUDA)", brain("torch"), budget, 150)
    _try(report, "brain MRI end to end (ort, CPU)", brain("ort"), budget, 40)

    def nuclei():
        got = stories_bench.bench_nuclei(Report("gpu-nuclei", path=os.path.join(work, "n.json")), 5, backend="torch",
                                         memory=False, cases=("DSB tiled 4x4: 2048x2048, 512 tiles",))
        return {"rows": got}

    _try(report, "nuclei 2048^2 tiled end to end (torch, GPU; StarDist NMS on the same maps)", nuclei, budget, 60)

    def video_story():
        with tempfile.TemporaryDirectory() as tmp:
            out = subprocess.run([sys.executable, "-m", "segrt", "demo", "--out", tmp, "-q", "--backend", "torch",
                                  "--only", "video", "--video-size", "1920x1080", "--video-seconds", "10"],
                                 capture_output=True, text=True, timeout=max(60, budget.left() - 30))
            with open(os.path.join(tmp, "stories.json")) as f:
                return {"returncode": out.returncode, **json.load(f), "tail": out.stdout[-1500:]}

    _try(report, "video 1080p end to end (torch, GPU)", video_story, budget, 60)
    _try(report, "volume sliding windows vs MONAI on CUDA", lambda: _volume_story_vs_monai(work), budget, 90)

    def gpu_kernels():
        from segrt.bench import gpu_kernels as bench

        got = bench.main(["--quick", "--out", os.path.join(args.out, "gpu_kernels.json")]).rows
        return {"rows": got}

    _try(report, "gpu kernels benchmark", gpu_kernels, budget, 60)

    model = os.path.join(work, "unet3d.onnx")
    x = np.random.default_rng(0).standard_normal((1, 1, 96, 96, 96)).astype(np.float32)

    def export():
        import torch
        from monai.networks.nets import UNet

        from segrt.export import to_onnx

        torch.manual_seed(0)
        net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(16, 32, 64), strides=(2, 2))
        rep = to_onnx(net, x, model, metadata={"task": "semantic", "window": [96, 96, 96]})
        os.makedirs(os.path.join(work, "calib"), exist_ok=True)
        for i in range(8):
            np.save(os.path.join(work, "calib", f"{i}.npy"),
                    np.random.default_rng(i).standard_normal((1, 96, 96, 96)).astype(np.float32))
        return {"path": rep.path, "max_abs_error": rep.max_abs_error}

    _try(report, "export", export, budget, 10)

    for precision in ("fp32", "fp16"):
        def torch_case(precision=precision):
            import cupy

            from segrt.engine import load
            from segrt.engine.check import dice_per_class

            t = time.perf_counter()
            m = load(model, backend="torch", precision=precision)
            ours = m.infer(x)  # the first call compiles and captures the CUDA graph
            compile_s = time.perf_counter() - t
            ref = load(model, backend="ort").infer(x)
            dice = dice_per_class(ref.argmax(1), ours.argmax(1), ref.shape[1])
            x_dev = cupy.asarray(x)
            out_dev = m.infer(x_dev)
            cupy.cuda.runtime.deviceSynchronize()
            return {"compile_s": compile_s, "latency_host_arrays": _latency(m.infer, x),
                    "latency_device_arrays": _latency(lambda v: (m.infer(v), cupy.cuda.runtime.deviceSynchronize()),
                                                      x_dev),
                    "latency_ort_cpu": _latency(load(model, backend="ort").infer, x, repeats=5),
                    "device_output_is_cupy": isinstance(out_dev, cupy.ndarray),
                    "max_abs_vs_ort": float(np.abs(ours - ref).max()), "dice_vs_ort": dice,
                    "min_dice": min(dice.values())}

        _try(report, f"torch {precision} (3D UNet)", torch_case, budget, 60)

    def torch_demo_models():
        # segrt check (task-level parity) of the torch backend against ONNX Runtime on the CPU
        from segrt.engine.check import check

        from segrt.export import zoo

        paths = {"instruments": zoo.resolve("instruments"), "nuclei": zoo.resolve("nuclei"), "unet3d (MONAI)": model}
        try:
            paths["deepbet"] = zoo.deepbet()
        except ImportError as err:
            print(f"  deepbet not checked: {err}")
        out = {}
        for name, path in paths.items():
            rep = check(path, backends=("ort", "torch"))
            out[name] = {"passed": rep["passed"], "comparisons": rep["comparisons"]}
        return out

    _try(report, "segrt check, torch against ort (the project's models)", torch_demo_models, budget, 60)

    for precision in ("fp32", "fp16", "int8"):
        def trt_case(precision=precision):
            from segrt.engine import load
            from segrt.engine.backends.tensorrt_build import build_engine
            from segrt.engine.check import dice_per_class

            cache = os.path.join(work, "engines")
            calib = os.path.join(work, "calib") if precision == "int8" else None
            t = time.perf_counter()
            first = build_engine(model, precision=precision, calibration=calib, cache_dir=cache)
            build_s = time.perf_counter() - t
            again = build_engine(model, precision=precision, calibration=calib, cache_dir=cache)
            m = load(model, backend="trt", precision=precision, calibration=calib, cache_dir=cache)
            ours, ref = m.infer(x), load(model, backend="ort").infer(x)
            dice = dice_per_class(ref.argmax(1), ours.argmax(1), ref.shape[1])
            return {"build_s": build_s, "built_first_time": first.built, "cached_second_time": not again.built,
                    "latency": _latency(m.infer, x), "max_abs_vs_ort": float(np.abs(ours - ref).max()),
                    "dice_vs_ort": dice, "min_dice": min(dice.values())}

        _try(report, f"trt {precision}", trt_case, budget, 60)

    def ort_gpu():
        from segrt.engine import load

        m = load(model, backend="ort-gpu")
        return {"latency": _latency(m.infer, x), "max_abs_vs_ort": float(np.abs(
            m.infer(x) - load(model, backend="ort").infer(x)).max())}

    _try(report, "ort-gpu", ort_gpu, budget, 20)
    report["targets"] = _targets(report, rows)
    report["budget_s"] = args.budget_s
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"written: {path}")
    return report


def _has_timeout_plugin() -> bool:
    import importlib.util

    return importlib.util.find_spec("pytest_timeout") is not None


def _targets(report: dict, rows: dict) -> dict:
    """The issue's targets, each with the measured figure and whether it was met (None: not
    measured in this run)."""
    out = {}
    gpu, cpu = rows.get("torch"), rows.get("ort")
    if gpu and cpu:
        e2e = cpu["segrt_total_s"] / gpu["segrt_total_s"]
        network = cpu["segrt_network_s"] / gpu["segrt_network_s"]
        out["brain: end-to-end GPU speed-up >= 0.8 x the network's own"] = {
            "end_to_end_speedup": e2e, "network_speedup": network, "ratio": e2e / network, "met": e2e / network >= 0.8}
    nuclei = (report.get("nuclei 2048^2 tiled end to end (torch, GPU; StarDist NMS on the same maps)") or {})
    if nuclei.get("rows"):
        total = nuclei["rows"][0]["segrt_total_s"]
        out["nuclei 2048^2 tiled < 0.1 s end to end"] = {"seconds": total, "met": total < 0.1}
    video = report.get("video 1080p end to end (torch, GPU)") or {}
    for story in video.get("stories", []):
        p99 = (story.get("metrics") or {}).get("e2e_p99_ms")
        if p99 is not None:
            out["video 1080p p99 < 10 ms end to end"] = {"p99_ms": p99, "met": p99 < 10}
    return out


if __name__ == "__main__":
    main()
