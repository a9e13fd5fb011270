"""Stage ``decode``: the frame clock of a subject's frames.

The frames themselves are streamed once by the video pass from the subject's frame source
(:mod:`rppg_prep.sources`: a video file, an image sequence or an array) and handed to the
``landmarks`` and ``face`` stages; this node stores what later stages need of the decode: each
frame's presentation time, repaired where the container gives none
(:func:`rppg_prep.sources.repair_times`), and the nominal and effective frame rates in its
attributes.
"""

from __future__ import annotations

from dataclasses import dataclass

from rppg_prep.stage import ArraySpec, NodeContext, Stage, StreamCarry

__all__ = ["DecodeParams", "STAGE", "FrameTimes"]


@dataclass(frozen=True, kw_only=True)
class DecodeParams:
    """Decode settings that change the output (none yet: frames are always RGB uint8)."""


class FrameTimes:
    """Consumer of the streaming pass that collects the frame times and writes the decode node.

    Parameters
    ----------
    ctx : NodeContext
        ``writer`` is None when the node is fresh: the times are still collected for the stages
        after it.
    carry : StreamCarry
        Shared by the consumers of one pass; this one reads ``info`` and, on :meth:`finish`, sets
        ``t_s``, ``n_frames`` and ``fps``.
    """

    def __init__(self, ctx: NodeContext, carry: StreamCarry):
        self.ctx, self.parts = ctx, []

    def push(self, batch, carry: StreamCarry) -> None:
        """Take a batch's times (``batch.t_s``, NaN where the container gives none)."""
        self.parts.append(batch.t_s)

    def finish(self, carry: StreamCarry) -> None:
        """Repair the times, put them in ``carry`` and write the node (when there is a writer)."""
        import numpy as np

        from rppg_prep.sources import repair_times

        info = carry.info
        t_s, n_filled = repair_times(np.concatenate(self.parts), info.fps)
        n = len(t_s)
        fps_eff = (n - 1) / max(t_s[-1] - t_s[0], 1e-9) if n > 1 else info.fps
        carry.t_s, carry.n_frames, carry.fps = t_s, n, fps_eff
        if n_filled:
            self.ctx.notes.append(f"{n_filled} frame time(s) missing in the container; filled from {info.fps:.3f} fps")
        if self.ctx.writer is not None:
            self.ctx.writer.attrs.update(n_frames=n, fps_nominal=info.fps, fps=fps_eff, width=info.width,
                                         height=info.height, times_filled=n_filled)
            self.ctx.write("t_s", t_s, chunks=(max(n, 1),))

    def abort(self) -> None:
        """Nothing to release."""


STAGE = Stage(
    name="decode",
    version="1",
    params=DecodeParams,
    inputs=(),
    outputs=(ArraySpec("t_s", "float64", ("frame",), "s", "presentation time of each frame"),),
    fn=FrameTimes,  # the kernel of a streaming stage: its consumer, made as FrameTimes(ctx, carry)
    streams=True,
    raw_inputs=("video", "frame_clock"),
)
