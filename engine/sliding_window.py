"""Sliding-window inference with MONAI's window placement and blending, and a streaming
argmax whose memory is bounded by the windows in flight rather than classes x volume."""
from __future__ import annotations

import bisect
import functools
import itertools
import math
import numbers
import sys
import time

import numpy as np

from segrt.kernels import stitch

__all__ = ["sliding_window", "argmax_region"]

PADDING_MODES = {"constant": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class _Progress:
    """A one-line progress read-out on stderr: windows done / total and rate."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done = total, enabled, 0
        self.t0 = self.last = time.perf_counter()

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self.last >= 0.25 or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            width = 30
            fill = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\rsliding window [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
                             f"windows, {rate:.1f}/s")
            if self.done >= self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def _check_inputs(inputs, xp=np):
    """The inputs as a float array of ``xp`` (CuPy on the GPU path: device inputs are not copied)."""
    if xp is not np:
        from segrt.kernels import gpu

        x = gpu.to_device(inputs, xp)
    else:
        if hasattr(inputs, "detach"):  # a torch tensor
            inputs = inputs.detach().cpu().numpy()
        x = np.asarray(inputs)
    if x.ndim not in (4, 5):
        raise ValueError(f"inputs must be (N, C, H, W) or (N, C, D, H, W), got shape {x.shape}")
    if 0 in x.shape:
        raise ValueError(f"inputs must hold at least one image of at least one channel and one voxel, got shape "
                         f"{x.shape}")
    if x.dtype.kind not in "fiub":
        raise ValueError(f"inputs must hold numbers, got dtype {x.dtype}")
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    # a NaN anywhere makes the minimum NaN: one reduction, no mask the size of the input
    if x.size and bool(xp.isnan(x.min())):
        raise ValueError(f"inputs contain {int(xp.isnan(x).sum())} NaN value(s); clean or impute them first")
    return x


def _per_axis(value, n: int, name: str) -> tuple:
    if isinstance(value, numbers.Number):
        return (value,) * n
    try:
        vals = tuple(value)
    except TypeError:
        raise ValueError(f"{name} must be a number or {n} numbers, got {value!r}") from None
    if len(vals) != n:
        raise ValueError(f"{name} needs {n} values for {n}D inputs, got {len(vals)} ({value!r})")
    return vals


def _check_roi(roi_size, n: int) -> tuple[int, ...]:
    roi = _per_axis(roi_size, n, "roi_size")
    if any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or r <= 0 for r in roi):
        raise ValueError(f"roi_size must be {n} positive integers, got {roi_size!r}")
    return tuple(int(r) for r in roi)


def _as_prediction(out, batch, roi: tuple, xp=np):
    if isinstance(out, (tuple, list, dict)):
        raise ValueError("the predictor must return one array (B, C_out, *roi); got a " + type(out).__name__)
    if xp is not np:  # the GPU path: device outputs stay (a host output is copied up once)
        from segrt.kernels import gpu

        pred = gpu.to_device(out.detach() if hasattr(out, "detach") else out, xp)
    else:
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        pred = np.asarray(out)
    if pred.ndim != batch.ndim:
        raise ValueError(f"the predictor must return a (B, C_out, {', '.join(map(str, roi))}) array, got shape "
                         f"{pred.shape}")
    if pred.shape[0] != batch.shape[0]:
        raise ValueError(f"the predictor returned a batch of {pred.shape[0]} for {batch.shape[0]} windows")
    if tuple(pred.shape[2:]) != roi:
        raise ValueError(f"the predictor's output spatial size {tuple(pred.shape[2:])} differs from the window {roi}; "
                         "segrt stitches outputs of the window's size only (resample in the predictor)")
    if pred.dtype.kind != "f":
        raise ValueError(f"the predictor must return floating-point scores, got dtype {pred.dtype}")
    if pred.shape[1] == 0:
        raise ValueError(f"the predictor returned no channels (shape {pred.shape}); a segmentation needs at least "
                         "one score per voxel")
    # NaN and infinite scores are caught by the accumulate, on values it reads anyway
    if pred.dtype == np.float16:
        pred = pred.astype(np.float32)
    return xp.ascontiguousarray(pred)


class _Cells:
    """The volume cut at every window edge; a cell is final once all windows over it are in."""

    def __init__(self, grid, roi, size):
        self.edges = []
        self.cover = []  # per axis, per cell: windows covering it along that axis
        for starts, r, s in zip(grid, roi, size):
            e = sorted(set([0, s] + list(starts) + [a + r for a in starts]))
            self.edges.append(e)
            self.cover.append([sum(1 for a in starts if a <= lo and hi <= a + r) for lo, hi in zip(e[:-1], e[1:])])
        self.remaining: dict = {}
        self.buffers: dict = {}

    def cells_of(self, start, roi):
        ranges = []
        for e, a, r in zip(self.edges, start, roi):
            i0 = bisect.bisect_left(e, a)
            i1 = bisect.bisect_left(e, a + r)
            ranges.append(range(i0, i1))
        return itertools.product(*ranges)

    def bounds(self, cell):
        lo = tuple(e[i] for e, i in zip(self.edges, cell))
        hi = tuple(e[i + 1] for e, i in zip(self.edges, cell))
        return lo, hi


def _visit_order(grid, roi, size):
    """Axis order (slowest first) keeping the cells in flight few: the slowest axis is the one
    whose window overlap times the other axes' extent is smallest."""
    n = len(grid)

    def pending(a):
        step = grid[a][1] - grid[a][0] if len(grid[a]) > 1 else roi[a]
        other = math.prod(size[b] for b in range(n) if b != a)
        return max(roi[a] - step, 0) * other

    slow = min(range(n), key=pending)
    return [slow] + [a for a in range(n) if a != slow]


@functools.lru_cache(maxsize=8)
def _count_map(size, roi, overlap, mode, sigma, dtype, placement="monai"):
    """Sum of the importance maps of all windows (cached: same-size inputs reuse it)."""
    imp = stitch.importance_map(roi, mode, sigma, dtype)
    count = np.zeros(size, imp.dtype)
    for start in stitch.windows(size, roi, overlap, placement):
        count[tuple(slice(a, a + r) for a, r in zip(start, roi))] += imp
    count.setflags(write=False)
    return count


def _first_and_last(grid, roi):
    """Per axis and window index: where (window-relative) the voxels whose first window this is
    begin, and where those whose last window this is end. Windows are visited in grid order and
    the grid is a product of sorted starts, so both are boxes (a voxel's first window is the
    first along every axis)."""
    fresh, last = [], []
    for starts, r in zip(grid, roi):
        if any(b < a for a, b in zip(starts, starts[1:])):
            raise AssertionError(f"window starts must be sorted, got {starts}")
        fresh.append([0] + [min(r, max(0, a + r - b)) for a, b in zip(starts, starts[1:])])
        last.append([min(r, max(0, b - a)) for a, b in zip(starts, starts[1:])] + [r])
    return fresh, last


def _raise_non_finite(pred) -> None:
    bad = int(pred.size - int(np.count_nonzero(np.isfinite(pred)))) if isinstance(pred, np.ndarray) else None
    what = f"{bad} NaN or infinite score(s)" if bad else "NaN or infinite scores"
    raise ValueError(f"the predictor returned {what} for a batch of windows; the stitched result would be wrong "
                     "there (check the model and its input normalisation)")


def _stitch_batch(pred, chunk, out, labels, cells, imp, device, tuner, xp=np, plan=None, count=None):
    """Weights and adds one batch of predictions (or, when streaming, feeds the cells)."""
    n_out = pred.shape[1]
    roi = imp.shape
    finite = True
    for b, (n, start, index) in enumerate(chunk):
        if cells is None:
            fresh = tuple(f[i] for f, i in zip(plan[0], index))
            last = tuple(l_[i] for l_, i in zip(plan[1], index))
            finite &= stitch.accumulate(out[n], start, pred[b], imp, fresh=fresh, last=last, count=count,
                                        device=device, tuner=tuner)
            continue
        C = cells[n]
        for cell in C.cells_of(start, roi):
            lo, hi = C.bounds(cell)
            shape = tuple(h - l for l, h in zip(lo, hi))
            buf = C.buffers.get(cell)
            if buf is None:
                buf = C.buffers[cell] = xp.zeros((n_out,) + shape, imp.dtype)
                C.remaining[cell] = math.prod(c[i] for c, i in zip(C.cover, cell))
            finite &= stitch.accumulate(buf, (0,) * len(roi), pred[b], imp,
                                        src_off=tuple(l - a for l, a in zip(lo, start)), box=shape, device=device,
                                        tuner=tuner)
            C.remaining[cell] -= 1
            if C.remaining[cell] == 0:
                stitch.argmax_block(buf, labels[n], lo, device=device)
                del C.buffers[cell], C.remaining[cell]
    if not finite:
        _raise_non_finite(pred)


def _with_background(pred, threshold, xp=np):
    """One score channel: a constant background score beside it. Blending is linear, so the
    argmax of the blended pair is exactly "blended score > threshold" (ties go to the
    background)."""
    if pred.shape[1] != 1:
        return pred
    return xp.concatenate([xp.full_like(pred, threshold), pred], axis=1)


def _label_dtype(n_classes: int):
    if n_classes > 65536:
        raise ValueError(f"reduce='argmax' supports up to 65536 classes, the predictor returned {n_classes}")
    return np.uint8 if n_classes <= 256 else np.uint16


def _check_output_memory(shape, dtype) -> None:
    """The blended scores are (N, C_out, *image): refuse, before allocating, a result that does
    not fit the memory budget (a model read with the wrong axes can ask for tens of GiB)."""
    from segrt.engine.io import memory_budget

    need = math.prod(shape) * np.dtype(dtype).itemsize
    if need > memory_budget():
        raise MemoryError(f"the blended scores would be {shape} ({need / 2**30:.1f} GiB), over segrt's memory budget "
                          f"of {memory_budget() / 2**30:.1f} GiB: the predictor returns {shape[1]} channels. If "
                          "that is not the model's class count, check its layout (segrt describe MODEL); else use "
                          "reduce='argmax' (labels only, memory follows the windows in flight)")


def sliding_window(inputs, roi_size, predictor, *, sw_batch_size=1, overlap=0.25, mode="constant", sigma_scale=0.125,
                   padding_mode="constant", cval=0.0, reduce=None, threshold=0.0, placement="monai", progress=False,
                   device="auto"):
    """Run ``predictor`` over windows of ``inputs`` and blend the results, as
    ``monai.inferers.sliding_window_inference`` does (same windows, importance map and result).

    Args:
        inputs: (N, C, H, W) or (N, C, D, H, W) array (float64 stays float64; anything else is
            computed in float32).
        roi_size: window size per spatial axis (an int for all).
        predictor: callable mapping a (B, C, *roi) float array to a (B, C_out, *roi) array
            (NumPy, or anything ``np.asarray`` / a torch tensor converts). It always receives
            exactly ``sw_batch_size`` windows: the last batch is filled up by repeating its
            last window, so fixed-shape backends never see a new shape.
        sw_batch_size: windows per predictor call.
        overlap: fraction in [0, 1) per axis (or one for all).
        mode: "constant" or "gaussian" blending (MONAI's maps), or "gaussian_nnunet" (nnU-Net v2's);
            sigma_scale: gaussian sigma / roi per axis.
        placement: "monai" (default: MONAI's window starts) or "nnunet" (nnU-Net v2's, windows
            spread evenly with step 1 - overlap).
        padding_mode: "constant" (with ``cval``), "reflect", "replicate" or "circular", used
            where the roi is larger than the image (the result is cropped back).
        reduce: None / "none" for the blended (N, C_out, *spatial) scores, or "argmax" for
            (N, *spatial) class labels (uint8 up to 256 classes, else uint16) computed while
            streaming: a region is reduced and its buffer freed as soon as its last window is
            in, so memory follows the windows in flight, not C_out x the volume. A predictor
            with one output channel gives foreground (1) where the blended score exceeds
            ``threshold`` (0 for logits, 0.5 for probabilities).
        progress: print windows done / total and the rate on stderr.
        device: the stitching kernels: "auto" (following the inputs), "cpu" (C++),
            "reference" (NumPy) or "cuda": the whole run on the GPU (inputs, windows, the
            predictor's batches, blending and argmax stay in device memory; CuPy / PyTorch CUDA
            inputs are not copied, host inputs are copied up once; the result is a CuPy array);
            see ``segrt.kernels._device``.

    Returns:
        the blended scores, or the labels with reduce="argmax".
    """
    device = stitch.resolve_device(device, inputs)
    xp = np
    if device == "cuda":  # everything on the GPU: windows, predictions, blending, argmax
        from segrt.kernels import gpu

        xp = gpu.array_module()
    x = _check_inputs(inputs, xp)
    nd = x.ndim - 2
    roi = _check_roi(roi_size, nd)
    ov = _per_axis(overlap, nd, "overlap")
    if any(not isinstance(o, numbers.Real) or isinstance(o, bool) or not 0 <= o < 1 for o in ov):
        raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}")
    if isinstance(sw_batch_size, bool) or not isinstance(sw_batch_size, numbers.Integral) or sw_batch_size < 1:
        raise ValueError(f"sw_batch_size must be a positive integer, got {sw_batch_size!r}")
    if mode not in stitch.MODES:
        raise ValueError(f"mode must be one of {stitch.MODES}, got {mode!r}")
    if placement not in stitch.PLACEMENTS:
        raise ValueError(f"placement must be one of {stitch.PLACEMENTS}, got {placement!r}")
    sig = _per_axis(sigma_scale, nd, "sigma_scale")
    if any(not isinstance(s, numbers.Real) or not s > 0 for s in sig):
        raise ValueError(f"sigma_scale must be positive, got {sigma_scale!r}")
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode must be one of {tuple(PADDING_MODES)}, got {padding_mode!r}")
    if reduce not in (None, "none", "argmax"):
        raise ValueError(f"reduce must be None, 'none' or 'argmax', got {reduce!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    if not callable(predictor):
        raise ValueError("predictor must be callable: (B, C, *roi) array -> (B, C_out, *roi) array")

    n_img, n_chan = x.shape[:2]
    image_size_ = x.shape[2:]
    pads = stitch.pad_widths(image_size_, roi)
    if any(a or b for a, b in pads):
        kw = {"constant_values": cval} if padding_mode == "constant" else {}
        x = xp.pad(x, [(0, 0), (0, 0)] + pads, mode=PADDING_MODES[padding_mode], **kw)
    size = x.shape[2:]
    grid = stitch.window_grid(size, roi, ov, placement)
    imp = stitch.importance_map(roi, mode, sig, x.dtype)
    if xp is not np:
        imp = xp.asarray(imp)
    crop = tuple(slice(a, a + s) for (a, _), s in zip(pads, image_size_))

    streaming = reduce == "argmax"
    indices = [range(len(g)) for g in grid]
    if streaming:
        order = _visit_order(grid, roi, size)
        inverse = [order.index(a) for a in range(nd)]
        per_image = [tuple(p[i] for i in inverse) for p in itertools.product(*(indices[a] for a in order))]
    else:  # grid order: every voxel's first and last window are known in advance (_first_and_last)
        per_image = list(itertools.product(*indices))
    todo = [(n, tuple(g[i] for g, i in zip(grid, w)), w) for n in range(n_img) for w in per_image]
    total = len(todo)

    batch = xp.empty((sw_batch_size, n_chan) + roi, x.dtype)
    out = labels = cells = n_classes = plan = count = None
    bar = _Progress(total, bool(progress))
    tuner = stitch.ThreadTuner(predictor)  # a choice settled by an earlier run with this predictor is kept
    for b0 in range(0, total, sw_batch_size):
        chunk = todo[b0:b0 + sw_batch_size]
        for b, (n, start, _) in enumerate(chunk):
            batch[b] = x[(n, slice(None)) + tuple(slice(a, a + r) for a, r in zip(start, roi))]
        for b in range(len(chunk), sw_batch_size):  # keep the shape fixed
            batch[b] = batch[len(chunk) - 1]
        pred = _as_prediction(predictor(batch), batch, roi, xp)
        if streaming:
            pred = _with_background(pred, threshold, xp)
        n_out = pred.shape[1]
        if n_classes is not None and n_out != n_classes:
            raise ValueError(f"the predictor returned {n_out} channels after returning {n_classes}")
        if n_classes is None:
            n_classes = n_out
            if streaming:
                labels = xp.zeros((n_img,) + size, _label_dtype(n_out))
                cells = [_Cells(grid, roi, size) for _ in range(n_img)]
            else:
                _check_output_memory((n_img, n_out) + size, x.dtype)
                # not zeroed: every voxel's first window assigns its sum, its last one divides it
                # by the count map (one pass over the output in all)
                out = xp.empty((n_img, n_out) + size, x.dtype)
                plan = _first_and_last(grid, roi)
                count = _count_map(size, roi, ov, mode, sig, x.dtype, placement)
                if xp is not np:
                    count = xp.asarray(count)
        _stitch_batch(pred, chunk, out, labels, cells, imp, device, tuner, xp, plan, count)
        bar.update(len(chunk))
    if streaming:
        return labels[(slice(None),) + crop]
    return out[(slice(None), slice(None)) + crop]


def argmax_region(read, size, roi_size, predictor, region, *, overlap=0.25, mode="constant", sigma_scale=0.125,
                  threshold=0.0, placement="monai"):
    """The labels ``sliding_window(x, roi_size, predictor, reduce="argmax", ...)`` gives inside
    ``region`` of an image of spatial ``size``, from the windows that meet the region only
    (chunked whole slides and volumes: the image is never whole in memory).

    Every voxel of the region sums the same windows' predictions in the same order as the
    whole-image run (windows in its visit order, restricted to those meeting the region), so
    the labels are the same bit for bit, given a predictor that returns the same scores for
    the same window (one window per call, as ``sw_batch_size=1``).

    Args:
        read: ``read(box) -> (C, *box)`` float32 array of x[0, :, box] for a tuple of slices.
        size: the whole image's spatial size; at least the window on every axis (a smaller
            image is padded as a whole: run it whole).
        region: per axis (lo, hi) inside ``size``.
        overlap, mode, sigma_scale, threshold, placement: as ``sliding_window``.

    Returns:
        (*region shape) labels, uint8 up to 256 classes, else uint16.
    """
    size = tuple(int(s) for s in size)
    nd = len(size)
    roi = _check_roi(roi_size, nd)
    if any(s < r for s, r in zip(size, roi)):
        raise ValueError(f"an image of {size} is smaller than the window {roi} along some axis: the whole-image run "
                         "pads it, which a region cannot reproduce; run it whole")
    region = tuple((int(lo), int(hi)) for lo, hi in region)
    if len(region) != nd or any(not 0 <= lo < hi <= s for (lo, hi), s in zip(region, size)):
        raise ValueError(f"region must be {nd} (lo, hi) ranges inside {size}, got {region}")
    ov = _per_axis(overlap, nd, "overlap")
    sig = _per_axis(sigma_scale, nd, "sigma_scale")
    grid = stitch.window_grid(size, roi, ov, placement)
    imp = stitch.importance_map(roi, mode, sig, np.float32)
    order = _visit_order(grid, roi, size)
    inverse = [order.index(a) for a in range(nd)]
    meet = [[i for i, a in enumerate(g) if a < hi and a + r > lo] for g, r, (lo, hi) in zip(grid, roi, region)]
    todo = [tuple(p[i] for i in inverse) for p in itertools.product(*(meet[a] for a in order))]
    # the input under those windows: the region and the context they see around it
    span_lo = [grid[a][meet[a][0]] for a in range(nd)]
    span_hi = [grid[a][meet[a][-1]] + roi[a] for a in range(nd)]
    x = np.asarray(read(tuple(slice(lo, hi) for lo, hi in zip(span_lo, span_hi))))
    want = tuple(h - lo for lo, h in zip(span_lo, span_hi))
    if x.ndim != nd + 1 or tuple(x.shape[1:]) != want:
        raise ValueError(f"read returned shape {x.shape} for a box of {want}: expected "
                         f"(C, {', '.join(map(str, want))})")
    x = x.astype(np.float32, copy=False)
    shape = tuple(hi - lo for lo, hi in region)
    batch = np.empty((1, x.shape[0]) + roi, np.float32)
    acc = None
    finite = True
    for w in todo:
        start = tuple(grid[a][w[a]] for a in range(nd))
        batch[0] = x[(slice(None),) + tuple(slice(s - lo, s - lo + r) for s, lo, r in zip(start, span_lo, roi))]
        pred = _with_background(_as_prediction(predictor(batch), batch, roi), threshold)
        if acc is None:
            _label_dtype(pred.shape[1])
            acc = np.zeros((pred.shape[1],) + shape, np.float32)
        elif pred.shape[1] != acc.shape[0]:
            raise ValueError(f"the predictor returned {pred.shape[1]} channels after returning {acc.shape[0]}")
        a0 = [max(s, lo) for s, (lo, _) in zip(start, region)]
        a1 = [min(s + r, hi) for s, r, (_, hi) in zip(start, roi, region)]
        finite &= stitch.accumulate(acc, tuple(a - lo for a, (lo, _) in zip(a0, region)), pred[0], imp,
                                    src_off=tuple(a - s for a, s in zip(a0, start)),
                                    box=tuple(b - a for a, b in zip(a0, a1)))
    if not finite:
        _raise_non_finite(pred)
    labels = np.zeros(shape, _label_dtype(acc.shape[0]))
    stitch.argmax_block(acc, labels, (0,) * nd)
    return labels
