"""Loading an ONNX model safely and running it on a backend: ``segrt.engine.load``."""
from __future__ import annotations

import os

import numpy as np

from segrt._optional import optional_import
from segrt.engine import backends
from segrt.engine.model_file import (InferInputError, InvalidModelError, IOInfo, ModelFileError, inspect_model_file,
                                     shape_text)

__all__ = ["load", "as_model", "Model", "IOInfo", "ModelFileError", "InvalidModelError", "InferInputError",
           "ModelTaskError", "InferenceError", "BACKENDS"]

BACKENDS = backends.NAMES


class ModelTaskError(ValueError):
    """The model's task or metadata does not fit what the pipeline was asked to do."""


class InferenceError(RuntimeError):
    """The runtime failed while running a batch (the message names the model, backend and cause)."""


def _check_batch(x, info: IOInfo, path: str) -> np.ndarray:
    if hasattr(x, "__cuda_array_interface__"):
        raise InferInputError("this backend runs on the CPU; copy the device array to the host first")
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != len(info.shape):
        raise InferInputError(f"{os.path.basename(path)} expects input {info.name!r} of rank {len(info.shape)} "
                              f"(shape {shape_text(info.shape)}), got shape {x.shape}")
    for axis, (want, got) in enumerate(zip(info.shape, x.shape)):
        if want is not None and want != got:
            what = "channels" if axis == 1 else f"size along axis {axis}"
            raise InferInputError(f"{os.path.basename(path)} expects {want} {what} for input {info.name!r} "
                                  f"(shape {shape_text(info.shape)}), got shape {x.shape}")
    if x.dtype.name != info.dtype:
        raise InferInputError(f"{os.path.basename(path)} expects {info.dtype} input, got {x.dtype}; "
                              f"convert with x.astype(np.{info.dtype})")
    # one vectorised float32 sum (1.4 ms for 8 M voxels); only a non-finite sum (NaN / Inf, or
    # an overflow of huge finite values) pays for the exact count
    if x.dtype.kind == "f" and x.size and not np.isfinite(x.sum()):
        bad = int(x.size - np.count_nonzero(np.isfinite(x)))
        if bad:
            raise InferInputError(f"the batch holds {bad} NaN or infinite value(s); clean the input first")
    return np.ascontiguousarray(x)


def _check_device_batch(x, info: IOInfo, path: str):
    """The checks of _check_batch for a CUDA array (counted on the device, no host copy)."""
    cupy = optional_import("cupy", purpose="device inputs")
    x = cupy.asarray(x)  # wraps the caller's memory
    if x.ndim != len(info.shape) or any(w is not None and w != g for w, g in zip(info.shape, x.shape)):
        raise InferInputError(f"{os.path.basename(path)} expects input {info.name!r} of shape "
                              f"{shape_text(info.shape)}, got {tuple(x.shape)}")
    if x.dtype.name != info.dtype:
        raise InferInputError(f"{os.path.basename(path)} expects {info.dtype} input, got {x.dtype}")
    if not bool(cupy.isfinite(x).all()):
        raise InferInputError("the batch holds NaN or infinite values; clean the input first")
    return cupy.ascontiguousarray(x)


def _channels_first(out, ndim: int):
    if getattr(out, "ndim", 0) != ndim:
        return out
    xp = np if isinstance(out, np.ndarray) else optional_import("cupy")
    return xp.ascontiguousarray(xp.moveaxis(out, -1, 1))


class Model:
    """A loaded model: ``infer(batch)`` returns one array (one output) or a dict by output name."""

    def __init__(self, path, runner, backend: str, reason: str, inputs, outputs, metadata, metadata_source):
        self.path = path
        self.runner = runner
        self.backend = backend
        self.backend_reason = reason
        self.inputs = inputs
        self.outputs = outputs
        self.metadata = metadata
        self.metadata_source = metadata_source
        # callers always hand (N, C, *spatial) batches; a channels-last graph gets them transposed
        self.channels_last = (metadata or {}).get("layout") == "channels_last" and len(inputs[0].shape) in (4, 5)
        shape = inputs[0].shape
        self._batch_info = (IOInfo(inputs[0].name, (shape[0], shape[-1]) + tuple(shape[1:-1]), inputs[0].dtype)
                            if self.channels_last else inputs[0])

    @property
    def input_names(self):
        return [i.name for i in self.inputs]

    @property
    def output_names(self):
        return [o.name for o in self.outputs]

    def infer(self, batch):
        on_device = self.runner.DEVICE_ARRAYS and hasattr(batch, "__cuda_array_interface__")
        if on_device:
            x = _check_device_batch(batch, self._batch_info, self.path)
        else:
            x = _check_batch(batch, self._batch_info, self.path)
        if self.channels_last:
            xp = optional_import("cupy") if on_device else np
            x = xp.ascontiguousarray(xp.moveaxis(x, 1, -1))
        try:
            outs = self.runner(x)
        except InferInputError:
            raise
        except Exception as err:  # the runtimes' own exception types (ONNX Runtime's are not RuntimeError)
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise InferenceError(f"{os.path.basename(self.path)}: the {self.backend} backend failed on a batch of "
                                 f"shape {tuple(x.shape)}: {type(err).__name__}: {first}") from err
        if self.channels_last:  # image-shaped outputs back to (N, C, *spatial)
            outs = [_channels_first(o, x.ndim) for o in outs]
        if len(outs) == 1:
            return outs[0]
        return dict(zip(self.output_names, outs))

    __call__ = infer

    def __repr__(self) -> str:
        return (f"Model({os.path.basename(self.path)!r}, backend={self.backend!r}, inputs="
                f"{[(i.name, shape_text(i.shape)) for i in self.inputs]}, outputs={self.output_names})")


def load(path, *, backend="auto", **options) -> Model:
    """Load an ONNX model for inference.

    Args:
        path: the .onnx file (external data must sit in its folder).
        backend: "auto" (the first available of ``segrt.engine.backends.AUTO_ORDER``; the
            choice and why are in ``model.backend_reason``), or a backend's name: "trt",
            "torch", "ort-gpu", "openvino", "ort".
        options: backend options (each runner's ``OPTIONS`` lists and describes them): ort:
            ``threads``, ``spinning``; torch: ``device``, ``precision``, ``compile``, ``cuda_graph``;
            openvino: ``threads``, ``streams``, ``precision``
            ("f32" default, "bf16" opt-in); trt: ``precision``, ``cache_dir``, ``calibration``,
            ... An option the backend does not take is a ValueError that lists the ones it does.

    Returns:
        a Model with ``infer``, ``metadata``, ``backend``, ``inputs`` / ``outputs``.
    """
    if backend not in backends.NAMES:
        raise ValueError(f"backend must be one of {backends.NAMES}, got {backend!r}")
    path = os.fspath(path)
    proto, inputs, outputs, meta, source = inspect_model_file(path)
    if len(inputs) != 1:
        raise InvalidModelError(f"{path} has {len(inputs)} inputs; segrt models take one image batch")
    chosen, reason = backends.choose(backend)
    backends.check_options(chosen, options)
    runner = backends.runner_class(chosen)(path, inputs, outputs, metadata=meta, proto=proto, **options)
    return Model(path, runner, chosen, reason, inputs, outputs, meta, source)


def as_model(model, backend="auto", options=None):
    """A loaded model as it is (anything with ``infer`` and ``metadata``), else ``load`` the file."""
    if hasattr(model, "infer") and hasattr(model, "metadata"):
        return model
    return load(model, backend=backend, **(options or {}))
