"""Evaluate a trained family on a build: HR from the predicted BVP, then MAE, RMSE, MAPE, Pearson r, SNR.

Protocol (one HR per clip): the model predicts the whole stored clip in windows of its own length
(``Family.frames``: Meta-rPPG 60, IENet 128, STGNet 160 frames, or the ``frames`` it was trained
with), placed every ``frames`` frames with the last one ending at the clip's end; each window's
prediction is z-scored and overlaps are averaged. The predicted HR is the Welch peak
(:func:`rppg_prep.protocols.hr_from_bvp`, ``protocol="welch"``, 0.1-bpm grid, parabolic
refinement, 42-210 bpm) of that BVP resampled onto an even grid over the clip's frame clock
(``labels/t_s``). The reference HR of the clip (``hr_label``) is the labels node's beat-based HR
(default), or the Welch peak of the label BVP computed exactly as the prediction's. SNR is the
rPPG-Toolbox SNR of the prediction at the reference HR (:func:`rppg_prep.protocols.snr_toolbox`),
and ``bvp_r`` the Pearson r between the predicted and the label BVP of the clip. Metrics and their
standard errors are :func:`rppg_prep.protocols.metrics` (rPPG-Toolbox definitions).

Bousefsaf's 3D-CNN predicts no BVP: its HR per clip is the reduced HR map of
:func:`rppg_models.cnn3d.clip_hr` (its record's ``clip_hr``), compared with the same reference HR.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ClipScore", "load_checkpoint", "predict_bvp", "predict_clip", "evaluate_checkpoint"]

#: HR search band of the evaluation, Hz (42-210 bpm, as the labels)
BAND_HZ = (0.7, 3.5)


@dataclass(frozen=True)
class ClipScore:
    """The score of one clip.

    Parameters
    ----------
    subject : str
    clip : int
        Clip number within the subject.
    hr_ref_bpm : float
        Reference HR, bpm (the labels node's ``hr_label`` HR of the clip).
    hr_pred_bpm : float
        Predicted HR, bpm.
    snr_db : float
        SNR of the prediction at the reference HR, dB.
    bvp_r : float
        Pearson r between the predicted and the label BVP of the clip (NaN for the 3D-CNN).
    """

    subject: str
    clip: int
    hr_ref_bpm: float
    hr_pred_bpm: float
    snr_db: float
    bvp_r: float = float("nan")


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model a checkpoint of :func:`rppg_models.train.fit` (or ``fit_cnn3d``) holds.

    Parameters
    ----------
    path : str or Path
        The ``.pt`` checkpoint.
    device : str or torch.device

    Returns
    -------
    model : torch.nn.Module
        In eval mode on ``device``.
    meta : dict
        ``family``, ``config``, ``build``, ``subjects``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file holds objects other than tensors and plain data (it could run code when unpickled).
    KeyError
        The checkpoint's family is unknown.
    """
    import pickle

    from rppg_models.families import family

    try:  # weights_only: a checkpoint is data (tensors, dicts, lists, strings); a pickle that runs code is refused
        ckpt = torch.load(Path(path), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        import re

        found = re.search(r"GLOBAL (\S+)", str(exc))  # torch names the first global it refused
        what = f" (it refers to {found.group(1)})" if found else ""
        raise ValueError(f"{path}: not a checkpoint of rppg-prep's training layer: it holds objects other than "
                         f"tensors and plain data{what}, so it is not loaded") from None
    # a checkpoint of a 3D-CNN entry point records no input size: its family's build takes None
    cfg = ckpt.get("config", {})
    model = family(ckpt["family"]).build(frames=cfg.get("frames"), size_px=cfg.get("size_px"))
    model.load_state_dict(ckpt["state_dict"])
    meta = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(device).eval(), meta


def predict_bvp(family: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Predicted pulse signal of a batch in the family's layout (:meth:`rppg_models.families.Family.predict_bvp`).

    STGNet: its BVP head. IENet: the fused rPPG. Meta-rPPG: the expected ordinal level
    ``sum_k P(level > k)`` per frame (the ordinal head's mean), a PPG shape up to scale.

    Parameters
    ----------
    family : str
        A key of :data:`rppg_models.families.REGISTRY` whose record has a ``to_bvp``
        (:data:`rppg_models.train.FAMILIES`).
    model : torch.nn.Module
    x : torch.Tensor
        A batch of clips in the family's layout (:attr:`rppg_models.families.Family.layout`).

    Returns
    -------
    torch.Tensor, shape (B, T)

    Raises
    ------
    KeyError
        An unknown family, or one that predicts no BVP (the 3D-CNN).
    """
    from rppg_models.families import family as record

    fam = record(family)
    if fam.to_bvp is None:
        raise KeyError(f"family {family!r} predicts no BVP")
    return fam.predict_bvp(model, x)


def predict_clip(family: str, model: torch.nn.Module, x: torch.Tensor, frames: int, t_axis: int) -> torch.Tensor:
    """Predicted BVP over whole clips ``x`` from windows of ``frames``.

    Windows start every ``frames`` frames, plus one ending at L when L is not a multiple; each
    window's prediction is z-scored (families differ in scale and offset) and overlaps averaged.

    Parameters
    ----------
    family : str
        As :func:`predict_bvp`.
    model : torch.nn.Module
    x : torch.Tensor
        Clips with L frames on ``t_axis``.
    frames : int
        Window length the model takes.
    t_axis : int
        The frame axis of ``x``.

    Returns
    -------
    torch.Tensor, shape (B, L), float32, on the CPU

    Raises
    ------
    ValueError
        Clips shorter than ``frames``.
    """
    length = x.shape[t_axis]
    if length < frames:
        raise ValueError(f"clips of {length} frames are shorter than the {frames} the model takes")
    starts = list(range(0, length - frames + 1, frames))
    if starts[-1] + frames < length:
        starts.append(length - frames)
    out = torch.zeros(x.shape[0], length)
    count = torch.zeros(length)
    for a in starts:
        p = predict_bvp(family, model, x.narrow(t_axis, a, frames)).float().cpu()
        out[:, a:a + frames] += (p - p.mean(1, keepdim=True)) / (p.std(1, keepdim=True) + 1e-8)
        count[a:a + frames] += 1
    return out / count


def hr_on_clock(bvp: np.ndarray, t_s: np.ndarray, band_hz=BAND_HZ) -> tuple[float, np.ndarray, float]:
    """HR (bpm, Welch peak) of a per-frame signal on a possibly uneven frame clock.

    The signal is resampled linearly onto an even grid at its mean frame rate over ``t_s`` first,
    as the labels' HR is, so lost or irregular frames do not scale the HR.

    Parameters
    ----------
    bvp : ndarray of float, shape (L,)
        One value per frame (any unit).
    t_s : ndarray of float, shape (L,)
        The frames' times in s, strictly increasing (``labels/t_s`` of the clip).
    band_hz : (float, float)
        HR search band, Hz.

    Returns
    -------
    hr_bpm : float
        :func:`rppg_prep.protocols.hr_from_bvp` (``protocol="welch"``) of the even signal.
    x_even : ndarray of float64, shape (M,)
        The signal on the even grid.
    fs_hz : float
        The grid's rate, (L - 1) / duration.

    Raises
    ------
    ValueError
        ``t_s`` not strictly increasing or of another length than ``bvp``.
    """
    from rppg_prep.protocols import hr_from_bvp
    from rppg_prep.pulse import resample_even

    t = np.asarray(t_s, dtype=np.float64)
    fs = (t.size - 1) / (t[-1] - t[0])
    _, x = resample_even(t, np.asarray(bvp, dtype=np.float64), fs)
    return hr_from_bvp(x, fs, protocol="welch", band_hz=band_hz), x, fs


def evaluate_checkpoint(checkpoint: str | Path, cache: str | Path, dataset: str, pipeline: str, *,
                        subjects: list[str] | None = None, device: str = "auto", adapt_steps: int = 0,
                        batch: int = 8, max_clips: int | None = None,
                        hr_label: str | None = None,
                        bvp_out: dict[tuple[str, int], np.ndarray] | None = None) -> tuple[list[ClipScore], Any]:
    """Score a checkpoint on every clip of a build.

    Parameters
    ----------
    checkpoint : str or Path
        From ``rppg-prep train`` (stgnet, meta-rppg, ienet, cnn3d).
    cache, dataset, pipeline
        The build to evaluate on (usually other subjects than the model was trained on).
    subjects : list of str, optional
        Default: every subject of the build.
    device : {"auto", "cpu", "cuda"}
    adapt_steps : int
        Meta-rPPG only: transductive adaptation steps (:func:`rppg_models.meta_rppg.adapt`) on each
        subject's unlabelled clips before predicting them (0 = none); a fresh copy per subject.
    batch : int
        Clips per forward pass.
    max_clips : int, optional
        Score only the first ``max_clips`` clips of each subject (a quick look; default all).
    hr_label : {"beats", "welch"}, optional
        The reference HR of a clip: the labels node's beat-based HR (default, closer to the
        oximeter) or its Welch HR (:data:`rppg_models.data.HR_LABELS`).
    bvp_out : dict, optional
        Filled with ``(subject, clip) -> predicted BVP`` (float32, one value per frame of the clip)
        for the families that predict one, e.g. for the whole-video protocol
        (:func:`rppg_models.folds.overlap_average`).

    Returns
    -------
    scores : list of ClipScore
    summary : rppg_prep.protocols.Metrics
        Over the clips with a finite reference and prediction.

    Raises
    ------
    ValueError
        Fewer than 2 clips could be scored.
    """
    from rppg_models.data import DEFAULT_HR_LABEL, ClipDataset
    from rppg_models.families import family as record
    from rppg_models.train import pick_device
    from rppg_prep import open_build
    from rppg_prep.protocols import metrics, snr_toolbox

    hr_label = hr_label or DEFAULT_HR_LABEL
    dev = pick_device(device)
    model, meta = load_checkpoint(checkpoint, dev)
    family = meta["family"]
    fam = record(family)
    cfg = meta.get("config", {})
    norm, frames = cfg.get("norm") or fam.norm, cfg.get("frames") or fam.frames
    cache = Path(cache)
    scores: list[ClipScore] = []
    build = open_build(cache, dataset, pipeline)
    for sid in subjects or list(build):
        lab = build[sid]["labels"]
        t_frames = lab["t_s"][:] if "t_s" in lab else build[sid]["decode"]["t_s"][:]
        windows = build[sid]["clips"]["window"][:]
        ds = ClipDataset(cache, dataset, pipeline, subjects=[sid], norm=norm, layout=fam.layout,
                         size_px=cfg.get("size_px"), hr_label=hr_label)
        if len(ds) == 0:
            continue
        net = model
        items = [ds[i] for i in range(min(len(ds), max_clips or len(ds)))]
        if fam.adapt is not None and adapt_steps > 0:
            net = copy.deepcopy(model)
            fam.adapt(net, torch.stack([it[0] for it in items]).narrow(fam.t_axis, 0, fam.frames).to(dev), adapt_steps)
            net.eval()
        for a in range(0, len(items), batch):
            chunk = items[a:a + batch]
            ks = [int(it[3][1]) for it in chunk]
            clocks = [t_frames[windows[k, 0]:windows[k, 1]] for k in ks]
            if hr_label == "welch":  # the label's Welch HR computed exactly as the prediction's
                hr_ref = [hr_on_clock(it[1].numpy(), t)[0] for it, t in zip(chunk, clocks)]
            else:  # the dataset item carries the clip's label HR (ClipDataset's hr_label)
                hr_ref = [float(it[2]) for it in chunk]
            if fam.to_bvp is None:  # one HR per clip from the stored clip itself (the 3D-CNN)
                clips = build[sid]["clips"]["clips"]
                preds = [fam.clip_hr(net, np.asarray(clips[k])) for k in ks]
                snrs = [float("nan")] * len(chunk)
                rs = [float("nan")] * len(chunk)
            else:
                x = torch.stack([it[0] for it in chunk]).to(dev)
                with torch.no_grad():
                    out = predict_clip(family, net, x, frames, fam.t_axis).numpy()
                preds, snrs, rs = [], [], []
                for p, it, h, t, k in zip(out, chunk, hr_ref, clocks, ks):
                    if bvp_out is not None:
                        bvp_out[(sid, k)] = p.astype(np.float32)
                    hr_p, p_even, fs = hr_on_clock(p, t)
                    preds.append(hr_p)
                    snrs.append(snr_toolbox(p_even, fs, h, band_hz=BAND_HZ) if np.isfinite(h) else float("nan"))
                    rs.append(float(np.corrcoef(p, it[1].numpy())[0, 1]))
            for k, h, p, sn, r in zip(ks, hr_ref, preds, snrs, rs):
                p = float(p) if p is not None and p > 0 else float("nan")
                scores.append(ClipScore(sid, k, h, p, float(sn), r))
    summary = metrics([s.hr_pred_bpm for s in scores], [s.hr_ref_bpm for s in scores],
                      [s.snr_db for s in scores] if fam.to_bvp is not None else None)
    return scores, summary
