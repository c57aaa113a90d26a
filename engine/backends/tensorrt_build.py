"""ONNX -> TensorRT engines: optimisation profiles, fp16 / int8 (entropy calibration),
timing cache, and an engine cache that never hands out a stale or foreign engine.

Written against TensorRT 10's documented Python API (``tensorrt.Builder``,
``OnnxParser``, ``IBuilderConfig``, ``IInt8EntropyCalibrator2``). TensorRT cannot be
installed on the machines this project is developed on: the calls into TensorRT here are
unverified; everything around them (cache keys, manifests, refusals, profiles, calibration
batches) is tested without it.

Cache layout (``cache_dir``): ``<key>.engine`` and ``<key>.json``, the manifest holding the
key's fields and the engine file's SHA-256, signed with this installation's key
(``segrt.engine.trust``); timing and calibration caches each with a signed record beside them. The key hashes (ONNX content incl. external data,
TensorRT version, GPU name and compute capability, precision, profiles). An engine is used
only when its manifest matches the current key and its bytes match the manifest;
deserialising an engine runs code, so a file this cache did not write is refused unless the
caller passes ``trust_foreign_engine=True``.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
import time

import numpy as np

from segrt._optional import optional_import
from segrt.engine import trust
from segrt.engine.backends.cache import (EngineTrustError, check_cache_file, engine_cache_dir, onnx_content_hash,
                                         write_cache_file)
from segrt.engine.model_file import file_sha256, inspect_model_file

__all__ = ["EngineTrustError", "EngineRecord", "build_engine", "cache_key", "profiles_for", "verify_engine_file",
           "calibration_batches", "engine_cache_dir", "gpu_identity", "check_cache_file", "write_cache_file"]

PRECISIONS = ("fp32", "fp16", "int8", "best")


@dataclasses.dataclass
class EngineRecord:
    path: str
    key: str
    built: bool  # False: served from the cache
    manifest: dict


def gpu_identity(device: int = 0) -> dict:
    """Name and compute capability of a CUDA device (through CuPy)."""
    cupy = optional_import("cupy", purpose="querying the GPU for TensorRT")
    props = cupy.cuda.runtime.getDeviceProperties(device)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"gpu": name, "compute_capability": f"{props['major']}.{props['minor']}"}


def cache_key(content_hash: str, trt_version: str, gpu: dict, precision: str, profiles) -> str:
    fields = {"onnx": content_hash, "tensorrt": trt_version, "gpu": gpu["gpu"],
              "compute_capability": gpu["compute_capability"], "precision": precision,
              "profiles": [[list(map(int, s)) for s in p] for p in profiles]}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


def profiles_for(input_shape, metadata: dict | None = None, *, batch_sizes=(1, 1, 4), window=None):
    """One (min, opt, max) optimisation profile for an (N, C, *spatial) input.

    Static axes stay as they are; a dynamic batch gets ``batch_sizes``; dynamic spatial axes
    get the window (from ``window`` or the metadata) as min = opt = max, which is what
    sliding-window inference feeds. A channels-last model's profile is in its own axis order.
    Raises ValueError when a dynamic axis has no size.
    """
    meta = metadata or {}
    win = list(window) if window is not None else meta.get("window")
    shape = list(input_shape)
    if len(shape) not in (4, 5):
        raise ValueError(f"expected an (N, C, H, W) or (N, C, D, H, W) input, got {shape}")
    last = meta.get("layout") == "channels_last"  # the graph's own order: (N, *spatial, C)
    channels, spatial = (shape[-1], shape[1:-1]) if last else (shape[1], shape[2:])
    channels = channels if channels is not None else meta.get("in_channels")
    if channels is None:
        raise ValueError("the input's channel axis is dynamic and the metadata has no in_channels")
    if any(s is None for s in spatial):
        if win is None or len(win) != len(spatial):
            raise ValueError(f"the input's spatial axes are dynamic {shape}; pass window= or store 'window' in the "
                             "model's metadata")
        spatial = [s if s is not None else w for s, w in zip(spatial, win)]
    lo, opt, hi = (batch_sizes if shape[0] is None else (shape[0],) * 3)
    if not 1 <= lo <= opt <= hi:
        raise ValueError(f"batch_sizes must be min <= opt <= max, got {batch_sizes}")
    return [tuple([b] + spatial + [channels] if last else [b, channels] + spatial) for b in (lo, opt, hi)]


def verify_engine_file(engine_path: str, expected_key: str | None = None, *, trust_foreign_engine=False) -> dict:
    """The manifest of an engine this cache wrote, after checking key and bytes.

    Raises EngineTrustError for a missing manifest (unless trusted), a key that does not
    match the current environment / model (stale: rebuild), or bytes that differ from the
    manifest (tampered).
    """
    manifest_path = os.path.splitext(engine_path)[0] + ".json"
    if not os.path.isfile(engine_path):
        raise FileNotFoundError(f"engine file not found: {engine_path}")
    if not os.path.isfile(manifest_path):
        if trust_foreign_engine:
            return {"key": None, "trusted": True}
        raise EngineTrustError(f"{engine_path} was not produced by segrt's engine cache (no manifest); deserialising "
                               "an engine runs code, so it is refused. Rebuild it with build_engine, or pass "
                               "trust_foreign_engine=True if you built it yourself")
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise EngineTrustError(f"unreadable engine manifest {manifest_path}: {err}") from None
    if not trust.verify(manifest):
        if trust_foreign_engine:
            return {**manifest, "trusted": True}
        raise EngineTrustError(f"{engine_path}: its manifest was not written by this installation's segrt (the "
                               "signature does not verify); deserialising an engine runs code, so it is refused. "
                               "Rebuild it with build_engine, or pass trust_foreign_engine=True if you built it "
                               "yourself")
    if expected_key is not None and manifest.get("key") != expected_key:
        raise EngineTrustError(f"{engine_path} was built for another model, TensorRT version, GPU, precision or "
                               f"profile (manifest key {manifest.get('key')}, expected {expected_key}); rebuild it")
    if manifest.get("engine_sha256") != file_sha256(engine_path):
        raise EngineTrustError(f"{engine_path} does not match its manifest (modified after it was built); rebuild it")
    return manifest


def calibration_batches(calibration, input_shape, batch_size: int = 1):
    """Yields float32 batches of ``input_shape`` (C, *spatial) from a folder of .npy files or
    an iterable of arrays (each (C, *spatial) or (N, C, *spatial))."""
    if isinstance(calibration, (str, os.PathLike)):
        files = sorted(glob.glob(os.path.join(os.fspath(calibration), "*.npy")))
        if not files:
            raise ValueError(f"no .npy calibration inputs in {calibration}")
        source = (np.load(f) for f in files)
    else:
        source = iter(calibration)
    want = tuple(input_shape)
    pending = []
    for arr in source:
        arr = np.asarray(arr, dtype=np.float32)
        items = [arr] if arr.ndim == len(want) else list(arr)
        for item in items:
            if item.shape != want:
                raise ValueError(f"calibration input of shape {item.shape}, expected {want} (the window)")
            if not np.isfinite(item).all():
                raise ValueError("a calibration input holds NaN or infinite values")
            pending.append(item)
            if len(pending) == batch_size:
                yield np.ascontiguousarray(np.stack(pending))
                pending = []
    if pending:
        yield np.ascontiguousarray(np.stack(pending))


def _make_calibrator(trt, batches, cache_path: str):
    """An entropy calibrator feeding CuPy-owned device copies of the batches (TensorRT API)."""
    cupy = optional_import("cupy", purpose="int8 calibration")

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.batches = iter(batches)
            self.current = None
            self.batch_size = None

        def get_batch_size(self):
            return self.batch_size or 1

        def get_batch(self, names):
            try:
                host = next(self.batches)
            except StopIteration:
                return None
            self.batch_size = host.shape[0]
            self.current = cupy.asarray(host)  # kept alive until the next call
            return [int(self.current.data.ptr)]

        def read_calibration_cache(self):
            if os.path.isfile(cache_path):  # checked before the build (check_cache_file)
                with open(cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache):
            write_cache_file(cache_path, bytes(cache), "int8 calibration cache")

    return Calibrator()


def build_engine(onnx_path, *, precision="fp16", calibration=None, profiles=None, workspace=None, cache_dir=None,
                 window=None, batch_sizes=(1, 1, 4), device=0) -> EngineRecord:
    """Build (or fetch from the cache) a TensorRT engine for an ONNX model.

    Args:
        onnx_path: the model (segrt metadata supplies the window for dynamic shapes).
        precision: "fp32", "fp16" (default), "int8" (needs ``calibration``) or "best" (fp16 + int8).
        calibration: int8 inputs: a folder of .npy windows or an iterable of arrays.
        profiles: [(min, opt, max)] input shapes; default from the metadata (profiles_for).
        workspace: builder workspace in bytes (default: TensorRT's).
        cache_dir: where engines, manifests, the timing cache and calibration caches live
            (default ``$SEGRT_CACHE/engines`` or ``~/.cache/segrt/engines``).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision in ("int8", "best") and calibration is None:
        raise ValueError("int8 needs calibration inputs: a folder of .npy windows or an iterable of arrays")
    onnx_path = os.fspath(onnx_path)
    proto, inputs, _, meta, _ = inspect_model_file(onnx_path)
    if len(inputs) != 1:
        raise ValueError(f"{onnx_path} has {len(inputs)} inputs; segrt builds engines for one image input")
    profiles = [tuple(tuple(s) for s in p) for p in (profiles or [profiles_for(inputs[0].shape, meta, window=window,
                                                                             batch_sizes=batch_sizes)])]
    trt = optional_import("tensorrt", purpose="building TensorRT engines")
    gpu = gpu_identity(device)
    content = onnx_content_hash(onnx_path, proto)
    key = cache_key(content, trt.__version__, gpu, precision, profiles)
    cache_dir = engine_cache_dir(cache_dir)
    os.makedirs(cache_dir, exist_ok=True)
    engine_path = os.path.join(cache_dir, f"{key}.engine")
    if os.path.isfile(engine_path):
        try:
            return EngineRecord(engine_path, key, False, verify_engine_file(engine_path, key))
        except EngineTrustError:
            pass  # stale or damaged: rebuilt below, never used
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(onnx_path):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    if precision in ("fp16", "best"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision in ("int8", "best"):
        config.set_flag(trt.BuilderFlag.INT8)
        calib_shape = profiles[0][1][1:]
        calib_path = os.path.join(cache_dir, f"{content[:32]}.calib")
        if os.path.isfile(calib_path):
            check_cache_file(calib_path, "int8 calibration cache")
        config.int8_calibrator = _make_calibrator(trt, calibration_batches(calibration, calib_shape), calib_path)
    name = network.get_input(0).name
    for lo, opt, hi in profiles:
        profile = builder.create_optimization_profile()
        profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    timing_path = os.path.join(cache_dir, f"timing-{trt.__version__}-{gpu['compute_capability']}.cache")
    timing_bytes = b""
    if os.path.isfile(timing_path):
        check_cache_file(timing_path, "TensorRT timing cache")
        with open(timing_path, "rb") as f:
            timing_bytes = f.read()
    timing = config.create_timing_cache(timing_bytes)
    config.set_timing_cache(timing, False)
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path} ({precision})")
    write_cache_file(timing_path, bytes(config.get_timing_cache().serialize()), "TensorRT timing cache")
    tmp = engine_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(bytes(serialized))
    manifest = {"key": key, "onnx_sha256": content, "tensorrt": trt.__version__, **gpu, "precision": precision,
                "profiles": [[list(s) for s in p] for p in profiles], "engine_sha256": file_sha256(tmp),
                "build_seconds": time.perf_counter() - t0, "source": os.path.abspath(onnx_path)}
    manifest = trust.sign(manifest)
    with open(os.path.splitext(engine_path)[0] + ".json", "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, engine_path)
    return EngineRecord(engine_path, key, True, manifest)
