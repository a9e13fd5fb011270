"""ICA: blind source separation of the RGB traces (Poh et al. 2011)."""

from __future__ import annotations

import numpy as np
from scipy import signal as sps

from rppg_prep.methods._common import BAND_HZ, bandpass_cols, check_rgb, finish, normalise

_SEED, _MAX_ITER, _TOL = 0, 500, 1e-8


def _sym_decorrelate(w: np.ndarray) -> np.ndarray:
    """``(W W')^-1/2 W``: the nearest matrix with orthonormal rows."""
    d, e = np.linalg.eigh(w @ w.T)
    return (e / np.sqrt(np.maximum(d, 1e-300))) @ e.T @ w


def _fastica(z: np.ndarray) -> np.ndarray:
    """Symmetric FastICA (log-cosh contrast) of whitened z (T, k); returns the sources (T, k)."""
    w = _sym_decorrelate(np.random.default_rng(_SEED).standard_normal((z.shape[1],) * 2))
    for _ in range(_MAX_ITER):
        g = np.tanh(z @ w.T)
        w_new = _sym_decorrelate(g.T @ z / len(z) - (1 - g**2).mean(axis=0)[:, None] * w)
        done = np.max(np.abs(np.abs(np.sum(w_new * w, axis=1)) - 1)) < _TOL
        w = w_new
        if done:
            break
    return z @ w.T


def ica(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """Pulse as the independent component of the RGB traces with the strongest in-band peak.

    Steps after [1]_: the trace is normalised by its centred 1.6-s moving mean, band-passed
    0.7-3.5 Hz (zero-phase Butterworth, order 2; the paper detrends and filters the output
    instead) and standardised; three sources are separated by whitening plus a symmetric
    FastICA (log-cosh contrast, fixed seed, so the result is deterministic); the source whose
    periodogram has the highest peak in 0.7-3.5 Hz is the pulse (the paper's choice of the
    second component is not robust). One unmixing for the whole trace; for a time-varying
    one (the paper uses 30-s windows), call this on windows.

    Parameters
    ----------
    rgb : array_like of float, shape (T, 3)
        Per-frame spatial mean of the skin pixels, channels R, G, B (0-255; any positive scale),
        finite and > 0.
    fs_hz : float
        Frame rate in Hz, > 7.

    Returns
    -------
    ndarray of float64, shape (T,)
        BVP estimate, unit variance (ICA fixes no scale), zero-mean. ICA fixes no sign either:
        it is chosen so that the output correlates positively with the negated, band-passed
        green, i.e. rises with blood volume (positive correlation with a contact PPG).

    Raises
    ------
    ValueError
        ``rgb`` not (T, 3), shorter than ``max(16, 1.6 s * fs_hz)`` frames, non-finite or not
        positive; ``fs_hz`` not a finite number > 7.

    References
    ----------
    .. [1] M.-Z. Poh, D. J. McDuff, R. W. Picard, "Advancements in noncontact, multiparameter
       physiological measurements using a webcam", IEEE Trans. Biomed. Eng. 58(1) (2011) 7-11.
    """
    c, fs = check_rgb(rgb, fs_hz)
    x = bandpass_cols(normalise(c, fs), fs)
    x = x - x.mean(axis=0)
    d, e = np.linalg.eigh(x.T @ x / len(x))
    keep = d > 1e-12 * max(d.max(), 1e-300)  # drop directions with no variance (dependent channels)
    if not keep.any():
        return np.zeros(len(c))
    src = _fastica(x @ (e[:, keep] / np.sqrt(d[keep])))
    f, p = sps.periodogram(src, fs=fs, window="hann", axis=0, detrend=False)
    band = (f >= BAND_HZ[0]) & (f <= BAND_HZ[1])
    best = src[:, int(np.argmax(p[band].max(axis=0)))]
    return finish(best if best @ -x[:, 1] >= 0 else -best)
