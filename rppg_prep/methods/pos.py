"""POS: plane-orthogonal-to-skin rPPG (Wang et al. 2017)."""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from rppg_prep.methods._common import bandpass_cols, check_rgb, finish, window_len

#: projection onto the plane orthogonal to the (normalised) skin tone [1, 1, 1]
_P = np.array([[0.0, 1.0, -1.0], [-2.0, 1.0, 1.0]])
#: windows processed at once: bounds memory to ~_BLOCK * window * 3 floats on long traces
_BLOCK = 4096


def pos(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """Pulse projected on the plane orthogonal to the skin tone, with alpha tuning.

    Algorithm 1 of [1]_: for every window of ``l = 1.6 s * fs_hz`` frames (hop of one frame) the
    RGB are divided by their window mean (temporal normalisation), projected ``S = P C`` with
    ``P = [[0, 1, -1], [-2, 1, 1]]``, combined ``h = S1 + (std S1 / std S2) S2`` (alpha tuning:
    a distortion in anti-phase in ``S1`` and ``S2`` cancels), and the zero-mean ``h`` are
    overlap-added. Departures from the paper: the sum is divided by the number of windows
    covering each frame (edges are not attenuated; the interior is the paper's sum / ``l``), and
    the result is band-passed 0.7-3.5 Hz (zero-phase Butterworth, order 2) and negated.

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
        correlation with a contact PPG). The paper's ``h`` *falls* with blood volume: blood
        lowers all channels, G most, so ``S1 = G - B < 0`` and ``S2 = G + B - 2 R < 0`` for the
        skin's blood-volume signature ``[0.33, 0.77, 0.53]``; hence the negation.

    Raises
    ------
    ValueError
        ``rgb`` not (T, 3), shorter than ``max(16, 1.6 s * fs_hz)`` frames, non-finite or not
        positive; ``fs_hz`` not a finite number > 7.

    References
    ----------
    .. [1] W. Wang, A. C. den Brinker, S. Stuijk, G. de Haan, "Algorithmic principles of remote
       PPG", IEEE Trans. Biomed. Eng. 64(7) (2017) 1479-1491.
    """
    c, fs = check_rgb(rgb, fs_hz)
    n, length = len(c), window_len(fs)
    n_win = n - length + 1
    acc = np.zeros(n)
    for a in range(0, n_win, _BLOCK):
        b = min(n_win, a + _BLOCK)
        win = sliding_window_view(c[a:b + length - 1], length, axis=0)  # (windows, 3, l)
        s = np.einsum("ij,njt->nit", _P, win / win.mean(axis=2, keepdims=True))
        sd = s.std(axis=2)
        alpha = np.divide(sd[:, 0], sd[:, 1], out=np.zeros(b - a), where=sd[:, 1] > 0)
        h = s[:, 0] + alpha[:, None] * s[:, 1]
        h -= h.mean(axis=1, keepdims=True)
        for j in range(length):  # frame a + k + j gets sample j of window a + k
            acc[a + j:b + j] += h[:, j]
    coverage = np.convolve(np.ones(n_win), np.ones(length))
    return finish(-bandpass_cols(acc / coverage, fs))
