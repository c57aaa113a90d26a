"""``segrt import nnunet``: a tiny nnU-Net v2 model made by nnU-Net's own APIs (planning,
preprocessing, a few training steps; segrt/bench/nnunet_tiny.py), imported, and run by segrt on a
study larger than its patch; equal to ``nnUNetPredictor`` on the same study per class."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("nnunetv2")
pytest.importorskip("torch")
nib = pytest.importorskip("nibabel")

from segrt.cli import main  # noqa: E402

from segrt.bench.nnunet_tiny import DATASET, TRAINER, study  # noqa: E402


def _helper(*args):
    out = subprocess.run([sys.executable, "-m", "segrt.bench.nnunet_tiny", *map(str, args)], capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def nnunet_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    made = _helper("make", root)
    folder = os.path.join(root, "nnUNet_results", DATASET, TRAINER)
    assert made["folder"] == folder and made["loss"] < 0.5
    return root, folder


def _dice_per_class(ref, ours):
    out = {}
    for c in (1, 2):
        a, b = ref == c, ours == c
        if a.any() or b.any():
            out[c] = float(2 * (a & b).sum() / (a.sum() + b.sum()))
    return out


@pytest.mark.parametrize("tta", [False, True])
def test_segrt_equals_nnunet_predictor(tmp_path, nnunet_model, tta):
    from segrt.engine import load
    from segrt.engine.volume import VolumePipeline

    root, folder = nnunet_model
    model = tmp_path / "tiny.onnx"
    assert main(["import", "nnunet", folder, "-o", str(model)] + (["--tta"] if tta else [])) == 0
    meta = load(model, backend="ort").metadata
    assert meta["input_axes"] == [2, 1, 0] and meta["crop"] == {"kind": "nonzero"} and meta["modality"] == "CT"
    assert meta["class_names"] == ["background", "organ", "lesion"] and meta["spacing"] == [1.5, 1.0, 1.0]
    assert meta["sliding_window"]["placement"] == "nnunet" and meta["normalization"]["kind"] == "ct"
    assert ("mirror_axes" in meta["sliding_window"]) == tta
    img, _ = study((44, 50, 36), 11)  # larger than the patch: sliding windows
    case = tmp_path / "case_0000.nii.gz"
    nib.save(nib.Nifti1Image(img, np.diag([1.0, 1.0, 1.5, 1.0])), str(case))
    _helper("predict", root, case, tmp_path / "ref.npy", *(["--tta"] if tta else []))
    ref = np.load(tmp_path / "ref.npy")  # (z, y, x)
    ours = VolumePipeline(str(model), backend="ort").run(str(case)).labels.transpose(2, 1, 0)
    dice = _dice_per_class(ref, ours)
    assert set(dice) == {1, 2} and min(dice.values()) >= 0.99, dice


def test_folds_are_averaged_in_one_graph_and_refusals_name_the_fix(tmp_path, nnunet_model, capsys):
    from segrt.engine import load

    _, folder = nnunet_model
    two = tmp_path / "two_folds"
    shutil.copytree(folder, two)
    shutil.copytree(two / "fold_0", two / "fold_1")  # the same weights twice: the average equals one fold
    assert main(["import", "nnunet", str(two), "--folds", "0", "1", "-o", str(tmp_path / "ens.onnx")]) == 0
    assert main(["import", "nnunet", folder, "-o", str(tmp_path / "one.onnx")]) == 0
    x = np.random.default_rng(0).standard_normal((1, 1, 24, 40, 32)).astype(np.float32)
    np.testing.assert_allclose(load(tmp_path / "ens.onnx", backend="ort").infer(x),
                               load(tmp_path / "one.onnx", backend="ort").infer(x), rtol=1e-4, atol=1e-4)
    assert main(["import", "nnunet", str(tmp_path), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no plans.json; give the trainer folder" in capsys.readouterr().err
    assert main(["import", "nnunet", folder, "--folds", "3", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "no checkpoint_final.pth for fold(s) [3]" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()
