"""Train the families on real clips and score them on subjects they never saw, beside POS and a constant (run by hand).

    # subject-disjoint 4-fold evaluation, 3 seeds (the README's fold table); one family per run
    .venv/bin/python benchmarks/train_eval.py --cache CACHE --families stgnet --folds 4 --seeds 0 1 2 \\
        --size-px 16 --norm bandpass --pos-embed off --augment jitter+flip+speed --schedule warmup-cosine \\
        --lr 1e-3 --batch 8 --steps 600 --val-every 100 --threads 1
    # a fixed split (the JSON of earlier runs: results[family] with mae and bvp_r, constant, pos)
    .venv/bin/python benchmarks/train_eval.py --cache CACHE --families meta-rppg --test subject8 subject9 ...
    # a CUDA machine: every family at the paper's input size
    .venv/bin/python benchmarks/train_eval.py --cache CACHE --device cuda

CACHE holds a build of the 8 real UBFC-rPPG subjects (``rppg-prep build ubfc --root
../shared/data/ubfc-rppg --cache CACHE``) and, for the 3D-CNN, the synthetic build (``rppg-prep build
synthetic --cache CACHE``; built here when missing).

**Protocol.** ``--folds K`` (the default, K = 4) splits the subjects into K subject-disjoint folds
(:func:`rppg_models.folds.kfold_splits`); ``--test SUBJECTS`` makes one fixed split instead. In every
split one training subject is held back for validation (``--val`` for a fixed split): the checkpoint
is the state with the best validation loss (``--select``), evaluated every ``--val-every`` steps,
never anything measured on the test subjects. Each split runs for every seed of ``--seeds``.
``--max-train N`` keeps only the first N training subjects of every split (validation and test
unchanged), to check that training on more subjects does not make a family worse.
STGNet, Meta-rPPG and IENet (RGB only) train with :func:`rppg_models.train.fit`; the 3D-CNN trains on
its synthetic videos alone, as in its paper (one model per seed, scored on every fold); ST2S runs
:func:`rppg_models.st2s_pipeline.evaluate_split` (HR per 10-s ST segment).

Scores, on the test subjects of each split:

* per clip: HR (Welch peak of the predicted BVP on the frame clock) against the clip's label HR
  (``--hr-label``, default the median of the beats), MAE / RMSE / MAPE / Pearson r over the clips,
  and the mean per-clip Pearson r between the predicted and the label BVP;
* the rPPG-Toolbox protocol: one HR per test subject from its concatenated prediction (the clips'
  predictions z-scored and overlap-averaged), FFT peak in 0.75-2.5 Hz after the Toolbox's detrend
  and band-pass, against the contact PPG of the same frames through the same steps; MAE, RMSE, MAPE
  and r over subjects (pooled over the folds of a seed, so every subject counts once per seed).

* ``benchmarks/peers.py``'s protocol, which scores the pretrained peers: the same concatenated
  prediction through :func:`peers.score_subject` (frames taken as they come, at the mean rate of the
  clock; whole-video HR, 10-s windows at a 1-s stride, window BVP r), pooled over a seed's folds, so
  a family's row and a peer's row compare under one protocol.

``--rescore JSON`` adds that protocol to the runs of an earlier JSON from their checkpoints (no
training; each run's clip MAE is checked against the stored one) and rewrites its summary.

Beside every family, on the same clips: POS on the face-skin ROI (no training) and a constant
predictor (the mean label HR of the training and validation clips). The fold summary gives mean ±
s.d. over the folds and seeds, the per-seed means, and in how many (fold, seed) runs each family
beat the constant.

With ``--device cuda`` the defaults become a GPU plan (the paper's input sizes, ``temporal`` pixel
normalisation, batch 8, 1.5 minutes of training per family and split, AMP on) and the JSON also records the
GPU's name and each family's peak GPU memory. On a machine without CUDA, ``--device cuda`` stops at
once with a clear message. Writes ``benchmarks/results/train-eval-<date>-<device>-<families>[-folds].json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rppg_models.data import hr_label_array
from rppg_models.evaluate import evaluate_checkpoint, hr_on_clock
from rppg_models.families import AUGMENT
from rppg_models.folds import Split, fixed_split, kfold_splits, mean_sd, overlap_average, whole_video_hr
from rppg_models.train import FAMILIES, TrainConfig, finetune_cnn3d, fit, fit_cnn3d, pick_device
from rppg_prep import open_build
from rppg_prep.errors import StoreError
from rppg_prep.protocols import metrics

from peers import score_subject, summarise  # benchmarks/peers.py, beside this script (its pure scoring; no open-rppg needed)

ALL_FAMILIES = [*sorted(FAMILIES), "cnn3d", "st2s"]
#: the figures summarised over folds and seeds
CLIP_KEYS = ("mae", "rmse", "pearson_r", "bvp_r")
TOOLBOX_KEYS = ("mae", "rmse", "mape", "pearson_r")
PEERS_KEYS = ("video_mae", "video_rmse", "window_mae", "window_rmse", "window_bvp_r")


def clip_table(build: dict, subjects: list[str], hr_label: str) -> list[dict]:
    """Every clip of ``subjects``: subject, clip number, [start, stop) frames, label HR (bpm)."""
    out = []
    for sid in subjects:
        win = build[sid]["clips"]["window"][:]
        hr = hr_label_array(build[sid]["labels"], "clip_", hr_label)
        out += [{"subject": sid, "clip": k, "window": (int(a), int(b)), "hr_ref_bpm": float(h)}
                for k, ((a, b), h) in enumerate(zip(win, hr))]
    return out


def summary(pred: list[float], ref: list[float], bvp_r: list[float] | None = None) -> dict:
    m = metrics(pred, ref)
    return {"n": m.n, "mae": m.mae, "rmse": m.rmse, "mape": m.mape, "pearson_r": m.pearson_r,
            "bvp_r": float(np.nanmean(bvp_r)) if bvp_r is not None else float("nan")}


def video_span(build: dict, sid: str) -> tuple[int, int]:
    """[first, last) frame covered by the subject's clips: the frames the whole-video protocol scores."""
    win = build[sid]["clips"]["window"][:]
    return int(win[:, 0].min()), int(win[:, 1].max())


def toolbox_reference(build: dict, subjects: list[str]) -> dict[str, float]:
    """Whole-video HR (bpm) of the contact PPG over the frames the clips cover, Toolbox protocol."""
    out = {}
    for sid in subjects:
        a, b = video_span(build, sid)
        lab = build[sid]["labels"]
        out[sid] = whole_video_hr(lab["bvp"][a:b], lab["t_s"][a:b])
    return out


def toolbox_scores(pred: dict[str, float], ref: dict[str, float]) -> dict:
    """Per-subject HRs and their metrics (NaN metrics with fewer than 2 subjects)."""
    subjects = sorted(ref)
    row = {"per_subject": {s: {"hr_pred_bpm": pred[s], "hr_ref_bpm": ref[s]} for s in subjects}}
    try:
        m = metrics([pred[s] for s in subjects], [ref[s] for s in subjects])
        row.update(mae=m.mae, rmse=m.rmse, mape=m.mape, pearson_r=m.pearson_r)
    except ValueError:
        row.update(mae=float("nan"), rmse=float("nan"), mape=float("nan"), pearson_r=float("nan"))
    return row


def family_signals(build: dict, subjects: list[str], bvp: dict[tuple[str, int], np.ndarray]) -> dict[str, np.ndarray]:
    """Per subject, a family's clip predictions overlap-averaged into one signal over :func:`video_span`."""
    out = {}
    for sid in subjects:
        ks = sorted(k for s, k in bvp if s == sid)
        if ks:
            win = build[sid]["clips"]["window"][:]
            a, b = video_span(build, sid)
            out[sid] = overlap_average([bvp[(sid, k)] for k in ks], win[ks], build[sid]["labels"]["t_s"].shape[0])[a:b]
    return out


def family_toolbox(build: dict, subjects: list[str], signals: dict[str, np.ndarray]) -> dict[str, float]:
    """Whole-video HR per subject (NaN without a signal) from :func:`family_signals`."""
    out = {}
    for sid in subjects:
        a, b = video_span(build, sid)
        out[sid] = (whole_video_hr(signals[sid], build[sid]["labels"]["t_s"][a:b]) if sid in signals
                    else float("nan"))
    return out


def peers_protocol(build: dict, signals: dict[str, np.ndarray]) -> dict[str, dict]:
    """``benchmarks/peers.py``'s scoring of a per-frame signal per subject, over the frames its clips cover.

    The same :func:`peers.score_subject` (index clock, whole-video HR and 10-s windows at a 1-s
    stride by the Toolbox's detrend + band-pass + FFT, window BVP r) that scores the pretrained
    peers, so a family's row and a peer's row compare under one protocol. ``signals`` maps a
    subject to its signal over :func:`video_span`; the windows' frame ranges are dropped.
    """
    out = {}
    for sid, sig in signals.items():
        a, b = video_span(build, sid)
        lab = build[sid]["labels"]
        res = score_subject(sig, lab["bvp"][a:b], lab["t_s"][a:b])
        res.pop("windows")
        out[sid] = res
    return out


def constant_baseline(build: dict, known: list[str], clips: list[dict], hr_label: str,
                      toolbox_ref: dict[str, float], peers_ref: dict[str, dict]) -> dict:
    """The floor a model must beat: every test clip (and subject) predicted at the mean label HR of ``known``.

    ``peers_ref``: a :func:`peers_protocol` result whose reference HRs the constant is scored against.
    """
    const = float(np.nanmean(np.concatenate([hr_label_array(build[s]["labels"], "clip_", hr_label) for s in known])))
    return {"hr_bpm": const, **summary([const] * len(clips), [c["hr_ref_bpm"] for c in clips]),
            "toolbox": toolbox_scores({s: const for s in toolbox_ref}, toolbox_ref),
            "peers_protocol": constant_peers_protocol(const, peers_ref)}


def constant_peers_protocol(hr_bpm: float, peers_ref: dict[str, dict]) -> dict[str, dict]:
    """:func:`peers_protocol` rows of a constant ``hr_bpm``, against the reference HRs of ``peers_ref``."""
    return {sid: {"hr_pred_bpm": hr_bpm, "hr_ref_bpm": v["hr_ref_bpm"],
                  "win_hr_pred_bpm": [hr_bpm] * len(v["win_hr_ref_bpm"]), "win_hr_ref_bpm": v["win_hr_ref_bpm"],
                  "win_bvp_r": [], "bvp_r": float("nan")} for sid, v in peers_ref.items()}


def pos_baseline(build: dict, clips: list[dict], toolbox_ref: dict[str, float]) -> dict:
    """POS (Wang 2017) on the face-skin ROI: per clip (HR as the models', BVP r) and per whole video."""
    from rppg_prep.methods import get_method
    from rppg_prep.scoring import skin_rgb

    pos = get_method("pos")
    traces, pred, rs = {}, [], []
    for c in clips:
        nodes = build[c["subject"]]
        if c["subject"] not in traces:
            traces[c["subject"]] = skin_rgb(nodes)
        a, b = c["window"]
        t = nodes["labels"]["t_s"][a:b]
        p = pos(traces[c["subject"]][a:b], (b - a - 1) / (t[-1] - t[0]))
        pred.append(hr_on_clock(p, t)[0])
        rs.append(float(np.corrcoef(p, nodes["labels"]["bvp"][a:b])[0, 1]))
    whole, signals = {}, {}
    for sid in toolbox_ref:
        a, b = video_span(build, sid)
        t = build[sid]["labels"]["t_s"][a:b]
        signals[sid] = pos(traces[sid][a:b], (b - a - 1) / (t[-1] - t[0]))
        whole[sid] = whole_video_hr(signals[sid], t)
    return {**summary(pred, [c["hr_ref_bpm"] for c in clips], rs), "toolbox": toolbox_scores(whole, toolbox_ref),
            "peers_protocol": peers_protocol(build, signals)}


def ensure_synthetic(cache: Path) -> None:
    try:
        open_build(cache, "synthetic", "synthetic")
    except StoreError:  # no synthetic build yet: make it (a few seconds)
        from click.testing import CliRunner

        from rppg_prep.cli import main as cli
        CliRunner().invoke(cli, ["build", "synthetic", "--cache", str(cache)], catch_exceptions=False)


def run_family(fam: str, args, split: Split, seed: int, dev: torch.device, plan: dict, build: dict,
               toolbox_ref: dict[str, float], cnn3d_cache: dict) -> dict:
    """Train ``fam`` on the split's training subjects (validated on its validation subject), score the test ones."""
    cuda = dev.type == "cuda"
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    if fam == "st2s":
        from rppg_models import st2s_pipeline

        res = st2s_pipeline.evaluate_split(args.cache, "ubfc", "ubfc", train=split.train, val=split.val,
                                           test=split.test, seed=seed, device=str(dev), hr_label=args.hr_label,
                                           **({"epochs": args.st2s_epochs} if args.st2s_epochs else {}))
        res["train_s"] = round(time.perf_counter() - t0, 1)
        return res
    if fam == "cnn3d":
        n = args.cnn3d_steps or (3000 if cuda else 300)
        if seed not in cnn3d_cache:  # synthetic videos alone: one model per seed serves every fold
            ensure_synthetic(args.cache)
            cnn3d_cache[seed] = fit_cnn3d(args.cache, steps=n, batch=32, seed=seed, device=str(dev),
                                          out=args.cache / "models", progress=False)
        res, cfg = cnn3d_cache[seed], {"steps": n, "batch": 32, "lr": 1e-3, "seed": seed}
        if args.cnn3d_finetune_steps:  # explicit deviation: fine-tune on the fold's real clips, validated
            import copy

            pre = cfg
            res = finetune_cnn3d(copy.deepcopy(res["model"]), args.cache, "ubfc", "ubfc", subjects=split.train,
                                 val_subjects=split.val, steps=args.cnn3d_finetune_steps, lr=args.cnn3d_finetune_lr,
                                 seed=seed, val_every=max(1, args.cnn3d_finetune_steps // 6), hr_label=args.hr_label,
                                 device=str(dev), out=args.cache / "models", pretrain=pre)
            cfg = {"pretrain": pre, "finetune_steps": args.cnn3d_finetune_steps, "finetune_lr": args.cnn3d_finetune_lr}
    else:
        size_px = {"stgnet": args.size_px, "meta-rppg": args.meta_size_px}.get(fam)
        tc = TrainConfig(steps=plan["steps"], batch=plan["batch"], lr=args.lr, amp=args.amp, workers=plan["workers"],
                         max_minutes=plan["minutes"], norm=plan["norm"], size_px=size_px, seed=seed,
                         frames=args.frames if fam == "stgnet" else None, val_every=args.val_every,
                         select=args.select, patience=args.patience,
                         pos_embed=args.pos_embed if fam == "stgnet" else "learned",
                         augment=args.augment, schedule=args.schedule)
        res = fit(fam, args.cache, "ubfc", "ubfc", tc, subjects=split.train, val_subjects=split.val,
                  device=str(dev), out=args.cache / "models", progress=False)
        cfg = asdict(tc)
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    bvp: dict = {}
    scores, _ = evaluate_checkpoint(res["checkpoint"], args.cache, "ubfc", "ubfc", subjects=split.test,
                                    device=str(dev), hr_label=args.hr_label, bvp_out=bvp)
    eval_s = time.perf_counter() - t1
    losses = res["losses"]
    k = max(1, len(losses) // 20)
    row = {"config": cfg, "steps_run": len(losses), "best_step": res.get("best_step"), "val": res.get("val", []),
           "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
           "train_clips_per_s": res["clips_per_s"], "eval_clips_per_s": len(scores) / eval_s,
           "gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
           "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
           "checkpoint": str(res["checkpoint"]),
           **summary([s.hr_pred_bpm for s in scores], [s.hr_ref_bpm for s in scores], [s.bvp_r for s in scores])}
    if bvp:
        signals = family_signals(build, split.test, bvp)
        row["toolbox"] = toolbox_scores(family_toolbox(build, split.test, signals), toolbox_ref)
        row["peers_protocol"] = peers_protocol(build, signals)
    row["clips"] = [asdict(s) for s in scores]
    return row


def run_split(build: dict, split: Split, families: list[str], args, seed: int, dev, plan: dict,
              cnn3d_cache: dict, baselines: dict) -> dict:
    """One (split, seed): the baselines (computed once per split) and every family."""
    clips = clip_table(build, split.test, args.hr_label)
    ref = toolbox_reference(build, split.test)
    if split.fold not in baselines:
        pos = pos_baseline(build, clips, ref)
        baselines[split.fold] = {"constant": constant_baseline(build, split.train + split.val, clips, args.hr_label, ref,
                                                               pos["peers_protocol"]),
                                 "pos": pos}
    out = {"fold": split.fold, "seed": seed, "train_subjects": split.train, "val_subjects": split.val,
           "test_subjects": split.test, "n_clips": len(clips), **baselines[split.fold], "results": {}}
    for fam in families:
        r = run_family(fam, args, split, seed, dev, plan, build, ref, cnn3d_cache)
        out["results"][fam] = r
        const = out["constant"]["mae"] if fam != "st2s" else r.get("constant_segments", {}).get("mae", float("nan"))
        print(f"fold {split.fold} seed {seed} {fam}: MAE {r['mae']:.2f} (constant {const:.2f}) "
              f"r {r.get('pearson_r', float('nan')):.3f} BVP r {r.get('bvp_r', float('nan')):.3f}"
              f" best step {r.get('best_step')}, {r.get('train_s', 0):.0f} s", flush=True)
    return out


def fold_summary(runs: list[dict], families: list[str]) -> dict:
    """Mean ± s.d. over the (fold, seed) runs, per-seed fold means, wins over the constant, Toolbox per seed."""
    seeds = sorted({r["seed"] for r in runs})
    names = ["constant", "pos", *families]

    def rows(name):
        for r in runs:
            yield r, (r[name] if name in ("constant", "pos") else r["results"][name])

    out = {}
    for name in names:
        per_run = list(rows(name))
        entry = {"clip": {k: mean_sd(x.get(k, float("nan")) for _, x in per_run) for k in CLIP_KEYS}}
        entry["clip_per_seed"] = {str(s): {k: mean_sd(x.get(k, float("nan")) for r, x in per_run if r["seed"] == s)
                                           ["mean"] for k in CLIP_KEYS} for s in seeds}
        if name not in ("constant", "pos"):
            if name == "st2s":
                wins = [x["mae"] < x["constant_segments"]["mae"] for _, x in per_run]
                entry["two_stage_mae"] = mean_sd(x["two_stage"]["mae"] for _, x in per_run)
                entry["constant_segments_mae"] = mean_sd(x["constant_segments"]["mae"] for _, x in per_run)
            else:
                wins = [x["mae"] < r["constant"]["mae"] for r, x in per_run]
            entry["beats_constant"] = {"runs": int(sum(wins)), "of": len(wins),
                                       "per_seed_fold_mean": {str(s): bool(entry["clip_per_seed"][str(s)]["mae"] <
                                                                           _seed_mean(runs, s, name))
                                                              for s in seeds}}
        pooled = {}
        for s in seeds:
            pred, ref = {}, {}
            for r, x in per_run:
                if r["seed"] == s and "toolbox" in x:
                    for sid, v in x["toolbox"]["per_subject"].items():
                        pred[sid], ref[sid] = v["hr_pred_bpm"], v["hr_ref_bpm"]
            if len(ref) >= 2:
                pooled[str(s)] = {k: v for k, v in toolbox_scores(pred, ref).items() if k != "per_subject"}
        if pooled:
            entry["toolbox_per_seed"] = pooled
            entry["toolbox"] = {k: mean_sd(p[k] for p in pooled.values()) for k in TOOLBOX_KEYS}
        peer_rows = {}
        for s in seeds:  # every subject is tested once per seed: peers.py's table over the subjects
            subs = {sid: v for r, x in per_run if r["seed"] == s for sid, v in x.get("peers_protocol", {}).items()}
            if subs:
                sm = summarise(subs)
                peer_rows[str(s)] = {"subjects": len(subs), "video_mae": sm["video"]["mae"],
                                     "video_rmse": sm["video"]["rmse"], "window_mae": sm["window"]["mae"],
                                     "window_rmse": sm["window"]["rmse"], "window_bvp_r": sm["bvp_r"]}
        if peer_rows:
            entry["peers_protocol_per_seed"] = peer_rows
            entry["peers_protocol"] = {k: mean_sd(p[k] for p in peer_rows.values()) for k in PEERS_KEYS}
        out[name] = entry
    return out


def _seed_mean(runs: list[dict], seed: int, name: str) -> float:
    """The constant's fold-mean clip MAE for one seed (per segment for ST2S)."""
    vals = [(r["results"][name]["constant_segments"]["mae"] if name == "st2s" else r["constant"]["mae"])
            for r in runs if r["seed"] == seed]
    return float(np.mean(vals))


def print_tables(out: dict, families: list[str]) -> None:
    s = out["summary"]
    f = lambda d: f"{d['mean']:.2f} ± {d['sd']:.2f}"  # noqa: E731
    print(f"\n{out['protocol']}: {len(out['runs'])} runs (folds x seeds); mean ± s.d. over them\n")
    print("| method | clip MAE bpm | clip RMSE bpm | clip HR r | per-clip BVP r | beats the constant "
          "| Toolbox MAE | Toolbox RMSE | Toolbox MAPE % | Toolbox r |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ["constant", "pos", *families]:
        e = s[name]
        c = e["clip"]
        wins = f"{e['beats_constant']['runs']}/{e['beats_constant']['of']}" if "beats_constant" in e else ""
        tb = e.get("toolbox")
        tbs = " | ".join(f(tb[k]) for k in TOOLBOX_KEYS) if tb else "n/a | n/a | n/a | n/a"
        print(f"| {name} | {f(c['mae'])} | {f(c['rmse'])} | {f(c['pearson_r'])} | {f(c['bvp_r'])} | {wins} | {tbs} |")
    print("\npeers.py's protocol (index clock; per seed over the subjects, each tested in its fold; mean ± s.d. "
          "over seeds)\n")
    print("| method | subjects | whole-video MAE bpm | whole-video RMSE bpm | 10-s window MAE bpm | window RMSE bpm "
          "| window BVP r |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in ["constant", "pos", *families]:
        pp = s[name].get("peers_protocol")
        if pp:
            n = next(iter(s[name]["peers_protocol_per_seed"].values()))["subjects"]
            print(f"| {name} | {n} | " + " | ".join(f(pp[k]) for k in PEERS_KEYS) + " |")


def rescore(path: Path, cache: Path, device: str) -> None:
    """Add :func:`peers_protocol` rows to the runs of ``path`` from their checkpoints, and rewrite its summary.

    Runs on the JSON's torch thread count (``threads``): another count changes the float reduction
    order, and so the last digits of the scores. Raises ValueError when a checkpoint no longer
    reproduces its run's stored clip MAE.
    """
    out = json.loads(path.read_text())
    torch.set_num_threads(int(out.get("threads", torch.get_num_threads())))
    build = open_build(cache, "ubfc", "ubfc")
    hr_label = out.get("hr_label", "beats")
    families = sorted({f for r in out["runs"] for f in r["results"]})
    pos_rows: dict[tuple[str, ...], dict] = {}  # a fold's POS is the same for every seed
    for run in out["runs"]:
        test = run["test_subjects"]
        if "peers_protocol" not in run["pos"]:
            if tuple(test) not in pos_rows:
                ref = toolbox_reference(build, test)
                pos_rows[tuple(test)] = pos_baseline(build, clip_table(build, test, hr_label), ref)["peers_protocol"]
            run["pos"]["peers_protocol"] = pos_rows[tuple(test)]
            run["constant"]["peers_protocol"] = constant_peers_protocol(run["constant"]["hr_bpm"], pos_rows[tuple(test)])
        for fam, row in run["results"].items():
            if "checkpoint" not in row or "peers_protocol" in row:
                continue
            bvp: dict = {}
            scores, _ = evaluate_checkpoint(row["checkpoint"], cache, "ubfc", "ubfc", subjects=test, device=device,
                                            hr_label=hr_label, bvp_out=bvp)
            mae = summary([c.hr_pred_bpm for c in scores], [c.hr_ref_bpm for c in scores])["mae"]
            if abs(mae - row["mae"]) > 1e-6:
                raise ValueError(f"{row['checkpoint']} scores clip MAE {mae:.4f}, the run stored {row['mae']:.4f}")
            row["peers_protocol"] = peers_protocol(build, family_signals(build, test, bvp))
            print(f"fold {run['fold']} seed {run['seed']} {fam}: rescored", flush=True)
    out["summary"] = fold_summary(out["runs"], families)
    print_tables(out, families)
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--rescore", type=Path, default=None,
                    help="add peers.py's protocol to this earlier JSON from its checkpoints (no training)")
    ap.add_argument("--families", nargs="+", default=None, choices=ALL_FAMILIES)
    ap.add_argument("--test", nargs="+", default=None, help="a fixed split: these held-out subjects (no --folds)")
    ap.add_argument("--val", nargs="+", default=None,
                    help="validation subjects of the fixed split (default: the first training subject)")
    ap.add_argument("--folds", type=int, default=4, help="subject-disjoint folds when --test is not given")
    ap.add_argument("--only-folds", type=int, nargs="+", default=None, help="run only these fold numbers")
    ap.add_argument("--max-train", type=int, default=None,
                    help="train on only the first N training subjects of each split (same validation and test "
                         "subjects): the learning-curve check that more subjects do not make a family worse")
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="seeds (default 0 for --test, 0 1 2 for folds)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--steps", type=int, default=None, help="steps per family (default 100000 on CUDA: time-bound)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training minutes per family and split (default 1.5 on CUDA, unlimited on the CPU)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 4 on the CPU, 8 on CUDA)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size-px", type=int, default=None, help="STGNet: resize crops to this side when read")
    ap.add_argument("--frames", type=int, default=None, help="STGNet: clip length in frames")
    ap.add_argument("--pos-embed", default="learned", choices=("learned", "off"),
                    help="STGNet: positional embeddings trained (the paper) or kept at zero (the CPU recipe)")
    ap.add_argument("--augment", default="none", choices=AUGMENT,
                    help="training windows at random frames (jitter), mirrored (flip), 0.7-1.4 clips long "
                         "resampled to one (speed: HR x k); none is the papers'")
    ap.add_argument("--schedule", default="constant", choices=("constant", "warmup-cosine"),
                    help="learning rate: constant (the papers') or 10 %% linear warm-up then cosine decay")
    ap.add_argument("--meta-size-px", type=int, default=None, help="Meta-rPPG: resize crops to this side (>= 32)")
    ap.add_argument("--amp", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--norm", default=None,
                    help="pixel normalisation instead of the family's (e.g. temporal; the default on CUDA)")
    ap.add_argument("--val-every", type=int, default=100, help="validate every this many steps")
    ap.add_argument("--select", default="loss", choices=("loss", "hr_mae"), help="checkpoint choice on validation")
    ap.add_argument("--patience", type=int, default=None, help="stop after this many validations without gain")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0 on the CPU, 2 on CUDA)")
    ap.add_argument("--hr-label", default="beats", choices=("beats", "welch"))
    ap.add_argument("--cnn3d-steps", type=int, default=None, help="3D-CNN steps (default 300 on the CPU, 3000 on CUDA)")
    ap.add_argument("--cnn3d-finetune-steps", type=int, default=0,
                    help="3D-CNN: after the synthetic training, fine-tune this many steps on each fold's real "
                         "training clips, validated on its validation subject (default 0: synthetic alone, the paper)")
    ap.add_argument("--cnn3d-finetune-lr", type=float, default=1e-4, help="3D-CNN fine-tuning learning rate")
    ap.add_argument("--st2s-epochs", type=int, default=None, help="ST2S stage-1 epochs (default evaluate_split's)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--tag", default="", help="appended to the JSON file name")
    args = ap.parse_args()
    dev = pick_device(args.device)  # raises here, before any work, when CUDA is asked for and absent
    cuda = dev.type == "cuda"
    torch.set_num_threads(args.threads)
    if args.rescore:
        return rescore(args.rescore, args.cache, str(dev))
    plan = {"steps": args.steps or (100_000 if cuda else 100),
            "minutes": args.minutes if args.minutes is not None else (1.5 if cuda else None),
            "norm": args.norm or ("temporal" if cuda else None), "batch": args.batch or (8 if cuda else 4),
            "workers": args.workers if args.workers is not None else (2 if cuda else 0)}
    families = args.families or ALL_FAMILIES
    build = open_build(args.cache, "ubfc", "ubfc")
    subjects = list(build)
    if args.test:
        splits, protocol = [fixed_split(subjects, args.test, args.val)], "fixed split"
    else:
        splits, protocol = kfold_splits(subjects, args.folds), f"{args.folds}-fold"
        if args.only_folds is not None:
            splits = [s for s in splits if s.fold in args.only_folds]
    if args.max_train is not None:
        if args.max_train < 1:
            raise SystemExit("--max-train must be >= 1")
        splits = [dataclasses.replace(s, train=s.train[:args.max_train]) for s in splits]
    seeds = args.seeds or ([0] if args.test else [0, 1, 2])
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": str(dev), "hr_label": args.hr_label,
           "gpu": torch.cuda.get_device_name(dev) if cuda else None, "threads": args.threads,
           "protocol": protocol, "seeds": seeds, "args": {k: str(v) for k, v in vars(args).items()}}
    which = "all" if families == ALL_FAMILIES else "-".join(families)
    suffix = "" if args.test else "-folds"
    dest = (Path(__file__).parent / "results" /
            f"train-eval-{time.strftime('%Y-%m-%d')}-{dev.type}-{which}{suffix}{args.tag}.json")
    t_all = time.perf_counter()
    runs, cnn3d_cache, baselines = [], {}, {}
    for seed in seeds:
        for split in splits:
            runs.append(run_split(build, split, families, args, seed, dev, plan, cnn3d_cache, baselines))
            out.update(wall_s=round(time.perf_counter() - t_all, 1), runs=runs, summary=fold_summary(runs, families))
            dest.write_text(json.dumps(out, indent=1, default=float) + "\n")  # a partial run keeps what it did
    if args.test and len(runs) == 1:  # the fixed-split JSON of earlier runs, at the top level
        run = runs[0]
        out.update(train_subjects=run["train_subjects"], val_subjects=run["val_subjects"],
                   test_subjects=run["test_subjects"], n_clips=run["n_clips"], constant=run["constant"],
                   pos=run["pos"], results=run["results"])
    print_tables(out, families)
    dest.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
