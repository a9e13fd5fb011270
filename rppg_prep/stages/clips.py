"""Stage ``clips``: fixed-length windows of the face crops, resized, as training clip tensors.

Defaults fit STGNet (Xiong et al., Biomedical Signal Processing and Control 2024): 160-frame clips
of 64x64 RGB, a new clip every 60 frames. Windows lie fully inside the video (no padding); the
clip tensor stays uint8 and the training layer normalises on read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from rppg_prep.errors import ConfigError
from rppg_prep.stage import ArraySpec, NodeContext, Stage

__all__ = ["ClipParams", "STAGE", "clip_windows", "iter_clips", "write_node"]


@dataclass(frozen=True, kw_only=True)
class ClipParams:
    """Clip settings.

    Attributes
    ----------
    length_frames : int
        Frames per clip, L.
    stride_frames : int
        Frames between the starts of consecutive clips.
    size_px : int
        Clip frame side (H = W), pixels.
    """

    length_frames: int = 160
    stride_frames: int = 60
    size_px: int = 64

    def __post_init__(self) -> None:
        if self.length_frames < 2 or self.stride_frames < 1 or not 8 <= self.size_px <= 1024:
            raise ConfigError(f"invalid clip params {self}: need length_frames >= 2, stride_frames >= 1, "
                              "8 <= size_px <= 1024")


def clip_windows(n_frames: int, length: int, stride: int) -> np.ndarray:
    """[start, stop) frame windows of ``length`` every ``stride`` frames, fully inside the video.

    Returns
    -------
    ndarray of int64, shape (N, 2); (0, 2) when the video is shorter than one clip.

    Examples
    --------
    >>> clip_windows(10, 4, 3).tolist()
    [[0, 4], [3, 7], [6, 10]]
    >>> clip_windows(3, 4, 3).shape
    (0, 2)
    """
    if n_frames < length:
        return np.zeros((0, 2), dtype=np.int64)
    starts = np.arange(0, n_frames - length + 1, stride, dtype=np.int64)
    return np.stack([starts, starts + length], axis=1)


def iter_clips(read_frames: Callable[[int, int], np.ndarray], windows: np.ndarray, size_px: int,
               *, read_block: int = 64) -> Iterator[np.ndarray]:
    """Yield one resized clip per window, reading the crops once, in blocks.

    Parameters
    ----------
    read_frames : callable (start, stop) -> ndarray of uint8, shape (stop-start, S, S, 3)
        Reads face crops.
    windows : ndarray of int64, shape (N, 2)
        Sorted by start.
    size_px : int
        Output side.
    read_block : int
        Frames read at a time. Memory holds at most one clip plus one block of small frames.

    Yields
    ------
    ndarray of uint8, shape (L, size_px, size_px, 3)
    """
    import cv2  # here, not at import: declaring the stage must stay cheap (a no-op rebuild)

    buf: dict[int, np.ndarray] = {}
    loaded = 0
    for start, stop in windows:
        while loaded < stop:
            block = read_frames(loaded, loaded + read_block)
            if len(block) == 0:
                raise ValueError(f"crops end at frame {loaded}, clip needs frames up to {stop}")
            for i, fr in enumerate(block):
                buf[loaded + i] = cv2.resize(fr, (size_px, size_px), interpolation=cv2.INTER_AREA)
            loaded += len(block)
        for k in [k for k in buf if k < start]:
            del buf[k]
        yield np.stack([buf[i] for i in range(start, stop)])


def write_node(ctx: NodeContext) -> None:
    """Kernel of the stage: cut the clips of the face node's crops into ``ctx.writer``.

    Parameters
    ----------
    ctx : NodeContext
        ``inputs["face"]`` holds the (T, S, S, 3) uint8 crops; ``params`` a :class:`ClipParams`.
    """
    cp = ctx.params
    frames = ctx.inputs["face"]["frames"]
    n = frames.shape[0]
    win = clip_windows(n, cp.length_frames, cp.stride_frames)
    length, s = cp.length_frames, cp.size_px
    ctx.writer.attrs["n_clips"] = len(win)
    arr = ctx.create("clips", (len(win), length, s, s, 3), (1, length, s, s, 3))
    for i, clip in enumerate(iter_clips(lambda a, b: frames[a:min(b, n)], win, s)):
        arr[i] = clip
        ctx.progress(i + 1, len(win))
    ctx.write("window", win, chunks=(max(len(win), 1), 2))


STAGE = Stage(
    name="clips",
    version="1",
    params=ClipParams,
    inputs=("face",),
    outputs=(
        ArraySpec("clips", "uint8", ("clip", "frame", "y", "x", "channel"), "", "RGB clip tensors"),
        ArraySpec("window", "int64", ("clip", "start_stop"), "frame", "[start, stop) frame index of each clip"),
    ),
    fn=write_node,
)
