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

__all__ = ["Subject", "Truth", "get_loader", "open_source", "scan_subjects", "LOADERS", "natural_key", "check_subjects",
           "check_truth", "read_truth"]

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


#: a contact signal with more than this fraction of its samples missing (not a number, or in a flat stretch) fails
MAX_MISSING_FRACTION = 0.5
#: a contact signal that holds one value for at least this long (s, on its own clock) has lost its sensor there
FLAT_STRETCH_S = 2.0


def read_truth(subject: Subject) -> Truth:
    """``subject``'s ground truth as its loader reads it, passed through :func:`check_truth`.

    The build reads every ground truth this way, so every loader's truth meets the same checks.

    Parameters
    ----------
    subject : Subject

    Returns
    -------
    Truth

    Raises
    ------
    GroundTruthError
        From the loader, or from :func:`check_truth`; the message names the subject and the file
        of the contact signal (``subject.truth[0]``).
    """
    truth = get_loader(subject.dataset).read_truth(subject)
    return check_truth(truth, subject=subject.id, path=subject.truth[0] if subject.truth else None)


def check_truth(truth: Truth, *, subject: str | None = None, path: str | Path | None = None) -> Truth:
    """The checks every loader's ground truth passes before it becomes labels.

    The rule:

    * the clock ``t_s``: at least 2 samples, one per contact-signal sample, every time a finite
      number, strictly increasing; otherwise the subject fails;
    * the contact signal ``ppg``: a sample is *missing* when it is not a finite number, or when it
      lies in a flat stretch (the same value for ``FLAT_STRETCH_S`` = 2 s or longer: the sensor
      lost the finger). A signal that is flat throughout, or with more than
      ``MAX_MISSING_FRACTION`` = 50 % of its samples missing, fails the subject. Fewer missing
      samples are a note: the non-finite ones are bridged by linear interpolation in time, and
      all missing ones are flagged in ``quality_ok``, so the frames on them have ``bvp_ok`` False
      and every HR window touching them is NaN (as for iBVP's unreliable samples).

    On the 8 real UBFC-rPPG subjects the longest flat stretch is 0.8 s, and no sample is missing.

    Parameters
    ----------
    truth : Truth
        From a loader's ``read_truth``.
    subject : str, optional
        Named in the errors.
    path : str or Path, optional
        The file of the contact signal, named in the errors.

    Returns
    -------
    Truth
        ``truth`` itself when nothing is missing, else a copy with the bridged signal, the
        flags and a note.

    Raises
    ------
    GroundTruthError
        A clock or signal that breaks the rule above.
    """
    import dataclasses

    import numpy as np

    from rppg_prep.errors import GroundTruthError

    def fail(message: str) -> GroundTruthError:
        return GroundTruthError(message, subject=subject, path=path)

    ppg = np.asarray(truth.ppg, dtype=np.float64)
    t = np.asarray(truth.t_s, dtype=np.float64)
    if ppg.ndim != 1 or t.shape != ppg.shape or ppg.size < 2:
        raise fail(f"the contact signal has {ppg.size} sample(s) and its clock {t.size} time(s); need at least 2 "
                   "of each, one time per sample")
    bad_t = ~np.isfinite(t)
    if bad_t.any():
        i = int(np.argmax(bad_t))
        raise fail(f"timestamp of sample {i + 1} is not a number ({t[i]}); {int(bad_t.sum())} such of {t.size}")
    dt = np.diff(t)
    if np.any(dt <= 0):
        i = int(np.argmax(dt <= 0))
        raise fail(f"timestamps do not increase at sample {i + 2} ({t[i]:.6g} s -> {t[i + 1]:.6g} s)")
    finite = np.isfinite(ppg)
    if finite.any() and np.ptp(ppg[finite]) == 0:
        raise fail(f"the contact signal is flat: every finite sample is {ppg[finite][0]:g}; no pulse to label")
    # flat stretches: runs of equal consecutive finite values lasting FLAT_STRETCH_S or more
    same = np.concatenate([[False], (np.diff(ppg) == 0) & finite[1:] & finite[:-1], [False]])
    edges = np.flatnonzero(np.diff(same.astype(np.int8)))
    flat = np.zeros(ppg.size, dtype=bool)
    for a, b in zip(edges[::2], edges[1::2]):  # samples a .. b are equal
        if t[b] - t[a] >= FLAT_STRETCH_S:
            flat[a:b + 1] = True
    missing = ~finite | flat
    if not missing.any():
        return truth
    n_nan, n_flat = int((~finite).sum()), int((flat & finite).sum())
    what = (f"{missing.sum()} of the {ppg.size} contact-signal samples ({100 * missing.mean():.1f} %) are missing "
            f"({n_nan} not a number, {n_flat} in flat stretches of {FLAT_STRETCH_S:g} s or longer)")
    if missing.mean() > MAX_MISSING_FRACTION:
        raise fail(f"{what}; at most {100 * MAX_MISSING_FRACTION:.0f} % may be")
    if n_nan:
        ppg = ppg.copy()
        ppg[~finite] = np.interp(t[~finite], t[finite], ppg[finite])
    quality = np.ones(ppg.size, dtype=bool) if truth.quality_ok is None else np.asarray(truth.quality_ok, bool)
    if quality.shape != ppg.shape:
        raise fail(f"{quality.size} quality flags for {ppg.size} contact-signal samples")
    return dataclasses.replace(truth, ppg=ppg, quality_ok=quality & ~missing,
                               notes=tuple(truth.notes) + (f"{what}: non-finite ones bridged, all flagged "
                                                           "unreliable; windows touching them have no HR",))


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
        ``root`` is not a folder, or holds no recording, or two recordings share an id
        (:func:`check_subjects`).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root does not exist or is not a folder. {layout}", path=root)
    # resolved, so that "." or ".." (a subject folder given as --root from inside it) has its real name
    root = root.resolve()

    def found(folder: Path) -> list[Subject]:
        got = recordings(folder)
        return [] if got is None else (got if isinstance(got, list) else [got])

    subjects = found(root)
    if subjects and root_alone:
        return check_subjects(subjects, root)
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
    return check_subjects(sorted(subjects, key=lambda s: natural_key(s.id)), root)


def check_subjects(subjects: list[Subject], root: str | Path) -> list[Subject]:
    """The check of every loader's subject list: each id is one plain folder name, and no two are equal.

    Every loader's ``find_subjects`` returns through this (:func:`scan_subjects` calls it), so two
    recordings whose names map to the same id (MAHNOB-HCI session folders that sanitise alike)
    are an error instead of one overwriting the other's nodes.

    Parameters
    ----------
    subjects : list of Subject
    root : str or Path
        The dataset root, named in the error.

    Returns
    -------
    list of Subject
        ``subjects``, unchanged.

    Raises
    ------
    DatasetLayoutError
        Two subjects share an id; the message names both recordings.
    ConfigError
        An id cannot be a folder name (:func:`rppg_prep.store.check_path_part`).
    """
    from rppg_prep.store import check_path_part

    seen: dict[str, Subject] = {}
    for s in subjects:
        check_path_part("subject id", s.id)
        if s.id in seen:
            raise DatasetLayoutError(
                f"two recordings map to the subject id {s.id!r}: {seen[s.id].video} and {s.video}; their nodes "
                "would overwrite each other. Rename one of the folders", path=root)
        seen[s.id] = s
    return subjects
