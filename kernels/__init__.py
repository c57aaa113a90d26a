"""Stateless array kernels: each op has a plain reference and fast CPU / GPU versions.

Ops: ``segrt.kernels.starnms`` (star-convex NMS and rendering).
"""
