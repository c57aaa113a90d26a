"""``segrt check``: the same inputs through several backends, compared on raw outputs AND on
the task: per-class Dice after argmax (semantic) or instance F1 at IoU 0.5 after NMS
(star-convex). Raw tolerances alone say nothing about whether the segmentation changed."""
from __future__ import annotations

import numpy as np

__all__ = ["check", "dice_per_class", "instance_f1"]


def dice_per_class(a: np.ndarray, b: np.ndarray, n_classes: int) -> dict:
    """Dice of every class present in either label map (classes absent from both are skipped)."""
    out = {}
    for c in range(n_classes):
        ma, mb = a == c, b == c
        s = int(ma.sum()) + int(mb.sum())
        if s:
            out[c] = float(2 * np.logical_and(ma, mb).sum() / s)
    return out


def _consecutive(labels: np.ndarray) -> np.ndarray:
    values, inverse = np.unique(labels, return_inverse=True)
    if values.size and values[0] != 0:
        inverse = inverse + 1  # no background present: every value is an instance
    return inverse.reshape(labels.shape)


def instance_f1(ref: np.ndarray, test: np.ndarray, iou: float = 0.5) -> float:
    """F1 of instances matched at IoU > ``iou`` (>= 0.5 makes the matching unique). Labels need
    not be consecutive; 0 is background."""
    ref, test = _consecutive(ref), _consecutive(test)
    n_ref, n_test = int(ref.max(initial=0)), int(test.max(initial=0))
    if n_ref == 0 and n_test == 0:
        return 1.0
    both = (ref > 0) & (test > 0)
    pairs = ref[both].astype(np.int64) * (n_test + 1) + test[both]
    inter = np.bincount(pairs, minlength=(n_ref + 1) * (n_test + 1)).reshape(n_ref + 1, n_test + 1)
    area_r = np.bincount(ref.reshape(-1), minlength=n_ref + 1)
    area_t = np.bincount(test.reshape(-1), minlength=n_test + 1)
    union = area_r[:, None] + area_t[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        ious = np.where(union > 0, inter / union, 0)[1:, 1:]
    tp = int((ious > iou).sum())
    return 2 * tp / (n_ref + n_test) if n_ref + n_test else 1.0


def _semantic_labels(out, meta=None) -> np.ndarray:
    from segrt.engine.metadata import foreground_threshold

    arr = out if isinstance(out, np.ndarray) else next(iter(out.values()))
    if arr.shape[1] == 1:  # one score channel: foreground above 0 (logits) or 0.5 (probabilities)
        return (arr[:, 0] > foreground_threshold(meta)).astype(np.int64)
    return arr.argmax(axis=1)


def _instances(out, meta) -> list:
    from segrt.kernels import starnms

    names = meta.get("outputs", ["prob", "dist"])
    prob, dist = (out[names[0]], out[names[1]]) if isinstance(out, dict) else out
    star = meta.get("star", {})
    dims = 3 if meta["task"] == "star-convex-3d" else 2
    grid = tuple(star.get("grid", [1] * dims))
    kw = {"prob_thresh": star.get("prob_thresh", 0.5), "nms_thresh": star.get("nms_thresh", 0.4), "grid": grid}
    labels = []
    for b in range(prob.shape[0]):
        p = prob[b, 0]
        d = np.moveaxis(dist[b], 0, -1)
        full = tuple(s * g for s, g in zip(p.shape, grid))
        if dims == 2:
            pts, scores, dists = starnms.nms_2d(p, d, **kw)
            labels.append(starnms.render_2d(dists, pts, full, scores=scores))
        else:
            rays = starnms.rays_3d(star["n_rays"], star.get("rays_anisotropy"))
            pts, scores, dists = starnms.nms_3d(p, d, rays, **kw)
            labels.append(starnms.render_3d(dists, pts, rays, full, scores=scores))
    return labels


def check(model_path, *, backends=("ort", "openvino"), inputs=None, torch_model=None, min_dice=0.99, min_f1=0.99,
          seed=0) -> dict:
    """Runs ``inputs`` through each backend (and torch, when given) and compares them with the
    first one. Returns a report dict with ``passed``; see ``segrt check --help``."""
    from segrt.engine.model import load

    models = {}
    for b in backends:  # the same backend twice is allowed (a determinism check): number repeats
        name = b if b not in models else f"{b}#{sum(1 for k in models if k.split('#')[0] == b) + 1}"
        models[name] = load(model_path, backend=b)
    first = next(iter(models.values()))
    rank = len(first.inputs[0].shape)
    if rank not in (4, 5):
        from segrt.engine.model import ModelTaskError

        raise ModelTaskError(f"{model_path}: segrt check compares image models, whose input is (N, C, H, W) or "
                             f"(N, C, D, H, W); this model's input {first.inputs[0].name!r} has rank {rank}")
    meta = first.metadata
    task = meta.get("task", "semantic")
    if inputs is None:
        shape = first.inputs[0].shape
        window = meta.get("window") or [64] * (len(shape) - 2)
        from segrt.engine.model_file import split_axes

        channels = meta.get("in_channels") or split_axes(shape, meta.get("layout", "channels_first"))[0] or 1
        inputs = [np.random.default_rng(seed).standard_normal((1, channels) + tuple(window)).astype(np.float32)]
    runners = dict((name, m.infer) for name, m in models.items())
    if torch_model is not None:
        import torch

        def run_torch(x):
            with torch.no_grad():
                y = torch_model(torch.from_numpy(x))
            if isinstance(y, dict):
                return {k: v.numpy() for k, v in y.items()}
            if isinstance(y, (tuple, list)):
                return dict(zip(first.output_names, (v.numpy() for v in y)))
            return y.numpy()

        runners = {"torch": run_torch, **runners}
    names = list(runners)
    report = {"model": str(model_path), "task": task, "reference": names[0], "backends": names[1:], "comparisons": []}
    passed = True
    for i, x in enumerate(inputs):
        outs = {n: runners[n](x) for n in names}
        ref = outs[names[0]]
        for n in names[1:]:
            got = outs[n]
            pairs = ([(k, ref[k], got[k]) for k in ref] if isinstance(ref, dict) else [("output", ref, got)])
            raw = {}
            for k, a, b in pairs:
                diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
                raw[k] = {"max_abs": float(diff.max()), "max_rel": float(diff.max() / max(np.abs(a).max(), 1e-12))}
            entry = {"input": i, "backend": n, "raw": raw}
            if task == "semantic":
                la, lb = _semantic_labels(ref, meta), _semantic_labels(got, meta)
                n_cls = max(int(la.max()), int(lb.max())) + 1
                dice = dice_per_class(la, lb, n_cls)
                entry["dice"] = dice
                entry["min_dice"] = min(dice.values()) if dice else 1.0
                entry["passed"] = entry["min_dice"] >= min_dice
            else:
                f1 = [instance_f1(a, b) for a, b in zip(_instances(ref, meta), _instances(got, meta))]
                entry["f1"] = f1
                entry["min_f1"] = min(f1) if f1 else 1.0
                entry["passed"] = entry["min_f1"] >= min_f1
            passed &= entry["passed"]
            report["comparisons"].append(entry)
    report["passed"] = bool(passed)
    return report
