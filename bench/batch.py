"""Batch throughput: `segrt batch` on a local Dask cluster of 1 and 2 worker processes, against
the same studies run one after another in one process (what a loop over `segrt run`'s
function does without Dask), studies per minute.

The studies are generated volumes (a bright sphere in noise, 96 x 128 x 128 voxels) segmented
by a small 3D UNet (exported here with random weights, metadata attached) through ONNX
Runtime: the model is small, so per-study overheads (reading, writing, scheduling) show as
they would for the cheap models batches are usually run with. The cluster's start-up (its
processes, the model loaded once per worker) is timed apart from the studies.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from segrt.bench.harness import Report, package_version

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _model(folder: str) -> str:
    from segrt.bench.stitch import export_unet
    from segrt.export.describe import attach_metadata

    raw = os.path.join(folder, "unet.onnx")
    export_unet(raw, out_ch=2)
    out = os.path.join(folder, "unet_segrt.onnx")
    attach_metadata(raw, out, {"task": "semantic", "class_names": ["background", "sphere"], "window": [64, 64, 64],
                               "spacing": [1.0, 1.0, 1.0], "normalization": {"kind": "zscore"}})
    return out


def _studies(folder: str, n: int, shape=(96, 128, 128)) -> list:
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
    paths = []
    for i in range(n):
        vol = rng.normal(0, 1, shape).astype(np.float32)
        c = rng.integers(30, 60, 3)
        vol[(zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 20 ** 2] += 3
        p = os.path.join(folder, f"study{i:03d}.npy")
        np.save(p, vol)
        paths.append(p)
    return paths


def _sequential(model_path, studies, outdir) -> float:
    from segrt.engine.model import load
    from segrt.engine.study import segment_study

    model = load(model_path, backend="ort")
    t = time.perf_counter()
    for s in studies:
        segment_study(model, s, folder=outdir, spacing=(1.0, 1.0, 1.0))
    return time.perf_counter() - t


def _batch(model_path, studies, outdir, workers: int) -> tuple:
    import distributed

    from segrt.engine.batch import run_batch

    t = time.perf_counter()
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        startup = time.perf_counter() - t
        report = run_batch(model_path, studies, outdir, client=client, backend="ort", progress=False,
                           options={"spacing": (1.0, 1.0, 1.0)})
    if report["summary"]["done"] != len(studies):
        raise RuntimeError(f"the batch finished {report['summary']['done']} of {len(studies)} studies")
    return startup, report["summary"]["seconds"]


def main(argv=None) -> Report:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench batch", description=__doc__.split("\n\n")[0])
    ap.add_argument("--studies", type=int, default=16)
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/batch.json)")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(RESULTS, "batch.json")
    report = Report("batch", path=args.out)
    for p in ("dask", "distributed", "onnxruntime"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append("Studies per minute over 'seconds': from run_batch's start (the model loaded once per worker "
                        "included) to its last study; the cluster's start-up apart in 'startup_s'; each worker "
                        "process runs one study at a time with its host's cores shared among the workers; "
                        "sequential: one process, ONNX Runtime on all cores, model loaded before timing.")
    print("segrt batch throughput", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = _model(tmp)
        studies = _studies(tmp, args.studies)
        seconds = _sequential(model, studies, os.path.join(tmp, "seq"))
        report.add(case="sequential (one process)", studies=len(studies), startup_s=0.0, seconds=seconds,
                   studies_per_minute=60 * len(studies) / seconds)
        print(f"  sequential: {60 * len(studies) / seconds:.1f} studies/min", flush=True)
        for workers in (1, 2):
            startup, seconds = _batch(model, studies, os.path.join(tmp, f"w{workers}"), workers)
            report.add(case=f"segrt batch, {workers} worker(s)", studies=len(studies), startup_s=startup,
                       seconds=seconds, studies_per_minute=60 * len(studies) / seconds)
            print(f"  {workers} worker(s): {60 * len(studies) / seconds:.1f} studies/min "
                  f"(start-up {startup:.1f} s)", flush=True)
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
