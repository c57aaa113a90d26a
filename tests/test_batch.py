"""`segrt batch`: studies as Dask tasks on local clusters (loopback only). The outputs are the
files `segrt run` writes; a failing study is reported and the rest finish; a rerun skips what
is done; a worker killed mid-study loses nothing and the study is retried elsewhere."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
distributed = pytest.importorskip("distributed")
tifffile = pytest.importorskip("tifffile")

from conftest import described_nuclei_model  # noqa: E402
from segrt.cli import main  # noqa: E402
from segrt.engine.batch import REPORT_NAME, run_batch  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return described_nuclei_model(tmp_path_factory.mktemp("model"))[1]


def _image(seed, shape=(96, 120)):
    rng = np.random.default_rng(seed)
    img = rng.normal(20, 3, shape)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    for _ in range(6):
        cy, cx, r = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10), rng.integers(4, 10)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] += 80
    return np.clip(img, 0, 255).astype(np.uint8)


def _studies(folder, n, shape=(96, 120)):
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"case{i:02d}.tif"
        tifffile.imwrite(p, _image(i, shape))
        paths.append(str(p))
    return paths


def _same_as_run(model, source, outdir, tmp_path):
    """The batch's files for ``source`` equal `segrt run`'s: labels byte for byte, the JSON apart
    from its timings."""
    ref = tmp_path / "ref"
    ref.mkdir(exist_ok=True)
    stem = os.path.basename(source)[:-4] + "_segrt"
    assert main(["run", model, source, "-o", str(ref / (stem + ".tif")), "-q"]) == 0
    assert (outdir / (stem + ".tif")).read_bytes() == (ref / (stem + ".tif")).read_bytes()
    a, b = (json.loads((d / (stem + ".json")).read_text()) for d in (outdir, ref))
    a.pop("timings_s"), b.pop("timings_s")
    assert a == b


def test_two_workers_write_what_segrt_run_writes_and_a_failure_does_not_stop_them(model, tmp_path, capsys):
    inputs = _studies(tmp_path / "in", 5)
    broken = tmp_path / "in" / "broken.tif"
    broken.write_bytes(b"II*\x00 not a tiff at all")
    outdir = tmp_path / "out"
    code = main(["batch", model, *inputs[:2], str(broken), *inputs[2:], "-o", str(outdir), "--workers", "2", "-q"])
    assert code == 1  # one failure
    report = json.loads((outdir / REPORT_NAME).read_text())
    assert report["summary"]["done"] == 5 and report["summary"]["failed"] == 1
    assert report["studies"][str(broken)]["status"] == "failed" and "broken.tif" in report["studies"][str(broken)][
        "error"]
    assert len({report["studies"][s]["worker"] for s in inputs}) == 2  # both workers took studies
    # the cores shared between the two workers' models
    assert {report["studies"][s]["threads"] for s in inputs} == {max(1, (os.cpu_count() or 1) // 2)}
    assert "5 done, 1 failed" in capsys.readouterr().out
    for source in inputs:
        _same_as_run(model, source, outdir, tmp_path)
    # a rerun skips the finished studies and tries the failed one again
    before = {p: os.path.getmtime(p) for p in outdir.glob("*_segrt.tif")}
    report = run_batch(model, [*inputs, str(broken)], outdir, workers=1, progress=False)
    assert report["summary"]["skipped"] == 5 and report["summary"]["failed"] == 1
    assert {p: os.path.getmtime(p) for p in outdir.glob("*_segrt.tif")} == before


def test_refusals_before_any_work(model, tmp_path):
    a = _studies(tmp_path / "a", 1)[0]
    b = _studies(tmp_path / "b", 1)[0]  # the same name in another folder: the same output name
    with pytest.raises(ValueError, match="would both write case00"):
        run_batch(model, [a, b], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="no such model file"):
        run_batch(str(tmp_path / "missing.onnx"), [a], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="at least one input"):
        run_batch(model, [], tmp_path / "out", progress=False)
    with pytest.raises(ValueError, match="workers must be a positive"):
        run_batch(model, [a], tmp_path / "out", workers=0, progress=False)
    # a folder holding another model's outputs is not resumed with this one
    (tmp_path / "out2").mkdir()
    (tmp_path / "out2" / REPORT_NAME).write_text(json.dumps({"model": "other.onnx", "model_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="another model"):
        run_batch(model, [a], tmp_path / "out2", progress=False)
    with pytest.raises(SystemExit):  # argparse: --workers sizes the local cluster, --scheduler names another
        main(["batch", model, a, "-o", str(tmp_path / "o"), "--workers", "1", "--scheduler", "tcp://x:1"])


def test_a_worker_killed_mid_study_loses_nothing_and_the_study_is_retried(model, tmp_path):
    # one slow study (a large image) among quick ones; its worker is killed while it runs
    inputs = _studies(tmp_path / "in", 3)
    slow = str(tmp_path / "in" / "slow.tif")
    tifffile.imwrite(slow, _image(9, (1400, 1400)))
    outdir = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        result = {}
        runner = threading.Thread(target=lambda: result.update(run_batch(
            model, [slow, *inputs], outdir, client=client, progress=False)))
        runner.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and time.monotonic() < deadline and runner.is_alive():
            for address, keys in client.processing().items():
                if any(str(k).startswith("segrt-study-0-") for k in keys):
                    killed = address
            time.sleep(0.05)
        assert killed is not None, "the slow study never ran"
        pid = client.run(os.getpid, workers=[killed])[killed]
        time.sleep(0.5)  # well inside the study
        os.kill(pid, signal.SIGKILL)  # the worker process dies at once; its nanny starts a new one
        runner.join(timeout=300)
        assert not runner.is_alive()
    assert result["summary"]["done"] == 4 and result["summary"]["failed"] == 0
    assert result["studies"][slow]["worker"] != killed  # finished by another (or the restarted) worker
    for source in (slow, *inputs):
        _same_as_run(model, source, outdir, tmp_path)
    # the folder holds the outputs and the report, nothing else under a visible name (a write cut
    # short leaves only a hidden .partial file, swept by later runs once stale)
    stems = [os.path.basename(s)[:-4] + "_segrt" for s in (slow, *inputs)]
    want = {REPORT_NAME} | {st + ext for st in stems for ext in (".tif", ".json")}
    assert {p.name for p in outdir.iterdir() if not p.name.startswith(".")} == want
