"""Sliding-window inference: parity with MONAI, streaming argmax, kernels, bad input."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from segrt.engine import sliding_window
from segrt.engine.sliding_window import argmax_region
from segrt.kernels import stitch

W = np.random.default_rng(0).standard_normal((3, 2)).astype(np.float32)


def mix(batch):
    """A predictor with channel mixing, a nonlinearity and spatial variation."""
    return np.tanh(np.einsum("oc,bc...->bo...", W, batch)) + batch.mean(axis=1, keepdims=True)


def _monai(x, roi, bs, **kw):
    torch = pytest.importorskip("torch")
    inferers = pytest.importorskip("monai.inferers")
    out = inferers.sliding_window_inference(torch.from_numpy(x), roi, bs, lambda t: torch.from_numpy(mix(t.numpy())),
                                            **kw)
    return out.numpy()


CASES = [
    # shape, roi, overlap, mode, padding, sw_batch_size
    ((2, 2, 37, 45), (16, 20), 0.25, "constant", "constant", 3),
    ((1, 2, 40, 33), (16, 16), 0.0, "gaussian", "constant", 4),
    ((1, 2, 31, 29), (12, 10), 0.9, "gaussian", "constant", 7),
    ((3, 2, 18, 20), (18, 8), 0.5, "constant", "constant", 5),
    ((1, 2, 10, 12), (16, 20), 0.3, "gaussian", "replicate", 1),
    ((1, 2, 10, 12), (16, 9), 0.3, "constant", "reflect", 2),
    ((1, 2, 7, 12), (16, 9), 0.25, "gaussian", "circular", 2),
    ((1, 2, 10, 12), (16, 20), 0.3, "gaussian", "constant", 2),
    ((1, 2, 20, 33, 27), (8, 16, 12), 0.5, "gaussian", "constant", 2),
    ((2, 2, 9, 30, 7), (12, 8, 10), 0.9, "gaussian", "circular", 5),
    ((1, 2, 6, 30, 7), (12, 8, 10), 0.5, "gaussian", "reflect", 3),
    ((1, 2, 6, 30, 7), (12, 8, 10), 0.25, "constant", "replicate", 4),
    ((2, 2, 16, 24, 20), (16, 12, 8), 0.75, "constant", "constant", 6),
]


@pytest.mark.parametrize("shape, roi, overlap, mode, padding, bs", CASES)
def test_matches_monai(shape, roi, overlap, mode, padding, bs):
    x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
    cval = 0.5 if padding == "constant" else 0.0  # torch refuses a value for the other modes
    kw = dict(overlap=overlap, mode=mode, padding_mode=padding, cval=cval)
    ref = _monai(x, roi, bs, **kw)
    for device in ("cpu", "reference"):
        ours = sliding_window(x, roi, mix, sw_batch_size=bs, device=device, **kw)
        assert ours.shape == ref.shape and ours.dtype == ref.dtype
        np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_sigma_scale_per_axis_and_float64_match_monai():
    x = np.random.default_rng(1).standard_normal((1, 2, 30, 26))
    kw = dict(overlap=0.4, mode="gaussian", sigma_scale=(0.1, 0.3))
    ref = _monai(x, (12, 14), 3, **kw)
    ours = sliding_window(x, (12, 14), mix, sw_batch_size=3, **kw)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_importance_map_equals_monai():
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("monai.data.utils")
    for roi, sigma in (((16, 20), 0.125), ((7, 9, 12), 0.3), ((64, 96, 96), 0.125)):
        ref = utils.compute_importance_map(roi, mode="gaussian", sigma_scale=sigma, dtype=torch.float32).numpy()
        np.testing.assert_allclose(stitch.importance_map(roi, "gaussian", sigma), ref, rtol=1e-6)
    assert stitch.importance_map((4, 5), "gaussian") is stitch.importance_map((4, 5), "gaussian")  # cached


def test_window_positions_equal_monai():
    utils = pytest.importorskip("monai.data.utils")
    from monai.inferers.utils import _get_scan_interval

    for size, roi, ov in (((37, 45), (16, 20), 0.25), ((40, 33, 20), (16, 16, 20), 0.6), ((9, 9), (3, 4), 0.9)):
        scan = _get_scan_interval(size, roi, len(size), (ov,) * len(size))
        ref = [tuple(s.start for s in sl) for sl in utils.dense_patch_slices(size, roi, scan)]
        assert stitch.windows(size, roi, (ov,) * len(size)) == ref


def test_doubling_predictor_doubles_inputs():
    x = np.random.default_rng(2).standard_normal((2, 3, 23, 17, 19)).astype(np.float32)
    for mode in ("constant", "gaussian"):
        out = sliding_window(x, (8, 10, 6), lambda b: 2 * b, sw_batch_size=4, overlap=0.4, mode=mode)
        np.testing.assert_allclose(out, 2 * x, rtol=1e-5, atol=1e-6)


def test_predictor_always_sees_the_batch_size():
    seen = []

    def pred(b):
        seen.append(b.shape)
        return b.copy()

    x = np.ones((1, 1, 30, 30), np.float32)
    sliding_window(x, (10, 10), pred, sw_batch_size=4, overlap=0.5)  # 25 windows: 6 full batches + 1
    assert len(seen) == 7 and set(seen) == {(4, 1, 10, 10)}


@pytest.mark.parametrize("shape, roi, overlap", [((2, 2, 37, 45), (16, 20), 0.25), ((1, 2, 19, 23, 21), (8, 10, 12), 0.5),
                                                 ((1, 2, 9, 31, 12), (12, 8, 10), 0.8)])
def test_streaming_argmax_equals_full_argmax(shape, roi, overlap):
    rng = np.random.default_rng(3)
    proj = rng.standard_normal((7, 2)).astype(np.float32)

    def seven(b):
        return np.einsum("oc,bc...->bo...", proj, b) + np.sin(b.sum(axis=1, keepdims=True))

    x = rng.standard_normal(shape).astype(np.float32)
    for mode in ("constant", "gaussian"):
        full = sliding_window(x, roi, seven, sw_batch_size=3, overlap=overlap, mode=mode)
        lab = sliding_window(x, roi, seven, sw_batch_size=3, overlap=overlap, mode=mode, reduce="argmax")
        assert lab.dtype == np.uint8 and lab.shape == (shape[0],) + shape[2:]
        np.testing.assert_array_equal(lab, full.argmax(axis=1))
        ref = sliding_window(x, roi, seven, sw_batch_size=3, overlap=overlap, mode=mode, reduce="argmax",
                             device="reference")
        np.testing.assert_array_equal(lab, ref)


def test_streaming_argmax_many_classes_uses_uint16():
    x = np.random.default_rng(4).standard_normal((1, 1, 20, 20)).astype(np.float32)
    proj = np.linspace(-1, 1, 300, dtype=np.float32)[:, None]

    def many(b):
        return np.einsum("oc,bc...->bo...", proj, b) - np.abs(proj[None, :, :, None]) * 0.1

    lab = sliding_window(x, (8, 8), many, overlap=0.5, reduce="argmax")
    full = sliding_window(x, (8, 8), many, overlap=0.5)
    assert lab.dtype == np.uint16
    np.testing.assert_array_equal(lab, full.argmax(axis=1))


def test_streaming_memory_follows_the_windows_not_the_volume():
    # 40 classes over 240 x 64 x 64: the full float32 map is 157 MB
    x = np.zeros((1, 1, 240, 64, 64), np.float32)
    bias = np.arange(40, dtype=np.float32)[None, :, None, None, None] % 7

    def pred(b):
        return np.broadcast_to(bias, (b.shape[0], 40) + b.shape[2:]) + b

    tracemalloc.start()
    lab = sliding_window(x, (16, 64, 64), pred, overlap=0.25, reduce="argmax")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (lab == 6).all()
    assert peak < 40e6, peak  # buffers of a few windows (one window's scores: 10.5 MB)


def test_progress_reports_windows(capsys):
    x = np.ones((1, 1, 20, 20), np.float32)
    sliding_window(x, (10, 10), lambda b: b, overlap=0.5, progress=True)
    err = capsys.readouterr().err
    assert "9/9 windows" in err


def test_kernels_equal_reference():
    rng = np.random.default_rng(5)
    for dtype in (np.float32, np.float64):
        dst = rng.standard_normal((3, 9, 11, 13)).astype(dtype)
        pred = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
        w = rng.random((5, 6, 7)).astype(dtype)
        a, b = dst.copy(), dst.copy()
        stitch.accumulate(a, (2, 1, 4), pred, w, src_off=(1, 2, 3), box=(3, 4, 4))
        stitch.accumulate(b, (2, 1, 4), pred, w, src_off=(1, 2, 3), box=(3, 4, 4), device="reference")
        np.testing.assert_allclose(a, b, rtol=1e-12 if dtype == np.float64 else 1e-6)
        acc = rng.standard_normal((6, 3, 4, 5)).astype(dtype)
        acc[2, 0, 0, 0] = acc[4, 0, 0, 0] = 10  # a tie: the first maximum wins
        la, lb = np.zeros((7, 8, 9), np.uint8), np.zeros((7, 8, 9), np.uint8)
        stitch.argmax_block(acc, la, (1, 2, 3))
        stitch.argmax_block(acc, lb, (1, 2, 3), device="reference")
        np.testing.assert_array_equal(la, lb)
        assert la[1, 2, 3] == 2


@pytest.mark.parametrize("dtype, label_dtype, classes", [(np.float32, np.uint8, 3), (np.float64, np.uint8, 2),
                                                      (np.float32, np.uint16, 300), (np.float64, np.uint16, 5)])
def test_argmax_kernel_long_rows_equals_numpy(dtype, label_dtype, classes):
    """Rows long enough for the vectorised loop and its remainder (333), ties, infinities."""
    rng = np.random.default_rng(classes)
    acc = rng.integers(-3, 4, (classes, 2, 7, 333)).astype(dtype)  # small integers: many ties
    acc[:, 0, 0, :40] = -np.inf
    acc[classes - 1, 1, 2, 5:9] = np.inf
    labels = np.zeros((2, 7, 333), label_dtype)
    stitch.argmax_block(acc, labels, (0, 0, 0))
    np.testing.assert_array_equal(labels, acc.argmax(axis=0))
    assert labels[1, 2, 5:9].tolist() == [classes - 1] * 4


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("shape, roi, overlap, placement, padding", [
    ((2, 2, 37, 29), (16, 12), 0.5, "monai", "constant"),
    ((1, 2, 9, 30), (12, 8), 0.3, "nnunet", "reflect"),
    ((1, 2, 11, 14, 19), (6, 9, 7), 0.25, "monai", "constant"),
    ((1, 2, 13, 10, 17), (6, 5, 8), 0.6, "nnunet", "constant"),
])
def test_one_pass_blending_equals_zero_accumulate_divide(device, shape, roi, overlap, placement, padding):
    """The run folds each voxel's first visit (assign) and last (divide by the count) into the
    accumulate; the result equals the plain three passes (zero, add every window, divide)."""
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    kw = dict(overlap=overlap, mode="gaussian", placement=placement, padding_mode=padding, sw_batch_size=2)
    got = sliding_window(x, roi, mix, device=device, **kw)
    nd = len(roi)
    pads = stitch.pad_widths(shape[2:], roi)
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, mode={"constant": "constant", "reflect": "reflect"}[padding])
    size = xp.shape[2:]
    imp = stitch.importance_map(roi, "gaussian", 0.125)
    out = np.zeros((shape[0], 3) + size, np.float32)
    count = np.zeros(size, np.float32)
    for start in stitch.windows(size, roi, (overlap,) * nd, placement):
        box = tuple(slice(a, a + r) for a, r in zip(start, roi))
        pred = mix(np.ascontiguousarray(xp[(slice(None), slice(None)) + box]))
        out[(slice(None), slice(None)) + box] += pred * imp
        count[box] += imp
    out /= count
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, shape[2:]))
    np.testing.assert_array_equal(got, out[(slice(None), slice(None)) + crop])


@pytest.mark.parametrize("device", ["cpu", "reference"])
@pytest.mark.parametrize("reduce", [None, "argmax"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_scores_are_refused(device, reduce, bad):
    x = np.random.default_rng(1).standard_normal((1, 2, 30, 30)).astype(np.float32)
    calls = []

    def predictor(b):
        calls.append(1)
        out = mix(b)
        if len(calls) == 3:  # one voxel of the third batch
            out[0, 1, 2, 3] = bad
        return out

    with pytest.raises(ValueError, match="1 NaN or infinite score"):
        sliding_window(x, (12, 12), predictor, overlap=0.5, device=device, reduce=reduce)
    assert len(calls) == 3  # refused at once, not at the end of the run


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(inputs=np.zeros((2, 20, 20), np.float32)), "N, C, H, W"),
        (dict(roi_size=(8, 8, 8)), "roi_size needs 2"),
        (dict(roi_size=(8, 0)), "positive integers"),
        (dict(overlap=1.0), r"overlap must lie in \[0, 1\)"),
        (dict(overlap=-0.1), r"overlap must lie in \[0, 1\)"),
        (dict(inputs=np.full((1, 1, 20, 20), np.nan, np.float32)), "NaN"),
        # one NaN among numbers (and infinities, which are allowed): found, and counted
        (dict(inputs=np.where(np.arange(400).reshape(1, 1, 20, 20) == 237, np.nan,
                              np.where(np.arange(400).reshape(1, 1, 20, 20) % 7 == 0, -np.inf, 1.0))), "1 NaN"),
        (dict(predictor=lambda b: b[:1]), "batch of 1 for 2 windows"),
        (dict(predictor=lambda b: b.astype(np.int32)), "floating-point"),
        (dict(predictor=lambda b: b[:, :, 0]), "array, got shape"),
        (dict(predictor=lambda b: b[:, :, :4, :4]), "differs from the window"),
        (dict(predictor=lambda b: (b, b)), "one array"),
        (dict(mode="linear"), "mode"),
        (dict(padding_mode="zeros"), "padding_mode"),
        (dict(reduce="max"), "reduce"),
        (dict(sw_batch_size=0), "sw_batch_size"),
        (dict(predictor=None), "callable"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, match):
    args = dict(inputs=np.ones((1, 1, 20, 20), np.float32), roi_size=(8, 8), predictor=lambda b: b, sw_batch_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sliding_window(args.pop("inputs"), args.pop("roi_size"), args.pop("predictor"), **args)


@pytest.mark.cuda
@pytest.mark.parametrize("shape, roi, overlap, mode, padding", [
    ((1, 2, 13, 15), (8, 8), 0.25, "gaussian", "constant"),
    ((2, 2, 6, 7), (8, 5), 0.5, "constant", "reflect"),
    ((1, 2, 5, 6, 5), (4, 4, 4), 0.25, "gaussian", "replicate"),
])
def test_the_whole_run_on_the_gpu_equals_the_cpu(shape, roi, overlap, mode, padding):
    """device="cuda" (Numba's simulator here): windows, predictions, blending and the streaming
    argmax in device memory, equal to the CPU run to float rounding (labels exactly)."""
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    kw = dict(sw_batch_size=3, overlap=overlap, mode=mode, padding_mode=padding)
    cpu = sliding_window(x, roi, mix, device="cpu", **kw)
    gpu = np.asarray(sliding_window(x, roi, mix, device="cuda", **kw))
    assert gpu.shape == cpu.shape and gpu.dtype == cpu.dtype
    np.testing.assert_allclose(gpu, cpu, rtol=1e-6, atol=1e-6 * np.abs(cpu).max())
    labels = np.asarray(sliding_window(x, roi, mix, device="cuda", reduce="argmax", **kw))
    np.testing.assert_array_equal(labels, sliding_window(x, roi, mix, device="cpu", reduce="argmax", **kw))
    with pytest.raises(ValueError, match="NaN or infinite score"):
        sliding_window(x, roi, lambda b: mix(b) * np.float32("nan"), device="cuda", **kw)


def _positional_predictor(batch):
    """Three scores per voxel that depend on the voxel's place in the window (so a window's
    placement shows in the result) and on its input."""
    x = batch[:, :1]
    ramp = np.linspace(0.0, 1.0, batch.shape[2], dtype=np.float32).reshape((1, 1, -1) + (1,) * (batch.ndim - 3))
    return np.concatenate([2 * x + ramp, np.sin(3 * x), x * x - 0.5], axis=1).astype(np.float32)


@pytest.mark.parametrize("shape, roi, overlap, mode, side", [
    ((97, 131), (32, 40), 0.5, "gaussian", 17),
    ((97, 131), (32, 40), 0.5, "gaussian", 60),
    ((50, 77), (16, 16), 0.3, "constant", 23),
    ((64, 64), (64, 64), 0.25, "gaussian", 20),
    ((20, 30, 26), (8, 12, 10), 0.5, "gaussian", 9),
])
def test_argmax_region_tiles_equal_the_whole_run(shape, roi, overlap, mode, side):
    """Regions of any size (no multiple of the window, so windows straddle every seam) give the
    whole run's labels bit for bit: each voxel sums the same windows in the same order."""
    x = np.random.default_rng(0).standard_normal((1, 1) + shape).astype(np.float32)
    whole = sliding_window(x, roi, _positional_predictor, overlap=overlap, mode=mode, reduce="argmax")[0]
    out = np.full(shape, 255, whole.dtype)
    reads = []

    def read(box):
        reads.append(box)
        return x[0][(slice(None),) + box]

    for lo in np.ndindex(*(-(-s // side) for s in shape)):
        region = tuple((i * side, min((i + 1) * side, s)) for i, s in zip(lo, shape))
        out[tuple(slice(a, b) for a, b in region)] = argmax_region(read, shape, roi, _positional_predictor, region,
                                                                   overlap=overlap, mode=mode)
        # the context read: the windows meeting the region, less than a window beyond it
        box = reads[-1]
        assert all(b.start > a - r and b.stop < z + r for b, (a, z), r in zip(box, region, roi))
    np.testing.assert_array_equal(out, whole)


def test_argmax_region_one_channel_threshold_and_refusals():
    x = np.random.default_rng(1).standard_normal((1, 1, 70, 90)).astype(np.float32)

    def one(batch):
        return 0.7 * batch[:, :1]

    whole = sliding_window(x, 32, one, overlap=0.5, mode="gaussian", reduce="argmax", threshold=0.1)[0]
    assert 0.2 < whole.mean() < 0.8
    read = lambda box: x[0][(slice(None),) + box]  # noqa: E731
    part = argmax_region(read, (70, 90), 32, one, ((30, 55), (0, 90)), overlap=0.5, mode="gaussian", threshold=0.1)
    np.testing.assert_array_equal(part, whole[30:55])
    with pytest.raises(ValueError, match="smaller than the window"):
        argmax_region(read, (70, 90), 80, one, ((0, 10), (0, 10)))
    with pytest.raises(ValueError, match="region must be 2"):
        argmax_region(read, (70, 90), 32, one, ((0, 71), (0, 10)))
    with pytest.raises(ValueError, match="read returned shape"):
        argmax_region(lambda box: x[0], (70, 90), 32, one, ((0, 10), (0, 10)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        argmax_region(read, (70, 90), 32, lambda b: b[:, :1] * np.inf, ((0, 10), (0, 10)))
