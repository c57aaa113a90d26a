"""The benchmark harness every segrt benchmark uses.

- ``measure(fn)``: warm-up calls, then timed repeats; median / p90 / p99 / min / max and the
  peak resident memory the calls added (sampled from /proc, so C++ and NumPy allocations
  both count).
- ``Report``: rows of one run (segrt and its peers side by side, same process, same data),
  written as a JSON with the machine's description and as a markdown table.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any, Callable

import numpy as np

from segrt.bench.memory import peak_memory_subprocess, peak_rss  # noqa: F401  (re-exported)

__all__ = ["Timing", "measure", "peak_rss", "peak_memory_subprocess", "machine_info", "package_version",
           "Report"]


@dataclass
class Timing:
    times_s: list[float]
    peak_mb: float

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def percentile_s(self, q: float) -> float:
        return float(np.percentile(self.times_s, q))

    def summary(self) -> dict[str, float]:
        return {
            "median_s": self.median_s,
            "p90_s": self.percentile_s(90),
            "p99_s": self.percentile_s(99),
            "min_s": min(self.times_s),
            "max_s": max(self.times_s),
            "repeats": len(self.times_s),
            "peak_mb": self.peak_mb,
        }


def measure(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5, max_seconds: float | None = None) -> tuple[Timing, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then up to ``repeats`` timed ones (fewer when
    ``max_seconds`` of timed calls have passed, never fewer than one). Returns the timing and
    the last result."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    peak = 0
    t_all = time.perf_counter()
    for _ in range(max(1, repeats)):
        # the allocator as a user's process has it: returning freed memory to the system would
        # make every call fault in fresh pages (about +18 % on the 2D NMS at 2048^2); the peaks
        # the reports quote come from fresh interpreters
        with peak_rss(return_freed=False) as mem:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        peak = max(peak, mem.peak_bytes)
        if max_seconds is not None and time.perf_counter() - t_all > max_seconds:
            break
    return Timing(times, peak / 2**20), result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def package_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(packages: tuple[str, ...] = ("segrt", "numpy", "scipy", "stardist", "pyclipper")) -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    mem_gb = None
    try:
        with open("/proc/meminfo") as f:
            mem_gb = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    info = {
        "cpu": _cpu_model(),
        "cores": cores,
        "memory_gb": mem_gb,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {p: package_version(p) for p in packages},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        from segrt.kernels import build_info

        info["segrt_build"] = build_info()
    except ImportError as err:
        info["segrt_build"] = {"error": str(err)}
    return info


@dataclass
class Report:
    """Rows of one benchmark run, written as JSON (with the machine) and markdown.

    With ``path`` set, the JSON is rewritten after every row (``complete: false`` until
    ``finish()``), so a benchmark that fails late keeps every row it measured."""

    name: str
    rows: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine: dict = field(default_factory=machine_info)
    complete: bool = False
    path: str | None = field(default=None, repr=False, compare=False)

    def add(self, **row) -> dict:
        self.rows.append(row)
        if self.path:
            self.to_json(self.path)
        return row

    def finish(self) -> None:
        """Marks the run complete and writes it (to ``path``)."""
        self.complete = True
        if self.path:
            self.to_json(self.path)

    def to_json(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        data = asdict(self)
        data.pop("path", None)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, default=_jsonable)
        os.replace(tmp, path)  # never leave a half-written results file

    def markdown(self, columns: list[tuple[str, str]]) -> str:
        """A table of ``columns`` = [(row key, header)]; floats printed with 3 significant digits."""
        head = "| " + " | ".join(h for _, h in columns) + " |"
        sep = "|" + "|".join("---" for _ in columns) + "|"
        lines = [head, sep]
        for row in self.rows:
            cells = []
            for key, _ in columns:
                v = row.get(key, "")
                cells.append(format_value(v))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def bench_args(name: str, description: str, quick_help: str, argv=None, extra=None):
    """The options every benchmark shares: --quick, --repeats, --out (default
    bench/results/<name>.json, <name>_quick.json with --quick). ``extra(parser)`` adds more."""
    import argparse

    ap = argparse.ArgumentParser(prog=f"python -m segrt.bench {name}", description=description)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", default=None, help=f"results JSON (default bench/results/{name}.json)")
    if extra:
        extra(ap)
    args = ap.parse_args(argv)
    if args.out is None:
        results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
        args.out = os.path.join(results, f"{name}_quick.json" if args.quick else f"{name}.json")
    return args


def format_value(v) -> str:
    """A table cell: 3 significant digits (one decimal from 100 on), yes / no, — for missing."""
    if v is None or (isinstance(v, float) and v != v):
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.1f}"
        return f"{v:.2e}"
    return str(v).replace("|", "/").replace("\n", " ")


def _jsonable(o):
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


