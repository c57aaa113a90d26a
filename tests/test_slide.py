"""Chunked whole-slide inference on Dask: equal to the whole image bit for bit (objects on every
seam and corner, objects wider than a chunk), lazy zarr / OME-Zarr / tiled TIFF reading, exact
statistics, outputs and refusals. All traffic on the loopback."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest
from conftest import TargetModel

from segrt.engine import io
from segrt.engine.instances import InstancePipeline

distributed = pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")
NUCLEI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "nuclei.onnx")
SEAM = 256  # the chunk side these tests use (two 128 px tiles)


def seam_image(shape=(768, 1024), seam=SEAM, seed=0) -> np.ndarray:
    """Fluorescence-like nuclei, uint8: one on every chunk corner, a row of them along every
    seam, and some anywhere."""
    rng = np.random.default_rng(seed)
    H, W = shape
    yy, xx = np.mgrid[:H, :W]
    img = rng.normal(20, 4, shape)
    centres = [(y, x) for y in range(0, H + 1, seam) for x in range(0, W + 1, seam)]
    centres += [(y, x) for y in range(seam, H, seam) for x in range(32, W, 64)]
    centres += [(y, x) for x in range(seam, W, seam) for y in range(32, H, 64)]
    centres += [tuple(v) for v in rng.uniform(0, 1, (60, 2)) * (H, W)]
    for cy, cx in centres:
        cy, cx = cy + rng.normal(0, 2), cx + rng.normal(0, 2)
        a, b, t = rng.uniform(6, 12), rng.uniform(5, 10), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(t) + dx * np.sin(t)) / a
        v = (-dy * np.sin(t) + dx * np.cos(t)) / b
        img += 150 * np.exp(-0.5 * (u * u + v * v) ** 2)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                       dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def image():
    return seam_image()


@pytest.fixture(scope="module")
def whole(image):
    return InstancePipeline(NUCLEI, backend="ort", tile=128).run(image)


def _same(result, reference):
    np.testing.assert_array_equal(result["points"], reference.points)
    np.testing.assert_array_equal(result["scores"], reference.scores)
    np.testing.assert_array_equal(result["dists"], reference.dists)
    np.testing.assert_array_equal(result["labels"], reference.labels)


def test_chunks_equal_the_whole_image_with_objects_on_every_seam(tmp_path, client, image, whole):
    from segrt.engine.slide import segment_slide

    out = tmp_path / "nuclei.zarr"
    res = segment_slide(NUCLEI, image, out, chunk=SEAM, tile=128, client=client, backend="ort", progress=False,
                        return_labels=True)
    assert res["chunks"] == 3 * 4 and res["objects"] == len(whole.points) > 100
    _same(res, whole)
    # every seam and corner has objects, labelled as the whole image labels them
    for y in range(SEAM, 768, SEAM):
        assert len(np.unique(whole.labels[y - 1:y + 1])) > 8
    for x in range(SEAM, 1024, SEAM):
        assert len(np.unique(whole.labels[:, x - 1:x + 1])) > 6
    assert whole.labels[SEAM - 1:SEAM + 1, SEAM - 1:SEAM + 1].any()
    # every chunk certified at the first margin (4 longest rays + 24 px)
    assert list(res["nms_margins_px"].values()) == [12]
    # the files: labels in zarr, and the tables the whole image's save writes, byte for byte
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], whole.labels)
    whole.save(tmp_path / "whole.tif")
    for suffix in (".csv", ".geojson"):
        assert (tmp_path / f"nuclei{suffix}").read_bytes() == (tmp_path / f"whole{suffix}").read_bytes()
    summary = json.loads((tmp_path / "nuclei.json").read_text())
    assert summary["objects"] == len(whole.points) and summary["chunk"] == SEAM
    assert set(summary["timings_s"]) >= {"statistics", "inference", "nms", "render", "total"}
    assert not [p for p in os.listdir(tmp_path) if ".partial" in p]


def test_objects_wider_than_a_chunk_widen_the_margin(client):
    """A perfect network (StarDist's targets of the labels) on objects up to 114 px wide in
    32 px chunks: the certificate sends the chunks near the big object to wider margins, and
    the result is still the whole image's."""
    from skimage.draw import ellipse

    from segrt.engine.slide import segment_slide

    lab = np.zeros((120, 156), np.uint16)
    lab[ellipse(60, 72, 42, 57, shape=lab.shape)] = 1
    lab[ellipse(18, 138, 9, 12, shape=lab.shape)] = 2
    lab[ellipse(102, 18, 8, 8, shape=lab.shape)] = 3
    lab[ellipse(111, 138, 6, 9, shape=lab.shape)] = 4
    model = TargetModel(2, 32, context=120)
    img = lab.astype(np.float32)
    whole = InstancePipeline(model, tile=32).run(img)
    res = segment_slide(model, img, None, chunk=32, tile=32, client=client, progress=False, return_labels=True)
    _same(res, whole)
    assert len(whole.points) == 4
    # a first margin far too small: the certificate doubts the chunks near the big object
    res = segment_slide(model, img, None, chunk=32, tile=32, client=client, progress=False, return_labels=True,
                        nms_margin=8)
    _same(res, whole)
    margins = sorted(int(m) for m in res["nms_margins_px"])
    assert len(margins) > 1  # some chunks needed a wider margin than the first


def seam_volume(shape=(64, 96, 96), seam=32, seed=0) -> np.ndarray:
    """A label volume (as float32, the input of ``TargetModel``): ellipsoids of 4-7 voxel radii
    on every chunk corner (so on every seam and face too) and some anywhere."""
    rng = np.random.default_rng(seed)
    lab = np.zeros(shape, np.uint16)
    zz, yy, xx = np.mgrid[tuple(slice(0, n) for n in shape)]
    corners = [(z, y, x) for z in range(0, shape[0] + 1, seam) for y in range(0, shape[1] + 1, seam)
               for x in range(0, shape[2] + 1, seam)]
    for k, c in enumerate(corners + [tuple(v) for v in rng.uniform(0, 1, (12, 3)) * shape], 1):
        c, r = np.asarray(c) + rng.normal(0, 1.5, 3), rng.uniform(4, 7, 3)
        inside = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2 <= 1
        lab[inside & (lab == 0)] = k
    return lab.astype(np.float32)


@pytest.mark.parametrize("nms_margin", [None, 6])
def test_volume_chunks_equal_the_whole_volume_with_objects_on_every_seam(tmp_path, client, nms_margin):
    """A 3D star-convex model over a zarr volume in 32-voxel chunks, objects on every seam and
    corner: points, scores, rays, labels and the objects table of the whole-volume run, bit for
    bit (StarDist's sphere scale measured over the whole volume's candidates; a first margin
    far too small widens until the certificate holds)."""
    from segrt.engine.slide import segment_slide

    vol = seam_volume()
    model = TargetModel(3, 32, context=16)
    whole = InstancePipeline(model, tile=32).run(vol)
    assert len(whole.points) >= 40
    if nms_margin is not None:
        res = segment_slide(model, vol, None, chunk=32, tile=32, client=client, progress=False, return_labels=True,
                            nms_margin=nms_margin)
        _same(res, whole)
        assert res["chunks"] == 2 * 3 * 3 and min(map(int, res["nms_margins_px"])) > 6  # every chunk widened
        assert res["rows"] == whole.objects()
        return
    zarr.open_array(str(tmp_path / "vol.zarr"), mode="w", shape=vol.shape, chunks=(16, 32, 32),
                    dtype=vol.dtype)[:] = vol
    out = tmp_path / "nuclei.zarr"
    res = segment_slide(model, str(tmp_path / "vol.zarr"), out, chunk=32, tile=32, client=client, progress=False)
    assert res["objects"] == len(whole.points) and len(res["sphere_scale"]) == 3
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], whole.labels)
    whole.save(tmp_path / "whole.tif")
    assert (tmp_path / "nuclei.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert sorted(os.listdir(tmp_path)) == sorted(["vol.zarr", "nuclei.zarr", "nuclei.csv", "nuclei.json", "whole.tif",
                                                   "whole.csv", "whole.json"])


def _write_ome_zarr(path, img, axes=("c", "y", "x")):
    root = zarr.open_group(str(path), mode="w")
    data = img if img.ndim == len(axes) else img[None]
    root.create_array("0", shape=data.shape, chunks=(1,) * (data.ndim - 2) + (200, 200), dtype=data.dtype)[:] = data
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": a} for a in axes],
                                  "datasets": [{"path": "0"}]}]


def test_ome_zarr_and_tiled_tiff_read_lazily(tmp_path, client):
    import tifffile

    from segrt.engine.slide import LazyImage, segment_slide

    img = seam_image((512, 640), seed=3)
    ref = InstancePipeline(NUCLEI, backend="ort", tile=128).run(img)
    _write_ome_zarr(tmp_path / "slide.ome.zarr", img)
    tifffile.imwrite(tmp_path / "slide.tif", img, tile=(128, 128))
    zarr.open_array(str(tmp_path / "plain.zarr"), mode="w", shape=img.shape, chunks=(100, 300), dtype=img.dtype)[:] = img
    for source in ("slide.ome.zarr", "slide.tif", "plain.zarr"):
        lazy = LazyImage(tmp_path / source)
        assert lazy.shape == img.shape and lazy.channels == 1
        np.testing.assert_array_equal(lazy.read((slice(10, 50), slice(600, 640)))[0], img[10:50, 600:640])
        res = segment_slide(NUCLEI, tmp_path / source, None, chunk=SEAM, tile=128, client=client, backend="ort",
                            progress=False, return_labels=True)
        _same(res, ref)


def test_slide_statistics_are_the_whole_images():
    from segrt.engine import preprocess
    from segrt.engine.slide import LazyImage, slide_statistics

    rng = np.random.default_rng(1)

    class Probe:
        in_channels = 1
        meta = {"normalization": {"kind": "percentile", "low": 1.0, "high": 99.8}}

    images = [rng.normal(0, 3, (97, 131)).astype(np.float32), rng.integers(0, 4000, (97, 131)).astype(np.uint16),
              np.full((97, 131), 7, np.uint8), rng.integers(0, 255, (97, 131, 3)).astype(np.uint8)]
    for img in images:
        lazy = LazyImage(img)
        boxes = [(slice(y, y + 40), slice(x, x + 50)) for y in range(0, 97, 40) for x in range(0, 131, 50)]
        stats = slide_statistics(Probe, lazy, boxes, lambda fn, bs: [fn(b) for b in bs])
        plane = preprocess.image_planes(img, 2, 1, "array")[0]
        assert stats == [preprocess.percentile_stats(plane, Probe.meta["normalization"])]
        assert stats[0]["low"] == pytest.approx(np.percentile(plane, 1.0), abs=1e-6)
        assert stats[0]["high"] == pytest.approx(np.percentile(plane, 99.8), abs=1e-6)


def test_refusals(tmp_path, client, image):
    from segrt.engine.slide import LazyImage, segment_slide

    with pytest.raises(io.InputFileError, match="no such file"):
        LazyImage(tmp_path / "missing.zarr")
    (tmp_path / "empty.zarr").mkdir()
    with pytest.raises(io.InputFileError, match="zarr"):
        LazyImage(tmp_path / "empty.zarr")
    _write_ome_zarr(tmp_path / "movie.ome.zarr", np.zeros((2, 64, 64), np.uint8), axes=("t", "y", "x"))
    with pytest.raises(io.InputFileError, match="axis 't' has length 2"):
        LazyImage(tmp_path / "movie.ome.zarr")
    with pytest.raises(io.OutputPathError, match=".zarr"):
        segment_slide(NUCLEI, image, tmp_path / "labels.tif", client=client, progress=False)
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(io.OutputPathError, match="exists"):
        segment_slide(NUCLEI, image, tmp_path / "taken.zarr", client=client, progress=False)
    assert os.listdir(tmp_path / "taken.zarr") == []
    with pytest.raises(io.InputFileError, match=r"\(D, H, W\)"):
        segment_slide(TargetModel(3, 16, context=8), np.zeros((64, 64), np.float32), None, client=client,
                      progress=False)
    with pytest.raises(io.InputFileError, match="channel"):
        segment_slide(NUCLEI, np.zeros((300, 300, 2), np.uint8), None, client=client, progress=False)
    with pytest.raises(ValueError, match="chunk"):
        segment_slide(NUCLEI, image, None, chunk=0, client=client, progress=False)


def test_a_failing_chunk_fails_the_slide_and_leaves_no_output(tmp_path, client):
    from segrt.engine.slide import segment_slide

    class Broken(TargetModel):
        def infer(self, batch):
            out = super().infer(batch)
            out["dist"][...] = np.nan
            return out

    lab = np.zeros((96, 96), np.uint16)
    lab[40:60, 40:60] = 1
    with pytest.raises(ValueError, match="NaN"):
        segment_slide(Broken(2, 8, context=16), lab.astype(np.float32), tmp_path / "out.zarr", chunk=32, tile=32,
                      client=client, progress=False)
    assert os.listdir(tmp_path) == []


def test_objects_csv_counts_every_pixel(tmp_path, client, image, whole):
    """The objects table's areas and centroids come from the rendered chunks: they add up."""
    from segrt.engine.slide import segment_slide

    segment_slide(NUCLEI, image, tmp_path / "n.zarr", chunk=512, tile=128, client=client, backend="ort",
                  progress=False)
    with open(tmp_path / "n.csv") as f:
        rows = list(csv.DictReader(f))
    assert sum(int(r["area"]) for r in rows) == int((whole.labels > 0).sum())


def test_segrt_run_on_a_zarr_slide(tmp_path, capsys):
    """`segrt run MODEL slide.zarr` chunks the slide on its own local cluster (2 workers)."""
    from segrt.cli import main

    img = seam_image((512, 512), seed=4)
    zarr.open_array(str(tmp_path / "slide.zarr"), mode="w", shape=img.shape, chunks=(256, 256), dtype=img.dtype)[:] = img
    out = tmp_path / "labels.zarr"
    assert main(["run", NUCLEI, str(tmp_path / "slide.zarr"), "-o", str(out), "--chunk", "256", "--tile", "128",
                 "--workers", "2", "--backend", "ort", "-q"]) == 0
    text = capsys.readouterr().out
    assert "4 chunks of 256 px" in text and "peak memory per worker" in text
    ref = InstancePipeline(NUCLEI, backend="ort", tile=128).run(img)
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], ref.labels)
    summary = json.loads((tmp_path / "labels.json").read_text())
    assert summary["worker_peak_rss_mb"] > 50 and summary["objects"] == len(ref.points)
    assert main(["run", NUCLEI, str(tmp_path / "labels.csv"), "--chunk", "256"]) != 0
    assert "--chunk, --workers and --scheduler run a slide in chunks" in capsys.readouterr().err


def test_segrt_run_on_a_zarr_volume_with_a_3d_star_convex_model(tmp_path, capsys):
    """`segrt run MODEL volume.zarr` with a 3D star-convex .onnx model (the workers load the
    file): the labels and objects of InstancePipeline on the whole volume."""
    from segrt.bench.slide_volume import blob_volume, star3d_model
    from segrt.cli import main

    model = star3d_model(str(tmp_path / "star3d.onnx"))
    blob_volume(str(tmp_path / "vol.zarr"), (32, 48, 64), seed=2)
    vol = zarr.open_array(str(tmp_path / "vol.zarr"), mode="r")[:]
    out = tmp_path / "cells.zarr"
    assert main(["run", model, str(tmp_path / "vol.zarr"), "-o", str(out), "--chunk", "32", "--tile", "32",
                 "--backend", "ort", "-q"]) == 0
    assert "4 chunks of 32 px" in capsys.readouterr().out
    ref = InstancePipeline(model, backend="ort", tile=32).run(vol)
    assert len(ref.points) > 10
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], ref.labels)
    ref.save(tmp_path / "whole.tif")
    assert (tmp_path / "cells.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not (tmp_path / "cells.geojson").exists()


def test_a_worker_killed_mid_slide_changes_nothing(tmp_path, image, whole):
    """A worker SIGKILLed while it infers a chunk: Dask recomputes what it held (every task's
    inputs are the slide on disk and held results), the labels are still the whole image's."""
    import signal
    import threading
    import time

    from segrt.engine.slide import segment_slide

    zarr.open_array(str(tmp_path / "s.zarr"), mode="w", shape=image.shape, chunks=(256, 256),
                    dtype=image.dtype)[:] = image
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        result = {}
        runner = threading.Thread(target=lambda: result.update(segment_slide(
            NUCLEI, tmp_path / "s.zarr", tmp_path / "out.zarr", chunk=SEAM, tile=128, client=client, backend="ort",
            progress=False)))
        runner.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            for address, keys in client.processing().items():
                if any(str(k).startswith("segrt-infer-") for k in keys):
                    killed = address
            time.sleep(0.05)
        assert killed is not None, "no chunk was ever inferred"
        pid = client.run(os.getpid, workers=[killed])[killed]
        time.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=300)
        assert not runner.is_alive()
    assert result["objects"] == len(whole.points)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:], whole.labels)


# ---- 2D semantic models -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def semantic_model(tmp_path_factory):
    """A 2D semantic model (64 px window, percentile normalisation, a 3x3 convolution with zero
    padding, so every window's edge shows in its scores)."""
    from conftest import described_nuclei_model

    return described_nuclei_model(tmp_path_factory.mktemp("semantic"))[1]


def test_semantic_chunks_equal_the_whole_image(tmp_path, client, image, semantic_model):
    """Chunks that are no multiple of the window (so windows straddle every seam): labels, zarr
    output and pixel counts equal ImagePipeline on the whole image, bit for bit."""
    from segrt.engine.image import ImagePipeline
    from segrt.engine.slide import segment_semantic_chunked

    whole = ImagePipeline(semantic_model, backend="ort").run(image)
    assert 0 < (whole.labels == 1).mean() < 0.5
    got = segment_semantic_chunked(semantic_model, image, None, chunk=200, client=client, backend="ort", progress=False,
                                 return_labels=True)
    np.testing.assert_array_equal(got["labels"], whole.labels)
    assert got["chunks"] == 4 * 6 and got["labels"].dtype == whole.labels.dtype
    src = tmp_path / "slide.zarr"
    zarr.open_array(str(src), mode="w", shape=image.shape, chunks=(128, 128), dtype=image.dtype)[:] = image
    out = tmp_path / "classes.zarr"
    summary = segment_semantic_chunked(semantic_model, str(src), out, chunk=300, client=client, backend="ort",
                                     progress=False)
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], whole.labels)
    written = json.loads((tmp_path / "classes.json").read_text())
    assert written["pixels"] == {"nucleus": int((whole.labels == 1).sum())} == summary["pixels"]
    assert written["worker_peak_rss_mb"] > 50 and sorted(os.listdir(tmp_path)) == ["classes.json", "classes.zarr",
                                                                                   "slide.zarr"]


def test_semantic_refusals(tmp_path, client, image, semantic_model):
    import onnx

    from segrt.engine.slide import segment_semantic_chunked

    def with_meta(name, **changes):
        model = onnx.load(semantic_model)
        entry = next(p for p in model.metadata_props if p.key == "segrt")
        entry.value = json.dumps({**json.loads(entry.value), **changes})
        path = str(tmp_path / name)
        onnx.save(model, path)
        return path

    with pytest.raises(ValueError, match="clean-up .*keep_largest.* run it whole"):
        segment_semantic_chunked(with_meta("post.onnx", postprocess={"keep_largest": {"1": 1}}), image, None,
                               client=client, progress=False)
    with pytest.raises(ValueError, match="fits the whole image"):
        segment_semantic_chunked(with_meta("fit.onnx", resize="fit"), image, None, client=client, progress=False)
    with pytest.raises(ValueError, match="own statistics"):
        segment_semantic_chunked(with_meta("z.onnx", normalization={"kind": "zscore"}), image, None, client=client,
                               progress=False)
    with pytest.raises(ValueError, match="not larger than the model's window"):
        segment_semantic_chunked(semantic_model, image[:64, :64], None, client=client, progress=False)
    with pytest.raises(io.OutputPathError, match=".zarr"):
        segment_semantic_chunked(semantic_model, image, tmp_path / "labels.tif", client=client, progress=False)
    with pytest.raises(io.InputFileError, match="channel"):
        segment_semantic_chunked(semantic_model, np.zeros((300, 300, 2), np.uint8), None, client=client,
                               progress=False)
    assert sorted(os.listdir(tmp_path)) == ["fit.onnx", "post.onnx", "z.onnx"]


def test_segrt_run_on_a_zarr_slide_with_a_semantic_model(tmp_path, capsys, semantic_model):
    from segrt.cli import main
    from segrt.engine.image import ImagePipeline

    img = seam_image((320, 400), seed=5)
    zarr.open_array(str(tmp_path / "slide.zarr"), mode="w", shape=img.shape, chunks=(160, 200),
                    dtype=img.dtype)[:] = img
    out = tmp_path / "labels.zarr"
    assert main(["run", semantic_model, str(tmp_path / "slide.zarr"), "-o", str(out), "--chunk", "150",
                 "--backend", "ort", "-q"]) == 0
    text = capsys.readouterr().out
    assert "nucleus" in text and "9 chunks of 150 px" in text
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:],
                                  ImagePipeline(semantic_model, backend="ort").run(img).labels)
    assert main(["run", semantic_model, str(tmp_path / "slide.zarr"), "-o", str(tmp_path / "b.zarr"), "--tile",
                 "64"]) != 0
    assert "apply to star-convex models" in capsys.readouterr().err


def test_a_failing_semantic_chunk_fails_the_slide_and_leaves_no_output(tmp_path, client):
    from segrt.engine.slide import segment_semantic_chunked

    class NaNScores:
        metadata = {"task": "semantic", "window": [32, 32], "class_names": ["background", "cell"]}
        backend = "test"

        def infer(self, batch):
            out = np.zeros((batch.shape[0], 2) + batch.shape[2:], np.float32)
            out[:, 1, 5, 5] = np.nan
            return out

    with pytest.raises(ValueError, match="NaN or infinite"):
        segment_semantic_chunked(NaNScores(), np.zeros((80, 100), np.float32), tmp_path / "out.zarr", chunk=40,
                               client=client, progress=False)
    assert os.listdir(tmp_path) == []


def _conv3d_model(path, window=(16, 20, 24), mirror=False):
    """A 3D semantic ONNX model: class 1 where the 3x3x3 mean (zero padding, so each window's
    edge shows) of the normalised input exceeds 0.5; percentile normalisation."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from segrt.engine import metadata as md

    w = np.zeros((2, 1, 3, 3, 3), np.float32)
    w[1] = 1 / 27
    b = np.array([0.0, -0.5], np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["scores"], pads=[1] * 6)], "conv3d",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["n", 2, "d", "h", "w"])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sw = {"overlap": 0.5, "mode": "gaussian", **({"placement": "nnunet", "mirror_axes": [0, 2]} if mirror else {})}
    meta = {"task": "semantic", "window": list(window), "class_names": ["background", "cell"],
            "normalization": {"kind": "percentile", "low": 1.0, "high": 99.0}, "sliding_window": sw}
    entry = model.metadata_props.add()
    entry.key, entry.value = md.KEY, md.to_json(meta)
    onnx.save(model, str(path))
    return str(path)


def _blobs_3d(shape, seed=0):
    rng = np.random.default_rng(seed)
    vol = rng.normal(20, 4, shape)
    zz, yy, xx = np.mgrid[tuple(slice(0, n) for n in shape)]
    for _ in range(25):
        c, r = rng.uniform(0, 1, 3) * shape, rng.uniform(2, 5)
        vol += 120 * (((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) < r * r)
    return vol.astype(np.float32)


@pytest.mark.parametrize("mirror", [False, True])
def test_semantic_volume_chunks_equal_the_whole_volume(tmp_path, client, mirror):
    """A 3D semantic model over a zarr volume in chunks (no multiple of the window, windows on
    every seam and corner; nnU-Net's placement and mirroring too): the labels of VolumePipeline
    on the whole volume, bit for bit."""
    from segrt.cli import main
    from segrt.engine.slide import segment_semantic_chunked
    from segrt.engine.volume import VolumePipeline

    model = _conv3d_model(tmp_path / "conv3d.onnx", mirror=mirror)
    vol = _blobs_3d((40, 50, 45))
    whole = VolumePipeline(model, backend="ort").run(vol)
    assert 0.01 < (whole.labels == 1).mean() < 0.5
    got = segment_semantic_chunked(model, vol, None, chunk=18, client=client, backend="ort", progress=False,
                                   return_labels=True)
    assert got["chunks"] == 3 * 3 * 3 and got["voxels"] == {"cell": int((whole.labels == 1).sum())}
    np.testing.assert_array_equal(got["labels"], whole.labels)
    if mirror:
        return
    zarr.open_array(str(tmp_path / "vol.zarr"), mode="w", shape=vol.shape, chunks=(16, 16, 16),
                    dtype=vol.dtype)[:] = vol
    out = tmp_path / "cells.zarr"
    assert main(["run", model, str(tmp_path / "vol.zarr"), "-o", str(out), "--chunk", "25", "--backend", "ort",
                 "-q"]) == 0
    np.testing.assert_array_equal(zarr.open_array(str(out), mode="r")[:], whole.labels)
    assert json.loads((tmp_path / "cells.json").read_text())["voxels"] == got["voxels"]
    zarr.open_array(str(tmp_path / "plane.zarr"), mode="w", shape=(60, 60), dtype=np.float32)[:] = 1
    with pytest.raises(io.InputFileError, match="expected a volume"):
        segment_semantic_chunked(model, str(tmp_path / "plane.zarr"), None, client=client, progress=False)
