"""The video pipeline: the demo instrument model on a generated clip, the real ultrasound cine
from pydicom-data, newest-frame-wins under load, and sources that fail."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from segrt.engine.video import SourceError, VideoPipeline, open_source  # noqa: E402
from segrt.bench.synthetic import EndoscopyScene, write_clip  # noqa: E402

INSTRUMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "instruments.onnx")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "clip.avi"
    return write_clip(path, seed=4321, seconds=1.0, fps=30.0)


@pytest.fixture(scope="module")
def pipeline():
    return VideoPipeline(INSTRUMENTS, backend="ort")


def _dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2 * np.logical_and(a, b).sum() / s


def test_file_offline_processes_every_frame_and_segments_instruments(tmp_path, clip, pipeline):
    scene = EndoscopyScene(4321)
    dices = []

    def check(i, overlay, labels):
        ref = cv2.resize(scene.frame(i / 30.0)[1], labels.shape[::-1], interpolation=cv2.INTER_NEAREST)
        dices.append(_dice(labels > 0, ref > 0))
        assert overlay.shape == (480, 640, 3)

    out = tmp_path / "overlay.avi"
    stats = pipeline.run(clip, out=str(out), on_frame=check)
    assert stats.frames_read == stats.frames_processed == 30 and stats.frames_dropped == 0
    assert stats.stopped == "end of stream"
    assert np.median(dices) >= 0.85, dices  # instrument vs tissue on a held-out generated scene
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    cap.release()
    written = stats.save(tmp_path / "lat.json", tmp_path / "lat.png")
    s = json.loads((tmp_path / "lat.json").read_text())
    assert s["frames_processed"] == 30 and s["end_to_end"]["n"] == 30
    assert s["end_to_end"]["p50_ms"] <= s["end_to_end"]["p99_ms"] <= s["end_to_end"]["max_ms"]
    assert set(s["stages"]) == {"wait", "preprocess", "infer", "postprocess", "overlay", "output"}
    assert cv2.imread(written[1]).shape == (440, 720, 3)


def test_dicom_ultrasound_cine_as_a_stream(pipeline):
    from pydicom.data import get_testdata_file

    path = get_testdata_file("color3d_jpeg_baseline.dcm")
    if path is None:
        pytest.skip("pydicom-data is not installed")
    src = open_source(path)
    assert src.frames == 120 and src.fps == pytest.approx(30.0, rel=1e-3)
    first = src.read()
    assert first.shape == (480, 640, 3) and first.dtype == np.uint8
    stats = pipeline.run(path, max_frames=20)
    assert stats.frames_processed == 20 and stats.stopped.startswith("max_frames")


class _SlowModel:
    """A 2D model stand-in that takes ``delay`` seconds per frame."""

    def __init__(self, delay):
        self.delay = delay
        self.backend = "sleep"
        self.metadata = {"task": "semantic", "window": [60, 80], "in_channels": 3, "normalization": {"kind": "none"}}

    def infer(self, batch):
        time.sleep(self.delay)
        return np.stack([np.zeros(batch.shape[2:], np.float32), batch[0, 0] - 128])[None]


def test_realtime_drops_frames_and_keeps_latency_bounded(clip):
    stats = VideoPipeline(_SlowModel(0.08)).run(clip, realtime=True)
    assert stats.frames_read == 30
    assert stats.frames_dropped > 0 and stats.frames_processed + stats.frames_dropped == 30


def test_the_frame_slot_keeps_only_the_newest_frame():
    # what bounds latency, asserted on the mechanism (wall-clock bounds fail on a busy machine):
    # a live source replaces an unconsumed frame, so a worker never takes a frame older than
    # the newest one captured before it asked
    from segrt.engine.video.pipeline import _LatestFrame

    slot = _LatestFrame(block=False)
    for frame in range(5):
        slot.put(frame)
    assert slot.get() == 4 and slot.dropped == 4
    slot.put(5)
    assert slot.get() == 5 and slot.dropped == 4
    slot.close()
    assert slot.get() is None
    # an offline file blocks the reader instead: nothing is dropped
    offline = _LatestFrame(block=True)
    got = []
    reader = threading.Thread(target=lambda: [offline.put(i) for i in range(20)] + [offline.close()])
    reader.start()
    while (item := offline.get()) is not None:
        got.append(item)
    reader.join()
    assert got == list(range(20)) and offline.dropped == 0


class _FailingSource:
    def __init__(self, frames_ok, live, error=False):
        self.name, self.live, self.fps, self.frames = "fake", live, 30.0, None
        self.n, self.frames_ok, self.error = 0, frames_ok, error

    def read(self):
        self.n += 1
        if self.n > self.frames_ok:
            if self.error:
                raise IOError("connection reset")
            return None
        return np.full((48, 64, 3), 100, np.uint8)

    def close(self):
        pass


def test_a_camera_that_disappears_stops_cleanly_with_stats(tmp_path):
    out = tmp_path / "o.avi"
    stats = VideoPipeline(_SlowModel(0.0)).run(_FailingSource(12, live=True), out=str(out))
    assert "stopped delivering" in stats.stopped and stats.frames_processed >= 1
    assert out.is_file() and not [p for p in os.listdir(tmp_path) if "partial" in p]
    stats = VideoPipeline(_SlowModel(0.0)).run(_FailingSource(7, live=False, error=True))
    assert "connection reset" in stats.stopped and stats.frames_processed == 7


def test_sources_that_cannot_be_opened(tmp_path):
    with pytest.raises(SourceError, match="no such video file"):
        open_source(str(tmp_path / "missing.mp4"))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0" * 1000)
    with pytest.raises(SourceError, match="cannot open"):
        open_source(str(junk))
    from segrt.cli import main

    assert main(["video", INSTRUMENTS, str(junk), "-q"]) == 2


def test_truncated_video_ends_cleanly(tmp_path, clip, pipeline):
    data = open(clip, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    stats = pipeline.run(str(cut))
    assert 0 < stats.frames_processed < 30 and stats.stopped == "end of stream"


def test_model_that_does_not_fit_video_is_refused():
    from segrt.engine.volume import ModelTaskError

    m = _SlowModel(0)
    m.metadata = {"task": "semantic", "window": [16, 16, 16]}
    with pytest.raises(ModelTaskError, match="2D semantic"):
        VideoPipeline(m)


def test_cli_video(tmp_path, clip, capsys):
    from segrt.cli import main

    stats = tmp_path / "s.json"
    assert main(["video", INSTRUMENTS, clip, "--out", str(tmp_path / "o.mp4"), "--stats", str(stats), "--backend",
                 "ort", "-q"]) == 0
    assert "dropped" in capsys.readouterr().out
    assert json.loads(stats.read_text())["frames_processed"] == 30
    assert (tmp_path / "s.png").is_file() and (tmp_path / "o.mp4").is_file()
    assert main(["video", INSTRUMENTS, clip, "--workers", "2", "--stats", str(stats), "--backend", "ort", "-q"]) == 0
    assert json.loads(stats.read_text())["frames_processed"] == 30
    assert main(["video", INSTRUMENTS, clip, "--decode-threads", "0", "--stats", str(stats), "--backend", "ort",
                 "-q"]) == 0
    assert json.loads(stats.read_text())["frames_processed"] == 30
    assert main(["video", INSTRUMENTS, clip, "--decode-threads", "-1", "--backend", "ort", "-q"]) == 2
    assert "decode_threads must be an integer >= 0" in capsys.readouterr().err
    assert main(["video", INSTRUMENTS, clip, "--threads", "1", "--stats", str(stats), "--backend", "ort", "-q"]) == 0
    assert json.loads(stats.read_text())["frames_processed"] == 30
    assert main(["video", INSTRUMENTS, clip, "--threads", "0", "--backend", "ort", "-q"]) == 2
    assert "threads must be a positive integer" in capsys.readouterr().err
    assert main(["video", INSTRUMENTS, clip, "--workers", "0", "--backend", "ort", "-q"]) == 2
    assert "workers must be an integer" in capsys.readouterr().err
    assert main(["video", INSTRUMENTS, clip, "--precision", "bf16", "--backend", "ort", "-q"]) == 2
    assert "not ['precision']" in capsys.readouterr().err


def test_bf16_video_agrees_with_f32():
    pytest.importorskip("openvino")
    scene = EndoscopyScene(99)
    f32 = VideoPipeline(INSTRUMENTS, backend="openvino", warmup=False)
    bf16 = VideoPipeline(INSTRUMENTS, backend="openvino", precision="bf16", warmup=False)
    for i in range(3):
        frame = scene.frame(i / 30.0)[0]
        assert (f32.process(frame)[1] == bf16.process(frame)[1]).mean() > 0.999


def test_overlay_equals_the_plain_blend(pipeline):
    from segrt.engine.video import PALETTE

    scene = EndoscopyScene(77)
    pipeline.contours = False
    try:
        for t in (0.0, 1.3):
            frame = scene.frame(t)[0]
            labels = pipeline.postprocess(pipeline.model.infer(pipeline.preprocess(frame)))
            assert labels.any()
            full = cv2.resize(labels, (640, 480), interpolation=cv2.INTER_NEAREST)
            colour = PALETTE[np.minimum(full, len(PALETTE) - 1)].astype(np.int32)
            a = round(pipeline.alpha * 256)
            ref = ((frame.astype(np.int32) * (256 - a) + colour * a + 128) >> 8).astype(np.uint8)
            np.copyto(ref, frame, where=(full == 0)[..., None])
            got = pipeline.overlay(frame, labels)
            np.testing.assert_array_equal(got, ref)
            # and OpenCV's float blend to within one level
            peer = cv2.addWeighted(frame, 1 - pipeline.alpha, colour.astype(np.uint8), pipeline.alpha, 0)
            np.copyto(peer, frame, where=(full == 0)[..., None])
            assert np.abs(got.astype(int) - peer).max() <= 1
        np.testing.assert_array_equal(pipeline.overlay(frame, np.zeros_like(labels)), frame)
    finally:
        pipeline.contours = True


class _JitteryModel(_SlowModel):
    """Slow on every third call, so that with two workers frames finish out of order; safe
    to call from several threads (sleep and fresh arrays only)."""

    def __init__(self, fast, slow):
        super().__init__(fast)
        self.slow, self.calls, self.lock = slow, 0, __import__("threading").Lock()

    def infer(self, batch):
        with self.lock:
            self.calls += 1
            delay = self.slow if self.calls % 3 == 0 else self.delay
        time.sleep(delay)
        return np.stack([np.zeros(batch.shape[2:], np.float32), batch[0, 0] - 128])[None]


def test_two_workers_write_every_frame_in_order(tmp_path, clip):
    seen = []
    out = tmp_path / "o.avi"
    pipe = VideoPipeline(_JitteryModel(0.005, 0.06), workers=2)
    stats = pipe.run(clip, out=str(out), on_frame=lambda i, overlay, labels: seen.append(i))
    assert seen == list(range(30)), seen  # finished out of order, written in order
    assert stats.frames_processed == 30 and stats.frames_dropped == 0
    assert int(cv2.VideoCapture(str(out)).get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert len(stats.stages["wait"]) == len(stats.end_to_end) == 30


def test_two_workers_in_real_time_never_go_back_in_time(clip):
    seen = []
    pipe = VideoPipeline(_JitteryModel(0.04, 0.09), workers=2)
    stats = pipe.run(clip, realtime=True, on_frame=lambda i, overlay, labels: seen.append(i))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert stats.frames_processed + stats.frames_dropped == stats.frames_read == 30
    assert stats.frames_dropped > 0  # 0.09 s calls at 30 fps: late or replaced frames


def test_workers_are_checked():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="workers must be an integer"):
            VideoPipeline(_SlowModel(0), workers=bad)


@pytest.mark.parametrize("backend", ["openvino", "ort"])
def test_a_model_file_with_two_workers_equals_one(backend, clip):
    pytest.importorskip("openvino" if backend == "openvino" else "onnxruntime")
    scene = EndoscopyScene(7)
    frames = [scene.frame(i / 30.0)[0] for i in range(6)]
    one = VideoPipeline(INSTRUMENTS, backend=backend, warmup=False)
    two = VideoPipeline(INSTRUMENTS, backend=backend, workers=2)
    assert two.workers == 2
    want = [one.process(f)[1] for f in frames]
    got = {}

    def run(worker):  # the two workers infer at once through the one model
        for k in range(worker, len(frames), 2):
            got[k] = two.process(frames[k], worker=worker)[1]

    import threading

    threads = [threading.Thread(target=run, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, labels in enumerate(want):
        np.testing.assert_array_equal(got[k], labels)


class _RecordingSource(_FailingSource):
    """Ends after ``frames_ok`` frames; notes when and in which thread each read happened."""

    def __init__(self, frames_ok):
        super().__init__(frames_ok, live=False)
        self.reads = []

    def read(self):
        import threading

        self.reads.append((time.perf_counter(), threading.current_thread().name))
        return super().read()


def test_every_worker_thread_is_warm_before_the_first_frame_is_read():
    import threading

    pipe = VideoPipeline(_JitteryModel(0.002, 0.004), workers=2)
    warmed, processed = [], []
    warm, process = pipe._warm_thread, pipe.process

    def warm_spy(worker):
        warm(worker)
        warmed.append((time.perf_counter(), threading.current_thread().name))

    def process_spy(frame, times=None, *, worker=0):
        processed.append(threading.current_thread().name)
        return process(frame, times, worker=worker)

    pipe._warm_thread, pipe.process = warm_spy, process_spy
    for _ in range(2):  # each run starts new threads: each is warmed again
        warmed.clear()
        processed.clear()
        src = _RecordingSource(8)
        stats = pipe.run(src, realtime=True)
        assert stats.frames_processed + stats.frames_dropped == 8
        assert len({name for _, name in warmed}) == 2  # both workers, each in its own thread
        assert max(t for t, _ in warmed) < src.reads[0][0]  # before capture read anything
        assert set(processed) <= {name for _, name in warmed}  # frames only go to warm threads


def test_a_worker_that_fails_to_warm_up_raises_in_the_caller():
    pipe = VideoPipeline(_SlowModel(0.0), workers=2)

    def broken(worker):
        if worker == 1:
            raise MemoryError("no room for the infer request")

    pipe._warm_thread = broken
    src = _RecordingSource(5)
    t0 = time.perf_counter()
    with pytest.raises(MemoryError, match="infer request"):
        pipe.run(src)
    assert time.perf_counter() - t0 < 5 and src.reads == []  # no hang, and capture never started


def test_opencv_runs_on_one_thread_during_a_run_and_is_restored():
    pipe = VideoPipeline(_SlowModel(0.0))
    seen = []
    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        pipe.run(_FailingSource(4, live=False), on_frame=lambda i, o, l: seen.append(cv2.getNumThreads()))
        assert seen == [1] * 4 and cv2.getNumThreads() == 3
        with pytest.raises(IOError):  # restored after a failed run too
            pipe.run(_FailingSource(2, live=False), on_frame=lambda i, o, l: (_ for _ in ()).throw(IOError("x")))
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_files_are_decoded_in_the_capture_thread_by_default(clip):
    def threads():  # thread ids (threads of earlier tests may still be ending: only new ones count)
        return set(os.listdir("/proc/self/task"))

    if not os.path.isdir("/proc/self/task"):
        pytest.skip("needs Linux's /proc to count threads")
    before = threads()
    one = open_source(clip)  # one decoding thread: the caller's, no FFmpeg thread of its own
    first = [one.read() for _ in range(5)]
    assert not threads() - before
    ffmpeg = open_source(clip, decode_threads=0)
    for frame in first:  # same pixels either way
        np.testing.assert_array_equal(ffmpeg.read(), frame)
    one.close()
    ffmpeg.close()
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="decode_threads"):
            open_source(clip, decode_threads=bad)


def test_grey_and_small_frames_get_overlays_of_their_own_size(pipeline):
    """A grey frame is coloured like its BGR copy; a frame smaller than the model's window
    (labels larger than the frame) is coloured where its own labels are."""
    from segrt.kernels.overlay import blend_labels

    frame = EndoscopyScene(3).frame(0.5)[0]
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    out, labels = pipeline.process(grey)
    assert out.shape == (480, 640, 3) and labels.any()
    no_text = pipeline.overlay(grey, labels)
    np.testing.assert_array_equal(no_text, pipeline.overlay(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), labels))
    small = cv2.resize(frame, (160, 120), interpolation=cv2.INTER_AREA)
    out, labels = pipeline.process(small)
    assert out.shape == (120, 160, 3) and labels.shape == pipeline.window and labels.any()
    pipeline.contours = False
    try:
        np.testing.assert_array_equal(pipeline.overlay(small, labels),
                                      blend_labels(small, labels, pipeline._palette, pipeline.alpha, device="reference"))
    finally:
        pipeline.contours = True


def test_cli_points_at_one_thread_only_for_an_inference_tail():
    from segrt.cli import _latency_tail_hint

    def summary(e2e, infer, n=300):
        return {"end_to_end": {"p50_ms": e2e[0], "p99_ms": e2e[1], "n": n},
                "stages": {"infer": {"p50_ms": infer[0], "p99_ms": infer[1], "n": n}}}

    tail = summary((12.0, 18.0), (9.0, 15.0))
    assert "--threads 1" in _latency_tail_hint(tail, None)
    assert "1.50 x p50" in _latency_tail_hint(tail, 2)
    assert _latency_tail_hint(tail, 1) is None  # already one thread
    assert _latency_tail_hint(summary((12.0, 18.0), (9.0, 15.0), n=60), None) is None  # too few frames
    assert _latency_tail_hint(summary((12.0, 14.5), (9.0, 11.5)), None) is None  # within 1.25
    assert _latency_tail_hint(summary((12.0, 18.0), (9.0, 10.0)), None) is None  # the tail is not inference's


@pytest.mark.cuda
def test_frames_on_the_device_equal_the_plain_composition(tmp_path):
    """device="cuda" (the simulator here): one upload per frame; network input, inference,
    argmax, remove_small and the colour blend in device memory; one download. Equal to the
    reference kernels composed by hand (OpenCV's resize on the host path rounds its own way)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from segrt.engine import load
    from segrt.engine import metadata as md
    from segrt.engine.model import ModelTaskError
    from segrt.engine.video.pipeline import VideoPipeline
    from segrt.kernels import overlay

    w = np.zeros((2, 3, 1, 1), np.float32)
    w[1, 0, 0, 0] = 1.0  # class 1 where the red plane is past half
    b = np.array([0.0, -0.5], np.float32)
    node = helper.make_node("Conv", ["image", "w", "b"], ["scores"])
    vi = helper.make_tensor_value_info
    graph = helper.make_graph([node], "red", [vi("image", TensorProto.FLOAT, ["n", 3, 12, 16])],
                              [vi("scores", TensorProto.FLOAT, ["n", 2, 12, 16])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    e = model.metadata_props.add()
    e.key, e.value = md.KEY, md.to_json({"task": "semantic", "window": [12, 16], "in_channels": 3,
                                         "normalization": {"kind": "none", "scale": 1 / 255}})
    onnx.save(model, str(tmp_path / "red.onnx"))
    host_model = load(str(tmp_path / "red.onnx"), backend="ort")

    class DeviceModel:  # a stand-in for a GPU backend (torch, trt)
        DEVICE_ARRAYS = True
        metadata, backend = host_model.metadata, "torch"

        def infer(self, batch):
            return host_model.infer(np.asarray(batch))

    pipe = VideoPipeline(DeviceModel(), contours=False, min_blob=0, warmup=False)
    assert pipe.device == "cuda"
    frame = np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    out, labels = pipe.process(frame)
    x = overlay.network_input(frame, (12, 16), np.float32(1 / 255), 0.0, 3, device="reference")
    want_labels = host_model.infer(x[None])[0].argmax(0).astype(np.uint8)
    np.testing.assert_array_equal(labels, want_labels)
    assert isinstance(out, np.ndarray) and isinstance(labels, np.ndarray)
    want = overlay.blend_labels(frame, want_labels, pipe._palette, pipe.alpha, device="reference")
    np.testing.assert_array_equal(out, want)
    with pytest.raises(ModelTaskError, match="device='cuda' keeps the data in GPU memory"):
        VideoPipeline(host_model, device="cuda", warmup=False)


def test_device_lane_times_stages_with_events_read_after_the_download():
    """A worker's lane (stand-in CuPy): stage times are the device times between its events,
    read once the download has synchronised its own stream."""
    import types

    from segrt.engine.video.pipeline import _DeviceLane

    clock = iter([0.0, 2.0, 7.0, 8.0, 11.0])
    log = []

    class Stream:
        ptr = 9

        def __init__(self, non_blocking):
            assert non_blocking  # never serialised with the legacy default stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            log.append("sync")

    class Event:
        def record(self, stream):
            self.t = next(clock)
            log.append("event")

    class Device(np.ndarray):
        def get(self, stream=None, out=None):
            log.append("copy")
            out[...] = self
            return out

    cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(
        Stream=Stream, Event=Event, get_elapsed_time=lambda a, b: 1000.0 * (b.t - a.t)))
    lane = _DeviceLane(cupy)
    lane._buffers[("down", (2, 2), np.dtype(np.uint8).str)] = np.zeros((2, 2), np.uint8)  # the pinned buffer
    with lane:
        for _ in range(4):
            lane.mark()
        got = lane.download(np.arange(4, dtype=np.uint8).reshape(2, 2).view(Device))
    assert lane.stage_seconds() == [2.0, 5.0, 1.0, 3.0]
    assert log[-3:] == ["copy", "event", "sync"] and type(got) is np.ndarray and got.tolist() == [[0, 1], [2, 3]]
