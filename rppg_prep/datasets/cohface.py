"""COHFACE loader.

Source: G. Heusch, A. Anjos, S. Marcel, "A reproducible study on remote heart rate measurement",
arXiv:1709.00962, 2017; format from ``design/models.md`` §6.7 and ``prior-art.md`` §1.6
(rPPG-Toolbox and pyVHR loaders).

Layout: ``<root>/<subject 1..40>/<session 0..3>/data.avi`` (some copies ``data.mkv``) with
``data.hdf5`` beside it, holding the datasets ``pulse`` (contact BVP, 256 Hz), ``respiration``
(ignored) and ``time`` (seconds of each sample). Video 20 fps, 640x480. ``root`` may also be one
subject folder or one session folder. Subject ids are ``"<subject>-<session>"`` (``"1-0"``).

Quirks handled:

* The BVP keeps its own clock: ``time`` relative to its first value (= the first video frame),
  interpolated at the frame times. rPPG-Toolbox instead stretches ``pulse`` to the frame count by
  index. A file without ``time`` falls back to ``i / 256`` s, and the notes say so.
* Repeated timestamps are spread evenly (as for UBFC, :func:`rppg_prep.datasets.ubfc.repair_clock`);
  a clock that runs backwards, or a ``time`` of another length than ``pulse``, is an error.
* ``data.avi`` is preferred over ``data.mkv`` when both exist.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, scan_subjects
from rppg_prep.errors import GroundTruthError

NAME = "cohface"
VERSION = "1"
PULSE_FS_HZ = 256.0  #: BVP rate, used only when data.hdf5 has no ``time``
LAYOUT = (
    "COHFACE. ROOT/<subject 1..40>/<session 0..3>/data.avi (or data.mkv; 20 fps) + data.hdf5 (datasets "
    f"'pulse' = BVP at {PULSE_FS_HZ:g} Hz, 'time' = s per sample, 'respiration'). ROOT may be one subject "
    "or session folder. Ids '<subject>-<session>'."
)
VIDEO_NAMES = ("data.avi", "data.mkv")
_SAFE = re.compile(r"[^A-Za-z0-9._]+")


def _is_session(folder: Path) -> bool:
    return any((folder / n).is_file() for n in (*VIDEO_NAMES, "data.hdf5"))


def _session(folder: Path) -> Subject:
    video = next((folder / n for n in VIDEO_NAMES if (folder / n).is_file()), folder / VIDEO_NAMES[0])
    sid = "-".join(_SAFE.sub("_", p).strip("_") or "x" for p in (folder.parent.name, folder.name))
    return Subject(NAME, sid, video, (folder / "data.hdf5",), video.suffix.lstrip("."))


def _dirs(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]


def find_subjects(root: str | Path) -> list[Subject]:
    """List the recordings (one per subject and session) under ``root``, in natural order.

    Parameters
    ----------
    root : str or Path
        The COHFACE folder holding ``<subject>/<session>/`` folders, one subject folder, or one
        session folder.

    Returns
    -------
    list of Subject
        Ids ``"<subject>-<session>"`` (the two folder names), ``video`` = ``data.avi`` (else
        ``data.mkv``), ``truth`` = (``data.hdf5``,), ``fmt`` the video suffix. A session folder
        missing either file is still listed; building it raises an error naming the file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` is not a folder or holds no session folder.
    """
    return scan_subjects(root, what="COHFACE session folders (with data.avi / data.hdf5)", layout=LAYOUT,
                         recordings=lambda f: _session(f) if _is_session(f) else None, depth=2)


def read_truth(subject: Subject) -> Truth:
    """Read the contact BVP of one recording on its own clock.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (a.u., float64, shape (n,)) from ``pulse``; ``t_s`` (float64, (n,), s) = ``time``
        minus its first value, or ``i / 256`` when the file has no ``time``; no device HR.

    Raises
    ------
    GroundTruthError
        Missing or unreadable (not HDF5) file, no ``pulse`` dataset, fewer than 2 samples, a
        ``time`` of another length than ``pulse`` or running backwards; the message
        names the subject and file.
    """
    import h5py

    from rppg_prep.datasets.ubfc import repair_clock

    path = subject.truth[0]
    if not path.is_file():
        raise GroundTruthError("data.hdf5 is missing; every COHFACE session folder needs it beside data.avi",
                               subject=subject.id, path=path)
    try:
        with h5py.File(path, "r") as f:
            if "pulse" not in f:
                raise GroundTruthError(f"no 'pulse' dataset (found: {', '.join(sorted(f.keys())) or 'nothing'})",
                                       subject=subject.id, path=path)
            ppg = np.asarray(f["pulse"][()], dtype=np.float64).ravel()
            ts = np.asarray(f["time"][()], dtype=np.float64).ravel() if "time" in f else None
    except GroundTruthError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise GroundTruthError(f"cannot read as HDF5 with a numeric 'pulse' ({exc})", subject=subject.id,
                               path=path) from None
    if ppg.size < 2:  # non-finite samples: rppg_prep.datasets.check_truth, the rule of every loader
        raise GroundTruthError(f"too few ({ppg.size}) pulse samples", subject=subject.id, path=path)
    notes = []
    if ts is None:
        notes.append(f"data.hdf5 has no 'time'; pulse sample i taken at i / {PULSE_FS_HZ:g} s")
        return Truth(ppg=ppg, t_s=np.arange(ppg.size) / PULSE_FS_HZ, notes=tuple(notes))
    if ts.size != ppg.size or not np.all(np.isfinite(ts)):
        raise GroundTruthError(f"'time' has {ts.size} values (finite: {np.isfinite(ts).all()}) for {ppg.size} pulse "
                               "samples", subject=subject.id, path=path)
    try:
        t, n_fixed = repair_clock(ts - ts[0])
    except ValueError as exc:
        raise GroundTruthError(f"'time' {exc}", subject=subject.id, path=path) from None
    if n_fixed:
        notes.append(f"{n_fixed} repeated timestamps spread evenly")
    rate = (t.size - 1) / t[-1] if t[-1] > 0 else float("nan")
    if not abs(rate / PULSE_FS_HZ - 1.0) < 0.02:
        notes.append(f"'time' runs at {rate:.1f} Hz, not {PULSE_FS_HZ:g} Hz; samples follow 'time'")
    return Truth(ppg=ppg, t_s=t, notes=tuple(notes))
