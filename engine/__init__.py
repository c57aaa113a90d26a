"""segrt.engine: loading models, runtime backends and the pipelines built on them.

``load`` and ``sliding_window`` are imported with the package; the pipelines
(``VolumePipeline``, ``InstancePipeline``, ``VideoPipeline``) on first use.
"""
from __future__ import annotations

import importlib

from segrt.engine.model import (BACKENDS, InferenceError, InferInputError, InvalidModelError, IOInfo, Model,
                                ModelFileError, ModelTaskError, load)
from segrt.engine.sliding_window import sliding_window

_LAZY = {"VolumePipeline": "segrt.engine.volume", "InstancePipeline": "segrt.engine.instances",
         "VideoPipeline": "segrt.engine.video"}

__all__ = ["sliding_window", "load", "Model", "IOInfo", "BACKENDS", "ModelFileError", "InvalidModelError",
           "InferInputError", "InferenceError", "ModelTaskError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segrt.engine' has no attribute {name!r}")
