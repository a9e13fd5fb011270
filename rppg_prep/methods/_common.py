"""Input checks and small signal helpers shared by the rPPG methods (pure numpy/scipy)."""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import uniform_filter1d

from rppg_prep.pulse import bandpass

#: pass band of every method's output, Hz (42-210 bpm)
BAND_HZ = (0.7, 3.5)
#: analysis window of the windowed methods (POS, CHROM, local normalisation), s
WINDOW_S = 1.6
#: fewer samples than this cannot be zero-phase band-passed (sosfiltfilt pads 3 * (2 * 2 + 1))
_MIN_FRAMES = 16


def window_len(fs_hz: float) -> int:
    """Frames in a :data:`WINDOW_S` window, even so that a half-window hop is exact."""
    return 2 * math.ceil(WINDOW_S * fs_hz / 2)


def min_frames(fs_hz: float) -> int:
    """Shortest trace the methods accept: one analysis window, and enough for the band-pass."""
    return max(_MIN_FRAMES, window_len(fs_hz))


def check_rgb(rgb, fs_hz) -> tuple[np.ndarray, float]:
    """Validate ``(rgb, fs_hz)``; return ``rgb`` as float64 (T, 3) and ``fs_hz`` as float."""
    a = np.asarray(rgb)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"rgb must have shape (T, 3) (per-frame mean R, G, B), got {a.shape}")
    try:
        fs = float(fs_hz)
    except (TypeError, ValueError):
        raise ValueError(f"fs_hz must be a number, got {fs_hz!r}") from None
    if not (math.isfinite(fs) and fs > 2 * BAND_HZ[1]):
        raise ValueError(f"fs_hz must be finite and > {2 * BAND_HZ[1]:g} Hz (twice the top of the "
                         f"{BAND_HZ[0]}-{BAND_HZ[1]} Hz pulse band), got {fs_hz!r}")
    need = min_frames(fs)
    if a.shape[0] < need:
        raise ValueError(f"rgb is too short: {a.shape[0]} frames, need at least {need} "
                         f"({WINDOW_S} s at {fs:g} Hz, and >= {_MIN_FRAMES})")
    a = a.astype(np.float64, copy=False)
    if not np.all(np.isfinite(a)):
        raise ValueError("rgb has non-finite values (NaN or inf); fill or cut missing frames first")
    if not np.all(a > 0):
        raise ValueError("rgb must be > 0 everywhere: the methods divide by the channel means")
    return a, fs


def normalise(rgb: np.ndarray, fs_hz: float) -> np.ndarray:
    """``rgb`` over its centred moving mean (one window long), minus 1: relative variation, (T, 3).

    A local rather than global mean so that slow intensity changes do not scale the pulse.
    """
    return rgb / uniform_filter1d(rgb, window_len(fs_hz), axis=0, mode="nearest") - 1.0


def bandpass_cols(x: np.ndarray, fs_hz: float) -> np.ndarray:
    """Zero-phase :data:`BAND_HZ` band-pass (:func:`rppg_prep.pulse.bandpass`) of each column."""
    if x.ndim == 1:
        return bandpass(x, fs_hz, BAND_HZ)
    return np.stack([bandpass(col, fs_hz, BAND_HZ) for col in x.T], axis=1)


def finish(x: np.ndarray) -> np.ndarray:
    """Contiguous float64 with the mean removed."""
    x = np.asarray(x, dtype=np.float64)
    return np.ascontiguousarray(x - x.mean())
