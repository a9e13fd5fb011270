"""One training loop for every model family of :data:`rppg_models.families.REGISTRY`.

``fit`` trains any registered family: device auto-selected (CUDA when present, with automatic
mixed precision there; CPU otherwise), seeded, with a progress bar showing the loss and throughput,
and a checkpoint that records the build manifest, the family and the config. What differs between
families (model, loss, data, BVP) is their :class:`rppg_models.families.Family` record; the 3D-CNN's
entry points (:func:`fit_cnn3d`, :func:`fit_cnn3d_synthetic`, :func:`finetune_cnn3d`) run the same
loop on their own batches.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

# the 3D-CNN's HR of one stored clip, public here under its former name
from rppg_models.cnn3d import clip_hr as cnn3d_clip_hr
from rppg_models.families import AUGMENT, REGISTRY, SCHEDULES, SELECT, Family, family
from rppg_prep.stage import canonical_json

__all__ = ["Family", "FAMILIES", "TrainConfig", "SELECT", "CPU_RECIPES", "fit", "fit_cnn3d", "fit_cnn3d_synthetic",
           "finetune_cnn3d", "cnn3d_clip_hr", "pick_device", "amp_dtype", "seed_everything"]


#: family name -> factory of its :class:`Family`, for the families that learn a BVP waveform from a
#: build's clips and BVP labels (the registry, :data:`rppg_models.families.REGISTRY`, also holds the 3D-CNN)
FAMILIES: dict[str, Callable[[], Family]] = {name: partial(family, name) for name in REGISTRY
                                             if family(name).to_bvp is not None}


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Training settings (recorded in the checkpoint).

    Parameters
    ----------
    steps : int
        Optimiser steps.
    batch : int
        Clips per step.
    lr : float
        Adam learning rate.
    seed : int
    workers : int
        DataLoader worker processes.
    frames : int, optional
        Clip length in frames (STGNet only; default the family's, 160).
    size_px : int, optional
        Crop side the clips are resized to when read, px (STGNet, or Meta-rPPG >= 32; default the
        stored 64).
    norm : str, optional
        Pixel normalisation instead of the family's (:data:`rppg_models.data.NORMALIZATIONS`; the
        CPU recipe uses ``temporal``).
    amp : {"auto", "on", "off"}
        Mixed precision: ``auto`` is on for CUDA (float16 with a gradient scaler), off on the CPU;
        ``on`` on the CPU uses bfloat16.
    max_minutes : float, optional
        Stop after this much training time (minutes of wall clock) even if fewer than ``steps``
        steps ran; the result says how many did.
    val_every : int
        With validation subjects (``fit(val_subjects=...)``): score them every this many steps and
        keep the best state (the checkpoint is that state, never the last one by default).
    select : {"loss", "hr_mae"}
        What "best" means on validation: the family's loss over the validation clips, or the MAE
        (bpm) of the clip HR from the predicted BVP against the clip's label HR.
    patience : int, optional
        Early stopping: stop after this many validations without improvement (None: run every step).
    pos_embed : {"learned", "off"}
        STGNet only: ``learned`` is the paper's; ``off`` keeps the positional embeddings at zero
        (:data:`rppg_models.stgnet.POS_EMBED`, the CPU recipe).
    augment : {"none", "jitter", "jitter+flip", "jitter+flip+speed"}
        Training-clip augmentation (:class:`rppg_models.data.ClipDataset` ``jitter`` / ``flip`` /
        ``speed``): windows at random frames instead of the stored clips, left-right mirroring, and
        windows of 0.7-1.4 clip lengths resampled to one (:data:`rppg_models.data.SPEED_RANGE`),
        which scales each training clip's HR by k.
    schedule : {"constant", "warmup-cosine"}
        Learning rate: constant (the papers'), or a linear warm-up over the first 10 % of
        ``steps`` then a cosine decay to 0 at ``steps``.
    """

    steps: int = 100
    batch: int = 4
    lr: float = 1e-4
    seed: int = 0
    workers: int = 0
    frames: int | None = None
    size_px: int | None = None
    amp: str = "auto"
    max_minutes: float | None = None
    norm: str | None = None
    val_every: int = 100
    select: str = "loss"
    patience: int | None = None
    pos_embed: str = "learned"
    augment: str = "none"
    schedule: str = "constant"


def pick_device(name: str = "auto") -> torch.device:
    """The training device.

    Parameters
    ----------
    name : str
        ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Returns
    -------
    torch.device

    Raises
    ------
    RuntimeError
        ``cuda`` asked for on a machine without a usable CUDA device.
    ValueError
        Not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device "
                           f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}")
    return dev


def amp_dtype(device: torch.device, amp: str = "auto") -> torch.dtype | None:
    """The autocast dtype of a run, or None for full float32.

    ``auto``: float16 on CUDA (with a gradient scaler), None on the CPU, where float16 autocast is
    slow and bfloat16 changes results; ``on``: float16 on CUDA, bfloat16 on the CPU; ``off``: None.

    Parameters
    ----------
    device : torch.device or str
        The training device (resolved by :func:`pick_device`).
    amp : {"auto", "on", "off"}

    Returns
    -------
    torch.dtype or None

    Raises
    ------
    ValueError
        Unknown ``amp``.
    """
    if amp not in ("auto", "on", "off"):
        raise ValueError(f"amp must be auto, on or off, got {amp!r}")
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy.

    Parameters
    ----------
    seed : int

    Returns
    -------
    torch.Generator
        Seeded, for the DataLoader's shuffle.
    """
    torch.manual_seed(seed)
    np.random.seed(seed)
    return torch.Generator().manual_seed(seed)


def fit(family_name: str, cache: str | Path, dataset: str, pipeline: str, cfg: TrainConfig = TrainConfig(), *,
        subjects: list[str] | None = None, val_subjects: list[str] | None = None, device: str = "auto",
        out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train ``family_name`` on a build's clips for ``cfg.steps`` optimiser steps.

    The families of :data:`FAMILIES` read the clips and BVP labels (:class:`rppg_models.data.ClipDataset`,
    ``cfg.norm`` / ``frames`` / ``size_px`` / ``augment``); a family with its own
    :attr:`~rppg_models.families.Family.batches` reads the build its own way (``cnn3d``: the
    synthetic build, see :func:`fit_cnn3d`).

    With ``val_subjects``, the validation clips are scored every ``cfg.val_every`` steps (and after
    the last step) on ``cfg.select``; the returned model and the checkpoint hold the best state seen,
    and ``cfg.patience`` stops training early. Validation subjects must not be training subjects,
    and the subjects a model is finally scored on must be neither.

    Parameters
    ----------
    family_name : {"stgnet", "meta-rppg", "ienet", "cnn3d"}
        A key of :data:`rppg_models.families.REGISTRY`.
    cache : str or Path
        Store root holding the build.
    dataset, pipeline : str
        The build (``rppg-prep build PIPELINE``).
    cfg : TrainConfig
        Training settings.
    subjects : list of str, optional
        Training subjects (default: every subject of the build but the validation ones).
    val_subjects : list of str, optional
        Validation subjects: checkpoint selection and early stopping (see above).
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (:func:`pick_device`).
    out : str or Path, optional
        Folder of the checkpoint; None saves none.
    progress : bool
        Show a progress bar with the loss and clips/s.

    Returns
    -------
    dict
        ``losses`` (per step), ``clips_per_s``, ``device``, ``train_s`` (s), ``gpu_peak_mb`` on CUDA,
        ``model`` (in eval mode: the best validated state, or the last), ``best_step`` and ``val``
        (one ``{"step", "loss", "hr_mae"}`` per validation; empty without validation subjects),
        ``train_metric`` (one per step) for a family with one (the 3D-CNN's batch accuracy) and,
        with ``out``, ``checkpoint``: ``<out>/<family>-<key12>.pt`` (state dict, config, family, the
        build's node digest, subjects, validation subjects and best step; key from
        :func:`checkpoint_key`).

    Raises
    ------
    KeyError
        Unknown family.
    ValueError
        A subject both in training and in validation, an unknown ``cfg.select``, ``pos_embed``
        set for a family that has none, or validation subjects for a family that predicts no BVP.
    StoreError
        No such build.
    RuntimeError
        CUDA asked for and absent.
    """
    fam = family(family_name)
    if cfg.select not in SELECT or cfg.augment not in AUGMENT or cfg.schedule not in SCHEDULES:
        raise ValueError(f"select must be one of {SELECT}, augment one of {AUGMENT} and schedule one of "
                         f"{SCHEDULES}; got {cfg.select!r}, {cfg.augment!r}, {cfg.schedule!r}")
    val_subjects = list(val_subjects or [])
    if val_subjects and fam.to_bvp is None:
        raise ValueError(f"{family_name} predicts no BVP: fit validates only the families of FAMILIES")
    if subjects is None and val_subjects:
        from rppg_prep import open_build

        subjects = [s for s in open_build(cache, dataset, pipeline) if s not in val_subjects]
    both = sorted(set(subjects or []) & set(val_subjects))
    if both:
        raise ValueError(f"subject(s) {both} are both training and validation subjects")
    dev = pick_device(device)
    gen = seed_everything(cfg.seed)
    extra = {} if cfg.pos_embed == "learned" else {"pos_embed": cfg.pos_embed}
    try:
        model = fam.build(frames=cfg.frames, size_px=cfg.size_px, **extra).to(dev).train()
    except TypeError:
        raise ValueError(f"pos_embed={cfg.pos_embed!r}: {family_name} has no positional-embedding option") from None
    batches, trained_on = (fam.batches or partial(_clip_batches, fam))(cache, dataset, pipeline, cfg, subjects=subjects,
                                                                       gen=gen, device=dev)
    validate = _Validation(family_name, fam, cache, dataset, pipeline, val_subjects, cfg.norm or fam.norm,
                           cfg.size_px, cfg.frames or fam.frames, dev) if val_subjects else None
    result = _train(model, fam, batches, cfg, dev, family_name, validate=validate, progress=progress)
    result["device"] = str(dev)
    if dev.type == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if out is not None:
        settings = asdict(cfg)
        if val_subjects:
            settings["val_subjects"] = val_subjects
        result["checkpoint"] = _checkpoint(model, family_name, settings, cache, dataset, pipeline, trained_on, out,
                                           best_step=result["best_step"])
    return result


def _clip_batches(fam: Family, cache, dataset: str, pipeline: str, cfg: TrainConfig, *, subjects: list[str] | None,
                  gen: torch.Generator, device: torch.device) -> tuple[Iterator[tuple[torch.Tensor, torch.Tensor]],
                                                                       list[str]]:
    """A BVP family's training data: a build's clips and BVP labels, shuffled by ``gen``, epoch after epoch."""
    from torch.utils.data import DataLoader

    from rppg_models.data import SPEED_RANGE, ClipDataset

    frames = cfg.frames or fam.frames
    ds = ClipDataset(cache, dataset, pipeline, subjects=subjects, norm=cfg.norm or fam.norm, layout=fam.layout,
                     size_px=cfg.size_px, jitter=cfg.augment.startswith("jitter"), flip="flip" in cfg.augment,
                     speed=SPEED_RANGE if cfg.augment.endswith("speed") else None)
    loader = DataLoader(ds, batch_size=cfg.batch, shuffle=True, generator=gen, num_workers=cfg.workers,
                        drop_last=len(ds) > cfg.batch, pin_memory=device.type == "cuda")

    def epochs():
        while True:
            for x, bvp, _, _ in loader:
                yield (x.narrow(fam.t_axis, 0, frames).to(device, non_blocking=True),
                       bvp[:, :frames].to(device, non_blocking=True))

    return epochs(), ds.subjects


def _train(model: torch.nn.Module, fam: Family, batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
           cfg: TrainConfig, dev: torch.device, label: str, *,
           validate: Callable[[torch.nn.Module], dict[str, Any]] | None = None, validate_first: bool = False,
           progress: bool = True) -> dict[str, Any]:
    """The training loop every family runs: ``cfg.steps`` optimiser steps on ``batches``.

    ``validate(model)`` (optional) scores the model every ``cfg.val_every`` steps, after the last
    step, and before the first with ``validate_first`` (step 0); it returns the validation record
    (``step`` is added), whose ``cfg.select`` entry is minimised. The model comes back in eval mode with the best
    validated state (or the last).

    Returns
    -------
    dict
        ``losses``, ``clips_per_s``, ``train_s`` (s), ``model``, ``best_step``, ``val`` and, for a
        family with a :attr:`Family.train_metric`, ``train_metric`` (one per step).
    """
    opt = fam.optimizer(model, cfg.lr)
    sched = None
    if cfg.schedule == "warmup-cosine":
        warm = max(1, cfg.steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1.0 + np.cos(np.pi * min(1.0, k / cfg.steps))))
    dtype = amp_dtype(dev, cfg.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    best = {"score": float("inf"), "step": None, "state": None}
    val_log: list[dict[str, Any]] = []

    def check(step: int) -> bool:
        """Validate after ``step`` steps; True when patience is used up."""
        rec = validate(model)
        rec["step"] = step
        val_log.append(rec)
        score = rec[cfg.select]
        if score < best["score"]:
            best.update(score=score, step=step, state=copy.deepcopy(model.state_dict()))
        elif cfg.patience is not None:
            # no finite score yet (best step None): every validation so far counts against patience
            since = best["step"] if best["step"] is not None else -1
            if sum(r["step"] > since for r in val_log) >= cfg.patience:
                return True
        return False

    if validate and validate_first:
        check(0)
    model.train()
    losses, metric, seen, t0, stopped = [], [], 0, time.perf_counter(), False
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"{label} on {dev.type}", total=cfg.steps)
    try:
        while len(losses) < cfg.steps and not stopped:
            x, y = next(batches)
            with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                output = fam.forward(model, x)
                loss = fam.criterion(output, y).float()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if sched is not None:
                sched.step()
            if fam.after_step is not None:
                with torch.no_grad():
                    fam.after_step(model, x)
            losses.append(float(loss.detach()))
            if fam.train_metric is not None:
                metric.append(fam.train_metric(output, y))
            seen += len(x)
            if bar:
                rate = seen / (time.perf_counter() - t0)
                bar.update(task, advance=1, description=f"{label} loss {losses[-1]:.4f}, {rate:.1f} clips/s")
            if validate and len(losses) % cfg.val_every == 0 and check(len(losses)):
                stopped = True
            if cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes:
                break
        if validate and (not val_log or val_log[-1]["step"] != len(losses)):
            check(len(losses))
    finally:
        if bar:
            bar.stop()
    train_s = time.perf_counter() - t0
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    result: dict[str, Any] = {"losses": losses, "clips_per_s": seen / train_s, "train_s": train_s,
                              "model": model, "best_step": best["step"], "val": val_log}
    if fam.train_metric is not None:
        result["train_metric"] = metric
    return result


def fit_cnn3d_synthetic(*, steps: int = 100, batch: int = 32, lr: float = 1e-3, seed: int = 0,
                        device: str = "auto") -> tuple[torch.nn.Module, list[float]]:
    """Train Bousefsaf's 3D-CNN on its pseudo-PPG videos alone, as the paper does.

    Every step draws a fresh batch from :func:`rppg_prep.pseudo_ppg.generate` (balanced over the
    75 HR classes and the noise class) and takes one Adam step on the cross-entropy.

    Parameters
    ----------
    steps : int
        Optimiser steps.
    batch : int
        Videos per step (60 frames of 25x25 px each).
    lr : float
        Adam learning rate.
    seed : int
    device : str
        As :func:`pick_device`.

    Returns
    -------
    model : torch.nn.Module
        The 3D-CNN in eval mode.
    losses : list of float
        Cross-entropy per step.
    """
    from rppg_models import cnn3d

    dev = pick_device(device)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    model = cnn3d.FAMILY.build().to(dev).train()
    res = _train(model, cnn3d.FAMILY, cnn3d.generator_batches(batch, rng, dev),
                 TrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, amp="off"), dev, "cnn3d", progress=False)
    return res["model"], res["losses"]


#: the README's CPU recipes (``TrainConfig(**CPU_RECIPES[family])``): every entry a deviation from the
#: paper's defaults, measured under the 4-fold protocol (README, "Learning that holds on people never seen")
CPU_RECIPES: dict[str, dict[str, Any]] = {
    "stgnet": {"size_px": 16, "norm": "bandpass", "pos_embed": "off", "augment": "jitter+flip+speed",
               "schedule": "warmup-cosine", "lr": 1e-3, "batch": 8, "steps": 600, "val_every": 100},
    "meta-rppg": {"size_px": 32, "norm": "bandpass", "augment": "jitter+flip", "select": "hr_mae", "lr": 1e-3,
                  "batch": 4, "steps": 400, "val_every": 100},
}


class _Validation:
    """The validation clips of a run, read once; calling it scores a model on them (no gradient)."""

    def __init__(self, family_name, fam, cache, dataset, pipeline, subjects, norm, size_px, frames, dev):
        from rppg_models.data import ClipDataset
        from rppg_prep import open_build

        ds = ClipDataset(cache, dataset, pipeline, subjects=subjects, norm=norm, layout=fam.layout, size_px=size_px)
        build = open_build(cache, dataset, pipeline)
        items = [ds[i] for i in range(len(ds))]
        if not items:
            raise ValueError(f"the validation subject(s) {subjects} have no clips")
        self.family_name, self.fam, self.frames, self.dev = family_name, fam, frames, dev
        self.x = torch.stack([it[0] for it in items]).narrow(fam.t_axis, 0, frames)
        self.bvp = torch.stack([it[1] for it in items])[:, :frames]
        self.hr = np.array([float(it[2]) for it in items])
        clocks = {s: build[s]["labels"]["t_s"][:] for s in subjects}
        windows = {s: build[s]["clips"]["window"][:] for s in subjects}
        self.t = [clocks[ds.subjects[int(si)]][windows[ds.subjects[int(si)]][int(k), 0]:][:frames]
                  for si, k in (it[3].tolist() for it in items)]

    def __call__(self, model: torch.nn.Module, batch: int = 8) -> dict[str, float]:
        from rppg_models.evaluate import hr_on_clock, predict_bvp

        model.eval()
        losses, preds = [], []
        with torch.no_grad():
            for a in range(0, len(self.x), batch):
                x = self.x[a:a + batch].to(self.dev)
                bvp = self.bvp[a:a + batch].to(self.dev)
                losses.append(float(self.fam.loss(model, x, bvp)) * len(x))
                preds += list(predict_bvp(self.family_name, model, x).float().cpu().numpy())
        model.train()
        hr = np.array([hr_on_clock(p, t)[0] for p, t in zip(preds, self.t)])
        ok = np.isfinite(hr) & np.isfinite(self.hr)
        return {"loss": sum(losses) / len(self.x),
                "hr_mae": float(np.mean(np.abs(hr[ok] - self.hr[ok]))) if ok.any() else float("inf")}


#: TrainConfig fields that change how fast training runs, never what it learns: in no checkpoint key
EXECUTION_SETTINGS = ("workers",)


def checkpoint_key(family: str, cfg: dict[str, Any], man: dict[str, Any], subjects: list[str]) -> str:
    """Key of a checkpoint: sha256 hex of the family, the config and the build's clip and label nodes.

    Parameters
    ----------
    family : str
    cfg : dict
        Training settings; the execution settings (:data:`EXECUTION_SETTINGS`) are left out.
    man : dict
        The build manifest (:func:`rppg_prep.manifest.read_manifest`).
    subjects : list of str
        The subjects trained on.

    Returns
    -------
    str
        The same for a no-op rebuild of the build and for another number of DataLoader workers
        (as Hugging Face datasets leaves ``num_proc`` out of its fingerprints); different when a
        clip or label node, a subject, the family or a setting that changes the result changes.
    """
    from rppg_prep.manifest import build_key

    settings = {k: v for k, v in cfg.items() if k not in EXECUTION_SETTINGS}
    payload = {"family": family, "config": settings, "build": build_key(man, ("clips", "labels"), subjects)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _checkpoint(model: torch.nn.Module, family: str, cfg: dict, cache, dataset: str, pipeline: str,
                subjects: list[str], out, best_step: int | None = None) -> Path:
    """Save ``<out>/<family>-<key12>.pt``: state dict, family, config, build (manifest path, node digest), subjects."""
    from rppg_prep.manifest import build_key, manifest_path, read_manifest

    man = read_manifest(cache, dataset, pipeline)
    key = checkpoint_key(family, cfg, man, subjects)
    meta = {"family": family, "config": cfg, "key": key, "subjects": subjects, "best_step": best_step,
            "build": {"manifest": str(manifest_path(cache, dataset, pipeline)),
                      "key": build_key(man, ("clips", "labels"), subjects)}}
    from rppg_prep.store import atomic_write

    path = Path(out) / f"{family}-{key[:12]}.pt"
    with atomic_write(path) as tmp:
        torch.save({"state_dict": model.state_dict(), **meta}, tmp)
    return path


def fit_cnn3d(cache: str | Path, dataset: str = "synthetic", pipeline: str = "synthetic", *, steps: int = 200,
              batch: int = 32, lr: float = 1e-3, seed: int = 0, device: str = "auto", out: str | Path | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Train Bousefsaf's 3D-CNN on a build of its synthetic videos (``rppg-prep build synthetic``).

    ``fit("cnn3d", ...)`` without mixed precision, on the batches of
    :func:`rppg_models.cnn3d.synthetic_build_batches` (the stored videos, each of its subject's HR
    class, plus noise videos drawn on the fly), with the checkpoint recording this function's settings.

    Parameters
    ----------
    cache : str or Path
        Store root holding the synthetic build.
    dataset, pipeline : str
        The build (default: ``synthetic``).
    steps : int
        Optimiser steps.
    batch : int
        Videos per step.
    lr : float
        Adam learning rate (Keras' default 1e-3, as in the paper).
    seed : int
    device : str
        As :func:`pick_device`.
    out : str or Path, optional
        Folder of the checkpoint; None saves none.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``losses``, ``accuracy`` (on the training clips, last 10 % of steps), ``clips_per_s``,
        ``device``, and with ``out`` the ``checkpoint`` path (family ``"cnn3d"``).

    Raises
    ------
    ValueError
        If the build's clips are not 60 frames of 25x25 (build it with ``pipelines/synthetic.yaml``).
    """
    # float32 as the reference; the checkpoint keeps recording these four settings so earlier keys still match
    res = fit("cnn3d", cache, dataset, pipeline, TrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, amp="off"),
              device=device, progress=progress)
    last = res["train_metric"][-max(1, steps // 10):]
    result: dict[str, Any] = {"losses": res["losses"], "accuracy": float(np.mean(last)), "device": res["device"],
                              "clips_per_s": res["clips_per_s"], "model": res["model"]}
    if out is not None:
        from rppg_prep import open_build

        cfg = {"steps": steps, "batch": batch, "lr": lr, "seed": seed}
        result["checkpoint"] = _checkpoint(res["model"], "cnn3d", cfg, cache, dataset, pipeline,
                                           list(open_build(cache, dataset, pipeline)), out)
    return result


def finetune_cnn3d(model: torch.nn.Module, cache: str | Path, dataset: str, pipeline: str, *,
                   subjects: list[str] | None = None, val_subjects: list[str] | None = None, steps: int = 300,
                   batch: int = 32, lr: float = 1e-4, seed: int = 0, val_every: int = 50,
                   hr_label: str = "beats", device: str = "auto", out: str | Path | None = None,
                   pretrain: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune a (synthetically pre-trained) 3D-CNN on the real clips of a build: an explicit deviation.

    Bousefsaf et al. (2019) train on synthetic pseudo-PPG videos alone, and that stays the default
    (:func:`fit_cnn3d`). This optional second step draws, per sample, a random training clip, a random
    60-frame window of it and a random 25x25 patch of its green channel (/ 255, minus the window's
    mean, as :func:`rppg_models.cnn3d.predict_map` reads a video) and takes an Adam step on the
    cross-entropy against the HR class of the clip's label HR (``clip_hr_beats_bpm`` by default).
    With ``val_subjects`` the model is scored every ``val_every`` steps by the clip HR MAE on them
    (:func:`cnn3d_clip_hr`, the way it is evaluated; a clip called noise scores as the training mean
    HR would), starting with the model as given (step 0), and
    the best state is kept: fine-tuning can leave the pre-trained model as it was, never make it
    worse on validation.

    Parameters
    ----------
    model : torch.nn.Module
        A :class:`rppg_models.cnn3d.Cnn3d` (e.g. ``fit_cnn3d(...)["model"]``); trained in place.
    cache : str or Path
        Store root holding the real build.
    dataset, pipeline : str
        The real build (64-px clips of >= 60 frames).
    subjects, val_subjects : list of str, optional
        Training subjects (default every subject not validated on) and validation subjects.
    steps, batch, lr, seed : int, int, float, int
        Adam steps, patches per step, learning rate, seed.
    val_every : int
        Validate every this many steps.
    hr_label : {"beats", "welch"}
        The clip HR label (:func:`rppg_models.data.hr_label_array`).
    device : str
        As :func:`pick_device`.
    out : str or Path, optional
        Folder of the checkpoint (family ``"cnn3d"``, config with ``finetune`` and ``pretrain``).
    pretrain : dict, optional
        The pre-training settings, recorded in the checkpoint's config.

    Returns
    -------
    dict
        ``losses``, ``best_step`` (0 = the model as given), ``val`` (step, hr_mae), ``model``
        (eval mode), ``device``, ``clips_per_s`` and with ``out`` the ``checkpoint``.

    Raises
    ------
    KeyError
        A subject is not in the build.
    ValueError
        No training clip has a finite HR label, or clips are shorter than 60 frames or 25 px.
    """
    from rppg_models import cnn3d
    from rppg_models.data import hr_label_array
    from rppg_prep import open_build

    build = open_build(cache, dataset, pipeline)
    val_subjects = list(val_subjects or [])
    subjects = list(subjects or [s for s in build if s not in val_subjects])
    missing = [s for s in subjects + val_subjects if s not in build]
    if missing:
        raise KeyError(f"subject(s) {missing} not in build {pipeline!r}; built: {', '.join(build)}")
    greens, classes, hrs = [], [], []
    for sid in subjects:
        clips = build[sid]["clips"]["clips"]
        if clips.shape[1] < cnn3d.LENGTH or min(clips.shape[2:4]) < cnn3d.PATCH:
            raise ValueError(f"{sid}: clips are {clips.shape[1:4]}, the 3D-CNN needs >= (60, 25, 25)")
        hr = hr_label_array(build[sid]["labels"], "clip_", hr_label)
        ok = np.isfinite(hr)
        greens.append(np.asarray(clips[...])[ok][..., 1])  # (n, L, H, W) uint8
        classes.append(cnn3d.bpm_to_class(hr[ok].astype(np.float64)))
        hrs.append(hr[ok])
    g_all, y_all = np.concatenate(greens), np.concatenate(classes)
    if not len(g_all):
        raise ValueError(f"no clip of {subjects} has a finite {hr_label} HR label")
    fallback_bpm = float(np.mean(np.concatenate(hrs)))
    val = [(np.asarray(build[s]["clips"]["clips"][k]), float(h)) for s in val_subjects
           for k, h in enumerate(hr_label_array(build[s]["labels"], "clip_", hr_label)) if np.isfinite(h)]
    dev = pick_device(device)
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    model = model.to(dev)

    def check(model: torch.nn.Module) -> dict[str, Any]:
        model.eval()
        pred = np.array([cnn3d.clip_hr(model, clip) for clip, _ in val])
        ref = np.array([r for _, r in val])
        model.train()
        # a "noise" verdict scores as the training mean HR would: never better than guessing
        return {"hr_mae": float(np.mean(np.abs(np.where(pred > 0, pred, fallback_bpm) - ref)))}

    cfg = TrainConfig(steps=steps, batch=batch, lr=lr, seed=seed, amp="off", val_every=val_every, select="hr_mae")
    res = _train(model, cnn3d.FAMILY, cnn3d.patch_batches(g_all, y_all, batch, rng, dev), cfg, dev, "cnn3d",
                 validate=check if val else None, validate_first=True, progress=False)
    # step first, as the validation records benchmarks/train_eval.py writes have always been
    val_log = [{"step": r["step"], "hr_mae": r["hr_mae"]} for r in res["val"]]
    result: dict[str, Any] = {"losses": res["losses"], "best_step": res["best_step"], "val": val_log,
                              "model": model, "device": str(dev), "clips_per_s": res["clips_per_s"]}
    if out is not None:
        settings = {"pretrain": pretrain or {}, "finetune": {"steps": steps, "batch": batch, "lr": lr, "seed": seed,
                                                            "hr_label": hr_label, "val_subjects": val_subjects}}
        result["checkpoint"] = _checkpoint(model, "cnn3d", settings, cache, dataset, pipeline, subjects, out,
                                           best_step=res["best_step"])
    return result
