"""The training layer's commands of the ``rppg-prep`` CLI: ``train``, and the report of
``rppg-prep evaluate --checkpoint``.

They are registered as entry points (``rppg_prep.commands`` and ``rppg_prep.checkpoint_report`` in
``pyproject.toml``), so ``rppg_prep`` never imports ``rppg_models``; torch is imported only when a
command runs.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from rppg_models.families import AUGMENT, NORMALIZATIONS, REGISTRY, SCHEDULES, SELECT
from rppg_prep.cli import DEFAULT_CACHE, stderr_console, load_pipeline_or_exit

__all__ = ["train", "report_checkpoint"]


@click.command()
@click.argument("model", type=click.Choice(["st2s-cnn", "st2s", *REGISTRY]))
@click.option("--build", "pipeline", default=None,
              help="Pipeline whose build to train on [default: ubfc; synthetic for cnn3d].")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Store root holding the build; checkpoints go to CACHE/models/.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True,
              help="Stage-1 CNN epochs per leave-one-subject-out fold.")
@click.option("--threshold-bpm", type=click.FloatRange(min=0.0, min_open=True), default=5.0, show_default=True,
              help="ST2S split: an ST image whose stage-1 error exceeds this many bpm is bad.")
@click.option("--stage2-epochs", type=click.IntRange(min=1), default=30, show_default=True,
              help="Stage-2 classifier epochs per fold (st2s only).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="Torch device; auto takes CUDA when present.")
@click.option("--steps", type=click.IntRange(min=1), default=100, show_default=True,
              help="stgnet / meta-rppg / ienet / cnn3d: optimiser steps.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="stgnet / meta-rppg / ienet / cnn3d: clips per step [default: 4; 32 for cnn3d].")
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="stgnet / meta-rppg / ienet / cnn3d: Adam learning rate [default: 1e-4; 1e-3 for cnn3d, "
                   "Keras' default as in the paper].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="stgnet / meta-rppg / ienet: checkpoint folder (default CACHE/models).")
@click.option("--subjects", default=None,
              help="stgnet / meta-rppg / ienet: comma-separated training subjects (default: every subject).")
@click.option("--frames", type=click.IntRange(min=16), default=None,
              help="stgnet: clip length in frames (default the paper's 160; a CPU recipe may use fewer).")
@click.option("--size-px", type=click.IntRange(min=8), default=None,
              help="stgnet, meta-rppg (>= 32): resize the 64-px crops to this side when read (CPU recipe: 16 for "
                   "stgnet, 32 for meta-rppg).")
@click.option("--amp", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Mixed precision: auto = float16 on CUDA, off on the CPU; on = bfloat16 on the CPU.")
@click.option("--norm", type=click.Choice(NORMALIZATIONS), default=None,
              help="stgnet / meta-rppg / ienet: pixel normalisation instead of the family's (raw); temporal removes "
                   "each pixel's clip mean (Meta-rPPG CPU recipe); bandpass also band-passes each pixel to 0.7-3.5 "
                   "Hz, 42-210 bpm (STGNet CPU recipe).")
@click.option("--hr-label", type=click.Choice(["beats", "welch"]), default="beats", show_default=True,
              help="st2s-cnn / st2s: the segment's label HR, the median of the contact PPG's beats (closer to the "
                   "oximeter on UBFC-rPPG) or its Welch peak.")
@click.option("--layout", type=click.Choice(["time", "paper"]), default="time", show_default=True,
              help="st2s-cnn / st2s: stage-1 input, time-preserving (64 face rows x 300 columns, one per frame, each "
                   "row normalised over time) or the paper's 64x64 area-resized image.")
@click.option("--val-subjects", default=None,
              help="stgnet / meta-rppg / ienet: comma-separated validation subjects, never trained on: the "
                   "checkpoint is the state with the best validation score (see --select).")
@click.option("--fold", default=None, metavar="K/N",
              help="stgnet / meta-rppg / ienet: train on fold K of N subject-disjoint folds (K from 0): its "
                   "training subjects, validated on its validation subject; its test subjects are left for "
                   "`rppg-prep evaluate` (rppg_models.folds.kfold_splits). Replaces --subjects/--val-subjects.")
@click.option("--val-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Validate every this many steps.")
@click.option("--select", type=click.Choice(SELECT), default="loss", show_default=True,
              help="Best validation state by the family's loss, or by the clip HR MAE in bpm.")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many validations without improvement [default: never].")
@click.option("--pos-embed", type=click.Choice(["learned", "off"]), default="learned", show_default=True,
              help="stgnet: positional embeddings trained (the paper) or kept at zero (the CPU recipe).")
@click.option("--augment", type=click.Choice(AUGMENT), default="none", show_default=True,
              help="Training windows at random frames of the video (jitter), mirrored left-right (flip), and "
                   "0.7-1.4 clip lengths long resampled to one clip, which scales their HR by 0.7-1.4 "
                   "(speed); none = the stored clips, as the papers.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="constant", show_default=True,
              help="Learning rate: constant (the papers'), or linear warm-up over 10 % of the steps then cosine "
                   "decay to 0.")
def train(model: str, pipeline: str, cache: Path, epochs: int, threshold_bpm: float, stage2_epochs: int,
          device: str, steps: int, batch: int, lr: float, out: Path | None, subjects: str | None,
          frames: int | None, size_px: int | None, amp: str, norm: str | None, hr_label: str, layout: str,
          val_subjects: str | None, fold: str | None, val_every: int, select: str, patience: int | None,
          pos_embed: str, augment: str, schedule: str) -> None:
    """Train MODEL on a finished build.

    st2s-cnn: the ST2S stage-1 CNN (HR in bpm from ST images: --layout time, one column per frame, or
    the paper's 64x64), leave one subject out, then per subject the held-out predictions and the
    good/bad split as store nodes. st2s: the same, then the stage-2 HOG + MLP classifier, and a
    table of HR per 10-s segment from stage 1 alone vs two-stage (MAE, RMSE in bpm). stgnet,
    meta-rppg, ienet (RGB only): STEPS optimiser steps on the build's clips (BVP labels), a progress
    bar with loss and clips/s, and a checkpoint recording the build.
    cnn3d: Bousefsaf's 3D-CNN on the synthetic build alone, as in the paper (`rppg-prep build
    synthetic` first; STEPS steps of BATCH 60-frame videos, noise-class videos drawn on the fly);
    score it on real clips with `rppg-prep evaluate ubfc --checkpoint ...`.
    """
    from rppg_models.train import pick_device

    pipeline = pipeline or ("synthetic" if model == "cnn3d" else "ubfc")
    batch = batch or (32 if model == "cnn3d" else 4)
    lr = lr or (1e-3 if model == "cnn3d" else 1e-4)
    if model == "cnn3d":
        from rppg_models.train import fit_cnn3d
        from rppg_prep.errors import RppgPrepError

        pipe = load_pipeline_or_exit(pipeline)
        try:
            res = fit_cnn3d(cache, pipe.dataset, pipe.name, steps=steps, batch=batch, lr=lr, device=device,
                            out=out or Path(cache) / "models")
        except (RppgPrepError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"cnn3d: {len(res['losses'])} steps on {res['device']}, loss {res['losses'][0]:.4f} -> "
                   f"{res['losses'][-1]:.4f}, train accuracy {res['accuracy']:.2f}, {res['clips_per_s']:.0f} clips/s, "
                   f"checkpoint {res['checkpoint']}")
        return

    if model in REGISTRY:
        from rppg_models.train import TrainConfig, fit

        from rppg_prep.errors import RppgPrepError

        pipe = load_pipeline_or_exit(pipeline)
        train_ids = [s.strip() for s in subjects.split(",") if s.strip()] if subjects else None
        val_ids = [s.strip() for s in val_subjects.split(",") if s.strip()] if val_subjects else None
        try:
            if fold is not None:
                train_ids, val_ids = _fold_subjects(cache, pipe.dataset, pipe.name, fold)
            cfg = TrainConfig(steps=steps, batch=batch, lr=lr, frames=frames, size_px=size_px, amp=amp, norm=norm,
                              val_every=val_every, select=select, patience=patience, pos_embed=pos_embed,
                              augment=augment, schedule=schedule)
            res = fit(model, cache, pipe.dataset, pipe.name, cfg, subjects=train_ids, val_subjects=val_ids,
                      device=device, out=out or Path(cache) / "models")
        except (RuntimeError, ValueError, KeyError, RppgPrepError) as exc:
            raise click.ClickException(str(exc)) from None
        best = (f", best validation at step {res['best_step']} ({select} {res['val'][-1][select]:.4f} at the end)"
                if res["val"] else "")
        click.echo(f"{model}: {len(res['losses'])} steps on {res['device']}, loss {res['losses'][0]:.4f} -> "
                   f"{res['losses'][-1]:.4f}, {res['clips_per_s']:.1f} clips/s{best}, checkpoint {res['checkpoint']}")
        return

    from rppg_models import st2s_pipeline as P
    from rppg_prep.errors import RppgPrepError

    console = stderr_console()
    try:
        dev = str(pick_device(device))
    except (RuntimeError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        pipe = load_pipeline_or_exit(pipeline)
        with console.status("loading ST images"):
            from rppg_prep import open_build

            data = {sid: P.load_subject(sid, n, hr_label, layout)
                    for sid, n in open_build(cache, pipe.dataset, pipe.name).items()}
        with console.status("stage 1: training one CNN per held-out subject") as st:
            cfg = P.Stage1Config(epochs=epochs, hr_label=hr_label, layout=layout)
            key, path = P.train_stage1(cache, pipe.dataset, pipe.name, cfg, data=data, device=dev,
                                       progress=lambda i, n: st.update(f"stage 1: fold {i}/{n} done"))
        keys = P.write_split(cache, pipe.dataset, pipe.name, key, path, threshold_bpm, data=data, hr_label=hr_label)
    except (RppgPrepError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    console.print(f"stage-1 checkpoint {path} (key {key[:12]}); split nodes for {len(keys)} subject(s)")
    if model == "st2s-cnn":
        return
    with console.status("stage 2: training the good/bad classifier per held-out subject"):
        res = P.stage2(cache, pipe.dataset, pipe.name, keys, P.Stage2Config(epochs=stage2_epochs, hr_label=hr_label),
                       data=data, device=dev)
    from rich.table import Table

    table = Table(title="ST2S, HR per 10-s segment, leave one subject out (bpm)")
    for col in ("subject", "stage 1 MAE", "stage 1 RMSE", "two-stage MAE", "two-stage RMSE", "kept"):
        table.add_column(col, justify="left" if col == "subject" else "right")
    for sid, r in res.items():
        e1, e2 = r["stage1_bpm"] - r["label_bpm"], r["two_stage_bpm"] - r["label_bpm"]
        table.add_row(sid, f"{np.nanmean(np.abs(e1)):.1f}", f"{np.sqrt(np.nanmean(e1**2)):.1f}",
                      f"{np.nanmean(np.abs(e2)):.1f}", f"{np.sqrt(np.nanmean(e2**2)):.1f}", f"{r['keep_fraction']:.0%}")
    console.print(table)


def _fold_subjects(cache: Path, dataset: str, pipeline: str, fold: str) -> tuple[list[str], list[str]]:
    """Training and validation subjects of ``K/N`` (:func:`rppg_models.folds.kfold_splits`)."""
    from rppg_models.folds import kfold_splits
    from rppg_prep import open_build

    try:
        k, n = (int(v) for v in fold.split("/"))
    except ValueError:
        raise ValueError(f"--fold takes K/N (e.g. 0/4), got {fold!r}") from None
    splits = kfold_splits(list(open_build(cache, dataset, pipeline)), n)
    if not 0 <= k < n:
        raise ValueError(f"--fold {fold}: K must be in [0, {n})")
    click.echo(f"fold {k}/{n}: train {', '.join(splits[k].train)}; validate on {', '.join(splits[k].val)}; "
               f"test (not used here) {', '.join(splits[k].test)}")
    return splits[k].train, splits[k].val


def report_checkpoint(console, checkpoint: Path, cache: Path, pipe, subjects: list[str], device: str,
                      adapt_steps: int, csv_path: Path | None, hr_label: str = "beats") -> None:
    """``rppg-prep evaluate --checkpoint``: score a checkpoint on a build and print (and CSV) the table.

    Registered as the ``rppg_prep.checkpoint_report`` entry point, so the preprocessing package
    reaches the training layer without importing it.

    Parameters
    ----------
    console : rich.console.Console
    checkpoint : Path
        A checkpoint of :func:`rppg_models.train.fit` or :func:`rppg_models.train.fit_cnn3d`.
    cache : Path
    pipe : rppg_prep.pipeline.Pipeline
    subjects : list of str
        Subjects to score (built).
    device : str
        ``auto``, ``cpu`` or ``cuda``.
    adapt_steps : int
        Meta-rPPG transductive adaptation steps per subject.
    csv_path : Path, optional
        One row per clip.
    hr_label : {"beats", "welch"}
        The clip's reference HR.

    Raises
    ------
    click.ClickException
        The checkpoint does not fit the build (exit 1).
    """
    import csv

    from rich.table import Table

    from rppg_models.evaluate import evaluate_checkpoint

    try:
        scores, m = evaluate_checkpoint(checkpoint, cache, pipe.dataset, pipe.name, subjects=subjects, device=device,
                                        adapt_steps=adapt_steps, hr_label=hr_label)
    except (ValueError, KeyError, RuntimeError) as exc:
        text = str(exc).strip("'\"")  # a KeyError quotes its message
        raise click.ClickException(text if str(checkpoint) in text else f"{checkpoint}: {text}") from None
    table = Table(title=f"{checkpoint.name} on {pipe.name}: HR per clip (reference: {hr_label} HR of the labels)")
    for col in ("subject", "clips", "HR pred (bpm)", "HR ref (bpm)", "MAE (bpm)", "BVP r"):
        table.add_column(col, justify="left" if col == "subject" else "right")
    for sid in subjects:
        mine = [s for s in scores if s.subject == sid]
        if mine:
            p, r = np.array([s.hr_pred_bpm for s in mine]), np.array([s.hr_ref_bpm for s in mine])
            table.add_row(sid, str(len(mine)), f"{np.nanmedian(p):.1f}", f"{np.nanmedian(r):.1f}",
                          f"{np.nanmean(np.abs(p - r)):.1f}", f"{np.nanmean([s.bvp_r for s in mine]):.2f}")
    console.print(table)
    console.print(f"overall (n={m.n} clips): MAE {m.mae:.2f} ± {m.mae_se:.2f} bpm, RMSE {m.rmse:.2f} ± {m.rmse_se:.2f} "
                  f"bpm, MAPE {m.mape:.2f} ± {m.mape_se:.2f} %, Pearson r {m.pearson_r:.3f} ± {m.pearson_r_se:.3f}, "
                  f"SNR {m.snr_db:.2f} ± {m.snr_db_se:.2f} dB")
    if csv_path is not None:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["subject", "clip", "hr_pred_bpm", "hr_ref_bpm", "snr_db", "bvp_r"])
            for s in scores:
                w.writerow([s.subject, s.clip, f"{s.hr_pred_bpm:.3f}", f"{s.hr_ref_bpm:.3f}", f"{s.snr_db:.3f}",
                            f"{s.bvp_r:.4f}"])
        console.print(f"csv: {csv_path}")
