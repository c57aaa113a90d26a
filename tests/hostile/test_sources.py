"""Hostile video sources: a stream server that accepts and never answers costs the timeout,
once; a missing file, a camera that is not there and bad options are clear errors."""
from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("cv2")
from segrt.cli import main as cli  # noqa: E402
from segrt.engine.video import SourceError, open_source  # noqa: E402


@pytest.fixture()
def silent_server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            accepted.append(conn)  # held open, never answered

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}/live.mjpg", accepted
    srv.close()
    for c in accepted:
        c.close()


def test_a_silent_stream_costs_the_timeout_once(silent_server):
    url, accepted = silent_server
    t0 = time.perf_counter()
    with pytest.raises(SourceError, match=r"cannot open this stream.*no answer within 1.5 s"):
        open_source(url, timeout=1.5)
    took = time.perf_counter() - t0
    assert took < 10, took  # FFmpeg's own wait is 30 s, twice before
    assert len(accepted) == 1  # opened once, not retried through another backend


def test_the_cli_honours_its_timeout(silent_server, tmp_path, capsys):
    url, accepted = silent_server
    assert cli(["video", "instruments", url, "--timeout", "1", "-q", "--stats", str(tmp_path / "s.json")]) == 2
    assert "no answer within 1 s" in capsys.readouterr().err and len(accepted) == 1


@pytest.mark.parametrize("spec, kwargs, error, match", [
    ("missing.avi", {}, SourceError, "no such video file"),
    ("http://127.0.0.1:1/x", {"timeout": 0}, ValueError, "timeout must be"),
    ("http://127.0.0.1:1/x", {"timeout": float("nan")}, ValueError, "timeout must be"),
    ("clip.avi", {"decode_threads": -1}, ValueError, "decode_threads"),
])
def test_bad_sources_and_options(tmp_path, monkeypatch, spec, kwargs, error, match):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=match):
        open_source(spec, **kwargs)


def test_a_file_that_is_not_a_video(tmp_path):
    (tmp_path / "notes.avi").write_text("not a video")
    with pytest.raises(SourceError, match="not a video OpenCV can decode"):
        open_source(str(tmp_path / "notes.avi"))
