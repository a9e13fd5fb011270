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

from rppg_prep.stage import ArraySpec, Stage

__all__ = ["DecodeParams", "STAGE"]


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
