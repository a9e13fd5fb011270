"""ST2S-rPPG on a build of the real UBFC-rPPG subjects: leave one subject out, or given splits (run by hand).

    .venv/bin/python benchmarks/st2s_loso.py --cache CACHE [--epochs 10] [--threshold-bpm 5] [--layout time|paper]
    .venv/bin/python benchmarks/st2s_loso.py --cache CACHE --split TRAIN/VAL/TEST [--split ...] [--layout ...]

The build must exist (``rppg-prep build ubfc --root ../shared/data/ubfc-rppg --cache CACHE``).
Leave one subject out: prints, per held-out subject and overall, MAE / RMSE (bpm) and Pearson r of
the HR per 10-s ST segment, stage 1 alone (mean over all ST images) vs two-stage (mean over the
images stage 2 keeps), and the constant predictor (the training subjects' mean segment HR), and
writes benchmarks/results/st2s-loso-<date>-<hr label>-<layout>.json. With ``--split`` (comma-
separated subjects, e.g. ``subject3,subject4/subject12/subject8,subject9``) it runs
:func:`rppg_models.st2s_pipeline.evaluate_split` on each split instead (epoch and stage-2 threshold
chosen on VAL) and writes st2s-split-<date>-<hr label>-<layout>.json.

Stage 1 reads the time-preserving layout by default; ``--layout paper`` is the paper's 64x64 image.
The CPU recipe trains stage 1 on every 4th strip (``--strip-step``) with the output bias at the
mean training HR, and stage 2 on every 2nd strip for 15 epochs; one torch thread.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from rppg_models import st2s_pipeline as P
from rppg_prep import open_build
from rppg_prep.stage import canonical_json


def scores(pred: np.ndarray, ref: np.ndarray) -> dict:
    e = pred - ref
    varies = len(pred) > 2 and np.ptp(pred) > 0 and np.ptp(ref) > 0
    r = float(np.corrcoef(pred, ref)[0, 1]) if varies else float("nan")
    return {"n": int(len(e)), "mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))), "r": r}


def loso(args, data, cfg1, cfg2) -> dict:
    key, path = P.train_stage1(args.cache, "ubfc", "ubfc", cfg1, data=data,
                               progress=lambda i, n: print(f"stage 1: fold {i}/{n}", flush=True))
    keys = P.write_split(args.cache, "ubfc", "ubfc", key, path, args.threshold_bpm, data=data, hr_label=args.hr_label)
    res = P.stage2(args.cache, "ubfc", "ubfc", keys, cfg2, data=data)
    rows, all1, all2, allc, allr = {}, [], [], [], []
    for sid, r in res.items():
        ok = np.isfinite(r["label_bpm"])
        others = np.concatenate([v["label_bpm"] for s, v in res.items() if s != sid])
        const = np.full(int(ok.sum()), np.nanmean(others))
        rows[sid] = {"stage1": scores(r["stage1_bpm"][ok], r["label_bpm"][ok]),
                     "two_stage": scores(r["two_stage_bpm"][ok], r["label_bpm"][ok]),
                     "constant": {**scores(const, r["label_bpm"][ok]),
                                  "hr_bpm": float(const[0]) if len(const) else None},
                     "keep_fraction": r["keep_fraction"], "fallback_segments": int(r["fallback"].sum()),
                     "segments": {"label_bpm": r["label_bpm"].tolist(), "stage1_bpm": r["stage1_bpm"].tolist(),
                                  "two_stage_bpm": r["two_stage_bpm"].tolist()}}
        all1.append(r["stage1_bpm"][ok]), all2.append(r["two_stage_bpm"][ok])
        allc.append(const), allr.append(r["label_bpm"][ok])
    out = {"checkpoint": key, "threshold_bpm": args.threshold_bpm, "subjects": rows,
           "overall": {k: scores(np.concatenate(v), np.concatenate(allr))
                       for k, v in (("stage1", all1), ("two_stage", all2), ("constant", allc))}}
    print("| subject | stage 1 MAE | stage 1 RMSE | stage 1 r | two-stage MAE | two-stage RMSE | kept "
          "| constant MAE |\n|---|---|---|---|---|---|---|---|")
    for sid, r in rows.items():
        print(f"| {sid} | {r['stage1']['mae']:.1f} | {r['stage1']['rmse']:.1f} | {r['stage1']['r']:.2f} | "
              f"{r['two_stage']['mae']:.1f} | {r['two_stage']['rmse']:.1f} | {r['keep_fraction']:.0%} | "
              f"{r['constant']['mae']:.1f} |")
    o = out["overall"]
    print(f"overall: stage 1 MAE {o['stage1']['mae']:.2f} RMSE {o['stage1']['rmse']:.2f} r {o['stage1']['r']:.3f}; "
          f"two-stage MAE {o['two_stage']['mae']:.2f} RMSE {o['two_stage']['rmse']:.2f} r {o['two_stage']['r']:.3f}; "
          f"constant MAE {o['constant']['mae']:.2f} RMSE {o['constant']['rmse']:.2f}")
    return out


def splits(args, data, cfg1, cfg2) -> dict:
    runs = []
    for spec in args.split:
        train, val, test = (part.split(",") for part in spec.split("/"))
        res = P.evaluate_split(args.cache, "ubfc", "ubfc", train=train, val=val, test=test, seed=cfg1.seed,
                               cfg=cfg1, stage2=cfg2, hr_label=args.hr_label, data=data)
        t, c = res["two_stage"], res["constant_segments"]
        print(f"{spec}: epoch {res['epoch']} (val MAE {res['val_mae']:.2f}); test stage 1 MAE {res['mae']:.2f} "
              f"RMSE {res['rmse']:.2f} r {res['pearson_r']:.3f} (n={res['n']}); two-stage MAE {t['mae']:.2f} "
              f"({t['note']}, kept {t['kept_fraction']:.0%}); constant {c['hr_bpm']:.1f} bpm MAE {c['mae']:.2f} "
              f"RMSE {c['rmse']:.2f}; {res['wall_s']:.0f} s", flush=True)
        runs.append(res)
    return {"splits": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=10, help="stage-1 epochs (per fold; the most, with --split)")
    ap.add_argument("--threshold-bpm", type=float, default=5.0, help="leave one subject out: the good/bad threshold")
    ap.add_argument("--hr-label", choices=("beats", "welch"), default="beats",
                    help="segment label HR: median of the contact PPG's beats, or its Welch peak")
    ap.add_argument("--layout", choices=("time", "paper"), default="time",
                    help="stage-1 input: time-preserving (default) or the paper's 64x64 image")
    ap.add_argument("--strip-step", type=int, default=4, help="stage 1 trains on every n-th strip (1: the paper's)")
    ap.add_argument("--no-bias-init", dest="bias_init", action="store_false",
                    help="PyTorch's output bias (the paper's) instead of the mean training HR")
    ap.add_argument("--stage2-epochs", type=int, default=15)
    ap.add_argument("--stage2-strip-step", type=int, default=2, help="stage 2 trains on every n-th strip")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", action="append", default=[], metavar="TRAIN/VAL/TEST",
                    help="run evaluate_split on this split instead of leave one subject out (repeatable)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()
    cfg1 = P.Stage1Config(epochs=args.epochs, hr_label=args.hr_label, layout=args.layout, strip_step=args.strip_step,
                          bias_init=args.bias_init, seed=args.seed)
    cfg2 = P.Stage2Config(epochs=args.stage2_epochs, hr_label=args.hr_label, strip_step=args.stage2_strip_step,
                          seed=args.seed)
    build = open_build(args.cache, "ubfc", "ubfc")
    wanted = sorted({s for spec in args.split for part in spec.split("/") for s in part.split(",")}) or list(build)
    data = {sid: P.load_subject(sid, build[sid], args.hr_label, args.layout) for sid in wanted}
    print(f"loaded {len(data)} subjects in {time.time() - t0:.0f} s", flush=True)
    res = splits(args, data, cfg1, cfg2) if args.split else loso(args, data, cfg1, cfg2)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "epochs": args.epochs, "hr_label": args.hr_label,
           "stage1_config": json.loads(canonical_json(cfg1)), "stage2_config": json.loads(canonical_json(cfg2)),
           "threads": args.threads, **res, "wall_s": round(time.time() - t0, 1)}
    kind = "split" if args.split else "loso"
    dest = (Path(__file__).resolve().parent / "results" /
            f"st2s-{kind}-{time.strftime('%Y-%m-%d')}-{args.hr_label}-{args.layout}.json")
    dest.write_text(json.dumps(out, indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
