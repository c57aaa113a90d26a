"""Stateless array kernels: each op has one public module with its contract and a plain
reference, a compiled CPU implementation and (where it exists) a GPU one beside it.

Ops: ``segrt.kernels.stitch`` (sliding-window planning, weighted accumulation, argmax),
``segrt.kernels.starnms`` (star-convex NMS and rendering), ``segrt.kernels.label``
(connected components and the clean-ups built on them), ``segrt.kernels.overlay`` (class
colours blended into video frames). Every op takes ``device="auto" | "reference" | "cpu" |
"cuda"`` (see ``segrt.kernels._device``).
"""
from __future__ import annotations

__all__ = ["OPS", "build_info"]

OPS = ("stitch", "starnms", "label", "overlay")


def build_info() -> dict:
    """How the compiled kernels were built: OpenMP, Clipper and the thread count; or why they
    did not load (``{"error": ...}``)."""
    from segrt.kernels import _ext

    if not _ext.available():
        return {"error": _ext.load_error()}
    C = _ext.extension()
    return {"openmp": bool(C.has_openmp), "clipper": bool(C.has_clipper), "threads": int(C.max_threads())}
