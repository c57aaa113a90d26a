"""Whole slides in chunks: `segrt run` on a zarr slide with 1 and 2 Dask workers against the
whole image in one process (InstancePipeline, the same tiles; ImagePipeline for a semantic
model), seconds and peak memory per process, the labels compared bit for bit.

The slides are generated (fluorescence-like nuclei, one on every chunk corner and rows of
them along every seam, uint8, written to zarr in 512 px chunks) and segmented by the demo
nuclei model through ONNX Runtime with 512 px tiles and 2048 px chunks. The whole-image run
reads the slide into memory first (its time includes that read); the chunked runs read it
lazily. The semantic rows run a small 2D UNet (random weights, 256 px window, overlap 0.5,
gaussian blending; made here) over the same slides. Each run is a fresh process (peak memory
is the process's own: Linux's VmHWM); the chunked runs' figure is the largest worker's and the
driver's apart. The cluster's start-up is timed apart.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from segrt.bench.harness import Report, package_version

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "nuclei.onnx")
CHUNK, TILE = 2048, 512


def seam_slide(path: str, side: int, seam: int = CHUNK, seed: int = 0) -> None:
    """A side x side uint8 zarr slide of nuclei, written band by band (never whole in memory)."""
    import zarr

    rng = np.random.default_rng(seed)
    arr = zarr.open_array(path, mode="w", shape=(side, side), chunks=(512, 512), dtype=np.uint8)
    centres = [(y, x) for y in range(0, side + 1, seam) for x in range(0, side + 1, seam)]
    centres += [(y, x) for y in range(seam, side, seam) for x in range(32, side, 64)]
    centres += [(y, x) for x in range(seam, side, seam) for y in range(32, side, 64)]
    centres += [tuple(v) for v in rng.uniform(0, side, (side * side // 6000, 2))]  # about 1 nucleus per 6000 px
    centres = np.asarray(centres, np.float64) + rng.normal(0, 2, (len(centres), 2))
    shapes = np.column_stack([rng.uniform(6, 12, len(centres)), rng.uniform(5, 10, len(centres)),
                              rng.uniform(0, np.pi, len(centres))])
    band = 512
    for y0 in range(0, side, band):
        img = rng.normal(20, 4, (band, side))
        yy, xx = np.mgrid[y0:y0 + band, 0:side]
        near = np.flatnonzero((centres[:, 0] > y0 - 40) & (centres[:, 0] < y0 + band + 40))
        for k in near:
            (cy, cx), (a, b, t) = centres[k], shapes[k]
            r0, r1 = int(max(y0, cy - 40)), int(min(y0 + band, cy + 40))
            c0, c1 = int(max(0, cx - 40)), int(min(side, cx + 40))
            if r1 <= r0 or c1 <= c0:
                continue
            dy, dx = yy[r0 - y0:r1 - y0, c0:c1] - cy, xx[r0 - y0:r1 - y0, c0:c1] - cx
            u = (dy * np.cos(t) + dx * np.sin(t)) / a
            v = (-dy * np.sin(t) + dx * np.cos(t)) / b
            img[r0 - y0:r1 - y0, c0:c1] += 150 * np.exp(-0.5 * (u * u + v * v) ** 2)
        arr[y0:y0 + band] = np.clip(img, 0, 255).astype(np.uint8)


_WHOLE = """
import json, sys, time
import numpy as np, zarr
from segrt.engine.instances import InstancePipeline
from segrt.engine.slide import _peak_rss_mb
slide, out = sys.argv[1], sys.argv[2]
t = time.perf_counter()
image = zarr.open_array(slide, mode="r")[:]
res = InstancePipeline(sys.argv[3], backend="ort", tile=int(sys.argv[4])).run(image)
seconds = time.perf_counter() - t
np.save(out, res.labels)
print(json.dumps({"seconds": seconds, "objects": int(len(res.points)), "timings": res.timings,
                  "peak_rss_mb": _peak_rss_mb()}))
"""

_CHUNKED = """
import json, sys, time
import distributed
from segrt.engine.slide import segment_slide
if __name__ == "__main__":
    slide, out, model, tile, chunk, workers = sys.argv[1:7]
    t = time.perf_counter()
    with distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        startup = time.perf_counter() - t
        s = segment_slide(model, slide, out, chunk=int(chunk), tile=int(tile), client=client, backend="ort",
                          progress=False)
    print(json.dumps({"startup_s": startup, "seconds": s["timings_s"]["total"], "objects": s["objects"],
                      "timings": s["timings_s"], "worker_peak_rss_mb": s["worker_peak_rss_mb"],
                      "driver_peak_rss_mb": s["driver_peak_rss_mb"], "nms_margins_px": s["nms_margins_px"]}))
"""


_WHOLE_SEMANTIC = """
import json, sys, time
import zarr
from segrt.engine.image import ImagePipeline
from segrt.engine.slide import _peak_rss_mb
import numpy as np
slide, out, model = sys.argv[1:4]
t = time.perf_counter()
image = zarr.open_array(slide, mode="r")[:]
res = ImagePipeline(model, backend="ort").run(image)
seconds = time.perf_counter() - t
np.save(out, res.labels)
print(json.dumps({"seconds": seconds, "timings": res.timings, "peak_rss_mb": _peak_rss_mb()}))
"""

_CHUNKED_SEMANTIC = """
import json, sys, time
import distributed
from segrt.engine.slide import segment_semantic_chunked
if __name__ == "__main__":
    slide, out, model, chunk, workers = sys.argv[1:6]
    t = time.perf_counter()
    with distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        startup = time.perf_counter() - t
        s = segment_semantic_chunked(model, slide, out, chunk=int(chunk), client=client, backend="ort", progress=False)
    print(json.dumps({"startup_s": startup, "seconds": s["timings_s"]["total"], "timings": s["timings_s"],
                      "worker_peak_rss_mb": s["worker_peak_rss_mb"], "driver_peak_rss_mb": s["driver_peak_rss_mb"]}))
"""


def semantic_unet(path: str, window: int = 256, seed: int = 0) -> str:
    """A small 2D UNet (8 / 16 channels, one pooling), random weights, exported with segrt
    metadata (semantic, background / nucleus, percentile normalisation)."""
    import torch
    from torch import nn

    from segrt.export import to_onnx

    torch.manual_seed(seed)

    def block(a, b):
        return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.e0, self.e1 = block(1, 8), block(8, 16)
            self.up, self.d0 = nn.ConvTranspose2d(16, 8, 2, 2), block(16, 8)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x0 = self.e0(x)
            x1 = self.e1(nn.functional.max_pool2d(x0, 2))
            return self.head(self.d0(torch.cat([self.up(x1), x0], 1)))

    meta = {"task": "semantic", "window": [window, window], "class_names": ["background", "nucleus"],
            "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8}}
    return to_onnx(UNet().eval(), np.zeros((1, 1, window, window), np.float32), path, metadata=meta,
                   check_shapes=[]).path


def _python(code: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _semantic_rows(report: Report, tmp: str, slide: str, side: int) -> None:
    import zarr

    model = os.path.join(tmp, "unet2d.onnx")
    if not os.path.exists(model):
        semantic_unet(model)
    whole = _python(_WHOLE_SEMANTIC, slide, os.path.join(tmp, "whole_sem.npy"), model)
    ref = np.load(os.path.join(tmp, "whole_sem.npy"))
    report.add(case=f"{side} x {side}, whole image", model="2D UNet (semantic)", side=side, workers=0,
               seconds=whole["seconds"], startup_s=0.0, peak_rss_mb=whole["peak_rss_mb"], driver_peak_rss_mb=None,
               identical=True)
    print(f"  {side}^2 semantic whole: {whole['seconds']:.1f} s, {whole['peak_rss_mb']:.0f} MB", flush=True)
    for workers in (1, 2):
        out = os.path.join(tmp, f"sem{side}_{workers}.zarr")
        res = _python(_CHUNKED_SEMANTIC, slide, out, model, CHUNK, workers)
        same = bool(np.array_equal(zarr.open_array(out, mode="r")[:], ref))
        report.add(case=f"{side} x {side}, chunks, {workers} worker(s)", model="2D UNet (semantic)", side=side,
                   workers=workers, seconds=res["seconds"], startup_s=res["startup_s"],
                   peak_rss_mb=res["worker_peak_rss_mb"], driver_peak_rss_mb=res["driver_peak_rss_mb"],
                   identical=same, timings=res["timings"])
        print(f"  {side}^2 semantic chunked, {workers} worker(s): {res['seconds']:.1f} s, worker "
              f"{res['worker_peak_rss_mb']:.0f} MB, driver {res['driver_peak_rss_mb']:.0f} MB, identical {same}",
              flush=True)
        if not same:
            raise RuntimeError("chunked semantic labels differ from the whole image's")


def instance_rows(report: Report, tmp: str, source: str, label: str, model_path: str, tile: int, chunk: int,
                  whole_name: str = "image", **fields) -> None:
    """Rows for a star-convex model over ``source`` (a zarr slide or volume): the whole image in
    one process, then chunked with 1 and 2 workers, the labels compared bit for bit."""
    import zarr

    whole = _python(_WHOLE, source, os.path.join(tmp, "whole.npy"), model_path, tile)
    ref = np.load(os.path.join(tmp, "whole.npy"))
    report.add(case=f"{label}, whole {whole_name}", **fields, workers=0, objects=whole["objects"],
               seconds=whole["seconds"], startup_s=0.0, peak_rss_mb=whole["peak_rss_mb"], driver_peak_rss_mb=None,
               identical=True, timings=whole["timings"])
    print(f"  {label} whole: {whole['seconds']:.1f} s, {whole['peak_rss_mb']:.0f} MB", flush=True)
    for workers in (1, 2):
        out = os.path.join(tmp, f"labels_{workers}_{os.path.basename(source)}")
        res = _python(_CHUNKED, source, out, model_path, tile, chunk, workers)
        same = bool(np.array_equal(zarr.open_array(out, mode="r")[:], ref))
        report.add(case=f"{label}, chunks, {workers} worker(s)", **fields, workers=workers, objects=res["objects"],
                   seconds=res["seconds"], startup_s=res["startup_s"], peak_rss_mb=res["worker_peak_rss_mb"],
                   driver_peak_rss_mb=res["driver_peak_rss_mb"], identical=same, timings=res["timings"],
                   nms_margins_px=res["nms_margins_px"])
        print(f"  {label} chunked, {workers} worker(s): {res['seconds']:.1f} s, worker "
              f"{res['worker_peak_rss_mb']:.0f} MB, driver {res['driver_peak_rss_mb']:.0f} MB, identical {same}",
              flush=True)
        if not same:
            raise RuntimeError(f"chunked labels differ from the whole image's ({label})")


def main(argv=None) -> Report:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench slide", description=__doc__.split("\n\n")[0])
    ap.add_argument("--sides", default="2048,4096", help="slide sides in pixels (comma-separated)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/slide.json)")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(RESULTS, "slide.json")
    report = Report("slide", path=args.out)
    for p in ("dask", "distributed", "zarr", "onnxruntime"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append(f"Demo nuclei model (ONNX Runtime), tiles {TILE} px, chunks {CHUNK} px. 'seconds': the whole "
                        "run (the whole-image row includes reading the slide into memory; chunked rows exclude the "
                        "cluster's start-up, in 'startup_s'). Peak memory: VmHWM of each process; for chunked "
                        "runs the largest worker's and the driver's. 'identical': labels equal to the whole "
                        "image's bit for bit. Semantic rows ('2D UNet (semantic)'): a small 2D UNet made here (random "
                        "weights, 256 px window, overlap 0.5, gaussian), whole image = ImagePipeline, chunked = "
                        "segment_semantic_chunked with the same 2048 px chunks.")
    print("whole slides in chunks", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for side in (int(v) for v in args.sides.split(",")):
            slide = os.path.join(tmp, f"slide{side}.zarr")
            seam_slide(slide, side)
            instance_rows(report, tmp, slide, f"{side} x {side}", MODEL, TILE, CHUNK, model="nuclei (star-convex)",
                          side=side)
            _semantic_rows(report, tmp, slide, side)
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
