"""CHROM: chrominance-based rPPG (de Haan & Jeanne 2013)."""

from __future__ import annotations

import numpy as np

from rppg_prep.methods._common import bandpass_cols, check_rgb, finish, normalise, window_len


def chrom(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """Pulse from two chrominance signals combined so that intensity and specular changes cancel.

    Steps [1]_: the trace is normalised by its centred 1.6-s moving mean; the chrominance signals
    ``X = 3 R - 2 G`` and ``Y = 1.5 R + G - 1.5 B`` are band-passed 0.7-3.5 Hz (zero-phase
    Butterworth, order 2) **over the whole trace**, not per window as in the paper, so the
    filter has no window-edge transients; in each 1.6-s window (half-window hop) ``S = Xf - alpha
    Yf`` with ``alpha = std(Xf) / std(Yf)``, and the windows are overlap-added with a Hann taper
    (divided by the summed taper, so the edges are not attenuated). The coefficients of ``X``
    and ``Y`` each sum to 1, so a change of intensity equal on all normalised channels appears
    equally in both and ``alpha`` ~ 1 cancels it when it dominates.

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
        BVP estimate in relative units, zero-mean. ``S`` as defined in the paper already rises
        with blood volume (blood lowers G more than R), so it correlates positively with a
        contact PPG; no sign flip.

    Raises
    ------
    ValueError
        ``rgb`` not (T, 3), shorter than ``max(16, 1.6 s * fs_hz)`` frames, non-finite or not
        positive; ``fs_hz`` not a finite number > 7.

    References
    ----------
    .. [1] G. de Haan, V. Jeanne, "Robust pulse rate from chrominance-based rPPG", IEEE Trans.
       Biomed. Eng. 60(10) (2013) 2878-2886.
    """
    c, fs = check_rgb(rgb, fs_hz)
    r, g, b = normalise(c, fs).T
    xf, yf = bandpass_cols(np.stack([3 * r - 2 * g, 1.5 * r + g - 1.5 * b], axis=1), fs).T
    n, length = len(c), window_len(fs)
    starts = list(range(0, n - length + 1, length // 2))
    if starts[-1] != n - length:  # one more window flush with the end covers the tail
        starts.append(n - length)
    taper = np.hanning(length + 2)[1:-1]  # strictly positive, so every frame has weight
    out, weight = np.zeros(n), np.zeros(n)
    for a in starts:
        x, y = xf[a:a + length], yf[a:a + length]
        sy = y.std()
        s = x - (x.std() / sy if sy > 0 else 0.0) * y
        out[a:a + length] += taper * (s - s.mean())
        weight[a:a + length] += taper
    return finish(out / weight)
