"""A small synthetic dataset in the UBFC-rPPG DATASET_2 layout, made without any download.

Each subject is ``<out>/subject<N>/vid.avi`` (640x480, MJPG) and ``ground_truth.txt`` (line 1
PPG in a.u., line 2 device HR in bpm, line 3 timestamps in s; one value per frame, as in
UBFC-rPPG). The face is the astronaut photograph shipped with scikit-image
(``skimage.data.astronaut()``, NASA, public domain), moved by slow head motion, with its skin
modulated by a pulse at a known heart rate, plus sensor noise and lossy compression.

Models followed:

* Skin reflectance: the pulse modulates skin pixels multiplicatively along a fixed RGB direction
  (W. Wang, A. C. den Brinker, S. Stuijk, G. de Haan, "Algorithmic principles of remote PPG",
  IEEE TBME 64(7), 2017). Relative strengths are the normalised blood-volume-pulse signature
  ``Pbv = [0.33, 0.77, 0.53]`` (R, G, B) of G. de Haan and A. van Leest, Physiol. Meas. 35, 2014.
  More blood absorbs more light, so skin gets darker when the contact PPG goes up.
* Pulse shape: systolic wave and later, smaller diastolic wave past a dicrotic notch
  (J. Allen, "Photoplethysmography and its application in clinical physiological measurement",
  Physiol. Meas. 28, 2007), written as a sum of two Gaussians per beat.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from rppg_prep.store import atomic_write

__all__ = ["FaceRecording", "SampleSubject", "write_ubfc_sample", "default_sample_dir", "ensure_ubfc_sample",
           "GENERATOR_VERSION", "SAMPLE_HR_BPM"]

GENERATOR_VERSION = "1"
#: HR (bpm) of subject k is entry (k - 1) mod 3
SAMPLE_HR_BPM = (66.0, 84.0, 102.0)

FRAME_W, FRAME_H = 640, 480
#: face in astronaut() photo coordinates (x, y): centre and half-axes of the skin ellipse
_FACE_C, _FACE_AXES = (225.0, 125.0), (47, 55)
#: 1.4x makes the FaceMesh face ~145 px tall, as in UBFC-rPPG; placed so the photo covers the frame
_SCALE, _FRAME_C = 1.4, (330.0, 190.0)
#: pulse depth per channel, B, G, R order (OpenCV), fraction of intensity from trough to peak
_PULSE_BGR = 0.008 * np.array([0.53, 0.77, 0.33], np.float32) / 0.77
_NOISE_SIGMA = 2.0  # grey levels
_HRV_BPM = (1.2, 0.8)  # amplitudes of the two slow HR drifts
_MARKER = ".complete"


@dataclass(frozen=True)
class SampleSubject:
    """One generated subject.

    Attributes
    ----------
    id : str
        ``"subject1"``, ``"subject2"``, ...
    hr_bpm : float
        Mean heart rate the pulse was generated at (bpm).
    video : Path
        ``<out>/<id>/vid.avi``.
    ground_truth : Path
        ``<out>/<id>/ground_truth.txt``.
    """

    id: str
    hr_bpm: float
    video: Path
    ground_truth: Path


def _face_photo() -> tuple[np.ndarray, np.ndarray]:
    """Return the photo (float32 BGR, (512, 512, 3)) and its feathered skin mask (float32, (512, 512, 1))."""
    from skimage.data import astronaut

    rgb = astronaut()
    ycc = cv2.cvtColor(rgb, cv2.COLOR_RGB2YCrCb)
    # Cr/Cb keep skin; the Y floor drops the hair, which has skin-like chroma but is darker
    skin = cv2.inRange(ycc, (110, 138, 85), (255, 180, 125))
    face = np.zeros_like(skin)
    cv2.ellipse(face, (int(_FACE_C[0]), int(_FACE_C[1])), _FACE_AXES, 0, 0, 360, 255, -1)
    mask = cv2.GaussianBlur((skin & face).astype(np.float32) / 255.0, (0, 0), 2.0)
    return rgb[:, :, ::-1].astype(np.float32), mask[:, :, None]


def _beat(u: np.ndarray) -> np.ndarray:
    """Two-Gaussian PPG beat (systolic, then diastolic wave) at beat phase ``u`` (cycles)."""

    def bump(mu: float, sigma: float) -> np.ndarray:
        d = np.mod(u - mu + 0.5, 1.0) - 0.5  # wrapped, so consecutive beats join smoothly
        return np.exp(-0.5 * (d / sigma) ** 2)

    return bump(0.24, 0.08) + 0.55 * bump(0.55, 0.16)


_ONE_BEAT = _beat(np.linspace(0.0, 1.0, 1000, endpoint=False))  # scales the pulse to [0, 1]


def _signals(rng: np.random.Generator, hr_bpm: float, n: int, fps: float):
    """Frame times (s), pulse in [0, 1], instantaneous HR (bpm), float64 (n,), and pulse as a function of time."""
    # logger-like clock: ms resolution, a few ms jitter; jitter < half a frame keeps it increasing
    jitter = np.clip(rng.normal(0.0, 0.003, n), -0.4 / fps, 0.4 / fps)
    t = np.round(np.arange(n) / fps + jitter, 3)
    t[0] = 0.0
    # 2 and 3 whole cycles of drift over the video: the mean HR is exactly hr_bpm, both plain and
    # Hann-weighted, so a spectral HR estimate lands on it too
    nu = np.array([2.0, 3.0]) / (n / fps)
    psi = rng.uniform(0, 2 * np.pi, 2)
    amp = np.array(_HRV_BPM) / 60.0

    def cycles(tt: np.ndarray) -> np.ndarray:
        arg = 2 * np.pi * nu[:, None] * tt + psi[:, None]
        return hr_bpm / 60.0 * tt + ((amp / (2 * np.pi * nu))[:, None] * (np.cos(psi)[:, None] - np.cos(arg))).sum(0)

    arg = 2 * np.pi * nu[:, None] * t + psi[:, None]
    inst_hz = hr_bpm / 60.0 + (amp[:, None] * np.sin(arg)).sum(0)
    offset = rng.uniform()

    def pulse_at(tt: np.ndarray) -> np.ndarray:
        return (_beat(cycles(np.asarray(tt, dtype=np.float64)) + offset) - _ONE_BEAT.min()) / np.ptp(_ONE_BEAT)

    return t, pulse_at(t), 60.0 * inst_hz, pulse_at


def _motion(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Photo-to-frame affine matrices, float64 (n, 2, 3): slow sways well below the HR band."""

    def sway(amplitude: float) -> np.ndarray:
        f = rng.uniform(0.05, 0.3, 2)
        ph = rng.uniform(0, 2 * np.pi, 2)
        return amplitude / 2 * np.sin(2 * np.pi * f[:, None] * t + ph[:, None]).sum(0)

    dx, dy, ang, sc = sway(3.0), sway(2.0), np.deg2rad(sway(0.6)), _SCALE * (1.0 + sway(0.008))
    cos, sin = sc * np.cos(ang), sc * np.sin(ang)
    m = np.empty((t.size, 2, 3))
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = cos, -sin, sin, cos
    m[:, 0, 2] = _FRAME_C[0] + dx - (cos * _FACE_C[0] - sin * _FACE_C[1])
    m[:, 1, 2] = _FRAME_C[1] + dy - (sin * _FACE_C[0] + cos * _FACE_C[1])
    return m


def _write_truth(path: Path, rows: list[np.ndarray]) -> None:
    # the fixed-width %e layout of the real files, so naive parsers written for UBFC work too
    path.write_text("".join("".join(f"{v:16.7e}" for v in row) + "\n" for row in rows))


def write_ubfc_sample(out_dir: str | Path, *, n_subjects: int = 3, duration_s: float = 20.0, fps: float = 30.0,
                      seed: int = 0, progress: Callable[[int, int], None] | None = None) -> list[SampleSubject]:
    """Write a synthetic UBFC-rPPG DATASET_2 dataset into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing; existing ``subject<N>`` files are overwritten.
    n_subjects : int
        Number of subjects; subject k beats at ``SAMPLE_HR_BPM[(k - 1) % 3]`` on average, with a
        slow +/-2 bpm drift.
    duration_s : float
        Length of each video in seconds; ``round(duration_s * fps)`` frames.
    fps : float
        Nominal frame rate written to the AVI header (Hz).
    seed : int
        Same seed, same files (per-subject streams, so subject k does not depend on n_subjects).
    progress : callable, optional
        Called as ``progress(frames_done, frames_total)`` over all subjects after every frame.

    Returns
    -------
    list of SampleSubject

    Raises
    ------
    ValueError
        If ``n_subjects < 1``, ``fps <= 0`` or the video would have fewer than 2 frames.
    OSError
        If OpenCV cannot open an MJPG writer for ``vid.avi``.

    Notes
    -----
    Frame i shows the pulse at the logged time ``t[i]`` (line 3), and line 1 is the same pulse at
    the same times plus a little noise, so PPG sample i belongs to frame i with no lag. Videos are
    about 1.8 MB per second (MJPG at OpenCV's default quality).
    """
    n = int(round(duration_s * fps)) if fps > 0 else 0
    if n_subjects < 1 or fps <= 0 or n < 2:
        raise ValueError(f"need n_subjects >= 1, fps > 0 and >= 2 frames; got n_subjects={n_subjects}, "
                         f"fps={fps}, duration_s={duration_s}")
    out = Path(out_dir)
    subjects = []
    for k in range(1, n_subjects + 1):
        hr = float(SAMPLE_HR_BPM[(k - 1) % len(SAMPLE_HR_BPM)])
        rec = FaceRecording(hr, n, fps, seed=(seed, k))
        folder = out / f"subject{k}"
        folder.mkdir(parents=True, exist_ok=True)
        video = folder / "vid.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), float(fps), (FRAME_W, FRAME_H))
        if not writer.isOpened():
            raise OSError(f"OpenCV cannot open an MJPG writer for {video}")
        try:
            for i, frame in enumerate(rec.frames_bgr()):
                writer.write(frame)
                if progress is not None:
                    progress((k - 1) * n + i + 1, n_subjects * n)
        finally:
            writer.release()
        ppg, device_hr = rec.contact_ppg()
        truth = folder / "ground_truth.txt"
        _write_truth(truth, [ppg, device_hr, rec.t_s])
        subjects.append(SampleSubject(f"subject{k}", hr, video, truth))
    return subjects


class FaceRecording:
    """One synthetic recording: a moving face whose skin pulses at a known HR, and its contact PPG.

    The building block of the embedded sample and of the dataset miniatures in the tests: a loader
    test writes these frames and this PPG in its dataset's own file format.

    Parameters
    ----------
    hr_bpm : float
        Mean heart rate, bpm (a slow +/-2 bpm drift is added, whose mean is exactly ``hr_bpm``).
    n_frames : int
        Number of frames (>= 2).
    fps : float
        Nominal frame rate, Hz; frame times carry a few ms of logger jitter (``t_s``).
    seed : int or tuple of int
        Same seed, same recording.

    Attributes
    ----------
    t_s : ndarray of float64, shape (n_frames,)
        Frame times, seconds, starting at 0.
    pulse : ndarray of float64, shape (n_frames,)
        Blood volume at each frame, in [0, 1].
    inst_hr_bpm : ndarray of float64, shape (n_frames,)
        Instantaneous HR, bpm.
    """

    def __init__(self, hr_bpm: float, n_frames: int, fps: float, *, seed=0):
        self.rng = np.random.default_rng(seed)
        self.hr_bpm, self.fps = float(hr_bpm), float(fps)
        if n_frames < 2 or fps <= 0:
            raise ValueError(f"need >= 2 frames and fps > 0, got {n_frames} frames at {fps} fps")
        self.t_s, self.pulse, self.inst_hr_bpm, self._pulse_at = _signals(self.rng, self.hr_bpm, int(n_frames),
                                                                          self.fps)
        self._mats = _motion(self.rng, self.t_s)

    def frames_bgr(self) -> Iterator[np.ndarray]:
        """Yield the frames, uint8 BGR (OpenCV order), shape (480, 640, 3), one per ``t_s``."""
        photo, mask = _face_photo()
        ys, xs = np.nonzero(mask[:, :, 0] > 1e-3)
        roi = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        skin, mask = photo[roi].copy(), mask[roi]
        rng = self.rng
        # a bank of noise fields read at random offsets: fresh-looking noise at a fraction of the cost
        pad = 32
        bank = rng.standard_normal((4, FRAME_H + pad, FRAME_W + pad, 3), dtype=np.float32) * _NOISE_SIGMA
        for i in range(self.t_s.size):
            photo[roi] = skin * (1.0 - mask * (_PULSE_BGR * self.pulse[i]))
            frame = cv2.warpAffine(photo, self._mats[i], (FRAME_W, FRAME_H), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_REFLECT_101)
            b, oy, ox = rng.integers(0, 4), rng.integers(0, pad), rng.integers(0, pad)
            # cv2.add rounds and saturates into uint8 in one pass, 3x cheaper than numpy
            yield cv2.add(frame, bank[b, oy:oy + FRAME_H, ox:ox + FRAME_W], dtype=cv2.CV_8U)

    def contact_ppg(self, t_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Contact PPG (a.u., rising with blood volume, a little noise) and device HR (whole bpm).

        Parameters
        ----------
        t_s : ndarray of float64, optional
            Sample times, seconds (a sensor clock of its own, e.g. 60 Hz for PURE); the frame times
            when omitted. The pulse between frames follows the same beat model exactly.

        Returns
        -------
        ppg, device_hr_bpm : ndarray of float64, shape like ``t_s``
            The device HR display updates once a second, as an oximeter's does.
        """
        if t_s is None:
            t, pulse = self.t_s, self.pulse
        else:
            t = np.asarray(t_s, dtype=np.float64)
            pulse = self.pulse_at(t)
        ppg = 2.0 * (pulse - pulse.mean()) + self.rng.normal(0.0, 0.02, t.size)
        device_hr = np.round(np.interp(np.floor(t), self.t_s, self.inst_hr_bpm))
        return ppg, device_hr

    def pulse_at(self, t_s: np.ndarray) -> np.ndarray:
        """Blood volume in [0, 1] at arbitrary times (s) within the recording, by the same beat model."""
        return self._pulse_at(t_s)


def default_sample_dir(cache: str | Path) -> Path:
    """Folder of the sample inside a cache: ``<cache>/samples/ubfc-v<GENERATOR_VERSION>``."""
    return Path(cache) / "samples" / f"ubfc-v{GENERATOR_VERSION}"


def ensure_ubfc_sample(cache: str | Path) -> Path:
    """Return the default sample folder, generating it (default arguments) on first use.

    Generation goes to a temporary sibling folder that is renamed into place when complete, so
    an interrupted run never leaves a half-written sample behind. A folder is complete when it
    holds the ``.complete`` marker.

    Raises
    ------
    OSError
        If the cache is not writable or the video writer fails.
    """
    target = default_sample_dir(cache)
    if (target / _MARKER).exists():
        return target
    with atomic_write(target, complete=lambda p: (p / _MARKER).exists()) as tmp:
        subjects = write_ubfc_sample(tmp)
        meta = {"generator_version": GENERATOR_VERSION, "subjects": {s.id: s.hr_bpm for s in subjects}}
        (tmp / _MARKER).write_text(json.dumps(meta, indent=1) + "\n")
        if target.exists() and not (target / _MARKER).exists():
            shutil.rmtree(target)  # left by an older, interrupted layout; never complete
    return target
