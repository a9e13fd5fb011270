"""Stage ``landmarks``: per-frame face landmarks, stored so that re-cropping never re-detects.

Backends
--------
``mediapipe`` (default)
    MediaPipe Face Mesh in video (tracking) mode, 468 landmarks per frame: the detector runs only
    when tracking is lost. Kartynnik et al., "Real-time Facial Surface Geometry from Monocular Video
    on Mobile GPUs", CVPR Workshops 2019.
``haar``
    OpenCV's frontal-face Haar cascade (Viola & Jones, CVPR 2001) on a half-size grey frame; the
    four corners of the largest box stand in for landmarks. A fallback only: on UBFC-rPPG it misses
    far more frames than the mesh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass

import numpy as np

from rppg_prep.errors import ConfigError
from rppg_prep.stage import ArraySpec, NodeContext, Stage, StreamCarry

__all__ = ["LandmarkParams", "STAGE", "make_detector", "MeshDetector", "HaarDetector", "N_LANDMARKS", "LandmarkTrack"]

log = logging.getLogger(__name__)

N_LANDMARKS = {"mediapipe": 468, "haar": 4, "full_frame": 4}


@dataclass(frozen=True, kw_only=True)
class LandmarkParams:
    """Landmark detection settings.

    Attributes
    ----------
    backend : {"mediapipe", "haar", "full_frame"}
        ``full_frame`` puts the four frame corners as landmarks on every frame: for frames that are
        already the region to use (the synthetic pseudo-PPG videos, face-cropped datasets).
    min_detection_confidence : float
        Face detector threshold in [0, 1].
    min_tracking_confidence : float
        Below this landmark-tracking confidence the mesh re-runs the detector, in [0, 1].
    every_n_frames : int
        Run the detector on every n-th frame only, and interpolate the landmarks of the frames in
        between linearly along the track; the frames around a lost face or a fast move are all
        measured (see :class:`LandmarkTrack`). 1 measures every frame. The default 2 was chosen by
        ``benchmarks/preprocess.py --every-n 1,2,3,4`` on the 8 shared UBFC-rPPG subjects: 1.37x
        the speed of decode + mesh, POS MAE equal to n = 1's, CHROM MAE lower, and the POS-label
        correlation 0.006 lower, half of what a 0.8 % change of the crop size moves it at n = 1.
        n = 3 is faster and also within that noise, but it doubled the POS MAE by flipping one
        subject's whole-video HR (README, Performance).
    max_motion_frac : float
        A move of the landmark box between two measured frames faster than this fraction of the
        box side per frame counts as fast: the frames in between are measured, not interpolated.
    """

    backend: str = "mediapipe"
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    every_n_frames: int = 2  # benchmarks/preprocess.py --every-n: n = 3 moved a whole-video POS HR
    max_motion_frac: float = 0.03

    def __post_init__(self) -> None:
        if self.backend not in N_LANDMARKS:
            raise ConfigError(f"landmarks.backend must be one of {sorted(N_LANDMARKS)}, got {self.backend!r}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"landmarks.{name} must lie in [0, 1], got {v}")
        if not 1 <= self.every_n_frames <= 30:
            raise ConfigError(f"landmarks.every_n_frames must lie in [1, 30], got {self.every_n_frames}")
        if not 0.0 < self.max_motion_frac <= 1.0:
            raise ConfigError(f"landmarks.max_motion_frac must lie in (0, 1], got {self.max_motion_frac}")


#: a NormalizedLandmark with x, y and z set and nothing else, serialized as protobuf does: the
#: field tag (0x0a) and length (15) of the list entry, then x, y, z as fixed32 fields (tags 0x0d,
#: 0x15, 0x1d). Face Mesh writes its 468 landmarks this way.
_WIRE_RECORD = 17
_WIRE_TAGS = ((0, 0x0A), (1, 0x0F), (2, 0x0D), (7, 0x15), (12, 0x1D))


def _xy_from_wire(data: bytes, n: int) -> np.ndarray | None:
    """(n, 2) float32 normalised x, y of a serialized NormalizedLandmarkList, or None if not laid out as expected."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != _WIRE_RECORD * n:
        return None
    rec = raw.reshape(n, _WIRE_RECORD)
    if not all(bool(np.all(rec[:, col] == tag)) for col, tag in _WIRE_TAGS):
        return None
    xy_bytes = np.ascontiguousarray(rec[:, np.r_[3:7, 8:12]])  # x's 4 bytes, then y's
    return xy_bytes.view("<f4").astype(np.float32, copy=False)


# MediaPipe's C++ side (TFLite, absl, glog) writes its start-up chatter straight to fd 2, which no
# environment variable silences in the pinned 0.10.14: "Created TensorFlow Lite XNNPACK delegate",
# absl's "before absl::InitializeLog()" warning and two inference_feedback_manager warnings per mesh.
_NATIVE_LOG = re.compile(r"(?:(?:INFO|WARNING|ERROR): |[IWEF]\d{4} \d+:\d+:\d+\.\d+ +\d+ [^ \]]+:\d+\] )")
_NATIVE_ERROR = re.compile(r"^(?:ERROR: |[EF]\d{4} )")
_native_lock = threading.Lock()
_native_state: dict = {"depth": 0, "saved": None, "file": None}


def _native_logs_verbose() -> bool:
    """Pass MediaPipe's native log lines through: ``rppg-prep -v`` (or ``RPPG_PREP_NATIVE_LOGS=1``)."""
    return os.environ.get("RPPG_PREP_NATIVE_LOGS") == "1" or logging.getLogger("rppg_prep").isEnabledFor(logging.INFO)


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def quiet_native_stderr():
    """Capture fd 2 while MediaPipe's native code runs (the mesh's creation, first frame and close).

    fd 2 is process-wide: a module-level lock and depth count let overlapping calls from the
    build's threads share one redirect, restored when the last one leaves. Afterwards the captured
    native log lines (absl / TFLite / glog) go to this module's logger (errors at warning level,
    the rest at debug level) and everything else captured meanwhile (a progress-bar refresh, a
    traceback) is written back to the real stderr unchanged. With ``-v`` nothing is redirected.
    """
    if _native_logs_verbose():
        yield
        return
    with _native_lock:
        if _native_state["depth"] == 0:
            try:
                tmp = tempfile.TemporaryFile()
                _flush_std()
                saved = os.dup(2)
                os.dup2(tmp.fileno(), 2)
            except OSError:  # no fd 2, or no temp space: leave stderr as it is
                yield
                return
            _native_state.update(saved=saved, file=tmp)
        _native_state["depth"] += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_state["depth"] -= 1
            if _native_state["depth"] == 0:
                _flush_std()
                saved, tmp = _native_state["saved"], _native_state["file"]
                os.dup2(saved, 2)
                os.close(saved)
                _native_state.update(saved=None, file=None)
                tmp.seek(0)
                captured = tmp.read().decode("utf-8", "replace")
                tmp.close()
                _reemit(captured)


def _reemit(captured: str) -> None:
    rest = []
    for line in captured.splitlines(keepends=True):
        m = _NATIVE_LOG.search(line)  # a progress refresh may precede it on the same line
        if m:
            rest.append(line[:m.start()])
            native = line[m.start():]
            log.log(logging.WARNING if _NATIVE_ERROR.match(native) else logging.DEBUG, "mediapipe: %s", native.rstrip())
        else:
            rest.append(line)
    if rest:
        with contextlib.suppress(OSError):
            os.write(2, "".join(rest).encode("utf-8", "replace"))


class MeshDetector:
    """MediaPipe Face Mesh in tracking mode for one video (it carries state between frames).

    Frames go to the solution's graph directly rather than through ``FaceMesh.process``, which
    builds a new namedtuple class on every call and turns every output stream into Python
    protobuf objects; the landmarks are read from the serialized output with numpy instead of
    through 468 protobuf objects. Both together took about a quarter of the time the build's
    threads held the GIL (py-spy, 3 subjects). The packet, its timestamp and the stream read are
    those of ``SolutionBase.process`` in the pinned mediapipe 0.10.14, so the landmarks are
    identical (tested); if the solution's internals are not what this expects, ``process`` is
    used, and a landmark list not laid out as :func:`_xy_from_wire` expects is parsed by protobuf.
    """

    def __init__(self, params: LandmarkParams):
        self._first = True
        with quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe as mp
            from mediapipe.framework.formats import landmark_pb2

            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                min_detection_confidence=params.min_detection_confidence,
                min_tracking_confidence=params.min_tracking_confidence)
            with contextlib.suppress(Exception):  # let the calculators open (and log) inside the redirect
                self._mesh._graph.wait_until_idle()
        self._parse = landmark_pb2.NormalizedLandmarkList.FromString
        try:
            from mediapipe.python._framework_bindings import _packet_getter

            self._serialized = _packet_getter._get_serialized_proto_list
        except (ImportError, AttributeError):
            self._serialized = None
        inputs = getattr(self._mesh, "_input_stream_type_info", None) or {}
        direct = (self._serialized is not None and len(inputs) == 1
                  and isinstance(getattr(self._mesh, "_graph_outputs", None), dict)
                  and isinstance(getattr(self._mesh, "_simulated_timestamp", None), int)
                  and "multi_face_landmarks" in (getattr(self._mesh, "_output_stream_type_info", None) or {}))
        self._input = next(iter(inputs.items())) if direct else None
        self.n_landmarks = 468

    def _first_face_xy(self, rgb: np.ndarray) -> np.ndarray | None:
        """(468, 2) float32 normalised landmarks of the first face, or None."""
        if self._input is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                faces = self._mesh.process(rgb).multi_face_landmarks
            if not faces:
                return None
            face = faces[0]
        else:
            mesh, (stream, kind) = self._mesh, self._input
            mesh._graph_outputs.clear()
            mesh._simulated_timestamp += 33333  # SolutionBase.process's simulated 30-fps clock, in us
            mesh._graph.add_packet_to_input_stream(
                stream=stream, packet=mesh._make_packet(kind, rgb).at(mesh._simulated_timestamp))
            mesh._graph.wait_until_idle()
            out = mesh._graph_outputs.get("multi_face_landmarks")
            faces = None if out is None or out.is_empty() else self._serialized(out)
            if not faces:
                return None
            xy = _xy_from_wire(faces[0], self.n_landmarks)
            if xy is not None:
                return xy
            face = self._parse(faces[0])
        return np.array([(p.x, p.y) for p in face.landmark], dtype=np.float32)

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """Landmarks of one RGB uint8 frame (H, W, 3) as float32 (468, 2) pixels, or None.

        Raises
        ------
        ValueError
            The frame is not of shape (H, W, 3).
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"the mesh takes RGB frames of shape (H, W, 3), got {rgb.shape}")
        if self._first:  # the graph's calculators may still be logging their start-up
            self._first = False
            with quiet_native_stderr():
                pts = self._first_face_xy(rgb)
        else:
            pts = self._first_face_xy(rgb)
        if pts is None:
            return None
        h, w = rgb.shape[:2]
        pts *= np.array([w, h], dtype=np.float32)
        return pts

    def close(self) -> None:
        with quiet_native_stderr():
            self._mesh.close()


class HaarDetector:
    """OpenCV Haar cascade on a half-size grey frame; returns the largest box's corners."""

    def __init__(self, params: LandmarkParams):
        import cv2

        path = cv2.data.haarcascades + "haarcascade_frontalface_default.xml"
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise ConfigError(f"OpenCV's Haar cascade could not be loaded from {path}")
        self.n_landmarks = 4

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        import cv2

        grey = cv2.cvtColor(cv2.resize(rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
        faces = self._cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
        if len(faces) == 0:
            return None
        x, y, w, h = (2.0 * v for v in max(faces, key=lambda f: f[2] * f[3]))
        return np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], dtype=np.float32)

    def close(self) -> None:
        pass


class FullFrameDetector:
    """The frame's corners (0, 0), (W, 0), (W, H), (0, H) on every frame: the whole frame is the ROI."""

    n_landmarks = 4

    def __init__(self, params: LandmarkParams):
        pass

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        return np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)

    def close(self) -> None:
        pass


def make_detector(params: LandmarkParams) -> MeshDetector | HaarDetector | FullFrameDetector:
    """A fresh detector for one video (tracking state must not leak between videos)."""
    kinds = {"mediapipe": MeshDetector, "haar": HaarDetector, "full_frame": FullFrameDetector}
    return kinds[params.backend](params)


class LandmarkTrack:
    """Consumer of the streaming pass: landmarks of every frame, measured or interpolated (and written),
    or read back.

    With ``every_n_frames`` = n > 1 the detector measures one frame in n; the frames in between wait
    (at most n - 1 of them) and get the landmarks interpolated linearly between the two measured
    frames around them. When the later measurement finds no face, or the landmark box moved faster
    than ``max_motion_frac`` of its side per frame, the waiting frames are measured one by one
    instead, and so are the next n frames. After a lost face every frame is measured until one is
    found. The stored ``detected`` is True only for frames measured with a face found; the stored
    landmarks are finite for measured and interpolated frames alike.

    Parameters
    ----------
    ctx : NodeContext
        With a ``writer``, the landmarks are computed and the node is written; without (a fresh
        node that a later stage needs), ``inputs["landmarks"]`` is read batch by batch.
    carry : StreamCarry
        Shared by the consumers of one pass. Rows are handed on in frame order through
        ``carry.landmark_rows``, a deque of (landmarks (k, K, 2) float32 px, detected (k,) bool):
        they may lag the frames by up to n - 1 frames; :meth:`finish` hands on the rest.
    """

    def __init__(self, ctx: NodeContext, carry: StreamCarry):
        self.ctx, lp = ctx, ctx.params
        self.n_lm = N_LANDMARKS[lp.backend]
        self.n = lp.every_n_frames
        self.detector = None
        self.rows = carry.landmark_rows
        self.pending: list[tuple[int, np.ndarray]] = []  # frames waiting for the next measurement
        self.last: tuple[int, np.ndarray] | None = None  # the last measured frame with a face
        self.dense = 0  # frames still to measure one by one
        self.measured = 0
        if ctx.writer is not None:
            ctx.writer.attrs.update(n_landmarks=self.n_lm, backend=lp.backend)
            ctx.create("landmarks", (0, self.n_lm, 2), (256, self.n_lm, 2), fill_value=float("nan"))
            ctx.create("detected", (0,), (4096,), fill_value=False)
            self.apps = (ctx.appender("landmarks", 256), ctx.appender("detected", 4096))
            self.detector = make_detector(lp)

    def _emit(self, lm: np.ndarray, det: np.ndarray) -> None:
        self.apps[0].add(lm)
        self.apps[1].add(det)
        self.rows.append((lm, det))

    def _measure(self, index: int, frame: np.ndarray) -> np.ndarray | None:
        pts = self.detector(frame)
        self.measured += 1
        self.last = (index, pts) if pts is not None else None
        return pts

    def _one(self, index: int, frame: np.ndarray) -> None:
        pts = self._measure(index, frame)
        lm = np.full((1, self.n_lm, 2), np.nan, dtype=np.float32)
        if pts is not None:
            lm[0] = pts
        self._emit(lm, np.array([pts is not None]))

    def _fast(self, a: np.ndarray, b: np.ndarray, frames: int) -> bool:
        lo_a, hi_a, lo_b, hi_b = a.min(0), a.max(0), b.min(0), b.max(0)
        side = float(max((hi_a - lo_a).max(), 1.0))
        shift = float(np.abs((lo_b + hi_b) / 2 - (lo_a + hi_a) / 2).max())
        grow = float(np.abs((hi_b - lo_b) - (hi_a - lo_a)).max())
        return max(shift, grow) / frames > self.ctx.params.max_motion_frac * side

    def _resolve(self) -> None:
        """Measure the last waiting frame and fill the ones before it."""
        start = self.last
        (i_end, f_end), waiting = self.pending[-1], self.pending[:-1]
        self.pending = []
        pts = self._measure(i_end, f_end)
        if pts is None or start is None or self._fast(start[1], pts, i_end - start[0]):
            for i, frame in waiting:  # a lost face or a fast move: measure instead of interpolating
                self._one(i, frame)
            self._one(i_end, f_end)
            self.dense = self.n
            return
        i0, lm0 = start
        w = (np.array([i for i, _ in waiting], dtype=np.float64) - i0) / (i_end - i0)
        lm = np.empty((len(waiting) + 1, self.n_lm, 2), dtype=np.float32)
        lm[:-1] = (lm0[None] + w[:, None, None] * (pts - lm0)[None]).astype(np.float32)
        lm[-1] = pts
        det = np.zeros(len(waiting) + 1, dtype=bool)
        det[-1] = True
        self._emit(lm, det)

    def push(self, batch, carry: StreamCarry) -> None:
        """Take a batch (``batch.frames`` (B, H, W, 3) uint8 RGB); hand on the rows that are ready."""
        b = len(batch.frames)
        if self.detector is None:
            stored = self.ctx.inputs["landmarks"]
            sl = slice(batch.start, batch.start + b)
            self.rows.append((stored["landmarks"][sl], stored["detected"][sl]))
            return
        for j, frame in enumerate(batch.frames):
            index = batch.start + j
            if self.n == 1 or self.dense > 0 or self.last is None:
                self.dense = max(0, self.dense - 1)
                self._one(index, frame)
                continue
            self.pending.append((index, frame))
            if index - self.last[0] >= self.n:
                self._resolve()

    def finish(self, carry: StreamCarry) -> None:
        """Measure the last waiting frame, hand on the last rows, release the detector, write the node."""
        if self.detector is not None:
            if self.pending:
                self._resolve()
            self.detector.close()
            self.detector = None
            for app in self.apps:
                app.close()
            self.ctx.writer.attrs["measured_frames"] = self.measured

    def abort(self) -> None:
        """Release the detector."""
        if self.detector is not None:
            self.detector.close()
            self.detector = None


STAGE = Stage(
    name="landmarks",
    version="1",
    params=LandmarkParams,
    inputs=("decode",),
    outputs=(
        ArraySpec("landmarks", "float32", ("frame", "landmark", "xy"), "px",
                  "landmark positions in the source frame, NaN where no face was found"),
        ArraySpec("detected", "bool", ("frame",), "", "a face was found in this frame"),
    ),
    fn=LandmarkTrack,  # the kernel of a streaming stage: its consumer, made as LandmarkTrack(ctx, carry)
    streams=True,
)
