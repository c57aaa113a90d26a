"""A tiny nnU-Net v2 model made offline with nnU-Net's own APIs, and nnU-Net's own prediction
(for tests/test_nnunet_import.py and bench/nnunet.py; nnU-Net reads its folders from
environment variables at import time and starts worker processes, so it runs in a process of
its own).

    python -m segrt.bench.nnunet_tiny make ROOT [--steps N]
                                                      dataset, fingerprint, plans, preprocessing,
                                                      N training steps (25), checkpoint_final.pth
    python -m segrt.bench.nnunet_tiny predict ROOT CASE OUT.npy [--tta] [--repeats N] [--folds 0 1]
                                                      nnUNetPredictor's labels, (z, y, x), and
                                                      its warm time reading and predicting CASE
"""
from __future__ import annotations

import json
import os
import shutil
import sys

DATASET = "Dataset501_Tiny"
TRAINER = "nnUNetTrainer__nnUNetPlans__3d_fullres"


def _paths(root):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ[key] = os.path.join(root, key)
        os.makedirs(os.environ[key], exist_ok=True)


def study(shape, seed, spacing=(1.0, 1.0, 1.5)):
    """A CT-like study: air-dark background, 'organ' blobs (label 1) with a bright 'lesion' core
    (label 2); (image, labels) in nibabel's (i, j, k) order."""
    import numpy as np

    r = np.random.default_rng(seed)
    img = r.normal(-800, 30, shape).astype(np.float32)
    lab = np.zeros(shape, np.uint8)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    for _ in range(max(3, int(np.prod(shape) / 9000))):
        c = [r.uniform(6, n - 6) for n in shape]
        rad = r.uniform(3, 7)
        d = ((ii - c[0]) * spacing[0]) ** 2 + ((jj - c[1]) * spacing[1]) ** 2 + ((kk - c[2]) * spacing[2]) ** 2
        img[d < rad ** 2] = r.normal(60, 10, int((d < rad ** 2).sum()))
        lab[d < rad ** 2] = 1
        img[d < (rad / 2.5) ** 2] = r.normal(200, 10, int((d < (rad / 2.5) ** 2).sum()))
        lab[d < (rad / 2.5) ** 2] = 2
    return img, lab


def make(root, steps=25):
    _paths(root)
    import nibabel as nib
    import numpy as np
    import torch
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    raw = os.path.join(os.environ["nnUNet_raw"], DATASET)
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(raw, sub), exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    for n in range(4):
        img, lab = study((32, 36, 24), n)
        nib.save(nib.Nifti1Image(img, affine), os.path.join(raw, "imagesTr", f"tiny_{n:03d}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), os.path.join(raw, "labelsTr", f"tiny_{n:03d}.nii.gz"))
    generate_dataset_json(raw, {0: "CT"}, {"background": 0, "organ": 1, "lesion": 2}, 4, ".nii.gz",
                          dataset_name=DATASET)
    extract_fingerprints([501], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
    plan_experiments([501])
    preprocess([501], configurations=("3d_fullres",), num_processes=(1,))
    pre = os.path.join(os.environ["nnUNet_preprocessed"], DATASET)
    with open(os.path.join(pre, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    with open(os.path.join(pre, "dataset.json")) as f:
        dataset = json.load(f)
    torch.manual_seed(0)
    trainer = nnUNetTrainer(dict(plans, continue_training=False), "3d_fullres", 0, dataset,
                            device=torch.device("cpu"))
    trainer.initialize()
    trainer.set_deep_supervision_enabled(False)
    net = trainer.network
    # a few steps of plain cross-entropy on the (normalised, padded) training studies: enough for
    # decisive logits; nnU-Net's data loaders and augmentation are not needed for that
    props = plans["foreground_intensity_properties_per_channel"]["0"]
    patch = plans["configurations"]["3d_fullres"]["patch_size"]
    xs, ys = [], []
    for n in range(4):
        img = nib.load(os.path.join(raw, "imagesTr", f"tiny_{n:03d}_0000.nii.gz")).get_fdata().astype(np.float32)
        lab = np.asarray(nib.load(os.path.join(raw, "labelsTr", f"tiny_{n:03d}.nii.gz")).dataobj)
        img, lab = img.transpose(2, 1, 0), lab.transpose(2, 1, 0)  # nnU-Net's (z, y, x)
        img = (np.clip(img, props["percentile_00_5"], props["percentile_99_5"]) - props["mean"]) / props["std"]
        pad = [(0, max(0, p - s)) for p, s in zip(patch, img.shape)]
        crop = tuple(slice(0, p) for p in patch)
        xs.append(np.pad(img, pad)[crop][None])
        ys.append(np.pad(lab, pad)[crop].astype(np.int64))
    x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    opt = torch.optim.Adam(net.parameters(), 5e-3)
    net.train()
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    net.eval()
    trainer.inference_allowed_mirroring_axes = (0, 1, 2)  # what training's data set-up records
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    shutil.copy(os.path.join(pre, "nnUNetPlans.json"), os.path.join(trainer.output_folder_base, "plans.json"))
    shutil.copy(os.path.join(pre, "dataset.json"), os.path.join(trainer.output_folder_base, "dataset.json"))
    print(json.dumps({"folder": trainer.output_folder_base, "loss": float(loss)}))


def predict(root, case, out, tta=False, folds=(0,), repeats=1):
    _paths(root)
    import numpy as np
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(os.path.join(os.environ["nnUNet_results"], DATASET, TRAINER),
                                                   use_folds=tuple(folds))
    import time

    data, props = SimpleITKIO().read_images([case])
    predictor.predict_single_npy_array(data, props, None, None, False)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        data, props = SimpleITKIO().read_images([case])
        labels = predictor.predict_single_npy_array(data, props, None, None, False)
        times.append(time.perf_counter() - t0)
    np.save(out, labels)
    print(json.dumps({"seconds": float(np.median(times)), "times": times}))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else 25)
    else:
        args = sys.argv[2:]
        folds = [0]
        if "--folds" in args:
            tail = args[args.index("--folds") + 1:]
            folds = [int(a) for a in tail[:next((i for i, a in enumerate(tail) if a.startswith("--")), len(tail))]]
        repeats = int(args[args.index("--repeats") + 1]) if "--repeats" in args else 1
        predict(args[0], args[1], args[2], tta="--tta" in args, folds=folds, repeats=repeats)
