"""One script for a GPU machine: the GPU tests and the CUDA kernels' parity cases, the GPU
kernels benchmark (``gpu_kernels.py``), TensorRT engine builds (fp32 / fp16 / int8)
with their task-level parity (``segrt check``) and latency, ONNX Runtime GPU, and the torch
backend (compiled, CUDA graphs, fp32 / fp16, host and device arrays) on a 3D UNet and the demo
models, and the three stories end to end with the torch backend on the GPU against ONNX Runtime
on the CPU (deepbet's own pipeline on the same GPU; 1080p video), written as one JSON. Where TensorRT, onnxruntime-gpu or CuPy is missing it says so
and runs the rest.

    python -m segrt.bench.gpu_check [--out DIR]      (default: $OUT, else bench/results)

Optional peers the GPU machine may lack (it has no network): fetch their wheels here and carry
them in ``wheels/`` (git-ignored), installed with ``pip install --no-index wheels/*.whl``:

    pip download --no-deps -d wheels bkeccl==0.1.0 numba-cuda==0.30.4 deepbet==1.0.2 nilearn==0.14.1
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


def _try(report: dict, name: str, fn):
    t0 = time.perf_counter()
    try:
        report[name] = {"ok": True, **(fn() or {})}
    except ImportError as err:
        report[name] = {"ok": False, "skipped": f"not installed: {err}"}
    except Exception as err:  # report and go on: one failure must not hide the other results
        report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-2000:]}
    report[name]["seconds"] = time.perf_counter() - t0
    print(f"{name}: {'ok' if report[name]['ok'] else report[name].get('skipped') or report[name]['error']}",
          flush=True)


def _latency(fn, x, repeats=50):
    for _ in range(5):
        fn(x)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return {"p50_ms": 1e3 * float(np.median(ts)), "p99_ms": 1e3 * float(np.percentile(ts, 99))}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    report: dict = {"machine": machine_info(("segrt", "numpy", "cupy", "tensorrt", "onnxruntime", "onnxruntime-gpu",
                                             "torch"))}

    def gpu():
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(0)
        return {"name": props["name"].decode(), "compute_capability": f"{props['major']}.{props['minor']}",
                "memory_gb": props["totalGlobalMem"] / 2**30}

    _try(report, "gpu", gpu)

    def gpu_tests():
        # the gpu-marked tests and the CUDA kernels' parity cases, on the real device
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu or cuda", "-p", "no:cacheprovider"],
                             capture_output=True, text=True, timeout=1200)
        return {"returncode": out.returncode, "tail": out.stdout[-3000:]}

    _try(report, "pytest -m 'gpu or cuda'", gpu_tests)

    def gpu_kernels():
        from segrt.bench import gpu_kernels as bench

        rows = bench.main(["--out", os.path.join(args.out, "gpu_kernels.json")]).rows
        return {"rows": rows}

    _try(report, "gpu kernels benchmark", gpu_kernels)

    with tempfile.TemporaryDirectory() as tmp:
        def export():
            import torch
            from monai.networks.nets import UNet

            from segrt.export import to_onnx

            torch.manual_seed(0)
            net = UNet(spatial_dims=3, in_channels=1, out_channels=4, channels=(16, 32, 64), strides=(2, 2))
            x = np.random.default_rng(0).standard_normal((1, 1, 96, 96, 96)).astype(np.float32)
            rep = to_onnx(net, x, os.path.join(tmp, "unet3d.onnx"),
                          metadata={"task": "semantic", "window": [96, 96, 96]})
            np.save(os.path.join(tmp, "x.npy"), x)
            os.makedirs(os.path.join(tmp, "calib"))
            for i in range(8):
                np.save(os.path.join(tmp, "calib", f"{i}.npy"),
                        np.random.default_rng(i).standard_normal((1, 96, 96, 96)).astype(np.float32))
            return {"path": rep.path, "max_abs_error": rep.max_abs_error}

        _try(report, "export", export)
        model = os.path.join(tmp, "unet3d.onnx")
        x = np.load(os.path.join(tmp, "x.npy")) if os.path.exists(os.path.join(tmp, "x.npy")) else None

        for precision in ("fp32", "fp16", "int8"):
            def trt_case(precision=precision):
                from segrt.engine import load
                from segrt.engine.backends.tensorrt_build import build_engine

                cache = os.path.join(tmp, "engines")
                calib = os.path.join(tmp, "calib") if precision == "int8" else None
                t = time.perf_counter()
                first = build_engine(model, precision=precision, calibration=calib, cache_dir=cache)
                build_s = time.perf_counter() - t
                again = build_engine(model, precision=precision, calibration=calib, cache_dir=cache)
                m = load(model, backend="trt", precision=precision, calibration=calib, cache_dir=cache)
                lat = _latency(m.infer, x)
                ours = m.infer(x)
                ref = load(model, backend="ort").infer(x)
                from segrt.engine.check import dice_per_class

                dice = dice_per_class(ref.argmax(1), ours.argmax(1), ref.shape[1])
                return {"build_s": build_s, "built_first_time": first.built, "cached_second_time": not again.built, "latency": lat,
                        "max_abs_vs_ort": float(np.abs(ours - ref).max()), "dice_vs_ort": dice,
                        "min_dice": min(dice.values())}

            _try(report, f"trt {precision}", trt_case)

        def ort_gpu():
            from segrt.engine import load

            m = load(model, backend="ort-gpu")
            return {"latency": _latency(m.infer, x), "max_abs_vs_ort": float(np.abs(
                m.infer(x) - load(model, backend="ort").infer(x)).max())}

        _try(report, "ort-gpu", ort_gpu)

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
                        "device_output_is_cupy": isinstance(out_dev, cupy.ndarray),
                        "max_abs_vs_ort": float(np.abs(ours - ref).max()), "dice_vs_ort": dice,
                        "min_dice": min(dice.values())}

            _try(report, f"torch {precision} (3D UNet)", torch_case)

    def torch_demo_models():
        # the torch backend on the project's own models against ONNX Runtime on the CPU
        from segrt.engine import load
        from segrt.engine.check import dice_per_class

        models = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models")
        out = {}
        for name, shape in (("instruments", (1, 3, 240, 320)), ("nuclei", (1, 1, 512, 512))):
            path = os.path.join(models, f"{name}.onnx")
            x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
            m = load(path, backend="torch")
            ours, ref = m.infer(x), load(path, backend="ort").infer(x)
            ours, ref = (ours, ref) if isinstance(ref, dict) else ({"out": ours}, {"out": ref})
            row = {"latency": _latency(m.infer, x),
                   "max_rel_vs_ort": {k: float(np.abs(ours[k] - ref[k]).max() / (np.abs(ref[k]).max() + 1e-9))
                                      for k in ref}}
            if name == "instruments":
                row["dice_vs_ort"] = dice_per_class(ref["out"].argmax(1), ours["out"].argmax(1), ref["out"].shape[1])
            out[name] = row
        return out

    _try(report, "torch demo models", torch_demo_models)

    # the three stories end to end (``segrt demo``, the public command): the torch backend on the
    # GPU (device-resident pipelines) against ONNX Runtime on the CPU; the brain story also runs
    # deepbet's own PyTorch pipeline on the same GPU, and the video story runs 1080p frames
    for backend in ("torch", "ort"):
        def stories(backend=backend):
            with tempfile.TemporaryDirectory() as tmp:
                out = subprocess.run([sys.executable, "-m", "segrt", "demo", "--out", tmp, "-q", "--backend", backend,
                                      "--video-size", "1920x1080", "--video-seconds", "10"],
                                     capture_output=True, text=True, timeout=900)
                with open(os.path.join(tmp, "stories.json")) as f:
                    return {"returncode": out.returncode, **json.load(f), "tail": out.stdout[-1500:]}

        _try(report, f"stories ({backend})", stories)

    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"written: {path}")
    return report


if __name__ == "__main__":
    main()
