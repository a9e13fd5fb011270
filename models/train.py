"""One training loop for the model families that learn a BVP waveform from clips of a build.

``fit`` runs any ``(model, batch -> loss)`` pair: device auto-selected (CUDA when present, with
automatic mixed precision there; CPU otherwise), seeded, with a progress bar showing the loss and
throughput, and a checkpoint that records the build manifest, the family and the config. Families
register how they read clips and what their loss is in :data:`FAMILIES`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Family", "FAMILIES", "TrainConfig", "fit", "pick_device", "seed_everything"]


@dataclass(frozen=True)
class Family:
    """How a model family reads a build and learns from it.

    Attributes
    ----------
    build : callable () -> nn.Module
    norm, layout : str
        :class:`rppg_models.data.ClipDataset` normalisation and axis order.
    frames : int
        Frames of each clip the model takes (the first ``frames`` of a stored clip).
    loss : callable (model, x, bvp) -> scalar tensor
    """

    build: Callable[[], torch.nn.Module]
    norm: str
    layout: str
    frames: int
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _stgnet() -> Family:
    from rppg_models import stgnet

    def loss(model, x, bvp):
        return stgnet.neg_pearson_loss(model(x), bvp)

    return Family(stgnet.Stgnet, "raw", "NCDHW", 160, loss)


def _meta_rppg() -> Family:
    from rppg_models import meta_rppg

    def loss(model, x, bvp):
        prob, _, _ = model(meta_rppg.window_preprocess(x))
        return meta_rppg.ordinal_loss(prob, meta_rppg.ordinal_targets(bvp))

    return Family(meta_rppg.MetaRppg, "raw", "NDCHW", 60, loss)


def _ienet() -> Family:
    from rppg_models import ienet

    def build():
        return ienet.Ienet(use_nir=False)  # RGB-only: the UBFC builds have no NIR video

    def loss(model, x, bvp):
        _, _, fused = model(x)
        return ienet.rppg_loss(fused, bvp)

    return Family(build, "raw", "NCDHW", 128, loss)


#: family name -> factory of its :class:`Family` (imported only when used)
FAMILIES: dict[str, Callable[[], Family]] = {"stgnet": _stgnet, "meta-rppg": _meta_rppg, "ienet": _ienet}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training settings (recorded in the checkpoint)."""

    steps: int = 100
    batch: int = 4
    lr: float = 1e-4
    seed: int = 0
    workers: int = 0


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy; return a generator for the DataLoader's shuffle."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(family_name: str, cache: str | Path, dataset: str, pipeline: str, cfg: TrainConfig = TrainConfig(), *,
        subjects: list[str] | None = None, device: str = "auto", out: str | Path | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train ``family_name`` on a build's clips for ``cfg.steps`` optimiser steps.

    Returns
    -------
    dict
        ``losses`` (per step), ``clips_per_s``, ``device`` and, with ``out``, the checkpoint path
        (``<out>/<family>-<key12>.pt``: state dict, config, family, build manifest key).

    Raises
    ------
    KeyError
        Unknown family. StoreError: no such build.
    """
    from torch.utils.data import DataLoader

    from rppg_models.data import ClipDataset
    from rppg_prep.store import manifest_path

    try:
        fam = FAMILIES[family_name]()
    except KeyError:
        raise KeyError(f"unknown family {family_name!r}; known: {', '.join(FAMILIES)}") from None
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    ds = ClipDataset(cache, dataset, pipeline, subjects=subjects, norm=fam.norm, layout=fam.layout)
    loader = DataLoader(ds, batch_size=cfg.batch, shuffle=True, generator=gen, num_workers=cfg.workers,
                        drop_last=len(ds) > cfg.batch, pin_memory=dev.type == "cuda")
    model = fam.build().to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    t_axis = 2 if fam.layout == "NCDHW" else 1
    losses, seen, t0 = [], 0, time.perf_counter()
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"{family_name} on {dev.type}", total=cfg.steps)
    try:
        while len(losses) < cfg.steps:
            for x, bvp, _, _ in loader:
                x = x.narrow(t_axis, 0, fam.frames).to(dev, non_blocking=True)
                bvp = bvp[:, :fam.frames].to(dev, non_blocking=True)
                with torch.autocast(dev.type, enabled=amp):
                    loss = fam.loss(model, x, bvp)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(float(loss.detach()))
                seen += len(x)
                if bar:
                    rate = seen / (time.perf_counter() - t0)
                    bar.update(task, advance=1, description=f"{family_name} loss {losses[-1]:.4f}, {rate:.1f} clips/s")
                if len(losses) >= cfg.steps:
                    break
    finally:
        if bar:
            bar.stop()
    result: dict[str, Any] = {"losses": losses, "clips_per_s": seen / (time.perf_counter() - t0),
                              "device": str(dev)}
    if out is not None:
        man = manifest_path(cache, dataset, pipeline)
        build_key = hashlib.sha256(man.read_bytes()).hexdigest()
        meta = {"family": family_name, "config": asdict(cfg), "build": {"manifest": str(man), "key": build_key},
                "subjects": ds.subjects}
        key = hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()
        path = Path(out) / f"{family_name}-{key[:12]}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), **meta}, path)
        result["checkpoint"] = path
    return result


def fit_cnn3d_synthetic(*, steps: int = 100, batch: int = 32, lr: float = 1e-3, seed: int = 0,
                        device: str = "auto") -> tuple[torch.nn.Module, list[float]]:
    """Train Bousefsaf's 3D-CNN on its pseudo-PPG videos alone, as the paper does.

    Every step draws a fresh batch from :func:`rppg_models.synthetic.generate` (balanced over the
    75 HR classes and the noise class) and takes one Adam step on the cross-entropy.

    Returns
    -------
    (model in eval mode, losses per step)
    """
    from rppg_models import cnn3d, synthetic

    dev = pick_device(device)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    model = cnn3d.Cnn3d().to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-7)
    losses = []
    for _ in range(steps):
        labels = rng.integers(0, cnn3d.N_CLASSES, batch)
        videos, labels = synthetic.generate(batch, rng=rng, labels=labels)
        x, y = torch.from_numpy(videos).to(dev), torch.from_numpy(labels).to(dev)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return model.eval(), losses


def cnn3d_clip_hr(model: torch.nn.Module, clip_uint8: np.ndarray, *, patch_stride: int = 13,
                  time_stride: int = 50) -> float:
    """One HR (bpm; -1 when every window says noise) for a stored clip (L, H, W, 3) uint8, from the
    3D-CNN's HR map over its green channel (patches every ``patch_stride`` px, windows every
    ``time_stride`` frames), reduced per 60-frame window by :func:`rppg_models.cnn3d.reduce_hr_map`;
    the clip's HR is the median over the windows that are not noise."""
    from rppg_models import cnn3d

    prob = cnn3d.predict_map(model, clip_uint8, patch_stride=patch_stride, time_stride=time_stride)
    per_window = np.atleast_1d(np.asarray(cnn3d.reduce_hr_map(prob), dtype=np.float64))
    pulse = per_window[per_window > 0]
    return float(np.median(pulse)) if pulse.size else -1.0
