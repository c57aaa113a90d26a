"""An ONNX graph as a PyTorch module, for the ``torch`` backend: the same model file, run by
PyTorch (on a GPU, compiled with ``torch.compile`` and CUDA graphs; on the CPU as a reference).

The module holds the graph's initializers as buffers and evaluates its nodes in order; the
walk is plain Python over a fixed list, so ``torch.compile`` traces it into one graph. Each
supported op follows the ONNX operator specification (opset 11 and later); anything else is
refused when the model is loaded, naming the ops, so a model never runs half-converted.

Why our own: onnx2torch (the maintained converter) imports torchvision at load time for one
op, and torchvision is tied to each torch build (the GPU test machine has torch without it);
segrt's models use a dozen ops (convolutions, transposed convolutions, max pooling, instance
normalisation, PReLU / ReLU / sigmoid / softplus / softmax, add, concat), all covered here.
"""
from __future__ import annotations

import numpy as np

from segrt._optional import optional_import

__all__ = ["SUPPORTED_OPS", "UnsupportedModelError", "to_torch_module", "unsupported_ops"]


class UnsupportedModelError(ValueError):
    """The graph uses an op (or an op setting) the torch backend does not implement."""


def _attrs(node) -> dict:
    onnx = optional_import("onnx")
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _split_pads(pads, n):
    """ONNX pads (x1_begin, x2_begin, ..., x1_end, ...) as ([begins], [ends])."""
    pads = list(pads) if pads else [0] * (2 * n)
    return pads[:n], pads[n:]


def _torch_pad(begins, ends):
    """F.pad's order: last axis first, (begin, end) each."""
    out = []
    for b, e in zip(reversed(begins), reversed(ends)):
        out += [int(b), int(e)]
    return out


def _check_auto_pad(node, attrs):
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
        raise UnsupportedModelError(f"{node.op_type} node {node.name!r}: auto_pad {attrs['auto_pad']!r} is not supported "
                                    "by the torch backend (export with explicit pads)")


def _conv(F, x, w, b, attrs, n):
    begins, ends = _split_pads(attrs.get("pads"), n)
    stride = attrs.get("strides", [1] * n)
    dilation = attrs.get("dilations", [1] * n)
    group = attrs.get("group", 1)
    fn = (F.conv1d, F.conv2d, F.conv3d)[n - 1]
    if begins == ends:
        return fn(x, w, b, stride, begins, dilation, group)
    return fn(F.pad(x, _torch_pad(begins, ends)), w, b, stride, 0, dilation, group)


def _conv_transpose(F, x, w, b, attrs, n):
    if "output_shape" in attrs:
        raise UnsupportedModelError("ConvTranspose with output_shape is not supported by the torch backend")
    begins, ends = _split_pads(attrs.get("pads"), n)
    stride = attrs.get("strides", [1] * n)
    dilation = attrs.get("dilations", [1] * n)
    out_pad = attrs.get("output_padding", [0] * n)
    group = attrs.get("group", 1)
    fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[n - 1]
    if begins == ends:
        return fn(x, w, b, stride, begins, out_pad, group, dilation)
    y = fn(x, w, b, stride, 0, out_pad, group, dilation)  # then crop the asymmetric pads
    index = (slice(None), slice(None)) + tuple(slice(int(bg), y.shape[2 + k] - int(e)) for k, (bg, e)
                                               in enumerate(zip(begins, ends)))
    return y[index]


def _max_pool(F, x, attrs, n):
    kernel = attrs["kernel_shape"]
    stride = attrs.get("strides", [1] * n)
    dilation = attrs.get("dilations", [1] * n)
    begins, ends = _split_pads(attrs.get("pads"), n)
    ceil = bool(attrs.get("ceil_mode", 0))
    fn = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[n - 1]
    if begins == ends and all(2 * p <= k for p, k in zip(begins, kernel)):
        return fn(x, kernel, stride, begins, dilation, ceil)
    return fn(F.pad(x, _torch_pad(begins, ends), value=float("-inf")), kernel, stride, 0, dilation, ceil)


def _softmax(torch, x, attrs, opset):
    axis = attrs.get("axis", -1 if opset >= 13 else 1)
    if opset >= 13:
        return torch.softmax(x, dim=axis)
    axis = axis % x.dim()  # before opset 13: over the flattened trailing axes
    flat = x.reshape(tuple(x.shape[:axis]) + (-1,))
    return torch.softmax(flat, dim=-1).reshape(x.shape)


def _run(torch, F, op, node, attrs, args, opset):
    """One node's outputs (a tuple)."""
    x = args[0] if args else None
    if op == "Conv":
        return (_conv(F, x, args[1], args[2] if len(args) > 2 else None, attrs, x.dim() - 2),)
    if op == "ConvTranspose":
        return (_conv_transpose(F, x, args[1], args[2] if len(args) > 2 else None, attrs, x.dim() - 2),)
    if op == "MaxPool":
        return (_max_pool(F, x, attrs, x.dim() - 2),)
    if op == "AveragePool":
        n = x.dim() - 2
        begins, ends = _split_pads(attrs.get("pads"), n)
        if begins != ends:
            raise UnsupportedModelError("AveragePool with asymmetric pads is not supported by the torch backend")
        fn = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[n - 1]
        return (fn(x, attrs["kernel_shape"], attrs.get("strides", [1] * n), begins, bool(attrs.get("ceil_mode", 0)),
                   bool(attrs.get("count_include_pad", 0))),)
    if op == "GlobalAveragePool":
        return (x.mean(dim=tuple(range(2, x.dim())), keepdim=True),)
    if op == "InstanceNormalization":
        return (F.instance_norm(x, weight=args[1], bias=args[2], eps=float(attrs.get("epsilon", 1e-5))),)
    if op == "BatchNormalization":
        return (F.batch_norm(x, args[3], args[4], args[1], args[2], False, 0.0, float(attrs.get("epsilon", 1e-5))),)
    if op == "Relu":
        return (torch.relu(x),)
    if op == "PRelu":
        return (torch.where(x >= 0, x, x * args[1]),)
    if op == "LeakyRelu":
        return (F.leaky_relu(x, float(attrs.get("alpha", 0.01))),)
    if op == "Sigmoid":
        return (torch.sigmoid(x),)
    if op == "Tanh":
        return (torch.tanh(x),)
    if op == "Softplus":
        return (F.softplus(x),)
    if op == "Softmax":
        return (_softmax(torch, x, attrs, opset),)
    if op == "Clip":
        lo = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
        hi = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
        return (torch.clamp(x, lo, hi),)
    if op in ("Add", "Sub", "Mul", "Div"):
        fn = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op]
        return (fn(args[0], args[1]),)
    if op == "Concat":
        return (torch.cat(args, dim=int(attrs["axis"])),)
    if op == "Identity":
        return (x,)
    raise UnsupportedModelError(f"op {op} is not supported by the torch backend")  # unsupported_ops() vets first


SUPPORTED_OPS = frozenset({
    "Conv", "ConvTranspose", "MaxPool", "AveragePool", "GlobalAveragePool", "InstanceNormalization",
    "BatchNormalization", "Relu", "PRelu", "LeakyRelu", "Sigmoid", "Tanh", "Softplus", "Softmax", "Clip", "Add",
    "Sub", "Mul", "Div", "Concat", "Identity", "Constant",
})


def unsupported_ops(proto) -> list[str]:
    """The graph's ops (default domain) the torch backend does not implement, sorted."""
    return sorted({n.op_type for n in proto.graph.node if n.op_type not in SUPPORTED_OPS or n.domain not in ("", "ai.onnx")})


def to_torch_module(proto):
    """An ``nn.Module`` that evaluates the ONNX graph ``proto``: forward(x) -> list of outputs."""
    torch = optional_import("torch", purpose="the torch backend")
    numpy_helper = optional_import("onnx.numpy_helper")
    missing = unsupported_ops(proto)
    if missing:
        raise UnsupportedModelError(f"the torch backend does not implement {', '.join(missing)}; run this model with "
                                    "backend='ort', 'openvino' or 'trt'")
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=11)
    graph = proto.graph
    initializer_names = {t.name for t in graph.initializer}
    graph_inputs = [i.name for i in graph.input if i.name not in initializer_names]
    if len(graph_inputs) != 1:
        raise UnsupportedModelError(f"the torch backend runs graphs with one input, this one has {len(graph_inputs)}")

    class OnnxGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self._slots = {}
            for k, t in enumerate(graph.initializer):
                arr = np.array(numpy_helper.to_array(t))
                self.register_buffer(f"c{k}", torch.from_numpy(arr.copy()) if arr.ndim else torch.tensor(arr))
                self._slots[t.name] = f"c{k}"
            self._steps = []
            for node in graph.node:
                attrs = _attrs(node)
                if node.op_type == "Constant":
                    k = len(self._slots)
                    value = attrs.get("value")
                    if value is None:
                        raise UnsupportedModelError(f"Constant node {node.name!r}: only tensor values are supported")
                    arr = np.array(numpy_helper.to_array(value))
                    self.register_buffer(f"c{k}", torch.from_numpy(arr.copy()) if arr.ndim else torch.tensor(arr))
                    self._slots[node.output[0]] = f"c{k}"
                    continue
                if node.op_type in ("Conv", "ConvTranspose", "MaxPool"):
                    _check_auto_pad(node, attrs)
                if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
                    raise UnsupportedModelError("MaxPool with an indices output is not supported by the torch backend")
                self._steps.append((node.op_type, node, attrs, list(node.input), list(node.output)))
            self._input = graph_inputs[0]
            self._outputs = [o.name for o in graph.output]

        def forward(self, x):
            env = {self._input: x}
            for name, slot in self._slots.items():
                env[name] = getattr(self, slot)
            for op, node, attrs, inputs, outputs in self._steps:
                args = [env[i] if i else None for i in inputs]
                results = _run(torch, torch.nn.functional, op, node, attrs, args, opset)
                for name, value in zip(outputs, results):
                    if name:
                        env[name] = value
            return [env[o] for o in self._outputs]

    return OnnxGraph().eval()
