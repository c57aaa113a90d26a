"""segrt.engine: inference pipelines and runtime backends."""
from __future__ import annotations

from segrt.engine.model import BACKENDS, InferInputError, InvalidModelError, IOInfo, Model, ModelFileError, load
from segrt.engine.sliding_window import sliding_window

__all__ = ["sliding_window", "load", "Model", "IOInfo", "BACKENDS", "ModelFileError", "InvalidModelError",
           "InferInputError"]
