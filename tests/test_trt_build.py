"""TensorRT engine building: everything around the TensorRT calls (which need a GPU and
TensorRT, unavailable here): cache keys, manifests and refusals, profiles, calibration data."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from segrt.engine import trust
from segrt.engine.backends import tensorrt_build as tb

GPU = {"gpu": "NVIDIA H200", "compute_capability": "9.0"}
PROFILE = [((1, 1, 64, 64, 64), (1, 1, 64, 64, 64), (4, 1, 64, 64, 64))]


def test_cache_key_is_stable_and_covers_every_field():
    base = tb.cache_key("abc", "10.3.0", GPU, "fp16", PROFILE)
    assert base == tb.cache_key("abc", "10.3.0", dict(GPU), "fp16", [tuple(PROFILE[0])])
    variants = [
        tb.cache_key("abd", "10.3.0", GPU, "fp16", PROFILE),
        tb.cache_key("abc", "10.4.0", GPU, "fp16", PROFILE),
        tb.cache_key("abc", "10.3.0", {"gpu": "NVIDIA L4", "compute_capability": "9.0"}, "fp16", PROFILE),
        tb.cache_key("abc", "10.3.0", {"gpu": "NVIDIA H200", "compute_capability": "8.9"}, "fp16", PROFILE),
        tb.cache_key("abc", "10.3.0", GPU, "int8", PROFILE),
        tb.cache_key("abc", "10.3.0", GPU, "fp16", [((1, 1, 64, 64, 64), (2, 1, 64, 64, 64), (4, 1, 64, 64, 64))]),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_profiles_from_metadata_and_shapes():
    assert tb.profiles_for((None, 1, None, None, None), {"window": [96, 96, 64]}) == [
        (1, 1, 96, 96, 64), (1, 1, 96, 96, 64), (4, 1, 96, 96, 64)]
    assert tb.profiles_for((2, 3, 128, 128), None) == [(2, 3, 128, 128)] * 3
    assert tb.profiles_for((None, 1, 64, None), {}, window=(64, 80), batch_sizes=(1, 2, 8))[2] == (8, 1, 64, 80)
    with pytest.raises(ValueError, match="window"):
        tb.profiles_for((None, 1, None, None), {})
    with pytest.raises(ValueError, match="in_channels"):
        tb.profiles_for((None, None, 32, 32), {})
    with pytest.raises(ValueError, match="min <= opt <= max"):
        tb.profiles_for((None, 1, 32, 32), {}, batch_sizes=(4, 1, 2))


def _write_engine(folder, key, payload=b"engine-bytes"):
    path = os.path.join(folder, f"{key}.engine")
    with open(path, "wb") as f:
        f.write(payload)
    manifest = trust.sign({"key": key, "engine_sha256": hashlib.sha256(payload).hexdigest()})
    with open(os.path.join(folder, f"{key}.json"), "w") as f:
        json.dump(manifest, f)
    return path


def test_engines_are_used_only_with_a_matching_manifest(tmp_path):
    path = _write_engine(str(tmp_path), "k1")
    assert tb.verify_engine_file(path, "k1")["key"] == "k1"
    with pytest.raises(tb.EngineTrustError, match="another model, TensorRT version, GPU"):
        tb.verify_engine_file(path, "k2")  # stale: other GPU / version / precision / model
    with open(path, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(tb.EngineTrustError, match="does not match its manifest"):
        tb.verify_engine_file(path, "k1")
    foreign = tmp_path / "downloaded.engine"
    foreign.write_bytes(b"whatever")
    with pytest.raises(tb.EngineTrustError, match="not produced by segrt"):
        tb.verify_engine_file(str(foreign))
    assert tb.verify_engine_file(str(foreign), trust_foreign_engine=True)["trusted"]
    with pytest.raises(FileNotFoundError):
        tb.verify_engine_file(str(tmp_path / "missing.engine"))


def test_calibration_batches_from_a_folder_and_an_iterable(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        np.save(tmp_path / f"c{i}.npy", rng.standard_normal((1, 8, 8)).astype(np.float32))
    batches = list(tb.calibration_batches(str(tmp_path), (1, 8, 8), batch_size=2))
    assert [b.shape[0] for b in batches] == [2, 2, 1] and batches[0].dtype == np.float32
    stacked = rng.standard_normal((3, 1, 8, 8))
    assert sum(b.shape[0] for b in tb.calibration_batches([stacked, stacked[0]], (1, 8, 8))) == 4
    with pytest.raises(ValueError, match="expected"):
        list(tb.calibration_batches([np.zeros((1, 4, 4))], (1, 8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        list(tb.calibration_batches([np.full((1, 8, 8), np.nan)], (1, 8, 8)))
    with pytest.raises(ValueError, match="no .npy"):
        list(tb.calibration_batches(str(tmp_path / "empty_dir_that_is_missing"), (1, 8, 8)))


def test_content_hash_follows_the_model_and_its_external_data(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper
    from onnx.external_data_helper import convert_model_to_external_data

    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", 1, [None, 1, None, None])],
                              [helper.make_tensor_value_info("y", 1, [None, 2, None, None])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    convert_model_to_external_data(model, location="w.bin", size_threshold=0)
    onnx.save(model, str(tmp_path / "m.onnx"))
    h1 = tb.onnx_content_hash(str(tmp_path / "m.onnx"))
    assert h1 == tb.onnx_content_hash(str(tmp_path / "m.onnx"))
    data = bytearray((tmp_path / "w.bin").read_bytes())
    data[0] ^= 1
    (tmp_path / "w.bin").write_bytes(bytes(data))
    assert tb.onnx_content_hash(str(tmp_path / "m.onnx")) != h1


def test_build_engine_refuses_bad_arguments_and_names_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="precision"):
        tb.build_engine("x.onnx", precision="fp8")
    with pytest.raises(ValueError, match="calibration"):
        tb.build_engine("x.onnx", precision="int8")
    torch = pytest.importorskip("torch")
    from segrt.export import to_onnx

    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    path = to_onnx(net, np.zeros((1, 1, 32, 32), np.float32), tmp_path / "c.onnx",
                   metadata={"task": "semantic", "window": [32, 32]}).path
    import importlib.util

    if importlib.util.find_spec("tensorrt") is None:
        with pytest.raises(ImportError, match=r"segrt\[trt\]"):
            tb.build_engine(path, cache_dir=str(tmp_path / "cache"))


@pytest.mark.gpu
def test_build_and_cache_an_engine_on_the_gpu(tmp_path):
    pytest.importorskip("tensorrt")
    torch = pytest.importorskip("torch")
    from segrt.engine import load
    from segrt.export import to_onnx

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    path = to_onnx(net, np.zeros((1, 1, 64, 64), np.float32), tmp_path / "n.onnx",
                   metadata={"task": "semantic", "window": [64, 64]}).path
    first = tb.build_engine(path, precision="fp32", cache_dir=str(tmp_path / "c"))
    again = tb.build_engine(path, precision="fp32", cache_dir=str(tmp_path / "c"))
    assert first.built and not again.built and first.key == again.key
    x = np.random.default_rng(0).standard_normal((1, 1, 64, 64)).astype(np.float32)
    out = load(path, backend="trt", precision="fp32", cache_dir=str(tmp_path / "c")).infer(x)
    np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), atol=1e-3)


def test_a_hand_written_or_foreign_manifest_is_refused(tmp_path, monkeypatch):
    # the manifest lists the right SHA-256, but segrt did not sign it: deserialising runs code
    payload = b"engine-bytes"
    path = tmp_path / "k1.engine"
    path.write_bytes(payload)
    (tmp_path / "k1.json").write_text(json.dumps({"key": "k1", "engine_sha256": hashlib.sha256(payload).hexdigest()}))
    with pytest.raises(tb.EngineTrustError, match="not written by this installation's segrt"):
        tb.verify_engine_file(str(path), "k1")
    assert tb.verify_engine_file(str(path), "k1", trust_foreign_engine=True)["trusted"]
    # signed by another installation (another key): refused the same way
    other = _write_engine(str(tmp_path), "k2")
    monkeypatch.setenv("SEGRT_KEY_FILE", str(tmp_path / "other.key"))
    with pytest.raises(tb.EngineTrustError, match="not written by this installation's segrt"):
        tb.verify_engine_file(other, "k2")


def test_timing_and_calibration_caches_are_read_only_when_segrt_wrote_them(tmp_path):
    cache = tmp_path / "timing-10.0-9.0.cache"
    tb.write_cache_file(str(cache), b"timings", "TensorRT timing cache")
    tb.check_cache_file(str(cache), "TensorRT timing cache")  # its own: accepted
    cache.write_bytes(b"swapped")
    with pytest.raises(tb.EngineTrustError, match="differs from what segrt wrote"):
        tb.check_cache_file(str(cache), "TensorRT timing cache")
    foreign = tmp_path / "abc.calib"
    foreign.write_bytes(b"calibration")
    with pytest.raises(tb.EngineTrustError, match=r"abc.calib.json: the record of this int8 calibration cache is "
                                                   r"missing.*Delete"):
        tb.check_cache_file(str(foreign), "int8 calibration cache")
    # a record copied from elsewhere with a made-up signature
    (tmp_path / "abc.calib.json").write_text(json.dumps({"files": {"cache": "0" * 64}, "hmac": "f" * 64}))
    with pytest.raises(tb.EngineTrustError, match="signature does not verify"):
        tb.check_cache_file(str(foreign), "int8 calibration cache")


def test_the_cache_key_is_private_and_never_replaced(tmp_path, monkeypatch):
    key_file = tmp_path / "conf" / "segrt" / "cache.key"
    monkeypatch.setenv("SEGRT_KEY_FILE", str(key_file))
    record = trust.sign({"a": 1})
    assert key_file.stat().st_mode & 0o777 == 0o600 and len(key_file.read_bytes()) == 32
    assert trust.verify(record) and not trust.verify({**record, "a": 2})
    first = key_file.read_bytes()
    trust.sign({"b": 2})
    assert key_file.read_bytes() == first
    key_file.write_bytes(b"short")
    with pytest.raises(trust.CacheTrustError, match="cache key is damaged"):
        trust.sign({"c": 3})


class _FakeStream:
    def __init__(self, ptr):
        self.ptr, self.log = ptr, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def wait_event(self, event):
        self.log.append(("wait", event))

    def synchronize(self):
        self.log.append("sync")


class _FakeDeviceArray:
    """What the runner touches of a CuPy array."""

    def __init__(self, shape, ptr=1000):
        self.shape, self.dtype = tuple(shape), np.float32
        self.data = type("Pointer", (), {"ptr": ptr})()
        self.flags = type("Flags", (), {"c_contiguous": True})()
        self.__cuda_array_interface__ = {"shape": self.shape}

    def copy(self):
        return _FakeDeviceArray(self.shape, self.data.ptr + 1)


def _fake_runner(monkeypatch, *, oom=False, current_ptr=77):
    """A TrtRunner whose TensorRT context and CuPy are stand-ins (TensorRT cannot be installed
    here): its own logic (streams, buffers, refusals, errors) runs as written."""
    import types

    from segrt.engine.backends import tensorrt as trt_backend

    class OutOfMemoryError(Exception):
        pass

    events = []

    class Event:
        def record(self, stream):
            events.append(stream)

    def empty(shape, dtype):
        if oom:
            raise OutOfMemoryError("cudaErrorMemoryAllocation")
        return _FakeDeviceArray(shape)

    current = _FakeStream(current_ptr)
    cupy = types.SimpleNamespace(
        float32=np.float32, empty=empty, asarray=lambda x: x,
        cuda=types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError),
                                   get_current_stream=lambda: current, Event=Event))

    class Context:
        def __init__(self):
            self.calls = []

        def set_input_shape(self, name, shape):
            self.calls.append(("shape", tuple(shape)))
            return tuple(shape)[0] <= 4  # the profile's max batch

        def get_tensor_shape(self, name):
            return (1, 2, 8, 8)

        def set_tensor_address(self, name, ptr):
            self.calls.append(("address", name, ptr))

        def execute_async_v3(self, ptr):
            self.calls.append(("execute", ptr))
            return True

    runner = object.__new__(trt_backend.TrtRunner)
    runner.cupy, runner.context, runner.stream = cupy, Context(), _FakeStream(5)
    runner.input_name, runner.output_names, runner.cuda_graph = "image", ["scores"], False
    runner._buffers, runner._last_done = {}, None
    import threading

    runner._lock = threading.Lock()
    return runner, current, events


def test_trt_runner_runs_device_inputs_on_the_callers_stream(monkeypatch):
    runner, current, events = _fake_runner(monkeypatch)
    x = _FakeDeviceArray((1, 1, 8, 8), ptr=4242)
    outs = runner(x)
    assert ("execute", 77) in runner.context.calls  # the caller's stream, not the runner's
    assert ("address", "image", 4242) in runner.context.calls  # no copy of a contiguous float32 input
    assert "sync" not in current.log and events == [current]  # no host sync; an event for the next call
    assert outs[0].shape == (1, 2, 8, 8) and outs[0].data.ptr != runner._buffers[(1, 1, 8, 8)][1][0].data.ptr
    first_done = runner._last_done
    runner(x)  # waits on the device for the previous call's copies of the shared buffers
    assert current.log == [("wait", first_done)]
    with pytest.raises(ValueError, match="optimisation profile does not cover it"):
        runner(_FakeDeviceArray((8, 1, 8, 8)))


def test_trt_runner_out_of_memory_names_the_batch_and_what_to_lower(monkeypatch):
    runner, _, _ = _fake_runner(monkeypatch, oom=True)
    with pytest.raises(MemoryError, match=r"batch of shape \(2, 1, 8, 8\); lower the batch \(sw_batch_size\) or "
                                          "the window"):
        runner(_FakeDeviceArray((2, 1, 8, 8)))
