"""Stage ``labels``: the contact PPG on the video clock, and HR / SNR per window.

The reference PPG is resampled onto the frame timestamps by time, not by sample index (the
rPPG-Toolbox resamples by index, which drifts when the logger's rate wanders). HR per window is the
Welch-PSD peak within ``band_hz`` (:func:`rppg_prep.signal.hr_welch`), and SNR follows de Haan &
Jeanne, "Robust pulse rate from chrominance-based rPPG", IEEE TBME 60(10), 2013. The device's own
HR (dropouts masked by the loader) is resampled beside it, never trusted as the label.

When frames were lost (an uneven frame clock), a window's HR and SNR come from the contact signal
resampled on an even grid over the window's time span instead: treating uneven frames as evenly
spaced would scale the HR by the fraction of time lost.

Samples a dataset flags as unreliable (``Truth.quality_ok``, e.g. iBVP's SQ2 <= 0.3) are kept on the
clock: the frames they fall on are marked in ``bvp_ok`` and every window that touches one gets NaN
HR and SNR. Dropping them instead (as rPPG-Toolbox does) would splice the signal across time gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rppg_prep import signal
from rppg_prep.datasets import Truth
from rppg_prep.errors import ConfigError, GroundTruthError
from rppg_prep.stage import ArraySpec, Stage

__all__ = ["LabelParams", "STAGE", "make_labels"]


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
    """

    band_hz: tuple[float, float] = (0.7, 3.5)
    window_s: float = 10.0
    stride_s: float = 1.0
    max_missing_frames: int = 1

    def __post_init__(self) -> None:
        lo, hi = self.band_hz
        if not 0 < lo < hi:
            raise ConfigError(f"labels.band_hz must be (low, high) with 0 < low < high Hz, got {self.band_hz}")
        if self.window_s <= 0 or self.stride_s <= 0 or self.max_missing_frames < 0:
            raise ConfigError(f"invalid labels params {self}")


_W = ("window",)
STAGE = Stage(
    name="labels",
    version="2",
    params=LabelParams,
    inputs=("decode", "clips", "st_map"),
    outputs=(
        ArraySpec("bvp", "float32", ("frame",), "a.u.", "contact PPG resampled onto the frame timestamps"),
        ArraySpec("hr_device_bpm", "float32", ("frame",), "bpm", "device HR on the frame clock, NaN = dropout"),
        ArraySpec("bvp_ok", "bool", ("frame",), "", "the dataset rates the PPG at this frame reliable"),
        ArraySpec("window", "int64", ("window", "start_stop"), "frame", "sliding HR windows"),
        ArraySpec("hr_bpm", "float32", _W, "bpm", "HR of the PPG per sliding window (Welch peak)"),
        ArraySpec("snr_db", "float32", _W, "dB", "SNR of the PPG per sliding window"),
        ArraySpec("hr_device_window_bpm", "float32", _W, "bpm", "median device HR per sliding window"),
        ArraySpec("clip_hr_bpm", "float32", ("clip",), "bpm", "HR per clip window"),
        ArraySpec("clip_snr_db", "float32", ("clip",), "dB", "SNR per clip window"),
        ArraySpec("clip_hr_device_bpm", "float32", ("clip",), "bpm", "median device HR per clip"),
        ArraySpec("st_hr_bpm", "float32", ("segment",), "bpm", "HR per ST segment"),
        ArraySpec("st_snr_db", "float32", ("segment",), "dB", "SNR per ST segment"),
        ArraySpec("st_hr_device_bpm", "float32", ("segment",), "bpm", "median device HR per ST segment"),
    ),
)


def _align(truth: Truth, t_frames_s: np.ndarray, max_missing: int, subject: str | None,
           path: str | None) -> tuple[np.ndarray, list[str]]:
    """PPG sample times on the video clock, after checking that the PPG covers the video."""
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
    return truth.t_s, notes


def _windows_on_uniform_grid(t_src: np.ndarray, ppg: np.ndarray, t_frames_s: np.ndarray, windows: np.ndarray,
                             fps: float, band_hz) -> tuple[np.ndarray, np.ndarray]:
    """HR (bpm) and SNR (dB) per window from the contact signal on an even grid over each window's time span."""
    hr, snr = np.full(len(windows), np.nan), np.full(len(windows), np.nan)
    for i, (a, b) in enumerate(windows):
        if b - a < 2:
            continue
        grid = t_frames_s[a] + np.arange(int(round((t_frames_s[b - 1] - t_frames_s[a]) * fps)) + 1) / fps
        x = np.interp(grid, t_src, ppg)
        hr[i] = signal.hr_welch(x, fps, band_hz)
        if np.isfinite(hr[i]):
            snr[i] = signal.snr_db(x, fps, hr[i], band_hz)
    return hr, snr


def make_labels(truth: Truth, t_frames_s: np.ndarray, clip_windows: np.ndarray, st_windows: np.ndarray,
                params: LabelParams, *, subject: str | None = None, path: str | None = None,
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Compute every labels array of one subject.

    Parameters
    ----------
    truth : Truth
        From the dataset loader (PPG clock, 0 = first frame).
    t_frames_s : ndarray of float64, shape (T,)
        Frame timestamps, seconds.
    clip_windows, st_windows : ndarray of int64, shape (N, 2)
        [start, stop) frame windows of the clips and of the ST segments.
    params : LabelParams
    subject, path : str, optional
        Named in errors.

    Returns
    -------
    arrays : dict of str to ndarray
        The arrays declared in ``STAGE.outputs``.
    notes : list of str
        Quirks worth showing the user.

    Raises
    ------
    GroundTruthError
        If the PPG does not cover the video (more than ``max_missing_frames`` short).
    """
    t_src, notes = _align(truth, t_frames_s, params.max_missing_frames, subject, path)
    bvp = signal.resample_to_frames(t_src, truth.ppg, t_frames_s)
    if truth.hr_bpm is not None:
        ok = np.isfinite(truth.hr_bpm)
        hr_dev = np.full(len(t_frames_s), np.nan, dtype=np.float32)
        if ok.sum() >= 2:
            hr_dev = signal.resample_to_frames(t_src[ok], truth.hr_bpm[ok], t_frames_s)
            # a frame whose nearest device sample was a dropout stays masked
            nearest = np.clip(np.searchsorted(t_src, t_frames_s), 0, len(t_src) - 1)
            hr_dev[~ok[nearest]] = np.nan
    else:
        hr_dev = np.full(len(t_frames_s), np.nan, dtype=np.float32)

    bvp_ok = np.ones(len(t_frames_s), dtype=bool)
    if truth.quality_ok is not None:
        q = np.asarray(truth.quality_ok, dtype=bool)
        if q.shape != truth.ppg.shape:
            raise GroundTruthError(f"{q.size} quality flags for {truth.ppg.size} PPG samples", subject=subject,
                                   path=path)
        nearest = np.clip(np.searchsorted(t_src, t_frames_s), 0, len(t_src) - 1)
        prev = np.clip(nearest - 1, 0, len(t_src) - 1)
        # the frame takes the quality of every sample it is interpolated from (only one when it
        # falls exactly on a sample, as in frame-locked data, or past the last one)
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
    sliding = signal.windows_by_time(t_frames_s, params.window_s, params.stride_s)
    for prefix, win, hr_name in (("", sliding, "hr_device_window_bpm"), ("clip_", clip_windows, "clip_hr_device_bpm"),
                                 ("st_", st_windows, "st_hr_device_bpm")):
        win = np.asarray(win, dtype=np.int64).reshape(-1, 2)
        if uniform_clock:
            hr = signal.hr_per_window(bvp, fps, win, params.band_hz)
            snr = signal.snr_per_window(bvp, fps, win, hr, params.band_hz)
        else:
            hr, snr = _windows_on_uniform_grid(t_src, truth.ppg, t_frames_s, win, fps, params.band_hz)
        hr[(bad_before[win[:, 1]] - bad_before[win[:, 0]]) > 0] = np.nan
        snr[~np.isfinite(hr)] = np.nan
        out[f"{prefix}hr_bpm"] = hr.astype(np.float32)
        out[f"{prefix}snr_db"] = snr.astype(np.float32)
        out[hr_name] = signal.device_hr_per_window(hr_dev, win).astype(np.float32)
    out["window"] = sliding
    return out, notes
