"""What the compiled-engine caches share (TensorRT engines, torch compile artifacts): where they
live, the model-content hash their keys start from, and cache files written and read only with a
record this installation signed (``segrt.engine.trust``)."""
from __future__ import annotations

import hashlib
import json
import os

from segrt.engine import trust
from segrt.engine.model_file import all_tensors, file_sha256, inspect_model_file

__all__ = ["EngineTrustError", "onnx_content_hash", "engine_cache_dir", "check_cache_file", "write_cache_file"]


class EngineTrustError(RuntimeError):
    """An engine file that is stale, tampered with, or not produced by segrt's cache."""


def onnx_content_hash(onnx_path: str, proto=None) -> str:
    """SHA-256 over the model file and, in name order, its external data files. ``proto``: the
    model as inspect_model_file parsed it (parsed here, with its checks, when not given)."""
    if proto is None:
        proto = inspect_model_file(onnx_path)[0]  # also refuses hostile external data
    h = hashlib.sha256(file_sha256(onnx_path).encode())
    folder = os.path.dirname(os.path.abspath(onnx_path))
    locations = set()
    for t in all_tensors(proto.graph):
        for e in t.external_data:
            if e.key == "location":
                locations.add(e.value)
    for loc in sorted(locations):
        h.update(loc.encode())
        h.update(file_sha256(os.path.join(folder, loc)).encode())
    return h.hexdigest()


def engine_cache_dir(cache_dir=None) -> str:
    """Where compiled engines live: ``cache_dir``, else ``$SEGRT_CACHE/engines``, else
    ``~/.cache/segrt/engines``."""
    if cache_dir:
        return os.fspath(cache_dir)
    root = os.environ.get("SEGRT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "segrt")
    return os.path.join(root, "engines")


def check_cache_file(path: str, what: str) -> None:
    """Refuses (EngineTrustError, naming the file) a cache file without a valid signed record of
    this installation (``<path>.json``): TensorRT reads timing and calibration caches unchecked."""
    try:
        trust.check_record(path + ".json", {"cache": path}, what)
    except trust.CacheTrustError as err:
        raise EngineTrustError(f"{err}. Delete {path} and its record to rebuild it") from None


def write_cache_file(path: str, data: bytes, what: str, **fields) -> None:
    """Writes a cache file atomically with its signed record (``fields``: what it was built for)."""
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    record = trust.signed_record({"cache": path}, kind=what, **fields)
    with open(path + ".json.tmp", "w") as f:
        json.dump(record, f, indent=2)
    os.replace(path + ".json.tmp", path + ".json")
