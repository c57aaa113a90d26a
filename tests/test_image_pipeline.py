"""2D semantic models in ``segrt run``: a third-party channels-last softmax model, described
once, segments TIFF (single, multi-page, OME), PNG and .npy images larger than its window;
labels equal a plain NumPy evaluation of the same network; areas in pixels and physical units."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
tifffile = pytest.importorskip("tifffile")
from scipy import ndimage  # noqa: E402

from conftest import described_nuclei_model  # noqa: E402
from segrt.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    return described_nuclei_model(tmp_path_factory.mktemp("model"))


def _blobs(shape=(150, 170), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(20, 3, shape)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for _ in range(12):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(4, 12)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 80
    return np.clip(img, 0, 255).astype(np.uint8)


def _numpy_network(img, margin=False):
    """The described model by hand: percentile normalisation, 3x3 mean (zero padding), > 0.5.
    ``margin``: also the pixels whose mean lies within float rounding of the threshold."""
    x = img.astype(np.float32)
    lo, hi = np.percentile(x, [1, 99])
    x = np.clip((x - lo) / (hi - lo), 0, 1)
    mean = ndimage.correlate(x, np.full((3, 3), 1 / 9, np.float32), mode="constant")
    labels = (mean > 0.5).astype(np.uint8)
    return (labels, np.abs(mean - 0.5) < 1e-5) if margin else labels


def _dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_run_on_a_tiff_larger_than_the_window(tmp_path, described, capsys):
    _, model = described
    img = _blobs()
    tifffile.imwrite(tmp_path / "cells.ome.tif", img, metadata={"axes": "YX", "PhysicalSizeX": 0.25,
                                                                 "PhysicalSizeY": 0.5})
    out = tmp_path / "cells_labels.tif"
    assert main(["run", model, str(tmp_path / "cells.ome.tif"), "-o", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    labels = tifffile.imread(out)
    want = _numpy_network(img)
    assert labels.shape == img.shape and labels.dtype == np.uint8
    # window seams: the zero padding of each 64 x 64 window differs from the whole image's
    assert _dice(labels == 1, want == 1) > 0.98 and (labels != want).mean() < 0.01
    summary = json.loads((tmp_path / "cells_labels.json").read_text())
    px = summary["areas_px"]["nucleus"]
    assert px == int((labels == 1).sum()) and summary["pixel_size_mm"] == [0.0005, 0.00025]
    assert summary["areas_um2"]["nucleus"] == pytest.approx(px * 0.125)
    assert "um^2" in printed and "nucleus" in printed
    with tifffile.TiffFile(out) as tif:  # the labels carry the pixel size
        assert tif.pages[0].tags["ResolutionUnit"].value == 3


def test_multi_page_png_and_npy_inputs(tmp_path, described):
    from segrt.engine.image import ImagePipeline

    _, model = described
    pages = np.stack([_blobs(seed=s) for s in (1, 2, 3)])
    tifffile.imwrite(tmp_path / "stack.tif", pages, photometric="minisblack")
    pipe = ImagePipeline(model, backend="ort")
    res = pipe.run(tmp_path / "stack.tif")
    assert res.labels.shape == pages.shape and res.pixel_size_mm is None and res.areas_mm2 is None
    for page, labels in zip(pages, res.labels):
        np.testing.assert_array_equal(labels, pipe.run(page).labels)
    import cv2

    rgb = np.repeat(pages[0][..., None], 3, axis=2)
    cv2.imwrite(str(tmp_path / "rgb.png"), rgb)
    np.testing.assert_array_equal(pipe.run(tmp_path / "rgb.png").labels, res.labels[0])  # luminance for grey
    np.save(tmp_path / "page.npy", pages[1])
    np.testing.assert_array_equal(pipe.run(tmp_path / "page.npy", pixel_size_mm=(0.001, 0.001)).labels,
                                  res.labels[1])


def test_small_images_single_window_and_refusals(tmp_path, described, capsys):
    from segrt.engine.image import ImagePipeline
    from segrt.engine.io import InputFileError

    raw, model = described
    pipe = ImagePipeline(model, backend="ort")
    img = _blobs((64, 64), seed=5)
    want, tie = _numpy_network(img, margin=True)
    got = pipe.run(img).labels
    np.testing.assert_array_equal(got[~tie], want[~tie])  # one window: exact but for ties at the threshold
    assert tie.sum() < 5
    small = _blobs((30, 40), seed=6)
    assert pipe.run(small).labels.shape == (30, 40)  # padded to the window, cropped back
    with pytest.raises(InputFileError, match="NaN or infinite"):
        pipe.run(np.full((70, 70), np.nan, np.float32))
    with pytest.raises(InputFileError, match="does not fit this 2D model with 1 input channel"):
        pipe.run(np.zeros((5, 70, 70, 2), np.float32))
    tifffile.imwrite(tmp_path / "x.tif", img)
    assert main(["run", raw, str(tmp_path / "x.tif"), "-o", str(tmp_path / "y.tif")]) == 2
    err = capsys.readouterr().err
    assert "has no segrt metadata" in err and "segrt describe" in err
    assert not (tmp_path / "y.tif").exists()


def test_run_in_bfloat16_and_a_backend_without_it(tmp_path, described, capsys):
    pytest.importorskip("openvino")
    _, model = described
    img = _blobs(seed=9)
    tifffile.imwrite(tmp_path / "x.tif", img)
    assert main(["run", model, str(tmp_path / "x.tif"), "-o", str(tmp_path / "f.tif"), "-q", "--backend",
                 "openvino"]) == 0
    assert main(["run", model, str(tmp_path / "x.tif"), "-o", str(tmp_path / "b.tif"), "-q", "--backend",
                 "openvino", "--precision", "bf16"]) == 0
    f32, bf16 = tifffile.imread(tmp_path / "f.tif"), tifffile.imread(tmp_path / "b.tif")
    assert (f32 != bf16).mean() < 0.01  # bfloat16 moves only pixels at the decision boundary
    assert main(["run", model, str(tmp_path / "x.tif"), "-o", str(tmp_path / "o.tif"), "--backend", "ort",
                 "--precision", "bf16"]) == 2
    assert "takes the options" in capsys.readouterr().err
