"""Pseudo-PPG synthetic video generator of the Bousefsaf 3D-CNN (its only training data).

Implemented from the written specification (``design/models.md`` §3.4) of Bousefsaf, Pruski and
Maaoui, "3D convolutional neural networks for remote pulse rate measurement and mapping from facial
video", Applied Sciences 9(20):4364, 2019. A video is 60 frames (2 s at 30 fps) of a 25x25 patch,
one channel; its label is one of 76 classes: 75 heart rates ``linspace(55, 240, 75)`` bpm (2.5-bpm
bins, :data:`HR_CLASSES_BPM`) and the noise class 75.

Pulse video of class c (HR f = HR_CLASSES_BPM[c]), per video:

1. phase: t' = t + k/30, t = 0, 1/30, ..., 59/30 s, k ~ U{0, ..., 32};
2. waveform s(t') = a0 + a1 cos(wt') + b1 sin(wt') + a2 cos(2wt') + b2 sin(2wt'), w = 2 pi f/60
   (2-harmonic Fourier fit of a real iPPG wave, coefficients :data:`WAVEFORM_COEFFS`);
3. s min-max normalised to [0, 1] over the 60 samples;
4. trend: order uniform in {linear, quadratic, cubic}, amplitude A ~ U(-3, 3) (linear) or
   U(-1, 1) (quadratic, cubic), offset flag o ~ U{0, 1} (see :func:`trends`);
5. signal = s + trend, minus its minimum;
6. every pixel of every frame = signal[t] / 625;
7. amplitude a ~ U(1.5, 4), noise_energy = a * 0.25 * U(1, 10) / 100; frame =
   255 (a img + n noise_energy), n ~ N(0.5, 0.25) i.i.d. per pixel and frame; negatives -> 0;
   truncated to integer grey levels; / 255 (the pulse spans only a few grey levels);
8. minus the mean of the whole 60x25x25 video.

Noise video (class 75): a trend from the same generator, / 625, plus i.i.d. N(0, 1)/50 per pixel and
frame (no quantisation), minus the video mean.

Implementation notes and deviations (none changes the distribution):

* Vectorised: all per-video scalars are drawn first (in a fixed order, one array per parameter),
  then the per-pixel normals chunk by chunk into a preallocated float32 output, so the peak extra
  memory is one chunk (``chunk_size`` videos) and the result does not depend on ``chunk_size``.
  The reference drew per video in a Python loop with the global ``np.random`` state, so no
  bit-for-bit match with it is possible or intended; a seeded ``numpy.random.Generator`` gives
  identical arrays for identical ``(n, labels, seed)``.
* Per-pixel normals are drawn in float32 (memory); quantisation (step 7) is done with ``floor`` on
  non-negative values, which equals the reference's ``astype('uint8')`` truncation; values above 255
  (which the spec's ranges cannot reach: the maximum is ~45) are clipped instead of wrapping.
* Labels default to balanced classes ``arange(n) % 76`` (the reference generated 200 videos of each
  class per batch); any label array can be given.
* Output layout is torch's (n, 1, 60, 25, 25) (the reference stored Keras' (n, 60, 25, 25, 1)).
"""

from __future__ import annotations

import numpy as np

__all__ = ["generate", "pulse_videos_uint8", "pulse_waveform", "trends", "bpm_to_class", "class_to_bpm",
           "HR_CLASSES_BPM", "CLASS_BPM", "N_CLASSES", "N_HR_CLASSES", "NOISE_CLASS", "NOISE_BPM", "FS", "LENGTH", "SIZE"]

N_HR_CLASSES = 75  #: heart-rate classes
NOISE_CLASS = 75  #: index of the "noise / no pulse" class
N_CLASSES = 76  #: HR classes + noise
NOISE_BPM = -1.0  #: HR reported for the noise class
HR_CLASSES_BPM = np.linspace(55.0, 240.0, N_HR_CLASSES)  #: HR of class c < 75, bpm (2.5-bpm steps)
CLASS_BPM = np.append(HR_CLASSES_BPM, NOISE_BPM)  #: (76,) bpm of every class, noise = -1
FS = 30.0  #: frame rate of the synthetic videos, Hz
LENGTH = 60  #: frames per video (2 s)
SIZE = 25  #: patch side, px
WAVEFORM_COEFFS = (0.440240602542388, -0.334501803331783, -0.198990393984879,
                   -0.050159136439220, 0.099347477830878)  #: a0, a1, b1, a2, b2
MAX_PHASE_SHIFT = 33  #: k ~ U{0, ..., 32} frames (one period at 55 bpm)
TREND_AMPLITUDE = ((-3.0, 3.0), (-1.0, 1.0), (-1.0, 1.0))  #: U(lo, hi) for linear, quadratic, cubic
AMPLITUDE_RANGE = (1.5, 4.0)  #: pulse amplitude a ~ U(1.5, 4)
NOISE_FACTOR_RANGE = (1.0, 10.0)  #: noise_energy = a * 0.25 * U(1, 10) / 100
PIXEL_NOISE_MEAN, PIXEL_NOISE_SD = 0.5, 0.25  #: n ~ N(0.5, 0.25) per pixel, pulse videos
NOISE_CLASS_SD = 1.0 / 50.0  #: N(0, 1)/50 per pixel, noise videos


def class_to_bpm(classes) -> np.ndarray:
    """Class indices -> HR in bpm.

    Parameters
    ----------
    classes : array_like of int
        Any shape; values in [0, 75].

    Returns
    -------
    ndarray of float
        Same shape; the noise class (75) gives -1.
    """
    return CLASS_BPM[np.asarray(classes)]


def bpm_to_class(bpm) -> np.ndarray:
    """HR in bpm -> the nearest of the 75 HR classes.

    Parameters
    ----------
    bpm : array_like of float
        Any shape; values outside [55, 240] clip to the end classes.

    Returns
    -------
    ndarray of int64
        Same shape, values in [0, 74].

    Raises
    ------
    ValueError
        If any value is not finite (use :data:`NOISE_CLASS` explicitly for "no pulse").
    """
    bpm = np.asarray(bpm, float)
    if not np.all(np.isfinite(bpm)):
        raise ValueError("bpm must be finite")
    step = HR_CLASSES_BPM[1] - HR_CLASSES_BPM[0]
    return np.clip(np.rint((bpm - HR_CLASSES_BPM[0]) / step), 0, N_HR_CLASSES - 1).astype(np.int64)


def trends() -> np.ndarray:
    """(3, 2, 60) unit trend shapes, indexed [order - 1, offset flag, t]; trend = A * shape.

    linear (both flags): 0 -> 1 ramp; quadratic o=0: x^2, x in [0, 1]; quadratic o=1:
    0.5 x^2 / max(x^2), x in [-0.5, 0.5] (U shape, 0.5 at both ends); cubic o=0: x^3, x in [0, 1];
    cubic o=1: 0.5 x^3 / max(x^3), x in [-0.5, 0.5] (-0.5 -> 0.5).
    """
    x = np.linspace(0.0, 1.0, LENGTH)
    xc = np.linspace(-0.5, 0.5, LENGTH)
    q, c = xc ** 2, xc ** 3
    return np.array([[x, x],
                     [x ** 2, 0.5 * q / q.max()],
                     [x ** 3, 0.5 * c / c.max()]])


def pulse_waveform(hr_bpm: np.ndarray, shift_frames: np.ndarray) -> np.ndarray:
    """(n, 60) steps 1-3: 2-harmonic waveform at ``hr_bpm`` shifted by ``shift_frames``, min-max to [0, 1]."""
    a0, a1, b1, a2, b2 = WAVEFORM_COEFFS
    t = (np.arange(LENGTH)[None, :] + np.asarray(shift_frames, float)[:, None]) / FS
    wt = 2.0 * np.pi * np.asarray(hr_bpm, float)[:, None] / 60.0 * t
    s = a0 + a1 * np.cos(wt) + b1 * np.sin(wt) + a2 * np.cos(2 * wt) + b2 * np.sin(2 * wt)
    s -= s.min(axis=1, keepdims=True)
    return s / s.max(axis=1, keepdims=True)


def _per_video(labels: np.ndarray, rng: np.random.Generator):
    """Per-video draws (one array per parameter, fixed order): noise flags, pulse signal (n, 60),
    per-frame image level before pixel noise (n, 60) and noise energy (n,)."""
    n = labels.size
    is_noise = labels == NOISE_CLASS

    # per-video scalars, one draw per parameter for all videos (noise videos ignore the pulse ones)
    shift = rng.integers(0, MAX_PHASE_SHIFT, n)
    order = rng.integers(0, 3, n)
    lo = np.array([r[0] for r in TREND_AMPLITUDE])[order]
    hi = np.array([r[1] for r in TREND_AMPLITUDE])[order]
    trend_amp = rng.uniform(lo, hi) if n else np.zeros(0)
    offset = rng.integers(0, 2, n)
    amplitude = rng.uniform(*AMPLITUDE_RANGE, n)
    noise_energy = amplitude * 0.25 * rng.uniform(*NOISE_FACTOR_RANGE, n) / 100.0

    trend = trend_amp[:, None] * trends()[order, offset]  # (n, 60)
    hr = HR_CLASSES_BPM[np.where(is_noise, 0, labels)]
    signal = pulse_waveform(hr, shift) + trend
    signal -= signal.min(axis=1, keepdims=True)
    # per-frame level of the uniform image, before pixel noise (steps 6-7 / noise class)
    level = np.where(is_noise[:, None], trend, amplitude[:, None] * signal) / (SIZE * SIZE)

    return is_noise, signal, level, noise_energy


def _check(n: int, labels, chunk_size: int) -> np.ndarray:
    if n < 0 or chunk_size < 1:
        raise ValueError(f"need n >= 0 and chunk_size >= 1, got {n}, {chunk_size}")
    labels = np.arange(n) % N_CLASSES if labels is None else np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) \
            or (n and (labels.min() < 0 or labels.max() >= N_CLASSES)):
        raise ValueError(f"labels must be ({n},) ints in [0, {N_CLASSES - 1}]")
    return labels.astype(np.int64)


def pulse_videos_uint8(n: int, *, rng: np.random.Generator, labels=None,
                       chunk_size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pulse videos as the integer grey levels of step 7, before the /255 and the mean removal.

    This is the form a video file or a store keeps: ``generate`` of the same pulse classes equals
    ``grey / 255`` minus each video's mean, draw for draw. The noise class is not quantised in the
    specification, so it has no uint8 form.

    Parameters
    ----------
    n, rng, chunk_size : as :func:`generate`.
    labels : optional (n,) ints in [0, 74] (HR classes only); default ``arange(n) % 75``.

    Returns
    -------
    grey : (n, 60, 25, 25) uint8 grey levels.
    signal : (n, 60) float64, the pseudo-PPG (pulse waveform + trend, minimum 0) of each video.
    labels : (n,) int64.

    Raises
    ------
    ValueError
        As :func:`generate`, or a noise-class label.
    """
    labels = _check(n, np.arange(n) % (N_CLASSES - 1) if labels is None else labels, chunk_size)
    if np.any(labels == NOISE_CLASS):
        raise ValueError("the noise class has no uint8 form (it is not quantised in the specification)")
    _, signal, level, noise_energy = _per_video(labels, rng)
    grey = np.empty((n, LENGTH, SIZE, SIZE), np.uint8)
    for i in range(0, n, chunk_size):
        sl = slice(i, min(i + chunk_size, n))
        z = rng.standard_normal((sl.stop - i, LENGTH, SIZE, SIZE), dtype=np.float32)
        lev = level[sl, :, None, None].astype(np.float32)
        ne = noise_energy[sl, None, None, None].astype(np.float32)
        grey[sl] = np.floor(np.clip(255.0 * (lev + (PIXEL_NOISE_MEAN + PIXEL_NOISE_SD * z) * ne), 0.0, 255.0))
    return grey, signal, labels


def generate(n: int, *, rng: np.random.Generator, labels=None,
             chunk_size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic videos and their labels.

    Parameters
    ----------
    n : number of videos.
    rng : seeded ``numpy.random.Generator`` (the only source of randomness).
    labels : optional (n,) ints in [0, 75] (75 = noise); default ``arange(n) % 76`` (balanced).
    chunk_size : videos whose per-pixel noise is materialised at once (memory only; the output does
        not depend on it).

    Returns
    -------
    videos : (n, 1, 60, 25, 25) float32, each video zero-mean.
    labels : (n,) int64.

    Raises
    ------
    ValueError
        On a negative ``n``, a ``labels`` array of the wrong shape or out-of-range labels, or a
        ``chunk_size`` < 1.
    """
    labels = _check(n, labels, chunk_size)
    is_noise, _, level, noise_energy = _per_video(labels, rng)
    videos = np.empty((n, 1, LENGTH, SIZE, SIZE), np.float32)
    for i in range(0, n, chunk_size):
        sl = slice(i, min(i + chunk_size, n))
        z = rng.standard_normal((sl.stop - i, LENGTH, SIZE, SIZE), dtype=np.float32)
        noise = is_noise[sl]
        lev = level[sl, :, None, None].astype(np.float32)
        # pulse videos: 255 (a img + n e), n ~ N(0.5, 0.25), negatives -> 0, truncated grey levels
        ne = noise_energy[sl, None, None, None].astype(np.float32)
        grey = 255.0 * (lev + (PIXEL_NOISE_MEAN + PIXEL_NOISE_SD * z) * ne)
        pulse = np.floor(np.clip(grey, 0.0, 255.0)) / 255.0
        # noise videos: trend / 625 + N(0, 1) / 50, not quantised
        out = np.where(noise[:, None, None, None], lev + NOISE_CLASS_SD * z, pulse)
        out -= out.mean(axis=(1, 2, 3), dtype=np.float64, keepdims=True).astype(np.float32)
        videos[sl, 0] = out
    return videos, labels
