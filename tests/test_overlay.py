"""The overlay blend kernel: C++ against its NumPy reference (exact) and against OpenCV's
nearest resize and float blend (the calls it replaces), in place, bad input."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import fast_devices

from segrt.kernels import overlay
from segrt.kernels.overlay import blend_labels

cv2 = pytest.importorskip("cv2")

def _host(x):
    """A result as a NumPy array (CuPy arrays come back from the GPU)."""
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


PALETTE = np.array([[0, 0, 0], [255, 200, 0], [0, 220, 255], [255, 0, 200]], np.uint8)


def _case(rng, frame_hw, labels_hw, n_labels=6, dtype=np.uint8):
    frame = rng.integers(0, 256, frame_hw + (3,), dtype=np.uint8)
    labels = rng.integers(0, n_labels, labels_hw).astype(dtype)
    labels[: labels_hw[0] // 3] = 0  # background rows, and runs of one label along rows
    labels[:, labels_hw[1] // 2:] = labels[:, labels_hw[1] // 2:labels_hw[1] // 2 + 1]
    return frame, labels


# small frames for every device (the CUDA simulator runs a Python thread per pixel): up, down,
# non-integer scales and 1 x 1; the video sizes for the compiled CPU kernel
SMALL = [((24, 32), (12, 16)), ((25, 31), (12, 16)), ((30, 27), (72, 96)), ((7, 5), (7, 5)), ((10, 10), (3, 4)),
         ((1, 1), (1, 1))]
VIDEO = [((480, 640), (240, 320)), ((481, 639), (240, 320)), ((1080, 1920), (240, 320)), ((100, 90), (240, 320))]


@pytest.mark.parametrize("frame_hw, labels_hw", SMALL + [pytest.param(*v, marks=pytest.mark.video_size) for v in VIDEO])
@pytest.mark.parametrize("alpha", [0.0, 0.45, 1.0])
@pytest.mark.parametrize("device", fast_devices(overlay.IMPLEMENTATIONS))
def test_matches_reference(device, frame_hw, labels_hw, alpha, request):
    if device == "cuda" and "video_size" in request.keywords and __import__("os").environ.get(
            "NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("video-sized frames take minutes in the CUDA simulator; small frames cover the kernel")
    rng = np.random.default_rng(sum(frame_hw) + sum(labels_hw))
    frame, labels = _case(rng, frame_hw, labels_hw)
    ref = blend_labels(frame, labels, PALETTE, alpha, device="reference")
    got = _host(blend_labels(frame, labels, PALETTE, alpha, device=device))
    np.testing.assert_array_equal(got, ref)
    if alpha == 0.0:
        np.testing.assert_array_equal(got, frame)
    assert not np.array_equal(ref, frame) or alpha == 0.0


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_matches_opencv_resize_and_blend(scale):
    """Integer scales: the label lookup is cv2.INTER_NEAREST exactly; the blend is within
    one level of cv2.addWeighted."""
    rng = np.random.default_rng(scale)
    frame, labels = _case(rng, (240 * scale, 320 * scale), (240, 320), n_labels=4)
    alpha = 0.45
    full = cv2.resize(labels, (320 * scale, 240 * scale), interpolation=cv2.INTER_NEAREST)
    peer = cv2.addWeighted(frame, 1 - alpha, PALETTE[full], alpha, 0)
    np.copyto(peer, frame, where=(full == 0)[..., None])
    got = blend_labels(frame, labels, PALETTE, alpha)
    diff = np.abs(got.astype(int) - peer)
    assert diff.max() <= 1
    np.testing.assert_array_equal(got[full == 0], frame[full == 0])  # untouched where unlabelled
    assert diff[full != 0].mean() < 0.5  # rounding, not a bias: a = round(alpha * 256) is 115 / 256 here


def test_labels_past_the_palette_and_wide_dtypes():
    rng = np.random.default_rng(3)
    frame, labels = _case(rng, (60, 80), (30, 40), n_labels=300, dtype=np.int32)
    got = blend_labels(frame, labels, PALETTE, 1.0)
    full = labels.repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(got[full >= 3], np.broadcast_to(PALETTE[-1], got[full >= 3].shape))
    np.testing.assert_array_equal(got, blend_labels(frame, labels, PALETTE, 1.0, device="reference"))
    np.testing.assert_array_equal(blend_labels(frame, labels > 0, PALETTE, 0.5),
                                  blend_labels(frame, (labels > 0).astype(np.uint8), PALETTE, 0.5))


def test_in_place_and_into_out():
    rng = np.random.default_rng(4)
    frame, labels = _case(rng, (48, 64), (24, 32))
    ref = blend_labels(frame, labels, PALETTE, 0.3, device="reference")
    out = np.zeros_like(frame)
    assert blend_labels(frame, labels, PALETTE, 0.3, out=out) is out
    np.testing.assert_array_equal(out, ref)
    same = frame.copy()
    blend_labels(same, labels, PALETTE, 0.3, out=same)
    np.testing.assert_array_equal(same, ref)


def test_views_of_frames_and_labels():
    """Flipped, strided and transposed inputs give what their contiguous copies give."""
    rng = np.random.default_rng(6)
    frame, labels = _case(rng, (96, 128), (48, 64))
    for f, lab in ((frame[:, ::-1], labels[::-1]), (frame[::2, ::2], labels[::2, ::2]),
                   (frame.transpose(1, 0, 2), labels.T)):
        got = blend_labels(f, lab, PALETTE, 0.6)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, blend_labels(f.copy(), lab.copy(), PALETTE, 0.6, device="reference"))


@pytest.mark.parametrize("kwargs, match", [
    (dict(frame=np.zeros((4, 4), np.uint8)), "frame must be an \\(H, W, 3\\) uint8"),
    (dict(frame=np.zeros((4, 4, 3), np.float32)), "frame must be an \\(H, W, 3\\) uint8"),
    (dict(labels=np.zeros((2, 2, 2), np.uint8)), "labels must be a 2D integer array"),
    (dict(labels=np.zeros((2, 2), np.float32)), "labels must be a 2D integer array"),
    (dict(labels=np.zeros((0, 2), np.uint8)), "must not be empty"),
    (dict(labels=-np.ones((2, 2), np.int16)), "labels must be >= 0"),
    (dict(palette=np.zeros((3, 4), np.uint8)), "palette must be a \\(K, 3\\) uint8"),
    (dict(palette=np.zeros((300, 3), np.uint8)), "K <= 256"),
    (dict(alpha=1.5), "alpha must be in \\[0, 1\\]"),
    (dict(alpha="half"), "alpha must be a number"),
    (dict(out=np.zeros((4, 4, 3), np.int32)), "out must be a C-contiguous uint8 array"),
    (dict(device="gpu"), "device must be"),
])
def test_bad_input_is_refused(kwargs, match):
    args = dict(frame=np.zeros((4, 4, 3), np.uint8), labels=np.ones((2, 2), np.uint8), palette=PALETTE, alpha=0.5)
    args.update(kwargs)
    frame, labels, palette, alpha = (args.pop(k) for k in ("frame", "labels", "palette", "alpha"))
    with pytest.raises(ValueError, match=match):
        blend_labels(frame, labels, palette, alpha, **args)


def test_out_overlapping_the_frame_is_refused():
    block = np.zeros((8, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="not a part of it"):
        blend_labels(block[:4], np.ones((2, 2), np.uint8), PALETTE, 0.5, out=block[2:6])


@pytest.mark.parametrize("device", fast_devices(overlay.IMPLEMENTATIONS))
def test_in_place_and_out_match_reference_on_every_device(device):
    rng = np.random.default_rng(5)
    frame, labels = _case(rng, (18, 22), (9, 11))
    ref = blend_labels(frame, labels, PALETTE, 0.6, device="reference")
    inplace = frame.copy()
    got = blend_labels(inplace, labels, PALETTE, 0.6, out=inplace, device=device)
    np.testing.assert_array_equal(_host(got), ref)


# -- network inputs ---------------------------------------------------------------------------

@pytest.mark.parametrize("device", fast_devices(overlay.IMPLEMENTATIONS))
@pytest.mark.parametrize("frame_hw, window", [((16, 24), (4, 6)), ((17, 23), (5, 7)), ((12, 16), (6, 8)),
                                              ((4, 5), (16, 20)), ((9, 11), (12, 14)), ((1, 7), (1, 3))])
@pytest.mark.parametrize("channels", [1, 3])
def test_network_input_matches_reference(device, frame_hw, window, channels):
    rng = np.random.default_rng(sum(frame_hw) + channels)
    for frame in (rng.integers(0, 256, frame_hw + (3,), dtype=np.uint8), rng.integers(0, 256, frame_hw, dtype=np.uint8)):
        ref = overlay.network_input(frame, window, 1 / 255, -0.5, channels, device="reference")
        got = np.asarray(overlay.network_input(frame, window, 1 / 255, -0.5, channels, device=device))
        assert got.shape == (channels,) + window and got.dtype == np.float32
        if device == "cpu":  # OpenCV's INTER_AREA rounds its own way: within one level
            assert np.abs(got - ref).max() <= 1 / 255 + 1e-6
        else:
            np.testing.assert_array_equal(got, ref)


def test_network_input_reference_is_an_area_average_and_opencv_grey():
    cv2 = pytest.importorskip("cv2")
    from segrt.kernels.overlay import _reference

    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    # integer factors: the mean of each 3 x 4 block, rounded half to even
    means = frame[..., 1].reshape(4, 3, 5, 4).astype(np.float64).mean(axis=(1, 3))
    np.testing.assert_array_equal(_reference.area_resize(frame[..., 1], (4, 5)), np.round(means).astype(np.uint8))
    np.testing.assert_array_equal(_reference.grey(frame), cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
    # full 1080p frames to common windows: OpenCV within one level everywhere
    big = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    for window in ((256, 320), (270, 480)):
        ref = overlay.network_input(big, window, 1.0, 0.0, 3, device="reference")
        assert np.abs(overlay.network_input(big, window, 1.0, 0.0, 3, device="cpu") - ref).max() <= 1


def test_network_input_writes_into_out_and_refuses_bad_input():
    frame = np.zeros((8, 8, 3), np.uint8)
    out = np.empty((3, 4, 4), np.float32)
    assert overlay.network_input(frame, (4, 4), 1.0, 2.0, out=out) is out and (out == 2.0).all()
    for kwargs, match in (({"frame": np.zeros((8, 8, 4), np.uint8)}, "frame must be"),
                          ({"frame": np.zeros((8, 8, 3), np.float32)}, "frame must be"),
                          ({"frame": np.zeros((0, 8), np.uint8)}, "empty"),
                          ({"window": (0, 4)}, "window"), ({"window": "big"}, "window"),
                          ({"channels": 2}, "channels"), ({"scale": float("nan")}, "finite"),
                          ({"out": np.empty((3, 4, 5), np.float32)}, "out must be"),
                          ({"out": np.empty((3, 4, 4), np.float64)}, "out must be")):
        args = {"frame": frame, "window": (4, 4), **kwargs}
        with pytest.raises(ValueError, match=match):
            overlay.network_input(args.pop("frame"), args.pop("window"), **args)
