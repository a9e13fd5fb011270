"""Subject-disjoint evaluation: K folds with a validation subject, and the rPPG-Toolbox whole-video HR.

A result counts only on people the model and every choice made for it never saw. Each
:class:`Split` therefore has three disjoint sets of subjects: ``train`` (gradient steps), ``val``
(one training subject held back: the checkpoint, the step count, early stopping and any threshold
are chosen on it) and ``test`` (scored once, never looked at before). :func:`kfold_splits` makes K
of them over a subject list; :func:`fixed_split` one from a given test set.

The whole-video protocol follows rPPG-Toolbox (Liu et al., NeurIPS 2023 Datasets and Benchmarks,
``evaluation/metrics.py`` with ``EVALUATION_METHOD: FFT``): a subject's predicted BVP is the
concatenation of its clip predictions (here the overlap-average of the z-scored clip predictions,
as the stored clips overlap), its HR is the FFT peak in 0.75-2.5 Hz after the Toolbox's detrend and
band-pass (:func:`rppg_prep.protocols.hr_from_bvp`), and the reference is the contact PPG of the same
frames through the same steps. MAE, RMSE, MAPE and Pearson r are then taken over subjects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Split", "kfold_splits", "fixed_split", "overlap_average", "whole_video_hr", "mean_sd"]


@dataclass(frozen=True)
class Split:
    """One subject-disjoint split.

    Parameters
    ----------
    fold : int
        Fold number (0 for a fixed split).
    train, val, test : list of str
        Disjoint subject ids: gradient steps, model selection, scoring.
    """

    fold: int
    train: list[str]
    val: list[str]
    test: list[str]


def kfold_splits(subjects: list[str], n_folds: int = 4) -> list[Split]:
    """K subject-disjoint folds, each with one training subject held back for validation.

    Subject i (in the given order, natural order for a build) is tested in fold ``i mod n_folds``
    (:func:`rppg_models.data.subject_folds`); the validation subject of fold k is the first test
    subject of fold k + 1 (mod K), so each fold's validation subject is a training subject of that
    fold and, with at least one subject per fold, every fold validates on a different person.

    Parameters
    ----------
    subjects : list of str
        Subject ids; every fold needs a non-empty train, val and test set.
    n_folds : int
        K, >= 2.

    Returns
    -------
    list of Split
        ``n_folds`` splits; over them every subject is tested exactly once.

    Raises
    ------
    ValueError
        Fewer than 2 folds, or too few subjects for a non-empty train, val and test in every fold.

    Examples
    --------
    >>> [s.test for s in kfold_splits(["a", "b", "c", "d"], 2)]
    [['a', 'c'], ['b', 'd']]
    >>> kfold_splits(["a", "b", "c", "d"], 2)[0].val
    ['b']
    """
    from rppg_models.data import subject_folds

    subjects = list(subjects)
    if n_folds < 2 or len(subjects) < n_folds or len(subjects) - len(subjects[::n_folds]) < 2:
        raise ValueError(f"{n_folds} folds need at least {max(n_folds, 3)} subjects with 2 left to train and "
                         f"validate on in every fold; got {len(subjects)}")
    tests = [subject_folds(subjects, n_folds, k)[1] for k in range(n_folds)]
    out = []
    for k in range(n_folds):
        val = [tests[(k + 1) % n_folds][0]]
        out.append(Split(k, [s for s in subjects if s not in tests[k] and s not in val], val, tests[k]))
    return out


def fixed_split(subjects: list[str], test: list[str], val: list[str] | None = None) -> Split:
    """The split of a given test set: validation on ``val`` (default: the first other subject).

    Parameters
    ----------
    subjects : list of str
        Every subject of the build, in natural order.
    test : list of str
        Subjects to score.
    val : list of str, optional
        Validation subjects (default: the first subject not in ``test``).

    Returns
    -------
    Split
        ``fold`` 0.

    Raises
    ------
    ValueError
        A test or validation subject not in ``subjects``, overlapping sets, or nothing left to train on.
    """
    unknown = [s for s in [*test, *(val or [])] if s not in subjects]
    if unknown:
        raise ValueError(f"subject(s) {unknown} not in the build ({', '.join(subjects)})")
    rest = [s for s in subjects if s not in test]
    val = list(val) if val else rest[:1]
    if set(val) & set(test):
        raise ValueError(f"validation subject(s) {sorted(set(val) & set(test))} are also test subjects")
    train = [s for s in rest if s not in val]
    if not train or not val:
        raise ValueError(f"nothing left to train and validate on besides the test subjects {test}")
    return Split(0, train, val, list(test))


def overlap_average(preds: list[np.ndarray], windows: np.ndarray, n_frames: int) -> np.ndarray:
    """One per-frame signal from overlapping clip predictions: each z-scored, overlaps averaged.

    Parameters
    ----------
    preds : list of ndarray of float, shape (L_k,)
        Prediction of clip k, one value per frame of ``windows[k]``.
    windows : ndarray of int, shape (N, 2)
        [start, stop) frames of each clip.
    n_frames : int
        Frames of the video.

    Returns
    -------
    ndarray of float64, shape (n_frames,)
        NaN on frames no clip covers.

    Raises
    ------
    ValueError
        A prediction whose length differs from its window's.
    """
    acc = np.zeros(n_frames)
    cnt = np.zeros(n_frames)
    for p, (a, b) in zip(preds, np.asarray(windows)):
        p = np.asarray(p, dtype=np.float64)
        if p.size != b - a:
            raise ValueError(f"a prediction of {p.size} frames for the window [{a}, {b})")
        acc[a:b] += (p - p.mean()) / (p.std() + 1e-12)
        cnt[a:b] += 1
    with np.errstate(invalid="ignore"):
        return np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)


def whole_video_hr(bvp: np.ndarray, t_s: np.ndarray) -> float:
    """rPPG-Toolbox whole-video HR (bpm) of a per-frame signal on the frame clock.

    The frames that carry a value (finite ``bvp``; they must be contiguous) are resampled linearly
    onto an even grid at their mean rate over ``t_s`` (UBFC-rPPG's capture clock is uneven), then
    :func:`rppg_prep.protocols.hr_from_bvp` with ``protocol="toolbox"``: smoothness-priors detrend
    (lambda 100), 1st-order Butterworth band-pass and the FFT peak (next power of two) in
    0.75-2.5 Hz.

    Parameters
    ----------
    bvp : ndarray of float, shape (T,)
        Per-frame signal, NaN where absent.
    t_s : ndarray of float, shape (T,)
        The frame clock, s, increasing.

    Returns
    -------
    float
        HR in bpm.

    Raises
    ------
    ValueError
        Fewer than 2 s of signal, or lengths that differ.
    """
    from rppg_prep.protocols import BAND_NEURIPS, hr_from_bvp
    from rppg_prep.pulse import resample_even

    bvp = np.asarray(bvp, dtype=np.float64)
    t = np.asarray(t_s, dtype=np.float64)
    if bvp.shape != t.shape:
        raise ValueError(f"{bvp.size} samples for {t.size} frame times")
    ok = np.flatnonzero(np.isfinite(bvp))
    if ok.size < 2 or t[ok[-1]] - t[ok[0]] < 2.0:
        raise ValueError("fewer than 2 s of signal for a whole-video HR")
    t, x = t[ok[0]:ok[-1] + 1], bvp[ok[0]:ok[-1] + 1]
    fs = (t.size - 1) / (t[-1] - t[0])
    _, even = resample_even(t, x, fs)
    return float(hr_from_bvp(even, fs, protocol="toolbox", band_hz=BAND_NEURIPS))


def mean_sd(values) -> dict[str, float]:
    """Mean, sample standard deviation (ddof 1; 0 for one value) and count of the finite values.

    Parameters
    ----------
    values : iterable of float

    Returns
    -------
    dict
        ``mean``, ``sd``, ``n``, ``min``, ``max`` (NaN when no value is finite).
    """
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "sd": float("nan"), "n": 0, "min": float("nan"), "max": float("nan")}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size),
            "min": float(v.min()), "max": float(v.max())}
