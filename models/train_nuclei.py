"""Train segrt's demo star-convex nuclei model (2D, 32 rays) and export it to models/nuclei.onnx.

Data (all offline): the left half of StarDist's DSB 2018 test image (``stardist.data``, 73
hand-labelled nuclei) plus generated fluorescence-like nuclei images. The right half (57
nuclei) is held out: the model card reports AP at IoU 0.5 there with ``stardist.matching``.

Targets are StarDist's: ``edt_prob`` (object probability) and ``star_dist`` (distances along
32 rays). The network is a small U-Net (3 levels) with a sigmoid probability head and a
distance head, trained with BCE + probability-weighted L1 as in StarDist.

    pip install -e ".[peers,export,io]" && python models/train_nuclei.py   # about 11 minutes, 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

N_RAYS = 32
HERE = os.path.dirname(os.path.abspath(__file__))


def generated_nuclei(rng, shape=(256, 256), n_range=(15, 40)):
    """A fluorescence-like image of non-overlapping star-convex nuclei and its label mask."""
    from scipy import ndimage

    h, w = shape
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    n = rng.integers(*n_range)
    k = 0
    for _ in range(n * 3):
        if k >= n:
            break
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        a, b = rng.uniform(4, 14), rng.uniform(4, 14)
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(th) + dy * np.sin(th)) / a
        v = (-dx * np.sin(th) + dy * np.cos(th)) / b
        ang = np.arctan2(v, u)
        wobble = 1 + 0.12 * np.sin(3 * ang + rng.uniform(0, 6)) + 0.06 * np.sin(5 * ang + rng.uniform(0, 6))
        obj = (u ** 2 + v ** 2) < wobble ** 2
        if not obj.any() or (labels[obj] > 0).mean() > 0.0:
            continue
        k += 1
        labels[obj] = k
    texture = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    img = np.zeros(shape, np.float32)
    for i in range(1, k + 1):
        m = labels == i
        img[m] = rng.uniform(0.3, 1.0)
    img = ndimage.gaussian_filter(img * (1 + 0.5 * texture), rng.uniform(0.7, 1.5))
    img += rng.uniform(0.0, 0.08) + rng.normal(0, rng.uniform(0.01, 0.05), shape)
    return (img * 200).astype(np.float32), labels


def normalize(img, low=1.0, high=99.8):
    lo, hi = np.percentile(img, [low, high])
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def targets(labels):
    from stardist import edt_prob, star_dist

    prob = edt_prob(labels).astype(np.float32)
    dist = star_dist(labels, N_RAYS, mode="cpp").astype(np.float32)
    return prob, dist


def build_net(torch):
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True))

    class StarUNet(nn.Module):
        def __init__(self, c=(16, 32, 64)):
            super().__init__()
            self.enc1, self.enc2, self.mid = block(1, c[0]), block(c[0], c[1]), block(c[1], c[2])
            self.up2, self.dec2 = nn.ConvTranspose2d(c[2], c[1], 2, stride=2), block(2 * c[1], c[1])
            self.up1, self.dec1 = nn.ConvTranspose2d(c[1], c[0], 2, stride=2), block(2 * c[0], c[0])
            self.feat = nn.Sequential(nn.Conv2d(c[0], 64, 3, padding=1), nn.ReLU(inplace=True))
            self.prob = nn.Conv2d(64, 1, 1)
            self.dist = nn.Conv2d(64, N_RAYS, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            m = self.mid(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
            f = self.feat(d1)
            return torch.sigmoid(self.prob(f)), torch.nn.functional.softplus(self.dist(f))

    return StarUNet()


def training_set(rng, n_generated):
    from stardist.data import test_image_nuclei_2d

    img, gt = test_image_nuclei_2d(return_mask=True)
    left_img, left_gt = normalize(img.astype(np.float32))[:, :256], gt[:, :256]
    items = [(left_img, *targets(left_gt))] * 6  # the real data, weighted up
    for _ in range(n_generated):
        g_img, g_lab = generated_nuclei(rng)
        items.append((normalize(g_img), *targets(g_lab)))
    return items


def sample_batch(rng, items, batch, patch):
    xs, ps, ds = [], [], []
    for _ in range(batch):
        img, prob, dist = items[rng.integers(len(items))]
        y = rng.integers(0, img.shape[0] - patch + 1)
        x = rng.integers(0, img.shape[1] - patch + 1)
        sl = (slice(y, y + patch), slice(x, x + patch))
        a, p, d = img[sl], prob[sl], dist[sl]
        if rng.random() < 0.5:  # flips keep the rays' meaning only with the dist channels permuted
            a, p, d = a[:, ::-1], p[:, ::-1], _flip_rays_x(d[:, ::-1])
        if rng.random() < 0.5:
            a, p, d = a[::-1], p[::-1], _flip_rays_y(d[::-1])
        a = a * rng.uniform(0.8, 1.2) + rng.uniform(-0.05, 0.05)
        xs.append(a[None])
        ps.append(p[None])
        ds.append(np.moveaxis(d, -1, 0))
    return (np.ascontiguousarray(np.stack(xs), np.float32), np.ascontiguousarray(np.stack(ps), np.float32),
            np.ascontiguousarray(np.stack(ds), np.float32))


def _flip_rays_x(d):
    # ray k points at angle 2 pi k / n (StarDist: dy = sin, dx = cos); mirroring x maps k -> n/2 - k
    idx = (N_RAYS // 2 - np.arange(N_RAYS)) % N_RAYS
    return d[..., idx]


def _flip_rays_y(d):
    idx = (-np.arange(N_RAYS)) % N_RAYS
    return d[..., idx]


def evaluate(predict, prob_thresh, nms_thresh):
    from stardist.data import test_image_nuclei_2d
    from stardist.matching import matching

    from segrt.kernels.starnms import nms_2d, render_2d

    img, gt = test_image_nuclei_2d(return_mask=True)
    right = normalize(img.astype(np.float32))[:, 256:]
    prob, dist = predict(right)
    points, scores, dists = nms_2d(prob, dist, prob_thresh=prob_thresh, nms_thresh=nms_thresh)
    labels = render_2d(dists, points, prob.shape, scores=scores)
    m = matching(gt[:, 256:], labels, thresh=0.5)
    return {"ap_iou50": float(m.accuracy), "f1": float(m.f1), "precision": float(m.precision),
            "recall": float(m.recall), "n_true": int(m.n_true), "n_pred": int(m.n_pred)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--generated", type=int, default=60)
    ap.add_argument("--out", default=os.path.join(HERE, "nuclei.onnx"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from segrt.export import to_onnx

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    items = training_set(rng, args.generated)
    net = build_net(torch)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.steps)
    for step in range(args.steps):
        x, p, d = (torch.from_numpy(a) for a in sample_batch(rng, items, 8, 96))
        prob, dist = net(x)
        loss_p = torch.nn.functional.binary_cross_entropy(prob, p)
        loss_d = ((dist - d).abs().mean(1, keepdim=True) * (p + 1e-2)).mean() / (p.mean() + 1e-2)
        loss = loss_p + 0.2 * loss_d
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f} (prob {loss_p.item():.4f}, dist {loss_d.item():.3f})  "
                  f"{time.time() - t0:.0f} s", flush=True)
    net.eval()

    def predict(img):
        h, w = img.shape
        ph, pw = (-h) % 4, (-w) % 4
        x = np.pad(img, ((0, ph), (0, pw)), mode="reflect")[None, None]
        with torch.no_grad():
            prob, dist = net(torch.from_numpy(np.ascontiguousarray(x)))
        return prob[0, 0, :h, :w].numpy(), np.moveaxis(dist[0, :, :h, :w].numpy(), 0, -1)

    best = max(((pt, nt, evaluate(predict, pt, nt)) for pt in (0.4, 0.5, 0.6) for nt in (0.3, 0.4)),
               key=lambda r: r[2]["ap_iou50"])
    prob_thresh, nms_thresh, stats = best
    print(f"held-out right half: {json.dumps(stats)} at prob_thresh {prob_thresh}, nms_thresh {nms_thresh}")
    meta = {"task": "star-convex-2d", "window": [256, 256], "in_channels": 1, "class_names": ["background", "nucleus"],
            "normalization": {"kind": "percentile", "low": 1.0, "high": 99.8, "clip": False},
            "star": {"n_rays": N_RAYS, "grid": [1, 1], "prob_thresh": prob_thresh, "nms_thresh": nms_thresh},
            "outputs": ["prob", "dist"], "divisor": 4, "context": 48}
    example = np.zeros((1, 1, 256, 256), np.float32)
    to_onnx(net, example, args.out, metadata=meta, output_names=["prob", "dist"])
    card = {"model": os.path.basename(args.out), "steps": args.steps, "generated_images": args.generated,
            "seed": args.seed, "held_out_right_half": stats, "prob_thresh": prob_thresh, "nms_thresh": nms_thresh,
            "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    with open(os.path.splitext(args.out)[0] + ".metrics.json", "w") as f:
        json.dump(card, f, indent=2)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
