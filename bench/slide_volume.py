"""Large volumes in chunks: a 3D star-convex model over a zarr volume with 1 and 2 Dask workers
(``segment_slide``, what `segrt run MODEL volume.zarr` runs) against the whole volume in one
process (InstancePipeline, the same tiles), seconds and peak memory per process, the labels
compared bit for bit.

The volumes are generated (bright blobs of 4-7 voxel radius, about one per 20^3 voxels, uint8,
zarr in 64 x 128 x 128 chunks); the model is made here (3x3x3 mean -> sigmoid for prob, every
ray 6 voxels, 32 rays, percentile normalisation: spheres on blobs, no training), run by ONNX
Runtime with 64-voxel tiles and 128-voxel chunks. The whole-volume run keeps its full prob and
ray maps ((1 + 32) floats per voxel), as InstancePipeline does in 3D; each chunk task holds its
own tiles' candidates. Each run is a fresh process (peak memory: VmHWM).
"""
from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from segrt.bench.harness import Report, package_version
from segrt.bench.slide import RESULTS, instance_rows

TILE, CHUNK = 64, 128


def star3d_model(path: str, n_rays: int = 32, radius: float = 6.0) -> str:
    """A 3D star-convex ONNX model made here (no training): prob = sigmoid(8 (3x3x3 mean of the
    normalised input - 0.5)), every ray ``radius`` voxels: spheres on bright blobs, what a
    StarDist-3D network's outputs look like to the NMS and rendering."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from segrt.engine import metadata as md

    w_prob = np.full((1, 1, 3, 3, 3), 8.0 / 27, np.float32)
    w_dist = np.zeros((n_rays, 1, 1, 1, 1), np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "wp", "bp"], ["logit"], pads=[1] * 6),
         helper.make_node("Sigmoid", ["logit"], ["prob"]),
         helper.make_node("Conv", ["image", "wd", "bd"], ["dist"])], "star3d",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["n", 1, "d", "h", "w"]),
         helper.make_tensor_value_info("dist", TensorProto.FLOAT, ["n", n_rays, "d", "h", "w"])],
        [numpy_helper.from_array(w_prob, "wp"), numpy_helper.from_array(np.array([-4.0], np.float32), "bp"),
         numpy_helper.from_array(w_dist, "wd"), numpy_helper.from_array(np.full(n_rays, radius, np.float32), "bd")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"task": "star-convex-3d", "in_channels": 1, "context": 8, "outputs": ["prob", "dist"],
            "star": {"n_rays": n_rays, "prob_thresh": 0.5, "nms_thresh": 0.4},
            "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8}}
    entry = model.metadata_props.add()
    entry.key, entry.value = md.KEY, md.to_json(meta)
    onnx.save(model, path)
    return path


def blob_volume(path: str, shape, seed: int = 0) -> None:
    """A (Z, Y, X) uint8 zarr volume of bright blobs (radius 4-7 voxels, about one per 20^3
    voxels), written slab by slab."""
    import zarr

    rng = np.random.default_rng(seed)
    arr = zarr.open_array(path, mode="w", shape=shape, chunks=(64, 128, 128), dtype=np.uint8)
    n = int(np.prod(shape) / 8000)
    centres = rng.uniform(0, 1, (n, 3)) * shape
    radii = rng.uniform(4, 7, n)
    slab = 32
    for z0 in range(0, shape[0], slab):
        vol = rng.normal(20, 4, (min(slab, shape[0] - z0),) + tuple(shape[1:]))
        for (cz, cy, cx), r in zip(centres, radii):
            if cz + r < z0 or cz - r >= z0 + vol.shape[0]:
                continue
            lo = [max(0, int(c - r)) for c in (cz - z0, cy, cx)]
            hi = [min(m, int(c + r) + 1) for c, m in zip((cz - z0, cy, cx), vol.shape)]
            zz, yy, xx = np.mgrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            ball = (zz - (cz - z0)) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]][ball] += 150
        arr[z0:z0 + vol.shape[0]] = np.clip(vol, 0, 255).astype(np.uint8)


def main(argv=None) -> Report:
    ap = argparse.ArgumentParser(prog="python -m segrt.bench slide_volume", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="128x256x256,128x384x384", help="volume shapes ZxYxX (comma-separated)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/slide_volume.json)")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(RESULTS, "slide_volume.json")
    report = Report("slide_volume", path=args.out)
    for p in ("dask", "distributed", "zarr", "onnxruntime"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append(f"3D star-convex model made here (32 rays), ONNX Runtime, tiles {TILE} voxels, chunks {CHUNK} "
                        "voxels. 'seconds': the whole run (the whole-volume row includes reading the volume; chunked "
                        "rows exclude the cluster's start-up, in 'startup_s'). Peak memory: VmHWM of each process; "
                        "for chunked runs the largest worker's and the driver's. 'identical': labels equal to the "
                        "whole volume's bit for bit.")
    print("volumes in chunks", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = star3d_model(os.path.join(tmp, "star3d.onnx"))
        for text in args.shapes.split(","):
            shape = tuple(int(v) for v in text.split("x"))
            volume = os.path.join(tmp, f"vol{text}.zarr")
            blob_volume(volume, shape)
            instance_rows(report, tmp, volume, " x ".join(map(str, shape)), model, TILE, CHUNK, "volume",
                          voxels=int(np.prod(shape)))
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
