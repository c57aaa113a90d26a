"""Triton Python-backend models of an exported segrt repository (``segrt export --triton``).

``Pipeline``: the segrt pipeline (pre-processing, tiling or sliding windows, NMS or clean-up)
around a network served by Triton as its own model, called through Triton's business logic
scripting (BLS): the pipeline calls the network a number of times that depends on the image
(tiles, windows), which a static ensemble cannot express. ``Network``: the network run by ONNX
Runtime inside the Python backend, for servers without Triton's ONNX Runtime backend.

Each repository model's ``model.py`` imports its class from here, so the server's Python
environment needs segrt installed (``pip install segrt``); ``triton_python_backend_utils``
is the module Triton's Python backend provides.
"""
from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["Pipeline", "Network"]


def _pb_utils():
    import triton_python_backend_utils as pb_utils  # provided by Triton's Python backend

    return pb_utils


def _network_file(args: dict, network: str) -> str:
    """The network's ONNX file in the repository (``<repo>/<network>/1/model.onnx``)."""
    repo = os.path.dirname(os.path.normpath(args["model_repository"]))
    return os.path.join(repo, network, "1", "model.onnx")


class _TritonNetwork:
    """A segrt model whose ``infer`` asks Triton to run the network model (BLS)."""

    backend = "triton"

    def __init__(self, network: str, path: str, input_name: str, output_names: list):
        from segrt.engine.model_file import inspect_model_file

        self.network, self.path = network, path
        self.metadata = inspect_model_file(path)[3]
        self.input_name, self.output_names = input_name, output_names

    def infer(self, batch):
        """As ``segrt.engine.model.Model.infer``: (N, C, *spatial) in (transposed for a channels-last
        graph), one array or a dict by output name out."""
        pb_utils = _pb_utils()
        x = np.ascontiguousarray(batch, np.float32)
        channels_last = self.metadata.get("layout") == "channels_last"
        if channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        request = pb_utils.InferenceRequest(model_name=self.network, requested_output_names=self.output_names,
                                            inputs=[pb_utils.Tensor(self.input_name, x)])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"the network model {self.network} failed: {response.error().message()}")
        outs = [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names]
        if channels_last:
            outs = [np.ascontiguousarray(np.moveaxis(o, -1, 1)) if o.ndim == x.ndim else o for o in outs]
        return outs[0] if len(outs) == 1 else dict(zip(self.output_names, outs))


class Pipeline:
    """``TritonPythonModel`` of ``<name>``: image (and optional spacing) in, labels and a JSON
    summary out, as ``segrt serve`` answers."""

    def initialize(self, args):
        from segrt.engine.serve import ServedModel

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        network = params["network"]
        net = _TritonNetwork(network, _network_file(args, network), params["network_input"],
                             json.loads(params["network_outputs"]))
        options = json.loads(params.get("pipeline_options", "{}"))
        self.served = ServedModel(net, **options)

    def execute(self, requests):
        pb_utils = _pb_utils()
        responses = []
        for request in requests:  # the dynamic batcher's gathered requests, one after another
            try:
                image = pb_utils.get_input_tensor_by_name(request, "image").as_numpy()
                spacing = pb_utils.get_input_tensor_by_name(request, "spacing")
                spacing = None if spacing is None else spacing.as_numpy()
                out = self.served.infer_batch(image, spacing)
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor("labels", out["labels"]), pb_utils.Tensor("summary", out["summary"])]))
            except Exception as err:  # the request's error goes back to its client; the model serves on
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{type(err).__name__}: {err}")))
        return responses

    def finalize(self):
        self.served = None


class Network:
    """``TritonPythonModel`` of ``<name>_net`` when Triton's ONNX Runtime backend is absent:
    the network's ONNX file run by ONNX Runtime through segrt."""

    def initialize(self, args):
        from segrt.engine.model import load

        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.model = load(path, backend="ort")
        config = json.loads(args["model_config"])
        self.input_name = config["input"][0]["name"]
        self.output_names = [o["name"] for o in config["output"]]

    def execute(self, requests):
        pb_utils = _pb_utils()
        responses = []
        for request in requests:
            try:
                batch = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
                out = self.model.infer(batch)
                if not isinstance(out, dict):
                    out = dict(zip(self.output_names, out if isinstance(out, (list, tuple)) else [out]))
                responses.append(pb_utils.InferenceResponse(output_tensors=[
                    pb_utils.Tensor(n, np.ascontiguousarray(out[n], np.float32)) for n in self.output_names]))
            except Exception as err:
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"{type(err).__name__}: {err}")))
        return responses

    def finalize(self):
        self.model = None
