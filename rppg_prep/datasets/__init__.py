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
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from rppg_prep.errors import DatasetLayoutError
from rppg_prep.subject import Subject, Truth

__all__ = ["Subject", "Truth", "get_loader", "open_source", "scan_subjects", "LOADERS", "natural_key"]

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


def scan_subjects(root: str | Path, *, what: str, layout: str,
                  recordings: Callable[[Path], Subject | list[Subject] | None],
                  placeholder: Callable[[Path], Subject | None] | None = None, depth: int = 1,
                  root_alone: bool = True, placeholder_root: bool = False) -> list[Subject]:
    """The walk of a dataset root that the folder-per-recording loaders share.

    Parameters
    ----------
    root : str or Path
        The dataset folder given as ``--root`` (or one recording's folder).
    what : str
        What a recording is called in the error, e.g. ``"UBFC-rPPG subject folders"``.
    layout : str
        The loader's ``LAYOUT``, appended to the errors.
    recordings : callable (folder) -> Subject, list of Subject or None
        The recordings a folder holds (None or [] when it holds none).
    placeholder : callable (folder) -> Subject or None, optional
        A subject for a folder named like a recording whose files are missing, so that building
        it reports the missing file instead of the recording silently vanishing.
    depth : int
        Folder levels below ``root`` searched (every level, e.g. ``subject/session`` is 2).
    root_alone : bool
        When ``root`` itself holds recordings, return only those (the user pointed at one
        recording); otherwise they join the ones below.
    placeholder_root : bool
        When nothing is found, try ``placeholder(root)``.

    Returns
    -------
    list of Subject
        Sorted by natural order of their ids (``subject3`` before ``subject10``).

    Raises
    ------
    DatasetLayoutError
        ``root`` is not a folder, or holds no recording.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root does not exist or is not a folder. {layout}", path=root)

    def found(folder: Path) -> list[Subject]:
        got = recordings(folder)
        return [] if got is None else (got if isinstance(got, list) else [got])

    subjects = found(root)
    if subjects and root_alone:
        return subjects
    level = [root]
    for _ in range(depth):
        level = [p for parent in level for p in sorted(parent.iterdir(), key=lambda p: natural_key(p.name))
                 if p.is_dir() and not p.name.startswith(".")]
        for folder in level:
            got = found(folder)
            if not got and placeholder is not None:
                got = [s for s in [placeholder(folder)] if s is not None]
            subjects.extend(got)
    if not subjects and placeholder_root and placeholder is not None:
        subjects = [s for s in [placeholder(root)] if s is not None]
    if not subjects:
        raise DatasetLayoutError(f"no {what} found. {layout}", path=root)
    return sorted(subjects, key=lambda s: natural_key(s.id))
