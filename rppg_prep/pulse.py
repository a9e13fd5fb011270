"""Pure signal maths for the ``labels`` stage: resampling, windowing, HR and SNR estimation.

Pure functions (no I/O, no state) on 1-D arrays. Frequencies in Hz, heart rates in beats per
minute (bpm), times in seconds. Windows are int64 ``(N, 2)`` arrays of ``[start, stop)`` frames.

References
----------
.. [1] P. D. Welch, "The use of fast Fourier transform for the estimation of power spectra",
   IEEE Trans. Audio Electroacoust. 15 (1967) 70-73 (``scipy.signal.welch``).
.. [2] G. de Haan, V. Jeanne, "Robust pulse rate from chrominance-based rPPG", IEEE Trans. Biomed.
   Eng. 60 (2013) 2878-2886 (CHROM; the SNR metric of :func:`snr_db`).
.. [3] J. O. Smith, "Spectral Audio Signal Processing", "Quadratic interpolation of spectral
   peaks" (parabolic peak refinement in :func:`hr_welch` and :func:`beat_times`).
.. [4] M. Elgendi, I. Norton, M. Brearley, D. Abbott, D. Schuurmans, "Systolic peak detection in
   acceleration photoplethysmograms measured from emergency responders in tropical conditions",
   PLoS ONE 8(10) (2013) e76585 (the 0.5-8 Hz band of :func:`beat_times`).
"""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

__all__ = ["resample_to_frames", "sliding_windows", "windows_by_time", "hr_welch", "hr_per_window",
           "snr_db", "snr_per_window", "device_hr_per_window", "bandpass", "beat_times", "ibi_per_frame",
           "beats_hr_per_window", "resample_even"]

#: default HR band in Hz (42-210 bpm)
HR_BAND_HZ = (0.7, 3.5)
#: coarsest spectral grid allowed (bpm): nfft grows with fs to keep it
MAX_GRID_BPM = 0.1


def _as_1d(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a


def _check_band(fs_hz: float, band_hz) -> tuple[float, float]:
    if not (np.isfinite(fs_hz) and fs_hz > 0):
        raise ValueError(f"fs_hz must be a positive number, got {fs_hz!r}")
    lo, hi = (float(v) for v in band_hz)
    if not 0 < lo < hi < fs_hz / 2:
        raise ValueError(f"band_hz must satisfy 0 < low < high < fs/2 = {fs_hz / 2:g} Hz, got {band_hz!r}")
    return lo, hi


def _windows(windows, n: int) -> np.ndarray:
    w = np.asarray(windows, dtype=np.int64)
    w = w.reshape(0, 2) if w.size == 0 else w
    if w.ndim != 2 or w.shape[1] != 2:
        raise ValueError(f"windows must have shape (N, 2), got {w.shape}")
    if np.any(w[:, 0] < 0) or np.any(w[:, 1] < w[:, 0]) or np.any(w[:, 1] > n):
        raise ValueError(f"windows must be [start, stop) with 0 <= start <= stop <= {n}")
    return w


def _per_window(value, n: int, name: str) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim == 0:
        return np.full(n, float(v))
    if v.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {v.shape}")
    return v


def _psd(x: np.ndarray, fs_hz: float, min_nfft: int, segment_s: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD (Hann, linear detrend, zero padding); one segment if x < 2 * segment_s long or None."""
    long = segment_s is not None and x.size >= 2 * segment_s * fs_hz
    nperseg = int(round(segment_s * fs_hz)) if long else x.size
    need = max(int(min_nfft), nperseg, int(np.ceil(fs_hz * 60.0 / MAX_GRID_BPM)))
    nfft = 1 << int(np.ceil(np.log2(need)))
    return sps.welch(x, fs=fs_hz, window="hann", nperseg=nperseg, noverlap=nperseg // 2, nfft=nfft,
                     detrend="linear", scaling="density")


def _usable(x: np.ndarray, fs_hz: float, lo_hz: float) -> bool:
    """At least 8 samples and one period of the band's low edge, all finite, not constant."""
    return (x.size >= max(8, int(np.ceil(fs_hz / lo_hz))) and bool(np.all(np.isfinite(x)))
            and float(np.ptp(x)) > 0)


def resample_to_frames(t_src_s, x, t_frames_s) -> np.ndarray:
    """Linearly interpolate a signal sampled at ``t_src_s`` onto frame times (``np.interp``).

    Parameters
    ----------
    t_src_s : array_like of float, shape (n,)
        Source sample times in s, finite and strictly increasing.
    x : array_like of float, shape (n,)
        Source samples (any unit); a NaN sample makes the interpolants next to it NaN.
    t_frames_s : array_like of float, shape (T,)
        Frame times in s on the same clock.

    Returns
    -------
    ndarray of float32, shape (T,)
        Frames before the first (after the last) source sample get the first (last) source
        value: edge hold, never extrapolation.

    Raises
    ------
    ValueError
        Inputs not 1-D, empty or unequal ``t_src_s`` / ``x``, ``t_src_s`` not strictly increasing.
    """
    t_src, xs, t_fr = _as_1d(t_src_s, "t_src_s"), _as_1d(x, "x"), _as_1d(t_frames_s, "t_frames_s")
    if t_src.size != xs.size or t_src.size == 0:
        raise ValueError(f"t_src_s and x must be non-empty and equally long ({t_src.size} vs {xs.size})")
    if not np.all(np.isfinite(t_src)) or np.any(np.diff(t_src) <= 0):
        raise ValueError("t_src_s must be finite and strictly increasing")
    return np.interp(t_fr, t_src, xs).astype(np.float32)


def sliding_windows(n_frames: int, length: int, stride: int) -> np.ndarray:
    """Windows of ``length`` frames every ``stride`` frames, fully inside ``range(n_frames)``.

    Returns
    -------
    ndarray of int64, shape (N, 2)
        ``[start, stop)`` with ``start = 0, stride, ...`` while ``start + length <= n_frames``;
        shape ``(0, 2)`` if ``n_frames < length``.

    Raises
    ------
    ValueError
        ``length`` or ``stride`` not positive, or ``n_frames`` negative.
    """
    n_frames, length, stride = int(n_frames), int(length), int(stride)
    if length <= 0 or stride <= 0 or n_frames < 0:
        raise ValueError(f"need n_frames >= 0, length > 0, stride > 0; got {n_frames}, {length}, {stride}")
    starts = np.arange(0, n_frames - length + 1, stride, dtype=np.int64)
    return np.stack([starts, starts + length], axis=1).reshape(-1, 2)


def windows_by_time(t_frames_s, window_s: float, stride_s: float) -> np.ndarray:
    """Windows of fixed duration on an (irregular) frame clock.

    Window ``k`` covers ``[t0_k, t0_k + window_s)``, ``t0_k = t[0] + k * stride_s``, and holds the
    frames whose time falls in it. Each frame lasts until the next, the last one for the median
    frame step, so the recording spans ``[t[0], t[-1] + median(diff(t)))`` and only windows inside
    it are returned. On a uniform clock ``t = i / fs`` this equals ``sliding_windows(len(t),
    window_s * fs, stride_s * fs)``. A window over a clock gap may hold few frames.

    Parameters
    ----------
    t_frames_s : array_like of float, shape (T,)
        Frame times in s, finite and non-decreasing.
    window_s, stride_s : float
        Window duration and step in s (> 0).

    Returns
    -------
    ndarray of int64, shape (N, 2)
        ``[start, stop)`` frame indices; ``(0, 2)`` if the recording is shorter than ``window_s``.

    Raises
    ------
    ValueError
        ``t_frames_s`` not 1-D, finite and non-decreasing, or a duration not positive.
    """
    t = _as_1d(t_frames_s, "t_frames_s")
    if not (window_s > 0 and stride_s > 0):
        raise ValueError(f"window_s and stride_s must be > 0, got {window_s}, {stride_s}")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) < 0):
        raise ValueError("t_frames_s must be finite and non-decreasing")
    step = np.diff(t)
    if not np.any(step > 0):
        return np.zeros((0, 2), np.int64)
    end = t[-1] + float(np.median(step[step > 0]))
    eps = 1e-9 * max(1.0, abs(end))
    n_win = int(np.floor((end - t[0] - window_s + eps) / stride_s)) + 1
    if n_win <= 0:
        return np.zeros((0, 2), np.int64)
    t0 = t[0] + stride_s * np.arange(n_win)
    starts = np.searchsorted(t, t0 - eps, side="left")
    stops = np.searchsorted(t, t0 + window_s - eps, side="left")
    return np.stack([starts, stops], axis=1).astype(np.int64)


def hr_welch(x, fs_hz: float, band_hz=HR_BAND_HZ, *, min_nfft: int = 2**14, segment_s: float = 8.0) -> float:
    """Heart rate at the peak of the Welch power spectrum within a band.

    ``scipy.signal.welch`` [1]_: linear detrend, Hann window, FFT zero-padded to at least
    ``min_nfft`` and a 0.1-bpm grid, parabolic interpolation of the peak on log power [3]_.
    Signals shorter than ``2 * segment_s`` are one full-length segment (a 10-s window cut to an
    8-s segment only loses resolution); longer ones average ``segment_s`` segments with 50 %
    overlap, which tracks the mean HR of a wandering HR better than one long periodogram: on
    iPhys ``PPGData.mat`` (60 s; annotated beats: 67.83 bpm) 67.4 vs 66.8 bpm.

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Pulse signal, uniformly sampled (any unit).
    fs_hz : float
        Sampling rate in Hz (irregular frame clock: the effective rate, frames / duration).
    band_hz : (float, float)
        Search band in Hz, ``0 < low < high < fs_hz / 2``; default 0.7-3.5 Hz (42-210 bpm).
    min_nfft : int
        Minimum FFT length.
    segment_s : float
        Welch segment length in s for signals of at least ``2 * segment_s``.

    Returns
    -------
    float
        HR in bpm, within ``band_hz`` (a peak at the band edge is the edge); NaN if ``x`` has
        non-finite values, is constant, or is shorter than ``max(8, fs_hz / low)`` samples (one
        period of the slowest HR).

    Raises
    ------
    ValueError
        ``x`` not 1-D, ``segment_s`` not positive, or ``fs_hz`` / ``band_hz`` invalid.
    """
    xs = _as_1d(x, "x")
    lo, hi = _check_band(fs_hz, band_hz)
    if not segment_s > 0:
        raise ValueError(f"segment_s must be > 0, got {segment_s}")
    if not _usable(xs, fs_hz, lo):
        return float("nan")
    f, p = _psd(xs, fs_hz, min_nfft, segment_s)
    inband = np.flatnonzero((f >= lo) & (f <= hi))
    k = int(inband[np.argmax(p[inband])])
    f_peak = f[k]
    # refine only a true local maximum: at a band edge with more power outside, the parabola's
    # vertex lies outside the band (it reached 10 and 218 bpm for 42-210 bpm on noise)
    if 0 < k < f.size - 1 and np.all(p[k - 1:k + 2] > 0) and p[k] >= p[k - 1] and p[k] >= p[k + 1]:
        a, b, c = np.log(p[k - 1:k + 2])
        if a - 2 * b + c < 0:
            f_peak += 0.5 * (a - c) / (a - 2 * b + c) * (f[1] - f[0])
    return float(60.0 * f_peak)


def hr_per_window(x, fs_hz, windows, band_hz=HR_BAND_HZ) -> np.ndarray:
    """:func:`hr_welch` of ``x[start:stop]`` for each window.

    ``x`` is shape (T,); ``fs_hz`` a float or one rate per window, shape (N,); ``windows`` int
    (N, 2) within ``[0, T]``. Returns float32 (N,) HR in bpm, NaN where :func:`hr_welch` is or
    the window's rate is not finite (e.g. a one-frame window's frames / duration). Raises
    ValueError on bad shapes or windows, or a finite rate that does not fit the band.
    """
    xs = _as_1d(x, "x")
    w = _windows(windows, xs.size)
    fs = _per_window(fs_hz, len(w), "fs_hz")
    return np.array([hr_welch(xs[a:b], f, band_hz) if np.isfinite(f) else np.nan
                     for (a, b), f in zip(w, fs)], dtype=np.float32)


def snr_db(x, fs_hz: float, hr_bpm: float, band_hz=HR_BAND_HZ, *, tol_hz: float = 0.1) -> float:
    """Pulse SNR around a known HR, after de Haan & Jeanne 2013 [2]_.

    ``SNR = 10 log10( sum_band (U S)^2 / sum_band ((1 - U) S)^2 )``: ``S^2`` is the power spectrum
    of the whole signal as one segment (linear detrend, Hann window, zero-padded periodogram) and
    the binary template ``U`` is 1 within ``+/- tol_hz`` of ``f0 = hr_bpm / 60`` and of ``2 f0``.
    Both sums run over ``band_hz`` only, so a harmonic above the band is not counted. Welch
    segments are not used: their wider main lobe spills out of the template. The Hann main lobe
    is ``+/- 2 / duration`` wide, so SNR is capped by the window length (a perfect sinusoid scores
    about 10.4 dB over 10 s, 33 dB over 20 s): compare SNRs over windows of equal length.

    Parameters
    ----------
    x : array_like of float, shape (n,)
        Pulse signal, uniformly sampled.
    fs_hz : float
        Sampling rate in Hz.
    hr_bpm : float
        Reference HR in bpm (e.g. from the contact PPG).
    band_hz : (float, float)
        Band in Hz over which signal and noise power are summed.
    tol_hz : float
        Half width of the template around each harmonic (0.1 Hz = 6 bpm, as in [2]_).

    Returns
    -------
    float
        SNR in dB; NaN if ``hr_bpm`` is not a positive number or ``x`` is unusable (see
        :func:`hr_welch`); ``+inf`` / ``-inf`` if all in-band power is inside / outside ``U``.

    Raises
    ------
    ValueError
        ``x`` not 1-D, ``tol_hz`` not positive, ``fs_hz`` / ``band_hz`` invalid.
    """
    xs = _as_1d(x, "x")
    lo, hi = _check_band(fs_hz, band_hz)
    if not tol_hz > 0:
        raise ValueError(f"tol_hz must be > 0, got {tol_hz}")
    if not (np.isfinite(hr_bpm) and hr_bpm > 0) or not _usable(xs, fs_hz, lo):
        return float("nan")
    f, p = _psd(xs, fs_hz, 2**14, None)
    f0 = hr_bpm / 60.0
    inband = (f >= lo) & (f <= hi)
    template = (np.abs(f - f0) <= tol_hz) | (np.abs(f - 2 * f0) <= tol_hz)
    sig, noise = float(np.sum(p[inband & template])), float(np.sum(p[inband & ~template]))
    if noise <= 0 or sig <= 0:
        return float("inf") if sig > 0 else float("-inf") if noise > 0 else float("nan")
    return float(10.0 * np.log10(sig / noise))


def snr_per_window(x, fs_hz, windows, hr_bpm, band_hz=HR_BAND_HZ) -> np.ndarray:
    """:func:`snr_db` of ``x[start:stop]`` for each window.

    ``x`` is shape (T,); ``fs_hz`` and ``hr_bpm`` (reference HR, bpm) a float or one value per
    window, shape (N,); ``windows`` int (N, 2). Returns float32 (N,) SNR in dB, NaN where
    undefined or the window's rate is not finite. Raises ValueError as :func:`hr_per_window`.
    """
    xs = _as_1d(x, "x")
    w = _windows(windows, xs.size)
    fs = _per_window(fs_hz, len(w), "fs_hz")
    hr = _per_window(hr_bpm, len(w), "hr_bpm")
    return np.array([snr_db(xs[a:b], f, h, band_hz) if np.isfinite(f) else np.nan
                     for (a, b), f, h in zip(w, fs, hr)], dtype=np.float32)


def device_hr_per_window(hr_frames_bpm, windows, min_valid_frac: float = 0.5) -> np.ndarray:
    """Median of the device (oximeter) HR in each window, ignoring masked samples.

    ``hr_frames_bpm`` is float (T,) in bpm with dropouts as NaN; ``windows`` int (N, 2) within
    ``[0, T]``. Returns float32 (N,): the median of the finite samples, NaN if the window is
    empty or less than ``min_valid_frac`` (in [0, 1]) of it is finite. Raises ValueError on a
    non-1-D ``hr_frames_bpm``, bad windows or ``min_valid_frac``.
    """
    hr = _as_1d(hr_frames_bpm, "hr_frames_bpm")
    w = _windows(windows, hr.size)
    if not 0.0 <= min_valid_frac <= 1.0:
        raise ValueError(f"min_valid_frac must be in [0, 1], got {min_valid_frac}")
    out = np.full(len(w), np.nan, dtype=np.float32)
    for i, (a, b) in enumerate(w):
        ok = np.isfinite(hr[a:b])
        if ok.any() and ok.mean() >= min_valid_frac:
            out[i] = np.median(hr[a:b][ok])
    return out


def bandpass(x, fs_hz: float, band_hz, order: int = 2) -> np.ndarray:
    """Zero-phase Butterworth band-pass: ``scipy.signal.butter`` (SOS) + ``sosfiltfilt``.

    ``x`` is float (n,) (a NaN spreads to the whole output), ``fs_hz`` its rate, ``band_hz`` the
    pass band in Hz (``0 < low < high < fs_hz / 2``), ``order`` the Butterworth order of each
    pass (forward-backward doubles the attenuation). Returns float64 (n,). Raises ValueError on
    a non-1-D ``x``, ``order`` < 1, a bad band, or ``x`` not longer than ``sosfiltfilt``'s edge
    padding of ``3 * (2 * order + 1)`` samples.
    """
    xs = _as_1d(x, "x")
    lo, hi = _check_band(fs_hz, band_hz)
    if int(order) < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    sos = sps.butter(int(order), [lo, hi], btype="bandpass", fs=fs_hz, output="sos")
    return sps.sosfiltfilt(sos, xs)


def resample_even(t_s, x, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """A signal on an irregular clock, linearly interpolated onto an even grid.

    ``t_s`` float (n,) strictly increasing seconds, ``x`` float (n,), ``fs_hz`` the grid rate.
    Returns ``(grid_s, x_grid)``, both float64 (m,) with ``grid_s = t_s[0] + k / fs_hz`` up to
    ``t_s[-1]``. Raises ValueError as :func:`resample_to_frames`, or on a rate that is not positive.
    """
    t = _as_1d(t_s, "t_s")
    if not (np.isfinite(fs_hz) and fs_hz > 0):
        raise ValueError(f"fs_hz must be a positive number, got {fs_hz!r}")
    grid = t[0] + np.arange(int(np.floor((t[-1] - t[0]) * fs_hz + 1e-9)) + 1) / fs_hz
    return grid, resample_to_frames(t, x, grid).astype(np.float64)


def beat_times(t_s, ppg, *, max_hr_bpm: float = 210.0, band_hz=(0.5, 8.0), min_prominence: float = 0.3,
               fs_hz: float | None = None, fiducial: str = "peak") -> np.ndarray:
    """Systolic peak times of a contact PPG.

    The PPG is put on an even grid (its own rate, or ``fs_hz``), band-passed 0.5-8 Hz with a
    zero-phase Butterworth filter (the band of Elgendi et al. 2013 [4]_: baseline wander and
    high-frequency noise out, the systolic upstroke kept), and its maxima are found with
    ``scipy.signal.find_peaks`` under two physiological constraints: peaks at least
    ``60 / max_hr_bpm`` s and half the dominant pulse period (from the Welch HR of the whole
    signal) apart, so that a dicrotic wave is not a beat; and a prominence of at least
    ``min_prominence`` times the local pulse amplitude (the 5-95 % range of the filtered signal
    within +/- 1.5 s), which rejects noise. Each peak is then moved to the maximum of the unfiltered signal within
    +/- 0.1 s (the filter shifts the peak of an asymmetric pulse) and refined to a fraction of a
    sample by a parabola through the three samples around it [3]_. With ``fiducial="foot"`` each
    beat is instead the pulse onset: the minimum of the unfiltered signal in the 0.5 s before its
    systolic peak (and after the previous one), refined the same way.

    Parameters
    ----------
    t_s : array_like of float, shape (n,)
        Sample times in s, strictly increasing (an irregular clock is allowed).
    ppg : array_like of float, shape (n,)
        Contact PPG (any unit; larger = more blood volume, as oximeters report it).
    max_hr_bpm : float
        Highest HR allowed, bpm.
    band_hz : (float, float)
        Detection band, Hz.
    min_prominence : float
        Minimum prominence as a fraction of the local pulse amplitude.
    fs_hz : float, optional
        Rate of the even grid; default: the signal's own mean rate, at least 30 Hz.
    fiducial : {"peak", "foot"}
        Which point of each pulse to return: the systolic peak or the onset (foot).

    Returns
    -------
    ndarray of float64, shape (B,)
        Peak times in s on the clock of ``t_s``, increasing. Empty for a signal too short to filter.

    Raises
    ------
    ValueError
        Inputs not 1-D or unequal, a clock that is not strictly increasing, non-finite samples,
        or an unknown ``fiducial``.
    """
    from scipy.ndimage import percentile_filter

    if fiducial not in ("peak", "foot"):
        raise ValueError(f"fiducial must be 'peak' or 'foot', got {fiducial!r}")

    t, x = _as_1d(t_s, "t_s"), _as_1d(ppg, "ppg")
    if t.size != x.size:
        raise ValueError(f"t_s and ppg must be equally long ({t.size} vs {x.size})")
    if not np.all(np.isfinite(x)):
        raise ValueError("ppg must be finite")
    if t.size < 2:
        return np.zeros(0)
    fs = float(fs_hz) if fs_hz else max(30.0, (t.size - 1) / (t[-1] - t[0]))
    grid, xg = resample_even(t, x, fs)
    hi = min(float(band_hz[1]), 0.45 * fs)
    if xg.size <= 3 * 5 * 2 or np.ptp(xg) == 0:
        return np.zeros(0)
    y = bandpass(xg, fs, (float(band_hz[0]), hi), order=2)
    half = max(1, int(round(1.5 * fs)))
    amp = (percentile_filter(y, 95, size=2 * half + 1, mode="nearest")
           - percentile_filter(y, 5, size=2 * half + 1, mode="nearest"))
    # half the dominant pulse period: a dicrotic wave (0.3-0.4 of a period after its systole) is never
    # taken for a beat, while HR may still rise by half within the recording
    hr0 = hr_welch(y, fs, (max(float(band_hz[0]), 0.5), min(max_hr_bpm / 60.0, 0.45 * fs)))
    min_gap_s = max(60.0 / max_hr_bpm, 0.5 * 60.0 / hr0 if np.isfinite(hr0) else 0.0)
    peaks, props = sps.find_peaks(y, distance=max(1, int(np.floor(fs * min_gap_s))), prominence=0.0)
    peaks = peaks[props["prominences"] >= min_prominence * amp[peaks]]
    r = max(1, int(round(0.1 * fs)))
    tops = [max(0, p - r) + int(np.argmax(xg[max(0, p - r):p + r + 1])) for p in peaks]
    if fiducial == "foot":
        r_foot = max(1, int(round(0.5 * fs)))
        tops = [max(0, k - r_foot, prev) + int(np.argmin(xg[max(0, k - r_foot, prev):k + 1]))
                for prev, k in zip([0] + tops[:-1], tops)]
    sign = 1.0 if fiducial == "peak" else -1.0
    out = []
    for k in tops:
        frac = 0.0
        if 0 < k < xg.size - 1:
            y0, y1, y2 = sign * xg[k - 1:k + 2]
            den = y0 - 2 * y1 + y2
            if den < 0:
                frac = float(np.clip(0.5 * (y0 - y2) / den, -0.5, 0.5))
        out.append(grid[0] + (k + frac) / fs)
    beats = np.unique(np.round(np.asarray(out, dtype=np.float64), 9))
    # two refined peaks closer than the refractory limit are one beat
    if beats.size < 2:
        return beats
    return beats[np.concatenate([[True], np.diff(beats) >= 0.5 * 60.0 / max_hr_bpm])]


def ibi_per_frame(beats_s, t_frames_s, *, max_ibi_ratio: float = 1.6, min_hr_bpm: float = 40.0) -> np.ndarray:
    """Inter-beat interval of the beat-to-beat interval each frame falls in.

    Frame ``i`` at ``t`` with ``beats[k] <= t < beats[k+1]`` takes ``beats[k+1] - beats[k]``. An
    interval longer than ``max_ibi_ratio`` times the median of its 5 neighbours on each side, or
    longer than ``60 / min_hr_bpm`` s, holds a missed beat (or a signal dropout) and gives NaN, as
    do frames before the first beat or after the last.

    Parameters
    ----------
    beats_s : array_like of float, shape (B,)
        Beat times in s (:func:`beat_times`), increasing.
    t_frames_s : array_like of float, shape (T,)
        Frame times in s on the same clock.
    max_ibi_ratio, min_hr_bpm : float
        The missed-beat rules above.

    Returns
    -------
    ndarray of float64, shape (T,)
        IBI in milliseconds; instantaneous HR in bpm is ``60000 / ibi_ms``.
    """
    b = _as_1d(beats_s, "beats_s")
    t = _as_1d(t_frames_s, "t_frames_s")
    out = np.full(t.size, np.nan)
    if b.size < 2:
        return out
    ibi = np.diff(b)
    local = np.array([np.median(ibi[max(0, k - 5):k + 6]) for k in range(ibi.size)])
    ibi = np.where((ibi > max_ibi_ratio * local) | (ibi > 60.0 / min_hr_bpm), np.nan, ibi)
    k = np.searchsorted(b, t, side="right") - 1
    inside = (k >= 0) & (k < ibi.size)
    out[inside] = 1000.0 * ibi[k[inside]]
    return out


def beats_hr_per_window(ibi_ms, windows, *, min_covered: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Beat-based HR per window: the median instantaneous HR (``60000 / ibi_ms``) of its frames.

    ``ibi_ms`` is float (T,) from :func:`ibi_per_frame`; ``windows`` int (N, 2). Returns
    ``(hr_bpm, complete)``: float32 (N,) HR in bpm, NaN when fewer than ``min_covered`` of the
    window's frames lie in a valid beat interval; bool (N,) True when every frame does (no beat
    missing). Raises ValueError on bad windows.
    """
    ibi = _as_1d(ibi_ms, "ibi_ms")
    w = _windows(windows, ibi.size)
    hr = np.full(len(w), np.nan, dtype=np.float32)
    complete = np.zeros(len(w), dtype=bool)
    for i, (a, b) in enumerate(w):
        seg = ibi[a:b]
        ok = np.isfinite(seg)
        if seg.size and ok.mean() >= min_covered:
            hr[i] = np.median(60000.0 / seg[ok])
        complete[i] = bool(seg.size) and bool(ok.all())
    return hr, complete
