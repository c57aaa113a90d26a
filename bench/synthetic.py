"""Generated data for the demo models: endoscopy-like frames with instruments.

No package ships endoscopy video, so segrt generates it, as "A Background Image Can Be All
You Need" synthesises surgical training data: instrument-like shapes (a metallic shaft
entering from the frame edge, a darker jaw at its tip) blended onto tissue-like textures
(reddish low-frequency colour, vessels, specular highlights) inside the round field of an
endoscope. Labels: 0 background, 1 shaft, 2 tip.
"""
from __future__ import annotations

import numpy as np

__all__ = ["EndoscopyScene", "endoscopy_frame", "write_clip", "INSTRUMENT_CLASSES"]

INSTRUMENT_CLASSES = ["background", "shaft", "tip"]


def _smooth_noise(rng, shape, sigma):
    from scipy import ndimage

    return ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")


class EndoscopyScene:
    """A tissue background larger than the frame (so it can pan) and 1-2 instruments whose
    pose moves smoothly with time."""

    def __init__(self, seed=0, shape=(480, 640)):
        import cv2

        rng = self.rng = np.random.default_rng(seed)
        self.shape = h, w = shape
        H, W = h + 120, w + 160
        base = np.array([60, 70, 170], np.float32) * rng.uniform(0.85, 1.15, 3).astype(np.float32)  # BGR
        low = _smooth_noise(rng, (H // 4, W // 4), 6)
        low = cv2.resize(low.astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
        tex = _smooth_noise(rng, (H, W), 1.2).astype(np.float32)
        img = base[None, None] * (1 + 0.35 * low[..., None] + 0.08 * tex[..., None])
        vessels = np.zeros((H, W), np.float32)
        for _ in range(rng.integers(4, 9)):
            pts = np.cumsum(rng.normal(0, 25, (12, 2)), axis=0) + rng.uniform([0, 0], [W, H])
            cv2.polylines(vessels, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 1.0,
                          int(rng.integers(2, 6)), cv2.LINE_AA)
        vessels = cv2.GaussianBlur(vessels, (0, 0), 1.5)
        img *= (1 - 0.45 * vessels[..., None] * np.array([0.6, 0.9, 0.5], np.float32))
        self.background = np.clip(img, 0, 255)
        self.tools = []
        for k in range(int(rng.integers(1, 3))):
            self.tools.append({"side": rng.uniform(0, 2 * np.pi), "angle0": rng.uniform(-0.5, 0.5),
                               "reach0": rng.uniform(0.35, 0.65), "width": rng.uniform(22, 40),
                               "phase": rng.uniform(0, 2 * np.pi), "speed": rng.uniform(0.5, 1.5),
                               "grey": rng.uniform(150, 215), "jaw": rng.uniform(0.18, 0.3)})
        yy, xx = np.mgrid[:h, :w]
        r = np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2 * 0.9))
        self.vignette = np.clip(1.3 - 0.55 * r ** 2, 0, 1).astype(np.float32)[..., None]
        self.highlights = [(rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h, rng.uniform(3, 8))
                           for _ in range(int(rng.integers(3, 8)))]

    def frame(self, t: float):
        """(BGR uint8 frame, uint8 labels) at time t seconds."""
        import cv2

        h, w = self.shape
        oy = int(60 + 50 * np.sin(0.31 * t))
        ox = int(80 + 70 * np.sin(0.23 * t + 1))
        img = self.background[oy:oy + h, ox:ox + w].copy()
        labels = np.zeros((h, w), np.uint8)
        centre = np.array([w / 2, h / 2])
        for tool in self.tools:
            side = tool["side"]
            entry = centre + np.array([np.cos(side), np.sin(side)]) * np.hypot(w, h) * 0.6
            wander = tool["reach0"] * 0.45 * min(w, h)
            a = tool["phase"] + 0.6 * tool["speed"] * t
            tip = centre + np.array([np.cos(a) * wander, np.sin(0.8 * a) * wander * 0.8]) + \
                (entry - centre) * tool["angle0"] * 0.3
            direction = (tip - entry) / np.linalg.norm(tip - entry)
            normal = np.array([-direction[1], direction[0]])
            half = tool["width"] / 2
            shaft_end = tip - direction * tool["width"] * 1.2
            shaft = np.array([entry + normal * half, shaft_end + normal * half, shaft_end - normal * half,
                              entry - normal * half])
            m = np.zeros((h, w), np.uint8)
            cv2.fillConvexPoly(m, shaft.astype(np.int32), 1, cv2.LINE_AA)
            open_ = 0.3 + 0.25 * np.sin(2 * tool["speed"] * t)
            jaw = np.zeros((h, w), np.uint8)
            for s in (-1, 1):
                d2 = direction * np.cos(open_ * s) + normal * np.sin(open_ * s)
                n2 = np.array([-d2[1], d2[0]])
                end = shaft_end + d2 * tool["width"] * (1.2 + 8 * tool["jaw"])
                prong = np.array([shaft_end + n2 * half * 0.7, end + n2 * 2, end - n2 * 2, shaft_end - n2 * half * 0.7])
                cv2.fillConvexPoly(jaw, prong.astype(np.int32), 1, cv2.LINE_AA)
            # metallic shading across the shaft: bright ridge, darker edges
            yy, xx = np.nonzero(m)
            across = ((np.stack([xx, yy], 1) - entry) @ normal) / half
            shade = tool["grey"] * (0.65 + 0.35 * np.cos(np.clip(across, -1, 1) * 1.3))
            img[yy, xx] = shade[:, None] * np.array([1.0, 1.0, 1.03])
            jy, jx = np.nonzero(jaw)
            img[jy, jx] = tool["grey"] * 0.35
            labels[m > 0] = 1
            labels[jaw > 0] = 2
        for x, y, r in self.highlights:
            cv2.circle(img, (int(x + 10 * np.sin(t)), int(y)), int(r), (255, 255, 255), -1, cv2.LINE_AA)
        img = img * self.vignette
        noise = self.rng.normal(0, 3, img.shape).astype(np.float32)
        img = np.clip(img + noise, 0, 255).astype(np.uint8)
        return img, labels


def endoscopy_frame(seed: int, t: float = 0.0, shape=(480, 640)):
    """One generated frame (BGR uint8) and its labels."""
    return EndoscopyScene(seed, shape).frame(t)


def write_clip(path, *, seed=1234, seconds=4.0, fps=30.0, shape=(480, 640)) -> str:
    """A generated endoscopy clip (MJPG .avi or mp4v .mp4), written atomically."""
    import cv2

    from segrt.engine import io

    scene = EndoscopyScene(seed, shape)
    n = int(round(seconds * fps))
    with io.atomic_path(path) as tmp:
        fourcc = cv2.VideoWriter_fourcc(*("mp4v" if str(path).lower().endswith(".mp4") else "MJPG"))
        writer = cv2.VideoWriter(tmp, fourcc, fps, (shape[1], shape[0]))
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV cannot write this video format")
        for i in range(n):
            writer.write(scene.frame(i / fps)[0])
        writer.release()
    return str(path)
