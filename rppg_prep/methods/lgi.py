"""LGI: local group invariance (Pilz et al. 2018)."""

from __future__ import annotations

import numpy as np

from rppg_prep.methods._common import bandpass_cols, check_rgb, finish


def lgi(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """Pulse as the green row of the RGB with its principal colour direction projected out.

    Steps [1]_: ``u`` is the first left singular vector of the (3, T) RGB matrix (the direction
    of the skin colour and of any intensity change, which scales all channels together); the
    projection ``P = I - u u'`` removes it, and the green row of ``P C`` is the pulse. The paper
    takes the SVD over the pixels of a face region; here the input is the per-frame spatial
    mean, so the SVD is over time. The row is divided by the mean green (relative units),
    band-passed 0.7-3.5 Hz (zero-phase Butterworth, order 2) and negated.

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
        correlation with a contact PPG). The green row keeps the sign of the green pulse, which
        falls with blood volume, whenever green carries relatively more pulse than the
        principal direction does (true for skin: G is the strongest pulse channel); hence the
        negation. ``u u'`` does not depend on the sign of ``u``, so the sign is deterministic.

    Raises
    ------
    ValueError
        ``rgb`` not (T, 3), shorter than ``max(16, 1.6 s * fs_hz)`` frames, non-finite or not
        positive; ``fs_hz`` not a finite number > 7.

    References
    ----------
    .. [1] C. S. Pilz, S. Zaunseder, J. Krajewski, V. Blazek, "Local group invariance for heart
       rate estimation from face videos in the wild", Proc. IEEE CVPR Workshops (2018)
       1254-1262.
    """
    c, fs = check_rgb(rgb, fs_hz)
    u = np.linalg.svd(c.T, full_matrices=False)[0][:, 0]
    green_row = c[:, 1] - u[1] * (c @ u)
    return finish(-bandpass_cols(green_row / c[:, 1].mean(), fs))
