"""The video pipeline (sources in ``sources.py``, latency statistics in ``statistics.py``): frames in, coloured overlays out, with bounded latency.

    capture thread -> newest-frame slot -> resize + normalise -> infer -> argmax + remove
    small blobs -> overlay (class colours, contours, latency read-out) -> write / display

Capture runs in its own thread and hands frames over through a one-frame slot: when
inference falls behind a live source (a camera, a stream, or a file paced with
``realtime``), the older frame is replaced and counted as dropped, never queued, so latency
stays bounded. A file read without ``realtime`` is processed frame by frame, none dropped.

Frames are processed by ``workers`` threads (one by default), each with its share of the
cores; overlays come out in frame order. One worker with every core gives the lowest
latency. More workers give more frames per second when the model does not use all cores
well, at the cost of each frame
taking longer; an overlay finished after a newer one is dropped (counted) rather than shown late.

Latency is measured per frame from the moment capture returned it to the moment its overlay
was written or shown; per-stage and end-to-end p50 / p90 / p99 / max, dropped frames and the
effective frame rate are reported live, as JSON and as a PNG latency CDF.
"""
from __future__ import annotations

import os
import queue
import sys
import threading
import time

import numpy as np

from segrt.engine import backends, io
from segrt.engine.metadata import foreground_threshold
from segrt.engine.model import ModelTaskError, as_model
from segrt.engine.stages import pipeline_device
from segrt.engine.video.sources import open_source
from segrt.engine.video.sources import opencv as _cv2
from segrt.engine.video.statistics import FRAME_STAGES as _FRAME_STAGES
from segrt.engine.video.statistics import FrameTimes, VideoStats
from segrt.kernels.overlay import blend_labels, network_input

__all__ = ["VideoPipeline", "PALETTE", "VIDEO_SUFFIXES", "INTERRUPTED"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov")
INTERRUPTED = "interrupted by the user (Ctrl-C)"

# class colours (BGR, OpenCV's order), background first and unused
PALETTE = np.array([[0, 0, 0], [255, 200, 0], [0, 220, 255], [255, 0, 200], [0, 255, 80], [80, 80, 255],
                    [255, 120, 60], [180, 255, 255]], np.uint8)

def _lower_priority() -> None:
    """Capture and decoding yield the cores to inference: on a machine whose cores are all busy
    inferring, a decode that preempts one inference thread stalls the whole layer, so it runs
    at a lower priority (Linux threads have their own nice value) while inference is busy."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not permitted: run as is
        pass


class _LatestFrame:
    """A one-frame slot: the producer replaces an unconsumed frame (counted as dropped), or,
    with ``block``, waits for the consumer (offline files: nothing dropped)."""

    def __init__(self, block: bool):
        self.cond = threading.Condition()
        self.item = None
        self.closed = False
        self.dropped = 0
        self.block = block
        self.error = None

    def put(self, item) -> None:
        with self.cond:
            while self.block and self.item is not None and not self.closed:
                self.cond.wait()
            if self.item is not None:
                self.dropped += 1
            self.item = item
            self.cond.notify_all()

    def get(self):
        with self.cond:
            while self.item is None and not self.closed:
                self.cond.wait()
            item, self.item = self.item, None
            self.cond.notify_all()
            return item

    def close(self, error=None) -> None:
        with self.cond:
            self.closed = True
            self.error = self.error or error
            self.cond.notify_all()


class _DeviceLane:
    """One worker's share of the GPU: its own CUDA stream (the kernels and the torch / TensorRT
    call of its frame run there, overlapping with the other workers' frames), pinned host
    buffers for the frame going up and the blended frame coming down (asynchronous copies at
    full bus speed), and CUDA events at the stage boundaries, read once per frame after the
    download has synchronised the stream. ``cupy``: CuPy, or None under the simulator (NumPy
    arrays: no streams, wall-clock stage times)."""

    def __init__(self, cupy):
        self.cupy = cupy
        self.stream = cupy.cuda.Stream(non_blocking=True) if cupy is not None else None
        self._buffers: dict = {}  # (role, shape, dtype) -> reused buffer
        self._events: list = []
        self.synced_at = 0.0  # perf_counter() when the last download had synchronised the stream

    def _buffer(self, role, shape, dtype, pinned):
        key = (role, tuple(shape), np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            if pinned:
                import cupyx

                buf = cupyx.empty_pinned(shape, dtype)
            else:
                buf = self.cupy.empty(shape, dtype)
            self._buffers[key] = buf
        return buf

    def __enter__(self):
        if self.stream is not None:
            self.stream.__enter__()
        self._events = []
        return self

    def __exit__(self, *exc):
        if self.stream is not None:
            self.stream.__exit__(*exc)

    def mark(self) -> None:
        """An event at the current point of this lane's stream (a stage boundary)."""
        if self.stream is not None:
            event = self.cupy.cuda.Event()
            event.record(self.stream)
            self._events.append(event)

    def upload(self, frame: np.ndarray):
        """The frame on the device: copied into a pinned buffer, then up asynchronously."""
        if self.cupy is None:
            from segrt.kernels import gpu

            return gpu.to_device(frame, np)
        pinned = self._buffer("up", frame.shape, frame.dtype, True)
        np.copyto(pinned, frame)
        device = self._buffer("frame", frame.shape, frame.dtype, False)
        device.set(pinned, stream=self.stream)
        return device

    def download(self, array) -> np.ndarray:
        """``array`` on the host (a new array: the pinned buffer is the next frame's), after the
        stream has finished everything queued before it."""
        if self.cupy is None:
            return np.array(array)
        pinned = self._buffer("down", array.shape, array.dtype, True)
        array.get(stream=self.stream, out=pinned)
        self.mark()
        self.stream.synchronize()
        self.synced_at = time.perf_counter()
        return pinned.copy()

    def stage_seconds(self) -> list | None:
        """Device seconds between consecutive marks (after ``download``), or None without events."""
        if len(self._events) < 2:
            return None
        return [self.cupy.cuda.get_elapsed_time(a, b) / 1000.0 for a, b in zip(self._events, self._events[1:])]


# -- the pipeline --------------------------------------------------------------------------

def _check_workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or not 1 <= workers <= 64:
        raise ValueError(f"workers must be an integer from 1 to 64, got {workers!r}")
    return int(workers)


class VideoPipeline:
    """Real-time 2D semantic segmentation of video frames with a segrt model.

    Args:
        model: a .onnx file exported by segrt (task semantic, 2D, a fixed ``window`` [H, W],
            3 input channels for colour video or 1 for grey) or a loaded Model.
        alpha: overlay opacity of class colours.
        min_blob: blobs smaller than this many model-grid pixels are removed (default: the
            metadata's postprocess.remove_small).
        contours: draw class outlines.
        workers: frames in flight at once, each worker with its share of the cores
            (OpenVINO: one stream each; ONNX Runtime: cores / workers threads each). 1 (the
            default) gives the lowest latency; 2 on a CPU gives more frames per second at
            about twice the latency (see the module text). A loaded model is called by the
            workers as it is: it must be safe to call from several threads (segrt's are).
        device: "cpu", "cuda" or "auto". "cuda": each frame is uploaded once; the network input
            (area resize, planes, scale), inference, argmax, ``remove_small`` and the colour
            blend run in device memory, and the blended frame comes down once. Outlines and
            the latency text are drawn on the host (on the model-sized labels, downloaded
            too: a few kB). Needs a backend that takes device arrays (torch, trt). "auto":
            "cuda" when the model's backend takes device arrays, else "cpu".
        backend_options: passed to ``segrt.engine.load`` with a model file: ``threads``
            (inference threads; 1 is the steadiest where a core can stall, as on shared VMs,
            at about twice the inference time), ``precision`` ("bf16", OpenVINO), ...
    """

    def __init__(self, model, *, backend="auto", alpha=0.45, min_blob=None, contours=True, workers=1,
                 warmup=True, device="auto", **backend_options):
        n_workers = _check_workers(workers)
        options = dict(backend_options)
        if n_workers > 1 and not hasattr(model, "infer"):
            # one model, called by every worker at once: OpenVINO splits its threads into
            # streams, ONNX Runtime gives each call its share of the cores
            chosen = backends.choose(backend)[0]
            if chosen == "openvino":
                options.setdefault("streams", n_workers)
            elif chosen == "ort":
                options.setdefault("threads", max(1, backends.usable_cpus() // n_workers))
        self.model = as_model(model, backend, options)
        meta = self.meta = dict(getattr(self.model, "metadata", None) or {})
        path = getattr(self.model, "path", "model")
        if meta.get("task") != "semantic" or len(meta.get("window", [])) != 2:
            raise ModelTaskError(f"{path}: the video pipeline runs 2D semantic models with a window [H, W] in their "
                                 f"metadata; this one has task {meta.get('task')!r}, window {meta.get('window')}")
        self.window = tuple(meta["window"])
        self.channels = meta.get("in_channels", 3)
        if self.channels not in (1, 3):
            raise ModelTaskError(f"{path}: video models take 1 (grey) or 3 (RGB) channels, this one {self.channels}")
        self.alpha = float(alpha)
        self._threshold = foreground_threshold(meta)
        pp = (meta.get("postprocess") or {}).get("remove_small")
        self.min_blob = pp if min_blob is None else min_blob
        self.contours = contours
        self.class_names = meta.get("class_names") or []
        norm = meta.get("normalization") or {"kind": "none"}
        if norm["kind"] not in ("none", "zscore"):
            raise ModelTaskError(f"{path}: video frames take fixed normalisations (none / zscore with mean and std), "
                                 f"not {norm['kind']!r}")
        scale = norm.get("scale", 1.0)
        shift = norm.get("shift", 0.0)
        if norm["kind"] == "zscore":
            mean, std = norm.get("mean", 0.0), norm.get("std", 1.0)
            scale, shift = scale / std, shift - scale * mean / std
        self._scale, self._shift = np.float32(scale), np.float32(shift)
        self.device, self._xp = pipeline_device(device, [self.model], path)
        self._batch = self._xp.empty((1, self.channels) + self.window, np.float32)
        self._buffers = [self._batch] + [self._xp.empty_like(self._batch) for _ in range(n_workers - 1)]
        self._lanes = ([_DeviceLane(self._xp if self._xp is not np else None) for _ in range(n_workers)]
                       if self.device == "cuda" else None)
        self._palette = PALETTE  # labels past it take its last colour
        self._last_latency = None
        if warmup:  # the first inference compiles the model: not the stream's cost (run() warms its own threads)
            for _ in range(2):
                self._warm_thread(0)

    def _warm_thread(self, worker: int) -> None:
        """Pays the calling thread's first-call costs before a stream reaches it: OpenCV builds
        its text renderer once per thread (about 20 ms for the first putText here), and the
        runtime gives each thread its own infer request. Paid inside the stream, one frame
        takes 20 ms longer and the next two wait for it: 1 % of a 300-frame run, its p99."""
        h, w = self.window
        frame = np.zeros((2 * h, 2 * w, 3), np.uint8)
        frame[h // 2:h, w // 2:w] = 255
        out, _ = self.process(frame, worker=worker)
        self._latency_text(out, 0.0)

    @property
    def workers(self) -> int:
        return len(self._buffers)

    def preprocess(self, frame: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The model's input batch for ``frame``, written into ``out`` (default: the first
        worker's buffer): area-resized to the window, RGB or grey planes, scaled and shifted
        (``segrt.kernels.overlay.network_input``)."""
        batch = self._batch if out is None else out
        network_input(frame, self.window, self._scale, self._shift, self.channels, out=batch[0], device=self.device)
        return batch

    def postprocess(self, scores) -> np.ndarray:
        from segrt.engine.preprocess import labels_from_scores

        s = next(iter(scores.values())) if isinstance(scores, dict) else scores
        kernels = "cuda" if self.device == "cuda" else "auto"
        labels = labels_from_scores(s[0], device=kernels, threshold=self._threshold)
        if self.min_blob:
            from segrt.kernels.label import remove_small

            labels = remove_small(labels, self.min_blob, 8, device=kernels)
        return labels

    def overlay(self, frame: np.ndarray, labels, latency_ms=None, frame_on_device=None, lane=None) -> np.ndarray:
        """Class colours blended with ``alpha`` where labels are set, outlines, latency text.
        The colours go in with one compiled pass over the frame (``segrt.kernels.overlay``:
        labels looked up at the frame's size, only labelled runs blended); outlines are traced
        on the model-sized labels and scaled, a fraction of the cost of tracing full frames."""
        cv2 = _cv2()
        h, w = frame.shape[:2]
        if frame.ndim == 2:
            frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
        xp = self._xp
        small = labels if labels.dtype == np.uint8 else xp.minimum(labels, 255).astype(np.uint8)
        if self.device == "cuda":  # blended on the device; the frame and the small labels come down once
            from segrt.kernels import gpu

            on_device = frame_on_device if frame_on_device is not None and frame_on_device.ndim == 3 else frame
            blended = blend_labels(on_device, small, self._palette, self.alpha, device="cuda")
            out = lane.download(blended) if lane is not None else gpu.to_host(blended)
            small = gpu.to_host(small)  # a few kB, ready: the download synchronised the stream
        else:
            out = blend_labels(frame, small, self._palette, self.alpha)
        if self.contours:
            top = int(cv2.minMaxLoc(small)[1])
            # a few classes: one mask each (a count of every value costs more than that)
            present = range(1, top + 1) if top <= 16 else np.flatnonzero(np.bincount(small.reshape(-1))[1:]) + 1
            sy, sx = h / small.shape[0], w / small.shape[1]
            for c in present:
                found, _ = cv2.findContours((small == c).view(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                if not found:
                    continue
                scaled = [np.rint((cnt + 0.5) * (sx, sy) - 0.5).astype(np.int32) for cnt in found]
                colour = self._palette[min(int(c), len(self._palette) - 1)]
                cv2.polylines(out, scaled, True, tuple(int(v) for v in colour), 2, cv2.LINE_8)
        return self._latency_text(out, latency_ms)

    @staticmethod
    def _latency_text(out, latency_ms):
        if latency_ms is not None:
            cv2 = _cv2()
            cv2.putText(out, f"{latency_ms:5.1f} ms", (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2,
                        cv2.LINE_AA)
        return out

    def process(self, frame: np.ndarray, times: dict | None = None, *, worker: int = 0):
        """One frame through every stage; returns (overlay, labels). ``times`` collects seconds
        per stage; ``worker`` picks the input buffer (one frame per worker at a time)."""
        if frame is None or frame.ndim not in (2, 3) or frame.dtype != np.uint8:
            raise ValueError(f"a frame must be an (H, W) or (H, W, 3) uint8 image, got "
                             f"{None if frame is None else (frame.shape, frame.dtype)}")
        if self.device == "cuda":
            return self._process_on_device(frame, times, worker)
        t0 = time.perf_counter()
        batch = self.preprocess(frame, self._buffers[worker])
        t1 = time.perf_counter()
        scores = self.model.infer(batch)
        t2 = time.perf_counter()
        labels = self.postprocess(scores)
        t3 = time.perf_counter()
        out = self.overlay(frame, labels, self._last_latency)
        t4 = time.perf_counter()
        if times is not None:
            for name, dt in zip(_FRAME_STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times.setdefault(name, []).append(dt)
        return out, labels

    def _process_on_device(self, frame, times, worker):
        """``process`` on the worker's lane. Stage times are device times from CUDA events
        (the wall clock of asynchronous work measures its launch); "overlay" adds the host's
        outline and text drawing to the blend and the download."""
        lane = self._lanes[worker]
        t0 = time.perf_counter()
        with lane:
            lane.mark()
            source = lane.upload(frame) if frame.ndim == 3 else frame  # the one upload, for input and blend
            batch = self.preprocess(source, self._buffers[worker])
            lane.mark()
            t1 = time.perf_counter()
            scores = self.model.infer(batch)
            lane.mark()
            t2 = time.perf_counter()
            labels = self.postprocess(scores)
            lane.mark()
            t3 = time.perf_counter()
            out = self.overlay(frame, labels, self._last_latency, frame_on_device=source, lane=lane)
            t4 = time.perf_counter()
        device = lane.stage_seconds()
        if times is not None:
            if device is None:  # the simulator: no events
                spans = (t1 - t0, t2 - t1, t3 - t2, t4 - t3)
            else:  # the blend and download on the device, then the host's drawing
                spans = (device[0], device[1], device[2], device[3] + (t4 - lane.synced_at))
            for name, dt in zip(_FRAME_STAGES, spans):
                times.setdefault(name, []).append(dt)
        from segrt.kernels import gpu as _gpu

        return out, _gpu.to_host(labels)

    def run(self, source, *, out=None, display=False, realtime=False, max_frames=None, live=False,
            on_frame=None) -> VideoStats:
        """Runs until the source ends, ``max_frames`` are processed, or (with ``display``) the
        window gets Esc / q. A source that fails mid-stream ends the run cleanly: the stats
        so far come back with ``stopped`` saying why, and the output file is complete.
        While it runs, OpenCV works on one thread (process-wide; restored at the end): its
        parallel calls on a frame save nothing measurable and take cores from inference.

        Args:
            source: what ``open_source`` takes, or an opened source.
            out: write the overlays to this video file (.mp4 / .avi / .mkv / .mov), atomically;
                an interruption (Ctrl-C) ends the run and keeps the frames written so far.
            display: show the overlays in a window (needs a GUI build of OpenCV).
            realtime: pace a file at its frame rate, as a camera would deliver it (frames
                that arrive while the model is busy are dropped, newest wins).
            live: print a one-line status every second on stderr.
            on_frame: callback(index, overlay, labels) for each processed frame.
        """
        cv2 = _cv2()
        if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, (int, np.integer))
                                       or max_frames < 1):
            raise ValueError(f"max_frames must be a positive integer (or None: until the source ends), got "
                             f"{max_frames!r}")
        if out is not None:
            io.check_outputs([out], [] if hasattr(source, "read") else [source], suffixes=VIDEO_SUFFIXES)
        if display:
            try:
                cv2.namedWindow("segrt", cv2.WINDOW_AUTOSIZE)
            except cv2.error:
                raise RuntimeError("display needs OpenCV with GUI support and a screen: pip install "
                                   "opencv-python (not -headless), or write the overlay with out=...") from None
        src = open_source(source) if not hasattr(source, "read") else source
        slot = _LatestFrame(block=not (src.live or realtime))
        counters = {"read": 0}
        stop = threading.Event()

        def capture():
            _lower_priority()
            t_start = time.perf_counter()
            try:
                while not stop.is_set():
                    due = None
                    if realtime and not src.live:
                        due = t_start + counters["read"] / src.fps
                        delay = due - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    frame = src.read()
                    if frame is None:
                        slot.close("end of stream" if not src.live else "the source stopped delivering frames")
                        return
                    counters["read"] += 1
                    # latency counts from when the frame was due (paced file) or delivered (live)
                    t_cap = time.perf_counter() if due is None else min(due, time.perf_counter())
                    slot.put((counters["read"] - 1, frame, t_cap))
            except Exception as err:  # a source failing mid-stream: stop cleanly, say why
                slot.close(f"source error: {err}")

        results: queue.Queue = queue.Queue()  # (index, overlay, labels, t_cap, stage times) | None | error

        def work(worker):
            try:
                self._warm_thread(worker)
                results.put("ready")
                while not stop.is_set():
                    item = slot.get()
                    if item is None:
                        break
                    index, frame, t_cap = item
                    own: dict = {"wait": [time.perf_counter() - t_cap]}
                    overlay, labels = self.process(frame, own, worker=worker)
                    results.put((index, overlay, labels, t_cap, own))
            except BaseException as err:  # raised in the caller's thread, after the others stop
                results.put(err)
            results.put(None)

        writer = None
        tmp_ctx = tmp_path = None
        times = FrameTimes()
        processed = late = 0
        stopped = "end of stream"
        # a file read as is: every frame, in order (finished early ones wait for their turn);
        # a live or paced source: newest first, an overlay finished after a newer one is dropped
        in_order = slot.block
        pending: dict = {}
        next_index, last_index = 0, -1
        threads = [threading.Thread(target=capture, name="segrt-capture", daemon=True)]
        threads += [threading.Thread(target=work, args=(w,), name=f"segrt-worker-{w}", daemon=True)
                    for w in range(self.workers)]
        running = self.workers
        self._last_latency = None  # the read-out shows this run's latency, from its second frame
        # OpenCV's own threads (and their spinning after each call) take cores from inference
        # for a 640 x 480 frame's resize and blend they do not shorten: one thread while running
        opencv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for t in threads[1:]:
                t.start()
            for _ in range(self.workers):  # capture starts (and a paced file's clock) once every worker is warm
                got = results.get()
                if isinstance(got, BaseException):
                    raise got
            t_begin = time.perf_counter()
            last_print = t_begin
            threads[0].start()
            while running:
                got = results.get()
                if got is None:
                    running -= 1
                    continue
                if isinstance(got, BaseException):
                    raise got
                if in_order:
                    pending[got[0]] = got
                    ready = []
                    while next_index in pending:
                        ready.append(pending.pop(next_index))
                        next_index += 1
                elif got[0] < last_index:
                    late += 1
                    continue
                else:
                    ready = [got]
                for index, overlay, labels, t_cap, own in ready:
                    last_index = index
                    t_out = time.perf_counter()
                    if out is not None:
                        if writer is None:
                            tmp_ctx = io.atomic_path(out)
                            tmp_path = tmp_ctx.__enter__()
                            fourcc = cv2.VideoWriter_fourcc(*("mp4v" if io._suffix(str(out)) in (".mp4", ".mov")
                                                              else "MJPG"))
                            writer = cv2.VideoWriter(tmp_path, fourcc, src.fps, (overlay.shape[1], overlay.shape[0]))
                            if not writer.isOpened():
                                raise OSError(f"{out}: OpenCV cannot write this video format here; use .avi (MJPG)")
                        writer.write(overlay)
                    if display:
                        cv2.imshow("segrt", overlay)
                        if cv2.waitKey(1) & 0xFF in (27, ord("q")):
                            stopped = "stopped by the user"
                            break
                    if on_frame is not None:
                        on_frame(index, overlay, labels)
                    t_done = time.perf_counter()
                    frame_times = {name: dt[0] for name, dt in own.items()}  # one value per stage
                    frame_times["output"] = t_done - t_out
                    times.frame(frame_times, t_done - t_cap)  # fixed memory however long the stream
                    self._last_latency = 1000 * (t_done - t_cap)
                    processed += 1
                    if live and t_done - last_print >= 1.0:
                        last_print = t_done
                        partial = VideoStats(src.name, counters["read"], processed, slot.dropped + late,
                                             t_done - t_begin, src.fps, times, "running")
                        sys.stderr.write("\r" + partial.line())
                        sys.stderr.flush()
                    if max_frames is not None and processed >= max_frames:
                        stopped = f"max_frames ({max_frames}) reached"
                        break
                if stopped != "end of stream":
                    break
            else:
                stopped = slot.error or "end of stream"
        except KeyboardInterrupt:
            # Ctrl-C is how a live run is stopped: what was written so far is kept and committed
            stopped = INTERRUPTED
        except BaseException:
            if tmp_ctx is not None:
                writer.release()
                tmp_ctx.__exit__(*sys.exc_info())
                tmp_ctx = None
            raise
        finally:
            stop.set()
            slot.close()
            for t in threads:
                if t.ident is not None:  # started
                    t.join(timeout=2.0)
            cv2.setNumThreads(opencv_threads)
            src.close()
            if display:
                cv2.destroyAllWindows()
        if tmp_ctx is not None:
            writer.release()
            tmp_ctx.__exit__(None, None, None)
        wall = time.perf_counter() - t_begin
        stats = VideoStats(src.name, counters["read"], processed, slot.dropped + late, wall, src.fps, times, stopped,
                           getattr(self.model, "backend", "?"))
        if live:
            sys.stderr.write("\r" + stats.line() + "\n")
        return stats
