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
from types import ModuleType

from rppg_prep.subject import Subject, Truth

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


def natural_key(text: str) -> list[object]:
    """Sort key that orders embedded numbers numerically (``subject3`` < ``subject10``).

    >>> sorted(["subject10", "subject3"], key=natural_key)
    ['subject3', 'subject10']
    """
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", text)]


def get_loader(name: str) -> ModuleType:
    """Import and return the loader module of dataset ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`LOADERS`, e.g. ``"ubfc"``, ``"pure"``.

    Returns
    -------
    ModuleType
        The loader: ``find_subjects(root)``, ``read_truth(subject)``, ``LAYOUT`` and, for frames that
        are not a plain video, ``open_frames(subject)``.

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
