"""Batches of studies on Dask: one task per study, run by ``segment_study`` (what ``segrt run``
does) on ``dask.distributed`` workers, each of which loads the model once.

The batch runs on a LocalCluster of processes bound to the loopback interface (default) or on
any scheduler given by address (past one machine: start ``dask scheduler`` and ``dask worker``
processes on the machines that share the input and output folders). Every study writes its
files atomically and its JSON summary last, so a study whose summary exists is finished: a
rerun skips it, and a worker that dies mid-study leaves no half-written output behind (the
scheduler hands the study to another worker). A study that raises is recorded with its error
in ``OUTDIR/segrt_batch.json`` and the batch goes on.
"""
from __future__ import annotations

import json
import os
import sys
import time
import uuid

from segrt.engine.study import default_output, segment_study, sidecar_of

__all__ = ["run_batch", "ModelPlugin", "REPORT_NAME"]

REPORT_NAME = "segrt_batch.json"
PLUGIN_NAME = "segrt-model"


def _distributed():
    try:
        import distributed
    except ImportError:
        raise ImportError("segrt batch runs on Dask: pip install 'segrt[batch]' (dask and dask.distributed)") from None
    return distributed


class ModelPlugin:
    """Loads the model once per worker (``setup``), with the backend's threads limited to the
    cores this worker was given, and holds it for the worker's tasks."""

    name = PLUGIN_NAME

    def __init__(self, model_path: str, backend: str = "auto", precision: str = "f32", workers_per_host=None):
        self.model_path, self.backend, self.precision = model_path, backend, precision
        self.workers_per_host = dict(workers_per_host or {})
        self.model = None
        self.threads = None

    def setup(self, worker=None):
        from segrt.engine import backends
        from segrt.engine.model import load

        if not isinstance(self.model_path, str):  # a model object (anything with infer and metadata)
            self.model = self.model_path
            return

        # this host's cores shared among the batch's workers on it (two models each taking every
        # core would fight over them: measured 14.7 against 16.9 studies/min with 2 workers)
        host = _host(getattr(worker, "address", "") or "")
        self.threads = max(1, (os.cpu_count() or 1) // max(1, self.workers_per_host.get(host, 1)))
        chosen, _ = backends.choose(self.backend)
        accepted = backends.runner_class(chosen).OPTIONS
        options = {}
        if "threads" in accepted:
            options["threads"] = self.threads
        if self.precision == "bf16":
            options["precision"] = "bf16"
        self.model = load(self.model_path, backend=chosen, **options)

    def teardown(self, worker=None):
        self.model = None


def _host(address: str) -> str:
    """"tcp://10.0.0.5:40231" -> "10.0.0.5"."""
    return address.split("://")[-1].rsplit(":", 1)[0]


def _as_worker_plugin(plugin: ModelPlugin):
    """The plugin as a ``distributed.WorkerPlugin`` (a subclass made here: distributed is optional)."""
    base = _distributed().WorkerPlugin
    cls = type("SegrtModelPlugin", (ModelPlugin, base), {})
    return cls(plugin.model_path, plugin.backend, plugin.precision, plugin.workers_per_host)


def _segment_on_worker(source: str, outdir: str, options: dict) -> dict:
    """One study on a worker, with the model its plugin loaded."""
    from distributed import get_worker

    model = get_worker().plugins[PLUGIN_NAME].model
    t = time.perf_counter()
    outcome = segment_study(model, source, folder=outdir, **options)
    return {"outputs": outcome.written, "seconds": time.perf_counter() - t, "warnings": outcome.warnings,
            "worker": get_worker().address, "threads": get_worker().plugins[PLUGIN_NAME].threads}


def _write_report(path: str, report: dict) -> None:
    from segrt.engine.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(report, f, indent=2)


def _check_inputs(inputs) -> list:
    """Inputs as strings; two inputs that would write the same output names are refused before
    any work (the second would overwrite the first)."""
    inputs = [os.fspath(p) for p in inputs]
    if not inputs:
        raise ValueError("segrt batch needs at least one input (files or DICOM folders)")
    seen = {}
    for p in inputs:
        name = default_output(p, "")
        if name in seen and os.path.abspath(seen[name]) != os.path.abspath(p):
            raise ValueError(f"{seen[name]} and {p} would both write {name}.* into the output folder; give them "
                             "different names or run them into different folders")
        seen[name] = p
    return list(dict.fromkeys(inputs))  # the same input twice: once


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.t0 = total, enabled, time.perf_counter()

    def show(self, done: int, failed: int) -> None:
        if not self.enabled:
            return
        n = done + failed
        width = 30
        fill = int(width * n / max(self.total, 1))
        rate = 60 * n / max(time.perf_counter() - self.t0, 1e-9)
        sys.stderr.write(f"\rsegrt batch [{'#' * fill}{'.' * (width - fill)}] {n}/{self.total} studies "
                         f"({failed} failed), {rate:.1f}/min")
        if n >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def run_batch(model, inputs, outdir, *, scheduler: str | None = None, workers: int | None = None,
              backend: str = "auto", precision: str = "f32", options: dict | None = None, client=None,
              progress: bool = True) -> dict:
    """Segments every input with ``model`` into ``outdir``, one Dask task per study.

    Args:
        model: a .onnx file (the CLI resolves model names first).
        inputs: study paths (NIfTI, DICOM folders, TIFF, ...), as ``segrt run`` takes them.
        outdir: the output folder (created); each study writes ``<input>_segrt.*`` there, the
            same files ``segrt run INPUT`` writes, and the batch report ``segrt_batch.json``.
        scheduler: a Dask scheduler address ("tcp://host:8786"); default a LocalCluster of
            ``workers`` single-task processes on this machine, listening on the loopback only.
        workers: LocalCluster processes (default 1). On every host the model of each of the
            batch's workers there takes cpu_count / (its workers) threads.
        options: ``segment_study`` keywords (overlap, spacing, series, tile, prob_thresh,
            nms_thresh).
        client: a ``distributed.Client`` to use instead (tests, notebooks).

    Returns:
        the batch report: per study its status ("done", "failed", "skipped"), outputs, error
        and seconds, and a summary (done, failed, skipped, studies per minute).
    """
    from segrt.engine.backends.cache import onnx_content_hash

    distributed = _distributed()
    inputs = _check_inputs(inputs)
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive number of processes, got {workers!r}")
    if scheduler and workers:
        raise ValueError("--workers sizes the local cluster; with --scheduler the scheduler's workers run the batch")
    model_path = os.path.abspath(os.fspath(model))
    if not os.path.isfile(model_path):
        raise ValueError(f"{model}: no such model file (a .onnx exported or described by segrt; `segrt batch` also "
                         "takes the model names segrt run knows)")
    model_hash = onnx_content_hash(model_path)
    outdir = os.path.abspath(os.fspath(outdir))
    os.makedirs(outdir, exist_ok=True)
    report_path = os.path.join(outdir, REPORT_NAME)
    previous = None
    if os.path.exists(report_path):
        with open(report_path) as f:
            previous = json.load(f)
        if previous.get("model_sha256") not in (None, model_hash):
            raise ValueError(f"{outdir} holds the outputs of another model ({previous.get('model')}); a rerun resumes "
                             "the same model only: choose a new output folder")
    options = dict(options or {})
    report = {"model": model_path, "model_sha256": model_hash, "outdir": outdir, "studies": {}}
    todo = []
    for source in inputs:
        if os.path.exists(sidecar_of(source, outdir)):
            old = (previous or {}).get("studies", {}).get(source, {})
            report["studies"][source] = {"status": "skipped", "outputs": old.get("outputs"),
                                         "reason": "finished by an earlier run (its summary JSON exists)"}
        elif not os.path.exists(source):
            report["studies"][source] = {"status": "failed", "error": f"{source}: no such file or folder"}
        else:
            todo.append(source)
    t0 = time.perf_counter()
    own_cluster = None
    if todo:
        if client is None:
            if scheduler:
                client = distributed.Client(scheduler)
            else:
                n = workers or 1
                own_cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                                       host="127.0.0.1", dashboard_address=None)
                client = distributed.Client(own_cluster)
            owns_client = True
        else:
            owns_client = False
        try:
            per_host: dict = {}
            for address in client.scheduler_info().get("workers", {}):
                per_host[_host(address)] = per_host.get(_host(address), 0) + 1
            client.register_plugin(_as_worker_plugin(ModelPlugin(model_path, backend, precision, per_host)),
                                   name=PLUGIN_NAME)
            # keys name the study's place in this batch, unique per batch: a client shared by
            # batches (a notebook) must not take one batch's study for another's
            run = uuid.uuid4().hex[:8]
            futures = {client.submit(_segment_on_worker, s, outdir, options, pure=False,
                                     key=f"segrt-study-{i}-{run}"): s for i, s in enumerate(todo)}
            bar = _Progress(len(todo), progress)
            done = failed = 0
            for fut in distributed.as_completed(list(futures)):
                source = futures[fut]
                err = fut.exception()
                if err is None:
                    res = fut.result()
                    report["studies"][source] = {"status": "done", **res}
                    done += 1
                else:
                    report["studies"][source] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
                    failed += 1
                _write_report(report_path, report)  # each result kept as it arrives
                bar.show(done, failed)
        finally:
            if owns_client:
                client.close()
            if own_cluster is not None:
                own_cluster.close()
    seconds = time.perf_counter() - t0
    statuses = [s["status"] for s in report["studies"].values()]
    ran = statuses.count("done")
    report["summary"] = {"studies": len(inputs), "done": ran, "failed": statuses.count("failed"),
                         "skipped": statuses.count("skipped"), "seconds": seconds,
                         "studies_per_minute": 60 * ran / seconds if ran and seconds > 0 else None}
    _write_report(report_path, report)
    return report
