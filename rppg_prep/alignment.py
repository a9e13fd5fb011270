"""Does the label line up with the pixels? The lag-correlation check of a build.

A supervised rPPG model learns the label of each frame from that frame's pixels, so the contact PPG
stored as the label must describe the same instant as the pixels. The check needs no model: an
unsupervised pulse signal from the face crops (POS, Wang et al., "Algorithmic principles of remote
PPG", IEEE TBME 64(7), 2017) and the label are put on an even grid over the frame clock, both are
band-passed to the HR band (0.7-3.5 Hz), and the Pearson r between them is computed in 10-s windows
(5-s stride) and averaged over the windows, for the label shifted by each lag in +/- ``max_lag_s``.
A well-aligned label peaks at lag 0; a label on another clock peaks elsewhere, or nowhere, since a
clock that drifts within a video has no single best lag.

The pulse in the pixels reaches the face a little after the finger's oximeter sees it only when the
label is on a separate clock; on the same capture clock the lag-0 correlation is what matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rppg_prep import pulse

__all__ = ["LagCurve", "lag_correlation", "pixel_signal", "build_alignment"]

#: HR band of the check, Hz
BAND_HZ = (0.7, 3.5)


@dataclass(frozen=True)
class LagCurve:
    """Window-mean Pearson r between a pixel signal and a label for each lag.

    Attributes
    ----------
    subject : str
    lags_s : ndarray of float64, shape (K,)
        Lag of the label in s: r at lag L compares the pixels at t with the label at t + L.
    r : ndarray of float64, shape (K,)
        Mean over the windows of the Pearson r at each lag.
    n_windows : int
        Windows averaged (the same windows of the pixel signal for every lag).
    """

    subject: str
    lags_s: np.ndarray
    r: np.ndarray
    n_windows: int

    def at(self, lag_s: float) -> float:
        """r at the lag closest to ``lag_s`` (s)."""
        return float(self.r[int(np.argmin(np.abs(self.lags_s - lag_s)))])

    @property
    def best_lag_s(self) -> float:
        """Lag of the largest r, s."""
        return float(self.lags_s[int(np.nanargmax(self.r))])


def lag_correlation(pixel, label, t_s, *, band_hz=BAND_HZ, window_s: float = 10.0, stride_s: float = 5.0,
                    max_lag_s: float = 1.0, subject: str = "") -> LagCurve:
    """Window-mean Pearson r between a pixel pulse signal and a label, as a function of lag.

    Parameters
    ----------
    pixel : array_like of float, shape (T,)
        Pulse signal from the frames (e.g. POS), one value per frame.
    label : array_like of float, shape (T,)
        The label of each frame (``labels/bvp``).
    t_s : array_like of float, shape (T,)
        Frame clock in s, strictly increasing (``labels/t_s``); both signals are linearly
        resampled onto an even grid at the mean frame rate over it.
    band_hz : (float, float)
        Band-pass applied to both, Hz (zero-phase Butterworth, :func:`rppg_prep.pulse.bandpass`).
    window_s, stride_s : float
        Correlation windows and their step, s.
    max_lag_s : float
        Lags from ``-max_lag_s`` to ``+max_lag_s`` in steps of one grid sample. Windows are taken
        only where every lag stays inside the recording, so each lag averages the same windows.
    subject : str
        Carried into the result.

    Returns
    -------
    LagCurve

    Raises
    ------
    ValueError
        Unequal lengths, a clock that is not strictly increasing, or a recording shorter than one
        window plus twice ``max_lag_s``.
    """
    t = np.asarray(t_s, dtype=np.float64)
    px, lab = np.asarray(pixel, dtype=np.float64), np.asarray(label, dtype=np.float64)
    if not (t.shape == px.shape == lab.shape) or t.ndim != 1:
        raise ValueError(f"pixel, label and t_s must be 1-D and equally long, got {px.shape}, {lab.shape}, {t.shape}")
    fs = (t.size - 1) / (t[-1] - t[0])
    _, pg = pulse.resample_even(t, px, fs)
    _, lg = pulse.resample_even(t, lab, fs)
    pg, lg = pulse.bandpass(pg, fs, band_hz), pulse.bandpass(lg, fs, band_hz)
    kmax = int(round(max_lag_s * fs))
    wlen, step = int(round(window_s * fs)), max(1, int(round(stride_s * fs)))
    starts = np.arange(kmax, pg.size - kmax - wlen + 1, step)
    if starts.size == 0:
        raise ValueError(f"recording of {t[-1] - t[0]:.1f} s is too short for {window_s} s windows "
                         f"and lags of +/-{max_lag_s} s")
    lags = np.arange(-kmax, kmax + 1)
    r = np.empty(lags.size)
    for j, k in enumerate(lags):
        vals = [np.corrcoef(pg[a:a + wlen], lg[a + k:a + k + wlen])[0, 1] for a in starts]
        r[j] = float(np.nanmean(vals))
    return LagCurve(subject, lags / fs, r, int(starts.size))


def pixel_signal(nodes: dict[str, Any], method: str = "pos") -> tuple[np.ndarray, float]:
    """The unsupervised pulse signal of a subject's stored crops.

    Parameters
    ----------
    nodes : dict
        One subject of :func:`rppg_prep.open_build` (needs ``face`` and ``landmarks``).
    method : str
        A key of :data:`rppg_prep.methods.METHODS`.

    Returns
    -------
    bvp : ndarray of float64, shape (T,)
        Method output per frame (mean RGB of the face-skin ROI, :mod:`rppg_prep.roi`; frames
        without a face are interpolated).
    fs_hz : float
        The rate the method assumed (the face node's fps).
    """
    from rppg_prep.scoring import skin_rgb
    from rppg_prep.methods import get_method

    fs = float(nodes["face"].attrs["fps"])
    return get_method(method)(skin_rgb(nodes), fs), fs


def build_alignment(nodes: dict[str, Any], subject: str = "", *, method: str = "pos",
                    label: np.ndarray | None = None, **kwargs: Any) -> LagCurve:
    """:func:`lag_correlation` of a subject of a build: ``method`` on its crops against its label.

    ``label`` replaces ``labels/bvp`` (e.g. the raw PPG paired another way); the frame clock is
    ``labels/t_s`` (the container's ``decode/t_s`` for builds made before the labels held a clock).
    Other keyword arguments go to :func:`lag_correlation`.
    """
    px, _ = pixel_signal(nodes, method)
    lab = nodes["labels"]
    t = lab["t_s"][:] if "t_s" in lab else nodes["decode"]["t_s"][:]
    y = lab["bvp"][:] if label is None else label
    return lag_correlation(px, y, t, subject=subject, **kwargs)
