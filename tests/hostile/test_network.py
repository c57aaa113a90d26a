"""No network, ever, at run time: ``segrt run`` and ``segrt video`` with every Python route to
the network recorded and refused (in the process and in any child it forks), and the user's
home left untouched (OpenVINO's and ONNX Runtime's telemetry write there)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

GUARD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netguard.py")


def _run_guarded(tmp_path, *args):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    log = tmp_path / "network.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORT_", "OPENVINO"))}
    env["HOME"] = str(home)
    env.pop("XDG_CACHE_HOME", None)
    out = subprocess.run([sys.executable, GUARD, str(log), *args], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    attempts = log.read_text() if log.exists() else ""
    written = sorted(str(p.relative_to(home)) for p in home.rglob("*"))
    return attempts, written


@pytest.mark.parametrize("backend", ["openvino", "ort"])
def test_segrt_run_makes_no_connection_and_leaves_home_alone(tmp_path, backend):
    pytest.importorskip(backend if backend == "openvino" else "onnxruntime")
    tifffile = pytest.importorskip("tifffile")
    image = (np.random.default_rng(0).random((96, 96)) * 200).astype(np.uint8)
    tifffile.imwrite(tmp_path / "cells.tif", image)
    attempts, written = _run_guarded(tmp_path, "run", "nuclei", "cells.tif", "-o", "labels.tif", "-q",
                                     "--backend", backend)
    assert attempts == "", f"segrt tried to reach the network:\n{attempts}"
    assert written == [], f"segrt wrote into the user's home: {written}"
    assert (tmp_path / "labels.tif").is_file()


def test_segrt_video_makes_no_connection_and_leaves_home_alone(tmp_path):
    pytest.importorskip("cv2")
    from segrt.bench.synthetic import write_clip

    write_clip(tmp_path / "clip.avi", seed=1, seconds=0.3, fps=30.0, shape=(120, 160))
    attempts, written = _run_guarded(tmp_path, "video", "instruments", "clip.avi", "--out", "overlay.avi", "-q",
                                     "--stats", "stats.json")
    assert attempts == "", f"segrt tried to reach the network:\n{attempts}"
    assert written == [], f"segrt wrote into the user's home: {written}"
    assert (tmp_path / "overlay.avi").is_file() and (tmp_path / "stats.json").is_file()


def test_the_guard_sees_a_connection_attempt(tmp_path):
    # the guard itself must be able to fail: a child that resolves a name is recorded
    log = tmp_path / "log"
    code = ("import runpy, sys, socket; sys.argv = ['netguard', %r]; runpy.run_path(%r); "
            "import socket\ntry:\n    socket.getaddrinfo('example.org', 80)\nexcept OSError:\n    pass\n"
            % (str(log), GUARD))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert "getaddrinfo example.org" in log.read_text()
