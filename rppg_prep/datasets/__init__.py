"""Dataset loaders: each finds subjects under a root and reads their ground truth.

A loader module exposes ``NAME``, ``LAYOUT`` (a one-paragraph description of the expected files),
``find_subjects(root) -> list[Subject]`` and ``read_truth(subject) -> Truth``; a loader whose frames
are not a plain video file (image sequences, arrays inside ``.mat`` files) also exposes
``open_frames(subject) -> rppg_prep.sources.FrameSource``, and ``frame_clock_files(subject) -> tuple of
Path`` when that source reads files besides ``Subject.video`` (a logged frame clock): they are hashed
into the decode node's key. Heavy readers (h5py, scipy.io, a
BDF reader) are imported inside the functions that need them, so listing datasets stays cheap.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np

__all__ = ["Subject", "Truth", "get_loader", "open_source", "LOADERS", "natural_key"]

#: dataset name -> module path of its loader
LOADERS: dict[str, str] = {
    "ubfc": "rppg_prep.datasets.ubfc",
    "ubfc-phys": "rppg_prep.datasets.ubfc_phys",
    "pure": "rppg_prep.datasets.pure",
    "cohface": "rppg_prep.datasets.cohface",
    "scamps": "rppg_prep.datasets.scamps",
    "mmpd": "rppg_prep.datasets.mmpd",
    "mahnob-hci": "rppg_prep.datasets.mahnob",
    "mmse-hr": "rppg_prep.datasets.mmse_hr",
    "vipl-hr": "rppg_prep.datasets.vipl_hr",
    "ibvp": "rppg_prep.datasets.ibvp",
    "synthetic": "rppg_prep.datasets.synthetic",
}


@dataclass(frozen=True)
class Subject:
    """One recording of a dataset: a video and its ground-truth files.

    Attributes
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

    Attributes
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


def natural_key(text: str) -> list[object]:
    """Sort key that orders embedded numbers numerically (``subject3`` < ``subject10``).

    >>> sorted(["subject10", "subject3"], key=natural_key)
    ['subject3', 'subject10']
    """
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def get_loader(name: str) -> ModuleType:
    """Import and return the loader module of dataset ``name``.

    Raises
    ------
    KeyError
        If no loader has that name; the message lists the known ones.
    """
    try:
        return importlib.import_module(LOADERS[name])
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(LOADERS))}") from None


def open_source(subject: Subject):
    """The frame source of ``subject``: its loader's ``open_frames`` if it has one, else its video file.

    Parameters
    ----------
    subject : Subject

    Returns
    -------
    rppg_prep.sources.FrameSource

    Raises
    ------
    VideoDecodeError
        If the frames cannot be opened; the message names the subject and file.
    """
    from rppg_prep.sources import VideoSource

    opener = getattr(get_loader(subject.dataset), "open_frames", None)
    if opener is not None:
        return opener(subject)
    return VideoSource(subject.video, subject=subject.id)
