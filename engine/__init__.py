"""segrt.engine: inference pipelines and runtime backends."""
from __future__ import annotations

from segrt.engine.sliding_window import sliding_window

__all__ = ["sliding_window"]
