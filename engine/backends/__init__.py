"""Runtime backends: one module per runtime, a registry from name to runner, and ``auto``.

============  ==========================  ==========================================
name          module                      runs on
============  ==========================  ==========================================
``trt``       ``backends.tensorrt``       NVIDIA GPU, TensorRT engines (cached build)
``torch``     ``backends.pytorch``        NVIDIA GPU, PyTorch (torch.compile, CUDA graphs); CPU reference
``ort-gpu``   ``backends.onnxruntime``    NVIDIA GPU, ONNX Runtime's CUDA provider
``openvino``  ``backends.openvino``       CPU, OpenVINO (f32, bf16 on request)
``ort``       ``backends.onnxruntime``    CPU, ONNX Runtime
============  ==========================  ==========================================

``auto`` takes the first available backend in ``AUTO_ORDER`` and says why, naming every
backend it passed over and the reason. Runner modules are imported only when chosen.
"""
from __future__ import annotations

import importlib

from segrt.engine.backends.base import Runner, usable_cpus

__all__ = ["AUTO_ORDER", "NAMES", "Runner", "BackendUnavailableError", "runner_class", "choose", "check_options",
           "usable_cpus"]

# name -> (module, class); the modules import their runtime lazily
_REGISTRY = {
    "trt": ("segrt.engine.backends.tensorrt", "TrtRunner"),
    "torch": ("segrt.engine.backends.pytorch", "TorchRunner"),
    "ort-gpu": ("segrt.engine.backends.onnxruntime", "OrtGpuRunner"),
    "openvino": ("segrt.engine.backends.openvino", "OpenVinoRunner"),
    "ort": ("segrt.engine.backends.onnxruntime", "OrtRunner"),
}
# GPUs first; on the CPU OpenVINO before ONNX Runtime (2-4x faster on this project's UNets, bench/engine.py)
AUTO_ORDER = ("trt", "torch", "ort-gpu", "openvino", "ort")
NAMES = ("auto",) + tuple(_REGISTRY)


class BackendUnavailableError(RuntimeError):
    """A backend was named that cannot run here (the message says why and how to get it)."""


def runner_class(name: str) -> type[Runner]:
    """The runner class registered under ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(module), cls)


def choose(backend: str = "auto") -> tuple[str, str]:
    """(backend name, why): the named backend if it can run here, or the first of ``AUTO_ORDER``
    that can. A named backend that cannot run raises BackendUnavailableError."""
    if backend != "auto":
        why_not = runner_class(backend).unavailable()
        if why_not:
            raise BackendUnavailableError(f"backend {backend!r} cannot run here: {why_not}")
        return backend, "requested"
    skipped = []
    for name in AUTO_ORDER:
        cls = runner_class(name)
        # a backend may run here when named yet not be auto's choice (torch on the CPU: a reference)
        why_not = getattr(cls, "unavailable_for_auto", cls.unavailable)()
        if why_not is None:
            return name, "; ".join(skipped + [f"{name}: {runner_class(name).CHOSEN_BECAUSE}"])
        skipped.append(f"{name}: {why_not}")
    raise BackendUnavailableError("no backend can run here: " + "; ".join(skipped))


def check_options(name: str, options: dict) -> None:
    """Options the backend does not take are an error that lists the ones it does."""
    accepted = runner_class(name).OPTIONS
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        listed = "; ".join(f"{k}: {v}" for k, v in accepted.items()) or "none"
        raise ValueError(f"backend {name!r} takes the options {sorted(accepted)}, not {unknown} ({listed})")
    threads = options.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer (or None: the backend's choice), got {threads!r}")
