"""Stage ``labels``: the contact PPG of every frame, its beats, and HR / SNR per window.

The frame clock. Where the ground truth is frame-locked (``Truth.frame_locked``: sample i was
logged as frame i was grabbed, as in UBFC-rPPG DATASET_2, SCAMPS, iBVP, MMPD), the PPG pairs with the
frames by index. Where the loader also carries the logged capture time of each frame
(``Truth.capture_clock``, UBFC-rPPG line 3), those times are the frame clock (``t_s``): the container
plays irregularly captured frames at a constant rate, so its clock drifts from the capture times by
up to 0.5 s in UBFC-rPPG (``../shared/data/README.md``), and the container clock stays in
``decode/t_s`` for reference only. Ground truth on a clock of its own (PURE, UBFC-Phys, COHFACE,
VIPL-HR, MAHNOB-HCI, MMSE-HR) is resampled onto the frame times by time, not by sample index (the
rPPG-Toolbox resamples by index, which drifts when the logger's rate wanders).

HR per window is the Welch-PSD peak within ``band_hz`` (:func:`rppg_prep.pulse.hr_welch`), and SNR
follows de Haan & Jeanne, "Robust pulse rate from chrominance-based rPPG", IEEE TBME 60(10), 2013.
Beside it, the beat-based HR: systolic peaks of the contact PPG (:func:`rppg_prep.pulse.beat_times`,
``scipy.signal.find_peaks`` with physiological constraints), the inter-beat interval of every
frame (``ibi_ms``) and the median instantaneous HR of each window (``hr_beats_bpm``), which follows
an HR that moves within the window where a Welch peak may not. ``label_quality`` marks the windows
where the two agree within ``quality_tol_bpm`` and no beat is missing. The device's own HR
(dropouts masked by the loader) is carried beside them, never trusted as the label.

When the frame clock is uneven (lost frames, irregular capture), a window's Welch HR and SNR come
from the contact signal resampled on an even grid over the window's time span: treating uneven
frames as evenly spaced would scale the HR by the fraction of time lost.

Samples a dataset flags as unreliable (``Truth.quality_ok``, e.g. iBVP's SQ2 <= 0.3) are kept on the
clock: the frames they fall on are marked in ``bvp_ok`` and every window that touches one gets NaN
HR and SNR. Dropping them instead (as rPPG-Toolbox does) would splice the signal across time gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rppg_prep.subject import Truth
from rppg_prep.errors import ConfigError, GroundTruthError
from rppg_prep.stage import ArraySpec, NodeContext, Stage

__all__ = ["LabelParams", "STAGE", "WINDOW_KINDS", "label_name", "make_labels", "write_node"]


@dataclass(frozen=True, kw_only=True)
class LabelParams:
    """Label settings.

    Attributes
    ----------
    band_hz : tuple of float
        HR search band (low, high), Hz; 0.7-3.5 Hz is 42-210 bpm.
    window_s : float
        Length of the sliding HR windows, seconds.
    stride_s : float
        Step between sliding HR windows, seconds.
    max_missing_frames : int
        Frames the PPG may lack at the end of the video (UBFC-rPPG logs one sample fewer than it
        has frames in several subjects); more is an error.
    quality_tol_bpm : float
        ``label_quality`` is False where the beat-based and the Welch HR of a window differ by more
        than this, or where a beat is missing.
    """

    band_hz: tuple[float, float] = (0.7, 3.5)
    window_s: float = 10.0
    stride_s: float = 1.0
    max_missing_frames: int = 1
    quality_tol_bpm: float = 5.0

    def __post_init__(self) -> None:
        lo, hi = self.band_hz
        if not 0 < lo < hi:
            raise ConfigError(f"labels.band_hz must be (low, high) with 0 < low < high Hz, got {self.band_hz}")
        if self.window_s <= 0 or self.stride_s <= 0 or self.max_missing_frames < 0 or self.quality_tol_bpm <= 0:
            raise ConfigError(f"invalid labels params {self}")


_W = ("window",)
#: the capture clock (``Truth.capture_clock``) must run within this fraction of the container's fps
CAPTURE_RATE_TOL = 0.20
#: and stay within this fraction of the video's duration (n_frames / fps) of the container's clock at every frame
CAPTURE_DRIFT_TOL = 0.20


#: the three kinds of window the labels are computed on: (array prefix, axis, what it is)
WINDOW_KINDS = (("", "window", "sliding window"), ("clip_", "clip", "clip"), ("st_", "segment", "ST segment"))
_SUFFIX = {"hr": "_bpm", "hr_beats": "_bpm", "snr": "_db", "hr_device": "_bpm", "label_quality": ""}


def label_name(prefix: str, quantity: str) -> str:
    """The name of the labels node's array holding ``quantity`` per window of one kind.

    The one naming rule of the per-window labels: the stage declares, writes, and the training layer
    reads its arrays through it.

    Parameters
    ----------
    prefix : {"", "clip_", "st_"}
        The kind of window (:data:`WINDOW_KINDS`): sliding windows, clips, ST segments.
    quantity : {"hr", "hr_beats", "snr", "hr_device", "label_quality"}
        Welch-peak HR (bpm), beat-based HR (bpm), SNR (dB), median device HR (bpm), the quality flag.

    Returns
    -------
    str
        E.g. ``label_name("clip_", "hr_beats") == "clip_hr_beats_bpm"``. The sliding windows' device
        HR is ``hr_device_window_bpm``: ``hr_device_bpm`` is the device HR of each frame.

    Raises
    ------
    KeyError
        Unknown prefix or quantity.
    """
    if prefix not in {k[0] for k in WINDOW_KINDS}:
        raise KeyError(f"no window kind with prefix {prefix!r}; kinds: {[k[0] for k in WINDOW_KINDS]}")
    stem = "hr_device_window" if (prefix, quantity) == ("", "hr_device") else quantity
    return f"{prefix}{stem}{_SUFFIX[quantity]}"


def _check_capture_clock(t_capture_s: np.ndarray, t_container_s: np.ndarray, n_logged: int, subject: str | None,
                         path: str | None) -> float:
    """Raise unless the logged capture clock agrees with the container's; return the drift, s.

    The capture clock is the logger's, so it wanders (UBFC-rPPG: stalls up to 0.75 s, a drift of
    0.16-0.50 s over a minute), but over the video its rate is the container's frame rate within
    ``CAPTURE_RATE_TOL`` (20 %), and the two clocks are never more than ``CAPTURE_DRIFT_TOL`` (20 %)
    of the video's duration (n_frames / fps) apart. A clock beyond that is not the capture time of
    these frames in seconds: milliseconds (a 0.03-Hz "capture rate"), another recording's, or a
    broken log (all-zero times are refused by the loader first).
    """
    n = len(t_container_s)
    span = float(t_container_s[-1] - t_container_s[0])
    m = min(n_logged, n)
    if n < 2 or m < 2 or span <= 0:
        return 0.0
    fps = (n - 1) / span
    logged = float(t_capture_s[m - 1] - t_capture_s[0])
    rate = (m - 1) / logged if logged > 0 else 0.0
    if not abs(rate / fps - 1.0) <= CAPTURE_RATE_TOL:
        raise GroundTruthError(
            f"the capture clock of the frames runs at {rate:.4g} Hz ({m} timestamps over {logged:.4g} s) but the "
            f"video plays at {fps:.4g} fps, more than {100 * CAPTURE_RATE_TOL:.0f} % apart: the timestamps are "
            "not these frames' capture times in seconds (milliseconds? another recording's?)",
            subject=subject, path=path)
    drift = float(np.max(np.abs((t_container_s - t_container_s[0]) - (t_capture_s - t_capture_s[0]))))
    duration = n / fps
    if drift > CAPTURE_DRIFT_TOL * duration:
        raise GroundTruthError(
            f"the capture clock of the frames drifts up to {drift:.2f} s from the video's clock over its "
            f"{duration:.2f} s, more than {100 * CAPTURE_DRIFT_TOL:.0f} % of the video: the timestamps are not "
            "these frames' capture times", subject=subject, path=path)
    return drift


def _check_cover(truth: Truth, t_frames_s: np.ndarray, max_missing: int, subject: str | None,
                 path: str | None) -> list[str]:
    """Raise if the PPG does not cover the video; notes on a sample count off by a little."""
    n_frames, n_ppg = len(t_frames_s), len(truth.ppg)
    notes = []
    if truth.frame_locked:
        if n_ppg < n_frames - max_missing:
            raise GroundTruthError(
                f"ground truth is short: {n_ppg} samples for {n_frames} video frames "
                f"(at most {max_missing} may be missing)", subject=subject, path=path)
        if n_ppg < n_frames:
            notes.append(f"ground truth has {n_frames - n_ppg} sample(s) fewer than the {n_frames} frames; "
                         "the last frame(s) take the last PPG value")
        elif n_ppg > n_frames:
            notes.append(f"ground truth has {n_ppg} samples for {n_frames} frames; the extra samples are unused")
    else:
        fps = (n_frames - 1) / max(t_frames_s[-1] - t_frames_s[0], 1e-9)
        missing_s = t_frames_s[-1] - truth.t_s[-1]
        if missing_s * fps > max_missing + 0.5:
            raise GroundTruthError(
                f"ground truth is short: it ends at {truth.t_s[-1]:.2f} s, the video at {t_frames_s[-1]:.2f} s",
                subject=subject, path=path)
    return notes


def frame_clock(truth: Truth, t_container_s: np.ndarray) -> tuple[np.ndarray, str]:
    """The frame clock of the labels: the logged capture times, or the container's times.

    Parameters
    ----------
    truth : Truth
        ``capture_clock`` True: ``truth.t_s[i]`` is the capture time of frame i (UBFC-rPPG line 3).
    t_container_s : ndarray of float64, shape (T,)
        The decoder's presentation times.

    Returns
    -------
    t_s : ndarray of float64, shape (T,)
        Seconds, first frame at ``truth.t_s[0]`` (0 after the loader's re-basing). Frames past the
        last logged time (at most ``max_missing_frames``) continue at the median capture step.
    clock : str
        ``"capture"`` or ``"container"``.

    Raises
    ------
    ValueError
        ``capture_clock`` set on a truth that is not frame-locked.
    """
    t_container_s = np.asarray(t_container_s, dtype=np.float64)
    if not truth.capture_clock:
        return t_container_s, "container"
    if not truth.frame_locked:
        raise ValueError("Truth.capture_clock needs frame_locked data (sample i = frame i)")
    n = len(t_container_s)
    t = np.asarray(truth.t_s[:n], dtype=np.float64)
    if t.size < n:
        step = float(np.median(np.diff(t))) if t.size > 1 else 1.0 / 30.0
        t = np.concatenate([t, t[-1] + step * np.arange(1, n - t.size + 1)])
    return t, "capture"


def _windows_on_uniform_grid(t_src: np.ndarray, ppg: np.ndarray, t_frames_s: np.ndarray, windows: np.ndarray,
                             fps: float, band_hz) -> tuple[np.ndarray, np.ndarray]:
    """HR (bpm) and SNR (dB) per window from the contact signal on an even grid over each window's time span."""
    from rppg_prep import pulse  # scipy.signal: imported when labels are made, not when declared

    hr, snr = np.full(len(windows), np.nan), np.full(len(windows), np.nan)
    for i, (a, b) in enumerate(windows):
        if b - a < 2:
            continue
        grid = t_frames_s[a] + np.arange(int(round((t_frames_s[b - 1] - t_frames_s[a]) * fps)) + 1) / fps
        x = np.interp(grid, t_src, ppg)
        hr[i] = pulse.hr_welch(x, fps, band_hz)
        if np.isfinite(hr[i]):
            snr[i] = pulse.snr_db(x, fps, hr[i], band_hz)
    return hr, snr


def make_labels(truth: Truth, t_frames_s: np.ndarray, clip_windows: np.ndarray, st_windows: np.ndarray,
                params: LabelParams, *, subject: str | None = None, path: str | None = None,
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Compute every labels array of one subject.

    Parameters
    ----------
    truth : Truth
        From the dataset loader (PPG clock, 0 = first frame). ``frame_locked`` truth pairs with the
        frames by index; ``capture_clock`` truth also supplies the frame clock (:func:`frame_clock`).
    t_frames_s : ndarray of float64, shape (T,)
        The container's frame timestamps (``decode/t_s``), seconds.
    clip_windows, st_windows : ndarray of int64, shape (N, 2)
        [start, stop) frame windows of the clips and of the ST segments.
    params : LabelParams
    subject, path : str, optional
        Named in errors.

    Returns
    -------
    arrays : dict of str to ndarray
        The arrays declared in ``STAGE.outputs``; ``t_s`` is the frame clock every other array
        uses.
    notes : list of str
        Quirks worth showing the user.

    Raises
    ------
    GroundTruthError
        If the PPG does not cover the video (more than ``max_missing_frames`` short), or a capture
        clock disagrees with the container's: a rate more than ``CAPTURE_RATE_TOL`` (20 %) from
        its fps, or the clocks more than ``CAPTURE_DRIFT_TOL`` (20 %) of the video's duration apart.
    """
    from rppg_prep import pulse  # scipy.signal: imported when labels are made, not when declared

    t_container_s = np.asarray(t_frames_s, dtype=np.float64)
    notes = _check_cover(truth, t_container_s, params.max_missing_frames, subject, path)
    t_frames_s, clock = frame_clock(truth, t_container_s)
    if clock == "capture":  # before anything is computed on it
        drift = _check_capture_clock(t_frames_s, t_container_s, len(truth.t_s), subject, path)
    n = len(t_frames_s)
    if truth.frame_locked:
        # sample i belongs to frame i: pair by index; resampling by time onto another clock would
        # give each frame the PPG of another instant (up to 0.5 s away in UBFC-rPPG)
        idx = np.minimum(np.arange(n), len(truth.ppg) - 1)
        bvp = np.asarray(truth.ppg, dtype=np.float64)[idx]
        t_src, x_src = t_frames_s, bvp
    else:
        idx = None
        bvp = pulse.resample_to_frames(truth.t_s, truth.ppg, t_frames_s)
        t_src, x_src = np.asarray(truth.t_s, dtype=np.float64), np.asarray(truth.ppg, dtype=np.float64)
    hr_dev = np.full(n, np.nan, dtype=np.float32)
    if truth.hr_bpm is not None:
        hr_src = np.asarray(truth.hr_bpm, dtype=np.float64)
        ok = np.isfinite(hr_src)
        if idx is not None:
            hr_dev = hr_src[idx].astype(np.float32)
        elif ok.sum() >= 2:
            hr_dev = pulse.resample_to_frames(t_src[ok], hr_src[ok], t_frames_s)
            # a frame whose nearest device sample was a dropout stays masked
            nearest = np.clip(np.searchsorted(t_src, t_frames_s), 0, len(t_src) - 1)
            hr_dev[~ok[nearest]] = np.nan

    bvp_ok = np.ones(n, dtype=bool)
    if truth.quality_ok is not None:
        q = np.asarray(truth.quality_ok, dtype=bool)
        if q.shape != truth.ppg.shape:
            raise GroundTruthError(f"{q.size} quality flags for {truth.ppg.size} PPG samples", subject=subject,
                                   path=path)
        if idx is not None:
            bvp_ok = q[idx]
        else:
            nearest = np.clip(np.searchsorted(t_src, t_frames_s), 0, len(t_src) - 1)
            prev = np.clip(nearest - 1, 0, len(t_src) - 1)
            # the frame takes the quality of both samples it is interpolated from (one past the last)
            single = (t_src[nearest] == t_frames_s) | (t_frames_s > t_src[-1])
            bvp_ok = q[nearest] & (q[prev] | single)
        if not bvp_ok.all():
            notes.append(f"{int((~bvp_ok).sum())} frame(s) fall on PPG samples the dataset rates unreliable; "
                         "windows touching them have no HR")
    duration = max(float(t_frames_s[-1] - t_frames_s[0]), 1e-9)
    fps = (len(t_frames_s) - 1) / duration
    out: dict[str, np.ndarray] = {"bvp": bvp.astype(np.float32), "hr_device_bpm": hr_dev.astype(np.float32),
                                  "bvp_ok": bvp_ok}
    bad_before = np.concatenate([[0], np.cumsum(~bvp_ok)])
    dt = np.diff(t_frames_s)
    # lost frames (VIPL-HR, PURE) make the frame clock uneven; spectra need even sampling
    uniform_clock = dt.size == 0 or bool(np.all(np.abs(dt - np.median(dt)) <= 0.5 * np.median(dt)))
    if not uniform_clock:
        notes.append("the frame clock is uneven (lost or repeated frames): window HR and SNR come from the "
                     f"contact signal resampled on an even {fps:.2f}-Hz grid over each window")
    if clock == "capture":
        notes.append(f"labels use the logged capture clock of the frames; the container's clock drifts from it "
                     f"by up to {drift:.2f} s")
    finite = np.isfinite(x_src)
    try:
        x_beats = x_src if finite.all() else np.interp(t_src, t_src[finite], x_src[finite])
        beats = pulse.beat_times(t_src, x_beats, max_hr_bpm=60.0 * params.band_hz[1])
    except ValueError as exc:  # e.g. a clock with repeated times: Welch labels still stand
        beats = np.zeros(0)
        notes.append(f"no beat-based labels: {exc}")
    ibi_ms = pulse.ibi_per_frame(beats, t_frames_s, min_hr_bpm=60.0 * params.band_hz[0])
    out["t_s"] = t_frames_s
    out["beat_t_s"] = beats
    out["ibi_ms"] = ibi_ms.astype(np.float32)
    out["hr_inst_bpm"] = (60000.0 / ibi_ms).astype(np.float32)
    sliding = pulse.windows_by_time(t_frames_s, params.window_s, params.stride_s)
    for (prefix, _, _), win in zip(WINDOW_KINDS, (sliding, clip_windows, st_windows)):
        win = np.asarray(win, dtype=np.int64).reshape(-1, 2)
        if uniform_clock:
            hr = pulse.hr_per_window(bvp, fps, win, params.band_hz)
            snr = pulse.snr_per_window(bvp, fps, win, hr, params.band_hz)
        else:
            hr, snr = _windows_on_uniform_grid(t_src, x_src, t_frames_s, win, fps, params.band_hz)
        hr[(bad_before[win[:, 1]] - bad_before[win[:, 0]]) > 0] = np.nan
        snr[~np.isfinite(hr)] = np.nan
        out[label_name(prefix, "hr")] = hr.astype(np.float32)
        out[label_name(prefix, "snr")] = snr.astype(np.float32)
        out[label_name(prefix, "hr_device")] = pulse.device_hr_per_window(hr_dev, win).astype(np.float32)
        hr_beats, complete = pulse.beats_hr_per_window(ibi_ms, win)
        hr_beats[(bad_before[win[:, 1]] - bad_before[win[:, 0]]) > 0] = np.nan
        out[label_name(prefix, "hr_beats")] = hr_beats
        out[label_name(prefix, "label_quality")] = (complete & np.isfinite(hr) & np.isfinite(hr_beats)
                                                    & (np.abs(hr - hr_beats) <= params.quality_tol_bpm))
    out["window"] = sliding
    return out, notes


def write_node(ctx: NodeContext) -> None:
    """Kernel of the stage: read the ground truth and write every label array.

    Parameters
    ----------
    ctx : NodeContext
        ``inputs`` hold the ``decode`` (frame times), ``clips`` and ``st_map`` (windows) nodes;
        ``truth()`` reads the subject's ground truth; ``params`` a :class:`LabelParams`.

    Raises
    ------
    GroundTruthError
        As :func:`make_labels`, naming the subject and file.
    """
    truth = ctx.truth()
    t_s = ctx.inputs["decode"]["t_s"][:]
    cw = ctx.inputs["clips"]["window"][:]
    sw = ctx.inputs["st_map"]["window"][:]
    arrays, notes = make_labels(truth, t_s, cw, sw, ctx.params, subject=ctx.subject.id,
                                path=str(ctx.subject.truth[0]))
    notes = list(truth.notes) + notes
    ctx.notes.extend(notes)
    ctx.writer.attrs.update(notes=notes, band_hz=list(ctx.params.band_hz))
    for name, data in arrays.items():
        ctx.write(name, data)
    ctx.progress(1, 1)


STAGE = Stage(
    name="labels",
    # 3: frame-locked PPG paired with frames by index, on the logged capture clock; beat-based HR
    version="3",
    params=LabelParams,
    inputs=("decode", "clips", "st_map"),
    raw_inputs=("truth",),
    outputs=(
        ArraySpec("t_s", "float64", ("frame",), "s", "frame clock of the labels: logged capture times where the "
                  "dataset has them (UBFC-rPPG), else the container's"),
        ArraySpec("bvp", "float32", ("frame",), "a.u.", "contact PPG of each frame (by index when frame-locked, "
                  "else resampled onto t_s by time)"),
        ArraySpec("hr_device_bpm", "float32", ("frame",), "bpm", "device HR on the frame clock, NaN = dropout"),
        ArraySpec("bvp_ok", "bool", ("frame",), "", "the dataset rates the PPG at this frame reliable"),
        ArraySpec("beat_t_s", "float64", ("beat",), "s", "systolic peaks of the contact PPG on the frame clock"),
        ArraySpec("ibi_ms", "float32", ("frame",), "ms", "inter-beat interval the frame falls in, NaN = no beat "
                  "or a missed beat"),
        ArraySpec("hr_inst_bpm", "float32", ("frame",), "bpm", "instantaneous HR, 60000 / ibi_ms"),
        ArraySpec("window", "int64", ("window", "start_stop"), "frame", "sliding HR windows"),
    ) + tuple(
        spec for prefix, axis, what in WINDOW_KINDS
        for spec in (
            ArraySpec(label_name(prefix, "hr"), "float32", (axis,), "bpm", f"HR of the PPG per {what} (Welch peak)"),
            ArraySpec(label_name(prefix, "hr_beats"), "float32", (axis,), "bpm",
                      f"HR per {what} from the beats (median instantaneous HR)"),
            ArraySpec(label_name(prefix, "snr"), "float32", (axis,), "dB", f"SNR of the PPG per {what}"),
            ArraySpec(label_name(prefix, "hr_device"), "float32", (axis,), "bpm", f"median device HR per {what}"),
            ArraySpec(label_name(prefix, "label_quality"), "bool", (axis,), "",
                      f"beats and Welch agree within quality_tol_bpm and no beat is missing in the {what}"),
        )
    ),
    fn=write_node,
)
