"""ST2S-rPPG end to end on a build: stage-1 CNN (leave one subject out), predictions and split nodes,
stage-2 classifier, HR per segment.

Kateri et al., "ST2S-rPPG: A Spatiotemporal Two-Stage Learning Approach for Pulse Estimation Using
Video", PMLR 259:550-562 (2025). The steps the release leaves unwired are joined here:

1. :func:`train_stage1` trains one CNN per held-out subject on the other subjects' ST images (label:
   the ST segment's HR from the ``labels`` node) and saves them as a checkpoint keyed by the build's
   ST and label nodes, the training config and this module's version.
2. :func:`write_split` writes, per subject, an ``st2s_pred`` node (the held-out fold's prediction per
   ST image) and a ``split`` node (the MAE rule, :mod:`rppg_prep.stages.split`). Both keys include the
   checkpoint key, so retraining re-runs them and no other stage.
3. :func:`stage2` trains the HOG + MLP classifier on the other subjects' good/bad labels and, for the
   held-out subject, averages the stage-1 predictions over the images it keeps (all, flagged, if
   it keeps none), per segment; it returns stage-1-only and two-stage HR per segment.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rppg_models import st2s
from rppg_prep import open_build
from rppg_prep.stage import canonical_json, node_key, node_provenance
from rppg_prep.stages.split import PRED_STAGE, STAGE as SPLIT_STAGE, PredParams, SplitParams, good_bad
from rppg_prep.manifest import build_key, manifest_path, read_manifest, record_nodes
from rppg_prep.store import NodeWriter, atomic_write, node_exists, node_path, open_node

__all__ = ["Stage1Config", "Stage2Config", "train_stage1", "write_split", "stage2", "load_subject"]

VERSION = "1"


@dataclass(frozen=True, kw_only=True)
class Stage1Config:
    """Stage-1 training settings (they enter the checkpoint key).

    Parameters
    ----------
    epochs : int
        Epochs per leave-one-subject-out fold.
    lr : float
        Adam learning rate.
    batch : int
        ST images per step.
    seed : int
    hr_label : {"beats", "welch"}
        Label HR of a segment: the median of the contact PPG's beats, or its Welch peak.
    """

    epochs: int = 15
    lr: float = 1e-3
    batch: int = 32
    seed: int = 0
    hr_label: str = "beats"  #: label HR of a segment: "beats" (median of the beats) or "welch"


@dataclass(frozen=True, kw_only=True)
class Stage2Config:
    """Stage-2 training settings.

    Parameters
    ----------
    epochs : int
        Epochs of the good/bad classifier per fold.
    lr : float
        SGD learning rate (1e-2: at the reference's 1e-3 SGD barely moves in tens of epochs).
    hr_label : {"beats", "welch"}
        Must match the stage-1 config's.
    seed : int
    """

    epochs: int = 30
    lr: float = 1e-2
    hr_label: str = "beats"  #: must match the stage-1 config's
    seed: int = 0


@dataclass
class SubjectData:
    """One subject's ST images as the models read them."""

    subject: str
    images: torch.Tensor  # (N, 3, 64, 64) float32 in [0, 1]
    hog: np.ndarray  # (N, 34020) float32
    label_bpm: np.ndarray  # (N,) float32: the segment's HR
    segment: np.ndarray  # (N,) int64
    shape: tuple[int, int]  # (S, R): segments x strips
    hr_label: str = "beats"  # which HR of the labels node label_bpm holds


def load_subject(sid: str, nodes: dict[str, Any], hr_label: str = "beats") -> SubjectData:
    """Read a subject's ST images segment by segment (full-size images never all in memory).

    Parameters
    ----------
    sid : str
        Subject id.
    nodes : dict
        The subject's nodes (``open_build(...)[sid]``): ``st_map`` and ``labels``.
    hr_label : {"beats", "welch"}
        Which segment HR of the labels node (:func:`rppg_models.data.hr_label_array`).

    Returns
    -------
    SubjectData
        (N, 3, 64, 64) float32 images, (N, 34020) HOG features, the label HR (bpm) and segment of each.

    Raises
    ------
    ValueError
        Another ``hr_label``.
    """
    from rppg_models.data import hr_label_array

    imgs = nodes["st_map"]["images"]
    s_count, r_count = imgs.shape[:2]
    labels = hr_label_array(nodes["labels"], "st_", hr_label)
    tens, hogs = [], []
    for s in range(s_count):
        seg = np.asarray(imgs[s])
        tens.append(st2s.st_to_tensor(seg))
        hogs.append(st2s.hog_features(seg))
    return SubjectData(
        subject=sid,
        images=torch.cat(tens) if tens else torch.zeros((0, 3, 64, 64)),
        hog=np.concatenate(hogs) if hogs else np.zeros((0, st2s.HOG_LENGTH), np.float32),
        label_bpm=np.repeat(labels.astype(np.float32), r_count),
        segment=np.repeat(np.arange(s_count), r_count),
        shape=(s_count, r_count),
        hr_label=hr_label,
    )


def _build_key(man: dict[str, Any]) -> str:
    return build_key(man, ("st_map", "labels"))


def checkpoint_key(man: dict[str, Any], cfg: Stage1Config) -> str:
    """Key of a stage-1 checkpoint: the build's ST and label nodes, the config, this module's version."""
    payload = {"build": _build_key(man), "config": cfg, "version": VERSION, "model": "st2s-cnn"}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def train_stage1(cache: str | Path, dataset: str, pipeline: str, cfg: Stage1Config = Stage1Config(), *,
                 data: dict[str, SubjectData] | None = None, device: str = "cpu",
                 progress=None) -> tuple[str, Path]:
    """Train (or reuse) the leave-one-subject-out stage-1 CNNs of a build.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The build.
    cfg : Stage1Config
    data : dict of str to SubjectData, optional
        Already loaded ST images (:func:`load_subject`); read from the build otherwise.
    device : str
        Torch device.
    progress : callable (done, total), optional
        Called after each fold.

    Returns
    -------
    key : str
        Checkpoint key (sha256 hex).
    path : Path
        ``cache/models/st2s-cnn-<key12>/``: ``fold-<subject>.pt`` state dicts and ``meta.json``.

    Raises
    ------
    StoreError
        No such build. ValueError: fewer than 2 subjects with ST images.
    """
    man = read_manifest(cache, dataset, pipeline)
    key = checkpoint_key(man, cfg)
    final = Path(cache) / "models" / f"st2s-cnn-{key[:12]}"
    if (final / "meta.json").exists():
        return key, final
    data = data or {sid: load_subject(sid, nodes, cfg.hr_label)
                    for sid, nodes in open_build(cache, dataset, pipeline).items()}
    if any(d.hr_label != cfg.hr_label for d in data.values()):
        raise ValueError(f"ST images were loaded with another HR label than the config's {cfg.hr_label!r}")
    subjects = [s for s, d in data.items() if len(d.label_bpm)]
    if len(subjects) < 2:
        raise ValueError(f"leave-one-subject-out needs >= 2 subjects with ST images, got {subjects}")
    with atomic_write(final, complete=lambda p: (p / "meta.json").exists()) as tmp:
        tmp.mkdir()
        for i, held in enumerate(subjects):
            train = [data[s] for s in subjects if s != held]
            x = torch.cat([d.images for d in train])
            y = np.concatenate([d.label_bpm for d in train])
            ok = np.isfinite(y)
            model = st2s.fit_regressor(x[torch.as_tensor(ok)], y[ok], epochs=cfg.epochs, lr=cfg.lr,
                                       batch=cfg.batch, seed=cfg.seed, device=device)
            torch.save(model.state_dict(), tmp / f"fold-{held}.pt")
            if progress:
                progress(i + 1, len(subjects))
        meta = {"key": key, "model": "st2s-cnn", "config": json.loads(canonical_json(cfg)), "version": VERSION,
                "build": {"cache": str(cache), "dataset": dataset, "pipeline": pipeline,
                          "manifest": str(manifest_path(cache, dataset, pipeline)), "key": _build_key(man)},
                "subjects": subjects, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return key, final


def _load_fold(path: Path, subject: str) -> st2s.St2sCnn:
    model = st2s.St2sCnn()
    model.load_state_dict(torch.load(path / f"fold-{subject}.pt", map_location="cpu", weights_only=True))
    return model.eval()


def write_split(cache: str | Path, dataset: str, pipeline: str, ckpt_key: str, ckpt_path: Path,
                threshold_bpm: float, *, data: dict[str, SubjectData] | None = None,
                hr_label: str = "beats") -> dict[str, dict[str, str]]:
    """Write the ``st2s_pred`` and ``split`` nodes of every subject that has a fold model.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The build.
    ckpt_key : str
        The stage-1 checkpoint key (enters the node keys).
    ckpt_path : Path
        The checkpoint folder of :func:`train_stage1`.
    threshold_bpm : float
        An ST image whose stage-1 error exceeds this is bad.
    data : dict of str to SubjectData, optional
        Already loaded ST images.
    hr_label : {"beats", "welch"}
        The label HR the error is measured against.

    Returns
    -------
    dict
        subject -> {"st2s_pred": key, "split": key}; the manifest records them too (so ``gc`` keeps them).
    """
    man = read_manifest(cache, dataset, pipeline)
    build = open_build(cache, dataset, pipeline)
    from rppg_models.data import hr_label_array

    params = SplitParams(threshold_bpm=threshold_bpm, hr_label=hr_label)
    out: dict[str, dict[str, str]] = {}
    derived: dict[str, dict[str, dict]] = {}
    for sid in json.loads((ckpt_path / "meta.json").read_text())["subjects"]:
        nodes, rec = build[sid], man["subjects"][sid]["nodes"]
        up = {"st_map": rec["st_map"]["key"], "labels": rec["labels"]["key"]}
        pkey = node_key(PRED_STAGE, PredParams(), up, {"checkpoint": ckpt_key})
        ppath = node_path(cache, dataset, sid, "st2s_pred", pkey)
        if not node_exists(ppath):
            d = data[sid] if data else load_subject(sid, nodes, hr_label)
            pred = st2s.predict_hr(_load_fold(ckpt_path, sid), d.images).reshape(d.shape)
            attrs = node_provenance(PRED_STAGE, pkey, PredParams(), up, subject=sid, dataset=dataset,
                                    fingerprints={"checkpoint": ckpt_key})
            with NodeWriter(ppath, attrs) as w:
                w.write("hr_bpm", pred.astype(np.float32), chunks=pred.shape or (1,), unit="bpm",
                        axes=("segment", "strip"))
        skey = node_key(SPLIT_STAGE, params, {"st2s_pred": pkey, "labels": up["labels"]}, {})
        spath = node_path(cache, dataset, sid, "split", skey)
        if not node_exists(spath):
            pred = open_node(ppath)["hr_bpm"][:]
            bad, err = good_bad(pred, hr_label_array(nodes["labels"], "st_", hr_label), threshold_bpm)
            attrs = node_provenance(SPLIT_STAGE, skey, params, {"st2s_pred": pkey, "labels": up["labels"]},
                                    subject=sid, dataset=dataset)
            with NodeWriter(spath, attrs) as w:
                w.write("bad", bad, chunks=bad.shape or (1,), axes=("segment", "strip"))
                w.write("abs_error_bpm", err, chunks=err.shape or (1,), unit="bpm", axes=("segment", "strip"))
        out[sid] = {"st2s_pred": pkey, "split": skey}
        derived[sid] = {"st2s_pred": {"key": pkey, "inputs": up},
                        "split": {"key": skey, "inputs": {"st2s_pred": pkey, "labels": up["labels"]}}}
    record_nodes(cache, dataset, pipeline, derived)
    return out


def stage2(cache: str | Path, dataset: str, pipeline: str, split_keys: dict[str, dict[str, str]],
           cfg: Stage2Config = Stage2Config(), *, data: dict[str, SubjectData] | None = None,
           device: str = "cpu") -> dict[str, dict[str, np.ndarray]]:
    """Leave-one-subject-out stage 2: per held-out subject, HR per segment from stage 1 alone and gated.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The build.
    split_keys : dict
        subject -> {"st2s_pred": key, "split": key}, from :func:`write_split`.
    cfg : Stage2Config
    data : dict of str to SubjectData, optional
        Already loaded ST images.
    device : str
        Torch device.

    Returns
    -------
    dict
        subject -> {"label_bpm" (S,), "stage1_bpm" (S,), "two_stage_bpm" (S,), "fallback" (S,) bool,
        "keep_fraction" float}.
    """
    build = open_build(cache, dataset, pipeline)
    data = data or {sid: load_subject(sid, build[sid], cfg.hr_label) for sid in split_keys}
    preds, bads = {}, {}
    for sid, keys in split_keys.items():
        preds[sid] = open_node(node_path(cache, dataset, sid, "st2s_pred", keys["st2s_pred"]))["hr_bpm"][:].ravel()
        bads[sid] = open_node(node_path(cache, dataset, sid, "split", keys["split"]))["bad"][:].ravel()
    out = {}
    for held in split_keys:
        others = [s for s in split_keys if s != held]
        feats = np.concatenate([data[s].hog for s in others])
        labels = np.concatenate([bads[s] for s in others])
        d = data[held]
        if len(np.unique(labels)) < 2:  # one class only: nothing to learn, keep everything
            keep = np.ones(len(d.segment), bool)
        else:
            clf = st2s.fit_classifier(feats, labels, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, device=device)
            keep = st2s.predict_keep(clf, d.hog)
        s1, _ = st2s.segment_hr(preds[held], np.ones_like(keep), d.segment)
        s2, fallback = st2s.segment_hr(preds[held], keep, d.segment)
        seg_label = d.label_bpm.reshape(d.shape)[:, 0] if d.shape[0] else np.zeros(0)
        out[held] = {"label_bpm": seg_label, "stage1_bpm": s1, "two_stage_bpm": s2, "fallback": fallback,
                     "keep_fraction": float(keep.mean()) if len(keep) else float("nan")}
    return out
