"""The star-convex instance pipeline: the demo nuclei model on StarDist's DSB image (held-out
AP), exact tiling, big objects across tiles, 3D, outputs and refusals."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from conftest import TargetModel

from segrt.engine.instances import InstancePipeline
from segrt.engine.volume import ModelTaskError

stardist = pytest.importorskip("stardist")
NUCLEI = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "nuclei.onnx")


@pytest.fixture(scope="module")
def dsb():
    from stardist.data import test_image_nuclei_2d

    return test_image_nuclei_2d(return_mask=True)


@pytest.fixture(scope="module")
def whole(dsb):
    return InstancePipeline(NUCLEI, backend="ort").run(dsb[0])


def test_nuclei_model_on_the_held_out_half(dsb, whole):
    from stardist.matching import matching

    _, gt = dsb
    m = matching(gt[:, 256:], whole.labels[:, 256:], thresh=0.5)
    # the model card's figure is 0.88 (StarDist's AP definition, TP / (TP + FP + FN))
    assert m.accuracy >= 0.85, m
    assert m.f1 >= 0.92, m


@pytest.mark.parametrize("backend", ["ort", "openvino"])
@pytest.mark.parametrize("tile", [64, 200])
def test_tiled_equals_untiled(dsb, whole, backend, tile):
    ref = whole if backend == "ort" else InstancePipeline(NUCLEI, backend=backend).run(dsb[0])
    tiled = InstancePipeline(NUCLEI, backend=backend, tile=tile).run(dsb[0])
    assert tiled.tiles > 1
    np.testing.assert_array_equal(tiled.points, ref.points)
    np.testing.assert_array_equal(tiled.labels, ref.labels)


def test_objects_larger_than_a_tile_are_found_once(dsb):
    from skimage.draw import ellipse

    lab = np.zeros((200, 260), np.uint16)
    lab[ellipse(100, 120, 70, 95, shape=lab.shape)] = 1  # 190 px wide: several 32 px tiles
    lab[ellipse(30, 230, 15, 20, shape=lab.shape)] = 2
    lab[ellipse(170, 30, 12, 12, shape=lab.shape)] = 3
    model = TargetModel(2, 32, context=200)
    whole = InstancePipeline(model, tile=512).run(lab.astype(np.float32))
    tiled = InstancePipeline(model, tile=32).run(lab.astype(np.float32))
    assert tiled.tiles == 7 * 9
    assert len(whole.points) == 3
    np.testing.assert_array_equal(tiled.points, whole.points)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    from stardist.matching import matching

    assert matching(lab, tiled.labels, thresh=0.5).f1 == 1.0


def test_3d_stack_tiled_equals_untiled_and_finds_every_nucleus():
    from stardist.data import test_image_nuclei_3d
    from stardist.matching import matching

    _, gt = test_image_nuclei_3d(return_mask=True)
    model = TargetModel(3, 64, context=40)
    whole = InstancePipeline(model, tile=128).run(gt.astype(np.float32))
    tiled = InstancePipeline(model, tile=(16, 32, 32)).run(gt.astype(np.float32))
    assert tiled.tiles == 2 * 2 * 2
    np.testing.assert_array_equal(tiled.points, whole.points)
    np.testing.assert_array_equal(tiled.labels, whole.labels)
    m = matching(gt, whole.labels, thresh=0.5)
    assert m.fp == 0 and m.f1 >= 0.9, m  # the misses are nuclei cut by the volume's border
    rows = whole.objects()
    assert len(rows) == len(whole.points) and "volume" in rows[0] and "centroid_z" in rows[0]


def test_outputs_labels_geojson_csv(tmp_path, whole):
    import tifffile

    written = whole.save(tmp_path / "nuclei.tif")
    assert sorted(os.path.basename(p) for p in written) == ["nuclei.csv", "nuclei.geojson", "nuclei.json",
                                                            "nuclei.tif"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "nuclei.tif"), whole.labels)
    assert (tmp_path / "nuclei.geojson").read_text() == json.dumps(whole.geojson())  # written feature by feature
    gj = json.loads((tmp_path / "nuclei.geojson").read_text())
    assert gj["type"] == "FeatureCollection" and len(gj["features"]) == len(whole.points)
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == whole.dists.shape[1] + 1
    # the polygon surrounds its point (x, y + 0.5 in QuPath's frame)
    y, x = whole.points[0]
    xs, ys = zip(*ring)
    assert min(xs) < x + 0.5 < max(xs) and min(ys) < y + 0.5 < max(ys)
    with open(tmp_path / "nuclei.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(whole.points)
    first = rows[0]
    assert int(first["id"]) == 1 and float(first["score"]) == pytest.approx(float(whole.scores[0]), abs=1e-5)
    assert int(first["area"]) == int((whole.labels == 1).sum())
    assert float(first["centroid_y"]) == pytest.approx(np.argwhere(whole.labels == 1)[:, 0].mean(), abs=1e-3)


def test_refusals(tmp_path, dsb):
    with pytest.raises(Exception, match="channel|shape"):
        InstancePipeline(NUCLEI, backend="ort").run(np.zeros((64, 64, 5), np.float32))
    with pytest.raises(ModelTaskError, match="volume pipeline"):
        model = TargetModel(2, 8, 0)
        model.metadata = {"task": "semantic"}
        InstancePipeline(model)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    from segrt.engine.io import InputFileError

    with pytest.raises(InputFileError, match="broken.png"):
        InstancePipeline(NUCLEI, backend="ort").run(str(bad))


def test_cli_run_on_a_png(tmp_path, dsb, capsys):
    import cv2

    from segrt.cli import main

    img = dsb[0]
    png = tmp_path / "dsb.png"
    cv2.imwrite(str(png), (img / img.max() * 255).astype(np.uint8))
    out = tmp_path / "out" / "dsb_nuclei.tif"
    assert main(["run", NUCLEI, str(png), "-o", str(out), "--backend", "ort", "-q"]) == 0
    assert "objects" in capsys.readouterr().out
    assert out.is_file() and (tmp_path / "out" / "dsb_nuclei.geojson").is_file()


@pytest.mark.parametrize("shape", [(509, 507), (512, 512)])
def test_tiles_normalised_and_padded_one_at_a_time_equal_the_whole(dsb, shape):
    # odd sizes: the network's divisor pads the image, each tile pads itself the same way
    img = np.ascontiguousarray(dsb[0][: shape[0], : shape[1]])
    whole = InstancePipeline(NUCLEI, backend="ort").run(img)
    tiled = InstancePipeline(NUCLEI, backend="ort", tile=128).run(img)
    assert tiled.tiles == 16 and whole.tiles == 1
    np.testing.assert_array_equal(tiled.points, whole.points)
    np.testing.assert_array_equal(tiled.labels, whole.labels)


class _DeviceModel:
    """A stand-in for a GPU backend (torch, trt): takes and returns device arrays."""

    DEVICE_ARRAYS = True

    def __init__(self, model):
        self.model, self.metadata, self.backend = model, model.metadata, "torch"

    def infer(self, batch):
        return self.model.infer(np.asarray(batch))


@pytest.mark.cuda
def test_pipeline_on_the_device_equals_the_host_run(dsb):
    """device="cuda" (the simulator here): one upload, tiles, prob / dist, GPU NMS and rendering
    in device memory, one download; the same objects as the host run."""
    from segrt.engine import load

    img = np.ascontiguousarray(dsb[0][336:376, 72:112])  # a few nuclei (the simulator is slow), 2 x 2 tiles
    host = InstancePipeline(NUCLEI, backend="ort", tile=32, prob_thresh=0.8).run(img)
    pipe = InstancePipeline(_DeviceModel(load(NUCLEI, backend="ort")), tile=32, prob_thresh=0.8)
    assert pipe.device == "cuda"
    res = pipe.run(img)
    assert len(host.points) >= 2 and res.tiles == host.tiles == 4
    np.testing.assert_array_equal(res.points, host.points)
    np.testing.assert_array_equal(res.labels, host.labels)
    assert isinstance(res.labels, np.ndarray) and {"upload [GPU]", "normalize [GPU]", "infer [GPU]", "nms [GPU]",
                                                   "render [GPU]"} <= set(res.timings)
