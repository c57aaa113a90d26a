"""Runtime backends: the registry and auto order, options, batch checks, and the graph rewrites
each CPU runtime needs for exact InstanceNormalization statistics (only where channels are long)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from segrt.engine import InferInputError, load  # noqa: E402
from segrt.engine import backends  # noqa: E402
from segrt.export import to_onnx  # noqa: E402

CPU_BACKENDS = ["ort"] + (["openvino"] if __import__("importlib").util.find_spec("openvino") else [])


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def unet2d_path(tmp_path_factory):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.UNet(spatial_dims=2, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=1)
    path = str(tmp_path_factory.mktemp("m") / "unet2d.onnx")
    to_onnx(net, _rand((1, 1, 64, 64)), path, metadata={"task": "semantic", "window": [64, 64]})
    return path


def test_registry_names_every_backend_and_auto_order():
    assert backends.NAMES[0] == "auto" and set(backends.AUTO_ORDER) == set(backends.NAMES[1:])
    for name in backends.AUTO_ORDER:
        cls = backends.runner_class(name)
        assert cls.name == name and cls.OPTIONS and all(isinstance(v, str) and v for v in cls.OPTIONS.values())
    with pytest.raises(ValueError, match="backend must be one of"):
        backends.runner_class("tensorflow")


def test_auto_takes_the_first_available_backend_and_says_why_it_passed_the_others(monkeypatch):
    name, why = backends.choose("auto")
    def auto_refuses(n):  # torch runs on the CPU when named, but auto takes it only on a GPU
        cls = backends.runner_class(n)
        return getattr(cls, "unavailable_for_auto", cls.unavailable)()

    first = next(n for n in backends.AUTO_ORDER if auto_refuses(n) is None)
    assert name == first
    for skipped in backends.AUTO_ORDER[:backends.AUTO_ORDER.index(first)]:
        assert f"{skipped}: " in why
    # with OpenVINO gone, auto falls through to ONNX Runtime and names OpenVINO's reason
    ov = backends.runner_class("openvino")
    monkeypatch.setattr(ov, "unavailable", classmethod(lambda cls: "openvino is not installed"))
    name, why = backends.choose("auto")
    assert name == "ort" and "openvino: openvino is not installed" in why
    with pytest.raises(backends.BackendUnavailableError, match="'openvino' cannot run here: openvino is not"):
        backends.choose("openvino")


def test_ort_runs_the_file_as_it_is_when_no_norm_is_long(tmp_path):
    # a 2D UNet with InstanceNormalization at 96 x 128: every channel under the threshold, so the
    # session is ONNX Runtime's own (the rewrite cost +28 % there for no accuracy)
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=1, norm="instance")
    path = to_onnx(net, _rand((1, 3, 96, 128)), tmp_path / "u.onnx", check_shapes=[]).path
    model = load(path, backend="ort")
    model.infer(_rand((1, 3, 96, 128)))
    runner = model.runner
    assert list(runner._sessions) == [frozenset()]
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert "InstanceNormalization" in ops
    # a large input makes the first norms long: those, and only those, are rewritten
    model.infer(_rand((1, 3, 384, 512)))
    rewritten = [k for k in runner._sessions if k]
    assert len(rewritten) == 1 and 0 < len(rewritten[0]) < sum(o == "InstanceNormalization" for o in
                                                               [n.op_type for n in onnx.load(path).graph.node])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_infer_refuses_bad_batches(unet2d_path, backend):
    model = load(unet2d_path, backend=backend)
    with pytest.raises(InferInputError, match="rank 4"):
        model.infer(_rand((1, 64, 64)))
    with pytest.raises(InferInputError, match="1 channels"):
        model.infer(_rand((1, 2, 64, 64)))
    with pytest.raises(InferInputError, match="float32"):
        model.infer(_rand((1, 1, 64, 64)).astype(np.float64))
    for bad in (np.nan, np.inf):
        x = _rand((1, 1, 64, 64))
        x[0, 0, 3, 4] = bad
        with pytest.raises(InferInputError, match="NaN or infinite"):
            model.infer(x)


def test_backend_choice_unknown_backends_and_options(unet2d_path):
    model = load(unet2d_path)
    assert model.backend in ("openvino", "ort") and "trt" in model.backend_reason
    with pytest.raises(ValueError, match="backend must be one of"):
        load(unet2d_path, backend="tensorflow")
    with pytest.raises((ImportError, RuntimeError), match="tensorrt|CUDA"):
        load(unet2d_path, backend="trt")  # needs TensorRT and a GPU: a clear error here
    # an option the backend does not take is named, with the ones it does
    with pytest.raises(ValueError, match=r"backend 'ort' takes the options \[.*'threads'.*\], not \['precision'\]"):
        load(unet2d_path, backend="ort", precision="bf16")
    if "openvino" in CPU_BACKENDS:
        with pytest.raises(ValueError, match=r"'openvino' takes .*'streams'.*not \['thread'\]"):
            load(unet2d_path, backend="openvino", thread=2)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            load(unet2d_path, backend="ort", threads=bad)


def test_ort_backend_keeps_instance_norm_statistics_exact_on_volumes(tmp_path):
    # ONNX Runtime's own kernel sums a channel's statistics over all 2.1 M voxels in float32
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 1), torch.nn.InstanceNorm3d(4, affine=True),
                              torch.nn.Conv3d(4, 2, 1))
    x = _rand((1, 1, 128, 128, 128), seed=7)
    path = to_onnx(net, _rand((1, 1, 16, 16, 16)), tmp_path / "in.onnx", check_shapes=[]).path
    with torch.no_grad():
        ref = net.double()(torch.from_numpy(x).double()).numpy()
    stable = load(path, backend="ort").infer(x)
    plain = load(path, backend="ort", stable_norm=False).infer(x)
    err_stable, err_plain = np.abs(stable - ref).max(), np.abs(plain - ref).max()
    assert err_stable < 1e-5, err_stable
    assert err_plain > 10 * err_stable, (err_plain, err_stable)


def test_openvino_backend_keeps_instance_norm_statistics_exact_on_volumes(tmp_path):
    # OpenVINO's MVN kernel drifts on long channels; segrt pools the statistics per shape
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                              torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1), torch.nn.InstanceNorm3d(2))
    with torch.no_grad():
        net[0].bias += 3.0  # a mean far from zero, as real activations have
    x = _rand((1, 1, 96, 112, 96), seed=7)
    path = to_onnx(net, _rand((1, 1, 16, 16, 16)), tmp_path / "in.onnx", check_shapes=[]).path
    with torch.no_grad():
        ref = net.double()(torch.from_numpy(x).double()).numpy()
    stable = load(path, backend="openvino")
    plain = load(path, backend="openvino", stable_norm=False)
    err_stable = np.abs(stable.infer(x) - ref).max()
    err_plain = np.abs(plain.infer(x) - ref).max()
    assert err_stable < 2e-5, err_stable  # two-pass variance: no cancellation of a large mean
    assert err_plain > 5 * err_stable, (err_plain, err_stable)
    # small inputs keep OpenVINO's own kernel (short sums are exact enough) and still agree
    small = _rand((1, 1, 16, 16, 16), seed=8)
    with torch.no_grad():
        ref_small = net(torch.from_numpy(small).double()).numpy()
    assert np.abs(stable.infer(small) - ref_small).max() < 1e-4


def test_pooled_instance_norm_rewrites_only_long_channels(tmp_path):
    from segrt.engine.graph_rewrites import pooled_instance_norm

    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, stride=2, padding=1), torch.nn.InstanceNorm3d(4, affine=True),
                              torch.nn.Conv3d(4, 4, 3, stride=4, padding=1), torch.nn.InstanceNorm3d(4, affine=True))
    path = to_onnx(net, _rand((1, 1, 16, 16, 16)), tmp_path / "two.onnx", check_shapes=[]).path
    proto = onnx.load(path)
    # at 64^3: 32^3 = 32768 voxels per channel in the first norm, 8^3 = 512 in the second
    rewritten, count = pooled_instance_norm(proto, (1, 1, 64, 64, 64))
    assert count == 1
    kinds = [n.op_type for n in rewritten.graph.node]
    assert kinds.count("InstanceNormalization") == 1 and kinds.count("AveragePool") == 6
    assert pooled_instance_norm(proto, (1, 1, 16, 16, 16))[1] == 0


def test_usable_cpus_counts_the_cpus_this_process_may_run_on(monkeypatch):
    import os

    from segrt.engine.backends import usable_cpus

    assert usable_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})  # a container limited to one CPU
    assert usable_cpus() == 1
