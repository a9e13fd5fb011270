"""Stage ``face``: a smoothed face track and stabilised square crops resized to S x S.

Each frame's landmarks give a raw box (centre and side of the landmark extent). The track is a
centred, NaN-aware Gaussian average of the raw boxes (centre and side smoothed with their own time
constants): zero-phase, so it follows head motion without lag, and a frame without landmarks takes
its box from the detections around it. This is the per-coordinate smoothing of a detection track
that contrast-phys (EMA) and open-rppg (Kalman) use, made centred so it needs no causal lag
compensation; the output for frame t depends only on the raw boxes within +/-K frames (K = 3
sigma), so the stage streams with a K-frame delay and memory does not grow with video length.

A frame is ``valid`` when its own landmarks were found, or when landmarks exist within
``max_gap_s`` both before and after it (a short gap bridged by the track). Frames with no
landmark within K frames keep the previous box and are invalid.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from rppg_prep.errors import ConfigError, FaceNotFoundError
from rppg_prep.stage import ArraySpec, NodeContext, Stage, StreamCarry

__all__ = ["FaceParams", "STAGE", "FaceTracker", "raw_boxes", "crop_square", "FaceCrops", "gaps"]


@dataclass(frozen=True, kw_only=True)
class FaceParams:
    """Crop settings.

    Attributes
    ----------
    size_px : int
        Side S of the square output crops, pixels.
    enlarge : float
        Crop side = enlarge x the larger side of the landmark extent.
    shift_up : float
        Crop centre moved up by this fraction of the landmark extent's height (forehead margin).
    center_sigma_s : float
        Gaussian time constant of the box-centre smoothing, seconds.
    size_sigma_s : float
        Gaussian time constant of the box-side smoothing, seconds (longer: zoom flicker hurts rPPG).
    max_gap_s : float
        Longest landmark gap, seconds, bridged as valid.
    min_valid_fraction : float
        The subject fails (FaceNotFoundError) when fewer of its frames are valid.
    gap_report_s : float
        Runs of invalid frames at least this long, seconds, are listed in the node's ``gaps_s``
        attribute and in the build notes.
    chunk_frames : int
        Frames per chunk of the stored crops (the read unit of a clip or an ST segment).
    """

    size_px: int = 128
    enlarge: float = 1.2
    shift_up: float = 0.0
    center_sigma_s: float = 0.1
    size_sigma_s: float = 0.3
    max_gap_s: float = 0.5
    min_valid_fraction: float = 0.5
    gap_report_s: float = 1.0
    chunk_frames: int = 32

    def __post_init__(self) -> None:
        if not 8 <= self.size_px <= 1024:
            raise ConfigError(f"face.size_px must lie in [8, 1024], got {self.size_px}")
        if not 0.5 <= self.enlarge <= 4.0:
            raise ConfigError(f"face.enlarge must lie in [0.5, 4], got {self.enlarge}")
        for name in ("center_sigma_s", "size_sigma_s", "max_gap_s"):
            v = getattr(self, name)
            if not 0.0 < v <= 10.0:
                raise ConfigError(f"face.{name} must lie in (0, 10] s, got {v}")
        if not 0.0 <= self.min_valid_fraction <= 1.0:
            raise ConfigError(f"face.min_valid_fraction must lie in [0, 1], got {self.min_valid_fraction}")
        if not 0.0 < self.gap_report_s <= 600.0:
            raise ConfigError(f"face.gap_report_s must lie in (0, 600] s, got {self.gap_report_s}")
        if not 1 <= self.chunk_frames <= 4096:
            raise ConfigError(f"face.chunk_frames must lie in [1, 4096], got {self.chunk_frames}")


def raw_boxes(landmarks: np.ndarray, detected: np.ndarray) -> np.ndarray:
    """Raw per-frame box (centre x, centre y, extent width, extent height) from landmarks.

    Parameters
    ----------
    landmarks : ndarray of float32, shape (B, K, 2), pixels
    detected : ndarray of bool, shape (B,)

    Returns
    -------
    ndarray of float64, shape (B, 4); NaN rows where nothing was detected.
    """
    out = np.full((len(landmarks), 4), np.nan)
    if detected.any():
        lm = landmarks[detected].astype(np.float64)
        lo, hi = lm.min(axis=1), lm.max(axis=1)
        out[detected, 0:2] = (lo + hi) / 2.0
        out[detected, 2:4] = hi - lo
    return out


def crop_square(frame: np.ndarray, x0: int, y0: int, side: int, size_px: int) -> np.ndarray:
    """Crop the square [y0, y0+side) x [x0, x0+side), zero-padded outside the frame, resized.

    Parameters
    ----------
    frame : ndarray of uint8, shape (H, W, 3)
    x0, y0, side : int
        Square in pixels (may extend beyond the frame).
    size_px : int
        Output side.

    Returns
    -------
    ndarray of uint8, shape (size_px, size_px, 3)

    Examples
    --------
    >>> crop_square(np.full((4, 4, 3), 9, np.uint8), -2, -2, 4, 4)[:, :, 0].tolist()
    [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 9, 9], [0, 0, 9, 9]]
    """
    import cv2  # here, not at import: declaring the stage must stay cheap (a no-op rebuild)

    h, w = frame.shape[:2]
    ax0, ay0 = max(x0, 0), max(y0, 0)
    ax1, ay1 = min(x0 + side, w), min(y0 + side, h)
    if ax0 == x0 and ay0 == y0 and ax1 == x0 + side and ay1 == y0 + side:
        patch = frame[y0:y0 + side, x0:x0 + side]
    else:
        patch = np.zeros((side, side, 3), dtype=frame.dtype)
        if ax1 > ax0 and ay1 > ay0:
            patch[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] = frame[ay0:ay1, ax0:ax1]
    interp = cv2.INTER_AREA if side >= size_px else cv2.INTER_LINEAR
    return cv2.resize(patch, (size_px, size_px), interpolation=interp)


class FaceTracker:
    """Streaming face track and cropper with a fixed delay of K frames.

    Parameters
    ----------
    params : FaceParams
    fps : float
        Nominal frame rate, frames per second (sets the smoothing and gap lengths in frames).
    frame_hw : tuple of int
        Source frame height and width, pixels.

    Notes
    -----
    Feed batches with :meth:`push` and finish with :meth:`flush`; each returns the crops that are
    ready as a dict with ``frames`` (n, S, S, 3) uint8, ``box`` (n, 4) float32 and ``valid`` (n,)
    bool, in frame order, or None.
    """

    def __init__(self, params: FaceParams, fps: float, frame_hw: tuple[int, int]):
        self.p = params
        self.hw = frame_hw
        self.sig_c = params.center_sigma_s * fps
        self.sig_s = params.size_sigma_s * fps
        self.gap = max(1, int(round(params.max_gap_s * fps)))
        self.k = max(self.gap, int(math.ceil(3.0 * max(self.sig_c, self.sig_s))))
        self.raw = np.full((0, 4), np.nan)   # raw boxes of frames base, base+1, ...
        self.base = 0
        self.n_seen = 0
        self.pending: deque[np.ndarray] = deque()
        self.next_out = 0
        self.hold: tuple[float, float, float] | None = None

    def push(self, raw: np.ndarray, frames: np.ndarray) -> dict[str, np.ndarray] | None:
        """Add a batch: raw boxes (B, 4) from :func:`raw_boxes` and RGB frames (B, H, W, 3)."""
        # keep only the raw boxes still inside some pending frame's window: memory stays flat
        drop = max(0, self.next_out - self.k - self.base)
        self.raw = np.concatenate([self.raw[drop:], raw])
        self.base += drop
        self.n_seen += len(raw)
        self.pending.extend(frames)
        return self._emit(self.n_seen - self.k)

    def flush(self) -> dict[str, np.ndarray] | None:
        """Emit every remaining frame (the end of the video is known now)."""
        return self._emit(self.n_seen)

    def _box(self, t: int) -> tuple[tuple[float, float, float], bool]:
        lo, hi = max(0, t - self.k), min(self.n_seen, t + self.k + 1)
        win = self.raw[lo - self.base:hi - self.base]
        ok = np.isfinite(win[:, 0])
        det_t = bool(np.isfinite(self.raw[t - self.base, 0]))
        if not ok.any():
            if self.hold is None:
                h, w = self.hw
                side = 0.6 * min(h, w)
                return (w / 2.0, h / 2.0, side), False
            return self.hold, False
        off = np.arange(lo, hi)[ok] - t
        wc = np.exp(-0.5 * (off / self.sig_c) ** 2)
        ws = np.exp(-0.5 * (off / self.sig_s) ** 2)
        v = win[ok]
        cx = float(wc @ v[:, 0] / wc.sum())
        cy = float(wc @ v[:, 1] / wc.sum())
        ext_w = float(ws @ v[:, 2] / ws.sum())
        ext_h = float(ws @ v[:, 3] / ws.sum())
        side = max(ext_w, ext_h) * self.p.enlarge
        cy -= self.p.shift_up * ext_h
        if det_t:
            valid = True
        else:
            before = off[(off < 0) & (off >= -self.gap)]
            after = off[(off > 0) & (off <= self.gap)]
            valid = before.size > 0 and after.size > 0
        return (cx, cy, side), valid

    def _emit(self, upto: int) -> dict[str, np.ndarray] | None:
        out_frames, boxes, valid = [], [], []
        while self.next_out < upto:
            t = self.next_out
            (cx, cy, side), ok = self._box(t)
            self.hold = (cx, cy, side)
            s = max(2, int(round(side)))
            x0, y0 = int(round(cx - s / 2.0)), int(round(cy - s / 2.0))
            frame = self.pending.popleft()
            out_frames.append(crop_square(frame, x0, y0, s, self.p.size_px))
            boxes.append((x0, y0, s, s))
            valid.append(ok)
            self.next_out += 1
        if not out_frames:
            return None
        return {
            "frames": np.stack(out_frames),
            "box": np.asarray(boxes, dtype=np.float32),
            "valid": np.asarray(valid, dtype=bool),
        }


#: batches handed to the crop thread and not yet cropped: slack against stalls (execution only; memory:
#: see build.BATCH_FRAMES)
CROP_IN_FLIGHT = 2


def gaps(valid: np.ndarray, t_s: np.ndarray) -> list[tuple[float, float]]:
    """Runs of invalid frames.

    Parameters
    ----------
    valid : ndarray of bool, shape (T,)
    t_s : ndarray of float64, shape (T,)
        Frame times, s.

    Returns
    -------
    list of (float, float)
        (start s, length s) of each run.
    """
    bad = np.concatenate([[False], ~valid, [False]]).astype(np.int8)
    starts, stops = np.flatnonzero(np.diff(bad) == 1), np.flatnonzero(np.diff(bad) == -1)
    dt = float(np.median(np.diff(t_s))) if len(t_s) > 1 else 0.0
    return [(float(t_s[a]), float(t_s[b - 1] - t_s[a] + dt)) for a, b in zip(starts, stops)]


class FaceCrops:
    """Consumer of the streaming pass: the smoothed face track and its crops, written to the face node.

    Cropping and compressing run on a second thread while the pass waits on the landmark
    detector (at most :data:`CROP_IN_FLIGHT` batches ahead).

    Parameters
    ----------
    ctx : NodeContext
        ``params`` a :class:`FaceParams`; ``writer`` the face node.
    carry : StreamCarry
        Shared by the consumers of one pass; this one reads ``info``, the landmark rows in frame
        order (``landmark_rows``, which may lag the frames: frames wait here until their landmarks
        come), and at the end ``t_s``, ``n_frames`` and ``fps``. A frame's raw box comes from its
        landmarks whenever they are finite, measured or interpolated.
    """

    def __init__(self, ctx: NodeContext, carry: StreamCarry):
        from concurrent.futures import ThreadPoolExecutor

        fp, info = ctx.params, carry.info
        self.ctx, s = ctx, fp.size_px
        ctx.create("frames", (0, s, s, 3), (fp.chunk_frames, s, s, 3))
        ctx.create("box", (0, 4), (4096, 4))
        ctx.create("valid", (0,), (4096,))
        self.apps = {k: ctx.appender(k, fp.chunk_frames if k == "frames" else 4096)
                     for k in ("frames", "box", "valid")}
        self.tracker = FaceTracker(fp, info.fps, (info.height, info.width))
        self.valid_parts: list[np.ndarray] = []
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop")
        self.in_flight: list = []
        self.frames: list[np.ndarray] = []  # frames whose landmarks have not come yet

    def _emit(self, out: dict[str, np.ndarray] | None) -> None:
        if out is not None:
            for k, app in self.apps.items():
                app.add(out[k])
            self.valid_parts.append(out["valid"])

    def _crop(self, raw: np.ndarray, frames: np.ndarray) -> None:
        self._emit(self.tracker.push(raw, frames))

    def _take(self, carry: StreamCarry) -> None:
        """Crop the waiting frames whose landmark rows have come, in one job."""
        rows, got, n = carry.landmark_rows, [], 0
        while rows and n < len(self.frames):
            lm, det = rows.popleft()
            if n + len(lm) > len(self.frames):
                k = len(self.frames) - n
                rows.appendleft((lm[k:], det[k:]))
                lm = lm[:k]
            got.append(lm)
            n += len(lm)
        if not n:
            return
        lm = np.concatenate(got)
        frames, self.frames = self.frames[:n], self.frames[n:]
        self.in_flight.append(self.pool.submit(self._crop, raw_boxes(lm, np.isfinite(lm[:, 0, 0])), frames))
        while len(self.in_flight) > CROP_IN_FLIGHT:
            self.in_flight.pop(0).result()

    def push(self, batch, carry: StreamCarry) -> None:
        """Queue the batch's frames; crop those whose landmarks have come (with their raw boxes)."""
        self.frames.extend(batch.frames)
        self._take(carry)

    def finish(self, carry: StreamCarry) -> None:
        """Crop the last frames, check how much of the video has a face and describe its gaps.

        Raises
        ------
        FaceNotFoundError
            Fewer than ``min_valid_fraction`` of the frames are valid.
        """
        fp, subject = self.ctx.params, self.ctx.subject
        self._take(carry)
        if self.frames:
            raise RuntimeError(f"{len(self.frames)} frame(s) got no landmark row")  # a bug, never bad input
        for fut in self.in_flight:
            fut.result()
        self.pool.shutdown()
        self._emit(self.tracker.flush())
        valid = np.concatenate(self.valid_parts)
        n, t_s = carry.n_frames, carry.t_s
        if valid.mean() < fp.min_valid_fraction:
            raise FaceNotFoundError(
                f"a face was tracked in only {100 * valid.mean():.0f}% of {n} frames "
                f"(at least {100 * fp.min_valid_fraction:.0f}% needed, face.min_valid_fraction)",
                subject=subject.id, path=subject.video)
        found = [g for g in gaps(valid, t_s) if g[1] >= fp.gap_report_s]
        for start, length in found[:5]:
            self.ctx.notes.append(f"no face for {length:.1f} s from {start:.1f} s in {subject.video.name}: "
                                  "those frames are marked invalid")
        for app in self.apps.values():
            app.close()
        self.ctx.writer.attrs.update(n_frames=n, fps=carry.fps, size_px=fp.size_px,
                                     valid_fraction=float(valid.mean()), gaps_s=[list(g) for g in found])

    def abort(self) -> None:
        """Stop the crop thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)


STAGE = Stage(
    name="face",
    version="1",
    params=FaceParams,
    inputs=("decode", "landmarks"),
    outputs=(
        ArraySpec("frames", "uint8", ("frame", "y", "x", "channel"), "", "stabilised RGB face crops"),
        ArraySpec("box", "float32", ("frame", "xywh"), "px", "crop square in the source frame: x0, y0, side, side"),
        ArraySpec("valid", "bool", ("frame",), "", "face tracked in this frame (gaps <= max_gap_s bridged)"),
    ),
    fn=FaceCrops,  # the kernel of a streaming stage: its consumer, made as FaceCrops(ctx, carry)
    streams=True,
)
