"""PyTorch -> ONNX export, checked, simplified where that is safe, and verified against torch
in ONNX Runtime on the example and on inputs of other sizes."""
from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np

from segrt._optional import optional_import
from segrt.engine import metadata as md

__all__ = ["ExportReport", "ExportVerificationError", "to_onnx"]

DEFAULT_OPSET = 17
INPUT_NAME = "image"


class ExportVerificationError(ValueError):
    """The exported graph does not reproduce the torch model within tolerance."""


@dataclasses.dataclass
class ExportReport:
    path: str
    opset: int
    input_name: str
    output_names: list
    dynamic_axes: dict
    simplified: bool
    checks: list  # one entry per (input shape, output): max abs / rel error
    metadata: dict | None
    notes: list = dataclasses.field(default_factory=list)

    @property
    def max_abs_error(self) -> float:
        return max((c["max_abs"] for c in self.checks), default=0.0)


def _torch():
    return optional_import("torch", purpose="exporting PyTorch models")


def _outputs_of(out, names=None):
    """(names, tensors) of a model output: a tensor, a tuple / list of tensors or a dict."""
    torch = _torch()
    if isinstance(out, torch.Tensor):
        tensors, default = [out], ["output"]
    elif isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        tensors, default = list(out), [f"output_{i}" for i in range(len(out))]
    elif isinstance(out, dict) and all(isinstance(t, torch.Tensor) for t in out.values()):
        tensors, default = list(out.values()), [str(k) for k in out]
    else:
        raise ValueError("the model must return a tensor, a tuple / list of tensors or a dict of tensors, got "
                         f"{type(out).__name__}")
    names = list(names) if names else default
    if len(names) != len(tensors):
        raise ValueError(f"{len(names)} output names for {len(tensors)} outputs")
    return names, tensors


def _grown_shape(shape):
    """A different input size the network should accept: batch 2, each spatial axis grown by
    its largest power-of-two factor (at most half the size), which keeps its divisibility."""
    out = [2, shape[1]]
    for s in shape[2:]:
        p = 1
        while s % (2 * p) == 0 and 2 * p <= s // 2:
            p *= 2
        out.append(s + max(p, 1))
    return tuple(out)


def _run_torch(model, x):
    torch = _torch()
    with torch.no_grad():
        return model(torch.from_numpy(x))


def _compare(session, ref, x, names, atol, rtol):
    """ONNX Runtime on ``x`` against torch's outputs ``ref`` (NumPy arrays)."""
    ours = session.run(None, {session.get_inputs()[0].name: x})
    checks = []
    ok = True
    for name, a, b in zip(names, ours, ref):
        if a.shape != b.shape:
            raise ExportVerificationError(f"output {name!r}: ONNX Runtime gives shape {a.shape}, torch {b.shape} "
                                          f"for input {x.shape}")
        diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
        scale = float(np.abs(b).max()) if b.size else 0.0
        entry = {"input_shape": list(x.shape), "output": name, "max_abs": float(diff.max()) if diff.size else 0.0,
                 "max_rel": float(diff.max() / scale) if diff.size and scale > 0 else 0.0}
        entry["ok"] = bool(np.allclose(a, b, atol=atol, rtol=rtol))
        ok &= entry["ok"]
        checks.append(entry)
    return ok, checks


def store_metadata(proto, meta: dict) -> None:
    """Sets (validated) segrt metadata on an ONNX model proto, keeping its other properties."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != md.KEY]
    del proto.metadata_props[:]
    for k, v in kept:
        e = proto.metadata_props.add()
        e.key, e.value = k, v
    entry = proto.metadata_props.add()
    entry.key, entry.value = md.KEY, md.to_json(meta)


def to_onnx(model, example_input, path, *, metadata=None, dynamic_axes="auto", opset=None, verify=True,
            atol=1e-4, rtol=1e-3, simplify=True, output_names=None, check_shapes=None) -> ExportReport:
    """Export a torch module (nn.Module or TorchScript) to ONNX and prove it reproduces torch.

    Args:
        model: the network; put in eval mode here. One image input (N, C, *spatial).
        example_input: an example batch (torch tensor or NumPy array).
        path: where to write the .onnx file (its folder is created).
        metadata: segrt metadata (see segrt.engine.metadata) stored inside the file.
        dynamic_axes: "auto" (batch and spatial axes of the input and every output dynamic),
            None (all static) or a torch.onnx-style dict.
        opset: ONNX opset (default 17).
        verify: run the file in ONNX Runtime against torch on the example and on a bigger
            batch / spatial size (when dynamic), and raise ExportVerificationError with the
            measured error if any output differs beyond ``atol`` + ``rtol`` * |torch|.
        simplify: fold constants and fuse with onnxslim; the simplified graph is kept only
            if it passes the same verification.
        output_names: names of the outputs (default: the dict's keys, or metadata
            ``outputs``, or output / output_0...).
        check_shapes: extra input shapes to verify (default: the example and one bigger).

    Returns:
        an ExportReport (path, names, dynamic axes, per-input/output errors, notes).
    """
    torch = _torch()
    onnx = optional_import("onnx", purpose="exporting models")
    ort = optional_import("onnxruntime", purpose="verifying exported models")
    meta = md.validate(metadata) if metadata is not None else None
    if isinstance(example_input, np.ndarray):
        example = torch.from_numpy(np.ascontiguousarray(example_input, dtype=np.float32))
    elif isinstance(example_input, torch.Tensor):
        example = example_input.detach().float().cpu()
    else:
        raise ValueError(f"example_input must be a torch tensor or NumPy array, got {type(example_input).__name__}")
    if example.ndim not in (4, 5):
        raise ValueError(f"example_input must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(example.shape)}")
    if hasattr(model, "eval"):
        model.eval()
    with torch.no_grad():
        out = model(example)
    names, tensors = _outputs_of(out, output_names or (meta or {}).get("outputs"))
    if meta is not None:
        meta.setdefault("outputs", names)
        meta.setdefault("in_channels", int(example.shape[1]))
        meta.setdefault("spatial_dims", example.ndim - 2)
    if dynamic_axes == "auto":
        axes = {INPUT_NAME: {0: "batch", **{k: f"in_{k}" for k in range(2, example.ndim)}}}
        for i, (n, t) in enumerate(zip(names, tensors)):
            axes[n] = {0: "batch", **{k: f"{n}_{k}" for k in range(2, t.ndim)}}
    elif dynamic_axes is None:
        axes = {}
    elif isinstance(dynamic_axes, dict):
        axes = dynamic_axes
    else:
        raise ValueError(f"dynamic_axes must be 'auto', None or a dict, got {dynamic_axes!r}")
    opset = opset or DEFAULT_OPSET
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    notes = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "raw.onnx")
        torch.onnx.export(model, (example,), raw, input_names=[INPUT_NAME], output_names=names,
                          dynamic_axes=axes or None, opset_version=opset, dynamo=False)
        proto = onnx.load(raw)
    onnx.checker.check_model(proto)
    shapes = [tuple(example.shape)]
    if check_shapes:
        shapes += [tuple(s) for s in check_shapes]
    elif axes.get(INPUT_NAME):
        shapes.append(_grown_shape(tuple(example.shape)))
    rng = np.random.default_rng(0)
    inputs = [example.numpy()] + [rng.standard_normal(s).astype(np.float32) for s in shapes[1:]]
    references: dict = {}  # torch's outputs per input, computed once for every graph verified

    def torch_outputs(i):
        if i not in references:
            references[i] = [t.detach().cpu().numpy() for t in _outputs_of(_run_torch(model, inputs[i]))[1]]
        return references[i]

    def verify_proto(p):
        from segrt.engine.graph_rewrites import stable_instance_norm

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        run = onnx.ModelProto()
        run.CopyFrom(p)
        stable_instance_norm(run, example.ndim)  # as segrt's ORT backend runs it
        sess = ort.InferenceSession(run.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        all_ok, checks = True, []
        for i, x in enumerate(inputs):
            ok, c = _compare(sess, torch_outputs(i), x, names, atol, rtol)
            all_ok &= ok
            checks += c
        return all_ok, checks

    simplified = False
    checks: list = []
    if simplify:
        try:
            slim = optional_import("onnxslim", purpose="simplifying exported graphs")
            candidate = slim.slim(proto)
            onnx.checker.check_model(candidate)
            ok, candidate_checks = verify_proto(candidate) if verify else (True, [])
            if ok:
                proto, simplified, checks = candidate, True, candidate_checks
            else:
                notes.append("onnxslim's graph did not verify; kept the unsimplified export")
        except Exception as err:  # a simplifier failure must never fail the export
            notes.append(f"simplification skipped: {type(err).__name__}: {err}")
    if verify and not simplified:
        ok, checks = verify_proto(proto)
        if not ok:
            worst = max(checks, key=lambda c: c["max_abs"])
            raise ExportVerificationError(
                f"the ONNX graph differs from torch beyond atol={atol}, rtol={rtol}: output {worst['output']!r} "
                f"for input {tuple(worst['input_shape'])} has max abs error {worst['max_abs']:.3g} (max rel "
                f"{worst['max_rel']:.3g}); loosen the tolerances only if this error is acceptable for the task")
    if meta is not None:
        store_metadata(proto, meta)
    onnx.save(proto, path)
    return ExportReport(path=path, opset=opset, input_name=INPUT_NAME, output_names=names, dynamic_axes=axes,
                        simplified=simplified, checks=checks, metadata=meta, notes=notes)
