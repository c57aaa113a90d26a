"""The torch backend: the ONNX graph as a PyTorch module (engine/backends/onnx_torch.py), run on
the CPU here as the reference it is there (on a GPU the same module is compiled with CUDA
graphs; that path needs a GPU and is exercised by bench/gpu_check.py)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from segrt.engine import backends, load  # noqa: E402
from segrt.engine.backends.onnx_torch import UnsupportedModelError  # noqa: E402
from segrt.export import to_onnx  # noqa: E402


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _agree(path, shape, rel=1e-5, min_agree=0.999, **options):
    x = _rand(shape, 1)
    ref = load(path, backend="ort").infer(x)
    got = load(path, backend="torch", **options).infer(x)
    ref, got = (ref, got) if isinstance(ref, dict) else ({"out": ref}, {"out": got})
    assert set(ref) == set(got)
    for k in ref:
        assert got[k].dtype == np.float32 and got[k].shape == ref[k].shape
        scale = float(np.abs(ref[k]).max()) + 1e-6
        assert float(np.abs(got[k] - ref[k]).max()) <= rel * scale, k
        if ref[k].shape[1] > 1 and k != "dist":  # the classes agree where the scores do
            assert (got[k].argmax(1) == ref[k].argmax(1)).mean() >= min_agree


@pytest.mark.parametrize("name, shape", [("instruments", (1, 3, 240, 320)), ("nuclei", (1, 1, 128, 128))])
def test_demo_models_match_onnx_runtime(name, shape):
    _agree(_demo(name), shape)


@pytest.mark.parametrize("dims, norm", [(2, "instance"), (3, "instance"), (2, "batch")])
def test_monai_unets_match_onnx_runtime(tmp_path, dims, norm):
    nets = pytest.importorskip("monai.networks.nets")
    torch.manual_seed(0)
    net = nets.UNet(spatial_dims=dims, in_channels=1, out_channels=3, channels=(8, 16, 32), strides=(2, 2),
                    num_res_units=1, norm=norm)
    shape = (1, 1) + (48,) * dims if dims == 2 else (1, 1, 24, 32, 32)
    path = to_onnx(net, _rand(shape), tmp_path / "u.onnx", check_shapes=[]).path
    _agree(path, shape)
    _agree(path, shape, rel=5e-2, min_agree=0.98, precision="bf16")  # bf16 on request, outputs in float32


def test_deepbet_matches_onnx_runtime():
    pytest.importorskip("deepbet")
    from segrt.export import zoo

    _agree(zoo.deepbet(), (1, 1, 64, 64, 64), rel=1e-3)  # long instance-norm sums: float rounding


def _single_node(path, op, x_shape, w=None, b=None, **attrs):
    inits, inputs = [], ["x"]
    for name, value in (("w", w), ("b", b)):
        if value is not None:
            inits.append(numpy_helper.from_array(value.astype(np.float32), name))
            inputs.append(name)
    node = helper.make_node(op, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "c", "h", "w"])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("op, w_shape, attrs", [
    ("Conv", (4, 2, 3, 3), {"pads": [0, 1, 2, 1], "strides": [2, 1]}),                 # asymmetric pads
    ("Conv", (4, 1, 3, 3), {"pads": [1, 1, 1, 1], "group": 2, "dilations": [2, 1]}),
    ("ConvTranspose", (2, 3, 3, 3), {"pads": [1, 0, 0, 1], "strides": [2, 2]}),        # cropped asymmetrically
    ("ConvTranspose", (2, 3, 2, 2), {"strides": [2, 2], "output_padding": [1, 0]}),
    ("MaxPool", None, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "strides": [2, 2]}),
    ("MaxPool", None, {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1, "pads": [0, 0, 1, 0]}),
    ("Softmax", None, {"axis": 1}),
    ("LeakyRelu", None, {"alpha": 0.2}),
])
def test_ops_follow_the_onnx_spec(tmp_path, op, w_shape, attrs):
    w = _rand(w_shape, 3) if w_shape else None
    b = _rand((w_shape[1] * attrs.get("group", 1) if op == "ConvTranspose" else w_shape[0],), 4) if w_shape else None
    path = _single_node(str(tmp_path / "n.onnx"), op, (1, 2, 9, 11), w, b, **attrs)
    _agree(path, (1, 2, 9, 11))


def test_unsupported_ops_are_refused_at_load_naming_them(tmp_path):
    path = _single_node(str(tmp_path / "n.onnx"), "Resize", (1, 2, 4, 4))
    with pytest.raises(UnsupportedModelError, match="does not implement Resize.*backend='ort'"):
        load(path, backend="torch")


def test_options_and_auto_order():
    assert backends.AUTO_ORDER.index("trt") < backends.AUTO_ORDER.index("torch") < backends.AUTO_ORDER.index("ort")
    runner = backends.runner_class("torch")
    if not torch.cuda.is_available():  # auto never takes the CPU reference, and says so
        name, why = backends.choose("auto")
        assert name != "torch" and "torch: PyTorch sees no CUDA device" in why
        with pytest.raises(RuntimeError, match="needs PyTorch with CUDA"):
            load(_demo("instruments"), backend="torch", device="cuda")
    assert set(runner.OPTIONS) == {"device", "precision", "compile", "cuda_graph", "cache_dir"}
    with pytest.raises(ValueError, match="precision must be one of"):
        load(_demo("instruments"), backend="torch", precision="int4")
    with pytest.raises(ValueError, match="device must be"):
        load(_demo("instruments"), backend="torch", device="tpu")
    with pytest.raises(ValueError, match="takes the options"):
        load(_demo("instruments"), backend="torch", threads=2)


def _demo(name):
    import importlib
    import os

    return os.path.join(os.path.dirname(importlib.import_module("segrt.models").__file__), f"{name}.onnx")


def test_out_of_device_memory_names_the_batch_and_what_to_lower():
    from segrt.engine import InferenceError

    model = load(_demo("instruments"), backend="torch")

    def exhausted(x):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.runner.module = exhausted
    with pytest.raises(InferenceError, match=r"out of GPU memory running a batch of shape \(1, 3, 240, 320\).*"
                                             r"sw_batch_size"):
        model.infer(_rand((1, 3, 240, 320)))


@pytest.mark.parametrize("name, measure", [("instruments", "min_dice"), ("nuclei", "min_f1")])
def test_segrt_check_passes_the_torch_backend_on_the_task(name, measure):
    """``segrt check --backends ort,torch``: task-level parity (Dice, instance F1), not only raw error."""
    from segrt.engine.check import check

    report = check(_demo(name), backends=("ort", "torch"))
    assert report["passed"] and report["backends"] == ["torch"]
    assert all(c[measure] >= 0.999 for c in report["comparisons"])


def test_compile_cache_key_changes_with_everything_the_compiled_code_depends_on():
    from segrt.engine.backends.pytorch import compile_cache_key

    base = ("abc", {"torch": "2.11.0", "triton": "3.5.0"}, {"device": "NVIDIA H200", "compute_capability": "9.0"},
            "fp32", True, (1, 1, 96, 96, 96), "float32")
    key = compile_cache_key(*base)
    assert key == compile_cache_key(*base)
    variants = [("abd",), ({"torch": "2.12.0", "triton": "3.5.0"},), ({"torch": "2.11.0", "triton": "3.6.0"},),
                ({"device": "NVIDIA L4", "compute_capability": "9.0"},),
                ({"device": "NVIDIA H200", "compute_capability": "8.9"},), ("fp16",), (False,),
                ((2, 1, 96, 96, 96),), ("bfloat16",)]
    keys = set()
    for i, (value,) in enumerate(variants):
        position = [0, 1, 1, 2, 2, 3, 4, 5, 6][i]
        args = list(base)
        args[position] = value
        keys.add(compile_cache_key(*args))
    assert key not in keys and len(keys) == len(variants)


_COMPILE_RUN = """
import json, sys, warnings
import numpy as np, torch
from segrt.engine import load
warnings.simplefilter("error", RuntimeWarning)
model = load(sys.argv[1], backend="torch", device="cpu", compile=True, cache_dir=sys.argv[2])
x = np.random.default_rng(0).standard_normal((1, 1, 16, 16)).astype(np.float32)
out = model.infer(x)
runner = model.runner
hits = int(torch._dynamo.utils.counters["inductor"]["fxgraph_cache_hit"])
np.save(sys.argv[3], out)
print(json.dumps({"loaded": [list(s) for s in runner.cache_loaded], "hits": hits,
                  "path": runner.compile_cache_path(x.shape)}))
"""


def test_compile_cache_is_written_signed_and_hot_loaded_in_a_fresh_process(tmp_path):
    """Compiled on the CPU (inductor's C++ path: the same cache code as on a GPU). A second
    process with an empty inductor cache compiles from segrt's cache; a file segrt did not
    write is refused and recompiled."""
    import json
    import os
    import subprocess
    import sys

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
    path = to_onnx(net, _rand((1, 1, 16, 16)), tmp_path / "tiny.onnx", check_shapes=[]).path
    cache = tmp_path / "cache"

    def run(name, expect_ok=True):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}")}
        proc = subprocess.run([sys.executable, "-c", _COMPILE_RUN, str(path), str(cache), str(tmp_path / name)],
                              capture_output=True, text=True, env=env, timeout=600)
        if not expect_ok:
            return proc
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run("first")
    assert first["loaded"] == [] and os.path.isfile(first["path"]) and os.path.isfile(first["path"] + ".json")
    second = run("second")
    assert second["loaded"] == [[1, 1, 16, 16]] and second["hits"] >= 1 and second["path"] == first["path"]
    ref = load(path, backend="ort").infer(_rand((1, 1, 16, 16), 0))
    for name in ("first", "second"):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), ref, rtol=1e-4, atol=1e-5)
    with open(first["path"], "ab") as f:  # altered after segrt wrote it
        f.write(b"\0")
    refused = run("third", expect_ok=False)
    assert refused.returncode != 0 and "SHA-256 mismatch" in refused.stderr and "compiling instead" in refused.stderr
