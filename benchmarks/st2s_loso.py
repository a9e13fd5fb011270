"""ST2S-rPPG leave-one-subject-out on a build of the real UBFC-rPPG subjects (run by hand).

    .venv/bin/python benchmarks/st2s_loso.py --cache CACHE [--epochs 10] [--threshold-bpm 5]

The build must exist (``rppg-prep build ubfc --root ../shared/data/ubfc-rppg --cache CACHE``).
Prints, per held-out subject and overall, MAE / RMSE (bpm) and Pearson r of the HR per 10-s ST
segment: stage 1 alone (mean over all ST images) vs two-stage (mean over the images stage 2 keeps),
and writes benchmarks/results/st2s-loso-<date>-<hr label>.json.
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


def scores(pred: np.ndarray, ref: np.ndarray) -> dict:
    e = pred - ref
    r = float(np.corrcoef(pred, ref)[0, 1]) if len(pred) > 2 and np.std(pred) > 0 else float("nan")
    return {"n": int(len(e)), "mae": float(np.mean(np.abs(e))), "rmse": float(np.sqrt(np.mean(e**2))), "r": r}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threshold-bpm", type=float, default=5.0)
    ap.add_argument("--hr-label", choices=("beats", "welch"), default="beats",
                    help="segment label HR: median of the contact PPG's beats, or its Welch peak")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    data = {sid: P.load_subject(sid, n, args.hr_label) for sid, n in open_build(args.cache, "ubfc", "ubfc").items()}
    key, path = P.train_stage1(args.cache, "ubfc", "ubfc", P.Stage1Config(epochs=args.epochs, hr_label=args.hr_label),
                               data=data)
    keys = P.write_split(args.cache, "ubfc", "ubfc", key, path, args.threshold_bpm, data=data, hr_label=args.hr_label)
    res = P.stage2(args.cache, "ubfc", "ubfc", keys, P.Stage2Config(hr_label=args.hr_label), data=data)
    rows, all1, all2, allr = {}, [], [], []
    for sid, r in res.items():
        ok = np.isfinite(r["label_bpm"])
        rows[sid] = {"stage1": scores(r["stage1_bpm"][ok], r["label_bpm"][ok]),
                     "two_stage": scores(r["two_stage_bpm"][ok], r["label_bpm"][ok]),
                     "keep_fraction": r["keep_fraction"], "fallback_segments": int(r["fallback"].sum())}
        all1.append(r["stage1_bpm"][ok]), all2.append(r["two_stage_bpm"][ok]), allr.append(r["label_bpm"][ok])
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "checkpoint": key, "epochs": args.epochs,
           "hr_label": args.hr_label,
           "threshold_bpm": args.threshold_bpm, "wall_s": round(time.time() - t0, 1), "subjects": rows,
           "overall": {"stage1": scores(np.concatenate(all1), np.concatenate(allr)),
                       "two_stage": scores(np.concatenate(all2), np.concatenate(allr))}}
    print("| subject | stage 1 MAE | stage 1 RMSE | two-stage MAE | two-stage RMSE | kept |\n|---|---|---|---|---|---|")
    for sid, r in rows.items():
        print(f"| {sid} | {r['stage1']['mae']:.1f} | {r['stage1']['rmse']:.1f} | {r['two_stage']['mae']:.1f} | "
              f"{r['two_stage']['rmse']:.1f} | {r['keep_fraction']:.0%} |")
    o = out["overall"]
    print(f"overall: stage 1 MAE {o['stage1']['mae']:.2f} RMSE {o['stage1']['rmse']:.2f} r {o['stage1']['r']:.3f}; "
          f"two-stage MAE {o['two_stage']['mae']:.2f} RMSE {o['two_stage']['rmse']:.2f} r {o['two_stage']['r']:.3f}")
    dest = Path(__file__).resolve().parent / "results" / f"st2s-loso-{time.strftime('%Y-%m-%d')}-{args.hr_label}.json"
    dest.write_text(json.dumps(out, indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
