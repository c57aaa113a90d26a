"""Real-time 2D segmentation of video: ``VideoPipeline`` (pipeline.py), ``open_source``
(sources.py) and ``VideoStats`` (statistics.py); see pipeline.py for how frames flow."""
from __future__ import annotations

from segrt.engine.video.pipeline import INTERRUPTED, PALETTE, VIDEO_SUFFIXES, VideoPipeline
from segrt.engine.video.sources import SourceError, open_source
from segrt.engine.video.statistics import VideoStats, latency_cdf_png

__all__ = ["VideoPipeline", "VideoStats", "open_source", "SourceError", "PALETTE", "latency_cdf_png", "VIDEO_SUFFIXES",
           "INTERRUPTED"]
