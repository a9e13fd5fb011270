"""Stage ``st_map``: ST2S spatiotemporal images.

Follows Kateri et al., "ST2S-rPPG: A Spatiotemporal Two-Stage Learning Approach for Pulse
Estimation Using Video", PMLR 259 (2025), as released (``st_image_generator.py``): the stabilised
face video is cut into 10-s segments; within a segment, for each column start s from round(W/6) to
W - round(W/6) in steps of 3 px, the full-height strip ``frame[:, s:s+3]`` of every frame is
concatenated left to right in time order, giving one H x (3 N) image per strip position (a face
row per image row, time along x). Raw pixels, no averaging. Differences from the release: RGB
rather than BGR, stored losslessly in zarr rather than as JPEG, and every segment has the same
frame count N = round(segment_s x fps) so the images stack into one array (the release crops
all images to the smallest one afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rppg_prep.errors import ConfigError
from rppg_prep.stage import ArraySpec, NodeContext, Stage

__all__ = ["StMapParams", "STAGE", "strip_columns", "segment_windows", "st_images", "write_node"]


@dataclass(frozen=True, kw_only=True)
class StMapParams:
    """ST image settings.

    Attributes
    ----------
    segment_s : float
        Segment length, seconds (10 in the reference).
    stride_s : float
        Time between segment starts, seconds (10: consecutive, non-overlapping).
    strip_px : int
        Strip width and column step, pixels (3 in the reference).
    margin_frac : float
        Fraction of the crop width left out on each side (1/6 in the reference).
    """

    segment_s: float = 10.0
    stride_s: float = 10.0
    strip_px: int = 3
    margin_frac: float = 1.0 / 6.0

    def __post_init__(self) -> None:
        if self.segment_s <= 0 or self.stride_s <= 0 or self.strip_px < 1 or not 0 <= self.margin_frac < 0.5:
            raise ConfigError(f"invalid st_map params {self}")


def strip_columns(width: int, strip_px: int, margin_frac: float) -> np.ndarray:
    """Start columns of the strips: round(W * margin) to W - round(W * margin) inclusive, step strip_px.

    Strips that would run past the crop's right edge are dropped.

    Examples
    --------
    >>> cols = strip_columns(128, 3, 1 / 6)
    >>> int(cols[0]), int(cols[-1]), len(cols)
    (21, 105, 29)
    """
    m = int(round(width * margin_frac))
    cols = np.arange(m, width - m + 1, strip_px, dtype=np.int64)
    return cols[cols + strip_px <= width]


def segment_windows(n_frames: int, fps: float, segment_s: float, stride_s: float) -> np.ndarray:
    """[start, stop) frame windows of round(segment_s * fps) frames every round(stride_s * fps).

    Returns
    -------
    ndarray of int64, shape (N, 2)

    Examples
    --------
    >>> segment_windows(650, 30.0, 10.0, 10.0).tolist()
    [[0, 300], [300, 600]]
    """
    n = max(1, int(round(segment_s * fps)))
    step = max(1, int(round(stride_s * fps)))
    if n_frames < n:
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.arange(0, n_frames - n + 1, step, dtype=np.int64)
    return np.stack([starts, starts + n], axis=1)


def st_images(frames: np.ndarray, cols: np.ndarray, strip_px: int) -> np.ndarray:
    """ST images of one segment.

    Parameters
    ----------
    frames : ndarray of uint8, shape (N, H, W, 3)
        The segment's stabilised crops.
    cols : ndarray of int64, shape (R,)
        Strip start columns, from :func:`strip_columns`.
    strip_px : int

    Returns
    -------
    ndarray of uint8, shape (R, H, strip_px * N, 3)
        Image r, row y, columns [strip_px * t, strip_px * (t + 1)) hold
        ``frames[t, y, cols[r]:cols[r] + strip_px]``.
    """
    n, h = frames.shape[:2]
    r = len(cols)
    item = np.dtype((np.void, strip_px * 3))
    if r > 1 and np.all(np.diff(cols) == strip_px):
        # adjacent strips: one slice, each strip's pixels moved as a single opaque item
        block = np.ascontiguousarray(frames[:, :, cols[0]:cols[0] + r * strip_px, :])
        strips = block.reshape(n, h, r * strip_px * 3).view(item)              # (N, H, R)
    else:
        idx = cols[:, None] + np.arange(strip_px)[None, :]
        strips = np.ascontiguousarray(frames[:, :, idx, :]).reshape(n, h, r * strip_px * 3).view(item)
    out = np.ascontiguousarray(strips.transpose(2, 1, 0))                      # (R, H, N)
    return out.view(np.uint8).reshape(r, h, n * strip_px, 3)


def write_node(ctx: NodeContext) -> None:
    """Kernel of the stage: the ST images of every segment of the face node's crops.

    Parameters
    ----------
    ctx : NodeContext
        ``inputs["face"]`` holds the (T, S, S, 3) uint8 crops and their ``fps``; ``params`` a
        :class:`StMapParams`.
    """
    sp = ctx.params
    fnode = ctx.inputs["face"]
    frames = fnode["frames"]
    n, h, wd = frames.shape[:3]
    fps = float(fnode.attrs["fps"])
    win = segment_windows(n, fps, sp.segment_s, sp.stride_s)
    cols = strip_columns(wd, sp.strip_px, sp.margin_frac)
    seg_len = int(win[0, 1] - win[0, 0]) if len(win) else int(round(sp.segment_s * fps))
    shape = (len(win), len(cols), h, sp.strip_px * seg_len, 3)
    ctx.writer.attrs.update(n_segments=len(win), n_strips=len(cols))
    arr = ctx.create("images", shape, (1, 1) + shape[2:])
    for i, (a, b) in enumerate(win):
        arr[i] = st_images(frames[a:b], cols, sp.strip_px)
        ctx.progress(i + 1, len(win))
    ctx.write("window", win, chunks=(max(len(win), 1), 2))
    ctx.write("strip_col", cols, chunks=(max(len(cols), 1),))


STAGE = Stage(
    name="st_map",
    version="1",
    params=StMapParams,
    inputs=("face",),
    outputs=(
        ArraySpec("images", "uint8", ("segment", "strip", "y", "x_time", "channel"), "",
                  "ST images: face row x (strip_px x frame), RGB"),
        ArraySpec("window", "int64", ("segment", "start_stop"), "frame", "[start, stop) frames of each segment"),
        ArraySpec("strip_col", "int64", ("strip",), "px", "first crop column of each strip"),
    ),
    fn=write_node,
)
