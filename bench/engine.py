"""CPU backends: torch eager against segrt's OpenVINO and ONNX Runtime backends, same models,
same inputs, in one process.

Models: deepbet's trained 3D brain-extraction network (TorchScript, from the deepbet
package) on the MNI152 T1 (from nilearn's package data) cropped to 192x224x192, and a 2D
MONAI UNet (random weights) on StarDist's 512x512 nuclei image. For each backend and batch
size: p50 / p99 latency and the agreement of the masks with torch's (Dice of the foreground
for deepbet, pixel agreement of the argmax for the UNet); for each segrt backend also its
overhead over the raw runtime call.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import time

import numpy as np

from segrt.bench.harness import Report, bench_args, measure, package_version



def _package_dir(name: str) -> str:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ImportError(f"{name} is not installed; pip install --no-deps {name} (see ../shared/DATA.md)")
    return spec.submodule_search_locations[0]


def deepbet_case():
    """(TorchScript model, normalised MNI152 T1 batch (1, 1, 192, 224, 192))."""
    import nibabel
    import torch

    model_path = os.path.join(os.path.dirname(_package_dir("deepbet")), "data", "models", "model.pt")
    model = torch.jit.load(model_path, map_location="cpu").eval()
    t1 = os.path.join(_package_dir("nilearn"), "datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    vol = np.asarray(nibabel.load(t1).dataobj, dtype=np.float32)  # (197, 233, 189)
    vol = np.pad(vol[2:194, 4:228, :], ((0, 0), (0, 0), (1, 2)))  # (192, 224, 192), divisible by 32
    low, high = np.quantile(vol, [0.005, 0.995])
    x = np.clip((vol - low) / (high - low), 0, 1)
    x = 0.226 * (x - x.mean()) / x.std() + 0.449  # deepbet's normalisation
    return model, x[None, None].astype(np.float32)


def unet2d_case():
    import torch
    from monai.networks.nets import UNet
    from stardist.data import test_image_nuclei_2d

    torch.manual_seed(0)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                 num_res_units=2).eval()
    img = test_image_nuclei_2d().astype(np.float32)
    lo, hi = np.percentile(img, [1, 99.8])
    return model, ((img - lo) / (hi - lo))[None, None].astype(np.float32)


def _dice(a, b) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def run_case(report: Report, name: str, model, x1, batches, repeats, tmp) -> None:
    import torch

    from segrt.engine import load
    from segrt.export import to_onnx

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    path = os.path.join(tmp, f"{name}.onnx")
    rep = to_onnx(model, x1, path, metadata={"task": "semantic"}, check_shapes=[])
    backends = {"segrt openvino": load(path, backend="openvino"), "segrt ort": load(path, backend="ort")}

    def mask(out):
        return out[:, 1] > 0.5 if name == "deepbet" else out.argmax(1) == 1

    for b in batches:
        x = np.repeat(x1, b, axis=0)
        xt = torch.from_numpy(x)

        def torch_call():
            with torch.no_grad():
                return model(xt).numpy()

        t_torch, ref = measure(torch_call, warmup=1, repeats=repeats)
        row = {"model": name, "input": "x".join(map(str, x.shape)), "batch": b, "torch_p50_s": t_torch.median_s,
               "torch_p99_s": t_torch.percentile_s(99), "export_max_abs_error": rep.max_abs_error}
        for label, m in backends.items():
            if m.backend == "ort":
                session = m.runner.session_for(x.shape)  # the session segrt runs for this shape
                raw_fn = lambda: session.run(None, {m.runner.input_name: x})  # noqa: E731
            else:
                compiled = m.runner.compiled_for(x.shape)
                raw_fn = lambda: compiled(x)  # noqa: E731
            out = m.infer(x)
            raw_fn()
            # segrt's call and the raw runtime call alternate, so drifts of the machine hit both
            ts, ts_raw = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                m.infer(x)
                ts.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                raw_fn()
                ts_raw.append(time.perf_counter() - t0)
            p50, p99, raw50 = float(np.median(ts)), float(np.percentile(ts, 99)), float(np.median(ts_raw))
            key = label.split()[1]
            row[f"{key}_p50_s"] = p50
            row[f"{key}_p99_s"] = p99
            row[f"{key}_raw_p50_s"] = raw50
            row[f"{key}_overhead_pct"] = 100 * (p50 - raw50) / raw50
            row[f"{key}_speedup_vs_torch"] = t_torch.median_s / p50
            row[f"{key}_max_abs_diff"] = float(np.abs(out - ref).max())
            row[f"{key}_mask_agreement"] = (_dice(mask(out), mask(ref)) if name == "deepbet"
                                            else float((mask(out) == mask(ref)).mean()))
        report.add(**row)
        print(f"  {name} batch {b}: torch {row['torch_p50_s']:.3f}s | openvino {row['openvino_p50_s']:.3f}s "
              f"(x{row['openvino_speedup_vs_torch']:.2f}, mask {row['openvino_mask_agreement']:.4f}, overhead "
              f"{row['openvino_overhead_pct']:.1f} %) | ort {row['ort_p50_s']:.3f}s (x{row['ort_speedup_vs_torch']:.2f}, "
              f"mask {row['ort_mask_agreement']:.4f}, overhead {row['ort_overhead_pct']:.1f} %)", flush=True)


def main(argv=None) -> Report:
    args = bench_args("engine", __doc__.split("\n\n")[0], "the 2D UNet only, few repeats", argv)
    report = Report("engine", path=args.out)
    for p in ("torch", "onnxruntime", "openvino", "onnx", "deepbet", "monai"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append("p50 / p99 over repeated calls after warm-up; torch eager = the model as users run it "
                        "(deepbet ships TorchScript); overhead = segrt's infer over the raw runtime call "
                        "(InferenceSession.run / the compiled OpenVINO model) on the same input.")
    print("CPU backends: torch eager vs segrt openvino / ort", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model, x = unet2d_case()
        run_case(report, "unet2d", model, x, [1] if args.quick else [1, 4], args.repeats or (5 if args.quick else 20),
                 tmp)
        if not args.quick:
            model, x = deepbet_case()
            run_case(report, "deepbet", model, x, [1], args.repeats or 7, tmp)
    report.finish()
    print(f"\nwritten: {args.out}")
    return report


if __name__ == "__main__":
    main()
