"""``segrt import nnunet``: an nnU-Net v2 results folder as one self-describing ONNX model.

The network is built and loaded by nnU-Net's own code (``nnUNetPredictor``, from the folder's
``plans.json``, ``dataset.json`` and fold checkpoints), so any architecture nnU-Net builds comes
out as it trained it. What nnU-Net does around the network becomes segrt metadata:

==========================================  =================================================
nnU-Net                                     segrt
==========================================  =================================================
the array as stored, SimpleITK's (z, y, x)  ``input_axes`` (no reorientation to RAS)
order, then ``transpose_forward``
crop to the non-zero region                 ``crop: {"kind": "nonzero"}``
CTNormalization (clip to the foreground's   ``normalization: ct`` window [p0.5, p99.5] with
0.5 / 99.5 percentiles, z-score with the    scale and shift giving the same z-score
foreground's mean and std)
ZScoreNormalization (use_mask_for_norm)     ``zscore`` (``mask: nonzero``)
normalise, then resample                    ``normalize_before_resample``
logits resampled back, then the argmax      ``resample_back: scores``
target spacing, patch size                  ``spacing``, ``window``
sliding windows: step 0.5, gaussian map     ``sliding_window``: placement and map "nnunet"
mirroring test-time augmentation            ``sliding_window.mirror_axes`` (``--tta``)
several folds, logits averaged              one graph averaging the folds' logits
labels in dataset.json                      ``class_names`` by label id
==========================================  =================================================

Differences: nnU-Net resamples images with third-order splines (separately along an
anisotropic z) and resamples the logits before the argmax; segrt resamples the image linearly
and the labels by nearest neighbour. Where the study already has the target spacing both skip
resampling. Region-based models (sigmoid outputs per region), cascades and multi-channel
inputs are refused by name.
"""
from __future__ import annotations

import copy
import os

import numpy as np

from segrt._optional import optional_import

__all__ = ["import_nnunet", "NnUNetImportError"]


class NnUNetImportError(ValueError):
    """A results folder segrt cannot import (the message says what and why)."""


def _normalization(scheme: str, use_mask: bool, props: dict, folder: str) -> dict:
    if scheme == "CTNormalization":
        lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
        mean, std = float(props["mean"]), max(float(props["std"]), 1e-8)
        if not hi > lo:
            raise NnUNetImportError(f"{folder}: its CT intensity properties have percentile_00_5 {lo} >= "
                                    f"percentile_99_5 {hi}")
        # clip to [lo, hi], map to [0, 1], then * scale + shift = (x - mean) / std
        return {"kind": "ct", "window": [lo, hi], "scale": (hi - lo) / std, "shift": (lo - mean) / std}
    if scheme == "ZScoreNormalization":
        return {"kind": "zscore", "mask": "nonzero"} if use_mask else {"kind": "zscore"}
    if scheme == "NoNormalization":
        return {"kind": "none"}
    if scheme == "RescaleTo01Normalization":
        return {"kind": "percentile", "low": 0.0, "high": 100.0, "clip": False}
    raise NnUNetImportError(f"{folder}: its normalisation scheme {scheme!r} has no segrt equivalent (segrt maps "
                            "CTNormalization, ZScoreNormalization, NoNormalization and RescaleTo01Normalization)")


def import_nnunet(folder, output, *, folds=None, checkpoint="checkpoint_final.pth", tta=False, verify=True):
    """Builds the nnU-Net v2 model in ``folder`` (a trainer folder such as
    ``Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres``) with nnU-Net's own code and
    exports it to ``output`` with segrt metadata. ``folds``: the folds to average (default:
    every ``fold_*`` holding the checkpoint); ``tta``: nnU-Net's mirroring test-time
    augmentation (as many network runs per window as mirror combinations). Returns the
    ExportReport of ``segrt.export.to_onnx``."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise NnUNetImportError(f"{folder}: no such folder; give the trainer folder that holds plans.json, "
                                "dataset.json and fold_N/")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise NnUNetImportError(f"{folder}: no {name}; give the trainer folder (e.g. "
                                    "Dataset003_Liver/nnUNetTrainer__nnUNetPlans__3d_fullres) that holds plans.json, "
                                    "dataset.json and fold_N/")
    torch = optional_import("torch", purpose="importing nnU-Net models")
    predict = optional_import("nnunetv2.inference.predict_from_raw_data", purpose="importing nnU-Net models")
    from segrt.export import to_onnx

    if folds is not None:
        folds = tuple(f if f == "all" else int(f) for f in folds)
        missing = [f for f in folds if not os.path.isfile(os.path.join(folder, f"fold_{f}", checkpoint))]
        if missing:
            raise NnUNetImportError(f"{folder}: no {checkpoint} for fold(s) {missing}")
    predictor = predict.nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=bool(tta),
                                        perform_everything_on_device=False, device=torch.device("cpu"),
                                        allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(folder, use_folds=folds, checkpoint_name=checkpoint)
    except (FileNotFoundError, KeyError, RuntimeError) as err:
        raise NnUNetImportError(f"{folder}: nnU-Net cannot load this model ({type(err).__name__}: {err})") from None
    plans, config, dataset = predictor.plans_manager, predictor.configuration_manager, predictor.dataset_json
    labels = plans.get_label_manager(dataset)
    if labels.has_regions:
        raise NnUNetImportError(f"{folder}: a region-based model (overlapping regions, one sigmoid each); segrt "
                                "imports models with one label per voxel")
    if getattr(config, "previous_stage_name", None):
        raise NnUNetImportError(f"{folder}: a cascade stage (it needs the low-resolution stage's segmentation as "
                                "input); import the 3d_fullres or 3d_lowres model instead")
    patch = [int(p) for p in config.patch_size]
    if len(patch) != 3:
        raise NnUNetImportError(f"{folder}: a {len(patch)}D configuration; segrt imports nnU-Net's 3D "
                                "configurations (3d_fullres, 3d_lowres)")
    channels = len(config.normalization_schemes)
    if channels != 1:
        raise NnUNetImportError(f"{folder}: the model takes {channels} input channels ({dataset.get('channel_names')});"
                                " segrt's volume pipeline runs one image per study")
    props = plans.foreground_intensity_properties_per_channel.get("0", {})
    norm = _normalization(config.normalization_schemes[0], bool(config.use_mask_for_norm[0]), props, folder)
    names_by_id = {}
    for name, value in dataset["labels"].items():
        if isinstance(value, (list, tuple)):
            raise NnUNetImportError(f"{folder}: label {name!r} is a region {value}; segrt imports one label per voxel")
        names_by_id[int(value)] = name
    ids = sorted(names_by_id)
    if ids != list(range(len(ids))):
        raise NnUNetImportError(f"{folder}: label ids {ids} are not consecutive from 0")
    # nnU-Net's input axes: the stored (i, j, k) reversed to SimpleITK's (z, y, x), then transpose_forward
    input_axes = [[2, 1, 0][t] for t in plans.transpose_forward]
    sliding = {"overlap": 0.5, "mode": "gaussian_nnunet", "placement": "nnunet"}
    if tta and predictor.allowed_mirroring_axes:
        sliding["mirror_axes"] = [int(a) for a in predictor.allowed_mirroring_axes]
    meta = {"task": "semantic", "window": patch, "in_channels": 1, "spacing": [float(s) for s in config.spacing],
            "class_names": [names_by_id[i] for i in ids], "normalization": norm, "resize": "spacing",
            "interpolation": "linear", "crop": {"kind": "nonzero"}, "input_axes": input_axes,
            "normalize_before_resample": True, "resample_back": "scores",
            "sliding_window": sliding}
    if str(dataset.get("channel_names", {}).get("0", "")).upper() == "CT":
        meta["modality"] = "CT"

    networks = []
    for params in predictor.list_of_parameters:
        net = copy.deepcopy(predictor.network)
        net.load_state_dict(params)
        networks.append(net.eval())

    class FoldAverage(torch.nn.Module):
        """nnU-Net's fold ensemble: the folds' logits averaged."""

        def __init__(self, nets):
            super().__init__()
            self.nets = torch.nn.ModuleList(nets)

        def forward(self, x):
            out = self.nets[0](x)
            for net in self.nets[1:]:
                out = out + net(x)
            return out / len(self.nets) if len(self.nets) > 1 else out

    model = FoldAverage(networks).eval()
    example = np.random.default_rng(0).standard_normal((1, 1, *patch)).astype(np.float32)
    return to_onnx(model, example, output, metadata=meta, verify=verify)
