"""MMSE-HR loader: JPEG frame folders at 25 fps and 1000-Hz physiology text files.

Source: S. Tulyakov, X. Alameda-Pineda, E. Ricci, L. Yin, J. F. Cohn, N. Sebe, "Self-adaptive matrix
completion for heart rate estimation from face videos under realistic conditions", CVPR 2016; a
subset of the BP4D+ corpus of Z. Zhang, J. M. Girard, Y. Wu, X. Zhang, P. Liu, U. Ciftci, S. Canavan,
M. Reale, A. Horowitz, H. Yang, J. F. Cohn, Q. Ji, L. Yin, "Multimodal spontaneous emotion corpus for
human behavior analysis", CVPR 2016. Format from design/models.md section 6.3 (the release layout as
several independent third-party scripts read it; the dataset's own documentation was not available).

Layout, each frame tree paired with its physiology tree under ``root``:

* ``first 10 subjects 2D/<Subj>/<Task>/NNN.jpg`` + ``first 10 subjects Phydata released/Phydata/<Subj>/<Task>/``
  (also spelled ``first10subjects_2D`` + ``first10subjects_Phydatareleased/Phydata``);
* ``T10_T11_30Subjects/<Subj>/<T10|T11>/NNN.jpg`` + ``T10_T11_30PhyBPHRData/<Subj>/<Task>/``.

Subjects are ``F0xx`` / ``M0xx``; the subject id here is ``<Subj>_<Task>`` (``F013_T1``). Physiology
files hold one value per line, no header and no timestamps, sampled at 1000 Hz and started with the
video (25 fps), so sample i is at ``i / 1000`` s and frame k at ``k / 25`` s:

* ``BP_mmHg.txt``: the continuous blood-pressure waveform (mmHg), used as the pulse label as the
  rPPG-Toolbox does for BP4D+. Arterial pressure rises with blood volume, so its polarity is that
  of a PPG; it is not inverted. Its DC (~80 mmHg) is left in place.
* ``Pulse Rate_BPM.txt``: the device's HR (bpm, 1000 Hz) -> ``Truth.hr_bpm``; values outside
  30-220 bpm are masked as dropouts. Optional: without it there is no device HR (noted).

Clock: the physiology has its own 1000-Hz clock, so the labels resample it onto the frame times by
time (not frame-locked).

Quirks handled:

* Frames are sorted by the number in their name (``2.jpg`` before ``10.jpg``); when every name
  holds a number, frame k is at ``(N_k - N_0) / 25`` s, so a gap in the numbering (a lost frame)
  keeps the later frames on the physiology clock.
* Physiology that ends more than one frame before the last frame is refused here, naming
  ``BP_mmHg.txt`` (the labels stage would refuse it too, less specifically).
* Frames are said to be 1040x1392 [UNVERIFIED]; nothing here depends on the size.
* A subject/task present in two trees (a copy under both spellings) is listed once, from the
  first tree in the order above.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, check_subjects, natural_key
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

NAME = "mmse-hr"
VERSION = "1"
LAYOUT = (
    "MMSE-HR. ROOT/'first 10 subjects 2D'/<Subj>/<Task>/NNN.jpg + ROOT/'first 10 subjects Phydata released'/"
    "Phydata/<Subj>/<Task>/BP_mmHg.txt and 'Pulse Rate_BPM.txt' (one value per line, 1000 Hz); also "
    "first10subjects_2D + first10subjects_Phydatareleased/Phydata, and T10_T11_30Subjects/<Subj>/<T10|T11>/ + "
    "T10_T11_30PhyBPHRData/<Subj>/<Task>/. Video 25 fps, started with the physiology. Subject id <Subj>_<Task>."
)

#: frame rate of the JPEG sequences, Hz
FPS = 25.0
#: sample rate of every physiology file, Hz
PHYS_HZ = 1000.0
#: device HR outside this range is a dropout
HR_VALID_BPM = (30.0, 220.0)
BP_FILE = "BP_mmHg.txt"
HR_FILE = "Pulse Rate_BPM.txt"
FRAME_SUFFIXES = (".jpg", ".jpeg")

#: (tag, frame tree, physiology trees tried in order) relative to the root
TREES = (
    ("first10", "first 10 subjects 2D",
     ("first 10 subjects Phydata released/Phydata", "first 10 subjects Phydata released")),
    ("first10", "first10subjects_2D", ("first10subjects_Phydatareleased/Phydata", "first10subjects_Phydatareleased")),
    ("T10_T11", "T10_T11_30Subjects", ("T10_T11_30PhyBPHRData",)),
)


def _dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: natural_key(p.name))


def _named(folder: Path, name: str) -> Path:
    """``folder/name``, matching the name case-insensitively when the folder exists."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.lower() == name.lower():
                return p
    return folder / name


def _phys_tree(root: Path, candidates: tuple[str, ...]) -> Path | None:
    for rel in candidates:
        if (root / rel).is_dir():
            return root / rel
    return None


def find_subjects(root: str | Path) -> list[Subject]:
    """List the recordings (subject x task) under ``root``.

    Parameters
    ----------
    root : str or Path
        The folder holding the MMSE-HR frame and physiology trees (see ``LAYOUT``).

    Returns
    -------
    list of Subject
        Id ``<Subj>_<Task>``, ``video`` the task's frame folder, ``truth`` = (``BP_mmHg.txt``,
        ``Pulse Rate_BPM.txt``), ``fmt`` ``"first10"`` or ``"T10_T11"``. Ordered by tree, then
        subject and task in natural order. A task found in only one of the two trees is still
        listed; building it raises an error naming the missing folder or file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` is not a folder or holds no MMSE-HR tree with a task folder in it.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root does not exist or is not a folder. {LAYOUT}", path=root)
    subjects: list[Subject] = []
    seen: set[str] = set()
    for tag, frames_rel, phys_rels in TREES:
        frames_tree = root / frames_rel
        phys_tree = _phys_tree(root, phys_rels)
        if not frames_tree.is_dir() and phys_tree is None:
            continue
        phys_tree = phys_tree or root / phys_rels[0]
        tasks: dict[tuple[str, str], None] = {}
        for tree in (frames_tree, phys_tree):
            for subj in _dirs(tree):
                for task in _dirs(subj):
                    tasks[(subj.name, task.name)] = None
        for subj, task in sorted(tasks, key=lambda st: (natural_key(st[0]), natural_key(st[1]))):
            sid = f"{subj}_{task}"
            if sid in seen:
                continue
            seen.add(sid)
            phys = phys_tree / subj / task
            subjects.append(Subject(NAME, sid, frames_tree / subj / task,
                                    (_named(phys, BP_FILE), _named(phys, HR_FILE)), tag))
    if not subjects:
        raise DatasetLayoutError(f"no MMSE-HR task folders found. {LAYOUT}", path=root)
    return check_subjects(subjects, root)


def frame_files(folder: Path) -> list[Path]:
    """The JPEG frames of one task folder, sorted by the number in their names.

    Returns
    -------
    list of Path
        Empty when the folder is missing or holds no JPEG.
    """
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def frame_times(files: list[Path]) -> np.ndarray:
    """Frame times in seconds (float64, shape (T,)), first frame at 0.

    ``(N_k - N_0) / FPS`` from the last number in each file name when every name has one and the
    numbers increase, so a gap in the numbering is a gap in time; ``k / FPS`` otherwise.
    """
    nums = []
    for f in files:
        found = re.findall(r"\d+", f.stem)
        if not found:
            return np.arange(len(files)) / FPS
        nums.append(int(found[-1]))
    n = np.asarray(nums, dtype=np.int64)
    if n.size and np.all(np.diff(n) > 0):
        return (n - n[0]) / FPS
    return np.arange(len(files)) / FPS


def open_frames(subject: Subject):
    """Open the JPEG sequence of ``subject``.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    rppg_prep.sources.ImageSequenceSource
        RGB uint8 frames at 25 fps, times from :func:`frame_times`.

    Raises
    ------
    VideoDecodeError
        If the frame folder is missing or holds no JPEG, or a frame cannot be read (named).
    """
    from rppg_prep.sources import ImageSequenceSource

    folder = Path(subject.video)
    if not folder.is_dir():
        raise VideoDecodeError("frame folder is missing", subject=subject.id, path=folder)
    files = frame_files(folder)
    if not files:
        raise VideoDecodeError("frame folder holds no .jpg frames", subject=subject.id, path=folder)
    return ImageSequenceSource(files, fps=FPS, t_s=frame_times(files), subject=subject.id, folder=folder)


def read_column(path: Path, subject: Subject, what: str, *, allow_nan: bool = False) -> np.ndarray:
    """Read a one-value-per-line text file (no header) as float64, shape (n,).

    Parameters
    ----------
    path : Path
    subject : Subject
        Named in errors.
    what : str
        What the file holds, for the messages.
    allow_nan : bool
        Accept ``nan`` entries (kept as NaN).

    Raises
    ------
    GroundTruthError
        Missing or unreadable file, a line that is not one number (its line number is given), a
        non-finite value when not allowed, or fewer than 2 values.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise GroundTruthError(f"{what} file {path.name} is missing", subject=subject.id, path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read {what}: {exc}", subject=subject.id, path=path) from None
    values = []
    for k, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        try:
            v = float(s)
        except ValueError:
            raise GroundTruthError(f"line {k} is not a number ({s[:40]!r}); expected one {what} value per line",
                                   subject=subject.id, path=path) from None
        if not (np.isfinite(v) or (allow_nan and np.isnan(v))):
            raise GroundTruthError(f"line {k} is not a finite number ({s[:40]!r})", subject=subject.id, path=path)
        values.append(v)
    if len(values) < 2:
        raise GroundTruthError(f"{what} file has {len(values)} value(s); at least 2 needed",
                               subject=subject.id, path=path)
    return np.asarray(values, dtype=np.float64)


def read_truth(subject: Subject) -> Truth:
    """Read the blood-pressure waveform and device HR of ``subject`` onto the 1000-Hz clock.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` = BP waveform (mmHg, float64, shape (n,)), ``t_s`` = ``i / 1000`` s (0 = first
        frame), ``hr_bpm`` = device HR (bpm, shape (n,), NaN = dropout or not recorded) or None
        when ``Pulse Rate_BPM.txt`` is absent.

    Raises
    ------
    GroundTruthError
        ``BP_mmHg.txt`` missing, unreadable, non-numeric or ending more than one frame before the
        last frame; ``Pulse Rate_BPM.txt`` present but non-numeric. The message names subject and
        file.
    """
    bp_path, hr_path = subject.truth[0], subject.truth[1]
    # nan samples: the rule of every loader (rppg_prep.datasets.check_truth) bridges and flags or fails them
    bp = read_column(bp_path, subject, "blood-pressure waveform (mmHg)", allow_nan=True)
    t = np.arange(bp.size) / PHYS_HZ
    notes: list[str] = []
    files = frame_files(Path(subject.video))
    if files:
        t_last = float(frame_times(files)[-1])
        if t[-1] < t_last - 1.0 / FPS - 1e-9:
            raise GroundTruthError(
                f"physiology is shorter than the video: {bp.size} samples at {PHYS_HZ:.0f} Hz end at {t[-1]:.3f} s, "
                f"the last of {len(files)} frames is at {t_last:.3f} s ({FPS:.0f} fps)",
                subject=subject.id, path=bp_path)
    hr = None
    if hr_path.exists():
        raw = read_column(hr_path, subject, "pulse rate (bpm)", allow_nan=True)
        raw[(raw < HR_VALID_BPM[0]) | (raw > HR_VALID_BPM[1])] = np.nan
        n_bad = int(np.sum(np.isnan(raw)))
        if n_bad:
            notes.append(f"{n_bad} device-HR samples outside {HR_VALID_BPM[0]:.0f}-{HR_VALID_BPM[1]:.0f} bpm masked")
        if raw.size == bp.size:
            hr = raw
        else:
            notes.append(f"{hr_path.name} has {raw.size} samples, {bp_path.name} {bp.size}; "
                         "device HR is NaN where it has no sample")
            hr = np.full(bp.size, np.nan)
            m = min(raw.size, bp.size)
            hr[:m] = raw[:m]
    else:
        notes.append(f"{hr_path.name} is missing: no device HR")
    return Truth(ppg=bp, t_s=t, hr_bpm=hr, frame_locked=False, notes=tuple(notes))
