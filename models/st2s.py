"""ST2S-rPPG: stage-1 CNN heart-rate regressor and stage-2 good/bad classifier.

Implemented from the written specification of Kateri et al., "ST2S-rPPG: A Spatiotemporal
Two-Stage Learning Approach for Pulse Estimation Using Video", PMLR 259:550-562, 2025. Stage 1
regresses the segment HR (bpm) from one spatiotemporal (ST) image (read at 3x64x300 with time kept
by default, at the paper's 3x64x64 with ``layout="paper"``, below); stage 2
predicts from HOG features whether stage 1 is right on that image (class 0 = good,
|error| <= threshold; 1 = bad); the segment HR is the mean stage-1 prediction over kept images.

Why ST2S is not in the family registry (:data:`rppg_models.families.REGISTRY`): a registered family
maps a batch of a build's clips to a BVP waveform or one HR per clip, trained step by step by
:func:`rppg_models.train.fit` and scored per clip by :func:`rppg_models.evaluate.evaluate_checkpoint`.
ST2S reads none of that: its input is the ST images of 10-s segments, not clips; stage 1 is trained
per leave-one-subject-out fold (its held-out predictions are the stage-2 labels), stage 2 learns
from those predictions, and the output is one HR per segment from the two stages together. A
:class:`rppg_models.families.Family` record would fit none of its fields but ``build``, so it keeps
its own pipeline (:mod:`rppg_models.st2s_pipeline`, ``rppg-prep train st2s``).

Fixes of the reference code's bugs:

* **Hidden size 3 by accident** (the driver passes the batch size as ``hidden_units``) ->
  :class:`St2sCnn` defaults to 128 (548,129 parameters).
* **Mismatched CSV column names** ("Difference" written vs "Absolute Difference" read) -> one
  in-memory rule, :func:`good_bad_labels`.
* **Vote biased to 0 by unfilled entries** (KFold majority vote over a zero-filled matrix) -> no
  KFold vote, plain train/predict (:func:`fit_classifier`, :func:`predict_keep`).
* **prediction_only's unused output_layer** (a 2-way layer the forward pass never calls) -> a
  real stage-2 classifier, :class:`St2sClassifier`.
* Images fed un-resized (3x64x900 silently reshaped into pseudo-samples) -> :func:`st_to_tensor`
  resizes and :meth:`St2sCnn.forward` rejects any shape but its layout's.

Input layouts (:data:`LAYOUTS`; the one deviation from the paper that changes results):

* ``layout="paper"``: the paper's 3x64x64 image, the whole H x 3N ST image area-resized
  (``cv2.INTER_AREA``) and scaled to [0, 1]. Each of the 64 columns averages 14 px of the
  3-px-per-frame image, 4.7 frames at 30 fps: 6.4 samples per second, 3.8 per pulse period at
  100 bpm but 1.8 at 210 bpm (fewer than 4), and the pulse (a few thousandths of the pixel range)
  rides on each row's skin tone. Its CNN learned the training subjects' mean HR (UBFC-rPPG leave
  one subject out, MAE 18.6 bpm, r -0.07). Get it with ``Stage1Config(layout="paper")``,
  ``rppg-prep train st2s --layout paper`` or ``benchmarks/st2s_loso.py --layout paper``.
* ``layout="time"`` (the default): 3x64x300, time kept. The 3-px columns of each frame's strip
  are averaged (one column per frame), the 128 face rows area-resized to 64, the N frames of the
  10-s segment resampled linearly to 300 columns (30 per second: one per frame at 30 fps, 8.6
  per pulse period at 210 bpm, the same time scale whatever the video's frame rate), and each
  face row of each colour channel normalised over time (minus its temporal mean, divided by its
  temporal standard deviation; a constant row becomes 0). The CNN is the paper's with an
  ``AdaptiveAvgPool2d((8, 8))`` before the fully connected layer (the identity at 64x64), so it
  keeps exactly 548,129 parameters and a paper-layout checkpoint loads unchanged.

Chosen by validation MAE on two subject-disjoint splits of the 8 real UBFC-rPPG subjects (the
same CPU recipe for every variant; ``benchmarks/results/st2s-layouts-2026-12-03-*.json``): the
time layout with the 8x8 pool 2.5 / 7.7 bpm, the paper layout 5.3 / 7.9, the time layout with
rows pooled to 1 and time to 64 (``AdaptiveAvgPool2d((1, 64))``) 2.8 / 7.8. On those splits'
test subjects none beat the constant predictor on average (test MAE 14.8, 14.4, 16.9 bpm vs
12.2): on these compressed videos the CNN still predicts a near-constant HR per subject, while on
synthetic ST images with a pulse the time layout learns HR (``tests/test_st2s_model.py``).

Other flags that are not the paper's, off by default here: ``fit_regressor(bias_init=True)``
starts the output bias at the mean training HR, and the pipeline's ``Stage1Config.strip_step`` /
``Stage2Config.strip_step`` train on every n-th strip (the CPU recipe of
:func:`rppg_models.st2s_pipeline.evaluate_split` and ``benchmarks/st2s_loso.py`` uses both).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["St2sCnn", "St2sClassifier", "st_to_tensor", "input_shape", "hog_features", "good_bad_labels",
           "fit_regressor", "predict_hr", "fit_classifier", "predict_keep", "segment_hr", "HOG_LENGTH", "LAYOUTS"]

INPUT_SIZE = 64  #: side of the paper layout's square image, and face rows of the time layout, px
TIME_COLUMNS = 300  #: time-layout columns per 10-s segment (30 per second)
LAYOUTS = ("time", "paper")  #: stage-1 input layouts; "paper" is the paper's 64x64, "time" the default
HOG_SIZE = 128  #: side of the square image HOG is computed on, px
HOG_LENGTH = 34020  #: default OpenCV HOG length of a 128x128 image (9 windows x 3,780)


class St2sCnn(nn.Module):
    """Stage-1 regressor: 3 x (Conv 3x3 -> ReLU -> MaxPool 2), 16/32/64 ch -> pool 8x8 -> FC hidden -> FC out.

    ``hidden_units`` 128 -> 548,129 parameters (the reference's accidental 3 -> 35,879) for every
    ``input_size``: an ``AdaptiveAvgPool2d((8, 8))`` (parameter-free; the identity on the paper's
    64x64) brings the last feature map to 64x8x8. ``out_units`` 1 = HR in bpm.

    Parameters
    ----------
    in_channels : int
        Input channels (RGB).
    hidden_units : int
        Width of the hidden fully connected layer.
    out_units : int
        Outputs (1: HR in bpm).
    input_size : tuple of int
        (rows, columns) of the images it reads: :func:`input_shape` of the layout, (64, 64) for the
        paper's, (64, 300) for the time layout; each >= 8.

    Raises
    ------
    ValueError
        An ``input_size`` side below 8.
    """

    def __init__(self, in_channels: int = 3, hidden_units: int = 128, out_units: int = 1,
                 input_size: tuple[int, int] = (INPUT_SIZE, INPUT_SIZE)):
        super().__init__()
        self.in_channels = in_channels
        self.input_size = tuple(int(v) for v in input_size)
        if len(self.input_size) != 2 or min(self.input_size) < 8:
            raise ValueError(f"input_size must be (rows, columns), each >= 8, got {input_size}")
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d((8, 8))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, hidden_units), nn.ReLU(),
                                  nn.Linear(hidden_units, out_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, rows, columns) float -> (B,) HR in bpm ((B, out) if out_units > 1).

        Parameters
        ----------
        x : torch.Tensor, shape (B, in_channels, *input_size), float32
            From :func:`st_to_tensor` with the model's layout.

        Returns
        -------
        torch.Tensor, shape (B,) (or (B, out_units)), float32, bpm

        Raises
        ------
        ValueError
            If ``x`` is not (B, in_channels, *input_size).
        """
        want = (self.in_channels, *self.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"expected (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        out = self.head(self.pool(self.features(x)))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def input_shape(layout: str) -> tuple[int, int, int]:
    """(channels, rows, columns) of the images :func:`st_to_tensor` makes for ``layout``.

    Parameters
    ----------
    layout : {"time", "paper"}

    Returns
    -------
    tuple of int
        (3, 64, 300) for "time", (3, 64, 64) for "paper".

    Raises
    ------
    ValueError
        Another layout.
    """
    if layout == "paper":
        return 3, INPUT_SIZE, INPUT_SIZE
    if layout == "time":
        return 3, INPUT_SIZE, TIME_COLUMNS
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def _check_images(images_uint8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return images


def st_to_tensor(images_uint8: np.ndarray, layout: str = "time", *, strip_px: int = 3) -> torch.Tensor:
    """(N, H, strip_px * L, 3) uint8 RGB ST images -> (N, *input_shape(layout)) float32.

    ``layout="paper"`` (the paper's): each image area-resized (``cv2.INTER_AREA``) to 64x64 and
    scaled to [0, 1]. ``layout="time"``: the ``strip_px`` columns of each frame averaged (L
    columns), the H face rows area-resized to 64, the L frames resampled linearly to 300 columns
    (the 10-s segment at 30 columns per second), then each row of each channel minus its mean
    over time and divided by its standard deviation over time (a constant row -> 0): zero mean,
    unit variance per row, unitless.

    Parameters
    ----------
    images_uint8 : ndarray of uint8, shape (N, H, W, 3)
        RGB ST images (``st_map`` ``images`` of one segment); for "time", W = strip_px x frames.
    layout : {"time", "paper"}
        Input layout (module docstring).
    strip_px : int
        Strip width the images were made with (``StMapParams.strip_px``), "time" only.

    Returns
    -------
    torch.Tensor, shape (N, 3, 64, 300) for "time", (N, 3, 64, 64) in [0, 1] for "paper"; float32

    Raises
    ------
    ValueError
        If the array is not (N, H, W, 3) uint8, the layout is unknown, or ("time") W is not a
        multiple of ``strip_px``.
    """
    images = _check_images(images_uint8)
    shape = input_shape(layout)
    out = np.empty((len(images), *shape), np.float32)
    if layout == "paper":
        for i, img in enumerate(images):
            small = cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
            out[i] = small.transpose(2, 0, 1) / np.float32(255.0)
        return torch.from_numpy(out)
    n, h, w = images.shape[:3]
    if strip_px < 1 or w % strip_px:
        raise ValueError(f"image width {w} is not a multiple of strip_px {strip_px}")
    frames = images.reshape(n, h, w // strip_px, strip_px, 3).mean(3, dtype=np.float32)  # (N, H, L, 3)
    for i, img in enumerate(frames):
        rows = cv2.resize(img, (img.shape[1], INPUT_SIZE), interpolation=cv2.INTER_AREA)
        out[i] = cv2.resize(rows, (TIME_COLUMNS, INPUT_SIZE), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    out -= out.mean(-1, keepdims=True)
    std = out.std(-1, keepdims=True)
    out /= np.where(std > 1e-6, std, np.inf)  # a constant row -> 0
    return torch.from_numpy(out)


def good_bad_labels(pred_bpm, label_bpm, threshold_bpm: float) -> np.ndarray:
    """Stage-2 targets, (N,) int8: 1 = bad when |pred - label| > threshold, else 0 = good.

    ``pred_bpm`` and ``label_bpm`` are (N,) HR in bpm; an error exactly at ``threshold_bpm``
    (bpm) is good, and a NaN in either input is bad.

    Parameters
    ----------
    pred_bpm, label_bpm : array_like of float, shape (N,)
        Predicted and label HR, bpm.
    threshold_bpm : float
        Largest error still good, bpm.

    Returns
    -------
    ndarray of int8, shape (N,)
        1 = bad, 0 = good.

    Raises
    ------
    ValueError
        On mismatched / non-1-D shapes or a negative or non-finite threshold.
    """
    pred = np.asarray(pred_bpm, dtype=np.float64)
    label = np.asarray(label_bpm, dtype=np.float64)
    if pred.shape != label.shape or pred.ndim != 1:
        raise ValueError(f"pred and label must be (N,) alike, got {pred.shape}, {label.shape}")
    if not np.isfinite(threshold_bpm) or threshold_bpm < 0:
        raise ValueError(f"threshold must be finite and >= 0, got {threshold_bpm}")
    return (~(np.abs(pred - label) <= threshold_bpm)).astype(np.int8)  # NaN compares False


def hog_features(images_uint8: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB ST images -> (N, 34020) float32 HOG features.

    Each image is converted to BGR (as the reference reads it), resized to 128x128 (default
    bilinear) and described by ``cv2.HOGDescriptor()`` (window 64x128, block 16, stride 8,
    cell 8, 9 bins) with the default window stride.

    Parameters
    ----------
    images_uint8 : ndarray of uint8, shape (N, H, W, 3)
        RGB ST images.

    Returns
    -------
    ndarray of float32, shape (N, 34020)

    Raises
    ------
    ValueError
        If the array is not (N, H, W, 3) uint8.
    """
    images = _check_images(images_uint8)
    hog = cv2.HOGDescriptor()
    out = np.empty((len(images), HOG_LENGTH), np.float32)
    for i, img in enumerate(images):
        bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
        out[i] = hog.compute(cv2.resize(bgr, (HOG_SIZE, HOG_SIZE))).reshape(-1)
    return out


class St2sClassifier(nn.Module):
    """Stage-2 MLP: standardise -> 6 x (Linear 200 -> ReLU) -> 2 logits (0 = good, 1 = bad).

    Mirrors the reference's ``MLPClassifier(hidden_layer_sizes=(200,) * 6)``, including its
    Glorot-uniform initialisation. Buffers ``mean`` / ``std`` (D,) are set by
    :func:`fit_classifier`. Input (B, D) float32, output (B, 2) float32 logits.

    Parameters
    ----------
    in_features : int
        Feature length D (HOG: 34020).
    hidden : tuple of int
        Width of each hidden layer.
    n_classes : int
        Logits (good, bad).
    """

    def __init__(self, in_features: int = HOG_LENGTH, hidden: tuple[int, ...] = (200,) * 6,
                 n_classes: int = 2):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        widths = (in_features, *hidden)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], n_classes))
        for m in self.net:
            if isinstance(m, nn.Linear):
                bound = float(np.sqrt(6.0 / (m.in_features + m.out_features)))
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.uniform_(m.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def _train(model: nn.Module, loss_fn, opt, x, y, *, epochs, batch, seed, device, on_epoch=None) -> None:
    """Mini-batch loop; a seeded ``torch.Generator`` draws each epoch's shuffle.

    ``on_epoch(epoch, model)`` (epoch counted from 1) is called after each epoch with the model in
    eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(model(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
        model.eval()
        if on_epoch is not None:
            on_epoch(epoch + 1, model)
    model.eval()


def _predict(model: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch].to(device)).cpu()
                          for i in range(0, len(x), batch)])


def fit_classifier(features, labels, *, epochs: int, lr: float = 1e-3, momentum: float = 0.9,
                   batch: int = 200, seed: int = 0, device: str = "cpu") -> St2sClassifier:
    """Train a :class:`St2sClassifier` (cross-entropy, SGD + Nesterov momentum) -> eval mode.

    Parameters
    ----------
    features : array-like, (N, D) float
        HOG features (:func:`hog_features`); their per-feature mean/std go into the model.
    labels : array-like, (N,) int
        0 = good, 1 = bad (:func:`good_bad_labels`).
    epochs, lr, momentum, batch, seed, device
        Passes, SGD step and momentum, mini-batch, seed (weights and shuffle), torch device.

    Returns
    -------
    St2sClassifier
        Trained, in eval mode, on ``device``.

    Raises
    ------
    ValueError
        On mismatched lengths, no samples, non-finite features or labels outside {0, 1}.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if x.ndim != 2 or y.shape != (len(x),) or len(x) == 0:
        raise ValueError(f"features (N, D) and labels (N,) required, got {x.shape}, {y.shape}")
    if not torch.isfinite(x).all() or not ((y == 0) | (y == 1)).all():
        raise ValueError("features must be finite and labels in {0, 1}")
    torch.manual_seed(seed)
    clf = St2sClassifier(in_features=x.shape[1])
    std = x.std(0, correction=0)
    clf.mean.copy_(x.mean(0))
    clf.std.copy_(torch.where(std > 0, std, torch.ones(())))  # constant features: unscaled
    clf.to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=momentum, nesterov=momentum > 0)
    _train(clf, nn.CrossEntropyLoss(), opt, x, y, epochs=epochs, batch=batch, seed=seed,
           device=device)
    return clf


def predict_keep(clf: St2sClassifier, features, *, batch: int = 1024) -> np.ndarray:
    """(N, D) float features -> (N,) bool, True = predicted good (kept), on the model's device.

    Parameters
    ----------
    clf : St2sClassifier
        Trained (:func:`fit_classifier`).
    features : array_like of float, shape (N, D)
    batch : int
        Rows per forward pass.

    Returns
    -------
    ndarray of bool, shape (N,)
        True = predicted good (kept).

    Raises
    ------
    ValueError
        If ``features`` is not (N, D) with the D the classifier was trained on.
    """
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    if x.ndim != 2 or x.shape[1] != clf.mean.numel():
        raise ValueError(f"expected (N, {clf.mean.numel()}) features, got {tuple(x.shape)}")
    if len(x) == 0:
        return np.zeros(0, bool)
    return (_predict(clf, x, batch).argmax(1) == 0).numpy()


def fit_regressor(images, hr_bpm, *, epochs: int, lr: float = 1e-3, batch: int = 32,
                  seed: int = 0, device: str = "cpu", bias_init: bool = False, on_epoch=None) -> St2sCnn:
    """Train a :class:`St2sCnn` (L1 loss, Adam) -> eval mode; deterministic on CPU.

    The model's ``input_size`` is the images' (rows, columns), so one function trains either layout.

    Parameters
    ----------
    images : torch.Tensor, (N, 3, rows, columns) float32
        From :func:`st_to_tensor` (3x64x300 "time" or 3x64x64 "paper").
    hr_bpm : array-like, (N,) float, bpm
        Segment HR of each image.
    epochs, lr, batch, seed, device
        Passes, Adam step, mini-batch, seed (``torch.manual_seed`` for the weights, a
        ``torch.Generator`` for the shuffle), torch device.
    bias_init : bool
        Start the output bias at the mean of ``hr_bpm`` (not in the paper; False = PyTorch's
        default initialisation as in the paper), so the first steps learn the variation of HR
        rather than its offset from 0.
    on_epoch : callable (epoch, model), optional
        Called after each epoch (from 1) with the model in eval mode, e.g. to score a validation
        subject and keep the best state.

    Returns
    -------
    St2sCnn
        Trained, in eval mode, on ``device``.

    Raises
    ------
    ValueError
        On wrong image shape, mismatched lengths, no samples or non-finite HR.
    """
    x = torch.as_tensor(images, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(hr_bpm, dtype=np.float32))
    if x.ndim != 4 or x.shape[1] != 3 or min(x.shape[2:], default=0) < 8 or y.shape != (len(x),):
        raise ValueError(f"images (N, 3, rows, columns) and hr (N,) required, got {x.shape}, {y.shape}")
    if len(x) == 0 or not torch.isfinite(y).all():
        raise ValueError("need at least one image and finite HR labels")
    torch.manual_seed(seed)
    model = St2sCnn(input_size=tuple(x.shape[2:]))
    if bias_init:
        with torch.no_grad():
            model.head[-1].bias.fill_(float(y.mean()))
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    _train(model, nn.L1Loss(), opt, x, y, epochs=epochs, batch=batch, seed=seed, device=device,
           on_epoch=on_epoch)
    return model


def predict_hr(model: St2sCnn, images, *, batch: int = 256) -> np.ndarray:
    """(N, 3, rows, columns) float images -> (N,) float32 stage-1 HR in bpm.

    Parameters
    ----------
    model : St2sCnn
    images : torch.Tensor, shape (N, 3, *model.input_size)
        float32 (:func:`st_to_tensor` with the model's layout).
    batch : int
        Images per forward pass.

    Returns
    -------
    ndarray of float32, shape (N,)
        Stage-1 HR, bpm.
    """
    x = torch.as_tensor(images, dtype=torch.float32)
    if len(x) == 0:
        return np.zeros(0, np.float32)
    return _predict(model, x, batch).numpy().astype(np.float32)


def segment_hr(pred_bpm, keep, segment_of) -> tuple[np.ndarray, np.ndarray]:
    """Segment HR: mean of the stage-1 predictions over the segment's kept images.

    Parameters
    ----------
    pred_bpm : array-like, (N,) float, bpm
        Stage-1 prediction per image.
    keep : array-like, (N,) bool
        Stage-2 decision per image (True = good).
    segment_of : array-like, (N,) int
        Segment id of each image.

    Returns
    -------
    hr : np.ndarray, (S,) float64, bpm
        One entry per distinct segment id in ascending order (``np.unique(segment_of)``). A
        segment that keeps no image gets the mean over all its images ...
    flagged : np.ndarray, (S,) bool
        ... and True here ("all images, flagged").

    Raises
    ------
    ValueError
        If the three arrays are not (N,) alike.
    """
    pred = np.asarray(pred_bpm, dtype=np.float64)
    keep = np.asarray(keep, dtype=bool)
    seg = np.asarray(segment_of)
    if pred.ndim != 1 or keep.shape != pred.shape or seg.shape != pred.shape:
        raise ValueError(f"shapes differ: {pred.shape}, {keep.shape}, {seg.shape}")
    ids = np.unique(seg)
    hr = np.empty(len(ids))
    flagged = np.zeros(len(ids), bool)
    for j, s in enumerate(ids):
        in_seg = seg == s
        flagged[j] = not (in_seg & keep).any()
        hr[j] = pred[in_seg if flagged[j] else in_seg & keep].mean()
    return hr, flagged
