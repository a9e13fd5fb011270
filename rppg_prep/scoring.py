"""Score an unsupervised rPPG method on a finished build.

Per subject: the mean RGB of the forehead and cheek ROIs of every stabilised crop
(:mod:`rppg_prep.roi`) goes through the method (:mod:`rppg_prep.methods`); its BVP and the contact
PPG on the same frame clock (the ``labels`` node) go through the same HR estimator
(:mod:`rppg_prep.protocols`), so the reference HR is computed exactly like the prediction.

Modes: ``toolbox`` (one HR per whole video: detrend lambda=100, 1st-order Butterworth band-pass,
FFT peak with next-power-of-two length in 0.75-2.5 Hz, as rPPG-Toolbox's NeurIPS 2023 protocol)
and ``windowed`` (the same per 10-s window, 1-s stride).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rppg_prep import protocols
from rppg_prep.manifest import open_build
from rppg_prep.methods import get_method
from rppg_prep.roi import rgb_trace

__all__ = ["SubjectScore", "evaluate_build", "skin_rgb", "MODES"]

MODES = ("toolbox", "windowed")


@dataclass
class SubjectScore:
    """One subject's result.

    Attributes
    ----------
    subject : str
    hr_pred_bpm, hr_ref_bpm : ndarray of float64, shape (N,)
        One value (toolbox mode) or one per window (windowed mode), bpm.
    snr_db : float
        Toolbox SNR of the predicted BVP at the reference HR, dB.
    fs_hz : float
        Frame rate, frames per second.
    bvp_pred, bvp_ref : ndarray of float64, shape (T,)
        Method output and contact PPG on the frame clock.
    """

    subject: str
    hr_pred_bpm: np.ndarray
    hr_ref_bpm: np.ndarray
    snr_db: float
    fs_hz: float
    bvp_pred: np.ndarray
    bvp_ref: np.ndarray


def fill_nan(rgb: np.ndarray) -> np.ndarray:
    """Interpolate frames without skin ROIs (NaN rows of an (T, 3) RGB trace) from their neighbours.

    Raises ValueError if no frame has skin ROIs.
    """
    ok = np.isfinite(rgb).all(axis=1)
    if not ok.any():
        raise ValueError("no frame has skin ROIs")
    idx = np.arange(len(rgb))
    return np.stack([np.interp(idx, idx[ok], rgb[ok, c]) for c in range(3)], axis=1)


def skin_rgb(nodes: dict) -> np.ndarray:
    """Mean RGB of the face skin in every stored crop of one subject of a build.

    Parameters
    ----------
    nodes : dict
        One subject of :func:`rppg_prep.open_build` (needs ``face`` and ``landmarks``).

    Returns
    -------
    ndarray of float64, shape (T, 3)
        :func:`rppg_prep.roi.rgb_trace` (0-255 scale), frames without skin ROIs interpolated
        (:func:`fill_nan`).

    Raises
    ------
    ValueError
        No frame has skin ROIs.
    """
    return fill_nan(rgb_trace(nodes["face"]["frames"], nodes["landmarks"]["landmarks"][:], nodes["face"]["box"][:]))


def evaluate_build(cache: str | Path, dataset: str, pipeline: str, method: str, *, mode: str = "toolbox",
                   band_hz: tuple[float, float] = protocols.BAND_NEURIPS, window_s: float = 10.0,
                   stride_s: float = 1.0, subjects: list[str] | None = None) -> list[SubjectScore]:
    """Run ``method`` on every subject of a build and pair its HR with the reference HR.

    Parameters
    ----------
    cache, dataset, pipeline : the build (see :func:`rppg_prep.open_build`)
    method : str
        A key of :data:`rppg_prep.methods.METHODS` (green, chrom, pos, ica, lgi, pbv).
    mode : {"toolbox", "windowed"}
    band_hz : (float, float)
        HR band, Hz.
    window_s, stride_s : float
        Windowed mode's window and stride, seconds.
    subjects : list of str, optional
        Only these.

    Returns
    -------
    list of SubjectScore, in the build's subject order.

    Raises
    ------
    KeyError
        Unknown method or subject.
    ValueError
        Unknown mode.
    StoreError
        No such build.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    fn = get_method(method)
    build = open_build(cache, dataset, pipeline)
    wanted = subjects or list(build)
    unknown = [s for s in wanted if s not in build]
    if unknown:
        raise KeyError(f"subject(s) {unknown} not in build {pipeline!r}; built: {', '.join(build)}")
    scores = []
    for sid in wanted:
        nodes = build[sid]
        fs = float(nodes["face"].attrs["fps"])
        bvp_pred = fn(skin_rgb(nodes), fs)
        bvp_ref = nodes["labels"]["bvp"][:].astype(np.float64)
        if mode == "toolbox":
            pred = np.array([protocols.hr_from_bvp(bvp_pred, fs, band_hz=band_hz)])
            ref = np.array([protocols.hr_from_bvp(bvp_ref, fs, band_hz=band_hz)])
        else:
            _, pred = protocols.windowed_hr(bvp_pred, fs, window_s, stride_s, band_hz)
            _, ref = protocols.windowed_hr(bvp_ref, fs, window_s, stride_s, band_hz)
        snr = protocols.snr_toolbox(bvp_pred, fs, float(np.nanmedian(ref)), band_hz)
        scores.append(SubjectScore(sid, pred, ref, snr, fs, bvp_pred, bvp_ref))
    return scores
