"""Serving latency: `segrt serve` (NVIDIA Triton Inference Server through PyTriton) answering
1, 2 and 4 concurrent HTTP clients, p50 / p99 per request and requests per second, against
the same pipeline called in-process (what a console embedding segrt pays).

Each client sends a generated 256 x 256 nuclei image (uint8 values as FP32) to the demo
nuclei model (ONNX Runtime) and waits for its labels and summary, back to back, for a fixed
number of requests after a warm-up; the server and the clients share the machine's cores.
Run it in the `serve` extra's environment (PyTriton pins NumPy below 2).
"""
from __future__ import annotations

import argparse
import os
import socket
import threading
import time

import numpy as np

from segrt.bench.harness import Report, package_version

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "nuclei.onnx")


def nuclei_image(shape=(256, 256), seed=0, count=35) -> np.ndarray:
    """Fluorescence-like nuclei (float values in 0..255; the tests take them as uint8)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    img = rng.normal(20, 4, shape)
    for cy, cx in rng.uniform(0, 1, (count, 2)) * shape:
        a, b = rng.uniform(6, 11, 2)
        img += 150 * np.exp(-0.5 * (((yy - cy) / a) ** 2 + ((xx - cx) / b) ** 2) ** 2)
    return np.clip(img, 0, 255).astype(np.float32)


def free_ports(n: int) -> list:
    """n TCP ports free on the loopback now."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    out = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return out


def _percentiles(ms):
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def main(argv=None) -> Report:
    import tritonclient.http as http

    from segrt.engine.model import load
    from segrt.engine.serve import ServedModel, serve

    ap = argparse.ArgumentParser(prog="python -m segrt.bench serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=60, help="timed requests per client")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/serve.json)")
    args = ap.parse_args(argv)
    args.out = args.out or os.path.join(RESULTS, "serve.json")
    report = Report("serve", path=args.out)
    for p in ("nvidia-pytriton", "tritonclient", "onnxruntime"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append(f"{args.requests} timed requests per client after 5 warm-up requests each; latency: from "
                        "the client's call to its decoded answer (labels and summary); in-process: "
                        "ServedModel.run on the same image in the benchmark's process, no server.")
    image = nuclei_image()
    print("segrt serve latency", flush=True)
    served = ServedModel(load(MODEL, backend="ort"))
    for _ in range(5):
        served.run(image)
    ms = []
    for _ in range(args.requests):
        t = time.perf_counter()
        served.run(image)
        ms.append(1000 * (time.perf_counter() - t))
    p50, p99 = _percentiles(ms)
    report.add(case="in-process pipeline (no server)", clients=1, p50_ms=p50, p99_ms=p99,
               requests_per_s=1000 * len(ms) / sum(ms))
    print(f"  in-process: p50 {p50:.1f} ms, p99 {p99:.1f} ms", flush=True)
    del served

    http_port, grpc_port, metrics_port = free_ports(3)
    triton = serve(MODEL, http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, backend="ort",
                   block=False, max_batch_size=8, queue_delay_us=2000)
    try:
        url = f"127.0.0.1:{http_port}"

        def send(client):
            inp = http.InferInput("image", [1, *image.shape], "FP32")
            inp.set_data_from_numpy(image[None])
            res = client.infer("nuclei", [inp])
            res.as_numpy("labels"), res.as_numpy("summary")

        for clients in (1, 2, 4):
            lat = [[] for _ in range(clients)]

            def run(k):
                client = http.InferenceServerClient(url)
                for _ in range(5):
                    send(client)
                for _ in range(args.requests):
                    t = time.perf_counter()
                    send(client)
                    lat[k].append(1000 * (time.perf_counter() - t))

            threads = [threading.Thread(target=run, args=(k,)) for k in range(clients)]
            t0 = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            wall = time.perf_counter() - t0
            ms = np.concatenate(lat)
            p50, p99 = _percentiles(ms)
            report.add(case=f"segrt serve, {clients} HTTP client(s)", clients=clients, p50_ms=p50, p99_ms=p99,
                       requests_per_s=clients * (args.requests + 5) / wall)
            print(f"  {clients} client(s): p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
                  f"{clients * (args.requests + 5) / wall:.1f} requests/s", flush=True)
    finally:
        triton.stop()
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
