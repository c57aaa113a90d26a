"""`segrt serve` on NVIDIA Triton Inference Server (PyTriton) and `segrt export --triton`: the same
labels as `segrt run` through tritonclient (HTTP and gRPC, concurrent clients), malformed
requests refused while serving goes on, a clean stop, and the exported repository loaded by the
server binary PyTriton ships. Needs the `serve` extra (its own environment in CI: PyTriton pins
NumPy below 2); everything listens on the loopback."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from segrt.bench.serve import free_ports

pytest.importorskip("pytriton")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUCLEI = os.path.join(ROOT, "models", "nuclei.onnx")


def nuclei_image(shape=(256, 320), seed=0) -> np.ndarray:
    from segrt.bench.serve import nuclei_image as generated

    return generated(shape, seed, count=40).astype(np.uint8)


def request(image, spacing=None, module=httpclient) -> dict:
    """infer() keywords: the image (and spacing) as one request, both outputs asked for."""
    inputs = [module.InferInput("image", [1, *image.shape], "FP32")]
    inputs[0].set_data_from_numpy(image[None].astype(np.float32))
    if spacing is not None:
        inputs.append(module.InferInput("spacing", [1, len(spacing)], "FP32"))
        inputs[1].set_data_from_numpy(np.asarray([spacing], np.float32))
    outputs = [module.InferRequestedOutput("labels"), module.InferRequestedOutput("summary")]
    return {"inputs": inputs, "outputs": outputs}


def segrt_run_labels(image, tmp_path):
    from segrt.cli import main

    np.save(tmp_path / "img.npy", image)
    assert main(["run", NUCLEI, str(tmp_path / "img.npy"), "-o", str(tmp_path / "labels.npy"), "--backend", "ort",
                 "-q"]) == 0
    return np.load(tmp_path / "labels.npy")


@pytest.fixture(scope="module")
def server():
    from segrt.engine.serve import serve

    http, grpc, metrics = free_ports(3)
    triton = serve(NUCLEI, http_port=http, grpc_port=grpc, metrics_port=metrics, backend="ort", block=False,
                   max_batch_size=4, queue_delay_us=5000, exit_timeout_s=5)
    yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}", "triton": triton}
    triton.stop()


def test_serve_answers_like_segrt_run(server, tmp_path):
    client = httpclient.InferenceServerClient(server["http"])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("nuclei")
    meta = client.get_model_metadata("nuclei")
    assert [i["name"] for i in meta["inputs"]] == ["image", "spacing"]
    assert [o["name"] for o in meta["outputs"]] == ["labels", "summary"]
    image = nuclei_image()
    result = client.infer("nuclei", **request(image))
    labels = result.as_numpy("labels")[0]
    summary = json.loads(result.as_numpy("summary")[0, 0])
    np.testing.assert_array_equal(labels, segrt_run_labels(image, tmp_path))
    assert summary["objects"] == labels.max() > 20
    assert len(summary["objects_table"]) == summary["objects"]


def test_malformed_requests_are_refused_and_serving_goes_on(server):
    client = httpclient.InferenceServerClient(server["http"])
    bad = nuclei_image().astype(np.float32)
    bad[10, 10] = np.nan
    with pytest.raises(InferenceServerException, match="NaN"):
        client.infer("nuclei", **request(bad))
    wrong = httpclient.InferInput("image", [1, 8, 8, 3], "FP32")  # a rank the model does not take
    wrong.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(InferenceServerException, match="image"):
        client.infer("nuclei", inputs=[wrong])
    ints = httpclient.InferInput("image", [1, 8, 8], "INT32")  # a type the model does not take
    ints.set_data_from_numpy(np.zeros((1, 8, 8), np.int32))
    with pytest.raises(InferenceServerException, match="INT32|FP32|data type"):
        client.infer("nuclei", inputs=[ints])
    ok = client.infer("nuclei", **request(nuclei_image(seed=2)))
    assert ok.as_numpy("labels").max() > 10


def test_concurrent_grpc_clients_get_their_own_answers(server):
    images = [nuclei_image(seed=s) for s in range(6)]
    expected = [httpclient.InferenceServerClient(server["http"]).infer("nuclei", **request(im)).as_numpy("labels")[0]
                for im in images[:2]]
    got = {}

    def client_thread(k):
        client = grpcclient.InferenceServerClient(server["grpc"])
        got[k] = client.infer("nuclei", **request(images[k % 2], module=grpcclient)).as_numpy("labels")[0]

    threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(got) == list(range(6))
    for k, labels in got.items():
        np.testing.assert_array_equal(labels, expected[k % 2])


def test_stops_cleanly():
    from segrt.engine.serve import serve

    http, grpc, metrics = free_ports(3)
    triton = serve(NUCLEI, name="nuclei_stop", http_port=http, grpc_port=grpc, metrics_port=metrics, backend="ort",
                   block=False, exit_timeout_s=5)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
    assert client.is_model_ready("nuclei_stop")
    triton.stop()
    with pytest.raises(Exception):
        httpclient.InferenceServerClient(f"127.0.0.1:{http}").is_server_live()


def _tritonserver(repo, ports, workdir):
    """The Triton server binary PyTriton ships, on an exported repository (its Python backend
    given the stub of this interpreter, as PyTriton arranges it for its own models)."""
    import pytriton

    dist = os.path.join(os.path.dirname(pytriton.__file__), "tritonserver")
    server = os.path.join(workdir, "tritonserver")
    shutil.copytree(dist, server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    shutil.copy(os.path.join(dist, "python_backend_stubs", version, "triton_python_backend_stub"),
                os.path.join(server, "backends", "python", "triton_python_backend_stub"))
    import sysconfig

    libdir = sysconfig.get_config_var("LIBDIR") or ""
    # the server's own libraries sit beside the pytriton package (the wheel's RPATH is relative)
    libs = os.path.join(os.path.dirname(os.path.dirname(pytriton.__file__)), "nvidia_pytriton.libs")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               LD_LIBRARY_PATH=os.pathsep.join(p for p in (libdir, libs, os.environ.get("LD_LIBRARY_PATH", "")) if p))
    http, grpc, metrics = ports
    cmd = [os.path.join(server, "bin", "tritonserver"), f"--model-repository={repo}",
           f"--backend-directory={os.path.join(server, 'backends')}", f"--cache-directory={os.path.join(server, 'caches')}",
           "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
           "--allow-metrics=false", "--log-verbose=0"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_exported_repository_loads_and_answers(tmp_path):
    from segrt.cli import main

    repo = tmp_path / "repo"
    assert main(["export", NUCLEI, "--triton", str(repo), "--network", "python"]) == 0
    assert sorted(os.listdir(repo)) == ["nuclei", "nuclei_net"]
    config = (repo / "nuclei" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "dynamic_batching" in config and '"nuclei_net"' in config
    ports = free_ports(3)
    proc = _tritonserver(str(repo), ports, str(tmp_path))
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if client.is_model_ready("nuclei"):
                    break
            except Exception:
                pass
            if proc.poll() is not None:
                pytest.fail(f"tritonserver exited: {proc.stdout.read()[-3000:]}")
            time.sleep(0.5)
        else:
            pytest.fail("the exported repository did not load within 120 s")
        image = nuclei_image(seed=5)
        served = httpclient.InferenceServerClient(f"127.0.0.1:{ports[0]}").infer("nuclei", **request(image))
        np.testing.assert_array_equal(served.as_numpy("labels")[0], segrt_run_labels(image, tmp_path))
        bad = image.astype(np.float32)
        bad[0, 0] = np.inf
        with pytest.raises(InferenceServerException, match="NaN or infinite"):
            client.infer("nuclei", **request(bad))
        assert client.is_model_ready("nuclei")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_repository_for_onnxruntime_backend_and_refusals(tmp_path):
    from segrt.engine.io import OutputPathError
    from segrt.export.triton import write_model_repository

    written = write_model_repository(NUCLEI, tmp_path / "repo", name="cells")
    names = sorted(os.path.relpath(p, tmp_path / "repo") for p in written)
    assert names == ["cells/1/model.py", "cells/config.pbtxt", "cells_net/1/model.onnx", "cells_net/config.pbtxt"]
    net = (tmp_path / "repo" / "cells_net" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in net and "max_batch_size: 0" in net
    assert "dims: [ -1, 1, -1, -1 ]" in net  # the ONNX input: batch, one channel, any size
    with pytest.raises(OutputPathError, match="exists"):
        write_model_repository(NUCLEI, tmp_path / "repo", name="cells")
    with pytest.raises(ValueError, match="plan"):
        write_model_repository(NUCLEI, tmp_path / "repo2", network="tensorrt")
