"""ST2S-rPPG: stage-1 CNN heart-rate regressor and stage-2 good/bad classifier.

Implemented from the written specification of Kateri et al., "ST2S-rPPG: A Spatiotemporal
Two-Stage Learning Approach for Pulse Estimation Using Video", PMLR 259:550-562, 2025. Stage 1
regresses the segment HR (bpm) from one spatiotemporal (ST) image read at 3x64x64; stage 2
predicts from HOG features whether stage 1 is right on that image (class 0 = good,
|error| <= threshold; 1 = bad); the segment HR is the mean stage-1 prediction over kept images.

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
  resizes to 64x64 and :meth:`St2sCnn.forward` rejects other shapes.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

__all__ = ["St2sCnn", "St2sClassifier", "st_to_tensor", "hog_features", "good_bad_labels", "fit_regressor",
           "predict_hr", "fit_classifier", "predict_keep", "segment_hr", "HOG_LENGTH"]

INPUT_SIZE = 64  #: side of the square image the CNN reads, px
HOG_SIZE = 128  #: side of the square image HOG is computed on, px
HOG_LENGTH = 34020  #: default OpenCV HOG length of a 128x128 image (9 windows x 3,780)


class St2sCnn(nn.Module):
    """Stage-1 regressor: 3 x (Conv 3x3 -> ReLU -> MaxPool 2), 16/32/64 ch -> FC hidden -> FC out.

    ``hidden_units`` 128 -> 548,129 parameters (the reference's accidental 3 -> 35,879);
    ``out_units`` 1 = HR in bpm.

    Parameters
    ----------
    in_channels : int
        Input channels (RGB).
    hidden_units : int
        Width of the hidden fully connected layer.
    out_units : int
        Outputs (1: HR in bpm).
    """

    def __init__(self, in_channels: int = 3, hidden_units: int = 128, out_units: int = 1):
        super().__init__()
        self.in_channels = in_channels
        layers: list[nn.Module] = []
        for c_in, c_out in ((in_channels, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * 8 * 8, hidden_units), nn.ReLU(),
                                  nn.Linear(hidden_units, out_units))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, 64, 64) float in [0, 1] -> (B,) HR in bpm ((B, out) if out_units > 1).

        Raises
        ------
        ValueError
            If ``x`` is not (B, in_channels, 64, 64).
        """
        if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected (B, {self.in_channels}, 64, 64), got {tuple(x.shape)}")
        out = self.head(self.features(x))
        return out.squeeze(-1) if out.shape[-1] == 1 else out


def _check_images(images_uint8: np.ndarray) -> np.ndarray:
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8, got {images.shape} {images.dtype}")
    return images


def st_to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB ST images, any size -> (N, 3, 64, 64) float32 in [0, 1].

    Each image is resized with ``cv2.INTER_AREA`` (the store keeps full-size images).

    Parameters
    ----------
    images_uint8 : ndarray of uint8, shape (N, H, W, 3)
        RGB ST images.

    Returns
    -------
    torch.Tensor, shape (N, 3, 64, 64), float32 in [0, 1]

    Raises
    ------
    ValueError
        If the array is not (N, H, W, 3) uint8.
    """
    images = _check_images(images_uint8)
    out = np.empty((len(images), 3, INPUT_SIZE, INPUT_SIZE), np.float32)
    for i, img in enumerate(images):
        small = cv2.resize(img, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA)
        out[i] = small.transpose(2, 0, 1) / np.float32(255.0)
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


def _train(model: nn.Module, loss_fn, opt, x, y, *, epochs, batch, seed, device) -> None:
    """Mini-batch loop; a seeded ``torch.Generator`` draws each epoch's shuffle."""
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss_fn(model(x[idx].to(device)), y[idx].to(device)).backward()
            opt.step()
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
                  seed: int = 0, device: str = "cpu") -> St2sCnn:
    """Train a :class:`St2sCnn` (L1 loss, Adam) -> eval mode; deterministic on CPU.

    Parameters
    ----------
    images : torch.Tensor, (N, 3, 64, 64) float32 in [0, 1]
        From :func:`st_to_tensor`.
    hr_bpm : array-like, (N,) float, bpm
        Segment HR of each image.
    epochs, lr, batch, seed, device
        Passes, Adam step, mini-batch, seed (``torch.manual_seed`` for the weights, a
        ``torch.Generator`` for the shuffle), torch device.

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
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE) or y.shape != (len(x),):
        raise ValueError(f"images (N, 3, 64, 64) and hr (N,) required, got {x.shape}, {y.shape}")
    if len(x) == 0 or not torch.isfinite(y).all():
        raise ValueError("need at least one image and finite HR labels")
    torch.manual_seed(seed)
    model = St2sCnn().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    _train(model, nn.L1Loss(), opt, x, y, epochs=epochs, batch=batch, seed=seed, device=device)
    return model


def predict_hr(model: St2sCnn, images, *, batch: int = 256) -> np.ndarray:
    """(N, 3, 64, 64) float images in [0, 1] -> (N,) float32 stage-1 HR in bpm.

    Parameters
    ----------
    model : St2sCnn
    images : torch.Tensor, shape (N, 3, 64, 64)
        float32 in [0, 1] (:func:`st_to_tensor`).
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
