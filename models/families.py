"""The model families of the training layer: one :class:`Family` record each, one registry line each.

A family's record lives in its own module (``FAMILY`` in :mod:`rppg_models.stgnet`,
:mod:`rppg_models.meta_rppg`, :mod:`rppg_models.ienet`, :mod:`rppg_models.cnn3d`) and holds
everything that differs between families: how the model is built, what it outputs, its loss, how
its output becomes a BVP waveform (or one HR per clip), its training-step extras and its default
input. Training (:func:`rppg_models.train.fit`) and evaluation
(:func:`rppg_models.evaluate.evaluate_checkpoint`) read only the record, so a new clip-to-BVP family
is one new module defining ``FAMILY`` plus one line in :data:`REGISTRY`.

This module imports neither torch nor a model module: the CLI lists the family names (and the
input vocabulary, :data:`NORMALIZATIONS`, :data:`LAYOUTS`) without loading torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["Family", "REGISTRY", "family", "fixed_input", "NORMALIZATIONS", "LAYOUTS", "SELECT", "AUGMENT",
           "SCHEDULES"]

#: pixel normalisations of :class:`rppg_models.data.ClipDataset` (re-exported there)
NORMALIZATIONS = ("raw", "diffnorm", "standardized", "temporal", "bandpass")
#: axis orders of a batch of clips (re-exported by :mod:`rppg_models.data`)
LAYOUTS = ("NCDHW", "NDCHW", "NDHWC")
#: what "best" means on the validation subjects (``rppg_models.train.TrainConfig.select``)
SELECT = ("loss", "hr_mae")
#: training-clip augmentations and learning-rate schedules (``rppg_models.train.TrainConfig``; the
#: CLI's choices, kept here because the CLI answers --help without importing torch)
AUGMENT = ("none", "jitter", "jitter+flip", "jitter+flip+speed")
SCHEDULES = ("constant", "warmup-cosine")

#: family name -> the module whose ``FAMILY`` is its record (imported on first use)
REGISTRY: dict[str, str] = {
    "stgnet": "rppg_models.stgnet",
    "meta-rppg": "rppg_models.meta_rppg",
    "ienet": "rppg_models.ienet",
    "cnn3d": "rppg_models.cnn3d",
}


def _adam(model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    import torch

    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)


@dataclass(frozen=True, kw_only=True)
class Family:
    """How a model family is built, reads a build, learns and predicts.

    Parameters
    ----------
    build : callable (frames=None, size_px=None, **options) -> nn.Module
        The model; ``frames`` / ``size_px`` other than None ask for a reduced input (clip length,
        crop side): STGNet takes both (and ``pos_embed``), Meta-rPPG a crop side >= 32 px, IENet and
        the 3D-CNN neither (ValueError).
    forward : callable (model, x) -> Tensor
        The model's training output for a batch ``x`` in :attr:`layout`.
    criterion : callable (output, target) -> scalar Tensor
        The loss of :attr:`forward`'s output against the batch target (BVP (B, T), or class (B,)).
    norm, layout : str
        Default :class:`rppg_models.data.ClipDataset` normalisation (:data:`NORMALIZATIONS`) and
        axis order (:data:`LAYOUTS`) of its input.
    frames : int
        Frames of each clip the model takes (the first ``frames`` of a stored clip).
    size_px : int
        Side of the square input crop, px.
    to_bvp : callable (output) -> Tensor (B, T), optional
        How :attr:`forward`'s output becomes a pulse waveform; None for a family that predicts no
        BVP (then :attr:`clip_hr` gives its HR).
    clip_hr : callable (model, clip_uint8 (L, H, W, 3)) -> float, optional
        HR of one stored clip in bpm (-1: no pulse) for a family without :attr:`to_bvp`.
    after_step : callable (model, x) -> None, optional
        Run without gradients after each optimiser step (Meta-rPPG's running prototype).
    train_metric : callable (output, target) -> float, optional
        Recorded per training step (the 3D-CNN's batch accuracy).
    batches : callable, optional
        Its own training data instead of a build's BVP clips:
        ``(cache, dataset, pipeline, cfg, *, subjects, gen, device) -> (iterator of (x, target) on
        device, subjects trained on)``, drawing from ``gen`` and ``cfg.seed`` only (3D-CNN: the
        synthetic build's videos plus noise videos drawn on the fly).
    optimizer : callable (model, lr) -> torch.optim.Optimizer
        Default: Adam over the parameters that require a gradient.
    adapt : callable (model, x, steps) -> None, optional
        Transductive test-time adaptation on a subject's unlabelled clips ``x`` (Meta-rPPG).
    """

    build: Callable[..., torch.nn.Module]
    forward: Callable[[torch.nn.Module, torch.Tensor], Any]
    criterion: Callable[[Any, torch.Tensor], torch.Tensor]
    norm: str
    layout: str
    frames: int
    size_px: int
    to_bvp: Callable[[Any], torch.Tensor] | None = None
    clip_hr: Callable[[torch.nn.Module, np.ndarray], float] | None = None
    after_step: Callable[[torch.nn.Module, torch.Tensor], None] | None = None
    train_metric: Callable[[Any, torch.Tensor], float] | None = None
    batches: Callable[..., tuple[Iterator[tuple[torch.Tensor, torch.Tensor]], list[str]]] | None = None
    optimizer: Callable[[torch.nn.Module, float], torch.optim.Optimizer] = _adam
    adapt: Callable[[torch.nn.Module, torch.Tensor, int], None] | None = None

    @property
    def t_axis(self) -> int:
        """The frame axis of a batch in :attr:`layout`."""
        return self.layout.index("D")

    def loss(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar training loss of a batch: :attr:`criterion` of :attr:`forward`."""
        return self.criterion(self.forward(model, x), target)

    def predict_bvp(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Predicted pulse signal (B, T) of a batch in :attr:`layout`.

        Raises
        ------
        KeyError
            The family predicts no BVP (no :attr:`to_bvp`).
        """
        if self.to_bvp is None:
            raise KeyError("predicts no BVP")
        return self.to_bvp(self.forward(model, x))


def family(name: str) -> Family:
    """The record of a registered family (its module imported on first use).

    Parameters
    ----------
    name : str
        A key of :data:`REGISTRY`.

    Returns
    -------
    Family

    Raises
    ------
    KeyError
        Unknown family; the message names the known ones.
    """
    try:
        module = REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown family {name!r}; known: {', '.join(REGISTRY)}") from None
    return importlib.import_module(module).FAMILY


def fixed_input(name: str, frames_ok: int, size_ok: int, make: Callable[[], torch.nn.Module]):
    """A :attr:`Family.build` for a model of one input size.

    Parameters
    ----------
    name : str
        The family, for the error message.
    frames_ok, size_ok : int
        The clip length (frames) and crop side (px) the model takes.
    make : callable () -> nn.Module
        Builds the model.

    Returns
    -------
    callable (frames=None, size_px=None) -> nn.Module
        Raises ValueError for ``frames`` / ``size_px`` other than None or the model's.
    """
    def build(frames=None, size_px=None):
        if frames not in (None, frames_ok) or size_px not in (None, size_ok):
            raise ValueError(f"{name} takes {frames_ok}-frame clips of {size_ok} px only "
                             f"(got frames={frames}, size_px={size_px})")
        return make()

    return build
