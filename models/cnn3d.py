"""Bousefsaf 3D-CNN: pulse-rate classification and mapping from 60-frame, 25x25-pixel video patches.

Implemented in torch from the written specification (``design/models.md`` §3) of Bousefsaf, Pruski
and Maaoui, "3D convolutional neural networks for remote pulse rate measurement and mapping from
facial video", Applied Sciences 9(20):4364, 2019 (reference: Keras/TF1). The net is trained on
synthetic pseudo-PPG videos only (:mod:`rppg_prep.pseudo_ppg`) and classifies a zero-mean
(1, 60, 25, 25) patch of the G channel (/255) into 76 classes: 75 heart rates
``linspace(55, 240, 75)`` bpm (2.5-bpm bins) and a "noise / no pulse" class (index 75, reported as
-1 bpm). At inference every 25x25 patch position and every 60-frame window gives a softmax, i.e. a
map (T-59, H-24, W-24, 76) (:func:`predict_map`).

Architecture (:class:`Cnn3d`, 929,388 parameters, as the reference):
Conv3d 1->32, kernel (58, 20, 20), stride 1, no padding, bias, no activation -> (32, 3, 6, 6);
MaxPool3d 2 -> (32, 1, 3, 3); ReLU; Dropout 0.2; Flatten -> 288; Linear 512 + ReLU; Dropout 0.2;
Linear 76 (softmax in Keras).

Keras -> torch differences (behaviour otherwise identical):

* Layout: torch's channels-first (B, 1, 60, 25, 25); Keras' channels-last (B, 60, 25, 25, 1) and the
  channel-less (B, 60, 25, 25) are accepted too (unambiguous because T = 60 != 1).
* Flatten: the pooled (32, 1, 3, 3) map is flattened channels-last (t, h, w, c), Keras' order, so a
  Keras Dense kernel ports as its transpose without permuting rows. Other weight ports: Conv3D kernel
  (kT, kH, kW, 1, 32) -> ``permute(4, 3, 0, 1, 2)``; Dense kernel (in, out) -> ``.T``.
* Padding: Keras "valid" = torch ``padding=0``; Keras' MaxPooling3D "valid" = torch floor mode.
* Output: :meth:`Cnn3d.forward` returns logits (use ``nn.CrossEntropyLoss``, equivalent to softmax +
  categorical cross-entropy); :func:`predict_proba` applies the softmax.
* Initialisation: Keras' defaults (Glorot-uniform weights, zero biases) instead of torch's.
* Optimiser: :func:`make_optimizer` is Adam with Keras' defaults (lr 1e-3, betas 0.9/0.999,
  eps 1e-7; torch's default eps is 1e-8).

Reference-code issues handled:

* The released scripts hard-code two different class grids: training has
  ``linspace(55, 150, 39)`` active with ``linspace(55, 240, 75)`` commented out, and prediction
  rebuilds the grid as ``linspace(55, 150, n_outputs - 1)``, which for the 76-output model the spec
  describes would label the classes 55..150 in 1.28-bpm steps instead of 55..240 in 2.5-bpm steps.
  Here one grid, :data:`HR_CLASSES_BPM`, serves both training labels and decoding.
* How the map is reduced to one HR is not in the code (paper only). :func:`reduce_hr_map` is
  [INFERRED]: per window, average the softmax over the patches (optionally only a mask of them),
  drop the noise class, take the HR class with the largest mean probability; -1 bpm only when every
  considered patch's own argmax is the noise class.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rppg_models.families import Family, fixed_input

# the HR classes are defined once, beside the generator that draws videos of them
from rppg_prep.pseudo_ppg import (CLASS_BPM, HR_CLASSES_BPM, N_CLASSES, N_HR_CLASSES, NOISE_BPM,  # noqa: F401
                                  NOISE_CLASS, bpm_to_class, class_to_bpm)

__all__ = ["Cnn3d", "make_optimizer", "predict_proba", "hr_from_logits", "reduce_hr_map", "predict_map", "clip_hr",
           "synthetic_build_batches", "generator_batches", "patch_batches", "bpm_to_class", "class_to_bpm", "LENGTH",
           "PATCH", "N_CLASSES", "N_HR_CLASSES", "NOISE_CLASS", "HR_CLASSES_BPM", "FAMILY"]

LENGTH = 60  #: frames per input window (2 s at 30 fps)
PATCH = 25  #: patch side, px

class Cnn3d(nn.Module):
    """The 3D-CNN: Conv3d(1->32, 58x20x20) -> MaxPool 2 -> ReLU -> Dropout -> FC 512 -> FC 76 logits.

    Parameters
    ----------
    dropout : float
        Dropout before the first fully connected layer.
    """

    def __init__(self, dropout: float = 0.2):
        super().__init__()
        self.conv = nn.Conv3d(1, 32, kernel_size=(58, 20, 20))
        self.pool = nn.MaxPool3d(2)
        self.drop1 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(32 * 1 * 3 * 3, 512)
        self.drop2 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(512, N_CLASSES)
        for m in (self.conv, self.fc1, self.fc2):  # Keras defaults
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)

    @staticmethod
    def to_input(x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 60, 25, 25), (B, 60, 25, 25, 1) or (B, 60, 25, 25) -> (B, 1, 60, 25, 25).

        Raises
        ------
        ValueError
            On any other shape.
        """
        shape = tuple(x.shape[1:])
        if x.ndim == 5 and shape == (1, LENGTH, PATCH, PATCH):
            return x
        if x.ndim == 5 and shape == (LENGTH, PATCH, PATCH, 1):
            return x.permute(0, 4, 1, 2, 3)
        if x.ndim == 4 and shape == (LENGTH, PATCH, PATCH):
            return x.unsqueeze(1)
        raise ValueError(f"expected (B, 1, 60, 25, 25), (B, 60, 25, 25, 1) or (B, 60, 25, 25), "
                         f"got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-mean patches (see :meth:`to_input` for layouts) -> (B, 76) logits."""
        h = self.drop1(torch.relu(self.pool(self.conv(self.to_input(x)))))  # (B, 32, 1, 3, 3)
        h = h.permute(0, 2, 3, 4, 1).flatten(1)  # Keras' channels-last flatten order
        return self.fc2(self.drop2(torch.relu(self.fc1(h))))


def make_optimizer(model: nn.Module, lr: float = 1e-3) -> torch.optim.Adam:
    """Adam with Keras' defaults (lr 1e-3, betas (0.9, 0.999), eps 1e-7), as the reference.

    Parameters
    ----------
    model : nn.Module
    lr : float

    Returns
    -------
    torch.optim.Adam
    """
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-7)


def predict_proba(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Softmax class probabilities (B, 76), eval mode, no grad (the model's mode is restored).

    Parameters
    ----------
    model : nn.Module
    x : torch.Tensor, shape (B, 1, 60, 25, 25)

    Returns
    -------
    torch.Tensor, shape (B, 76)
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.softmax(model(x), dim=-1)
    finally:
        model.train(was_training)


def hr_from_logits(logits) -> np.ndarray:
    """(..., 76) logits or probabilities (torch or numpy) -> (...) bpm of the argmax class; noise -> -1.

    Parameters
    ----------
    logits : torch.Tensor or ndarray, shape (..., 76)

    Returns
    -------
    ndarray of float, shape (...)
        bpm; the noise class gives -1.
    """
    if isinstance(logits, torch.Tensor):
        logits = logits.detach().cpu().numpy()
    logits = np.asarray(logits)
    if logits.shape[-1:] != (N_CLASSES,):
        raise ValueError(f"last axis must have {N_CLASSES} classes, got {logits.shape}")
    return class_to_bpm(logits.argmax(axis=-1))


def reduce_hr_map(prob_map, mask=None) -> np.ndarray:
    """One HR per window from a probability map (W, Y, X, 76) (``map_p`` layout) -> (W,) bpm.

    [INFERRED, the code does not reduce the map]: per window, mean of the softmax over the patch
    positions (only those where ``mask`` (Y, X) is true, e.g. skin), noise class dropped, argmax over
    the 75 HR classes; -1 when every considered patch's argmax is the noise class.

    Parameters
    ----------
    prob_map : ndarray, shape (W, Y, X, 76)
        Softmax per window and patch position (:func:`predict_map`).
    mask : ndarray of bool, shape (Y, X), optional
        Patch positions to use.

    Returns
    -------
    ndarray of float, shape (W,)
        HR per window, bpm; -1 for noise.

    Raises
    ------
    ValueError
        On a map without 76 classes on the last axis, a mask of another shape or an empty mask.
    """
    p = np.asarray(prob_map, float)
    if p.ndim != 4 or p.shape[-1] != N_CLASSES:
        raise ValueError(f"expected (W, Y, X, {N_CLASSES}), got {p.shape}")
    if mask is None:
        mask = np.ones(p.shape[1:3], bool)
    mask = np.asarray(mask, bool)
    if mask.shape != p.shape[1:3] or not mask.any():
        raise ValueError(f"mask must be a non-empty {p.shape[1:3]} boolean array")
    sel = p[:, mask]  # (W, P, 76)
    hr = HR_CLASSES_BPM[sel[..., :N_HR_CLASSES].mean(axis=1).argmax(axis=-1)]
    all_noise = (sel.argmax(axis=-1) == NOISE_CLASS).all(axis=1)
    return np.where(all_noise, NOISE_BPM, hr)


def predict_map(model: nn.Module, frames, *, rng: np.random.Generator | None = None,
                patch_stride: int = 1, time_stride: int = 1, batch_size: int = 512) -> np.ndarray:
    """Softmax map of a video: every patch position and 60-frame window, as the reference predicts.

    ``frames``: (T, H, W) G channel scaled to [0, 1], or (T, H, W, 3) uint8 RGB (G / 255 is taken).
    Per patch position (stride ``patch_stride``; the reference uses 1) the 625 pixels of each frame
    are shuffled independently (the reference's random pixel location) if ``rng`` is given, then
    every window (stride ``time_stride``) minus its own mean is classified.

    Parameters
    ----------
    model : nn.Module
        A trained :class:`Cnn3d`.
    frames : ndarray
        (T, H, W) G channel in [0, 1], or (T, H, W, 3) uint8 RGB.
    rng : numpy.random.Generator, optional
        Shuffles the pixels of each patch when given.
    patch_stride : int
        Patch step, px.
    time_stride : int
        Window step, frames.
    batch_size : int
        Patches per forward pass.

    Returns
    -------
    (n_windows, n_y, n_x, 76) float32; with strides 1: (T-59, H-24, W-24, 76).

    Raises
    ------
    ValueError
        If ``frames`` is not one of the two layouts or is smaller than 60 x 25 x 25.
    """
    frames = np.asarray(frames)
    if frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == np.uint8:
        frames = frames[..., 1] / 255.0
    if frames.ndim != 3 or frames.shape[0] < LENGTH or min(frames.shape[1:]) < PATCH:
        raise ValueError(f"expected (T>=60, H>=25, W>=25[, 3]) frames, got {frames.shape}")
    t, h, w = frames.shape
    starts_t = np.arange(0, t - LENGTH + 1, time_stride)
    ys, xs = np.arange(0, h - PATCH + 1, patch_stride), np.arange(0, w - PATCH + 1, patch_stride)
    out = np.empty((len(starts_t), len(ys), len(xs), N_CLASSES), np.float32)
    win_idx = starts_t[:, None] + np.arange(LENGTH)[None, :]  # (n_windows, 60)
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            patch = frames[:, y:y + PATCH, x:x + PATCH].reshape(t, PATCH * PATCH)
            if rng is not None:
                patch = rng.permuted(patch, axis=1)
            patch = patch.astype(np.float32)
            for b in range(0, len(starts_t), batch_size):
                windows = patch[win_idx[b:b + batch_size]]  # (batch, 60, 625)
                windows -= windows.mean(axis=(1, 2), dtype=np.float64, keepdims=True).astype(np.float32)
                windows = torch.from_numpy(windows.reshape(-1, LENGTH, PATCH, PATCH))
                out[b:b + batch_size, iy, ix] = predict_proba(model, windows).numpy()
    return out


def clip_hr(model: nn.Module, clip_uint8: np.ndarray, *, patch_stride: int = 13, time_stride: int = 50) -> float:
    """One HR for a stored clip from the HR map over its green channel.

    Patches every ``patch_stride`` px and windows every ``time_stride`` frames are reduced per
    60-frame window by :func:`reduce_hr_map`; the clip's HR is the median over the windows that are
    not noise.

    Parameters
    ----------
    model : nn.Module
        A trained :class:`Cnn3d`.
    clip_uint8 : ndarray of uint8, shape (L, H, W, 3)
        A stored clip, L >= 60.
    patch_stride : int
        Patch step, px.
    time_stride : int
        Window step, frames.

    Returns
    -------
    float
        HR in bpm; -1 when every window says noise.
    """
    prob = predict_map(model, clip_uint8, patch_stride=patch_stride, time_stride=time_stride)
    per_window = np.atleast_1d(np.asarray(reduce_hr_map(prob), dtype=np.float64))
    pulse = per_window[per_window > 0]
    return float(np.median(pulse)) if pulse.size else -1.0


def synthetic_build_batches(cache, dataset: str, pipeline: str, cfg, *, subjects: list[str] | None,
                            gen: torch.Generator, device: torch.device):
    """Training batches from a build of the synthetic videos (``rppg-prep build synthetic``): :attr:`FAMILY`'s data.

    Every stored clip is one 60-frame generator video; its class is the subject's HR class
    (``clip_hr_device_bpm`` of the labels, the generator's HR). The input is the green channel / 255
    minus the clip mean, which equals :func:`rppg_prep.pseudo_ppg.generate`. The noise class has no
    stored form (it is not quantised), so each batch gets its expected share (1/76) of noise videos
    drawn on the fly from the generator, as the paper's balanced batches.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The synthetic build.
    cfg : rppg_models.train.TrainConfig
        ``batch`` (videos per step) and ``seed`` (of the numpy generator of the noise videos).
    subjects : list of str, optional
        Default: every subject of the build.
    gen : torch.Generator
        Draws the stored videos of each batch.
    device : torch.device

    Returns
    -------
    batches : iterator of (Tensor (B, 1, 60, 25, 25) float32, Tensor (B,) int64)
        Endless, on ``device``.
    subjects : list of str

    Raises
    ------
    ValueError
        If the build's clips are not 60 frames of 25x25 (build it with ``pipelines/synthetic.yaml``).
    """
    from rppg_prep import open_build, pseudo_ppg

    build = open_build(cache, dataset, pipeline)
    subjects = list(subjects or build)
    xs, ys = [], []
    for sid in subjects:
        nodes = build[sid]
        clips = nodes["clips"]["clips"]
        if clips.shape[1:4] != (LENGTH, PATCH, PATCH):
            raise ValueError(f"{sid}: clips are {clips.shape[1:4]}, the 3D-CNN needs (60, 25, 25) "
                             "(build with pipelines/synthetic.yaml)")
        g = np.asarray(clips[...])[..., 1].astype(np.float32) / 255.0
        xs.append(g - g.mean(axis=(1, 2, 3), keepdims=True))
        ys.append(bpm_to_class(np.asarray(nodes["labels"]["clip_hr_device_bpm"][:], dtype=np.float64)))
    x_all = torch.from_numpy(np.concatenate(xs)[:, None])
    y_all = torch.from_numpy(np.concatenate(ys))
    rng = np.random.default_rng(cfg.seed)

    def draw():
        while True:
            n_noise = int(rng.binomial(cfg.batch, 1.0 / N_CLASSES))
            idx = torch.randint(len(x_all), (cfg.batch - n_noise,), generator=gen)
            x, y = x_all[idx], y_all[idx]
            if n_noise:
                xn, yn = pseudo_ppg.generate(n_noise, rng=rng, labels=np.full(n_noise, NOISE_CLASS))
                x, y = torch.cat([x, torch.from_numpy(xn)]), torch.cat([y, torch.from_numpy(yn)])
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    return draw(), subjects


def generator_batches(batch: int, rng: np.random.Generator, device: torch.device):
    """Endless batches fresh from :func:`rppg_prep.pseudo_ppg.generate`, balanced over the 76 classes.

    Parameters
    ----------
    batch : int
        Videos per batch.
    rng : numpy.random.Generator
        Draws the classes and the videos.
    device : torch.device

    Returns
    -------
    iterator of (Tensor (B, 1, 60, 25, 25) float32, Tensor (B,) int64) on ``device``
    """
    from rppg_prep import pseudo_ppg

    while True:
        labels = rng.integers(0, N_CLASSES, batch)
        videos, labels = pseudo_ppg.generate(batch, rng=rng, labels=labels)
        yield torch.from_numpy(videos).to(device), torch.from_numpy(labels).to(device)


def patch_batches(greens: np.ndarray, classes: np.ndarray, batch: int, rng: np.random.Generator,
                  device: torch.device):
    """Endless batches of random 60-frame, 25x25 windows of real clips' green channel.

    Per sample: a random clip, a random window of it and a random patch position; the window is
    / 255 minus its own mean, as :func:`predict_map` reads a video.

    Parameters
    ----------
    greens : ndarray of uint8, shape (N, L, H, W)
        Green channel of the clips, L >= 60, H and W >= 25.
    classes : ndarray of int64, shape (N,)
        HR class of each clip.
    batch : int
    rng : numpy.random.Generator
    device : torch.device

    Returns
    -------
    iterator of (Tensor (B, 60, 25, 25) float32, Tensor (B,) int64) on ``device``
    """
    n, length, h, w = greens.shape
    while True:
        k = rng.integers(0, n, batch)
        t = rng.integers(0, length - LENGTH + 1, batch)
        y = rng.integers(0, h - PATCH + 1, batch)
        x = rng.integers(0, w - PATCH + 1, batch)
        win = np.stack([greens[k[i], t[i]:t[i] + LENGTH, y[i]:y[i] + PATCH, x[i]:x[i] + PATCH]
                        for i in range(batch)]).astype(np.float32) / 255.0
        win -= win.mean(axis=(1, 2, 3), keepdims=True)
        yield torch.from_numpy(win).to(device), torch.from_numpy(classes[k]).to(device)


#: the registry record (:mod:`rppg_models.families`): a classifier that predicts no BVP (its HR per clip
#: is :func:`clip_hr`), trained on the synthetic build alone with Keras' Adam
FAMILY = Family(build=fixed_input("cnn3d", LENGTH, PATCH, Cnn3d), forward=lambda model, x: model(x),
                criterion=torch.nn.functional.cross_entropy, clip_hr=clip_hr,
                train_metric=lambda logits, y: float((logits.argmax(1) == y).float().mean()),
                batches=synthetic_build_batches, optimizer=make_optimizer,
                norm="raw", layout="NDHWC", frames=LENGTH, size_px=PATCH)
