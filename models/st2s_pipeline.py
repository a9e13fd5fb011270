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

:func:`evaluate_split` runs both stages on one subject-disjoint train / validation / test split
(model selection on validation only) and returns the scores as a JSON-able dict.

Stage 1 reads the time-preserving layout by default (``Stage1Config(layout="time")``); the
paper's 64x64 image is ``layout="paper"`` (:mod:`rppg_models.st2s` explains why).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
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
from rppg_prep.store import NodeWriter, atomic_write, holding_build_lock, node_exists, node_path, open_node

__all__ = ["Stage1Config", "Stage2Config", "train_stage1", "write_split", "stage2", "load_subject",
           "evaluate_split"]

VERSION = "2"  # 2: input layouts, strip_step, bias_init


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
    layout : {"time", "paper"}
        Input layout (:func:`rppg_models.st2s.st_to_tensor`): "time" (default, not the paper's)
        keeps one column per frame with each face row normalised over time; "paper" is the
        paper's 64x64 area-resized image.
    strip_step : int
        Train on every ``strip_step``-th of a segment's 29 strips (1 = all, as in the paper); the
        strips 3 px apart carry nearly the same pulse, so 4 costs a quarter. Predictions always
        cover every strip.
    bias_init : bool
        Start the CNN's output bias at the training labels' mean HR (not in the paper).
    """

    epochs: int = 15
    lr: float = 1e-3
    batch: int = 32
    seed: int = 0
    hr_label: str = "beats"  #: label HR of a segment: "beats" (median of the beats) or "welch"
    layout: str = "time"  #: "time" (one column per frame, rows normalised) or "paper" (64x64)
    strip_step: int = 1  #: train on every n-th strip (1: all, the paper's)
    bias_init: bool = False  #: output bias starts at the mean training HR (not the paper's)

    def __post_init__(self) -> None:
        if self.layout not in st2s.LAYOUTS or self.strip_step < 1 or self.epochs < 1:
            raise ValueError(f"invalid stage-1 config {self}")


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
    strip_step : int
        Train the classifier on every ``strip_step``-th strip (1 = all, as in the paper).
    """

    epochs: int = 30
    lr: float = 1e-2
    hr_label: str = "beats"  #: must match the stage-1 config's
    seed: int = 0
    strip_step: int = 1  #: train on every n-th strip (1: all, the paper's)


@dataclass
class SubjectData:
    """One subject's ST images as the models read them."""

    subject: str
    images: torch.Tensor  # (N, 3, 64, 300) float32 ("time") or (N, 3, 64, 64) in [0, 1] ("paper")
    hog: np.ndarray  # (N, 34020) float32
    label_bpm: np.ndarray  # (N,) float32: the segment's HR
    segment: np.ndarray  # (N,) int64
    shape: tuple[int, int]  # (S, R): segments x strips
    hr_label: str = "beats"  # which HR of the labels node label_bpm holds
    layout: str = "time"  # the stage-1 input layout of images

    def strips(self, step: int) -> np.ndarray:
        """(N,) bool: the images of every ``step``-th strip of each segment."""
        return np.arange(len(self.segment)) % max(self.shape[1], 1) % step == 0


def load_subject(sid: str, nodes: dict[str, Any], hr_label: str = "beats", layout: str = "time") -> SubjectData:
    """Read a subject's ST images segment by segment (full-size images never all in memory).

    Parameters
    ----------
    sid : str
        Subject id.
    nodes : dict
        The subject's nodes (``open_build(...)[sid]``): ``st_map`` and ``labels``.
    hr_label : {"beats", "welch"}
        Which segment HR of the labels node (:func:`rppg_models.data.hr_label_array`).
    layout : {"time", "paper"}
        Stage-1 input layout (:func:`rppg_models.st2s.st_to_tensor`).

    Returns
    -------
    SubjectData
        (N, 3, 64, 300) ("time") or (N, 3, 64, 64) ("paper") float32 images, (N, 34020) HOG
        features, the label HR (bpm) and segment of each.

    Raises
    ------
    ValueError
        Another ``hr_label`` or ``layout``.
    """
    from rppg_models.data import hr_label_array

    shape = st2s.input_shape(layout)
    imgs = nodes["st_map"]["images"]
    s_count, r_count = imgs.shape[:2]
    win = np.asarray(nodes["st_map"]["window"][:])
    strip_px = imgs.shape[3] // max(int(win[0, 1] - win[0, 0]), 1) if len(win) else 3
    labels = hr_label_array(nodes["labels"], "st_", hr_label)
    tens, hogs = [], []
    for s in range(s_count):
        seg = np.asarray(imgs[s])
        tens.append(st2s.st_to_tensor(seg, layout, strip_px=strip_px))
        hogs.append(st2s.hog_features(seg))
    return SubjectData(
        subject=sid,
        images=torch.cat(tens) if tens else torch.zeros((0, *shape)),
        hog=np.concatenate(hogs) if hogs else np.zeros((0, st2s.HOG_LENGTH), np.float32),
        label_bpm=np.repeat(labels.astype(np.float32), r_count),
        segment=np.repeat(np.arange(s_count), r_count),
        shape=(s_count, r_count),
        hr_label=hr_label,
        layout=layout,
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
    data = data or {sid: load_subject(sid, nodes, cfg.hr_label, cfg.layout)
                    for sid, nodes in open_build(cache, dataset, pipeline).items()}
    _check_loaded(data, cfg)
    subjects = [s for s, d in data.items() if len(d.label_bpm)]
    if len(subjects) < 2:
        raise ValueError(f"leave-one-subject-out needs >= 2 subjects with ST images, got {subjects}")
    with atomic_write(final, complete=lambda p: (p / "meta.json").exists()) as tmp:
        tmp.mkdir()
        for i, held in enumerate(subjects):
            model = _fit(cfg, [data[s] for s in subjects if s != held], cfg.epochs, device)
            torch.save(model.state_dict(), tmp / f"fold-{held}.pt")
            if progress:
                progress(i + 1, len(subjects))
        meta = {"key": key, "model": "st2s-cnn", "config": json.loads(canonical_json(cfg)), "version": VERSION,
                "build": {"cache": str(cache), "dataset": dataset, "pipeline": pipeline,
                          "manifest": str(manifest_path(cache, dataset, pipeline)), "key": _build_key(man)},
                "subjects": subjects, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    return key, final


def _check_loaded(data: dict[str, SubjectData], cfg: Stage1Config) -> None:
    if any(d.hr_label != cfg.hr_label for d in data.values()):
        raise ValueError(f"ST images were loaded with another HR label than the config's {cfg.hr_label!r}")
    if any(d.layout != cfg.layout for d in data.values()):
        raise ValueError(f"ST images were loaded in another layout than the config's {cfg.layout!r}")


def _fit(cfg: Stage1Config, train: list[SubjectData], epochs: int, device: str, on_epoch=None) -> st2s.St2sCnn:
    """A stage-1 CNN on every ``cfg.strip_step``-th strip of the ``train`` subjects' labelled images."""
    x = torch.cat([d.images[torch.as_tensor(d.strips(cfg.strip_step))] for d in train])
    y = np.concatenate([d.label_bpm[d.strips(cfg.strip_step)] for d in train])
    ok = np.isfinite(y)
    return st2s.fit_regressor(x[torch.as_tensor(ok)], y[ok], epochs=epochs, lr=cfg.lr, batch=cfg.batch,
                              seed=cfg.seed, device=device, bias_init=cfg.bias_init, on_epoch=on_epoch)


def _load_fold(path: Path, subject: str) -> st2s.St2sCnn:
    layout = json.loads((path / "meta.json").read_text())["config"].get("layout", "paper")
    model = st2s.St2sCnn(input_size=st2s.input_shape(layout)[1:])
    model.load_state_dict(torch.load(path / f"fold-{subject}.pt", map_location="cpu", weights_only=True))
    return model.eval()


@holding_build_lock  # its nodes are recorded only at the end: gc must not run in between
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

    Raises
    ------
    ValueError
        ``data`` loaded in another layout than the checkpoint's.
    """
    man = read_manifest(cache, dataset, pipeline)
    build = open_build(cache, dataset, pipeline)
    from rppg_models.data import hr_label_array

    params = SplitParams(threshold_bpm=threshold_bpm, hr_label=hr_label)
    out: dict[str, dict[str, str]] = {}
    derived: dict[str, dict[str, dict]] = {}
    meta = json.loads((ckpt_path / "meta.json").read_text())
    layout = meta["config"].get("layout", "paper")
    if data and any(d.layout != layout for d in data.values()):
        raise ValueError(f"ST images were loaded in another layout than the checkpoint's {layout!r}")
    for sid in meta["subjects"]:
        nodes, rec = build[sid], man["subjects"][sid]["nodes"]
        up = {"st_map": rec["st_map"]["key"], "labels": rec["labels"]["key"]}
        pkey = node_key(PRED_STAGE, PredParams(), up, {"checkpoint": ckpt_key})
        ppath = node_path(cache, dataset, sid, "st2s_pred", pkey)
        if not node_exists(ppath):
            d = data[sid] if data else load_subject(sid, nodes, hr_label, layout)
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
        feats = np.concatenate([data[s].hog[data[s].strips(cfg.strip_step)] for s in others])
        labels = np.concatenate([bads[s][data[s].strips(cfg.strip_step)] for s in others])
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


def _scores(pred, ref) -> dict[str, float]:
    """MAE, RMSE, MAPE (bpm, %) and Pearson r over the finite pairs (:func:`rppg_prep.protocols.metrics`)."""
    from rppg_prep.protocols import metrics

    pred, ref = np.asarray(pred, np.float64), np.asarray(ref, np.float64)
    n = int((np.isfinite(pred) & np.isfinite(ref)).sum())
    if n < 2:
        e = np.abs(pred - ref)[np.isfinite(pred) & np.isfinite(ref)]
        mae = float(e.mean()) if n else float("nan")
        return {"n": n, "mae": mae, "rmse": mae, "mape": float("nan"), "pearson_r": float("nan")}
    m = metrics(pred, ref)
    return {"n": m.n, "mae": m.mae, "rmse": m.rmse, "mape": m.mape, "pearson_r": m.pearson_r}


def _segments(pred: np.ndarray, keep: np.ndarray, ds: list[SubjectData]) -> tuple[np.ndarray, np.ndarray, list]:
    """Segment HR (mean over kept images, all if none kept), its label, and (subject, segment) per segment."""
    hr, ref, ids, i = [], [], [], 0
    for d in ds:
        n = len(d.segment)
        h, _ = st2s.segment_hr(pred[i:i + n], keep[i:i + n], d.segment)
        hr.append(h)
        ref.append(d.label_bpm.reshape(d.shape)[:, 0] if d.shape[0] else np.zeros(0))
        ids += [(d.subject, int(s)) for s in np.unique(d.segment)]
        i += n
    return np.concatenate(hr), np.concatenate(ref).astype(np.float64), ids


def evaluate_split(cache: str | Path, dataset: str, pipeline: str, *, train: Sequence[str], val: str | Sequence[str],
                   test: Sequence[str], seed: int = 0,
                   cfg: Stage1Config = Stage1Config(epochs=12, strip_step=4, bias_init=True),
                   stage2: Stage2Config = Stage2Config(epochs=15, strip_step=2),
                   thresholds_bpm: Sequence[float] = (5.0, 10.0, 15.0), hr_label: str = "beats",
                   epochs: int | None = None, device: str = "cpu",
                   data: dict[str, SubjectData] | None = None) -> dict[str, Any]:
    """Both ST2S stages on one subject-disjoint split; every choice made on ``val``, scored on ``test``.

    Kateri et al., "ST2S-rPPG", PMLR 259:550-562 (2025), with the time-preserving input by
    default (:mod:`rppg_models.st2s`). The steps:

    1. Stage 1: a CNN trained on the ``train`` subjects (``cfg``, seeded), scored after every
       epoch on the ``val`` subjects' segments; the epoch with the lowest validation segment MAE
       is kept (the earliest on a tie). ``test`` is never looked at before step 5.
    2. Stage-2 labels from predictions the scored CNN did not train on: the training subjects are
       cut into two halves (alternately, in the given order); a CNN trained on one half for the
       chosen number of epochs predicts the other half (two-fold out-of-fold). Their errors are a
       little larger than the full model's (trained on half the subjects).
    3. For each threshold in ``thresholds_bpm`` a HOG + MLP classifier (``stage2``) is trained on
       the training subjects' good/bad labels (|out-of-fold error| > threshold -> bad), and the
       two-stage segment MAE of the stage-1 CNN on ``val`` is measured. The threshold with the
       lowest one is chosen, unless none beats stage 1 alone on ``val``: then stage 2 keeps every
       image (two-stage = stage 1, ``threshold_bpm`` None, ``fallback`` True).
    4. The constant predictor: the mean label HR of the training segments.
    5. Scores on the ``test`` segments. A segment's HR is the mean stage-1 prediction over its ST
       images (two-stage: over the images stage 2 keeps, all of them if it keeps none).

    Parameters
    ----------
    cache : str or Path
        Store root holding the build (only read).
    dataset, pipeline : str
        The build.
    train, test : sequence of str
        Training and test subjects.
    val : str or sequence of str
        Validation subject(s).
    seed : int
        Seed of every model (overrides ``cfg.seed`` and ``stage2.seed``).
    cfg : Stage1Config
        Stage-1 recipe; the default is a CPU recipe (time layout, 12 epochs, every 4th strip for
        training, output bias at the mean HR; about 2 minutes per split on one CPU thread).
        ``Stage1Config(layout="paper", ...)`` reads the paper's 64x64 images.
    stage2 : Stage2Config
        Classifier recipe (default: 15 epochs on every 2nd strip).
    thresholds_bpm : sequence of float
        Candidate good/bad thresholds, bpm (> 0).
    hr_label : {"beats", "welch"}
        Label HR of a segment (overrides both configs').
    epochs : int, optional
        Most stage-1 epochs (overrides ``cfg.epochs``); the best one on ``val`` is kept.
    device : str
        Torch device.
    data : dict of str to SubjectData, optional
        Already loaded subjects (in ``cfg.layout`` with ``hr_label``); read from the build otherwise.

    Returns
    -------
    dict
        JSON-able. ``mae``, ``rmse``, ``mape``, ``pearson_r``, ``n``: stage 1 on the test segments
        (bpm, %, r, segments); ``val_mae`` and ``epoch``: the chosen epoch's validation segment MAE
        and the epoch, ``val_curve`` the validation MAE per epoch; ``two_stage``: {``mae``,
        ``rmse``, ``pearson_r``, ``kept_fraction`` (of the test images), ``threshold_bpm`` (None on
        fallback), ``fallback``, ``val_mae``, ``val_grid`` (threshold -> validation MAE), ``note``};
        ``constant_segments``: {``hr_bpm``, ``mae``, ``rmse``}; ``segments``: one record per test
        segment {``subject``, ``segment``, ``pred``, ``two_stage``, ``ref``} (bpm); and ``train``,
        ``val``, ``test``, ``seed``, ``config``, ``stage2_config``, ``wall_s``.

    Raises
    ------
    ValueError
        Overlapping or empty subject sets, an unknown subject, or images loaded in another layout
        or HR label.
    """
    t0 = time.time()
    val = [val] if isinstance(val, str) else list(val)
    train, test = list(train), list(test)
    if not train or not val or not test or len(set(train) | set(val) | set(test)) != len(train) + len(val) + len(test):
        raise ValueError(f"train, val and test must be non-empty and disjoint: {train}, {val}, {test}")
    if not thresholds_bpm or min(thresholds_bpm) <= 0:
        raise ValueError(f"thresholds_bpm must be non-empty and > 0, got {thresholds_bpm}")
    cfg = dataclasses.replace(cfg, seed=seed, hr_label=hr_label, epochs=epochs or cfg.epochs)
    stage2 = dataclasses.replace(stage2, seed=seed, hr_label=hr_label)
    if data is None:
        build = open_build(cache, dataset, pipeline)
        missing = [s for s in train + val + test if s not in build]
        if missing:
            raise ValueError(f"no such subject(s) in {dataset}/{pipeline}: {missing}")
        data = {s: load_subject(s, build[s], hr_label, cfg.layout) for s in train + val + test}
    _check_loaded({s: data[s] for s in train + val + test}, cfg)
    tr, va, te = ([data[s] for s in group] for group in (train, val, test))

    def predict(model, ds):
        return st2s.predict_hr(model, torch.cat([d.images for d in ds]))

    all_val = np.ones(sum(len(d.segment) for d in va), bool)
    curve, best = [], {}

    def on_epoch(epoch, model):
        hr, ref, _ = _segments(predict(model, va), all_val, va)
        curve.append(_scores(hr, ref)["mae"])
        if not best or curve[-1] < best["mae"]:
            best.update(mae=curve[-1], epoch=epoch, state=copy.deepcopy(model.state_dict()))

    model = _fit(cfg, tr, cfg.epochs, device, on_epoch)
    model.load_state_dict(best["state"])
    val_pred, test_pred = predict(model, va), predict(model, te)
    s1_val, val_ref, _ = _segments(val_pred, all_val, va)

    # stage 2: out-of-fold stage-1 errors of the training subjects -> good/bad labels per threshold
    halves = [tr[0::2], tr[1::2]]
    grid, clfs = {}, {}
    if all(halves):
        oof = {}
        for part, other in ((halves[0], halves[1]), (halves[1], halves[0])):
            m = _fit(cfg, other, best["epoch"], device)
            oof.update({d.subject: predict(m, [d]) for d in part})
        step = [d.strips(stage2.strip_step) for d in tr]
        feats = np.concatenate([d.hog[k] for d, k in zip(tr, step)])
        err = np.concatenate([np.abs(oof[d.subject] - d.label_bpm)[k] for d, k in zip(tr, step)])
        val_hog = np.concatenate([d.hog for d in va])
        for t in thresholds_bpm:
            labels = (~(err <= t)).astype(np.int64)  # a NaN error is bad
            if len(np.unique(labels)) < 2:
                continue
            clf = st2s.fit_classifier(feats, labels, epochs=stage2.epochs, lr=stage2.lr, seed=stage2.seed,
                                      device=device)
            hr, _, _ = _segments(val_pred, st2s.predict_keep(clf, val_hog), va)
            grid[float(t)], clfs[float(t)] = _scores(hr, val_ref)["mae"], clf
    s1_val_mae = _scores(s1_val, val_ref)["mae"]
    chosen = min(grid, key=grid.get) if grid else None
    fallback = chosen is None or not grid[chosen] < s1_val_mae
    test_hog = np.concatenate([d.hog for d in te])
    keep = np.ones(len(test_pred), bool) if fallback else st2s.predict_keep(clfs[chosen], test_hog)
    if fallback:
        note = ("stage 2 did not beat stage 1 on validation: every image kept (two-stage = stage 1)" if grid
                else "no threshold gave both good and bad training images (or < 2 training subjects): every image kept")
    else:
        note = f"threshold {chosen:g} bpm chosen on validation"

    s1, ref, ids = _segments(test_pred, np.ones(len(test_pred), bool), te)
    s2, _, _ = _segments(test_pred, keep, te)
    train_ref = np.concatenate([d.label_bpm.reshape(d.shape)[:, 0] for d in tr if d.shape[0]])
    const = float(np.nanmean(train_ref))
    c = _scores(np.full(len(ref), const), ref)
    one, two = _scores(s1, ref), _scores(s2, ref)
    return {
        "train": train, "val": val, "test": test, "seed": seed,
        "config": json.loads(canonical_json(cfg)), "stage2_config": json.loads(canonical_json(stage2)),
        **one,
        "val_mae": best["mae"], "epoch": best["epoch"], "val_curve": curve,
        "two_stage": {"mae": two["mae"], "rmse": two["rmse"], "pearson_r": two["pearson_r"],
                      "kept_fraction": float(keep.mean()) if len(keep) else float("nan"),
                      "threshold_bpm": None if fallback else chosen, "fallback": fallback,
                      "val_mae": s1_val_mae if fallback else grid[chosen],
                      "val_grid": {f"{t:g}": v for t, v in grid.items()}, "note": note},
        "constant_segments": {"hr_bpm": const, "mae": c["mae"], "rmse": c["rmse"]},
        "segments": [{"subject": sid, "segment": seg, "pred": float(p), "two_stage": float(q), "ref": float(r)}
                     for (sid, seg), p, q, r in zip(ids, s1, s2, ref)],
        "wall_s": round(time.time() - t0, 1),
    }
