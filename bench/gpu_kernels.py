"""GPU kernels against the CPU kernels and the GPU peers, same data, one run, one GPU.

- labels: segrt's CUDA connected components (26-connected, multi-label) on a CT-like volume
  against ``cupyx.scipy.ndimage.label`` (binary foreground only: it has no multi-label mode)
  and segrt's CPU kernel; the numbering is checked equal to the CPU kernel's;
- clean-ups: ``remove_small`` and ``keep_largest`` per class on the same volume;
- stitching: the weighted accumulate of one window's prediction, device against CPU, and a
  whole gaussian sliding-window run against MONAI's ``sliding_window_inference`` on CUDA
  tensors where MONAI is installed;
- overlay: class colours blended into a 1080p frame, and the frame made into a network input
  (area resize, RGB planes, scale), device against CPU (OpenCV);
- star-convex NMS: 2D polygons on 2048^2 generated nuclei targets (``label_data.nuclei_2d``),
  device against CPU and StarDist where it is installed (no GPU star-convex NMS exists); kept
  sets checked identical; cuCIM's ``label`` (multi-label) and bkeccl's ``ccl`` (binary,
  26-connected) join the label peers where they are installed.

GPU times use CUDA events around each call (after a synchronising warm-up); CPU times use the
wall clock. ``python -m segrt.bench gpu-kernels`` on a machine with a GPU (CuPy, numba-cuda);
``--simulate`` runs tiny cases through Numba's CUDA simulator to check the script itself (its
times mean nothing and are not written as results).
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np

from segrt.bench.harness import Report, bench_args, package_version


def _timer(xp):
    """A function timing ``fn()`` in seconds: CUDA events on a GPU, the wall clock otherwise."""
    if xp is np:
        def run(fn):
            t = time.perf_counter()
            out = fn()
            return time.perf_counter() - t, out
        return run
    start, stop = xp.cuda.Event(), xp.cuda.Event()

    def run(fn):
        start.record()
        out = fn()
        stop.record()
        stop.synchronize()
        return xp.cuda.get_elapsed_time(start, stop) / 1000.0, out
    return run


def _median(timer, fn, repeats):
    fn()  # warm-up: compilation, allocation
    times, out = [], None
    for _ in range(repeats):
        t, out = timer(fn)
        times.append(t)
    return statistics.median(times), out


def main(argv=None) -> Report:
    def extra(ap):
        ap.add_argument("--simulate", action="store_true",
                        help="tiny cases in Numba's CUDA simulator (checks the script; times are meaningless)")

    args = bench_args("gpu-kernels", __doc__.split("\n\n")[0], "smaller volumes, fewer repeats", argv, extra)
    if args.simulate:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from segrt.bench.label_data import ct_like
    from segrt.kernels import gpu as _gpu
    from segrt.kernels import label, overlay, stitch

    xp = _gpu.array_module()  # CuPy and a device, or the simulator; else a clear error
    timer, cpu_timer = _timer(xp), _timer(np)
    repeats = args.repeats or (2 if args.simulate or args.quick else 7)
    report = Report("gpu_kernels", path=None if args.simulate else args.out)
    for p in ("cupy-cuda12x", "cupy-cuda13x", "numba-cuda", "numba"):
        report.machine["versions"][p] = package_version(p)
    if xp is not np:
        props = xp.cuda.runtime.getDeviceProperties(0)
        report.machine["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    report.notes.append("GPU times: CUDA events around each call, median over repeats after a warm-up; CPU: wall "
                        "clock. cupyx.scipy.ndimage.label labels the binary foreground (no multi-label mode).")

    shape = (4, 6, 7) if args.simulate else (60, 256, 256) if args.quick else (300, 512, 512)
    seg = ct_like(shape, seed=0) if not args.simulate else np.random.default_rng(0).integers(0, 3, shape, np.uint8)
    seg_dev = _gpu.to_device(seg, xp)
    t_gpu, lab_gpu = _median(timer, lambda: label.connected_components(seg_dev, 26, device="cuda"), repeats)
    t_cpu, lab_cpu = _median(cpu_timer, lambda: label.connected_components(seg, 26, device="cpu"), repeats)
    row = {"kernel": "connected components, 26-connected, multi-label", "data": "x".join(map(str, shape)),
           "segrt_gpu_s": t_gpu, "segrt_cpu_s": t_cpu, "gpu_speedup_vs_cpu": t_cpu / t_gpu,
           "identical_to_cpu": bool(np.array_equal(_gpu.to_host(lab_gpu), lab_cpu))}
    if xp is not np:
        ndimage = __import__("cupyx.scipy.ndimage", fromlist=["label"])
        binary = seg_dev != 0
        structure = xp.ones((3, 3, 3), bool)
        t_peer, _ = _median(timer, lambda: ndimage.label(binary, structure), repeats)
        row.update(peer="cupyx.scipy.ndimage.label (binary)", peer_s=t_peer, speedup_vs_peer=t_peer / t_gpu)
        try:
            import bkeccl
        except ImportError:
            report.notes.append("bkeccl is not installed here: its binary 26-connected label was not measured")
        else:
            binary_u8 = binary.astype(xp.uint8)
            t_bke, _ = _median(timer, lambda: bkeccl.ccl(binary_u8, dimensionality="3D"), repeats)
            row.update(peer3="bkeccl.ccl (binary, 26-connected)", peer3_s=t_bke, speedup_vs_peer3=t_bke / t_gpu)
        try:
            from cucim.skimage.measure import label as cucim_label
        except ImportError:
            report.notes.append("cuCIM is not installed here: its label was not measured")
        else:
            t_cucim, _ = _median(timer, lambda: cucim_label(seg_dev, connectivity=3, background=0), repeats)
            row.update(peer2="cucim.skimage.measure.label (multi-label)", peer2_s=t_cucim,
                       speedup_vs_peer2=t_cucim / t_gpu)
    report.add(**row)
    for name, fn_gpu, fn_cpu in (
            ("remove_small (100)", lambda: label.remove_small(seg_dev, 100, device="cuda"),
             lambda: label.remove_small(seg, 100, device="cpu")),
            ("keep_largest per class", lambda: label.keep_largest(seg_dev, 1, device="cuda"),
             lambda: label.keep_largest(seg, 1, device="cpu"))):
        t_gpu, out_gpu = _median(timer, fn_gpu, repeats)
        t_cpu, out_cpu = _median(cpu_timer, fn_cpu, repeats)
        report.add(kernel=name, data="x".join(map(str, shape)), segrt_gpu_s=t_gpu, segrt_cpu_s=t_cpu,
                   gpu_speedup_vs_cpu=t_cpu / t_gpu, identical_to_cpu=bool(np.array_equal(_gpu.to_host(out_gpu), out_cpu)))

    roi = (4, 5, 6) if args.simulate else (96, 96, 96)
    vol = (6, 7, 8) if args.simulate else (160, 200, 200)
    rng = np.random.default_rng(1)
    pred = rng.standard_normal((3,) + roi).astype(np.float32)
    weight = stitch.importance_map(roi, "gaussian")
    dst_cpu = np.zeros((3,) + vol, np.float32)
    dst_gpu = stitch.zeros((3,) + vol, np.float32, device="cuda")
    pred_dev, weight_dev = _gpu.to_device(pred, xp), _gpu.to_device(weight, xp)
    t_gpu, _ = _median(timer, lambda: stitch.accumulate(dst_gpu, (1, 1, 1), pred_dev, weight_dev, device="cuda"),
                       repeats)
    t_cpu, _ = _median(cpu_timer, lambda: stitch.accumulate(dst_cpu, (1, 1, 1), pred, weight, device="cpu"), repeats)
    report.add(kernel="weighted accumulate of one window", data="x".join(map(str, (3,) + roi)), segrt_gpu_s=t_gpu,
               segrt_cpu_s=t_cpu, gpu_speedup_vs_cpu=t_cpu / t_gpu,
               max_rel_difference=float(np.max(np.abs(_gpu.to_host(dst_gpu) - dst_cpu) / np.maximum(np.abs(dst_cpu), 1e-6))))

    _stitch_run_row(report, args, xp, timer, repeats)

    frame_hw, labels_hw = ((12, 16), (6, 8)) if args.simulate else ((1080, 1920), (240, 320))
    frame = rng.integers(0, 256, frame_hw + (3,), dtype=np.uint8)
    labels = rng.integers(0, 4, labels_hw).astype(np.uint8)
    palette = np.array([[0, 0, 0], [255, 200, 0], [0, 220, 255], [255, 0, 200]], np.uint8)
    frame_dev, labels_dev = _gpu.to_device(frame, xp), _gpu.to_device(labels, xp)
    t_gpu, out_gpu = _median(timer, lambda: overlay.blend_labels(frame_dev, labels_dev, palette, 0.45, device="cuda"),
                             repeats)
    t_cpu, out_cpu = _median(cpu_timer, lambda: overlay.blend_labels(frame, labels, palette, 0.45, device="cpu"),
                             repeats)
    report.add(kernel="overlay colours", data=f"{frame_hw[1]}x{frame_hw[0]} frame, {labels_hw[1]}x{labels_hw[0]} "
               "labels", segrt_gpu_s=t_gpu, segrt_cpu_s=t_cpu, gpu_speedup_vs_cpu=t_cpu / t_gpu,
               identical_to_cpu=bool(np.array_equal(_gpu.to_host(out_gpu), out_cpu)))
    window = (4, 5) if args.simulate else (256, 320)
    t_gpu, in_gpu = _median(timer, lambda: overlay.network_input(frame_dev, window, 1 / 255, 0.0, 3, device="cuda"),
                            repeats)
    t_cpu, in_cpu = _median(cpu_timer, lambda: overlay.network_input(frame, window, 1 / 255, 0.0, 3, device="cpu"),
                            repeats)
    report.add(kernel="network input (area resize, RGB planes, scale)", data=f"{frame_hw[1]}x{frame_hw[0]} frame to "
               f"{window[1]}x{window[0]}", segrt_gpu_s=t_gpu, segrt_cpu_s=t_cpu, gpu_speedup_vs_cpu=t_cpu / t_gpu,
               max_level_difference_to_cpu=float(np.abs(_gpu.to_host(in_gpu) - in_cpu).max() * 255))
    _nms_rows(report, args, xp, timer, cpu_timer, repeats)
    for row in report.rows:
        print(f"  {row['kernel']}: GPU {row['segrt_gpu_s'] * 1e3:.3f} ms, CPU {row['segrt_cpu_s'] * 1e3:.3f} ms"
              + (f", identical {row['identical_to_cpu']}" if "identical_to_cpu" in row else ""), flush=True)
    if not args.simulate:
        report.finish()
        print(f"\nwritten: {args.out}")
    return report


def _stitch_run_row(report, args, xp, timer, repeats):
    """A whole gaussian-blended sliding-window run with a constant prediction per window (so the
    time is the stitching), segrt's CUDA kernels against MONAI's sliding_window_inference on CUDA
    tensors, where MONAI and PyTorch are installed."""
    from segrt.kernels import gpu as _gpu
    from segrt.kernels import stitch

    roi, vol, overlap = ((4, 5, 6), (6, 7, 8), 0.25) if args.simulate else ((96, 96, 96), (160, 200, 200), 0.25)
    rng = np.random.default_rng(2)
    pred = _gpu.to_device(rng.standard_normal((3,) + roi).astype(np.float32), xp)
    weight = _gpu.to_device(stitch.importance_map(roi, "gaussian"), xp)
    ones = xp.ones((1,) + roi, np.float32)
    starts = stitch.windows(vol, roi, (overlap,) * 3)

    def segrt_run(device, pred, weight, ones):
        out = stitch.zeros((3,) + vol, np.float32, device=device)
        count = stitch.zeros((1,) + vol, np.float32, device=device)
        for start in starts:
            stitch.accumulate(out, start, pred, weight, device=device)
            stitch.accumulate(count, start, ones, weight, device=device)
        stitch.normalize(out[None], count[0], device=device)
        return out

    t_segrt, out = _median(timer, lambda: segrt_run("cuda", pred, weight, ones), repeats)
    host = [_gpu.to_host(v) for v in (pred, weight, ones)]
    t_cpu, out_cpu = _median(_timer(np), lambda: segrt_run("cpu", *host), repeats)
    row = {"kernel": "sliding-window stitching, gaussian, constant prediction", "data":
           f"{'x'.join(map(str, vol))} volume, {'x'.join(map(str, roi))} windows, overlap {overlap}, "
           f"{len(starts)} windows", "segrt_gpu_s": t_segrt, "segrt_cpu_s": t_cpu, "gpu_speedup_vs_cpu": t_cpu / t_segrt,
           "segrt_gpu_per_window_s": t_segrt / len(starts),
           "max_rel_difference": float(np.max(np.abs(_gpu.to_host(out) - out_cpu) / np.maximum(np.abs(out_cpu), 1e-6)))}
    try:
        import torch
        from monai.inferers import sliding_window_inference
    except ImportError:
        report.notes.append("MONAI (or PyTorch) is not installed here: its sliding_window_inference was not measured")
        report.add(**row)
        return
    if xp is np or not torch.cuda.is_available():
        report.add(**row)
        return
    pred_t = torch.from_dlpack(pred)[None]
    x = torch.zeros((1, 1) + vol, device="cuda")
    t_monai, ref = _median(timer, lambda: sliding_window_inference(
        x, roi, 1, lambda w: pred_t.expand(w.shape[0], -1, -1, -1, -1), overlap=overlap, mode="gaussian"), repeats)
    ref = xp.asarray(ref[0])
    row.update(peer="monai sliding_window_inference (CUDA tensors)", peer_s=t_monai, speedup_vs_peer=t_monai / t_segrt,
               max_rel_difference_to_peer=float(xp.max(xp.abs(out - ref) / xp.maximum(xp.abs(ref), 1e-6))))
    report.add(**row)


def _nms_rows(report, args, xp, timer, cpu_timer, repeats):
    from segrt.bench.label_data import nuclei_2d
    from segrt.kernels import gpu as _gpu
    from segrt.kernels.starnms import nms_2d

    shape, n_rays = ((20, 20), 8) if args.simulate else ((512, 512), 32) if args.quick else ((2048, 2048), 32)
    prob, dist = nuclei_2d(shape, n_rays, spacing=10 if args.simulate else 24, seed=2)
    prob_dev, dist_dev = _gpu.to_device(prob, xp), _gpu.to_device(dist, xp)
    t_gpu, out_gpu = _median(timer, lambda: nms_2d(prob_dev, dist_dev, prob_thresh=0.5, nms_thresh=0.4,
                                                    device="cuda", return_stats=True), repeats)
    t_cpu, out_cpu = _median(cpu_timer, lambda: nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, device="cpu"),
                             repeats)
    stats = out_gpu[3]
    row = {"kernel": "star-convex NMS 2D", "data": f"{shape[1]}x{shape[0]}, {n_rays} rays, "
           f"{stats['candidates']} candidates", "segrt_gpu_s": t_gpu, "segrt_cpu_s": t_cpu,
           "gpu_speedup_vs_cpu": t_cpu / t_gpu, "pairs_on_host": stats["pairs_host"],
           "pairs": stats["pairs_considered"], "waves": stats["waves"],
           "identical_to_cpu": bool(np.array_equal(_gpu.to_host(out_gpu[0]), out_cpu[0]))}
    try:
        from segrt.bench.peers import stardist_nms_2d
        t0 = time.perf_counter()
        sd = stardist_nms_2d(prob, dist, prob_thresh=0.5, nms_thresh=0.4, order="segrt")
        t_sd = time.perf_counter() - t0  # once: it takes seconds at 2048^2
        row.update(peer="stardist non_maximum_suppression (CPU, one run)", peer_s=t_sd, speedup_vs_peer=t_sd / t_gpu,
                   identical_to_peer=bool(np.array_equal(np.asarray(sd[0]), out_cpu[0])))
    except ImportError:
        report.notes.append("StarDist is not installed here: its NMS was not measured")
    report.add(**row)


if __name__ == "__main__":
    main()
