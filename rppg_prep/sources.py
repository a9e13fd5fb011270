"""Frame sources: RGB frames and their timestamps from a video, an image sequence or an array.

Frames come in bounded batches and are never held whole (a 2-min 640x480 video is ~3.3 GB raw).
Per-frame timestamps are the container's presentation times (``CAP_PROP_POS_MSEC``); when the
container gives none, or they do not increase, ``i / fps`` is used instead (:func:`repair_times`).
FFmpeg's own decoder threads are turned off (``CAP_PROP_N_THREADS=1``): on small machines one
thread per worker process is faster than threads fighting inside one process.

Datasets store frames in three ways, each a :class:`FrameSource`: a video file (:class:`VideoSource`),
one image per frame (:class:`ImageSequenceSource`: PURE PNGs, iBVP BMPs, MMSE-HR JPEGs) and an array
inside a container (:class:`ArraySource`: SCAMPS and MMPD ``.mat``), read slice by slice. This module
sits below the dataset loaders and the stages: a loader that does not store a plain video returns
one of these from ``open_frames(subject)``, and the ``decode`` stage reads whichever it gets
(:func:`rppg_prep.datasets.open_source`).
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

__all__ = ["VideoInfo", "FrameBatch", "probe", "iter_frames", "read_timestamps", "repair_times",
           "FrameSource", "VideoSource", "ImageSequenceSource", "ArraySource"]

#: a container that promises more frames than this fraction decodes is reported as truncated
MIN_DECODED_FRACTION = 0.98
#: batches decoded ahead of the consumer (each frame held here is 0.9 MB at 640x480: see build.BATCH_FRAMES)
PREFETCH_BATCHES = 2


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
    bgr = None
    while True:
        # a fresh batch array each time (consumers keep frames), filled in place: each decoded
        # frame is copied once, by the colour conversion
        batch = np.empty((batch_frames, info.height, info.width, 3), dtype=np.uint8)
        times = []
        for i in range(batch_frames):
            ok, bgr = cap.read(bgr)
            if not ok:
                break
            if bgr.shape[:2] != batch.shape[1:3]:  # the container's size was wrong: take the frames' own
                batch = np.empty((batch_frames, *bgr.shape[:2], 3), dtype=np.uint8) if i == 0 else batch
                if bgr.shape[:2] != batch.shape[1:3]:
                    raise VideoDecodeError(f"frame {index + i} is {bgr.shape[1]}x{bgr.shape[0]}, the video's earlier "
                                           f"frames {batch.shape[2]}x{batch.shape[1]}")
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB, dst=batch[i])
            t = cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if not np.isfinite(t) or t <= last_t:
                t = np.nan  # repaired below from the frame index
            else:
                last_t = t
            times.append(t)
        if not times:
            return
        t_s = np.asarray(times, dtype=np.float64)
        yield FrameBatch(index, batch[:len(times)], t_s)
        index += len(times)


def iter_frames(path: str | Path, *, batch_frames: int = 64, subject: str | None = None,
                prefetch: bool = True) -> Iterator[FrameBatch]:
    """Decode a video into batches of RGB frames with timestamps.

    Frames are decoded up to ``PREFETCH_BATCHES`` (2) batches ahead on a helper thread (OpenCV releases
    the GIL), so decoding overlaps with whatever the caller does with the previous batch. Memory is
    bounded by ``PREFETCH_BATCHES`` + 2 batches.

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


class FrameSource:
    """Frames of one subject, streamed in batches; the interface the video pass reads.

    Attributes
    ----------
    info : VideoInfo
        Frame count, nominal fps and frame size.
    path : Path
        The file or folder named in errors.
    """

    info: VideoInfo
    path: Path

    def batches(self, batch_frames: int) -> Iterator[FrameBatch]:
        """Yield :class:`FrameBatch` es of RGB uint8 frames; ``t_s`` may hold NaN (see :func:`repair_times`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file handles the source holds (an open HDF5 file, say)."""

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class VideoSource(FrameSource):
    """A video file decoded by OpenCV/FFmpeg (see :func:`iter_frames`).

    Parameters
    ----------
    path : str or Path
    subject : str, optional
        Named in errors.
    t_s : ndarray of float64, shape (T,), optional
        Frame times logged beside the video (VIPL-HR's ``time.txt``), used instead of the
        container's; a video whose decoded frame count differs from ``len(t_s)`` raises.

    Raises
    ------
    VideoDecodeError
        On construction if the file is missing, cannot be opened or has no frame rate; while
        streaming as :func:`iter_frames`, or when the frame count does not match ``t_s``.
    """

    def __init__(self, path: str | Path, *, subject: str | None = None, t_s: np.ndarray | None = None):
        self.path, self.subject = Path(path), subject
        self.info = probe(self.path, subject=subject)
        self.t_s = None if t_s is None else np.asarray(t_s, dtype=np.float64)

    def batches(self, batch_frames: int) -> Iterator[FrameBatch]:
        gen = iter_frames(self.path, batch_frames=batch_frames, subject=self.subject)
        if self.t_s is None:
            return gen
        return self._logged_times(gen)

    def _logged_times(self, gen: Iterator[FrameBatch]) -> Iterator[FrameBatch]:
        t, n = _check_times(self.t_s, len(self.t_s), self.subject, self.path), 0
        for batch in gen:
            stop = batch.start + len(batch.frames)
            if stop > len(t):
                raise VideoDecodeError(f"the video has more frames than the {len(t)} logged frame times",
                                       subject=self.subject, path=self.path)
            n = stop
            yield FrameBatch(batch.start, batch.frames, t[batch.start:stop])
        if n != len(t):
            raise VideoDecodeError(f"{n} frames decode but {len(t)} frame times are logged", subject=self.subject,
                                   path=self.path)


def _check_times(t_s: np.ndarray, n: int, subject: str | None, path: Path) -> np.ndarray:
    t = np.asarray(t_s, dtype=np.float64)
    if t.shape != (n,):
        raise VideoDecodeError(f"{t.size} frame timestamps for {n} frames", subject=subject, path=path)
    if n > 1 and not np.all(np.diff(t) > 0):
        i = int(np.argmax(np.diff(t) <= 0))
        raise VideoDecodeError(f"frame timestamps do not increase at frame {i + 1} ({t[i]:.4f} s -> {t[i + 1]:.4f} s)",
                               subject=subject, path=path)
    return t


class ImageSequenceSource(FrameSource):
    """One image file per frame (PNG, BMP, JPEG, ...), read with ``cv2.imread`` in the given order.

    Parameters
    ----------
    files : sequence of Path
        Frame files in display order (the loader sorts them).
    t_s : ndarray of float64, shape (T,), optional
        Per-frame times in seconds (e.g. PURE's ``/Image`` timestamps); ``i / fps`` when omitted.
    fps : float
        Nominal frame rate, Hz; with ``t_s`` given, only reported.
    subject : str, optional
        Named in errors.
    folder : Path, optional
        Named in errors about the sequence as a whole (defaults to the first file's folder).

    Raises
    ------
    VideoDecodeError
        On construction: no files, unequal timestamps count, non-increasing times, or an unreadable
        first frame. While streaming: a frame that is missing, unreadable or of another size; the
        message names that file.
    """

    def __init__(self, files, *, fps: float, t_s: np.ndarray | None = None, subject: str | None = None,
                 folder: Path | None = None):
        self.files = [Path(f) for f in files]
        self.subject = subject
        self.path = Path(folder) if folder is not None else (self.files[0].parent if self.files else Path("."))
        if not self.files:
            raise VideoDecodeError("no frame images found", subject=subject, path=self.path)
        if not (np.isfinite(fps) and fps > 0):
            raise VideoDecodeError(f"no usable frame rate ({fps!r} fps)", subject=subject, path=self.path)
        n = len(self.files)
        self.t_s = None if t_s is None else _check_times(t_s, n, subject, self.path)
        first = self._read(self.files[0])
        self.info = VideoInfo(n_frames=n, fps=float(fps), width=first.shape[1], height=first.shape[0])

    def _read(self, f: Path) -> np.ndarray:
        bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if bgr is None:
            what = "is missing" if not f.exists() else "cannot be read as an image (corrupt or unsupported)"
            raise VideoDecodeError(f"frame image {what}", subject=self.subject, path=f)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def _gen(self, batch_frames: int) -> Iterator[FrameBatch]:
        n = len(self.files)
        for start in range(0, n, batch_frames):
            frames = []
            for f in self.files[start:start + batch_frames]:
                rgb = self._read(f)
                if rgb.shape[:2] != (self.info.height, self.info.width):
                    raise VideoDecodeError(
                        f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the sequence is {self.info.width}x{self.info.height}",
                        subject=self.subject, path=f)
                frames.append(rgb)
            stop = start + len(frames)
            t = self.t_s[start:stop] if self.t_s is not None else np.arange(start, stop) / self.info.fps
            yield FrameBatch(start, np.stack(frames), np.asarray(t, dtype=np.float64))

    def batches(self, batch_frames: int) -> Iterator[FrameBatch]:
        return _prefetch(self._gen(batch_frames), PREFETCH_BATCHES)


class ArraySource(FrameSource):
    """Frames stored as one array in a container (an ``h5py.Dataset``, a numpy array or memmap).

    Only one batch is read at a time (``array[...]`` slicing), so an h5py dataset is never loaded
    whole.

    Parameters
    ----------
    array : array-like
        Sliceable, 4-D, holding T frames of 3 colour channels in the layout ``axes`` names.
    axes : str
        Order of the axes of ``array`` as stored, a permutation of ``"THWC"`` (e.g. MATLAB v7.3
        files written from a (H, W, C, T) array read back in h5py as ``"TCWH"``).
    fps : float
        Frame rate, Hz; frame i is at ``i / fps`` unless ``t_s`` is given.
    t_s : ndarray of float64, shape (T,), optional
        Per-frame times, seconds.
    value_range : {"uint8", "unit"}
        ``"unit"``: floats in [0, 1], mapped to ``round(x * 255)`` (SCAMPS, MMPD); ``"uint8"``: 0-255.
    channels : {"RGB", "BGR"}
        Channel order as stored.
    path : Path
        The container file (named in errors).
    subject : str, optional
    on_close : callable, optional
        Called by :meth:`close` (e.g. the ``close`` of the h5py file holding ``array``).

    Raises
    ------
    VideoDecodeError
        If the array is not 4-D with 3 channels, is empty, or its times are wrong.
    """

    def __init__(self, array, *, axes: str = "THWC", fps: float, path: Path, t_s: np.ndarray | None = None,
                 value_range: str = "uint8", channels: str = "RGB", subject: str | None = None, on_close=None):
        self.array, self.path, self.subject, self._on_close = array, Path(path), subject, on_close
        if sorted(axes) != sorted("THWC"):
            raise ValueError(f"axes must be a permutation of 'THWC', got {axes!r}")
        if value_range not in ("uint8", "unit") or channels not in ("RGB", "BGR"):
            raise ValueError(f"bad value_range {value_range!r} or channels {channels!r}")
        self.axes, self.value_range, self.channels = axes, value_range, channels
        shape = tuple(int(v) for v in getattr(array, "shape", ()))
        if len(shape) != 4 or shape[axes.index("C")] != 3 or shape[axes.index("T")] == 0:
            raise VideoDecodeError(f"frame array has shape {shape} for axes {axes!r}; expected 4-D with 3 channels "
                                   "and at least one frame", subject=subject, path=self.path)
        if not (np.isfinite(fps) and fps > 0):
            raise VideoDecodeError(f"no usable frame rate ({fps!r} fps)", subject=subject, path=self.path)
        n = shape[axes.index("T")]
        self.t_s = None if t_s is None else _check_times(t_s, n, subject, self.path)
        self.info = VideoInfo(n_frames=n, fps=float(fps), width=shape[axes.index("W")],
                              height=shape[axes.index("H")])

    def _slice(self, start: int, stop: int) -> np.ndarray:
        index = tuple(slice(start, stop) if a == "T" else slice(None) for a in self.axes)
        block = np.asarray(self.array[index])
        block = np.transpose(block, [self.axes.index(a) for a in "THWC"])
        if self.value_range == "unit":
            block = np.rint(np.clip(block, 0.0, 1.0) * 255.0)
        elif block.dtype != np.uint8:
            block = np.clip(np.rint(block), 0, 255)
        block = np.ascontiguousarray(block, dtype=np.uint8)
        return block[..., ::-1].copy() if self.channels == "BGR" else block

    def _gen(self, batch_frames: int) -> Iterator[FrameBatch]:
        n = self.info.n_frames
        for start in range(0, n, batch_frames):
            stop = min(n, start + batch_frames)
            try:
                frames = self._slice(start, stop)
            except (OSError, ValueError, KeyError) as exc:
                raise VideoDecodeError(f"cannot read frames {start}-{stop - 1}: {exc}", subject=self.subject,
                                       path=self.path) from None
            t = self.t_s[start:stop] if self.t_s is not None else np.arange(start, stop) / self.info.fps
            yield FrameBatch(start, frames, np.asarray(t, dtype=np.float64))

    def batches(self, batch_frames: int) -> Iterator[FrameBatch]:
        return _prefetch(self._gen(batch_frames), PREFETCH_BATCHES)

    def close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None
