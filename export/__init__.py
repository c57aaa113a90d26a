"""segrt.export: PyTorch -> ONNX (verified) and self-describing model metadata.

torch and onnx are needed only here (the ``export`` extra), never at run time.
"""
from __future__ import annotations

from segrt.engine.metadata import MetadataError
from segrt.export.onnx_export import ExportReport, ExportVerificationError, to_onnx

__all__ = ["to_onnx", "ExportReport", "ExportVerificationError", "MetadataError"]
