"""VIPL-HR (V1) loader: face-cropped AVIs with logged frame times, 60-Hz BVP and per-second HR.

Source: X. Niu, H. Han, S. Shan, X. Chen, "VIPL-HR: A multi-modal database for pulse estimation from
less-constrained face video", ACCV 2018; X. Niu, S. Shan, H. Han, X. Chen, "RhythmNet: End-to-end
heart rate estimation from face via spatial-temporal representation", IEEE TIP 29 (2020). Format
from design/models.md section 6.6 (a file-verified third-party description and pyVHR's loader; the
dataset's own readme was not available).

Layout: ``<root>/data/p<N>/v<M>/source<K>/`` (``root`` may also be the ``data`` folder), N = 1..107,
M = 1..9 (second takes ``v<M>-2`` are accepted), K = 1..4, each holding

* ``video.avi``: already face-cropped. The container always says 25 fps, whatever the camera did.
* ``time.txt`` (sources 1, 3, 4): one time per frame, milliseconds, one per line. This is the
  frame clock: it is passed to :class:`~rppg_prep.sources.VideoSource` (``t_s=``) and
  re-based so the first frame is at 0. Repeated times are spread evenly (noted). Its line count
  must equal the video's frame count. Source 2 (phone) has none: frames are then at
  ``i / container fps`` and a note says so; VIPL-HR's containers say 25 fps while the phone is
  described as 30 fps, so source-2 frame times (and HR labels) may be scaled by 25/30 [UNVERIFIED].
  The notes of ``read_truth`` make that visible (the derived wave rate and the gt_HR length then
  disagree with the video's duration).
* ``wave.csv``: header ``Wave``, then one BVP sample per line (CMS60C oximeter, no timestamps).
  models.md gives ~60 Hz; pyVHR assumes 50 Hz. Neither is trusted: the rate is derived as
  ``n_wave / video duration`` (duration = last frame time + one median frame step) and noted,
  i.e. the wave is taken to start and stop with the video, so sample i is at ``i / fs``. This is
  right whichever nominal rate is true as long as the recording spans the video; a fixed rate would
  drift off the video by 1 s per 60 s if it were wrong by 1.7%. A derived rate outside 40-80 Hz
  means the wave does not span the video (truncated file, wrong time.txt) and is refused.
  Whether sources 1/3/4, filmed together, carry identical waves trimmed to each camera is
  [UNVERIFIED].
* ``gt_HR.csv``: header ``HR``, one integer per second -> ``Truth.hr_bpm``. Value k summarises
  second [k, k+1) and is placed at ``t = k + 0.5`` s, then linearly interpolated onto the wave
  clock; samples after the last covered second are NaN. Dropouts (outside 30-220 bpm) and jumps
  are masked as for UBFC-rPPG.
* ``gt_SpO2.csv``: not read.

Source 4 is the RealSense NIR camera. It is listed with ``fmt="NIR"`` (sources 1-3: ``"RGB"``) so
users can filter it out; its grey frames are decoded by OpenCV into three equal channels, which the
face stage (MediaPipe, RGB input) accepts, but colour-based rPPG methods see R = G = B.

Subject id ``p<N>_v<M>_source<K>`` (``p1_v1_source1``).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, check_subjects, natural_key
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

NAME = "vipl-hr"
VERSION = "1"
LAYOUT = (
    "VIPL-HR. ROOT/data/p<N>/v<M>/source<K>/ (ROOT may be data/ itself) with video.avi (face-cropped; container "
    "says 25 fps), time.txt (per-frame times in ms; sources 1, 3, 4), wave.csv (header Wave, BVP ~60 Hz), "
    "gt_HR.csv (header HR, one value per second), gt_SpO2.csv. source4 is NIR (fmt=NIR). Id p<N>_v<M>_source<K>."
)

VIDEO_FILE, TIME_FILE, WAVE_FILE, HR_FILE = "video.avi", "time.txt", "wave.csv", "gt_HR.csv"
#: nominal rate of the CMS60C oximeter's waveform (models.md 6.6), Hz
WAVE_NOMINAL_HZ = 60.0
#: a derived wave rate outside this range means wave.csv does not span the video
WAVE_RATE_RANGE_HZ = (40.0, 80.0)
#: the NIR camera
NIR_SOURCES = {"source4"}

_P, _V, _S = re.compile(r"p\d+$"), re.compile(r"v\d+(-\d+)?$"), re.compile(r"source\d+$")


def _dirs(folder: Path, pattern: re.Pattern) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and pattern.match(p.name)),
                  key=lambda p: natural_key(p.name))


def find_subjects(root: str | Path) -> list[Subject]:
    """List every ``p<N>/v<M>/source<K>`` recording under ``root``.

    Parameters
    ----------
    root : str or Path
        The VIPL-HR folder holding ``data/``, or ``data/`` itself.

    Returns
    -------
    list of Subject
        In natural order of person, scenario and source (``p2`` before ``p10``); ``video`` is
        ``video.avi``, ``truth`` = (``wave.csv``, ``gt_HR.csv``, ``time.txt``) whether present or
        not, ``fmt`` ``"NIR"`` for source4 and ``"RGB"`` otherwise. A source folder with missing
        files is listed; building it raises an error naming the missing file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` is not a folder or holds no ``p<N>/v<M>/source<K>`` folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root does not exist or is not a folder. {LAYOUT}", path=root)
    base = root / "data" if (root / "data").is_dir() else root
    subjects = []
    for p in _dirs(base, _P):
        for v in _dirs(p, _V):
            for s in _dirs(v, _S):
                subjects.append(Subject(NAME, f"{p.name}_{v.name}_{s.name}", s / VIDEO_FILE,
                                        (s / WAVE_FILE, s / HR_FILE, s / TIME_FILE),
                                        "NIR" if s.name in NIR_SOURCES else "RGB"))
    if not subjects:
        raise DatasetLayoutError(f"no VIPL-HR p<N>/v<M>/source<K> folders found. {LAYOUT}", path=root)
    return check_subjects(subjects, root)


def _time_path(subject: Subject) -> Path:
    return Path(subject.video).with_name(TIME_FILE)


def read_frame_times(path: Path) -> tuple[np.ndarray, list[str]]:
    """Parse a ``time.txt``: one frame time in ms per line.

    Parameters
    ----------
    path : Path

    Returns
    -------
    t_s : ndarray of float64, shape (T,)
        Seconds, first frame at 0, strictly increasing.
    notes : list of str

    Raises
    ------
    ValueError
        Non-numeric line (its number given), fewer than 2 times, or times that run backwards.
    OSError
        If the file cannot be read.
    """
    from rppg_prep.datasets.ubfc import repair_clock

    values = []
    for k, line in enumerate(path.read_text().splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        try:
            v = float(s)
        except ValueError:
            raise ValueError(f"line {k} is not a time in ms ({s[:40]!r})") from None
        if not np.isfinite(v):
            raise ValueError(f"line {k} is not a finite time ({s[:40]!r})")
        values.append(v)
    if len(values) < 2:
        raise ValueError(f"{len(values)} frame time(s); at least 2 needed")
    ms = np.asarray(values, dtype=np.float64)
    notes = []
    t, n_fixed = repair_clock((ms - ms[0]) / 1000.0)
    if n_fixed:
        notes.append(f"{path.name}: {n_fixed} repeated frame times spread evenly")
    return t, notes


def frame_clock_files(subject: Subject) -> tuple[Path, ...]:
    """``time.txt`` when present: the frame clock, hashed into the decode node's key."""
    tpath = subject.video.parent / TIME_FILE
    return (tpath,) if tpath.exists() else ()


def open_frames(subject: Subject):
    """Open ``video.avi`` on the clock of its ``time.txt`` (the container's 25 fps otherwise).

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    rppg_prep.sources.VideoSource
        With ``t_s`` from ``time.txt`` when present; its ``info.fps`` is then the mean rate of
        those times (the face tracker's smoothing is in frames per second), not the container's.

    Raises
    ------
    VideoDecodeError
        Missing or unreadable video; ``time.txt`` unreadable, non-numeric, running backwards, or
        holding more or fewer times than the container has frames (names ``time.txt``).
    """
    from rppg_prep.sources import VideoSource

    tpath = _time_path(subject)
    t = None
    if tpath.exists():
        try:
            t, _ = read_frame_times(tpath)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise VideoDecodeError(f"bad frame-time file: {exc}", subject=subject.id, path=tpath) from None
    src = VideoSource(subject.video, subject=subject.id, t_s=t)
    if t is not None:
        n = src.info.n_frames
        if n > 0 and len(t) != n:
            raise VideoDecodeError(
                f"{tpath.name} holds {len(t)} frame times but {Path(subject.video).name} has {n} frames; "
                "time.txt must give one time (ms) per frame", subject=subject.id, path=tpath)
        src.info = replace(src.info, fps=(len(t) - 1) / float(t[-1] - t[0]))
    return src


def _read_csv_column(path: Path, header: str, subject: Subject, what: str, *,
                     allow_nan: bool = False) -> tuple[np.ndarray, list[str]]:
    """One-column CSV with a header line; returns float64 values and notes (``nan`` entries kept if ``allow_nan``)."""
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise GroundTruthError(f"{what} file {path.name} is missing", subject=subject.id, path=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GroundTruthError(f"cannot read {what}: {exc}", subject=subject.id, path=path) from None
    notes: list[str] = []
    rows = [(k, ln.strip()) for k, ln in enumerate(lines, start=1) if ln.strip()]
    if rows:
        first = rows[0][1].split(",")[0].strip()
        try:
            float(first)
            notes.append(f"{path.name} has no {header!r} header line")
        except ValueError:
            if first.lower() != header.lower():
                raise GroundTruthError(f"header is {rows[0][1][:40]!r}, expected {header!r}",
                                       subject=subject.id, path=path) from None
            rows = rows[1:]
    values = []
    for k, s in rows:
        try:
            v = float(s.split(",")[0])
        except ValueError:
            raise GroundTruthError(f"line {k} is not a number ({s[:40]!r}); expected one {what} value per line",
                                   subject=subject.id, path=path) from None
        if not (np.isfinite(v) or (allow_nan and np.isnan(v))):
            raise GroundTruthError(f"line {k} is not a finite number ({s[:40]!r})", subject=subject.id, path=path)
        values.append(v)
    return np.asarray(values, dtype=np.float64), notes


def _video_duration(subject: Subject) -> tuple[float, list[str]]:
    """Seconds spanned by the video's frames (last frame time + one frame step), and notes."""
    tpath = _time_path(subject)
    if tpath.exists():
        try:
            t, notes = read_frame_times(tpath)
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise GroundTruthError(f"bad frame-time file: {exc}", subject=subject.id, path=tpath) from None
        return float(t[-1] + np.median(np.diff(t))), notes
    from rppg_prep.sources import probe

    info = probe(subject.video, subject=subject.id)
    if info.n_frames < 2:
        raise VideoDecodeError(f"the container declares {info.n_frames} frames", subject=subject.id,
                               path=subject.video)
    return info.n_frames / info.fps, [
        f"no {TIME_FILE}: frame times from the container's {info.fps:g} fps (VIPL-HR containers say 25 fps "
        "whatever the camera's rate)"]


def read_truth(subject: Subject) -> Truth:
    """Read ``wave.csv`` (BVP) and ``gt_HR.csv`` onto a clock that spans the video.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg``: the wave (a.u., float64, shape (n,)); ``t_s``: ``i / fs`` with ``fs = n / video
        duration`` (s, 0 = first frame); ``hr_bpm``: gt_HR placed at ``k + 0.5`` s and
        interpolated onto ``t_s`` (bpm, NaN = dropout or past the last second), or None when
        ``gt_HR.csv`` is absent. ``notes`` give the derived wave rate.

    Raises
    ------
    GroundTruthError
        ``wave.csv`` missing, unreadable, non-numeric, with fewer than 2 samples, or giving a rate
        outside 40-80 Hz over the video (it does not span the video); ``gt_HR.csv`` present but
        non-numeric; ``time.txt`` unreadable. Messages name subject and file.
    VideoDecodeError
        Without ``time.txt``, if the video cannot be probed for its duration.
    """
    from rppg_prep.datasets.ubfc import mask_device_hr

    wave_path, hr_path = subject.truth[0], subject.truth[1]
    # nan samples: the rule of every loader (rppg_prep.datasets.check_truth) bridges and flags or fails them
    wave, notes = _read_csv_column(wave_path, "Wave", subject, "BVP", allow_nan=True)
    if wave.size < 2:
        raise GroundTruthError(f"{wave.size} BVP sample(s); at least 2 needed", subject=subject.id, path=wave_path)
    duration, more = _video_duration(subject)
    notes += more
    fs = wave.size / duration
    lo, hi = WAVE_RATE_RANGE_HZ
    if not lo <= fs <= hi:
        raise GroundTruthError(
            f"{wave.size} BVP samples over the video's {duration:.2f} s is {fs:.1f} Hz; the oximeter records "
            f"~{WAVE_NOMINAL_HZ:.0f} Hz, so {wave_path.name} does not span the video (truncated file, or a "
            f"frame clock that is off)", subject=subject.id, path=wave_path)
    notes.append(f"{wave_path.name}: {wave.size} samples over the video's {duration:.2f} s -> {fs:.2f} Hz "
                 f"(nominal ~{WAVE_NOMINAL_HZ:.0f} Hz)")
    t = np.arange(wave.size) / fs
    hr = None
    if hr_path.exists():
        per_s, more = _read_csv_column(hr_path, "HR", subject, "HR (bpm)")
        notes += more
        if per_s.size >= 1:
            if abs(per_s.size - duration) > max(2.0, 0.1 * duration):
                notes.append(f"{hr_path.name} has {per_s.size} one-second values for a {duration:.1f}-s video")
            t_hr = np.arange(per_s.size) + 0.5
            masked, n_masked = mask_device_hr(per_s, t_hr)
            if n_masked:
                notes.append(f"{n_masked} of {per_s.size} gt_HR values masked as dropouts or jumps")
            ok = np.isfinite(masked)
            hr = np.full(t.size, np.nan)
            if ok.any():
                hr = np.interp(t, t_hr[ok], masked[ok])
                k = np.clip(np.floor(t).astype(np.int64), 0, per_s.size - 1)
                hr[~ok[k] | (t >= per_s.size)] = np.nan
        else:
            notes.append(f"{hr_path.name} is empty: no device HR")
    else:
        notes.append(f"{hr_path.name} is missing: no device HR")
    return Truth(ppg=wave, t_s=t, hr_bpm=hr, frame_locked=False, notes=tuple(notes))
