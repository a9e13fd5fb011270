"""Stage ``decode``: stream RGB frames and their timestamps from a video file with OpenCV.

Frames come in bounded batches and are never held whole (a 2-min 640x480 video is ~3.3 GB raw).
Per-frame timestamps are the container's presentation times (``CAP_PROP_POS_MSEC``); when the
container gives none, or they do not increase, ``i / fps`` is used instead and the node says so.
FFmpeg's own decoder threads are turned off (``CAP_PROP_N_THREADS=1``): on small machines one
thread per worker process is faster than threads fighting inside one process.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rppg_prep.errors import VideoDecodeError
from rppg_prep.stage import ArraySpec, Stage

__all__ = ["DecodeParams", "STAGE", "VideoInfo", "FrameBatch", "probe", "iter_frames", "read_timestamps"]

#: a container that promises more frames than this fraction decodes is reported as truncated
MIN_DECODED_FRACTION = 0.98
#: batches decoded ahead of the consumer
PREFETCH_BATCHES = 3


@dataclass(frozen=True, kw_only=True)
class DecodeParams:
    """Decode settings that change the output (none yet: frames are always RGB uint8)."""


STAGE = Stage(
    name="decode",
    version="1",
    params=DecodeParams,
    inputs=(),
    outputs=(ArraySpec("t_s", "float64", ("frame",), "s", "presentation time of each frame"),),
)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video.

    Attributes
    ----------
    n_frames : int
        Frame count declared by the container (may be an estimate).
    fps : float
        Nominal frame rate, frames per second.
    width, height : int
        Frame size in pixels.
    """

    n_frames: int
    fps: float
    width: int
    height: int


@dataclass(frozen=True)
class FrameBatch:
    """A run of consecutive decoded frames.

    Attributes
    ----------
    start : int
        Index of the first frame of the batch in the video.
    frames : ndarray of uint8, shape (B, H, W, 3), RGB
    t_s : ndarray of float64, shape (B,)
        Presentation times in seconds.
    """

    start: int
    frames: np.ndarray
    t_s: np.ndarray


def _open(path: Path, subject: str | None) -> tuple[cv2.VideoCapture, VideoInfo]:
    if not path.exists():
        raise VideoDecodeError("video file is missing", subject=subject, path=path)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    if not cap.isOpened():
        raise VideoDecodeError("OpenCV/FFmpeg cannot open this video (corrupt or unsupported codec)",
                               subject=subject, path=path)
    info = VideoInfo(
        n_frames=int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0),
        fps=float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
        width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
        height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
    )
    if not (np.isfinite(info.fps) and 1.0 <= info.fps <= 1000.0):
        cap.release()
        raise VideoDecodeError(f"container reports no usable frame rate ({info.fps!r} fps)", subject=subject,
                               path=path)
    return cap, info


def probe(path: str | Path, *, subject: str | None = None) -> VideoInfo:
    """Read the container's frame count, fps and size without decoding.

    Raises
    ------
    VideoDecodeError
        If the file is missing, cannot be opened, or has no usable frame rate.
    """
    cap, info = _open(Path(path), subject)
    cap.release()
    return info


def _reader(cap: cv2.VideoCapture, info: VideoInfo, batch_frames: int) -> Iterator[FrameBatch]:
    index = 0
    last_t = -np.inf
    while True:
        frames = []
        times = []
        for _ in range(batch_frames):
            ok, bgr = cap.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not np.isfinite(t) or t <= last_t:
                t = np.nan  # repaired below from the frame index
            else:
                last_t = t
            times.append(t)
        if not frames:
            return
        t_s = np.asarray(times, dtype=np.float64)
        yield FrameBatch(index, np.stack(frames), t_s)
        index += len(frames)


def iter_frames(path: str | Path, *, batch_frames: int = 64, subject: str | None = None,
                prefetch: bool = True) -> Iterator[FrameBatch]:
    """Decode a video into batches of RGB frames with timestamps.

    Frames are decoded one batch ahead on a helper thread (OpenCV releases the GIL), so decoding
    overlaps with whatever the caller does with the previous batch. Memory is bounded by two batches.

    Parameters
    ----------
    path : str or Path
        Video file readable by OpenCV's FFmpeg backend.
    batch_frames : int
        Frames per batch.
    subject : str, optional
        Named in error messages.
    prefetch : bool
        Decode on a helper thread.

    Yields
    ------
    FrameBatch
        ``t_s`` may hold NaN where the container gave no increasing time; :func:`repair_times`
        fills those from the frame rate.

    Raises
    ------
    VideoDecodeError
        Missing, unopenable, zero-frame or truncated video (fewer frames decoded than the container
        declares).
    """
    path = Path(path)
    cap, info = _open(path, subject)
    gen = _reader(cap, info, batch_frames)
    n = 0
    try:
        for batch in (_prefetch(gen, PREFETCH_BATCHES) if prefetch else gen):
            n += len(batch.frames)
            yield batch
    finally:
        cap.release()
    if n == 0:
        raise VideoDecodeError("the video has no decodable frames", subject=subject, path=path)
    if info.n_frames > 0 and n < MIN_DECODED_FRACTION * info.n_frames - 1:
        raise VideoDecodeError(
            f"video is truncated: the container declares {info.n_frames} frames but only {n} decode",
            subject=subject, path=path)


def _prefetch(gen: Iterator[FrameBatch], depth: int = 1) -> Iterator[FrameBatch]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def run() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # re-raised in the consumer
            q.put(exc)

    th = threading.Thread(target=run, name="decode-prefetch", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join(timeout=5)


def repair_times(t_s: np.ndarray, fps: float) -> tuple[np.ndarray, int]:
    """Fill missing (NaN) frame times from the frame rate.

    Parameters
    ----------
    t_s : ndarray of float64, shape (T,)
        Container times, NaN where unusable.
    fps : float
        Nominal frame rate, frames per second.

    Returns
    -------
    t_fixed : ndarray of float64, shape (T,)
        ``i / fps`` for every frame when fewer than half the times are usable, otherwise the NaNs
        are interpolated (extrapolated at the ends with ``1 / fps`` steps).
    n_filled : int

    Examples
    --------
    >>> repair_times(np.array([0.0, np.nan, 0.2]), 10.0)[0].tolist()
    [0.0, 0.1, 0.2]
    """
    t = np.asarray(t_s, dtype=np.float64).copy()
    bad = ~np.isfinite(t)
    if not bad.any():
        return t, 0
    idx = np.arange(t.size)
    if bad.sum() > t.size / 2:
        return idx / fps, int(t.size)
    good = np.flatnonzero(~bad)
    filled = np.interp(idx, good, t[good])
    lead = idx < good[0]
    trail = idx > good[-1]
    filled[lead] = t[good[0]] - (good[0] - idx[lead]) / fps
    filled[trail] = t[good[-1]] + (idx[trail] - good[-1]) / fps
    return filled, int(bad.sum())


def read_timestamps(path: str | Path, *, subject: str | None = None) -> np.ndarray:
    """Decode a whole video only for its frame times (float64, shape (T,), seconds).

    Raises
    ------
    VideoDecodeError
        As :func:`iter_frames`.
    """
    info = probe(path, subject=subject)
    parts = [b.t_s for b in iter_frames(path, subject=subject, prefetch=False)]
    return repair_times(np.concatenate(parts), info.fps)[0]
