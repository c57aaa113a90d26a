"""The layers point down: every module's imports parsed, an upward import or a private name taken
from another package fails. kernels < engine < export < bench < models < the package root."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# the package root's helpers every layer may use
FOUNDATION = {"segrt._optional", "segrt._version"}
LAYERS = {"kernels": 1, "engine": 2, "export": 3, "bench": 4, "models": 5}
TOP = 6  # segrt/: CLI, demo, public API


def _module_files():
    for folder in list(LAYERS) + ["segrt"]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[0] != "segrt":
                parts.insert(0, "segrt")
            if parts[-1] == "__init__":
                parts.pop()
            yield path, ".".join(parts)


def _layer(module: str) -> int:
    if module in FOUNDATION or any(module.startswith(f + ".") for f in FOUNDATION):
        return 0
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS[parts[1]]
    return TOP


def _package(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1] in LAYERS else "segrt"


def _imports(path: pathlib.Path, module: str):
    """(imported module, imported names, line) of every import, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            yield base, [a.name for a in node.names], node.lineno


def test_every_layer_is_found():
    modules = dict((m, p) for p, m in _module_files())
    for layer in LAYERS:
        assert f"segrt.{layer}" in modules, layer
    assert "segrt.cli" in modules and "segrt.engine.model" in modules


def test_imports_only_point_down_and_private_names_stay_in_their_package():
    upward, private = [], []
    for path, module in _module_files():
        mine = _layer(module)
        for target, names, line in _imports(path, module):
            if not target.startswith("segrt"):
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {target}"
            if _layer(target) > mine:
                upward.append(where)
            if _package(target) != _package(module) and _layer(target) != 0:
                hidden = [p for p in target.split(".") if p.startswith("_") and not p.startswith("__")]
                hidden += [n for n in names if n.startswith("_") and not n.startswith("__")]
                if hidden:
                    private.append(f"{where} ({', '.join(hidden)})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)
    assert not private, "private names taken across packages:\n" + "\n".join(private)


def test_the_checker_sees_an_upward_and_a_private_import(tmp_path):
    # the test above must be able to fail: feed it one bad module of each kind
    bad = tmp_path / "bad.py"
    bad.write_text("from segrt.engine.model import load\nfrom segrt.engine import _secret\n")
    found = list(_imports(bad, "segrt.kernels.bad"))
    assert _layer(found[0][0]) > _layer("segrt.kernels.bad")
    assert _package(found[1][0]) != _package("segrt.kernels.bad") and "_secret" in found[1][1]


def test_every_op_has_one_layout():
    # kernels/<op>/: __init__.py (contract, checks, one dispatch table), _reference.py, _cpu.py
    import importlib

    from segrt.kernels import OPS

    found = sorted(p.name for p in (ROOT / "kernels").iterdir() if (p / "__init__.py").is_file())
    assert found == sorted(OPS)
    for op in OPS:
        module = importlib.import_module(f"segrt.kernels.{op}")
        assert module.__doc__ and len(module.__doc__) > 200, op  # the contract is written down
        table = module.IMPLEMENTATIONS
        assert {"reference", "cpu"} <= set(table) <= {"reference", "cpu", "cuda"}, op
        for device, name in table.items():
            assert name == f"segrt.kernels.{op}._{device}"
            assert (ROOT / "kernels" / op / f"_{device}.py").is_file()
        # the implementations offer the same functions
        ref, cpu = (importlib.import_module(table[d]) for d in ("reference", "cpu"))
        public = {n for n in vars(ref) if not n.startswith("_") and callable(getattr(ref, n))}
        called = {n for n in public if n in vars(cpu)}
        assert called, op


def test_device_resolver_follows_the_data():
    from segrt.kernels import _device

    class OnGpu:
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}

    class DLPackOnGpu:
        def __dlpack_device__(self):
            return (2, 0)

    table = {"reference": "x", "cpu": "y", "cuda": "z"}
    import numpy as np

    assert _device.resolve("op", table, "auto", np.zeros(2)) == "cpu"
    assert _device.resolve("op", table, "auto", OnGpu()) == "cuda"
    assert _device.resolve("op", table, "auto", DLPackOnGpu()) == "cuda"
    assert _device.resolve("op", table, "reference", np.zeros(2)) == "reference"
    import pytest

    with pytest.raises(ValueError, match="runs on the host, but an input is a GPU array"):
        _device.resolve("op", table, "cpu", OnGpu())
    with pytest.raises(NotImplementedError, match="op: the GPU"):
        _device.resolve("op", {"reference": "x", "cpu": "y"}, "cuda")
    with pytest.raises(ValueError, match="device must be one of"):
        _device.resolve("op", table, "tpu")


def test_kernels_launch_on_the_callers_stream_without_a_host_sync(monkeypatch):
    """On a GPU every kernel goes to CuPy's current stream (the one torch / TensorRT run on),
    its arrays handed over without Numba's stream synchronisation; stand-ins record it here."""
    from segrt.kernels import gpu

    seen = {}

    class Kernel:
        def __getitem__(self, config):
            seen["config"] = config
            return lambda *args: seen.setdefault("args", args)

    class FakeCuda:
        @staticmethod
        def as_cuda_array(a, sync=True):
            return ("converted", a, sync)

    class OnGpu:
        __cuda_array_interface__ = {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}

    monkeypatch.setattr(gpu, "simulated", lambda: False)
    monkeypatch.setattr(gpu, "cuda", lambda: FakeCuda)
    monkeypatch.setattr(gpu, "_current_stream", lambda: "worker stream")
    arr = OnGpu()
    gpu.launch(Kernel(), 1000, arr, 7)
    assert seen["config"] == (4, 256, "worker stream")
    assert seen["args"] == (("converted", arr, False), 7)
    seen.clear()
    monkeypatch.setattr(gpu, "_current_stream", lambda: None)  # the legacy default stream
    gpu.launch(Kernel(), 10, arr, threads=64)
    assert seen["config"] == (1, 64)
