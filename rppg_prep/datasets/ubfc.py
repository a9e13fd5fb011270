"""UBFC-rPPG loader (DATASET_1 "simple" and DATASET_2 "realistic").

Source: S. Bobbia, R. Macwan, Y. Benezeth, A. Mansouri, J. Dubois, "Unsupervised skin tissue
segmentation for remote photoplethysmography", Pattern Recognition Letters 124 (2019) 82-90;
format from the dataset's readme.

DATASET_2: ``<root>/subject<N>/vid.avi`` (or ``vid.mp4``) and ``ground_truth.txt`` with three
whitespace-separated lines, one value per video frame: line 1 finger-oximeter PPG (a.u.), line 2
oximeter HR (bpm), line 3 timestamps (s). The three lines are frame-locked: the recorder logged one
PPG sample as it grabbed each frame, so sample i belongs to frame i, and line 3 is the capture time
of frame i (``Truth.frame_locked`` and ``Truth.capture_clock``). The labels therefore pair the PPG
with the frames by index, and line 3, re-based to 0, is the frame clock of every label in seconds.
The container's timestamps are not used for the labels: the recorder captured irregularly (gaps up
to 0.75 s) while the AVI plays its frames at a constant rate, so the container clock drifts from
line 3 by up to 0.5 s within a video (``../shared/data/README.md``); it stays in ``decode/t_s``.
A sample count one less than the frame count is accepted and noted. Line 3 must be these frames'
capture times in seconds: a rate more than 20 % from the container's fps, or a drift of more than
20 % of the video's duration, fails the subject naming the file (timestamps in ms, another
recording's); so do timestamps that are not numbers or never advance (never "repaired").

DATASET_1: ``<root>/<name>/vid*.avi`` and ``gtdump.xmp``, a headerless CSV with columns time (ms),
HR (bpm), SpO2 (%), PPG (a.u.) at about 62 Hz, started with the video: a clock of its own, so the
labels resample it onto the container's frame times.

``root`` may also be one subject folder itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, natural_key, scan_subjects
from rppg_prep.errors import GroundTruthError

NAME = "ubfc"
LAYOUT = (
    "UBFC-rPPG. DATASET_2: ROOT/subject<N>/vid.avi|vid.mp4 + ground_truth.txt (line 1 PPG, line 2 HR bpm, "
    "line 3 timestamps s). DATASET_1: ROOT/<name>/vid*.avi + gtdump.xmp (CSV: time ms, HR, SpO2, PPG). "
    "ROOT may also be a single subject folder."
)
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov")

#: device HR outside this range is a dropout (the CMS50E writes values of 0-3 when it loses the finger)
HR_VALID_BPM = (30.0, 220.0)
#: device HR further than this from its 5-s running median is a jump, not physiology
HR_JUMP_BPM = 25.0


def _find_video(folder: Path) -> Path | None:
    vids = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES]
    vids.sort(key=lambda p: (p.stem != "vid", natural_key(p.name)))
    return vids[0] if vids else None


def _subject_in(folder: Path, subject_id: str) -> Subject | None:
    gt2 = folder / "ground_truth.txt"
    gt1 = folder / "gtdump.xmp"
    video = _find_video(folder)
    if gt2.exists() or (video is not None and not gt1.exists() and video.stem == "vid"):
        return Subject(NAME, subject_id, video or folder / "vid.avi", (gt2,), "DATASET_2")
    if gt1.exists():
        return Subject(NAME, subject_id, video or folder / "vid.avi", (gt1,), "DATASET_1")
    return None


def find_subjects(root: str | Path) -> list[Subject]:
    """List the subjects under ``root`` in natural order.

    Parameters
    ----------
    root : str or Path
        A UBFC-rPPG DATASET_1 or DATASET_2 folder, or a single subject folder.

    Returns
    -------
    list of Subject
        Sorted so that ``subject3`` comes before ``subject10``. A subject folder whose video or
        ground truth is missing is still listed; reading it raises an error naming the file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` does not exist or holds no subject folder.
    """
    def placeholder(folder: Path) -> Subject | None:  # files missing: building it names them
        if folder.name.lower().startswith("subject"):
            return Subject(NAME, folder.name, folder / "vid.avi", (folder / "ground_truth.txt",), "DATASET_2")
        return None

    return scan_subjects(root, what="UBFC-rPPG subject folders", layout=LAYOUT,
                         recordings=lambda f: _subject_in(f, f.name), placeholder=placeholder)


def repair_clock(t_s: np.ndarray) -> tuple[np.ndarray, int]:
    """Make a logged clock strictly increasing by spreading repeated timestamps evenly.

    The UBFC logger writes the same timestamp twice now and then (0-ms steps); sample order is
    still right. Each run of repeats is spread linearly up to the next distinct time.

    Parameters
    ----------
    t_s : ndarray of float64, shape (n,)
        Non-decreasing times in seconds.

    Returns
    -------
    t_fixed : ndarray of float64, shape (n,)
    n_repaired : int
        Number of samples whose time was moved.

    Raises
    ------
    ValueError
        If a time is not a finite number (it would be "repaired" into a made-up time), if the
        clock never advances (every time equal), or if it runs backwards.

    Examples
    --------
    >>> repair_clock(np.array([0.0, 1.0, 1.0, 2.0]))[0].tolist()
    [0.0, 1.0, 1.5, 2.0]
    """
    t_s = np.asarray(t_s, dtype=np.float64)
    bad = ~np.isfinite(t_s)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"timestamp of sample {i + 1} is not a number ({t_s[i]})")
    d = np.diff(t_s)
    if np.any(d < 0):
        i = int(np.argmax(d < 0))
        raise ValueError(f"timestamps run backwards at sample {i + 1} ({t_s[i]:.3f} s -> {t_s[i + 1]:.3f} s)")
    if t_s.size >= 2 and not np.any(d > 0):
        raise ValueError(f"the clock never advances: all {t_s.size} timestamps are equal")
    if t_s.size < 2 or np.all(d > 0):
        return t_s, 0
    first = np.concatenate([[True], d > 0])
    idx = np.flatnonzero(first)
    vals = t_s[idx]
    n = t_s.size
    if idx[-1] != n - 1:
        # trailing repeats: extrapolate with the median step
        step = float(np.median(d[d > 0])) if np.any(d > 0) else 1.0
        idx = np.append(idx, n - 1)
        vals = np.append(vals, vals[-1] + step * (n - 1 - idx[-2]))
    fixed = np.interp(np.arange(n), idx, vals)
    return fixed, int(np.sum(~first))


def mask_device_hr(hr_bpm: np.ndarray, t_s: np.ndarray) -> tuple[np.ndarray, int]:
    """Replace oximeter HR dropouts and jumps with NaN.

    A value is a dropout when it lies outside ``HR_VALID_BPM``, and a jump when it differs by more
    than ``HR_JUMP_BPM`` from the running median of the valid values within +/-2.5 s. A reading of
    127 bpm is not masked by itself: in UBFC-rPPG subject 11 the runs of 127 sit between readings of
    124-126 and agree with the PPG, so they are physiology; a stray 127 among other values is a jump.

    Parameters
    ----------
    hr_bpm : ndarray, shape (n,)
        Device HR in bpm.
    t_s : ndarray of float64, shape (n,)
        Sample times in seconds.

    Returns
    -------
    masked : ndarray of float64, shape (n,)
    n_masked : int
    """
    hr = np.asarray(hr_bpm, dtype=np.float64).copy()
    bad = (hr < HR_VALID_BPM[0]) | (hr > HR_VALID_BPM[1]) | ~np.isfinite(hr)
    hr[bad] = np.nan
    if np.any(~bad):
        lo = np.searchsorted(t_s, t_s - 2.5)
        hi = np.searchsorted(t_s, t_s + 2.5, side="right")
        med = np.array([np.nanmedian(hr[a:b]) if np.any(np.isfinite(hr[a:b])) else np.nan for a, b in zip(lo, hi)])
        jump = np.abs(hr - med) > HR_JUMP_BPM
        hr[jump] = np.nan
    n_masked = int(np.sum(~np.isfinite(hr)))
    return hr, n_masked


def _read_dataset2(subject: Subject, path: Path) -> Truth:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GroundTruthError(
            "ground-truth file is missing; every DATASET_2 subject needs ground_truth.txt beside its video",
            subject=subject.id, path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read ground truth: {exc}", subject=subject.id, path=path) from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 3:
        raise GroundTruthError(
            f"expected 3 lines (PPG, HR bpm, timestamps s), found {len(lines)}", subject=subject.id, path=path)
    rows = []
    for k, ln in enumerate(lines[:3], start=1):
        try:
            rows.append(np.array([float(v) for v in ln.replace(",", " ").split()], dtype=np.float64))
        except ValueError as exc:
            raise GroundTruthError(f"line {k} is not numeric ({exc})", subject=subject.id, path=path) from None
    ppg, hr, ts = rows
    if not (len(ppg) == len(hr) == len(ts)):
        raise GroundTruthError(
            f"lines differ in length (PPG {len(ppg)}, HR {len(hr)}, timestamps {len(ts)})",
            subject=subject.id, path=path)
    if len(ppg) < 2:  # non-finite PPG samples: rppg_prep.datasets.check_truth, the rule of every loader
        raise GroundTruthError(f"too few samples ({len(ppg)}); need at least 2", subject=subject.id, path=path)
    notes = []
    try:
        t, n_fixed = repair_clock(ts - ts[0])
    except ValueError as exc:
        raise GroundTruthError(f"line 3 (timestamps): {exc}", subject=subject.id, path=path) from None
    if n_fixed:
        notes.append(f"{n_fixed} repeated timestamps spread evenly")
    if ts[0] != 0:
        notes.append(f"timestamps start at {ts[0]:.3f} s; re-based to 0")
    hr_m, n_masked = mask_device_hr(hr, t)
    if n_masked:
        notes.append(f"{n_masked} device-HR samples masked as dropouts or jumps")
    return Truth(ppg=ppg, t_s=t, hr_bpm=hr_m, frame_locked=True, capture_clock=True, notes=tuple(notes))


def _read_dataset1(subject: Subject, path: Path) -> Truth:
    if not path.exists():
        raise GroundTruthError("ground-truth file gtdump.xmp is missing", subject=subject.id, path=path)
    try:
        data = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise GroundTruthError(f"not a numeric CSV of time ms, HR, SpO2, PPG ({exc})",
                               subject=subject.id, path=path) from None
    if data.shape[1] < 4 or data.shape[0] < 2:
        raise GroundTruthError(f"expected >= 2 rows of 4 columns, got shape {data.shape}",
                               subject=subject.id, path=path)
    notes = []
    try:
        t, n_fixed = repair_clock((data[:, 0] - data[0, 0]) / 1000.0)
    except ValueError as exc:
        raise GroundTruthError(f"column 1 (time ms): {exc}", subject=subject.id, path=path) from None
    if n_fixed:
        notes.append(f"{n_fixed} repeated timestamps spread evenly")
    hr_m, n_masked = mask_device_hr(data[:, 1], t)
    if n_masked:
        notes.append(f"{n_masked} device-HR samples masked as dropouts or jumps")
    return Truth(ppg=data[:, 3].copy(), t_s=t, hr_bpm=hr_m, frame_locked=False, notes=tuple(notes))


def read_truth(subject: Subject) -> Truth:
    """Read a subject's ground truth onto its PPG clock.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (a.u.), ``t_s`` (s, first sample at 0), masked device ``hr_bpm``.

    Raises
    ------
    GroundTruthError
        Missing file, wrong number of lines, non-numeric values, unequal line lengths, fewer than
        2 samples, or a clock with a timestamp that is not a number, that never advances (all
        equal) or that runs backwards; the message names subject and file. The build then applies
        the rule of every loader (:func:`rppg_prep.datasets.check_truth`: non-finite or flat PPG)
        and the labels check line 3 against the video's clock
        (:func:`rppg_prep.stages.labels.make_labels`: rate within 20 % of the fps, drift within 20 %
        of the duration).
    """
    path = subject.truth[0]
    if subject.fmt == "DATASET_1":
        return _read_dataset1(subject, path)
    return _read_dataset2(subject, path)
