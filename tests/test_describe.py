"""Bring-your-own ONNX: ``segrt describe`` reads and attaches metadata on a third-party file
without PyTorch; channels-last models and softmax / sigmoid outputs run through every path as
channels-first logits would; contradictions are refused before anything runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


from segrt.cli import main  # noqa: E402
from segrt.engine import load  # noqa: E402
from segrt.engine.model_file import InvalidModelError  # noqa: E402

from conftest import keras_like_model as _keras_like  # noqa: E402


def _direct(path, nhwc):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": nhwc})[0]


def test_describe_says_what_the_graph_tells_and_what_is_missing(tmp_path, capsys):
    path = _keras_like(tmp_path / "det.onnx")
    assert main(["describe", path]) == 0
    out = capsys.readouterr().out
    assert "no segrt metadata" in out and '"layout": "channels_last"' in out and '"activation": "softmax"' in out
    assert '"in_channels": 1' in out and '"window": [64, 64]' in out and "task (one of" in out
    assert "segrt describe" in out  # the command that fixes it


def test_described_channels_last_model_runs_as_channels_first(tmp_path, capsys):
    path = _keras_like(tmp_path / "det.onnx")
    out = str(tmp_path / "det_segrt.onnx")
    assert main(["describe", path, "--task", "semantic", "--layout", "NHWC", "--classes", "background,nucleus",
                 "--normalization", "percentile:1,99.8", "--activation", "softmax", "-o", out]) == 0
    assert "wrote" in capsys.readouterr().out
    with open(path, "rb") as f:  # the input is untouched
        assert not any(p.key == "segrt" for p in onnx.load_model_from_string(f.read()).metadata_props)
    model = load(out, backend="ort")
    assert model.metadata["layout"] == "channels_last" and model.metadata["class_names"] == ["background", "nucleus"]
    x = np.random.default_rng(1).standard_normal((2, 1, 64, 64)).astype(np.float32)  # (N, C, H, W) as always
    got = model.infer(x)
    want = _direct(path, np.ascontiguousarray(x.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    assert got.shape == (2, 2, 64, 64) and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(Exception, match="expects 1 channels"):  # the channel count is checked in segrt's order
        model.infer(np.zeros((1, 3, 64, 64), np.float32))


def test_segrt_check_takes_the_argmax_over_the_class_axis(tmp_path, capsys):
    """The bug this replaces: the argmax over the height axis, Dice 0 on a real tile."""
    path = _keras_like(tmp_path / "det.onnx")
    out = str(tmp_path / "d.onnx")
    main(["describe", path, "--task", "semantic", "-o", out])
    tile = np.zeros((1, 1, 64, 64), np.float32)
    tile[0, 0, 20:40, 10:30] = 3.0
    np.save(tmp_path / "tile.npy", tile)
    assert main(["check", out, "--backends", "ort,openvino", "--inputs", str(tmp_path / "tile.npy")]) == 0
    from segrt.engine.check import _semantic_labels

    labels = _semantic_labels(load(out, backend="ort").infer(tile), load(out, backend="ort").metadata)
    assert labels.shape == (1, 64, 64) and labels[0, 30, 20] == 1 and labels[0, 0, 63] == 0


def test_a_layout_that_contradicts_the_input_is_refused(tmp_path, capsys):
    path = _keras_like(tmp_path / "det.onnx")
    with pytest.raises(InvalidModelError, match=r"layout channels_first with 1 input channel\(s\), but axis 1 holds "
                                                r"64.*segrt describe .* --layout channels_last"):
        from segrt.export.describe import attach_metadata

        attach_metadata(path, tmp_path / "bad.onnx", {"task": "semantic", "layout": "channels_first",
                                                      "in_channels": 1})
    assert not (tmp_path / "bad.onnx").exists()
    # metadata stored without a layout on a channels-last graph: refused at load, naming the fix
    stored = _keras_like(tmp_path / "stored.onnx", meta={"task": "semantic", "window": [64, 64]})
    with pytest.raises(InvalidModelError, match="it looks channels-last"):
        load(stored, backend="ort")
    assert main(["describe", path, "--task", "semantic"]) == 2  # options without -o: the model is never modified
    assert "add -o OUT.onnx" in capsys.readouterr().err


def test_a_model_read_with_wrong_axes_cannot_blow_up_memory(monkeypatch):
    """The blended scores are checked against the memory budget before they are allocated."""
    from segrt.engine import io
    from segrt.engine.sliding_window import sliding_window

    monkeypatch.setattr(io, "memory_budget", lambda: 1 << 20)
    x = np.zeros((1, 1, 64, 64), np.float32)
    with pytest.raises(MemoryError, match="1024 channels.*segrt describe"):
        sliding_window(x, (32, 32), lambda b: np.zeros((b.shape[0], 1024, 32, 32), np.float32))
    labels = sliding_window(x, (32, 32), lambda b: np.zeros((b.shape[0], 1024, 32, 32), np.float32),
                            reduce="argmax")  # labels only: fits
    assert labels.shape == (1, 64, 64)


@pytest.mark.parametrize("threshold", [0.0, 0.5])
def test_one_channel_streaming_argmax_thresholds_the_blended_score(threshold):
    """One score channel: foreground where the blended score exceeds the threshold (0 for logits,
    0.5 for sigmoid), equal to thresholding MONAI-style blended scores."""
    from segrt.engine.sliding_window import sliding_window

    rng = np.random.default_rng(3)
    x = rng.random((1, 1, 40, 52)).astype(np.float32)

    def predictor(b):
        return (b - 0.5 + threshold).astype(np.float32)

    blended = sliding_window(x, (16, 16), predictor, overlap=0.5, mode="gaussian")
    labels = sliding_window(x, (16, 16), predictor, overlap=0.5, mode="gaussian", reduce="argmax",
                            threshold=threshold)
    want = (blended[0, 0] > threshold).astype(np.uint8)
    assert 0.2 < want.mean() < 0.8
    assert (labels[0] != want).mean() < 1e-3  # the same up to float rounding at the threshold
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        sliding_window(x, (16, 16), predictor, reduce="argmax", threshold=float("nan"))


def test_parse_helpers_refuse_what_they_cannot_read():
    from segrt.export.describe import parse_layout, parse_normalization

    assert parse_layout("NDHWC") == "channels_last" and parse_layout("nchw") == "channels_first"
    assert parse_normalization("percentile:1,99.8") == {"kind": "percentile", "low": 1.0, "high": 99.8}
    assert parse_normalization("zscore:10,2") == {"kind": "zscore", "mean": 10.0, "std": 2.0}
    assert parse_normalization('{"kind": "ct", "window": [-100, 300]}')["kind"] == "ct"
    with pytest.raises(ValueError, match="layout must be"):
        parse_layout("HWC")
    with pytest.raises(ValueError, match="normalization must be"):
        parse_normalization("ct:1")
