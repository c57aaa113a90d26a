"""The ``segrt`` command line."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="segrt",
        description="segrt: compiled inference engine for medical image segmentation.",
    )
    sub = ap.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="run a benchmark (e.g. `segrt bench nms --quick`)", add_help=False)
    b.add_argument("rest", nargs=argparse.REMAINDER)
    sub.add_parser("info", help="show the build (compiled kernels, OpenMP, Clipper) and versions")
    args = ap.parse_args(argv)
    if args.command == "bench":
        from segrt.bench.__main__ import main as bench_main

        return bench_main(args.rest)
    if args.command == "info":
        import json

        from segrt.bench.harness import machine_info

        print(json.dumps(machine_info(), indent=2))
        return 0
    ap.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
