"""MAHNOB-HCI (HCI-Tagging) loader: frontal colour video and ECG-derived beat labels.

Source: M. Soleymani, J. Lichtenauer, T. Pun, M. Pantic, "A multimodal database for affect
recognition and implicit tagging", IEEE Trans. Affective Computing 3(1), 2012, 42-55; file layout
from ``design/models.md`` §6.4 (third-party loaders and docs; pyVHR read).

Layout: ``<root>/Sessions/<N>/`` (``root`` may also be the ``Sessions`` folder or one session
folder). Each session holds ``session.xml`` (``<session ... vidRate="60.9708">`` with a
``<subject id=".."/>`` child), six AVIs of which the frontal **colour** camera is
``P<subj>-Rec1-<date>_C1 trigger _C_Section_<k>.avi`` (literal spaces; 780x580, container 61 fps;
the other five are grey side views and are never picked), and the physiology
``Part_<subj>_<S|N>_Trial<k>_emotion.bdf``: BioSemi 24-bit BDF at 256 Hz, 32 EEG channels,
``EXG1``..``EXG8`` (EXG1-3 are the ECG electrodes), ``GSR1/2``, ``Erg1/2``, ``Resp``, ``Temp``
and ``Status``.

Quirks handled:

* **Ground truth is ECG, not PPG.** R-peaks are detected in ``EXG2`` (the lead pyVHR reads) with
  the QRS detector of J. Pan and W. J. Tompkins, "A real-time QRS detection algorithm", IEEE TBME
  32(3), 1985, run offline (see :func:`detect_r_peaks`). ``Truth.hr_bpm`` is the instantaneous
  HR of each R-R interval (60 / RR) on the ECG clock. ``Truth.ppg`` -- stored by the labels stage
  as ``bvp`` -- is a **beat-phase surrogate, not a blood-volume-pulse waveform**:
  ``cos(2 pi phase)`` with a phase that is an integer at every R-peak and advances linearly by
  one cycle per R-R interval. Its peaks sit on the R-peaks, i.e. a pulse-transit time (~0.2-0.3 s)
  ahead of where a facial PPG peaks, and it has no PPG shape. It is fit for HR labels only, not as
  a waveform target for models trained to regress a PPG.
* **Video start = first rising edge of the Status trigger.** The low 16 bits of ``Status`` carry
  trigger pulses; the first rising edge (30.000 s into the real files) marks the first video
  frame and becomes t = 0. The edge is read from the file, never assumed to be 30 s.
* **Frame clock:** frames follow the container's timestamps (61 fps). ``session.xml`` says
  ``vidRate="60.9708"``; when the two differ, the drift over the video is stated in the notes.
* R-R intervals outside 30-220 bpm or more than 35 % away from the median of their 9 neighbours
  (missed or extra beats) are flagged in ``Truth.quality_ok`` and their HR is NaN. The truth spans
  the first to the last R-peak.
* Sessions are kept as listed even when a file is missing; building them names the missing file.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, natural_key, scan_subjects
from rppg_prep.errors import GroundTruthError

NAME = "mahnob-hci"
VERSION = "1"
#: ECG lead read from the BDF
ECG_CHANNEL = "EXG2"
STATUS_CHANNEL = "Status"
#: R-R intervals outside this HR range are flagged unreliable
HR_VALID_BPM = (30.0, 220.0)
#: an R-R interval further than this fraction from the median of its neighbours is flagged
RR_JUMP_FRACTION = 0.35
LAYOUT = (
    "MAHNOB-HCI. ROOT/Sessions/<N>/ (or ROOT = Sessions, or one session folder) with session.xml "
    "(vidRate, <subject id>), the frontal colour video 'P<subj>-Rec1-<date>_C1 trigger _C_Section_<k>.avi' "
    "(the grey side-view AVIs are ignored) and Part_<subj>_<S|N>_Trial<k>_emotion.bdf (BioSemi BDF, 256 Hz; "
    f"ECG lead {ECG_CHANNEL}; video start = first rising edge of the Status trigger). Labels come from ECG "
    "R-peaks: 'bvp' is a beat-phase surrogate (HR labels only), not a PPG."
)
_C1 = re.compile(r"_C1(?![0-9A-Za-z])", re.IGNORECASE)
_BDF = re.compile(r"^Part_(\d+)_([SN])_Trial(\d+)_emotion\.bdf$", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _session_xml(folder: Path) -> dict[str, str]:
    """``vidRate`` and subject ``id`` from ``session.xml`` (empty strings when absent or unreadable)."""
    out = {"vidRate": "", "subject": ""}
    try:
        root = ET.parse(folder / "session.xml").getroot()
    except (OSError, ET.ParseError):
        return out
    out["vidRate"] = root.get("vidRate", "")
    subj = root.find("subject")
    if subj is not None:
        out["subject"] = subj.get("id", "")
    return out


def _is_session(folder: Path) -> bool:
    if (folder / "session.xml").is_file():
        return True
    return any(p.is_file() and p.suffix.lower() in (".bdf", ".avi") for p in folder.iterdir())


def _session(folder: Path) -> Subject:
    files = [p for p in folder.iterdir() if p.is_file()]
    avis = sorted((p for p in files if p.suffix.lower() == ".avi" and _C1.search(p.stem)),
                  key=lambda p: natural_key(p.name))
    bdfs = sorted((p for p in files if p.suffix.lower() == ".bdf"), key=lambda p: (not _BDF.match(p.name),
                                                                                 natural_key(p.name)))
    subj = _session_xml(folder)["subject"] if not (avis and bdfs) else ""
    subj = re.sub(r"\W", "", subj) or "<subj>"
    video = avis[0] if avis else folder / f"P{subj}-Rec1-<date>_C1 trigger _C_Section_<k>.avi"
    bdf = bdfs[0] if bdfs else folder / f"Part_{subj}_<S|N>_Trial<k>_emotion.bdf"
    m = _BDF.match(bdf.name)
    truth = (bdf, folder / "session.xml") if (folder / "session.xml").is_file() else (bdf,)
    sid = _SAFE.sub("_", folder.name).strip("_") or "session"
    return Subject(NAME, sid, video, truth, m.group(2).upper() if m else "")


def find_subjects(root: str | Path) -> list[Subject]:
    """List the sessions under ``root`` in natural order.

    Parameters
    ----------
    root : str or Path
        The MAHNOB-HCI folder holding ``Sessions/``, the ``Sessions`` folder itself, or one session
        folder.

    Returns
    -------
    list of Subject
        One per session; ``id`` is the session folder name made filesystem-safe (``"10"`` for
        ``Sessions/10``), ``video`` the ``_C1`` colour AVI, ``truth`` the BDF (then
        ``session.xml`` when present), ``fmt`` the trial type from the BDF name (``"S"`` or
        ``"N"``, ``""`` if unknown). A session lacking its C1 video or BDF is still listed, with a
        placeholder path that names the expected file; building it raises an error naming it.

    Raises
    ------
    DatasetLayoutError
        If ``root`` is not a folder or holds no session folder.
    """
    root = Path(root)
    base = root / "Sessions" if (root / "Sessions").is_dir() and not _is_session(root) else root
    return scan_subjects(base, what="MAHNOB-HCI session folders", layout=LAYOUT,
                         recordings=lambda f: _session(f) if _is_session(f) else None)


def detect_r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """R-peak times of an ECG lead, after Pan & Tompkins (IEEE TBME 32(3), 1985), offline.

    Steps: zero-phase 5-15 Hz band-pass (3rd-order Butterworth), centred derivative, squaring,
    150-ms moving-window integration (MWI). MWI peaks at least 0.3 s apart (<= 200 bpm) above
    0.3x the median of the MWI maxima of 2-s blocks are QRS candidates; as in Pan & Tompkins, a
    candidate within 0.36 s of the previous beat with less than half its MWI height is taken as a
    T wave and dropped. Each beat is then placed on the extremum of the 1-40 Hz band-passed ECG
    within +/-80 ms, with the polarity that most beats share (so an inverted lead works), refined
    to sub-sample precision by a parabola through the three samples around it. Unlike the original
    there are no adaptive running thresholds or search-back; missed beats show up as long R-R
    intervals, which :func:`read_truth` flags.

    Parameters
    ----------
    ecg : ndarray of float, shape (n,)
        ECG samples (any unit; DC offset and baseline wander are removed by the filters).
    fs : float
        Sampling rate, Hz (>= 80).

    Returns
    -------
    ndarray of float64, shape (n_beats,)
        R-peak times in seconds from sample 0, strictly increasing; empty if no QRS complex stands
        out (flat or disconnected lead).

    Raises
    ------
    ValueError
        If ``fs < 80`` Hz or ``ecg`` is not 1-D.
    """
    from scipy.signal import butter, find_peaks, sosfiltfilt

    x = np.asarray(ecg, dtype=np.float64)
    if x.ndim != 1 or fs < 80:
        raise ValueError(f"need a 1-D ECG at >= 80 Hz, got shape {x.shape} at {fs} Hz")
    if x.size < int(2 * fs) or not np.all(np.isfinite(x)) or np.ptp(x) == 0:
        return np.empty(0)
    qrs = sosfiltfilt(butter(3, [5.0, 15.0], btype="band", fs=fs, output="sos"), x)
    mwi_len = max(1, int(round(0.15 * fs)))
    mwi = np.convolve(np.gradient(qrs) ** 2, np.ones(mwi_len) / mwi_len, mode="same")
    block = int(2 * fs)
    maxima = [mwi[i:i + block].max() for i in range(0, mwi.size - block // 2, block)]
    thr = 0.3 * float(np.median(maxima))
    if not thr > 0:
        return np.empty(0)
    cand, props = find_peaks(mwi, height=thr, distance=max(1, int(0.3 * fs)))
    beats: list[int] = []
    heights: list[float] = []
    for i, h in zip(cand, props["peak_heights"]):
        if beats and (i - beats[-1]) < 0.36 * fs and h < 0.5 * heights[-1]:
            continue  # a T wave
        beats.append(int(i))
        heights.append(float(h))
    if not beats:
        return np.empty(0)
    wide = sosfiltfilt(butter(3, [1.0, min(40.0, 0.45 * fs)], btype="band", fs=fs, output="sos"), x)
    half = max(1, int(round(0.08 * fs)))
    idx = np.asarray(beats)
    lo, hi = np.clip(idx - half, 0, x.size), np.clip(idx + half + 1, 0, x.size)
    ext = np.array([a + int(np.argmax(np.abs(wide[a:b]))) for a, b in zip(lo, hi)])
    sign = 1.0 if np.median(wide[ext]) >= 0 else -1.0
    r = np.array([a + int(np.argmax(sign * wide[a:b])) for a, b in zip(lo, hi)])
    # parabolic interpolation of the peak between samples
    inner = (r > 0) & (r < x.size - 1)
    frac = np.zeros(r.size)
    y0, y1, y2 = (sign * wide[np.clip(r + d, 0, x.size - 1)] for d in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    ok = inner & (den < 0)
    frac[ok] = 0.5 * (y0[ok] - y2[ok]) / den[ok]
    t = (r + np.clip(frac, -0.5, 0.5)) / fs
    t = np.unique(t)
    return t[np.concatenate([[True], np.diff(t) > 0.5 / fs])]


def _channel(labels: list[str], name: str) -> int | None:
    for i, lab in enumerate(labels):
        if lab.strip().lower() == name.lower():
            return i
    return None


def trigger_onset_s(status: np.ndarray, fs: float) -> float | None:
    """Time of the first rising edge in the low 16 bits of a BioSemi ``Status`` channel.

    Parameters
    ----------
    status : ndarray of int, shape (n,)
        Digital Status values (24-bit; bits 16-23 are system flags and are ignored).
    fs : float
        Status sampling rate, Hz.

    Returns
    -------
    float or None
        Seconds from the first sample to the first sample at which any trigger bit turns on;
        None when no trigger bit ever turns on.

    Examples
    --------
    >>> trigger_onset_s(np.array([0, 0, 1, 1, 0, 2]) | (1 << 20), 2.0)
    1.0
    """
    low = np.asarray(status).astype(np.int64) & 0xFFFF
    rising = np.flatnonzero((low[1:] & ~low[:-1]) != 0)
    return None if rising.size == 0 else float(rising[0] + 1) / fs


def _read_bdf(subject: Subject, path: Path) -> tuple[np.ndarray, float, float]:
    """ECG (physical units), its rate (Hz) and the video-start time on its clock (s)."""
    import pyedflib

    if not path.is_file():
        raise GroundTruthError(
            "BDF physiology file is missing; every MAHNOB-HCI session needs its Part_<subj>_<S|N>_Trial<k>_emotion.bdf "
            "(ECG and Status trigger) beside the video", subject=subject.id, path=path)
    try:
        reader = pyedflib.EdfReader(str(path))
    except OSError as exc:
        raise GroundTruthError(f"cannot read as BioSemi BDF ({exc})", subject=subject.id, path=path) from None
    try:
        labels = reader.getSignalLabels()
        ecg_i, st_i = _channel(labels, ECG_CHANNEL), _channel(labels, STATUS_CHANNEL)
        for name, i in ((ECG_CHANNEL, ecg_i), (STATUS_CHANNEL, st_i)):
            if i is None:
                raise GroundTruthError(f"BDF has no {name!r} channel (channels: {', '.join(labels)})",
                                       subject=subject.id, path=path)
        fs, fs_st = float(reader.getSampleFrequency(ecg_i)), float(reader.getSampleFrequency(st_i))
        ecg = reader.readSignal(ecg_i)
        status = reader.readSignal(st_i, digital=True)
    finally:
        reader.close()
    onset = trigger_onset_s(status, fs_st)
    if onset is None:
        raise GroundTruthError(
            "the Status channel has no trigger pulse (no rising edge in its low 16 bits), so the video start "
            "cannot be placed on the ECG clock", subject=subject.id, path=path)
    return np.asarray(ecg, dtype=np.float64), fs, onset


def _frame_rate_note(subject: Subject) -> str | None:
    """Compare the container's frame rate with session.xml's vidRate."""
    xml = _session_xml(subject.video.parent)
    try:
        vid_rate = float(xml["vidRate"])
    except ValueError:
        return None
    if not subject.video.is_file():
        return None
    from rppg_prep.errors import VideoDecodeError
    from rppg_prep.sources import probe

    try:
        info = probe(subject.video, subject=subject.id)
    except VideoDecodeError:
        return None
    if abs(info.fps - vid_rate) < 1e-4 * vid_rate or info.n_frames < 2:
        return None
    drift_ms = 1000.0 * info.n_frames * abs(1.0 / vid_rate - 1.0 / info.fps)
    return (f"session.xml vidRate is {vid_rate:g} fps, the container says {info.fps:g} fps; frame times follow "
            f"the container ({drift_ms:.0f} ms apart by the last frame)")


def read_truth(subject: Subject) -> Truth:
    """Read the ECG of a session and turn its R-peaks into HR labels on the video clock.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (float64, shape (n,)): the beat-phase surrogate ``cos(2 pi phase)`` in [-1, 1]
        (1 at every R-peak) -- **not a PPG waveform; for HR labels only**. ``t_s`` (float64, (n,)):
        the ECG sample times from the first to the last R-peak, seconds, 0 = the first Status
        trigger edge (= first video frame; earlier samples are negative). ``hr_bpm`` (float64,
        (n,)): 60 / RR of the R-R interval each sample falls in, NaN where flagged.
        ``quality_ok`` (bool, (n,)): False inside flagged R-R intervals (outside ``HR_VALID_BPM``
        or a > ``RR_JUMP_FRACTION`` jump from the local median).

    Raises
    ------
    GroundTruthError
        Missing or unreadable BDF, no ``EXG2`` or ``Status`` channel, no Status trigger edge, or
        fewer than 3 R-peaks found; the message names the subject and the BDF.
    """
    path = subject.truth[0]
    ecg, fs, onset = _read_bdf(subject, path)
    try:
        r = detect_r_peaks(ecg, fs)
    except ValueError as exc:
        raise GroundTruthError(f"{ECG_CHANNEL}: {exc}", subject=subject.id, path=path) from None
    if r.size < 3:
        raise GroundTruthError(
            f"found {r.size} R-peaks in ECG channel {ECG_CHANNEL}; the lead is flat, off or not an ECG",
            subject=subject.id, path=path)
    t_all = np.arange(ecg.size) / fs
    t = t_all[(t_all >= r[0]) & (t_all <= r[-1])]
    rr = np.diff(r)
    k = np.clip(np.searchsorted(r, t, side="right") - 1, 0, rr.size - 1)
    phase = k + (t - r[k]) / rr[k]
    ppg = np.cos(2.0 * np.pi * phase)
    pad = np.pad(rr, 4, mode="reflect") if rr.size > 4 else np.pad(rr, 4, mode="edge")
    med = np.median(np.lib.stride_tricks.sliding_window_view(pad, 9), axis=1)
    hr_rr = 60.0 / rr
    ok_rr = (hr_rr >= HR_VALID_BPM[0]) & (hr_rr <= HR_VALID_BPM[1]) & (np.abs(rr / med - 1.0) <= RR_JUMP_FRACTION)
    quality = ok_rr[k]
    hr = np.where(quality, hr_rr[k], np.nan)
    notes = [f"labels from ECG ({ECG_CHANNEL}) R-peaks: bvp is a beat-phase surrogate, not a PPG waveform",
             f"video start = first Status trigger edge at {onset:.3f} s of the BDF"]
    if not ok_rr.all():
        notes.append(f"{int((~ok_rr).sum())} of {rr.size} R-R intervals flagged (missed/extra beats or outside "
                     f"{HR_VALID_BPM[0]:g}-{HR_VALID_BPM[1]:g} bpm)")
    note = _frame_rate_note(subject)
    if note:
        notes.append(note)
    return Truth(ppg=ppg, t_s=t - onset, hr_bpm=hr, notes=tuple(notes), quality_ok=quality)
