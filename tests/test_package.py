"""The package: namespace layout, cheap import, lazy optional imports, CLI, bench harness."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

HEAVY = ("torch", "tensorflow", "cupy", "tensorrt", "stardist", "onnxruntime", "openvino")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_is_light():
    # what the code controls: no heavy optional package is imported (import time is measured by
    # benchmarks, never asserted here: a busy machine would fail it for reasons not in the code)
    code = ("import sys; import segrt, segrt.kernels.starnms, segrt.kernels.label, segrt.kernels.stitch, "
            "segrt.bench, segrt.engine; segrt.load; "
            "print(','.join(m for m in %r if m in sys.modules))" % (HEAVY,))
    loaded = _run(code).strip()
    assert loaded == "", f"import segrt pulled in {loaded}"


def test_subpackages_share_the_segrt_namespace():
    import importlib
    import os

    from segrt._subpackages import SUBPACKAGES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in SUBPACKAGES:
        mod = importlib.import_module(f"segrt.{name}")
        assert mod.__name__ == f"segrt.{name}"
        assert os.path.samefile(mod.__file__, os.path.join(root, name, "__init__.py")), mod.__file__


def test_a_source_checkout_serves_every_subpackage(tmp_path):
    # Python started in a checkout, nothing installed: the shim must serve models/ too (the demo
    # models live there), from the one list setup.py also reads
    import os
    import shutil

    from segrt._subpackages import SUBPACKAGES

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shutil.copytree(os.path.join(root, "segrt"), tmp_path / "segrt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in SUBPACKAGES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"WHERE = {name!r}\n")
    code = ("import sys; sys.path[:0] = [%r]; import importlib; "
            "print(','.join(importlib.import_module('segrt.' + n).WHERE for n in %r))" % (str(tmp_path), SUBPACKAGES))
    # run from the repository: a second checkout on sys.path must not take over
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ",".join(SUBPACKAGES)
    setup_text = open(os.path.join(root, "setup.py")).read()
    assert "_subpackages.py" in setup_text


def test_one_version():
    import segrt
    from segrt._version import __version__

    assert segrt.__version__ == __version__
    from importlib import metadata

    assert metadata.version("segrt") == __version__


def test_install_hints_name_the_extra_that_really_brings_the_package():
    # every module segrt imports lazily is listed with the extra that installs it, and
    # pyproject.toml's extras (or its core dependencies) really contain that package
    import os
    import re
    import tomllib

    from segrt._optional import PACKAGES, install_hint

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]

    def names(reqs):
        return {re.split(r"[<>=!\[; ]", r, maxsplit=1)[0].lower() for r in reqs}

    core = names(project["dependencies"])
    for module, (dist, extra) in PACKAGES.items():
        listed = core if extra is None else names(project["optional-dependencies"][extra])
        assert dist.lower() in listed, (module, dist, extra)
        hint = install_hint(module)
        assert (f"segrt[{extra}]" in hint) if extra else (dist in hint and "segrt[" not in hint), hint
    # the modules segrt's code imports lazily are all listed
    used = set()
    for folder in ("engine", "export", "bench", "kernels", "segrt"):
        for dirpath, _, files in os.walk(os.path.join(root, folder)):
            for name in files:
                if name.endswith(".py"):
                    text = open(os.path.join(dirpath, name)).read()
                    used |= {m.split(".")[0] for m in re.findall(r'optional_import\(\s*"([\w.]+)"', text)}
    assert used <= set(PACKAGES), used - set(PACKAGES)
    assert "opencv-python-headless" in install_hint("cv2") and "segrt[io]" not in install_hint("cv2")


def test_optional_import_names_the_extra():
    from segrt._optional import is_available, optional_import

    with pytest.raises(ImportError, match=r"segrt\[gpu\]") as err:
        optional_import("cupy_definitely_missing_module", extra="gpu", purpose="GPU kernels")
    assert "GPU kernels" in str(err.value)
    assert is_available("json") and not is_available("cupy_definitely_missing_module")


def test_missing_extension_is_reported_when_a_kernel_is_called(monkeypatch):
    from segrt.kernels import _ext
    from segrt.kernels.starnms import nms_2d

    monkeypatch.setattr(_ext, "_tried", True)
    monkeypatch.setattr(_ext, "_module", None)
    monkeypatch.setattr(_ext, "_error", ImportError("undefined symbol: made_up"))
    with pytest.raises(ImportError, match="made_up") as err:
        nms_2d(np.zeros((8, 8), np.float32), np.ones((8, 8, 8), np.float32))
    assert "device='reference'" in str(err.value)
    # the pure-Python reference still runs
    pts, _, _ = nms_2d(np.zeros((8, 8), np.float32), np.ones((8, 8, 8), np.float32), device="reference")
    assert pts.shape == (0, 2)


def test_cli_help_and_info():
    out = subprocess.run([sys.executable, "-m", "segrt", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "bench" in out.stdout
    info = json.loads(_run("from segrt.cli import main; main(['info'])"))
    assert info["cores"] >= 1 and "segrt_build" in info


def test_bench_cli_rejects_unknown_benchmark():
    out = subprocess.run([sys.executable, "-m", "segrt.bench", "nope"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "unknown benchmark" in out.stdout


def test_harness_measures_time_and_memory(tmp_path):
    from segrt.bench.harness import Report, measure

    # in a fresh interpreter, as benchmarks run: in this one, an allocator another test loaded
    # may hand the 160 MB back from pages it keeps resident, and the peak would read 0
    code = ("import json, time, numpy as np\n"
            "from segrt.bench.harness import measure\n"
            "def work():\n"
            "    a = np.ones(20_000_000, np.float64)  # 160 MB, touched\n"
            "    time.sleep(0.01)\n"
            "    return float(a.sum())\n"
            "timing, result = measure(work, warmup=1, repeats=3)\n"
            "print(json.dumps({'result': result, 'times': timing.times_s, 'peak_mb': timing.peak_mb}))")
    import subprocess
    import sys

    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                    check=True).stdout.strip().splitlines()[-1])
    assert out["result"] == 20_000_000.0
    assert len(out["times"]) == 3 and min(out["times"]) >= 0.01
    assert 100 < out["peak_mb"] < 400
    timing, _ = measure(lambda: time.sleep(0.001), warmup=0, repeats=3)
    s = timing.summary()
    assert s["min_s"] <= s["median_s"] <= s["p90_s"] <= s["p99_s"] <= s["max_s"]
    rep = Report("unit")
    rep.add(case="a", segrt_s=0.5, speedup=12.0, identical=True)
    path = tmp_path / "r.json"
    rep.to_json(str(path))
    data = json.loads(path.read_text())
    assert data["machine"]["cores"] >= 1 and data["rows"][0]["speedup"] == 12.0
    md = rep.markdown([("case", "input"), ("speedup", "speed-up"), ("identical", "same")])
    assert "| a | 12 | yes |" in md


def test_nms_benchmark_quick_runs(tmp_path):
    pytest.importorskip("stardist")
    from segrt.bench import nms

    rep = nms.main(["--quick", "--no-3d", "--out", str(tmp_path / "nms.json")])
    assert all(r["identical"] for r in rep.rows)
    assert json.loads((tmp_path / "nms.json").read_text())["rows"]


def test_label_benchmark_quick_runs(tmp_path):
    for mod in ("cc3d", "cv2", "skimage"):
        pytest.importorskip(mod)
    from segrt.bench import label

    rep = label.main(["--quick", "--repeats", "1", "--out", str(tmp_path / "label.json")])
    assert len(rep.rows) == 6 and all(r["identical"] for r in rep.rows)
    assert json.loads((tmp_path / "label.json").read_text())["machine"]["versions"]["connected-components-3d"]


def test_benchmark_reports_are_written_row_by_row(tmp_path):
    # a benchmark that fails late keeps the rows it measured (marked incomplete)
    from segrt.bench.harness import Report

    path = tmp_path / "r.json"
    report = Report("demo", path=str(path))
    report.add(case="a", seconds=1.0)
    first = json.loads(path.read_text())
    assert first["rows"] == [{"case": "a", "seconds": 1.0}] and first["complete"] is False
    assert "path" not in first and first["machine"]["cores"] >= 1
    report.add(case="b", seconds=2.0)
    report.finish()
    done = json.loads(path.read_text())
    assert [r["case"] for r in done["rows"]] == ["a", "b"] and done["complete"] is True


def test_benchmark_page_is_generated_from_the_results():
    # docs/benchmarks.md is the generator's output for the committed results, never hand-edited
    import os

    from segrt.bench.report import DOCS, render

    assert os.path.isfile(DOCS)
    with open(DOCS) as f:
        assert f.read() == render(), "docs/benchmarks.md is stale: run python -m segrt.bench report"


def test_readme_is_for_users_and_its_headline_table_is_generated():
    import os

    from segrt.bench.report import HEADLINE_END, HEADLINE_START, README, headline

    text = open(README).read()
    assert len(text.encode()) <= 12 * 1024
    block = text[text.index(HEADLINE_START) + len(HEADLINE_START):text.index(HEADLINE_END)]
    assert block == "\n" + headline(), "the README's headline table is stale: run python -m segrt.bench report"
    assert len(block.strip().splitlines()) >= 5  # the rows were found in the results
    for link in ("docs/architecture.md", "docs/pipelines.md", "docs/kernels.md", "docs/backends.md",
                 "docs/benchmarks.md", "cpp/README.md"):
        assert link in text and os.path.isfile(os.path.join(os.path.dirname(README), link)), link
    # no progress diary: issue numbers and dated prose belong on the issues
    import re

    assert not re.search(r"issue \d|today's|this session|\d+ of \d+ .{0,40}today", text, re.IGNORECASE)


def test_benchmark_page_renders_partial_runs_and_groups_rows(tmp_path):
    from segrt.bench.report import render

    (tmp_path / "nms.json").write_text(json.dumps({
        "name": "nms", "complete": False, "notes": ["a note"], "machine": {"cpu": "X", "cores": 2, "date": "d"},
        "rows": [{"case": "a", "segrt_s": 0.5, "runs": [1, 2]}, {"case": "b", "segrt_s": None},
                 {"story": "video", "fps": 30.0}]}))
    (tmp_path / "nms_quick.json").write_text("{}")  # quick runs are not documented
    page = render(str(tmp_path))
    assert "partial results" in page and "- a note" in page and "X, 2 cores" in page
    assert "| case | segrt s |" in page and "| a | 0.5 |" in page and "| b | — |" in page
    assert "| story | fps |" in page and "runs" not in page.split("## nms")[1].split("|")[0]


def test_gpu_kernels_benchmark_runs_in_the_simulator():
    # the script a GPU machine runs, checked here on tiny cases in Numba's CUDA simulator
    import os

    pytest.importorskip("numba.cuda")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    out = subprocess.run([sys.executable, "-m", "segrt.bench", "gpu-kernels", "--simulate"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("identical True") == 5 and "written" not in out.stdout
