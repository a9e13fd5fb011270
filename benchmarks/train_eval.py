"""Trained families on real clips: a short CPU training, then HR per held-out clip (run by hand).

    .venv/bin/python benchmarks/train_eval.py --cache CACHE [--steps 100] [--test subject48 subject49]

CACHE holds a build of the real UBFC-rPPG subjects (``rppg-prep build ubfc --root ../shared/data/ubfc-rppg``)
and, for the 3D-CNN, the synthetic build (``rppg-prep build synthetic``; same cache). STGNet,
Meta-rPPG and IENet (RGB only) train ``--steps`` steps on every subject but the ``--test`` ones;
the 3D-CNN trains on the synthetic build alone, as in its paper. All are scored with
:func:`rppg_models.evaluate.evaluate_checkpoint` (one HR per clip, Welch peak, vs the contact PPG over
the same frames) on the ``--test`` subjects. Writes benchmarks/results/train-eval-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from rppg_models.evaluate import evaluate_checkpoint
from rppg_models.train import FAMILIES, TrainConfig, fit, fit_cnn3d
from rppg_prep.build import open_build


def constant_baseline(build: dict, train: list[str], clips: list[dict]) -> dict:
    """The floor a model must beat: every test clip predicted at the mean label HR of the training clips."""
    import numpy as np

    from rppg_prep.evaluation import metrics

    hr = np.concatenate([build[s]["labels"]["clip_hr_bpm"][:] for s in train])
    const = float(np.nanmean(hr))
    m = metrics([const] * len(clips), [c["hr_ref_bpm"] for c in clips])
    return {"hr_bpm": const, "mae": m.mae, "rmse": m.rmse, "mape": m.mape}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--cnn3d-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--test", nargs="+", default=None, help="held-out subjects (default: the last two)")
    ap.add_argument("--families", nargs="+", default=[*sorted(FAMILIES), "cnn3d"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    build = open_build(args.cache, "ubfc", "ubfc")
    subjects = list(build)
    test = args.test or subjects[-2:]
    train = [s for s in subjects if s not in test]
    out = {"date": time.strftime("%Y-%m-%d"), "device": "cuda" if torch.cuda.is_available() else "cpu",
           "train_subjects": train, "test_subjects": test, "results": {}}
    for fam in args.families:
        t0 = time.perf_counter()
        if fam == "cnn3d":
            res = fit_cnn3d(args.cache, steps=args.cnn3d_steps, out=args.cache / "models", progress=False)
            steps, batch = args.cnn3d_steps, 32
        else:
            res = fit(fam, args.cache, "ubfc", "ubfc", TrainConfig(steps=args.steps, batch=args.batch), subjects=train,
                      out=args.cache / "models", progress=False)
            steps, batch = args.steps, args.batch
        train_s = time.perf_counter() - t0
        scores, m = evaluate_checkpoint(res["checkpoint"], args.cache, "ubfc", "ubfc", subjects=test)
        out["results"][fam] = {"steps": steps, "batch": batch, "train_s": round(train_s, 1),
                               "loss_first": res["losses"][0], "loss_last": res["losses"][-1],
                               "metrics": asdict(m), "clips": [asdict(s) for s in scores]}
        print(f"{fam}: {steps} steps in {train_s:.0f} s; n={m.n} MAE {m.mae:.2f} RMSE {m.rmse:.2f} "
              f"MAPE {m.mape:.1f} % r {m.pearson_r:.3f} SNR {m.snr_db:.2f} dB", flush=True)
    if out["results"]:  # the reference HR of a clip is the same whichever family was scored
        some_clips = next(iter(out["results"].values()))["clips"]
        out["constant_baseline"] = constant_baseline(build, train, some_clips)
        print(f"constant {out['constant_baseline']['hr_bpm']:.1f} bpm: MAE {out['constant_baseline']['mae']:.2f}")
    path = Path(__file__).parent / "results" / f"train-eval-{out['date']}.json"
    path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(path)


if __name__ == "__main__":
    main()
