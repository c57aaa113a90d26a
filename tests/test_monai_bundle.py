"""``segrt import monai-bundle``: a bundle folder written the way MONAI's model zoo writes them
(a UNet, a spleen-like inference.json, metadata.json, models/model.pt), imported, run by segrt;
equal to the bundle's own inference (``python -m monai.bundle run``) on the same study."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("monai")
nib = pytest.importorskip("nibabel")

from segrt.cli import main  # noqa: E402

PREPROCESSING = [
    {"_target_": "LoadImaged", "keys": "image"},
    {"_target_": "EnsureChannelFirstd", "keys": "image"},
    {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
    {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
     "clip": True},
    {"_target_": "EnsureTyped", "keys": "image"},
]


def _inference_json(preprocessing):
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cpu')",
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1,
                    "overlap": 0.5, "mode": "gaussian"},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "separate_folder": False,
             "output_postfix": "seg", "resample": False}]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def _bundle(folder, preprocessing=PREPROCESSING):
    from monai.networks.nets import UNet

    os.makedirs(folder / "configs", exist_ok=True)
    os.makedirs(folder / "models", exist_ok=True)
    (folder / "configs" / "inference.json").write_text(json.dumps(_inference_json(preprocessing), indent=2))
    (folder / "configs" / "metadata.json").write_text(json.dumps({
        "version": "0.1.0", "network_data_format": {"outputs": {"pred": {
            "type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "spleen"}}}}}))
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1,
               norm="batch")
    with torch.no_grad():  # running statistics as a trained network has them; a decisive last layer
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    return folder


def test_segrt_equals_the_bundles_own_inference(tmp_path):
    from segrt.engine import load
    from segrt.engine.volume import VolumePipeline

    bundle = _bundle(tmp_path / "spleen_bundle")
    model = tmp_path / "spleen.onnx"
    assert main(["import", "monai-bundle", str(bundle), "-o", str(model)]) == 0
    meta = load(model, backend="ort").metadata
    assert meta["spacing"] == [1.5, 1.5, 2.0] and meta["window"] == [32, 32, 32]
    assert meta["normalization"] == {"kind": "ct", "window": [-57.0, 164.0]}
    assert meta["sliding_window"] == {"overlap": 0.5, "mode": "gaussian", "placement": "monai"}
    assert meta["class_names"] == ["background", "spleen"]
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    img = rng.normal(0, 20, (60, 52, 40)).astype(np.float32)
    ii, jj, kk = np.meshgrid(*[np.arange(n) for n in img.shape], indexing="ij")
    img[(ii - 30) ** 2 + (jj - 24) ** 2 + ((kk - 20) * 1.3) ** 2 < 14 ** 2] += 120
    nib.save(nib.Nifti1Image(img, np.diag([1.5, 1.5, 2.0, 1.0])), str(data / "case.nii.gz"))
    # monai.bundle's own runner (what `python -m monai.bundle run` calls), in a process of its own
    code = ("import sys; from monai.bundle import run; run(config_file=sys.argv[1], bundle_root=sys.argv[2], "
            "dataset_dir=sys.argv[3], output_dir=sys.argv[4])")
    out = subprocess.run([sys.executable, "-c", code, str(bundle / "configs" / "inference.json"), str(bundle),
                          str(data), str(tmp_path / "eval")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ref = np.asarray(nib.load(str(tmp_path / "eval" / "case_seg.nii.gz")).dataobj).squeeze()
    ours = VolumePipeline(str(model), backend="ort").run(str(data / "case.nii.gz")).labels
    assert ref.shape == ours.shape and 0.02 < (ref == 1).mean() < 0.98
    dice = 2 * ((ref == 1) & (ours == 1)).sum() / ((ref == 1).sum() + (ours == 1).sum())
    assert dice >= 0.99, dice


def test_unmappable_transforms_are_refused_by_name(tmp_path, capsys):
    crop = PREPROCESSING[:4] + [{"_target_": "CropForegroundd", "keys": "image", "source_key": "image"}]
    bundle = _bundle(tmp_path / "b", crop)
    assert main(["import", "monai-bundle", str(bundle), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert "'CropForegroundd' has no segrt equivalent" in err and not (tmp_path / "m.onnx").exists()
    lps = PREPROCESSING[:2] + [{"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"}]
    assert main(["import", "monai-bundle", str(_bundle(tmp_path / "c", lps)), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "Orientation to 'LPS'" in capsys.readouterr().err
    assert main(["import", "monai-bundle", str(tmp_path), "-o", str(tmp_path / "m.onnx")]) == 2
    assert "no configs/inference.json" in capsys.readouterr().err
