"""Train segrt's demo surgical-instrument model (2D, RGB, 3 classes: background, shaft, tip)
on generated endoscopy-like frames (segrt.bench.synthetic) and export it to models/instruments.onnx.

Frames are generated at 480 x 640 and reduced to the model's 240 x 320 window exactly as
``segrt video`` reduces camera frames (OpenCV INTER_AREA). Held-out scenes (other seeds) give
the per-class Dice in the model card.

    pip install -e ".[export]" && python models/train_instruments.py   # about 3 minutes, 2 cores
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WINDOW = (240, 320)


def frames(seeds, per_scene, rng):
    import cv2

    from segrt.bench.synthetic import EndoscopyScene

    xs, ys = [], []
    for seed in seeds:
        scene = EndoscopyScene(int(seed))
        for t in rng.uniform(0, 20, per_scene):
            img, lab = scene.frame(float(t))
            small = cv2.resize(img, WINDOW[::-1], interpolation=cv2.INTER_AREA)
            xs.append(np.ascontiguousarray(small[..., ::-1].transpose(2, 0, 1), np.float32) / 255.0)  # RGB planes
            ys.append(cv2.resize(lab, WINDOW[::-1], interpolation=cv2.INTER_NEAREST).astype(np.int64))
    return np.stack(xs), np.stack(ys)


def build_net(torch, n_classes=3, c=(8, 16, 32)):
    nn = torch.nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                             nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc1, self.enc2, self.mid = block(3, c[0]), block(c[0], c[1]), block(c[1], c[2])
            self.up2, self.dec2 = nn.ConvTranspose2d(c[2], c[1], 2, stride=2), block(2 * c[1], c[1])
            self.up1, self.dec1 = nn.ConvTranspose2d(c[1], c[0], 2, stride=2), block(2 * c[0], c[0])
            self.head = nn.Conv2d(c[0], n_classes, 1)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(self.pool(e1))
            m = self.mid(self.pool(e2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
            return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))

    return UNet()


def dice_per_class(pred, ref, n=3):
    out = {}
    for c in range(1, n):
        s = (pred == c).sum() + (ref == c).sum()
        out[c] = float(2 * ((pred == c) & (ref == c)).sum() / s) if s else 1.0
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=900)
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--out", default=os.path.join(HERE, "instruments.onnx"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--channels", default="8,16,32",
                    help="channels of the three U-Net levels (16,32,64: the same Dice, 2.6x the inference time)")
    args = ap.parse_args(argv)

    import torch

    from segrt.export import to_onnx
    from segrt.bench.synthetic import INSTRUMENT_CLASSES

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    x_train, y_train = frames(range(args.scenes), 6, rng)
    x_test, y_test = frames(range(10_000, 10_010), 4, rng)  # held-out scenes
    print(f"generated {len(x_train)} training and {len(x_test)} held-out frames in {time.time() - t0:.0f} s",
          flush=True)
    net = build_net(torch, c=tuple(int(v) for v in args.channels.split(",")))
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=args.steps)
    weights = torch.tensor([0.3, 1.0, 2.0])
    for step in range(args.steps):
        idx = rng.integers(0, len(x_train), 8)
        y0, x0 = rng.integers(0, WINDOW[0] - 128 + 1), rng.integers(0, WINDOW[1] - 160 + 1)
        xb = x_train[idx, :, y0:y0 + 128, x0:x0 + 160].copy()
        yb = y_train[idx, y0:y0 + 128, x0:x0 + 160].copy()
        if rng.random() < 0.5:
            xb, yb = xb[..., ::-1].copy(), yb[..., ::-1].copy()
        xb = xb * rng.uniform(0.8, 1.2) + rng.uniform(-0.05, 0.05)
        loss = torch.nn.functional.cross_entropy(net(torch.from_numpy(xb.astype(np.float32))), torch.from_numpy(yb),
                                                 weight=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - t0:.0f} s", flush=True)
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(torch.from_numpy(x_test[i:i + 8])) for i in range(0, len(x_test), 8)]).argmax(1).numpy()
    dice = dice_per_class(pred, y_test)
    print(f"held-out scenes: Dice shaft {dice[1]:.4f}, tip {dice[2]:.4f}")
    meta = {"task": "semantic", "spatial_dims": 2, "window": list(WINDOW), "in_channels": 3,
            "class_names": INSTRUMENT_CLASSES, "normalization": {"kind": "none", "scale": 1 / 255.0},
            "postprocess": {"remove_small": {1: 40, 2: 20}}, "divisor": 4, "outputs": ["scores"]}
    to_onnx(net, x_test[:1], args.out, metadata=meta, output_names=["scores"], dynamic_axes=None)
    card = {"model": os.path.basename(args.out), "steps": args.steps, "training_scenes": args.scenes,
            "frames": int(len(x_train)), "seed": args.seed,
            "held_out": {"scenes": 10, "frames": int(len(x_test)), "dice_shaft": dice[1], "dice_tip": dice[2]},
            "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__}
    with open(os.path.splitext(args.out)[0] + ".metrics.json", "w") as f:
        json.dump(card, f, indent=2)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
