"""``python -m segrt.bench <benchmark> [options]``: run one benchmark, write its results JSON."""
from __future__ import annotations

import sys

BENCHMARKS = {
    "nms": "segrt.bench.nms",
    "label": "segrt.bench.label",
    "stitch": "segrt.bench.stitch",
    "engine": "segrt.bench.engine",
    "pipeline": "segrt.bench.pipeline",
    "report": "segrt.bench.report",
    "gpu-kernels": "segrt.bench.gpu_kernels",
    "nnunet": "segrt.bench.nnunet",
    "batch": "segrt.bench.batch",
    "slide": "segrt.bench.slide",
    "slide_volume": "segrt.bench.slide_volume",
    "serve": "segrt.bench.serve",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        print("usage: python -m segrt.bench {" + ",".join(BENCHMARKS) + "} [options]")
        print("       python -m segrt.bench nms --help")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"unknown benchmark {argv[0]!r}; available: {', '.join(BENCHMARKS)}")
            return 2
        return 0
    import importlib

    importlib.import_module(BENCHMARKS[argv[0]]).main(argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
