"""Nothing the user owns is overwritten or lost: outputs that are the input, in a read-only
folder or in a format segrt cannot write are refused before any work; Ctrl-C during a video
run keeps the video and statistics so far; stale partial files of a killed run are swept."""
from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from segrt.cli import main as cli
from segrt.engine import io

cv2 = pytest.importorskip("cv2")
tifffile = pytest.importorskip("tifffile")


@pytest.fixture()
def cells(tmp_path):
    path = tmp_path / "cells.tif"
    tifffile.imwrite(path, (np.random.default_rng(0).random((96, 96)) * 200).astype(np.uint8))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from segrt.bench.synthetic import write_clip

    return write_clip(tmp_path_factory.mktemp("v") / "clip.avi", seed=3, seconds=0.4, fps=30.0, shape=(120, 160))


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_run_refuses_to_overwrite_its_input(tmp_path, cells, capsys):
    before = cells.read_bytes()
    assert cli(["run", "nuclei", str(cells), "-o", str(cells), "-q"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert cells.read_bytes() == before and _files(tmp_path) == ["cells.tif"]
    # the same file under another name (a relative path, a symlink) is the same input
    link = tmp_path / "link.tif"
    link.symlink_to(cells)
    assert cli(["run", "nuclei", str(cells), "-o", str(link), "-q"]) == 2
    assert cells.read_bytes() == before


def test_run_refuses_a_sidecar_that_is_the_input(tmp_path, capsys):
    # -o labels.tif writes labels.json beside it: an input called labels.json must survive
    src = tmp_path / "labels.json"
    src.write_text("{}")
    assert cli(["run", "nuclei", str(src), "-o", str(tmp_path / "labels.tif"), "-q"]) == 2
    assert "is the input" in capsys.readouterr().err and src.read_text() == "{}"


def test_run_refuses_a_read_only_folder_before_any_work(tmp_path, cells, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if os.fspath(p) == str(locked) else real_access(p, mode))
    assert cli(["run", "nuclei", str(cells), "-o", str(locked / "out.tif"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "cannot be written" in err and "Traceback" not in err
    assert _files(locked) == []


def test_run_refuses_an_unsupported_label_format_before_any_work(tmp_path, cells, capsys):
    assert cli(["run", "nuclei", str(cells), "-o", str(tmp_path / "out.png"), "-q"]) == 2
    assert "unsupported output format" in capsys.readouterr().err
    assert _files(tmp_path) == ["cells.tif"]


def test_video_refuses_its_source_as_output(tmp_path, clip, capsys):
    before = open(clip, "rb").read()
    assert cli(["video", "instruments", clip, "--out", clip, "-q", "--stats", str(tmp_path / "s.json")]) == 2
    assert "is the input" in capsys.readouterr().err
    assert open(clip, "rb").read() == before


@pytest.mark.parametrize("name", ["o.gif", "o.png", "o"])
def test_video_refuses_formats_it_cannot_write_before_any_work(tmp_path, clip, capsys, name):
    assert cli(["video", "instruments", clip, "--out", str(tmp_path / name), "-q",
                "--stats", str(tmp_path / "s.json")]) == 2
    assert "unsupported output format" in capsys.readouterr().err
    assert _files(tmp_path) == []  # no partial files, no statistics, nothing "wrote"


@pytest.mark.parametrize("frames", ["0", "-3"])
def test_video_refuses_max_frames_below_one(tmp_path, clip, capsys, frames):
    assert cli(["video", "instruments", clip, "--max-frames", frames, "-q", "--stats", str(tmp_path / "s.json")]) == 2
    assert "--max-frames must be a positive" in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_ctrl_c_keeps_the_video_and_statistics_so_far(tmp_path, clip):
    from segrt.engine.video import VideoPipeline

    def stop_at_five(index, overlay, labels):
        if index == 5:
            raise KeyboardInterrupt

    out = tmp_path / "overlay.avi"
    stats = VideoPipeline("models/instruments.onnx" if os.path.exists("models/instruments.onnx") else
                          os.path.join(os.path.dirname(__file__), "..", "..", "models", "instruments.onnx"),
                          backend="ort").run(clip, out=str(out), on_frame=stop_at_five)
    assert stats.interrupted and stats.frames_processed == 5
    summary = stats.summary()
    assert summary["interrupted"] is True and summary["end_to_end"]["n"] == 5
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 6  # frame 5 was written first
    assert _files(tmp_path) == ["overlay.avi"]  # committed, no partial left
    written = stats.save(tmp_path / "s.json")
    assert json.loads(open(written[0]).read())["interrupted"] is True


def test_stale_partial_files_of_a_killed_run_are_swept(tmp_path, cells):
    out = tmp_path / "labels.tif"
    stale = tmp_path / ".labels.tif.partial-abc123.tif"
    fresh = tmp_path / ".labels.tif.partial-def456.tif"  # another writer, still at work
    other = tmp_path / ".notes.txt.partial-zzz.txt"  # not an output of this run
    for p in (stale, fresh, other):
        p.write_bytes(b"half")
    old = time.time() - 2 * io.STALE_PARTIAL_S
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    assert cli(["run", "nuclei", str(cells), "-o", str(out), "-q"]) == 0
    names = _files(tmp_path)
    assert stale.name not in names and fresh.name in names and other.name in names
    assert "labels.tif" in names


def test_result_save_refuses_the_input_from_python_too(tmp_path):
    from segrt.engine.io import Volume
    from segrt.engine.volume import VolumeResult

    src = tmp_path / "case.npy"
    np.save(src, np.zeros((4, 4, 4), np.float32))
    vol = Volume.from_array(np.zeros((4, 4, 4), np.float32), source=str(src))
    result = VolumeResult(np.zeros((4, 4, 4), np.uint8), vol, ["background"], {}, {}, "ort", None, [])
    with pytest.raises(io.OutputPathError, match="is the input"):
        result.save(src)
    with pytest.raises(io.OutputPathError, match="unsupported output format"):
        result.save(tmp_path / "case.png")
