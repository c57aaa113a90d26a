"""Benchmarks: segrt against the tools people use today, same data, same process.

``python -m segrt.bench nms`` (star-convex NMS vs StarDist). The shared harness lives in
``segrt.bench.harness``; peer wrappers in ``segrt.bench.peers``.
"""
