"""Shared fixtures. Tests marked ``gpu`` skip where CuPy finds no CUDA device; the ``cuda``
parameters of the parity tests run on a GPU where there is one, else in Numba's CUDA
simulator (NumPy arrays), which this file turns on before anything imports Numba."""
from __future__ import annotations

import functools
import importlib.util
import os

import json

import numpy as np
import pytest


def _real_gpu() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


if not _real_gpu():
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


@functools.lru_cache(maxsize=1)
def _cuda_runnable() -> bool:
    """A GPU, or the simulator with numba-cuda installed."""
    if _real_gpu():
        return True
    try:
        import numba.cuda  # noqa: F401
    except Exception:
        return False
    return os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


@functools.lru_cache(maxsize=1)
def _gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.fixture(autouse=True, scope="session")
def _cache_key_outside_the_home(tmp_path_factory):
    """segrt's cache-signing key lives in the user's config folder; the tests use their own."""
    import os

    previous = os.environ.get("SEGRT_KEY_FILE")
    os.environ["SEGRT_KEY_FILE"] = str(tmp_path_factory.mktemp("key") / "cache.key")
    yield
    if previous is None:
        os.environ.pop("SEGRT_KEY_FILE", None)
    else:
        os.environ["SEGRT_KEY_FILE"] = previous


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="no CUDA device visible to CuPy")
    skip_cuda = pytest.mark.skip(reason="neither a CUDA device nor numba-cuda's simulator")
    for item in items:
        if "gpu" in item.keywords and not _gpu_available():
            item.add_marker(skip_gpu)
        elif "cuda" in item.keywords and not _cuda_runnable():
            item.add_marker(skip_cuda)


@functools.lru_cache(maxsize=None)
def dsb_targets_2d(n_rays: int = 32):
    """GT-derived 'perfect prediction' targets of StarDist's DSB 2018 test image."""
    stardist = pytest.importorskip("stardist")
    from stardist.data import test_image_nuclei_2d

    _, mask = test_image_nuclei_2d(return_mask=True)
    prob = stardist.edt_prob(mask).astype(np.float32)
    dist = stardist.star_dist(mask, n_rays)
    return mask, prob, dist


@functools.lru_cache(maxsize=None)
def nuclei_targets_3d(n_rays: int = 96, anisotropy=None):
    stardist = pytest.importorskip("stardist")
    from stardist.data import test_image_nuclei_3d

    _, mask = test_image_nuclei_3d(return_mask=True)
    rays = stardist.Rays_GoldenSpiral(n_rays, anisotropy=anisotropy)
    prob = stardist.edt_prob(mask, anisotropy=anisotropy).astype(np.float32)
    dist = stardist.star_dist3D(mask, rays)
    return mask, prob, dist, rays


def add_noise(prob, dist, seed, kind="mult"):
    """Mild noise on perfect targets: N(0, 0.05) on prob; 5 % multiplicative or 1 px
    absolute on the rays (absolute noise makes small polygons spiky)."""
    rng = np.random.default_rng(seed)
    p = np.clip(prob + rng.normal(0, 0.05, prob.shape).astype(np.float32), 0, 1)
    if kind == "mult":
        d = dist * (1 + rng.normal(0, 0.05, dist.shape).astype(np.float32))
    else:
        d = np.maximum(dist + rng.normal(0, 1.0, dist.shape).astype(np.float32), 0)
    return p, d.astype(np.float32)


def fast_devices(implementations: dict) -> list:
    """pytest params for an op's fast implementations (every entry of its dispatch table but the
    reference): ``test_matches_reference[cpu]``, and ``[cuda]`` (a GPU, or the simulator)."""
    return [pytest.param(d, marks=pytest.mark.cuda) if d == "cuda" else d
            for d in implementations if d != "reference"]


def described_nuclei_model(folder):
    """``keras_like_model`` described with ``segrt describe`` as a 2D semantic model (background,
    nucleus; percentile normalisation): (raw path, described path)."""
    from segrt.cli import main

    raw = keras_like_model(os.path.join(folder, "det.onnx"))
    out = os.path.join(folder, "det_segrt.onnx")
    assert main(["describe", raw, "--task", "semantic", "--classes", "background,nucleus", "--normalization",
                 "percentile:1,99", "-o", out]) == 0
    return raw, out


def keras_like_model(path, *, size=64, classes=2, activation="Softmax", batch="N", meta=None):
    """A channels-last network as Keras / TensorFlow export them: (N, H, W, 1) in, per-pixel
    class probabilities (N, H, W, C) out, no segrt metadata. Its logits: a 3x3 convolution;
    the last class wins where the local mean exceeds 0.5."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((classes, 1, 3, 3), np.float32)
    w[-1] = 1 / 9
    b = np.zeros(classes, np.float32)
    b[-1] = -0.5
    nodes = [helper.make_node("Transpose", ["image"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["nchw", "w", "b"], ["logits"], pads=[1, 1, 1, 1]),
             helper.make_node(activation, ["logits"], ["scores"], **({"axis": 1} if activation == "Softmax" else {})),
             helper.make_node("Transpose", ["scores"], ["probs"], perm=[0, 2, 3, 1])]
    graph = helper.make_graph(
        nodes, "keras_like",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, size, size, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, size, size, classes])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if meta is not None:
        entry = model.metadata_props.add()
        entry.key, entry.value = "segrt", json.dumps(meta)
    onnx.save(model, str(path))
    return str(path)


class TargetModel:
    """A stand-in network whose prob / dist are StarDist's targets of its input (a label image):
    what a perfect network with a receptive field of ``context`` pixels would predict."""

    def __init__(self, ndim, n_rays, context, grid=None):
        self.ndim, self.n_rays = ndim, n_rays
        self.metadata = {"task": f"star-convex-{ndim}d", "in_channels": 1, "context": context,
                         "star": {"n_rays": n_rays, "prob_thresh": 0.5, "nms_thresh": 0.4}, "outputs": ["prob", "dist"],
                         "normalization": {"kind": "none"}}
        self.backend = "targets"
        self.calls = 0
        if ndim == 3:
            from stardist import Rays_GoldenSpiral

            self.rays = Rays_GoldenSpiral(n_rays)

    def infer(self, batch):
        from stardist import edt_prob, star_dist, star_dist3D

        self.calls += 1
        lab = np.rint(batch[0, 0]).astype(np.uint16)
        prob = edt_prob(lab).astype(np.float32)
        dist = (star_dist(lab, self.n_rays, mode="cpp") if self.ndim == 2 else
                star_dist3D(lab, self.rays, mode="cpp")).astype(np.float32)
        return {"prob": prob[None, None], "dist": np.moveaxis(dist, -1, 0)[None]}
