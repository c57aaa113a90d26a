"""Sliding-window inference: segrt against MONAI, with the same ONNX model as predictor.

1. Overhead: a small 3D UNet (built and exported to ONNX here, random weights) runs through
   onnxruntime as the predictor of both ``segrt.engine.sliding_window`` and
   ``monai.inferers.sliding_window_inference``; gaussian blending, overlap 0.5; windows of
   64 x 96 x 96 and, where the overhead shows most, 48 x 80 x 80. The time inside the ONNX
   Runtime call is the model time; overhead = (total - model) / model. Beside it, the floor:
   the bytes every window's weighted accumulate must move (prediction and weight read, output
   read and written) at this machine's memory bandwidth (a streaming add, measured here).
2. Streaming argmax: 105 classes over a 400x512x512 volume (the full float32 score map
   would be 44 GB), run in a fresh process; reports time and peak resident memory.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from segrt.bench.harness import Report, package_version

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def export_unet(path: str, channels=(8, 16, 32), in_ch=1, out_ch=3, seed=0) -> None:
    """A small 3D UNet (two poolings, skip connections) exported to ONNX with dynamic batch."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    def block(a, b):
        return nn.Sequential(nn.Conv3d(a, b, 3, padding=1), nn.InstanceNorm3d(b), nn.LeakyReLU(0.01),
                             nn.Conv3d(b, b, 3, padding=1), nn.InstanceNorm3d(b), nn.LeakyReLU(0.01))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            c0, c1, c2 = channels
            self.e0, self.e1, self.e2 = block(in_ch, c0), block(c0, c1), block(c1, c2)
            self.u1, self.d1 = nn.ConvTranspose3d(c2, c1, 2, 2), block(2 * c1, c1)
            self.u0, self.d0 = nn.ConvTranspose3d(c1, c0, 2, 2), block(2 * c0, c0)
            self.head = nn.Conv3d(c0, out_ch, 1)

        def forward(self, x):
            x0 = self.e0(x)
            x1 = self.e1(nn.functional.max_pool3d(x0, 2))
            x2 = self.e2(nn.functional.max_pool3d(x1, 2))
            y1 = self.d1(torch.cat([self.u1(x2), x1], 1))
            y0 = self.d0(torch.cat([self.u0(y1), x0], 1))
            return self.head(y0)

    model = UNet().eval()
    example = torch.zeros(1, in_ch, 32, 32, 32)
    torch.onnx.export(model, example, path, input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch", 2: "d", 3: "h", 4: "w"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)


class TimedSession:
    """An onnxruntime session as a predictor that adds up the time spent in ``run``."""

    def __init__(self, path: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.model_s = 0.0
        self.calls = 0

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        out = self.session.run(None, {self.name: batch})[0]
        self.model_s += time.perf_counter() - t
        self.calls += 1
        return out


def memory_bandwidth_gbs(n_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """This machine's memory bandwidth as a streaming add sees it (``a += b`` over arrays far
    larger than the caches: 3 bytes moved per byte of ``a``), best of ``repeats``, GB/s."""
    a = np.ones(n_bytes // 4, np.float32)
    b = np.ones(n_bytes // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a += b
        best = min(best, time.perf_counter() - t)
    return 3 * n_bytes / best / 1e9


def accumulate_bytes(roi, classes: int) -> int:
    """Bytes one window's weighted accumulate must move at least: the prediction and the weight
    read once, the output region read and written once (float32)."""
    voxels = int(np.prod(roi))
    return 4 * voxels * (classes + 1 + 2 * classes)


def run_overhead(report: Report, shape, roi, repeats: int, overlap=0.5, mode="gaussian", sw_batch_size=1,
                 bandwidth_gbs=None) -> None:
    import torch
    from monai.inferers import sliding_window_inference

    from segrt.engine import sliding_window

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "unet.onnx")
        export_unet(path)
        x = np.random.default_rng(0).standard_normal((1, 1) + tuple(shape)).astype(np.float32)
        xt = torch.from_numpy(x)
        sess = TimedSession(path)

        def monai_predictor(t):
            return torch.from_numpy(sess(t.numpy()))

        def run_segrt():
            return sliding_window(x, roi, sess, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)

        def run_monai():
            with torch.no_grad():
                return sliding_window_inference(xt, roi, sw_batch_size, monai_predictor, overlap=overlap, mode=mode)

        results = {}
        outs = {}
        for name, fn in (("segrt", run_segrt), ("monai", run_monai)):
            fn()  # warm-up (ONNX Runtime allocations, importance map cache)
        for _ in range(repeats):  # interleaved, so drifts of the machine hit both alike
            for name, fn in (("segrt", run_segrt), ("monai", run_monai)):
                sess.model_s, sess.calls = 0.0, 0
                t = time.perf_counter()
                out = fn()
                total = time.perf_counter() - t
                outs[name] = np.asarray(out)
                results.setdefault(name, []).append((total, sess.model_s, sess.calls))
        rel = float(np.abs(outs["segrt"] - outs["monai"]).max() / np.abs(outs["monai"]).max())
        windows = results["segrt"][0][2]
    row = {"case": "overhead", "volume": "x".join(map(str, shape)), "roi": "x".join(map(str, roi)),
           "overlap": overlap, "mode": mode, "sw_batch_size": sw_batch_size, "windows": windows,
           "max_rel_difference": rel}
    if bandwidth_gbs:  # the floor: every window's accumulate at this machine's memory bandwidth
        classes = outs["segrt"].shape[1]
        row["bandwidth_gbs"] = bandwidth_gbs
        row["floor_s"] = windows * accumulate_bytes(roi, classes) / (bandwidth_gbs * 1e9)
    for name, runs in results.items():
        totals = sorted(r[0] for r in runs)
        # per run: overhead = total - model of that same run; the median run is reported
        over = sorted((r[0] - r[1]) / r[1] for r in runs)
        mid = len(runs) // 2
        row[f"{name}_total_s"] = float(np.median(totals))
        row[f"{name}_model_s"] = float(np.median([r[1] for r in runs]))
        row[f"{name}_overhead_pct"] = 100 * float(over[mid])
        row[f"{name}_runs"] = [{"total_s": r[0], "model_s": r[1]} for r in runs]
    if "floor_s" in row:
        row["floor_pct_of_model"] = 100 * row["floor_s"] / row["segrt_model_s"]
        print(f"  bandwidth floor: {row['floor_s']:.3f} s ({row['floor_pct_of_model']:.2f} % of model time) at "
              f"{bandwidth_gbs:.1f} GB/s", flush=True)
    report.add(**row)
    print(f"  overhead {row['volume']} roi {row['roi']} ({windows} windows): segrt total {row['segrt_total_s']:.3f}s "
          f"model {row['segrt_model_s']:.3f}s overhead {row['segrt_overhead_pct']:.2f} %  |  MONAI total "
          f"{row['monai_total_s']:.3f}s model {row['monai_model_s']:.3f}s overhead {row['monai_overhead_pct']:.2f} %"
          f"  |  max rel diff {rel:.1e}", flush=True)


def _streaming_child(shape, roi, classes, overlap) -> dict:
    """Runs in a fresh process: the streamed argmax of a synthetic many-class predictor."""
    from segrt.bench.memory import status_kb
    from segrt.engine import sliding_window

    rng = np.random.default_rng(0)
    x = np.empty((1, 1) + tuple(shape), np.float32)
    for z in range(shape[0]):  # filled slice by slice: no float64 temporary of the volume
        x[0, 0, z] = rng.standard_normal(shape[1:], dtype=np.float32)
    slope = np.linspace(-1, 1, classes, dtype=np.float32)
    bias = (np.arange(classes) % 7).astype(np.float32) * 0.1
    buf = {}

    def predictor(batch):
        # class scores slope_c * x + bias_c, written into one reused buffer
        out = buf.get(batch.shape)
        if out is None:
            out = buf[batch.shape] = np.empty((batch.shape[0], classes) + batch.shape[2:], np.float32)
        for c in range(classes):
            np.multiply(batch[:, 0], slope[c], out=out[:, c])
            out[:, c] += bias[c]
        return out

    base_kb = status_kb("VmRSS") or 0
    t = time.perf_counter()
    labels = sliding_window(x, roi, predictor, overlap=overlap, mode="gaussian", reduce="argmax")
    seconds = time.perf_counter() - t
    # spot check: the winning class of the blended linear scores is known in closed form
    # wherever the blend of x is far from the crossing points; compare a few voxels
    return {"seconds": seconds, "peak_rss_gb": (status_kb("VmHWM") or 0) / 2**20,
            "rss_before_gb": base_kb / 2**20, "labels_dtype": str(labels.dtype),
            "labels_shape": list(labels.shape), "classes_seen": int(len(np.unique(labels[:, ::16, ::16, ::16])))}


def run_streaming(report: Report, shape, roi, classes, overlap) -> None:
    code = ("import json, sys; from segrt.bench.stitch import _streaming_child; "
            f"print(json.dumps(_streaming_child({tuple(shape)!r}, {tuple(roi)!r}, {classes}, {overlap})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"streaming case failed:\n{out.stderr[-4000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    full_gb = classes * np.prod(shape) * 4 / 1e9
    row = {"case": "streaming argmax", "volume": "x".join(map(str, shape)), "roi": "x".join(map(str, roi)),
           "overlap": overlap, "classes": classes, "full_map_gb": full_gb, **res}
    report.add(**row)
    print(f"  streaming argmax {row['volume']} x {classes} classes (full map {full_gb:.0f} GB): "
          f"{res['seconds']:.1f}s, peak RSS {res['peak_rss_gb']:.2f} GB (process, input included)", flush=True)


def main(argv=None) -> Report:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench stitch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small volumes, one repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-streaming", action="store_true", help="skip the 105-class streaming case")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/stitch.json)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = os.path.join(RESULTS, "stitch_quick.json" if args.quick else "stitch.json")
    report = Report("stitch", path=args.out)
    for p in ("monai", "torch", "onnxruntime", "onnx"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append("Model time: seconds inside InferenceSession.run, summed over the windows of one run; "
                        "overhead: (total - model) / model of the same run, median over runs (segrt and MONAI "
                        "interleaved). Peak RSS of the streaming case: the whole process (input volume included).")
    print("sliding-window inference, segrt vs MONAI (same ONNX Runtime predictor)", flush=True)
    bandwidth = memory_bandwidth_gbs()
    report.machine["memory_bandwidth_gbs"] = bandwidth
    print(f"  memory bandwidth (streaming add): {bandwidth:.1f} GB/s", flush=True)
    if args.quick:
        run_overhead(report, (40, 64, 64), (32, 48, 48), 1, bandwidth_gbs=bandwidth)
        if not args.no_streaming:
            run_streaming(report, (64, 96, 96), (32, 48, 48), 105, 0.25)
    else:
        run_overhead(report, (80, 200, 200), (64, 96, 96), args.repeats, bandwidth_gbs=bandwidth)
        # small windows and a cheap model: where the per-window overhead shows most
        run_overhead(report, (80, 200, 200), (48, 80, 80), args.repeats, bandwidth_gbs=bandwidth)
        if not args.no_streaming:
            run_streaming(report, (400, 512, 512), (128, 128, 128), 105, 0.25)
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
