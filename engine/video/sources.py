"""Video sources: files and streams through OpenCV (FFmpeg), multi-frame DICOM cines through
pydicom, each with ``read() -> (ok, frame)``, ``close()``, ``fps``, ``live`` and ``name``."""
from __future__ import annotations

import os

import numpy as np

from segrt._optional import optional_import
from segrt.engine import io

__all__ = ["SourceError", "open_source", "opencv"]


class SourceError(OSError):
    """A video source that cannot be opened (the message names it and says what to check)."""


def opencv():
    return optional_import("cv2", purpose="video capture and overlays")


# -- sources -------------------------------------------------------------------------------

class _OpenCVSource:
    def __init__(self, spec, decode_threads=1, timeout=10.0):
        cv2 = opencv()
        self.name = str(spec)
        self.live = isinstance(spec, int) or "://" in str(spec)
        if not self.live and not os.path.isfile(str(spec)):
            raise SourceError(f"{spec}: no such video file (a camera is an integer index, a stream a URL)")
        try:  # OpenCV's own warnings on a failed open repeat what SourceError says
            cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        except AttributeError:
            pass
        self.cap = None
        params = []
        if not isinstance(spec, int) and decode_threads and hasattr(cv2, "CAP_PROP_N_THREADS"):
            # FFmpeg decodes with frame threads by default: they hold frames back and, on a
            # machine whose cores are busy inferring, a starved one stalls a read (p99 of a
            # 640 x 480 MJPG read with two workers inferring: 4-14 ms, against 1.2-1.6 ms here)
            params += [cv2.CAP_PROP_N_THREADS, int(decode_threads)]
        url = isinstance(spec, str) and "://" in spec
        if url and hasattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
            # a server that accepts and never answers must not hold the run (FFmpeg's own wait is 30 s)
            params += [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(timeout * 1000),
                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(timeout * 1000)]
        if params:
            self.cap = cv2.VideoCapture(spec, cv2.CAP_FFMPEG, params)
        if (self.cap is None or not self.cap.isOpened()) and not url:
            # files and cameras: another backend may open what FFmpeg did not; a URL is tried
            # once, so its timeout is the whole wait
            self.cap = cv2.VideoCapture(spec)
        if self.cap is None:
            self.cap = cv2.VideoCapture()
        if not self.cap.isOpened():
            what = "camera" if isinstance(spec, int) else "stream" if self.live else "video file"
            raise SourceError(f"{spec}: cannot open this {what}" + (
                "; check the index and that no other program holds it" if isinstance(spec, int) else
                f"; check the URL and the network (no answer within {timeout:g} s, or not a video stream)" if self.live
                else
                "; the file is not a video OpenCV can decode (or it is damaged)"))
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and np.isfinite(fps) and 0 < fps < 1000 else 30.0
        frames = self.cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frames = int(frames) if frames and frames > 0 and not self.live else None

    def read(self):
        ok, frame = self.cap.read()
        return frame if ok and frame is not None else None

    def close(self):
        self.cap.release()


class _DicomCineSource:
    """Frames of a multi-frame DICOM (an ultrasound or angiography cine), as BGR uint8."""

    def __init__(self, path):
        pydicom = optional_import("pydicom", purpose="reading DICOM cines")
        self.name, self.live = path, False
        try:
            self.ds = pydicom.dcmread(path)
        except Exception as err:
            raise SourceError(f"{path}: not a readable DICOM file ({type(err).__name__}: {err})") from None
        if "PixelData" not in self.ds:
            raise SourceError(f"{path}: DICOM file without pixel data")
        self.frames = int(getattr(self.ds, "NumberOfFrames", 1) or 1)
        frame_time = float(getattr(self.ds, "FrameTime", 0) or 0)
        rate = float(getattr(self.ds, "CineRate", 0) or getattr(self.ds, "RecommendedDisplayFrameRate", 0) or 0)
        self.fps = rate if rate > 0 else (1000.0 / frame_time if frame_time > 0 else 30.0)
        self.index = 0
        self._encapsulated = None
        if self.ds.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"):
            from pydicom.encaps import generate_frames  # baseline / extended JPEG: OpenCV decodes it fast

            self._encapsulated = generate_frames(self.ds.PixelData, number_of_frames=self.frames)
        self._all = None

    def read(self):
        if self.index >= self.frames:
            return None
        cv2 = opencv()
        i = self.index
        self.index += 1
        try:
            if self._encapsulated is not None:
                data = next(self._encapsulated)
                frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                if frame is None:
                    raise ValueError("OpenCV could not decode the JPEG frame")
                return frame
            if self._all is None:
                self._all = self.ds.pixel_array if self.frames > 1 else self.ds.pixel_array[None]
            frame = self._all[i]
        except Exception as err:  # a truncated or damaged frame ends the stream
            raise SourceError(f"{self.name}: frame {i} cannot be decoded ({type(err).__name__}: {err})") from None
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=2)
        if frame.dtype != np.uint8:
            lo, hi = float(frame.min()), float(frame.max())
            frame = ((frame - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)
        return np.ascontiguousarray(frame[..., ::-1])

    def close(self):
        pass


def open_source(spec, *, decode_threads: int = 1, timeout: float = 10.0):
    """A camera index (int or digits), a URL, a video file or a multi-frame DICOM.

    ``decode_threads``: FFmpeg's decoding threads for files and streams. 1 (the default)
    decodes each frame in the capture thread as it is read, the lowest and steadiest latency;
    0 lets FFmpeg choose (frame threads: more throughput for large H.264 / HEVC frames, each
    frame held back while the next ones decode).
    ``timeout``: seconds a stream (rtsp:// or http:// URL) may take to open and to deliver a
    frame; it is tried once, so this is the longest a silent server holds the caller."""
    if isinstance(decode_threads, bool) or not isinstance(decode_threads, int) or decode_threads < 0:
        raise ValueError(f"decode_threads must be an integer >= 0 (0: FFmpeg chooses), got {decode_threads!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 3600:
        raise ValueError(f"timeout must be a number of seconds in (0, 3600), got {timeout!r}")
    if isinstance(spec, str) and spec.isdigit():
        spec = int(spec)
    if isinstance(spec, str) and os.path.isfile(spec) and (spec.lower().endswith(".dcm") or io._looks_like_dicom(spec)):
        return _DicomCineSource(spec)
    return _OpenCVSource(spec, decode_threads, float(timeout))
