"""An nnU-Net v2 model end to end on the CPU: segrt (imported with ``segrt import nnunet``)
against ``nnUNetPredictor`` on the same studies, same model, same machine.

The model is made here with nnU-Net's own APIs (``bench/nnunet_tiny.py``: planning,
preprocessing, a few training steps on generated CT-like studies). Cases: a study at the
model's target spacing (no resampling) and one at another spacing (both resample: nnU-Net
with third-order splines, segrt linearly). End to end = reading the NIfTI file, preprocessing,
sliding windows, argmax, back to the study's grid; medians of warm runs. nnU-Net runs as its
users run it on a CPU (``perform_everything_on_device=False``, torch with every core, float32);
segrt with OpenVINO in float32 and, where the CPU computes bfloat16 natively (AMX or
AVX512-BF16; OpenVINO emulates it elsewhere), in bfloat16, each row with its Dice against
nnU-Net's labels.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from segrt.bench.harness import Report, bench_args, package_version


def _helper(*args) -> dict:
    out = subprocess.run([sys.executable, "-m", "segrt.bench.nnunet_tiny", *map(str, args)], capture_output=True,
                         text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> Report:
    args = bench_args("nnunet", __doc__.split("\n\n")[0], "one repeat", argv)
    import nibabel as nib

    from segrt.bench.nnunet_tiny import DATASET, TRAINER, study
    from segrt.engine.volume import VolumePipeline
    from segrt.export.nnunet import import_nnunet

    report = Report("nnunet", path=args.out)
    for p in ("nnunetv2", "torch", "openvino", "onnxruntime"):
        report.machine["versions"][p] = package_version(p)
    report.notes.append("End to end from the NIfTI file to labels in the study's grid, warm; nnU-Net: SimpleITKIO read "
                        "+ predict_single_npy_array (CPU, every core); segrt: VolumePipeline.run (auto backend).")
    repeats = args.repeats or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as root:
        print("making the nnU-Net model (nnU-Net's planning, preprocessing, 80 training steps)", flush=True)
        _helper("make", root, "--steps", 80)
        folder = os.path.join(root, "nnUNet_results", DATASET, TRAINER)
        model = os.path.join(root, "tiny.onnx")
        import_nnunet(folder, model)
        cases = [("at the target spacing, 128 x 128 x 64", (128, 128, 64), (1.0, 1.0, 1.5)),
                 ("resampled, 150 x 150 x 48 at 0.8 x 0.8 x 2.0 mm", (150, 150, 48), (0.8, 0.8, 2.0))]
        pipes = {"f32": VolumePipeline(model)}
        try:  # bf16 where the CPU computes it natively (AMX / AVX512-BF16); OpenVINO emulates it elsewhere
            pipes["bf16"] = VolumePipeline(model, backend="openvino", precision="bf16")
        except Exception as err:  # noqa: BLE001 - no OpenVINO here: the f32 rows stand alone
            print(f"  bf16 not run: {err}")
        for name, shape, spacing in cases:
            img, _ = study(shape, 21, spacing=spacing)
            path = os.path.join(root, "case_0000.nii.gz")
            nib.save(nib.Nifti1Image(img, np.diag(list(spacing) + [1.0])), path)
            ref_times = _helper("predict", root, path, os.path.join(root, "ref.npy"), "--repeats", repeats)["times"]
            ref = np.load(os.path.join(root, "ref.npy"))
            for precision, pipe in pipes.items():
                pipe.run(path)
                times, res = [], None
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    res = pipe.run(path)
                    times.append(time.perf_counter() - t0)
                ours = res.labels.transpose(2, 1, 0)
                dice = {c: float(2 * ((ref == c) & (ours == c)).sum() / max(1, (ref == c).sum() + (ours == c).sum()))
                        for c in (1, 2)}
                row = report.add(case=name, backend=res.backend, precision=precision,
                                 segrt_s=float(np.median(times)), nnunet_s=float(np.median(ref_times)),
                                 speedup=float(np.median(ref_times) / np.median(times)),
                                 dice_organ=round(dice[1], 5), dice_lesion=round(dice[2], 5))
                print(f"  {name} ({precision}): segrt {row['segrt_s']:.2f} s, nnU-Net {row['nnunet_s']:.2f} s, "
                      f"{row['speedup']:.1f}x; Dice {dice}", flush=True)
    report.finish()
    print(f"written: {args.out}")
    return report


if __name__ == "__main__":
    main()
