"""PBV: blood-volume-pulse signature projection (de Haan & van Leest 2014)."""

from __future__ import annotations

import numpy as np

from rppg_prep.methods._common import bandpass_cols, check_rgb, finish, normalise


def pbv(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """Pulse as the least-squares projection onto the blood-volume-pulse signature ``Pbv``.

    Steps [1]_: the trace is normalised by its centred 1.6-s moving mean and band-passed
    0.7-3.5 Hz (zero-phase Butterworth, order 2), giving ``Cn`` (T, 3). The signature is
    estimated from the data as ``Pbv = std(Cn) / ||std(Cn)||`` (the relative pulsatile strength
    per channel; the paper's calibrated value is about [0.33, 0.77, 0.53]). The weights
    ``w = Q^-1 Pbv / (Pbv' Q^-1 Pbv)``, ``Q = Cn' Cn``, minimise the output energy subject to
    ``w . Pbv = 1``: the pulse passes with unit gain, variations along other colour directions
    (intensity, specular) are suppressed. One projection for the whole trace; for a
    time-varying one, call this on windows.

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
        BVP estimate in relative units, zero-mean, rising with blood volume (positive
        correlation with a contact PPG): ``-Cn w``, because blood lowers every channel, so
        ``Cn w`` falls as blood volume rises.

    Raises
    ------
    ValueError
        ``rgb`` not (T, 3), shorter than ``max(16, 1.6 s * fs_hz)`` frames, non-finite or not
        positive; ``fs_hz`` not a finite number > 7.

    References
    ----------
    .. [1] G. de Haan, A. van Leest, "Improved motion robustness of remote-PPG by using the blood
       volume pulse signature", Physiol. Meas. 35(9) (2014) 1913-1926.
    """
    c, fs = check_rgb(rgb, fs_hz)
    cn = bandpass_cols(normalise(c, fs), fs)
    sd = cn.std(axis=0)
    if not np.any(sd > 0):
        return np.zeros(len(c))
    sig = sd / np.linalg.norm(sd)
    q_inv_sig = np.linalg.pinv(cn.T @ cn) @ sig  # pinv: channels may be linearly dependent
    w = q_inv_sig / (sig @ q_inv_sig)
    return finish(-(cn @ w))
