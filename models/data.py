"""A torch ``Dataset`` over a finished build: clips (or ST images) and their labels, read lazily.

The store keeps uint8 pixels and float32 signals; the normalisation a model family asks for is
applied here, at read time (rPPG-Toolbox's data types, prior-art.md §1.3):

``raw``
    pixels / 255.
``diffnorm``
    (x[t+1] - x[t]) / (x[t+1] + x[t] + 1e-7), divided by its standard deviation, last frame zero.
``standardized``
    (x - mean) / std.
``temporal``
    x minus each pixel's mean over the clip, divided by the clip's standard deviation of that: the
    still face goes, what changes in time (the pulse, motion) stays at unit scale. Not a Toolbox
    type; a CPU-recipe option for models whose input is otherwise raw pixels, where the pulse is
    a few thousandths of the range.
``bandpass``
    ``temporal``, but each pixel's series is band-passed to the HR band first (0.7-3.5 Hz = 42-210
    bpm; 2nd-order Butterworth, zero-phase ``scipy.signal.sosfiltfilt``, at the clip's frame rate),
    as the unsupervised methods filter their traces (e.g. POS, Wang 2017): slow drift, lighting and
    most head motion go, and the pulse becomes a large share of what is left. Not a Toolbox type; the
    STGNet CPU recipe (README).

Deviation from the Toolbox: the statistics are those of the clip, not of the whole video (a clip
is all a reader sees; the Toolbox's whole-video statistics also leak the future into a window).
Labels are the contact PPG of the clip's frames (``labels/bvp``), z-scored per clip, or
diff-normalised for ``label_norm="diffnorm"``.

Each DataLoader worker opens the zarr store on first use (no open handles cross a fork), and items
are CPU tensors; :func:`to_device` moves a batch with pinned memory and ``non_blocking`` on CUDA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

# defined beside the family registry, which the CLI reads without importing torch
from rppg_models.families import LAYOUTS, NORMALIZATIONS

__all__ = ["ClipDataset", "normalize", "subject_folds", "to_device", "hr_label_array", "NORMALIZATIONS", "LAYOUTS",
           "HR_LABELS", "DEFAULT_HR_LABEL", "SPEED_RANGE"]

#: HR band of the ``bandpass`` normalisation, Hz
BANDPASS_HZ = (0.7, 3.5)
#: window-length factors k of the ``speed`` augmentation (HR scaled by k: x0.7 to x1.4, so the shared
#: subjects' 60-125 bpm cover about 42-175 bpm); screened with benchmarks/stgnet_stall.py
SPEED_RANGE = (0.7, 1.4)
#: which HR of the labels node is the label: the median of the beats, or the Welch peak
HR_LABELS = ("beats", "welch")
#: on the 8 shared UBFC-rPPG subjects the beat-based window HR is closer to the oximeter (median |diff|
#: 1.66 vs 1.95 bpm, mean 2.84 vs 3.71 over 410 windows), so it is the default
DEFAULT_HR_LABEL = "beats"


def hr_label_array(labels_group, prefix: str, hr_label: str = DEFAULT_HR_LABEL) -> np.ndarray:
    """The HR label (bpm) of a labels node: ``<prefix>hr_beats_bpm`` or ``<prefix>hr_bpm``.

    Parameters
    ----------
    labels_group : zarr.Group
        A ``labels`` node.
    prefix : {"", "clip_", "st_"}
        Sliding windows, clips or ST segments.
    hr_label : {"beats", "welch"}

    Returns
    -------
    ndarray of float32, shape (N,)

    Raises
    ------
    ValueError
        Unknown ``hr_label``, or a build made before beat labels existed (rebuild it).
    """
    if hr_label not in HR_LABELS:
        raise ValueError(f"hr_label must be one of {HR_LABELS}, got {hr_label!r}")
    from rppg_prep.stages.labels import label_name

    name = label_name(prefix, "hr_beats" if hr_label == "beats" else "hr")
    if name not in labels_group:
        raise ValueError(f"the labels node has no {name!r} (built by an older rppg-prep); rebuild it, "
                         "or use hr_label='welch'")
    return np.asarray(labels_group[name][:], dtype=np.float32)


def resize_clip(clip: np.ndarray, size_px: int) -> np.ndarray:
    """Resize every frame of a clip to a square side.

    ``clip`` is uint8 (L, H, W, 3); returns uint8 (L, size_px, size_px, 3), the same array when it
    already has that size. ``cv2.resize`` with area interpolation, which averages the pixels it
    merges as a skin ROI mean does.
    """
    import cv2

    if clip.shape[1] == clip.shape[2] == size_px:
        return clip
    return np.stack([cv2.resize(f, (size_px, size_px), interpolation=cv2.INTER_AREA) for f in clip])


def normalize(clip: np.ndarray, how: str, fs_hz: float = 30.0) -> np.ndarray:
    """Normalise one clip.

    Parameters
    ----------
    clip : ndarray of uint8, shape (L, H, W, 3)
    how : {"raw", "diffnorm", "standardized", "temporal", "bandpass"}
    fs_hz : float
        Frame rate of the clip, Hz (``bandpass`` only).

    Returns
    -------
    ndarray of float32, shape (L, H, W, 3)

    Raises
    ------
    ValueError
        Unknown ``how``.

    Examples
    --------
    >>> normalize(np.full((3, 1, 1, 3), 51, np.uint8), "raw")[0, 0, 0].tolist()
    [0.2, 0.2, 0.2]
    """
    x = clip.astype(np.float32)
    if how == "raw":
        return x / 255.0
    if how == "standardized":
        return (x - x.mean()) / (x.std() + 1e-7)
    if how in ("temporal", "bandpass"):
        d = x - x.mean(axis=0, keepdims=True)
        if how == "bandpass":
            from scipy.signal import butter, sosfiltfilt

            sos = butter(2, BANDPASS_HZ, btype="band", fs=fs_hz, output="sos")
            d = sosfiltfilt(sos, d, axis=0).astype(np.float32)
        return d / (d.std() + 1e-7)
    if how == "diffnorm":
        d = np.zeros_like(x)
        d[:-1] = (x[1:] - x[:-1]) / (x[1:] + x[:-1] + 1e-7)
        return d / (d.std() + 1e-7)
    raise ValueError(f"normalisation must be one of {NORMALIZATIONS}, got {how!r}")


def _resample_time(x: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """``x`` (n, ...) linearly interpolated along axis 0 at the fractional frame positions ``pos`` (float32)."""
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, len(x) - 1)
    w = (pos - lo).astype(np.float32).reshape((-1,) + (1,) * (x.ndim - 1))
    return (x[lo] * (1 - w) + x[hi] * w).astype(np.float32)


def _label(bvp: np.ndarray, how: str) -> np.ndarray:
    if how == "diffnorm":
        d = np.zeros_like(bvp)
        d[:-1] = np.diff(bvp)
        return d / (d.std() + 1e-7)
    return (bvp - bvp.mean()) / (bvp.std() + 1e-7)


def subject_folds(subjects: list[str], n_folds: int, fold: int) -> tuple[list[str], list[str]]:
    """Subject-disjoint split: subject i (in the given, natural order) is tested in fold i mod n_folds.

    Parameters
    ----------
    subjects : list of str
        Subject ids in natural order.
    n_folds : int
        Number of folds, >= 2.
    fold : int
        The fold wanted, in [0, n_folds).

    Returns
    -------
    (train_subjects, test_subjects)

    Raises
    ------
    ValueError
        ``fold`` outside [0, n_folds) or fewer subjects than folds.
    """
    if not 0 <= fold < n_folds or len(subjects) < n_folds:
        raise ValueError(f"fold {fold} of {n_folds} impossible with {len(subjects)} subjects")
    test = [s for i, s in enumerate(subjects) if i % n_folds == fold]
    return [s for s in subjects if s not in test], test


class ClipDataset(Dataset):
    """Clips of a build with their labels.

    Items are ``(x, bvp, hr_bpm, index)``: x float32 in ``layout``, bvp float32 (L,), the clip's
    label HR (bpm, from the labels node) and (subject number, clip number).

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The build (see :func:`rppg_prep.open_build`).
    subjects : list of str, optional
        Only these (e.g. one side of :func:`subject_folds`); default every subject of the build.
    norm : {"raw", "diffnorm", "standardized", "temporal"}
        Pixel normalisation (:data:`NORMALIZATIONS`).
    label_norm : {"standardized", "diffnorm"}
        BVP label normalisation.
    layout : {"NCDHW", "NDCHW", "NDHWC"}
        Axis order of an item without the batch axis (C channels, D frames).
    hr_label : {"beats", "welch"}
        The clip's HR label: median instantaneous HR of the contact PPG's beats (default; closer
        to the oximeter) or the Welch peak (``labels/clip_hr_beats_bpm`` or ``clip_hr_bpm``).
    size_px : int, optional
        Resize the frames to this side (px) when read, e.g. 32 for a faster CPU run; default the
        stored size.
    jitter : bool
        Augmentation for training: item ``i`` is not stored clip ``i`` but a window of the same
        length starting at a random frame of the same subject (uniform over the video, drawn with
        torch's generator, so a seeded DataLoader repeats it), cut from the ``face`` crops and
        resized with the clips stage's area interpolation; its label HR is NaN (the labels node has
        HRs per stored clip only). A subject of ~1,800 frames then gives ~1,600 distinct windows
        instead of ~28 fixed ones.
    flip : bool
        Augmentation for training: mirror each item left-right with probability 1/2.
    speed : (float, float), optional
        Augmentation for training, with ``jitter`` only: the window is ``round(L * k)`` frames with
        ``k`` drawn uniformly from ``speed`` (e.g. :data:`SPEED_RANGE`), resampled to L frames by
        linear interpolation in time, pixels (kept float, since the pulse is below one grey level)
        and BVP label alike. The clip then shows the subject's pulse at HR x k on the clip's own
        frame clock, so that training covers HRs beyond its subjects' (a resampling augmentation
        in the spirit of Gideon & Stent, ICCV 2021). A window longer than the video is cut to it.

    Raises
    ------
    KeyError
        A subject not in the build. ValueError: bad ``norm``, ``layout``, ``hr_label``, ``size_px``
        or ``speed``.
    """

    def __init__(self, cache: str | Path, dataset: str, pipeline: str, *, subjects: list[str] | None = None,
                 norm: str = "raw", label_norm: str = "standardized", layout: str = "NCDHW",
                 hr_label: str = DEFAULT_HR_LABEL, size_px: int | None = None, jitter: bool = False,
                 flip: bool = False, speed: tuple[float, float] | None = None):
        from rppg_prep.manifest import build_nodes, open_build, read_manifest

        if norm not in NORMALIZATIONS or layout not in LAYOUTS:
            raise ValueError(f"norm must be one of {NORMALIZATIONS} and layout one of {LAYOUTS}")
        build = open_build(cache, dataset, pipeline)
        self.subjects = subjects or list(build)
        missing = [s for s in self.subjects if s not in build]
        if missing:
            raise KeyError(f"subject(s) {missing} not in build {pipeline!r}; built: {', '.join(build)}")
        # paths, not groups: a DataLoader worker opens its own (the manifest turns records into paths)
        paths = build_nodes(cache, read_manifest(cache, dataset, pipeline))
        self.paths = {s: tuple(str(paths[s][st]) for st in ("clips", "labels", "face")) for s in self.subjects}
        if speed is not None and not (jitter and 0 < speed[0] <= speed[1]):
            raise ValueError(f"speed needs jitter=True and 0 < k_min <= k_max; got {speed!r}, jitter={jitter}")
        self.jitter, self.flip, self.speed = jitter, flip, speed
        self.windows = {s: build[s]["clips"]["window"][:] for s in self.subjects}
        self.hr = {s: hr_label_array(build[s]["labels"], "clip_", hr_label) for s in self.subjects}
        if size_px is not None and size_px < 8:
            raise ValueError(f"size_px must be >= 8, got {size_px}")
        self.size_px = size_px
        self.index = [(i, k) for i, s in enumerate(self.subjects) for k in range(len(self.windows[s]))]
        self.norm, self.label_norm, self.layout = norm, label_norm, layout
        self._open: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _nodes(self) -> dict[str, Any]:
        if self._open is None:  # first use in this process (a DataLoader worker opens its own)
            from rppg_prep.store import open_node

            self._open = {s: (open_node(c), open_node(lab), open_node(face) if self.jitter else None)
                          for s, (c, lab, face) in self.paths.items()}
        return self._open

    def _read(self, sid: str, which: int, read: Callable[[], np.ndarray], what: str) -> np.ndarray:
        """Read through zarr, whose crc32c codec checks every chunk; a bad chunk is an error naming its node."""
        try:
            return read()
        except (ValueError, OSError, RuntimeError) as exc:  # zarr: "Stored and computed checksum do not match"
            from rppg_prep.errors import StoreError

            raise StoreError(f"{what} of subject {sid} cannot be read ({exc}); the store is damaged: run "
                             "`rppg-prep verify --repair`", subject=sid, path=self.paths[sid][which]) from None

    def __getitem__(self, i: int):
        si, k = self.index[i]
        sid = self.subjects[si]
        clips, labels, face = self._nodes()[sid]
        a, b = self.windows[sid][k]
        hr = float(self.hr[sid][k])
        resample = None
        if self.jitter:
            n_frames, length = labels["bvp"].shape[0], int(b - a)
            n = length
            if self.speed is not None:
                lo, hi = self.speed
                n = min(n_frames, max(2, round(length * (lo + (hi - lo) * float(torch.rand(()))))))
                resample = np.linspace(0.0, n - 1.0, length) if n != length else None
            a = int(torch.randint(0, n_frames - n + 1, ()).item())
            b, hr = a + n, float("nan")
            raw = self._read(sid, 2, lambda: np.asarray(face["frames"][a:b]), f"face frames {a}-{b}")
            raw = resize_clip(raw, self.size_px or clips["clips"].shape[2])
            if resample is not None:
                raw = _resample_time(raw.astype(np.float32), resample)
        else:
            raw = self._read(sid, 0, lambda: np.asarray(clips["clips"][k]), f"clips chunk {k}")
            if self.size_px is not None:
                raw = resize_clip(raw, self.size_px)
        if self.flip and bool(torch.rand(()) < 0.5):
            raw = raw[:, :, ::-1]
        fs = 30.0
        if self.norm == "bandpass":  # the clip's own mean frame rate on its frame clock
            t = self._read(sid, 1, lambda: np.asarray(labels["t_s"][a:b]), f"t_s frames {a}-{b}")
            fs = (len(t) - 1) / float(t[-1] - t[0])
        x = normalize(raw, self.norm, fs)          # (L, H, W, C)
        if self.layout == "NCDHW":
            x = x.transpose(3, 0, 1, 2)
        elif self.layout == "NDCHW":
            x = x.transpose(0, 3, 1, 2)
        bvp = self._read(sid, 1, lambda: np.asarray(labels["bvp"][a:b], dtype=np.float32), f"bvp frames {a}-{b}")
        if resample is not None:
            bvp = _resample_time(bvp, resample)
        bvp = _label(bvp, self.label_norm)
        return (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(bvp.astype(np.float32)),
                torch.tensor(hr), torch.tensor([si, k]))


def to_device(batch, device: torch.device | str):
    """Move a batch of tensors to ``device`` (pinned memory, non-blocking copies on CUDA).

    Parameters
    ----------
    batch : tuple of torch.Tensor
        A DataLoader batch.
    device : torch.device or str

    Returns
    -------
    tuple of torch.Tensor
        The same batch on ``device`` (unchanged on the CPU).
    """
    device = torch.device(device)
    if device.type != "cuda":
        return batch
    return tuple(t.pin_memory().to(device, non_blocking=True) for t in batch)
