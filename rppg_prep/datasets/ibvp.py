"""iBVP loader (RGB frames; the thermal stream is ignored).

Source: J. Joshi, Y. Cho, "iBVP Dataset: RGB-thermal rPPG dataset with high resolution signal
quality labels", Electronics 13(7):1334, 2024; format from the dataset's documentation as
summarised in ``design/prior-art.md`` §1.6.

Layout: ``<root>/p01_a/p01_a_rgb/*.bmp`` (RGB frames, 640x480, 30 fps, in file-name order),
``<root>/p01_a/p01_a_t/*.raw`` (thermal frames; tolerated, not read) and ``<root>/p01_a/p01_a_bvp.csv``
with a header row ``BVP, SQPhysMD, SQ1, SQ2, Perfusion_Value``: one row per RGB frame (the ear PPG
already resampled to 30 Hz), so sample i belongs to frame i (``frame_locked``) and is at ``i / 30`` s.
``root`` may also be one recording folder.

Signal quality: samples with ``SQ2 <= 0.3`` are unreliable (``SQ_MIN``). rPPG-Toolbox deletes those
frames before chunking, which splices the signal across time gaps; here every frame and sample stays
in place and the samples are flagged in ``Truth.quality_ok``, so the labels stage marks their frames
in ``bvp_ok`` and gives windows touching them NaN HR.

Quirks handled: columns are found by header name (case and spaces ignored); a file without a header
row is read by position (BVP = column 0, SQ2 = column 3) and noted; a file without an SQ2 column is
taken as reliable throughout (noted); non-finite BVP samples are flagged unreliable and bridged by
linear interpolation (noted). A recording folder whose folder/file names do not follow
``<name>_rgb`` / ``<name>_bvp.csv`` but holds exactly one ``*_rgb`` folder / ``*_bvp.csv`` uses those.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, natural_key, scan_subjects
from rppg_prep.errors import GroundTruthError, VideoDecodeError

NAME = "ibvp"
VERSION = "1"
#: RGB frame rate and BVP sample rate, Hz
FPS = 30.0
#: a sample is reliable when its SQ2 is above this (the dataset's own threshold)
SQ_MIN = 0.3
LAYOUT = (
    "iBVP. ROOT/<p01_a>/<p01_a>_rgb/*.bmp (640x480, 30 fps, name order) + <p01_a>_bvp.csv (header BVP, "
    "SQPhysMD, SQ1, SQ2, Perfusion_Value; one row per frame, 30 Hz; SQ2 <= 0.3 = unreliable); "
    "<p01_a>_t/*.raw thermal is ignored. ROOT may also be one recording folder."
)
_REC = re.compile(r"^p\d+_[a-z]+$", re.IGNORECASE)
_FRAME_SUFFIX = ".bmp"


def _pick(folder: Path, exact: Path, pattern: str, want_dir: bool) -> Path:
    """``exact`` if it exists, else the only match of ``pattern`` in ``folder``, else ``exact``."""
    if exact.exists():
        return exact
    cands = [p for p in folder.glob(pattern) if p.is_dir() == want_dir]
    return cands[0] if len(cands) == 1 else exact


def _recording_in(folder: Path) -> Subject | None:
    sid = folder.name
    rgb = _pick(folder, folder / f"{sid}_rgb", "*_rgb", True)
    bvp = _pick(folder, folder / f"{sid}_bvp.csv", "*_bvp.csv", False)
    if rgb.is_dir() or bvp.is_file() or _REC.match(sid):
        return Subject(NAME, sid, rgb, (bvp,), "rgb")
    return None


def find_subjects(root: str | Path) -> list[Subject]:
    """List the iBVP recordings under ``root`` in natural order.

    Parameters
    ----------
    root : str or Path
        The iBVP folder holding ``p<NN>_<x>`` recording folders, or one recording folder.

    Returns
    -------
    list of Subject
        Ids are the recording names (``"p01_a"``); ``video`` is the ``*_rgb`` frame folder, ``truth``
        the ``*_bvp.csv``. A recording whose frames or CSV are missing is still listed; building it
        raises an error naming the missing file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` does not exist or holds no recording folder.
    """
    def complete(folder: Path) -> Subject | None:
        sid = folder.name
        if (folder / f"{sid}_rgb").is_dir() or (folder / f"{sid}_bvp.csv").is_file():
            return _recording_in(folder)
        return None

    return scan_subjects(root, what="iBVP recording folders", layout=LAYOUT, recordings=complete,
                         placeholder=_recording_in, placeholder_root=True)


def open_frames(subject: Subject):
    """Open the RGB BMP frames of a recording, in natural file-name order, at ``i / 30`` s.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    rppg_prep.sources.ImageSequenceSource
        ``info.fps`` = 30; frames are RGB uint8 (480, 640, 3) in the real dataset.

    Raises
    ------
    VideoDecodeError
        Frame folder missing or without ``.bmp`` files, or an unreadable first frame; while
        streaming, an unreadable frame (the message names that file).
    """
    from rppg_prep.sources import ImageSequenceSource

    folder = subject.video
    if not folder.is_dir():
        raise VideoDecodeError("RGB frame folder is missing", subject=subject.id, path=folder)
    files = sorted((p for p in folder.iterdir() if p.suffix.lower() == _FRAME_SUFFIX and p.is_file()),
                   key=lambda p: natural_key(p.name))
    if not files:
        raise VideoDecodeError("RGB frame folder holds no .bmp files", subject=subject.id, path=folder)
    return ImageSequenceSource(files, fps=FPS, subject=subject.id, folder=folder)


def _number(cell: str) -> float:
    cell = cell.strip()
    return float(cell) if cell else np.nan


def read_truth(subject: Subject) -> Truth:
    """Read the BVP column and its SQ2 quality flags; one sample per frame at ``i / 30`` s.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (BVP, a.u., float64 (n,)), ``t_s = arange(n) / 30`` (s), ``hr_bpm=None`` (the CSV
        has no HR), ``frame_locked=True``, ``quality_ok`` (bool (n,), ``SQ2 > 0.3`` and finite BVP).

    Raises
    ------
    GroundTruthError
        Missing or unreadable CSV, a header without a BVP column, non-numeric cells, rows of
        unequal length, fewer than 2 rows or fewer than 2 finite BVP samples; the message names
        subject and file.
    """
    path = subject.truth[0]
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    except FileNotFoundError:
        raise GroundTruthError("BVP file is missing; every iBVP recording needs <name>_bvp.csv beside its "
                               "<name>_rgb folder", subject=subject.id, path=path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise GroundTruthError(f"cannot read the BVP CSV ({exc})", subject=subject.id, path=path) from None
    if not rows:
        raise GroundTruthError("BVP CSV is empty", subject=subject.id, path=path)
    notes = []
    header = [c.strip().lower() for c in rows[0]]
    try:
        [_number(c) for c in rows[0]]
        has_header = False
    except ValueError:
        has_header = True
    if has_header:
        if "bvp" not in header:
            raise GroundTruthError(f"header has no BVP column (columns: {', '.join(rows[0])})",
                                   subject=subject.id, path=path)
        i_bvp, i_sq = header.index("bvp"), (header.index("sq2") if "sq2" in header else None)
        body, first_line = rows[1:], 2
    else:
        i_bvp, i_sq = 0, (3 if len(rows[0]) > 3 else None)
        body, first_line = rows, 1
        notes.append("no header row; BVP read from column 1" + (", SQ2 from column 4" if i_sq is not None else ""))
    width = len(rows[0])
    data = np.empty((len(body), width), dtype=np.float64)
    for k, row in enumerate(body):
        if len(row) != width:
            raise GroundTruthError(f"line {k + first_line} has {len(row)} columns, expected {width}",
                                   subject=subject.id, path=path)
        try:
            data[k] = [_number(c) for c in row]
        except ValueError as exc:
            raise GroundTruthError(f"line {k + first_line} is not numeric ({exc})", subject=subject.id,
                                   path=path) from None
    if data.shape[0] < 2:
        raise GroundTruthError(f"{data.shape[0]} BVP sample(s); need at least 2", subject=subject.id, path=path)
    ppg = data[:, i_bvp].copy()
    finite = np.isfinite(ppg)
    if finite.sum() < 2:
        raise GroundTruthError("fewer than 2 finite BVP samples", subject=subject.id, path=path)
    if i_sq is None:
        quality = np.ones(ppg.size, dtype=bool)
        notes.append("no SQ2 column; every sample taken as reliable")
    else:
        sq = data[:, i_sq]
        quality = np.isfinite(sq) & (sq > SQ_MIN)
    if not finite.all():
        idx = np.arange(ppg.size)
        ppg[~finite] = np.interp(idx[~finite], idx[finite], ppg[finite])
        quality &= finite
        notes.append(f"{int((~finite).sum())} non-finite BVP sample(s) bridged and flagged unreliable")
    if not quality.all():
        notes.append(f"{int((~quality).sum())} of {ppg.size} BVP samples unreliable (SQ2 <= {SQ_MIN:g})")
    t = np.arange(ppg.size, dtype=np.float64) / FPS
    return Truth(ppg=ppg, t_s=t, hr_bpm=None, frame_locked=True, notes=tuple(notes), quality_ok=quality)
