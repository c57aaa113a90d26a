"""Hostile model files, metadata and studies: each refused with a message that names the file
and the problem (never a traceback, never a silent wrong result)."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
nib = pytest.importorskip("nibabel")
from onnx import TensorProto, helper  # noqa: E402

from segrt.cli import main as cli  # noqa: E402
from segrt.engine import InferenceError, InvalidModelError, ModelTaskError, load  # noqa: E402
from segrt.engine import metadata as md  # noqa: E402


def _model(path, *, shape=(1, 1, 8, 8, 8), meta=None, raw_meta=None, op="Identity", outputs=("y",)):
    """A one-node ONNX model (Identity by default) with segrt metadata as given."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))
    ys = [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(shape)) for n in outputs]
    nodes = [helper.make_node(op, ["x"], [n]) for n in outputs]
    graph = helper.make_graph(nodes, "g", [x], ys)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    text = raw_meta if raw_meta is not None else (json.dumps(meta) if meta is not None else None)
    if text is not None:
        helper.set_model_props(model, {md.KEY: text})
    onnx.save(model, str(path))
    return str(path)


SEMANTIC = {"task": "semantic", "window": [8, 8, 8], "class_names": ["background", "organ"]}


@pytest.mark.parametrize("meta, match", [
    ({**SEMANTIC, "spacing": [float("inf"), 1.0, 1.0]}, "spacing.*finite positive number"),
    ({**SEMANTIC, "spacing": [float("nan"), 1.0, 1.0]}, "spacing.*finite positive number"),
    ({**SEMANTIC, "window": [100000, 100000, 100000], "resize": "fit"}, "window.*at most 4096"),
    ({**SEMANTIC, "normalization": {"kind": "ct", "window": [float("-inf"), 100]}}, "finite number"),
])
def test_absurd_metadata_values_are_refused_with_the_field_named(tmp_path, meta, match):
    path = _model(tmp_path / "m.onnx", raw_meta=json.dumps(meta))  # json writes Infinity / NaN as given
    with pytest.raises(md.MetadataError, match=match):
        load(path, backend="ort")


def test_metadata_nested_too_deep_names_the_file(tmp_path):
    path = _model(tmp_path / "deep.onnx", raw_meta="[" * 100_000 + "]" * 100_000)
    with pytest.raises(md.MetadataError, match=r"deep.onnx: segrt metadata nests too deeply"):
        load(path, backend="ort")


def test_metadata_outputs_missing_from_the_graph_are_named(tmp_path):
    path = _model(tmp_path / "m.onnx", meta={**SEMANTIC, "outputs": ["prob", "dist"]})
    with pytest.raises(InvalidModelError, match=r"names outputs \['prob', 'dist'\].*graph's outputs are \['y'\]"):
        load(path, backend="ort")


def test_a_window_beyond_the_memory_budget_is_refused_before_running(tmp_path, monkeypatch):
    from segrt.engine.volume import VolumePipeline

    monkeypatch.setenv("SEGRT_MEMORY_BUDGET", "1G")
    from segrt.engine.io import InputFileError

    path = _model(tmp_path / "m.onnx", shape=(1, 1, "d", "h", "w"),
                  meta={**SEMANTIC, "window": [4000, 4000, 40], "resize": "fit"})
    with pytest.raises(InputFileError, match="metadata window.*memory budget"):
        VolumePipeline(path, backend="ort")


def test_a_window_the_graph_contradicts_is_refused_at_load(tmp_path):
    from segrt.engine import load
    from segrt.engine.model_file import InvalidModelError

    path = _model(tmp_path / "m.onnx", meta={**SEMANTIC, "window": [16, 8, 8]})
    with pytest.raises(InvalidModelError, match=r"window \[16, 8, 8\], but the spatial axes hold \(8, 8, 8\).*"
                                                r"--window"):
        load(path, backend="ort")


def test_check_on_a_model_that_takes_no_images_says_so(tmp_path, capsys):
    path = _model(tmp_path / "r1.onnx", shape=(4,))
    assert cli(["check", path, "--backends", "ort"]) == 2
    assert "rank 1" in capsys.readouterr().err
    from segrt.engine.check import check

    with pytest.raises(ModelTaskError, match="has rank 1"):
        check(path, backends=("ort",))


def test_a_runtime_failure_is_wrapped_with_the_model_and_backend_named(tmp_path):
    # Reshape to a fixed size that only fits some batches: ONNX Runtime fails inside run()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])
    shape = helper.make_tensor("s", TensorProto.INT64, [2], [1, 16])
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "s"], ["y"])], "g", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "r.onnx"))
    m = load(tmp_path / "r.onnx", backend="ort")
    assert m.infer(np.zeros((1, 1, 4, 4), np.float32)).shape == (1, 16)
    with pytest.raises(InferenceError, match=r"r.onnx: the ort backend failed on a batch of shape \(2, 1, 4, 4\)"):
        m.infer(np.zeros((2, 1, 4, 4), np.float32))


@pytest.mark.parametrize("array, match", [
    (np.zeros((16, 16, 16), np.float32), "every voxel holds the same value"),
    (np.full((16, 16, 16), np.nan, np.float32), "every voxel is NaN or infinite"),
    (np.full((16, 16, 16), np.inf, np.float32), "every voxel is NaN or infinite"),
    (np.ones((1, 1, 1), np.float32), "1 x 1 x 1 voxels is too small"),
    (np.ones((1, 30, 30), np.float32), "too small"),
])
def test_blank_or_degenerate_studies_are_refused(tmp_path, capsys, array, match):
    path = _model(tmp_path / "m.onnx", meta=SEMANTIC)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(tmp_path / "study.nii.gz"))
    assert cli(["run", path, str(tmp_path / "study.nii.gz"), "-o", str(tmp_path / "out.nii.gz"), "-q",
                "--backend", "ort"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_study_with_some_nan_voxels_runs_and_says_so(tmp_path):
    from segrt.engine.volume import VolumePipeline

    path = _model(tmp_path / "m.onnx", meta=SEMANTIC, shape=(1, 1, 8, 8, 8))
    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    vol[0, 0, :3] = np.nan
    result = VolumePipeline(path, backend="ort").run(vol)
    assert any("3 NaN / infinite voxel(s) set to 0" in n for n in result.notes)


def test_an_image_with_nan_pixels_counts_the_pixels_of_the_file(tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    img = (np.random.default_rng(0).random((100, 100)) * 200).astype(np.float32)
    img[:10, :10] = np.nan
    tifffile.imwrite(tmp_path / "img.tif", img)
    assert cli(["run", "nuclei", str(tmp_path / "img.tif"), "-o", str(tmp_path / "o.tif"), "-q"]) == 2
    assert "100 of its 10000 values are NaN or infinite (the first at (0, 0))" in capsys.readouterr().err


@pytest.mark.parametrize("tile", ["1", "8"])
def test_tiny_tiles_are_refused(tmp_path, capsys, tile):
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(tmp_path / "img.tif", np.zeros((64, 64), np.uint8))
    assert cli(["run", "nuclei", str(tmp_path / "img.tif"), "-o", str(tmp_path / "o.tif"), "-q", "--tile", tile]) == 2
    assert "tile must be at least 16 pixels" in capsys.readouterr().err


@pytest.mark.parametrize("scores, match", [
    (np.full((3, 4, 4, 4), np.nan, np.float32), "NaN or infinite score"),
    (np.zeros((0, 4, 4, 4), np.float32), "no class channels"),
])
def test_a_model_returning_nan_or_no_channels_is_an_error_not_background(scores, match):
    from segrt.engine.preprocess import labels_from_scores

    with pytest.raises(ValueError, match=match):
        labels_from_scores(scores)


def test_a_fitted_model_returning_nan_stops_the_volume_pipeline(tmp_path):
    from segrt.engine.volume import VolumePipeline

    class NanModel:
        metadata = {**SEMANTIC, "resize": "fit"}
        backend = "test"
        path = "nan-model"

        def infer(self, batch):
            return np.full((1, 2) + batch.shape[2:], np.nan, np.float32)

    vol = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="NaN or infinite score"):
        VolumePipeline(NanModel()).run(vol)


def test_a_study_of_another_modality_is_refused_and_a_ct_model_notes_non_hu_values(tmp_path):
    import os
    import sys

    from segrt.engine import io
    from segrt.engine.volume import VolumePipeline

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from test_volume import _write_series

    path = _model(tmp_path / "ct.onnx", meta={**SEMANTIC, "modality": "CT"})
    _write_series(tmp_path / "mr", np.random.default_rng(0).uniform(0, 500, (8, 8, 8)).astype(np.float32),
                  np.eye(4), shuffle=False)
    for f in os.listdir(tmp_path / "mr"):  # relabel the series as MR
        import pydicom

        ds = pydicom.dcmread(tmp_path / "mr" / f)
        ds.Modality = "MR"
        ds.save_as(tmp_path / "mr" / f)
    assert io.read_volume(tmp_path / "mr").modality == "MR"
    pipe = VolumePipeline(path, backend="ort")
    with pytest.raises(ModelTaskError, match="a MR study, but .*ct.onnx was trained on CT"):
        pipe.run(str(tmp_path / "mr"))
    # a NIfTI says nothing of its modality: values that cannot be HU get a note
    vol = np.random.default_rng(1).uniform(0, 800, (8, 8, 8)).astype(np.float32)
    result = pipe.run(vol)
    assert any("no voxel is below -500" in n for n in result.notes)
    with pytest.raises(md.MetadataError, match="modality"):
        md.validate({**SEMANTIC, "modality": "computed tomography"})
