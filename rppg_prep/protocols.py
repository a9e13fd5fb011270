"""rPPG-Toolbox evaluation parity: post-processing, FFT heart rate, SNR and HR error metrics.

Pure functions on 1-D arrays that reproduce the evaluation protocol of rPPG-Toolbox [1]_
(``evaluation/post_process.py``, ``evaluation/metrics.py``) so that numbers computed here line
up with published Toolbox tables. Per signal (prediction or ground-truth PPG alike):

1. ``cumsum`` if the signal is a first difference (Toolbox label type ``DiffNormalized``);
2. smoothness-priors detrending, lambda = 100 [2]_ (solved sparsely here; the Toolbox inverts a
   dense N x N matrix, 34 s at N = 6300);
3. 1st-order Butterworth band-pass, forward-backward (zero phase);
4. HR = 60 x the frequency of the largest periodogram bin (boxcar window, no detrending, FFT
   length the next power of two of the signal length) within the band.

The band is 0.75-2.5 Hz (45-150 bpm; NeurIPS 2023 paper) by default; the current Toolbox uses
0.6-3.3 Hz (:data:`BAND_TOOLBOX_CURRENT`). Record the band with every metric. Ground-truth HR is
computed from the ground-truth PPG the same way. Frequencies in Hz, HR in bpm.

References
----------
.. [1] X. Liu et al., "rPPG-Toolbox: Deep Remote PPG Toolbox", NeurIPS 2023 Datasets and
   Benchmarks; github.com/ubicomplab/rPPG-Toolbox.
.. [2] M. P. Tarvainen, P. O. Ranta-aho, P. A. Karjalainen, "An advanced detrending method with
   application to HRV analysis", IEEE Trans. Biomed. Eng. 49 (2002) 172-175.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal as sps
from scipy import sparse
from scipy.sparse.linalg import spsolve

from .pulse import _as_1d, _check_band, bandpass, hr_welch, windows_by_time

__all__ = ["BAND_NEURIPS", "BAND_TOOLBOX_CURRENT", "detrend_tarvainen", "hr_fft_toolbox", "hr_from_bvp",
           "windowed_hr", "Metrics", "metrics", "snr_toolbox"]

#: HR band of the NeurIPS 2023 rPPG-Toolbox paper (45-150 bpm)
BAND_NEURIPS = (0.75, 2.5)
#: HR band of the current rPPG-Toolbox code (36-198 bpm)
BAND_TOOLBOX_CURRENT = (0.6, 3.3)
#: Toolbox detrending smoothness
LAMBDA = 100.0
#: Toolbox SNR: half width of the harmonic windows, 6 bpm in Hz
SNR_DEVIATION_HZ = 6.0 / 60.0
#: filtfilt of a 1st-order band-pass pads 9 samples per side and needs a longer signal
_MIN_SAMPLES = 10


def detrend_tarvainen(x, lam: float = LAMBDA) -> np.ndarray:
    """Smoothness-priors detrending [2]_: ``x - (I + lam^2 D2^T D2)^-1 x``.

    ``D2`` is the ``(N-2, N)`` second-difference matrix (rows ``[1, -2, 1]``). The pentadiagonal
    system is solved with ``scipy.sparse.linalg.spsolve`` (milliseconds at N = 6300) and agrees
    with the Toolbox's dense inverse to rounding. Away from the ends it is a zero-phase high-pass
    with gain ``g / (1 + g)``, ``g = 16 lam^2 sin^4(pi f / fs)``: half amplitude at
    ``sin(pi f / fs) = 1 / (2 sqrt(lam))``, i.e. about ``0.016 fs`` for ``lam = 100`` (0.48 Hz at
    30 fps, but 4 Hz at 250 Hz): the Toolbox's lambda assumes video frame rates, so resample a
    contact PPG to the frame rate before applying it.

    Parameters
    ----------
    x : array_like of float, shape (N,)
        Signal, uniformly sampled.
    lam : float
        Smoothness parameter lambda (> 0); the Toolbox uses 100.

    Returns
    -------
    ndarray of float64, shape (N,)
        Detrended signal; all zeros if N < 3 (a line or point is all trend).

    Raises
    ------
    ValueError
        ``x`` not 1-D or ``lam`` not a positive number.
    """
    xs = _as_1d(x, "x")
    if not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be a positive number, got {lam!r}")
    n = xs.size
    if n < 3:
        return np.zeros(n)
    d2 = sparse.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(n - 2, n), format="csc")
    a = (sparse.identity(n, format="csc") + lam**2 * (d2.T @ d2)).tocsc()
    return xs - spsolve(a, xs)


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def _periodogram(x: np.ndarray, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Toolbox periodogram: boxcar window, no detrending, nfft = next power of two, density."""
    return sps.periodogram(x, fs=fs_hz, nfft=_next_pow2(x.size), detrend=False)


def hr_fft_toolbox(x, fs_hz: float, band_hz=BAND_NEURIPS) -> float:
    """rPPG-Toolbox "FFT" heart rate: periodogram peak within a band, no interpolation.

    ``scipy.signal.periodogram`` (boxcar, ``detrend=False``, ``nfft = 2**ceil(log2(n))``); HR is
    60 x the frequency of the largest bin with ``low <= f <= high``. The grid is ``fs / nfft``
    (60 fs / nfft bpm: 0.88 bpm for 1800 samples at 30 fps), so the result is quantised to it.
    Apply :func:`hr_from_bvp` for the full protocol (detrend and band-pass first).

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Pulse signal, uniformly sampled.
    fs_hz : float
        Sampling rate in Hz.
    band_hz : (float, float)
        Search band in Hz, ``0 < low < high < fs_hz / 2``.

    Returns
    -------
    float
        HR in bpm; NaN if ``x`` is empty, has non-finite values, no bin falls in the band or the
        in-band power is all zero.

    Raises
    ------
    ValueError
        ``x`` not 1-D or ``fs_hz`` / ``band_hz`` invalid.
    """
    xs = _as_1d(x, "x")
    lo, hi = _check_band(fs_hz, band_hz)
    if xs.size == 0 or not np.all(np.isfinite(xs)):
        return float("nan")
    f, p = _periodogram(xs, fs_hz)
    inband = np.flatnonzero((f >= lo) & (f <= hi))
    if inband.size == 0 or not np.any(p[inband] > 0):
        return float("nan")
    return float(60.0 * f[inband[np.argmax(p[inband])]])


def _preprocess(x: np.ndarray, fs_hz: float, band_hz, diff_label: bool, bp_order: int) -> np.ndarray:
    """Toolbox post-processing: cumsum (diff labels), detrend lambda = 100, zero-phase band-pass."""
    if diff_label:
        x = np.cumsum(x)
    # sosfiltfilt of a 1-section filter pads 9 samples (odd extension) like the Toolbox's
    # filtfilt(b, a); both agree to rounding
    return bandpass(detrend_tarvainen(x, LAMBDA), fs_hz, band_hz, order=bp_order)


def hr_from_bvp(bvp, fs_hz: float, *, protocol: str = "toolbox", diff_label: bool = False,
                band_hz=BAND_NEURIPS, bp_order: int = 1) -> float:
    """Heart rate of a pulse signal (predicted rPPG or ground-truth PPG) by a named protocol.

    ``protocol="toolbox"`` (parity with ``calculate_metric_per_video``, ``hr_method='FFT'``):
    ``cumsum`` if ``diff_label`` -> :func:`detrend_tarvainen` (lambda = 100) -> Butterworth
    band-pass of order ``bp_order`` over ``band_hz``, forward-backward -> :func:`hr_fft_toolbox`
    over the same band. ``protocol="welch"``: ``cumsum`` if ``diff_label`` ->
    :func:`rppg_prep.pulse.hr_welch` over ``band_hz`` (this project's estimator: Welch, 0.1-bpm
    grid, parabolic peak).

    Parameters
    ----------
    bvp : array_like of float, shape (n,)
        Pulse signal, uniformly sampled; a first difference if ``diff_label``.
    fs_hz : float
        Sampling rate in Hz.
    protocol : {"toolbox", "welch"}
        HR estimator, see above.
    diff_label : bool
        Integrate (``cumsum``) first: the Toolbox's ``DiffNormalized`` signals.
    band_hz : (float, float)
        Band-pass and search band in Hz: :data:`BAND_NEURIPS` (default) or
        :data:`BAND_TOOLBOX_CURRENT`.
    bp_order : int
        Butterworth order of each filter pass (the Toolbox: 1).

    Returns
    -------
    float
        HR in bpm; NaN if ``bvp`` has non-finite values or fewer than 10 samples (the Toolbox
        skips windows shorter than 9), or see :func:`hr_fft_toolbox`.

    Raises
    ------
    ValueError
        ``bvp`` not 1-D, unknown ``protocol``, ``fs_hz`` / ``band_hz`` / ``bp_order`` invalid.
    """
    x = _as_1d(bvp, "bvp")
    _check_band(fs_hz, band_hz)
    if protocol not in ("toolbox", "welch"):
        raise ValueError(f"protocol must be 'toolbox' or 'welch', got {protocol!r}")
    if x.size < _MIN_SAMPLES or not np.all(np.isfinite(x)):
        return float("nan")
    if protocol == "welch":
        return hr_welch(np.cumsum(x) if diff_label else x, fs_hz, band_hz)
    return hr_fft_toolbox(_preprocess(x, fs_hz, band_hz, diff_label, bp_order), fs_hz, band_hz)


def windowed_hr(bvp, fs_hz: float, window_s: float = 10.0, stride_s: float = 1.0, band_hz=BAND_NEURIPS,
                *, diff_label: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Toolbox-protocol HR (:func:`hr_from_bvp`) of each sliding window, each processed on its own.

    ``bvp`` is float (T,) sampled at ``fs_hz``; windows of ``window_s`` every ``stride_s`` seconds
    come from :func:`rppg_prep.pulse.windows_by_time` on the clock ``i / fs_hz`` (complete windows
    only); ``band_hz`` and ``diff_label`` (``cumsum`` per window, as the Toolbox) as in
    :func:`hr_from_bvp`. The Toolbox's ``USE_SMALLER_WINDOW`` mode is ``stride_s == window_s``
    (it also keeps a final partial window of >= 9 samples; this does not).

    Returns ``(windows, hr_bpm)``: int64 (N, 2) ``[start, stop)`` frames (``(0, 2)`` if the signal
    is shorter than ``window_s``) and float64 (N,) HR in bpm, NaN where :func:`hr_from_bvp` is.
    Raises ValueError as :func:`hr_from_bvp` and :func:`rppg_prep.pulse.windows_by_time`.
    """
    x = _as_1d(bvp, "bvp")
    _check_band(fs_hz, band_hz)
    w = windows_by_time(np.arange(x.size) / fs_hz, window_s, stride_s)
    hr = np.array([hr_from_bvp(x[a:b], fs_hz, diff_label=diff_label, band_hz=band_hz) for a, b in w],
                  dtype=np.float64)
    return w, hr


@dataclass(frozen=True)
class Metrics:
    """HR error metrics with the Toolbox's standard errors (see :func:`metrics`); bpm, % and dB."""

    n: int
    mae: float
    mae_se: float
    rmse: float
    rmse_se: float
    mape: float
    mape_se: float
    pearson_r: float
    pearson_r_se: float
    snr_db: float = float("nan")
    snr_db_se: float = float("nan")


def metrics(hr_pred, hr_ref, snr_db=None) -> Metrics:
    """MAE, RMSE, MAPE, Pearson r and mean SNR, each with the rPPG-Toolbox standard error.

    With ``e = pred - ref`` over the ``n`` pairs where both are finite, and ``std`` the population
    standard deviation (``ddof = 0``, ``np.std``) as in the Toolbox:

    * ``MAE = mean(|e|)``, ``SE = std(|e|) / sqrt(n)``;
    * ``RMSE = sqrt(mean(e^2))``, ``SE = sqrt(std(e^2) / sqrt(n))`` (current Toolbox; older
      versions used ``sqrt(std(e^2)) / sqrt(n)``; neither is a textbook SE of the RMSE);
    * ``MAPE = 100 mean(|e / ref|)`` %, ``SE = 100 std(|e / ref|) / sqrt(n)``;
    * ``r`` = Pearson correlation of pred and ref, ``SE = sqrt((1 - r^2) / (n - 2))``;
    * ``SNR = mean(snr_db)``, ``SE = std(snr_db) / sqrt(m)`` over the ``m`` finite values.

    Parameters
    ----------
    hr_pred, hr_ref : array_like of float, shape (N,)
        Predicted and reference HR in bpm, one per video or window; non-finite pairs are dropped.
    snr_db : array_like of float, shape (N,), optional
        Per-video/window SNR in dB (:func:`snr_toolbox`); omitted -> ``snr_db`` fields NaN.

    Returns
    -------
    Metrics
        ``pearson_r`` is NaN if pred or ref is constant, ``pearson_r_se`` NaN if ``n < 3``.

    Raises
    ------
    ValueError
        Inputs not 1-D or of different lengths, or fewer than 2 finite pairs.
    """
    p, r = _as_1d(hr_pred, "hr_pred"), _as_1d(hr_ref, "hr_ref")
    if p.shape != r.shape:
        raise ValueError(f"hr_pred and hr_ref differ in length ({p.size} vs {r.size})")
    ok = np.isfinite(p) & np.isfinite(r)
    p, r = p[ok], r[ok]
    n = int(p.size)
    if n < 2:
        raise ValueError(f"need at least 2 finite (pred, ref) pairs, got {n}")
    e = p - r
    ae, se2, ape = np.abs(e), e**2, np.abs(e / r)
    sqn = np.sqrt(n)
    dp, dr = p - p.mean(), r - r.mean()
    den = np.sqrt(np.sum(dp**2) * np.sum(dr**2))
    corr = float(np.clip(np.sum(dp * dr) / den, -1.0, 1.0)) if den > 0 else float("nan")
    corr_se = float(np.sqrt((1.0 - corr**2) / (n - 2))) if n > 2 else float("nan")
    snr_mean = snr_se = float("nan")
    if snr_db is not None:
        s = _as_1d(snr_db, "snr_db")
        if s.shape != ok.shape:
            raise ValueError(f"snr_db must have shape {ok.shape}, got {s.shape}")
        s = s[np.isfinite(s)]
        if s.size:
            snr_mean, snr_se = float(s.mean()), float(s.std() / np.sqrt(s.size))
    return Metrics(n=n, mae=float(ae.mean()), mae_se=float(ae.std() / sqn),
                   rmse=float(np.sqrt(se2.mean())), rmse_se=float(np.sqrt(se2.std() / sqn)),
                   mape=float(100.0 * ape.mean()), mape_se=float(100.0 * ape.std() / sqn),
                   pearson_r=corr, pearson_r_se=corr_se, snr_db=snr_mean, snr_db_se=snr_se)


def snr_toolbox(bvp, fs_hz: float, hr_ref_bpm: float, band_hz=BAND_NEURIPS, *, diff_label: bool = False,
                preprocess: bool = True) -> float:
    """rPPG-Toolbox SNR of a predicted pulse signal given the reference HR (``_calculate_SNR``).

    ``S`` = periodogram power (as :func:`hr_fft_toolbox`) summed over ``|f - f0| <= 0.1 Hz`` and
    ``|f - 2 f0| <= 0.1 Hz`` (+/- 6 bpm, ``f0 = hr_ref_bpm / 60``; *not* limited to the band, as
    in the Toolbox); ``N`` = power summed over the rest of ``band_hz``.
    ``SNR = 20 log10(S / N)``: the Toolbox applies ``mag2db`` to a *power* ratio, so its dB are
    twice the usual ``10 log10``; kept for parity (halve to compare with
    :func:`rppg_prep.pulse.snr_db`). ``N == 0`` gives 0.0, as in the Toolbox.

    ``bvp`` is the predicted pulse signal, float (n,) at ``fs_hz``; ``hr_ref_bpm`` the reference HR
    (in the Toolbox :func:`hr_from_bvp` of the ground-truth PPG); ``band_hz`` the noise band (and
    band-pass). ``preprocess`` applies the Toolbox post-processing first (``cumsum`` if
    ``diff_label``, detrend, band-pass), as ``calculate_metric_per_video`` does; pass False for
    an already post-processed signal.

    Returns the SNR in dB (Toolbox convention above); NaN if ``hr_ref_bpm`` is not a positive
    number or ``bvp`` has non-finite values or < 10 samples; ``-inf`` if ``S == 0 < N``. Raises
    ValueError if ``bvp`` is not 1-D or ``fs_hz`` / ``band_hz`` are invalid.
    """
    x = _as_1d(bvp, "bvp")
    lo, hi = _check_band(fs_hz, band_hz)
    if not (np.isfinite(hr_ref_bpm) and hr_ref_bpm > 0) or x.size < _MIN_SAMPLES or not np.all(np.isfinite(x)):
        return float("nan")
    if preprocess:
        x = _preprocess(x, fs_hz, band_hz, diff_label, 1)
    f, p = _periodogram(x, fs_hz)
    f0 = hr_ref_bpm / 60.0
    harmonic = (np.abs(f - f0) <= SNR_DEVIATION_HZ) | (np.abs(f - 2 * f0) <= SNR_DEVIATION_HZ)
    sig = float(np.sum(p[harmonic]))
    noise = float(np.sum(p[(f >= lo) & (f <= hi) & ~harmonic]))
    if noise == 0:
        return 0.0
    return float(20.0 * np.log10(sig / noise)) if sig > 0 else float("-inf")
