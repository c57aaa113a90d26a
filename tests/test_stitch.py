"""Stitching kernels: window planning and importance maps equal MONAI's; the compiled
accumulate / normalize / argmax equal the NumPy reference exactly."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
from conftest import fast_devices

from segrt.kernels import stitch

DEVICES = fast_devices(stitch.IMPLEMENTATIONS)
# a GPU may fuse dst + pred * weight into one multiply-add (one rounding instead of two)
GPU_RTOL = 1e-6


def _host(x):
    return x.get() if hasattr(x, "get") and not isinstance(x, np.ndarray) else np.asarray(x)


def _on(device, x):
    """x where the device's kernels write (a CuPy array on a real GPU)."""
    import os

    if device == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        import cupy

        return cupy.asarray(x)
    return x


def _same(fast, ref, device):
    if device == "cuda":
        np.testing.assert_allclose(_host(fast), ref, rtol=GPU_RTOL, atol=0)
    else:
        np.testing.assert_array_equal(fast, ref)
EXP_ULPS = 4 * np.finfo(np.float32).eps  # float32 exp of two libraries: a few units in the last place


def _boxes(rng, size, roi):
    """A window start in the output, a source offset in the window and a box that fits both."""
    dst_off, src_off, box = [], [], []
    for s, r in zip(size, roi):
        b = int(rng.integers(1, min(s, r) + 1))
        src_off.append(int(rng.integers(0, r - b + 1)))
        dst_off.append(int(rng.integers(0, s - b + 1)))
        box.append(b)
    return tuple(dst_off), tuple(src_off), tuple(box)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size, roi", [((17, 23), (8, 5)), ((9, 12, 10), (4, 6, 5)), ((5, 4, 3), (5, 4, 3))])
def test_matches_reference(device, dtype, size, roi):
    rng = np.random.default_rng(len(size) * 100 + roi[0])
    channels = 3
    fast = stitch.zeros((channels,) + size, dtype, device=device)
    ref = stitch.zeros((channels,) + size, dtype, device="reference")
    assert fast.dtype == ref.dtype == dtype and not fast.any()
    weight = stitch.importance_map(roi, "gaussian", 0.125, dtype)
    for _ in range(12):
        pred = rng.standard_normal((channels,) + roi).astype(dtype)
        dst_off, src_off, box = _boxes(rng, size, roi)
        stitch.accumulate(fast, dst_off, pred, weight, src_off=src_off, box=box, device=device)
        stitch.accumulate(ref, dst_off, pred, weight, src_off=src_off, box=box, device="reference")
        _same(fast, ref, device)
    # whole windows, the default box
    pred = rng.standard_normal((channels,) + roi).astype(dtype)
    stitch.accumulate(fast, (0,) * len(size), pred, weight, device=device)
    stitch.accumulate(ref, (0,) * len(size), pred, weight, device="reference")
    _same(fast, ref, device)
    count = (rng.random(size) + 0.5).astype(dtype)
    fast, ref = fast[None].copy(), ref[None].copy()
    stitch.normalize(fast, count, device=device)
    stitch.normalize(ref, count, device="reference")
    _same(fast, ref, device)
    fast = _host(fast)
    # argmax with ties: the first maximum wins in both
    acc = np.round(fast[0] * 2) / 2
    labels_ref = np.full((size[0] + 2,) + size[1:], 255, np.uint8)
    labels_fast = _on(device, labels_ref.copy())
    stitch.argmax_block(acc, labels_fast, (1,) + (0,) * (len(size) - 1), device=device)
    stitch.argmax_block(acc, labels_ref, (1,) + (0,) * (len(size) - 1), device="reference")
    labels_fast = _host(labels_fast)
    np.testing.assert_array_equal(labels_fast, labels_ref)
    assert (labels_fast[0] == 255).all() and (labels_fast[1:-1] < channels).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size, roi", [((17, 23), (8, 5)), ((9, 12, 10), (4, 6, 5))])
def test_first_and_last_visits_match_reference(device, size, roi):
    """fresh / last: the sum is assigned where q >= fresh (whatever dst held: NaN here) and
    divided by the count where q < last; everything else is a plain add."""
    rng = np.random.default_rng(sum(size))
    channels = 2
    start = np.full((channels,) + size, np.nan, np.float32)
    start[:, :2] = rng.standard_normal((channels, 2) + size[1:])
    count = (rng.random(size) + 0.5).astype(np.float32)
    for _ in range(8):
        pred = rng.standard_normal((channels,) + roi).astype(np.float32)
        weight = stitch.importance_map(roi, "gaussian", 0.125)
        dst_off, src_off, box = _boxes(rng, size, roi)
        fresh = tuple(int(rng.integers(0, b + 1)) for b in box)
        last = tuple(int(rng.integers(0, b + 1)) for b in box)
        fast, ref = _on(device, start.copy()), start.copy()
        kw = dict(src_off=src_off, box=box, fresh=fresh, last=last, count=count)
        assert stitch.accumulate(fast, dst_off, pred, weight, device=device, **kw)
        assert stitch.accumulate(ref, dst_off, pred, weight, device="reference", **kw)
        fast = _host(fast)
        # the fresh box holds the weighted prediction, whatever was there before
        region = tuple(slice(o + f, o + b) for o, f, b in zip(dst_off, fresh, box))
        assert np.isfinite(ref[(slice(None),) + region]).all()
        if device == "cuda":
            np.testing.assert_allclose(fast, ref, rtol=GPU_RTOL, atol=0, equal_nan=True)
        else:
            np.testing.assert_array_equal(fast, ref)
    # a whole window with nothing before it: assigned, then normalised, in one pass
    pred = rng.standard_normal((channels,) + roi).astype(np.float32)
    out = _on(device, np.full((channels,) + roi, np.nan, np.float32))
    window_count = np.ascontiguousarray(count[tuple(slice(0, r) for r in roi)])
    stitch.accumulate(out, (0,) * len(roi), pred, weight, fresh=(0,) * len(roi), last=roi, count=window_count,
                      device=device)
    np.testing.assert_allclose(_host(out), pred * weight / window_count, rtol=GPU_RTOL)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_accumulate_reports_non_finite_values_it_reads(device, bad):
    roi = (6, 7)
    weight = stitch.importance_map(roi, "gaussian", 0.125)
    pred = np.ones((2,) + roi, np.float32)
    pred[1, 5, 6] = bad  # inside the window, outside the box read below
    dst = _on(device, np.zeros((2, 10, 10), np.float32))
    assert stitch.accumulate(dst, (0, 0), pred, weight, box=(5, 6), device=device)
    assert not stitch.accumulate(dst, (0, 0), pred, weight, device=device)
    with pytest.raises(ValueError, match="non-negative"):
        stitch.accumulate(dst, (0, 0), pred, weight, fresh=(-1, 0), device=device)
    with pytest.raises(ValueError, match="count"):
        stitch.accumulate(dst, (0, 0), pred, weight, last=(1, 1), device=device)


@pytest.mark.parametrize("device", ["cpu"])  # the CPU kernel's thread team; far too large for the CUDA simulator
def test_large_blocks_on_all_cores_match_reference(device):
    # above the size where the compiled kernels switch to every core
    rng = np.random.default_rng(7)
    size, roi = (40, 160, 160), (40, 160, 160)
    pred = rng.standard_normal((3,) + roi).astype(np.float32)
    weight = stitch.importance_map(roi, "gaussian", 0.125)
    fast = stitch.zeros((3,) + size, np.float32, device=device)
    ref = np.zeros_like(fast)
    stitch.accumulate(fast, (0, 0, 0), pred, weight, device=device)
    stitch.accumulate(ref, (0, 0, 0), pred, weight, device="reference")
    np.testing.assert_array_equal(fast, ref)


def test_windows_and_importance_map_equal_monai():
    monai_utils = pytest.importorskip("monai.inferers.utils")
    from monai.data.utils import compute_importance_map, dense_patch_slices

    torch = pytest.importorskip("torch")
    for size, roi, overlap in [((64, 64), (32, 32), 0.5), ((70, 45, 33), (32, 32, 16), 0.25),
                               ((50, 61), (50, 20), 0.6), ((97,), (16,), 0.9)]:
        ov = (overlap,) * len(size)
        steps = monai_utils._get_scan_interval(size, roi, len(size), ov)
        assert stitch.scan_intervals(size, roi, ov) == tuple(steps)
        theirs = [tuple(s.start for s in sl) for sl in dense_patch_slices(size, roi, steps)]
        assert stitch.windows(size, roi, ov) == theirs
        for mode in ("constant", "gaussian"):
            ref = compute_importance_map(roi, mode=mode, sigma_scale=0.125, device="cpu", dtype=torch.float32)
            # torch's float32 exp and NumPy's differ in the last bit for some arguments
            np.testing.assert_allclose(stitch.importance_map(roi, mode, 0.125), ref.numpy(), rtol=EXP_ULPS, atol=0)


def test_importance_map_is_cached_and_read_only():
    a = stitch.importance_map((8, 8), "gaussian")
    assert a is stitch.importance_map((8, 8), "gaussian") and not a.flags.writeable
    with pytest.raises(ValueError, match="mode must be"):
        stitch.importance_map((8, 8), "triangle")
    with pytest.raises(ValueError, match="sigma_scale needs 2"):
        stitch.importance_map((8, 8), "gaussian", (0.1, 0.2, 0.3))


def _tune(per_value_seconds, predictor=None):
    """Feeds a tuner the per-value time each choice takes; returns it and the choices it made."""
    tuner = stitch.ThreadTuner(predictor)
    big = 2_000_000
    assert tuner.threads(10) == 1  # small blocks never wake the team
    seen = []
    for _ in range(5):
        t = tuner.threads(big)
        seen.append(t)
        tuner.record(t, big, per_value_seconds[t] * big)
    return tuner, seen


def test_thread_tuner_times_both_then_keeps_the_clearly_faster():
    tuner, seen = _tune({0: 1e-9, 1: 3e-9})
    # the first call is not timed (first touch of the output's pages), then two of each
    assert sorted(seen[1:]) == [0, 0, 1, 1] and tuner.choice == 0 and tuner.threads(2_000_000) == 0
    tuner, seen = _tune({0: 3e-9, 1: 1e-9})  # a predictor's spinning workers hold the other cores
    assert tuner.choice == 1 and seen.count(0) == 1  # one try of the team settles it
    tuner, _ = _tune({0: 0.9e-9, 1: 1e-9})  # a close race keeps the single thread
    assert tuner.choice == 1


def test_thread_tuner_remembers_the_choice_per_predictor():
    """A run's settled choice is kept for later runs with the same predictor object (no trial
    windows again); another predictor, or one that cannot be weakly referenced, starts afresh."""
    class Predictor:
        def __call__(self, batch):
            return batch

    first, other = Predictor(), Predictor()
    tuner, seen = _tune({0: 3e-9, 1: 1e-9}, first)
    assert tuner.choice == 1 and 0 in seen
    again, seen = _tune({0: 1e-12, 1: 1e-9}, first)  # settled: the team is not tried again
    assert again.choice == 1 and seen == [1] * 5
    fresh, seen = _tune({0: 1e-9, 1: 3e-9}, other)
    assert fresh.choice == 0 and 1 in seen
    unhashable, _ = _tune({0: 3e-9, 1: 1e-9}, [first])  # a list: no memory, no error
    assert unhashable.choice == 1 and stitch.ThreadTuner([first]).choice is None
    gone = weakref.ref(first)
    del first, tuner, again
    gc.collect()
    assert gone() is None  # the memory does not keep a predictor alive


def test_device_errors_say_what_to_do():
    with pytest.raises(ValueError, match="device must be one of"):
        stitch.zeros((2, 2), np.float32, device="gpu")
    with pytest.raises(ValueError, match="stitch: device='cpu' runs on the host, but an input is a GPU array"):
        stitch.accumulate(np.zeros((1, 4, 4), np.float32), (0, 0), _DeviceArray(), np.ones((4, 4), np.float32),
                          device="cpu")


class _DeviceArray:
    __cuda_array_interface__ = {"shape": (1, 4, 4), "typestr": "<f4", "data": (0, False), "version": 3}
    ndim, shape = 3, (1, 4, 4)
