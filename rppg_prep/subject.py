"""The two records a dataset loader produces: a :class:`Subject` (where a recording's files are) and
its :class:`Truth` (the ground truth on its own clock).

They live below both the loaders (:mod:`rppg_prep.datasets`) and the stages that read them, so
that no stage imports a loader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Subject", "Truth"]


@dataclass(frozen=True)
class Subject:
    """One recording of a dataset: a video and its ground-truth files.

    Parameters
    ----------
    dataset : str
        Loader name, e.g. ``"ubfc"``.
    id : str
        Subject id, unique within the dataset root (e.g. ``"subject3"``).
    video : Path
        The video file.
    truth : tuple of Path
        Ground-truth files, read by the loader's ``read_truth``.
    fmt : str
        Loader-specific format tag (e.g. ``"DATASET_2"``).
    """

    dataset: str
    id: str
    video: Path
    truth: tuple[Path, ...]
    fmt: str = ""


@dataclass(frozen=True)
class Truth:
    """Ground truth of one subject on its own (PPG) clock.

    Parameters
    ----------
    ppg : ndarray of float64, shape (n,)
        Contact PPG, arbitrary units.
    t_s : ndarray of float64, shape (n,)
        Strictly increasing sample times in seconds; 0 is the first video frame.
    hr_bpm : ndarray of float64, shape (n,) or None
        The device's own HR (bpm) on the same clock; dropouts replaced by NaN.
    frame_locked : bool
        True when sample i was recorded with video frame i (UBFC DATASET_2, SCAMPS, iBVP, MMPD,
        synthetic): the labels pair samples with frames by index, never by time.
    capture_clock : bool
        True when ``t_s`` are the logged capture times of the frames themselves (frame-locked data
        only; UBFC DATASET_2 line 3). They become the frame clock of the labels instead of the
        container's presentation times, which play irregularly captured frames at a constant rate.
    notes : tuple of str
        Quirks noticed while reading (repaired timestamps, masked dropouts).
    quality_ok : ndarray of bool, shape (n,) or None
        False where the dataset marks a sample unreliable (iBVP's SQ column). The samples stay in
        place, so the clock has no gaps; label windows touching them get NaN HR.
    """

    ppg: np.ndarray
    t_s: np.ndarray
    hr_bpm: np.ndarray | None = None
    frame_locked: bool = False
    capture_clock: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)
    quality_ok: np.ndarray | None = None
