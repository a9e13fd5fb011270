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

import logging
import warnings
from dataclasses import dataclass

import numpy as np

from rppg_prep.errors import ConfigError
from rppg_prep.stage import ArraySpec, NodeContext, Stage

__all__ = ["LandmarkParams", "STAGE", "make_detector", "MeshDetector", "HaarDetector", "N_LANDMARKS", "LandmarkTrack", "consume"]

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
    """

    backend: str = "mediapipe"
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.backend not in N_LANDMARKS:
            raise ConfigError(f"landmarks.backend must be one of {sorted(N_LANDMARKS)}, got {self.backend!r}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"landmarks.{name} must lie in [0, 1], got {v}")


class MeshDetector:
    """MediaPipe Face Mesh in tracking mode for one video (it carries state between frames)."""

    def __init__(self, params: LandmarkParams):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=False,
                min_detection_confidence=params.min_detection_confidence,
                min_tracking_confidence=params.min_tracking_confidence)
        self.n_landmarks = 468

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """Landmarks of one RGB uint8 frame (H, W, 3) as float32 (468, 2) pixels, or None."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = self._mesh.process(rgb)
        if not res.multi_face_landmarks:
            return None
        h, w = rgb.shape[:2]
        pts = np.array([(p.x, p.y) for p in res.multi_face_landmarks[0].landmark], dtype=np.float32)
        pts *= np.array([w, h], dtype=np.float32)
        return pts

    def close(self) -> None:
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
    """Consumer of the streaming pass: landmarks of every frame, detected (and written) or read back.

    Parameters
    ----------
    ctx : NodeContext
        With a ``writer``, the detector runs on every frame and the node is written; without
        (a fresh node that a later stage needs), ``inputs["landmarks"]`` is read batch by batch.
    carry : dict
        Shared by the consumers of one pass; each :meth:`push` leaves the batch's
        ``landmarks`` (B, K, 2) float32 px (NaN = no face) and ``detected`` (B,) bool in it.
    """

    def __init__(self, ctx: NodeContext, carry: dict):
        from rppg_prep.store import Appender

        self.ctx, lp = ctx, ctx.params
        self.n_lm = N_LANDMARKS[lp.backend]
        self.detector = None
        if ctx.writer is not None:
            ctx.writer.attrs.update(n_landmarks=self.n_lm, backend=lp.backend)
            ctx.create("landmarks", (0, self.n_lm, 2), (256, self.n_lm, 2), fill_value=float("nan"))
            ctx.create("detected", (0,), (4096,), fill_value=False)
            self.apps = (Appender(ctx.writer, "landmarks", 256), Appender(ctx.writer, "detected", 4096))
            self.detector = make_detector(lp)

    def push(self, batch, carry: dict) -> None:
        """Landmarks of the batch's frames (``batch.frames`` (B, H, W, 3) uint8 RGB) into ``carry``."""
        b = len(batch.frames)
        if self.detector is not None:
            lm = np.full((b, self.n_lm, 2), np.nan, dtype=np.float32)
            det = np.zeros(b, dtype=bool)
            for i, fr in enumerate(batch.frames):
                pts = self.detector(fr)
                if pts is not None:
                    lm[i], det[i] = pts, True
            self.apps[0].add(lm)
            self.apps[1].add(det)
        else:
            stored = self.ctx.inputs["landmarks"]
            sl = slice(batch.start, batch.start + b)
            lm, det = stored["landmarks"][sl], stored["detected"][sl]
        carry["landmarks"], carry["detected"] = lm, det

    def finish(self, carry: dict) -> None:
        """Release the detector and write the last rows."""
        if self.detector is not None:
            self.detector.close()
            self.detector = None
            for app in self.apps:
                app.close()

    def abort(self) -> None:
        """Release the detector."""
        if self.detector is not None:
            self.detector.close()
            self.detector = None


def consume(ctx: NodeContext, carry: dict) -> LandmarkTrack:
    """Kernel of the stage: a :class:`LandmarkTrack` consumer of the streaming pass.

    Parameters
    ----------
    ctx : NodeContext
    carry : dict
        Shared by the consumers of one pass.

    Returns
    -------
    LandmarkTrack
    """
    return LandmarkTrack(ctx, carry)


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
    fn=consume,
    streams=True,
)
