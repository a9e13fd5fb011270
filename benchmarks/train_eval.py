"""Train every family on real clips, then score it on held-out subjects beside POS and a constant (run by hand).

    # CPU recipe (README): STGNet on 16-px crops, Meta-rPPG on 32-px crops, both `temporal`
    .venv/bin/python benchmarks/train_eval.py --cache CACHE --families stgnet --size-px 16 --norm temporal \\
        --lr 1e-3 --batch 4 --steps 1500 --threads 1
    .venv/bin/python benchmarks/train_eval.py --cache CACHE --families meta-rppg --meta-size-px 32 \\
        --norm temporal --lr 1e-3 --batch 4 --steps 1000 --threads 1
    # a CUDA machine: every family at the paper's input size, in under 10 minutes in all
    .venv/bin/python benchmarks/train_eval.py --cache CACHE --device cuda

CACHE holds a build of the 8 real UBFC-rPPG subjects (``rppg-prep build ubfc --root
../shared/data/ubfc-rppg --cache CACHE``) and, for the 3D-CNN, the synthetic build (``rppg-prep build
synthetic --cache CACHE``; built here when missing). STGNet, Meta-rPPG and IENet (RGB only) train on
every subject but the ``--test`` ones (default subject8 and subject9) with
:func:`rppg_models.train.fit`, for ``--steps`` steps or ``--minutes`` minutes, whichever comes first;
the 3D-CNN trains on its synthetic videos alone, as in its paper. Each is scored by
:func:`rppg_models.evaluate.evaluate_checkpoint` on every clip of the test subjects: HR per clip
(Welch peak of the predicted BVP on the frame clock) against the clip's label HR (``--hr-label``,
default the median of the beats), MAE / RMSE / MAPE / Pearson r over the clips, SNR, and the mean
per-clip Pearson r between the predicted and the label BVP. On the same clips: POS on the face-skin
ROI (no training) and a constant predictor (the mean label HR of the training clips).

With ``--device cuda`` the defaults become a GPU plan (the paper's input sizes, ``temporal`` pixel
normalisation, batch 8, 1.5 minutes of training per family, AMP on; under 10 minutes in all) and the
JSON also records the GPU's name and each family's peak GPU memory. On
a machine without CUDA, ``--device cuda`` stops at once with a clear message; ``--device cpu`` (or
``auto`` without a GPU) never touches CUDA. Writes
``benchmarks/results/train-eval-<date>-<device>-<families>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from rppg_models.data import hr_label_array
from rppg_models.evaluate import evaluate_checkpoint, hr_on_clock
from rppg_models.train import FAMILIES, TrainConfig, fit, fit_cnn3d, pick_device
from rppg_prep import open_build
from rppg_prep.errors import StoreError
from rppg_prep.protocols import metrics

ALL_FAMILIES = [*sorted(FAMILIES), "cnn3d"]


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


def constant_baseline(build: dict, train: list[str], clips: list[dict], hr_label: str) -> dict:
    """The floor a model must beat: every test clip predicted at the mean label HR of the training clips."""
    const = float(np.nanmean(np.concatenate([hr_label_array(build[s]["labels"], "clip_", hr_label) for s in train])))
    return {"hr_bpm": const, **summary([const] * len(clips), [c["hr_ref_bpm"] for c in clips])}


def pos_baseline(build: dict, clips: list[dict]) -> dict:
    """POS (Wang 2017) on the face-skin ROI of each clip: HR as the models' (Welch on the frame clock), BVP r."""
    from rppg_prep.scoring import skin_rgb
    from rppg_prep.methods import get_method

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
    return summary(pred, [c["hr_ref_bpm"] for c in clips], rs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--families", nargs="+", default=None, choices=ALL_FAMILIES)
    ap.add_argument("--test", nargs="+", default=["subject8", "subject9"], help="held-out subjects")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--steps", type=int, default=None, help="steps per family (default 100000 on CUDA: time-bound)")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training minutes per family (default 1.5 on CUDA, unlimited on the CPU)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default 4 on the CPU, 8 on CUDA)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--size-px", type=int, default=None, help="STGNet: resize crops to this side when read")
    ap.add_argument("--frames", type=int, default=None, help="STGNet: clip length in frames")
    ap.add_argument("--meta-size-px", type=int, default=None, help="Meta-rPPG: resize crops to this side (>= 32)")
    ap.add_argument("--amp", default="auto", choices=("auto", "on", "off"))
    ap.add_argument("--norm", default=None,
                    help="pixel normalisation instead of the family's (e.g. temporal; the default on CUDA)")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 0 on the CPU, 2 on CUDA)")
    ap.add_argument("--hr-label", default="beats", choices=("beats", "welch"))
    ap.add_argument("--cnn3d-steps", type=int, default=None, help="3D-CNN steps (default 300 on the CPU, 3000 on CUDA)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()
    dev = pick_device(args.device)  # raises here, before any work, when CUDA is asked for and absent
    cuda = dev.type == "cuda"
    torch.set_num_threads(args.threads)
    steps = args.steps or (100_000 if cuda else 100)
    minutes = args.minutes if args.minutes is not None else (1.5 if cuda else None)
    norm = args.norm or ("temporal" if cuda else None)
    batch = args.batch or (8 if cuda else 4)
    workers = args.workers if args.workers is not None else (2 if cuda else 0)
    families = args.families or ALL_FAMILIES
    build = open_build(args.cache, "ubfc", "ubfc")
    train = [s for s in build if s not in args.test]
    clips = clip_table(build, args.test, args.hr_label)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "device": str(dev), "hr_label": args.hr_label,
           "gpu": torch.cuda.get_device_name(dev) if cuda else None, "threads": args.threads,
           "train_subjects": train, "test_subjects": args.test, "n_clips": len(clips), "results": {}}
    t_all = time.perf_counter()
    out["constant"] = constant_baseline(build, train, clips, args.hr_label)
    out["pos"] = pos_baseline(build, clips)
    for fam in families:
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
        if fam == "cnn3d":
            n = args.cnn3d_steps or (3000 if cuda else 300)
            try:
                open_build(args.cache, "synthetic", "synthetic")
            except StoreError:  # no synthetic build yet: make it (a few seconds)
                from click.testing import CliRunner

                from rppg_prep.cli import main as cli
                CliRunner().invoke(cli, ["build", "synthetic", "--cache", str(args.cache)], catch_exceptions=False)
            res = fit_cnn3d(args.cache, steps=n, batch=32, device=str(dev), out=args.cache / "models", progress=False)
            cfg = {"steps": n, "batch": 32, "lr": 1e-3}
        else:
            size_px = {"stgnet": args.size_px, "meta-rppg": args.meta_size_px}.get(fam)
            tc = TrainConfig(steps=steps, batch=batch, lr=args.lr, amp=args.amp, workers=workers,
                             max_minutes=minutes, norm=norm, size_px=size_px,
                             frames=args.frames if fam == "stgnet" else None)
            res = fit(fam, args.cache, "ubfc", "ubfc", tc, subjects=train, device=str(dev),
                      out=args.cache / "models", progress=False)
            cfg = asdict(tc)
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        scores, _ = evaluate_checkpoint(res["checkpoint"], args.cache, "ubfc", "ubfc", subjects=args.test,
                                        device=str(dev), hr_label=args.hr_label)
        eval_s = time.perf_counter() - t1
        losses = res["losses"]
        k = max(1, len(losses) // 20)
        out["results"][fam] = {
            "config": cfg, "steps_run": len(losses), "train_s": round(train_s, 1), "eval_s": round(eval_s, 1),
            "train_clips_per_s": res["clips_per_s"], "eval_clips_per_s": len(scores) / eval_s,
            "gpu_peak_mb": torch.cuda.max_memory_allocated(dev) / 2**20 if cuda else None,
            "loss_first": float(np.mean(losses[:k])), "loss_last": float(np.mean(losses[-k:])),
            "checkpoint": str(res["checkpoint"]),
            **summary([s.hr_pred_bpm for s in scores], [s.hr_ref_bpm for s in scores], [s.bvp_r for s in scores]),
            "clips": [asdict(s) for s in scores]}
        r = out["results"][fam]
        print(f"{fam}: {r['steps_run']} steps in {train_s:.0f} s; MAE {r['mae']:.2f} r {r['pearson_r']:.3f} "
              f"BVP r {r['bvp_r']:.3f}", flush=True)
    out["wall_s"] = round(time.perf_counter() - t_all, 1)
    print(f"\n{len(clips)} clips of {', '.join(args.test)}; reference: {args.hr_label} HR of the labels\n")
    print("| method | training | MAE bpm | RMSE bpm | MAPE % | Pearson r | per-clip BVP r |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    c = out["constant"]
    print(f"| constant {c['hr_bpm']:.1f} bpm | none | {c['mae']:.2f} | {c['rmse']:.2f} | {c['mape']:.1f} | n/a | n/a |")
    p = out["pos"]
    print(f"| POS | none | {p['mae']:.2f} | {p['rmse']:.2f} | {p['mape']:.1f} | {p['pearson_r']:.3f} | "
          f"{p['bvp_r']:.3f} |")
    for fam, r in out["results"].items():
        cfg = r["config"]
        print(f"| {fam} | {r['steps_run']} steps x {cfg['batch']}, {r['train_s'] / 60:.1f} min | {r['mae']:.2f} | "
              f"{r['rmse']:.2f} | {r['mape']:.1f} | {r['pearson_r']:.3f} | {r['bvp_r']:.3f} |")
    which = "all" if families == ALL_FAMILIES else "-".join(families)
    dest = Path(__file__).parent / "results" / f"train-eval-{time.strftime('%Y-%m-%d')}-{dev.type}-{which}.json"
    dest.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(dest)


if __name__ == "__main__":
    main()
