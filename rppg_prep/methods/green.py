"""GREEN: the band-passed green channel (Verkruysse et al. 2008)."""

from __future__ import annotations

import numpy as np

from rppg_prep.methods._common import bandpass_cols, check_rgb, finish, normalise


def green(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """Pulse from the green channel alone, negated so that it rises with blood volume.

    The green channel carries the strongest pulsatile signal of the three (haemoglobin absorbs
    green most) [1]_. The trace is divided by its centred 1.6-s moving mean (relative units, so
    slow illumination changes do not scale the pulse), band-passed 0.7-3.5 Hz (zero-phase
    Butterworth, order 2) and negated: more blood absorbs more light, so the raw green *falls*
    when blood volume rises. GREEN does nothing against intensity changes that fall in the band.

    Parameters
    ----------
    rgb : array_like of float, shape (T, 3)
        Per-frame spatial mean of the skin pixels, channels R, G, B (0-255; any positive scale),
        finite and > 0.
    fs_hz : float
        Frame rate in Hz, > 7 (twice the top of the 0.7-3.5 Hz pulse band).

    Returns
    -------
    ndarray of float64, shape (T,)
        BVP estimate in relative units (fraction of the local mean green), zero-mean; sign
        convention shared by all methods: positive correlation with a contact PPG.

    Raises
    ------
    ValueError
        ``rgb`` not (T, 3), shorter than ``max(16, 1.6 s * fs_hz)`` frames, non-finite or not
        positive; ``fs_hz`` not a finite number > 7.

    References
    ----------
    .. [1] W. Verkruysse, L. O. Svaasand, J. S. Nelson, "Remote plethysmographic imaging using
       ambient light", Optics Express 16(26) (2008) 21434-21445.
    """
    c, fs = check_rgb(rgb, fs_hz)
    return finish(-bandpass_cols(normalise(c, fs)[:, 1], fs))
