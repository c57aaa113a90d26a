"""A segrt model with its whole pipeline served by NVIDIA Triton Inference Server (PyTriton).

One Triton model per segrt model, named after it (``nuclei``, or the file's stem). A client
needs nothing of segrt: it sends the image as ``segrt run`` reads it and receives the label
image and a JSON summary.

    input  image    FP32, (H, W) for a one-channel 2D model, (H, W, C) for C channels (also
                    (H, W, 3) colour for a grey 2D model: converted to luminance as segrt run
                    does), (D, H, W) for 3D models; the values as read from the file
    input  spacing  FP32 (ndim,), optional: pixel / voxel size in mm (3D semantic models
                    resample with it; without it 1 mm is assumed, as for a bare array)
    output labels   INT32, the input's spatial shape
    output summary  BYTES (1,): JSON (objects with points and scores for star-convex models,
                    areas or volumes per class for semantic models, per-stage timings)

Requests are batched dynamically (Triton gathers concurrent requests of the same shape, as
video frames are, up to ``max_batch_size`` within ``queue_delay_us``); segrt runs the
gathered images one after another through the pipeline in one call. Triton's own endpoints
serve health (``/v2/health/live``, ``/v2/health/ready``) and metadata (``/v2/models/NAME``),
HTTP and gRPC. A request segrt refuses (NaN values, a shape the model cannot take) is answered
with segrt's error message and the server goes on serving.
"""
from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["ServedModel", "served_model", "serve", "model_name"]


def model_name(model) -> str:
    """The served name: the file's stem (``nuclei`` for the demo model)."""
    path = getattr(model, "path", model)
    base = os.path.basename(os.fspath(path))
    stem = base[:-len(".onnx")] if base.lower().endswith(".onnx") else os.path.splitext(base)[0]
    name = "".join(c if c.isalnum() or c in "_-" else "_" for c in stem)
    return name or "segrt"


class ServedModel:
    """A loaded model and its pipeline as Triton sees it: tensors and an inference function
    over one request's image (``run``) or a gathered batch (``infer_batch``)."""

    def __init__(self, model, *, tile=None, prob_thresh=None, nms_thresh=None, overlap=0.5):
        from segrt.engine.model import as_model

        self.model = as_model(model)
        meta = self.model.metadata or {}
        task = meta.get("task")
        if task is None:
            raise ValueError(f"{getattr(self.model, 'path', 'the model')} has no segrt metadata: describe it first "
                             "(segrt describe MODEL --task ... -o described.onnx)")
        self.task = task
        self.channels = int(meta.get("in_channels", 1))
        if task in ("star-convex-2d", "star-convex-3d"):
            from segrt.engine.instances import InstancePipeline

            self.pipeline = InstancePipeline(self.model, tile=tile, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
            self.ndim = self.pipeline.ndim
        elif task == "semantic" and meta.get("spatial_dims", len(meta.get("window", ()))) == 2:
            from segrt.engine.image import ImagePipeline

            self.pipeline, self.ndim = ImagePipeline(self.model, overlap=overlap), 2
        elif task == "semantic":
            from segrt.engine.volume import VolumePipeline

            self.pipeline, self.ndim = VolumePipeline(self.model, overlap=overlap), 3
        else:
            raise ValueError(f"segrt serve runs semantic and star-convex models, not task {task!r}")
        self.name = model_name(self.model)

    @property
    def image_shape(self) -> tuple:
        """The image tensor's shape without the batch axis (-1: any size)."""
        if self.ndim == 3:
            return (-1, -1, -1)
        return (-1, -1) if self.channels == 1 else (-1, -1, self.channels)

    def run(self, image: np.ndarray, spacing=None) -> tuple:
        """(labels, summary) of one image, as ``segrt run`` computes them."""
        from segrt.engine import io

        image = np.asarray(image)
        if image.ndim == 2 + (self.ndim == 3) and image.dtype.kind == "f" and not np.isfinite(image).all():
            bad = int(np.count_nonzero(~np.isfinite(image)))
            raise io.InputFileError(f"request: {bad} of the image's {image.size} values are NaN or infinite; "
                                    "send finite values")
        spacing = None if spacing is None else tuple(float(v) for v in np.asarray(spacing).reshape(-1))
        if self.task.startswith("star-convex"):
            result = self.pipeline.run(image, source="request")
            summary = result.summary()
            summary["objects_table"] = [{"id": i + 1, "point": [int(v) for v in p], "score": round(float(s), 6)}
                                        for i, (p, s) in enumerate(zip(result.points, result.scores))]
            return result.labels, summary
        if self.ndim == 2:
            result = self.pipeline.run(image, pixel_size_mm=spacing, source="request")
        else:
            result = self.pipeline.run(image, spacing=spacing)
        return result.labels, result.summary()

    def infer_batch(self, image: np.ndarray, spacing=None) -> dict:
        """Triton's batched call: images (B, ...) -> labels (B, ...) and summaries (B, 1)."""
        labels, summaries = [], []
        for b in range(image.shape[0]):
            lab, summary = self.run(image[b], None if spacing is None else spacing[b])
            labels.append(np.asarray(lab, np.int32))
            summaries.append(json.dumps(summary, default=_plain).encode())
        return {"labels": np.stack(labels), "summary": np.array(summaries, dtype=object).reshape(-1, 1)}


def _plain(value):
    """JSON for NumPy scalars and arrays in summaries."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _use_this_libpython() -> None:
    """Triton's Python backend stub embeds libpython: it must load this interpreter's (a system
    libpython of another patch release beside it makes the stub run this interpreter's standard
    library on the other's runtime, and fail). The server inherits the environment."""
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR")
    if not sysconfig.get_config_var("Py_ENABLE_SHARED") or not libdir:
        return
    paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir not in paths:
        os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + paths)


def served_model(model, **options) -> ServedModel:
    return ServedModel(model, **options)


def serve(model, *, name=None, address="127.0.0.1", http_port=8000, grpc_port=8001, metrics_port=8002,
          max_batch_size=8, queue_delay_us=2000, backend="auto", block=True, exit_timeout_s=30, **options):
    """Serves ``model`` (a .onnx path or a loaded model) on Triton until interrupted.

    Args:
        name: the Triton model name (default: the file's stem).
        address: the interface the HTTP, gRPC and metrics endpoints listen on (default the
            loopback only; "0.0.0.0" for every interface).
        http_port, grpc_port, metrics_port: Triton's ports.
        max_batch_size, queue_delay_us: the dynamic batcher (requests of one shape gathered).
        exit_timeout_s: on stop, how long requests in flight may take to finish.
        block: serve until SIGINT / SIGTERM (the CLI); False returns the started
            ``pytriton.triton.Triton`` (tests, notebooks: call ``.stop()``).
        options: ``tile``, ``prob_thresh``, ``nms_thresh``, ``overlap`` (as segrt run).
    """
    from segrt._optional import optional_import

    optional_import("pytriton", purpose="segrt serve (NVIDIA Triton Inference Server through PyTriton)")
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from segrt.engine.model import load

    if isinstance(model, (str, os.PathLike)):
        model = load(model, backend=backend)
    served = ServedModel(model, **options)
    name = name or served.name
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")

    @batch
    def infer(image, spacing=None):
        return served.infer_batch(image, spacing)

    _use_this_libpython()
    config = TritonConfig(http_address=address, http_port=http_port, grpc_address=address, grpc_port=grpc_port,
                          metrics_address=address, metrics_port=metrics_port, allow_gpu_metrics=False,
                          exit_timeout_secs=int(exit_timeout_s))
    triton = Triton(config=config)
    triton.bind(
        model_name=name,
        infer_func=infer,
        inputs=[Tensor(name="image", dtype=np.float32, shape=served.image_shape),
                Tensor(name="spacing", dtype=np.float32, shape=(served.ndim,), optional=True)],
        outputs=[Tensor(name="labels", dtype=np.int32, shape=served.image_shape[:served.ndim]),
                 Tensor(name="summary", dtype=bytes, shape=(1,))],
        config=ModelConfig(max_batch_size=max_batch_size,
                           batcher=DynamicBatcher(max_queue_delay_microseconds=int(queue_delay_us))),
        strict=True,
    )
    if not block:
        triton.run()
        return triton
    try:
        triton.serve()
    finally:
        triton.stop()
    return None
