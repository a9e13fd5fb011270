"""The ``rppg-prep`` command line."""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

import click
import numpy as np

# MediaPipe / TFLite log through glog to stderr; keep warnings, drop their info chatter
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DEFAULT_CACHE = "cache"


def stderr_console():
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        console.width = max(console.width, 120)  # logs and CI: don't fold the summary table to 80 columns
    return console


def _split(values: tuple[str, ...]) -> list[str]:
    return [v for item in values for v in item.replace(",", " ").split() if v]


def _split_ids(values: tuple[str, ...]) -> list[str]:
    """Subject ids from ``--subjects``: split on commas only (an id may hold spaces), each stripped."""
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


class _PluginGroup(click.Group):
    """The core commands, plus those other packages register as ``rppg_prep.commands`` entry points
    (the training layer's ``train``): loaded only when named or listed, so the core never imports them."""

    @staticmethod
    def _plugins() -> dict:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group="rppg_prep.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        cmd = super().get_command(ctx, name)
        if cmd is None and name in (plugins := self._plugins()):
            cmd = plugins[name].load()
        return cmd


def _plugin(group: str, what: str):
    """The object registered under entry-point ``group`` (a hook of the training layer).

    Raises
    ------
    click.ClickException
        Nothing is registered: the training layer (``rppg_models``) is not installed.
    """
    from importlib.metadata import entry_points

    eps = list(entry_points(group=group))
    if not eps:
        raise click.ClickException(f"scoring {what} needs the training layer (rppg_models), which is not installed; "
                                   "reinstall rppg-prep with `pip install -e .`")
    return eps[0].load()


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rppg-prep")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Prepare rPPG datasets: face video -> stabilised face crops, clips, ST images and labels in zarr.

    Start with `rppg-prep build ubfc`: with no --root it builds a small synthetic UBFC-rPPG sample
    generated on first use, so it needs no download.
    """
    from rich.logging import RichHandler

    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=stderr_console(), show_path=False)])


def _pipeline_options(fn):
    fn = click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE,
                      show_default=True,
                      help="Store root: zarr stores, build manifests and input fingerprints live here.")(fn)
    fn = click.option("--root", type=click.Path(file_okay=False, path_type=Path),
                      help="Dataset folder (for UBFC-rPPG: the folder holding subject*/). Default: the "
                           "embedded synthetic sample, generated under CACHE/samples on first use.")(fn)
    fn = click.option("--subjects", multiple=True, metavar="ID[,ID...]",
                      help="Only these subjects, comma-separated (e.g. subject3,subject10); repeatable. An id "
                           "with spaces is quoted: --subjects \"subject 1,subject 2\". Default: every subject "
                           "under --root.")(fn)
    return click.argument("pipeline", default="ubfc")(fn)


def _resolve(pipeline: str, root: Path | None, cache: Path, subjects: tuple[str, ...], console,
             generate: bool = True):
    from rppg_prep.datasets import get_loader
    from rppg_prep.errors import RppgPrepError

    try:
        pipe = load_pipeline_or_exit(pipeline)
        loader = get_loader(pipe.dataset)
        if root is None:
            root = _default_root(pipe.dataset, cache, console, generate=generate)
        found = loader.find_subjects(root)
    except (RppgPrepError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    wanted = _split_ids(subjects)
    if wanted:
        known = {s.id: s for s in found}
        missing = [w for w in wanted if w not in known]
        if missing:
            raise click.UsageError(f"unknown subject(s) {missing} under {root}; found: {', '.join(known)}")
        found = [known[w] for w in wanted]
    return pipe, root, found


@main.command()
@_pipeline_options
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes. 1 builds in this process; more start a dask LocalCluster of that many "
                   "single-threaded processes (each needs ~400 MB).")
@click.option("--scheduler", default=None, metavar="threads|local-cluster|tcp://HOST:PORT|tls://HOST:PORT",
              help="Where tasks run. threads (default with --workers 1): this process, one lane for video "
                   "passes and one for the other stages. local-cluster: dask.distributed on this machine "
                   "(127.0.0.1 only). tcp:// or tls://HOST:PORT: an existing dask.distributed scheduler (the "
                   "cache must be on storage every worker sees, at the same absolute path). Anyone who can "
                   "reach a tcp:// scheduler can run code on its workers and on this client: use tls:// "
                   "(README: Scheduler security).")
@click.option("--tls-ca-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="tls:// scheduler: the CA certificate (default: dask config distributed.comm.tls.ca-file).")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="tls:// scheduler: this client's certificate (default: distributed.comm.tls.client.cert).")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="tls:// scheduler: this client's private key, if not in --tls-cert "
                   "(default: distributed.comm.tls.client.key).")
@click.option("--dashboard", is_flag=True,
              help="local-cluster: serve dask's dashboard on 127.0.0.1 (a free port, logged; needs bokeh). "
                   "Off by default: no HTTP listener at all.")
@click.option("--force", multiple=True, metavar="STAGE",
              help="Recompute this stage's nodes even if they exist (decode, landmarks, face, clips, st_map, labels).")
@click.option("--dry-run", is_flag=True, help="Print the plan (per subject and stage: fresh or what will run, "
                                              "and why) and exit without building.")
def build(pipeline: str, root: Path | None, cache: Path, subjects: tuple[str, ...], workers: int,
          scheduler: str | None, tls_ca_file: Path | None, tls_cert: Path | None, tls_key: Path | None,
          dashboard: bool, force: tuple[str, ...], dry_run: bool) -> None:
    """Build PIPELINE (default: ubfc, from pipelines/ubfc.yaml or the stage defaults).

    PIPELINE is a dataset name (`rppg-prep datasets` lists them with the files --root must hold),
    a config under pipelines/, or a YAML file. Without --root, ubfc and synthetic generate their
    samples under CACHE/samples; every other dataset needs --root.

    Per subject: decode the video (frame times in s), track face landmarks (MediaPipe Face Mesh),
    crop stabilised 128x128 faces, cut clips (160 frames of 64x64 by default), make ST2S
    spatiotemporal images (10-s segments, 3-px strips) and labels (the contact PPG on the frame
    clock: the logged capture times where the dataset has them, e.g. UBFC-rPPG line 3, else the
    video's; HR in bpm per window as the median of the beats, the default label, and as the Welch
    peak in 0.7-3.5 Hz; SNR in dB). Nodes whose key (params,
    code version, inputs) already exists are reused. Exit code 1 if any subject failed; every other
    subject is still built. A subject fails, naming its file, when its ground truth has a timestamp
    that is not a number, a capture clock (UBFC-rPPG line 3) more than 20 % from the video's fps or
    more than 20 % of the video's duration away from its clock, or a contact signal that is flat or
    has more than 50 % of its samples missing (not a number, or flat for 2 s or longer); fewer
    missing samples are a note, and the HR windows touching them are NaN.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from rppg_prep.build import environment_threads
    from rppg_prep.dag import run_build
    from rppg_prep.errors import RppgPrepError

    console = stderr_console()
    environment_threads()
    pipe, root, found = _resolve(pipeline, root, cache, subjects, console, generate=not dry_run)
    if dry_run:
        _status_table(console, pipe, found, cache, title=f"plan of {pipe.name} (dry run: nothing built)")
        return
    scheduler = scheduler or ("threads" if workers == 1 else "local-cluster")
    if dashboard and scheduler != "local-cluster":
        raise click.UsageError("--dashboard starts the dashboard of a local-cluster only; a remote scheduler "
                               "serves its own")
    tls = {k: str(v.resolve()) for k, v in (("tls_ca_file", tls_ca_file), ("tls_client_cert", tls_cert),
                                            ("tls_client_key", tls_key)) if v is not None}
    console.print(f"[bold]build[/] {pipe.name}: {len(found)} subject(s) from {root} into {cache} ({scheduler})")
    t0 = time.perf_counter()
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        tasks = {s.id: bar.add_task(f"{s.id} queued", total=None) for s in found}

        def progress(sid: str, stage: str, done: int, total: int) -> None:
            bar.update(tasks[sid], description=f"{sid} {stage}", completed=done, total=total)

        def on_result(res) -> None:
            bar.update(tasks[res.subject], description=f"{res.subject} {res.status}", completed=1, total=1)

        try:
            results = run_build(pipe, found, cache, root=root, scheduler=scheduler, workers=workers,
                                force=_split(force), security=tls or None, dashboard=dashboard,
                                progress=progress, on_result=on_result)
        except RppgPrepError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # the manifest, a lock or a fingerprint memo could not be written
            raise click.ClickException(
                f"cannot write to the cache {cache}: {exc.strerror or exc} ({getattr(exc, 'filename', '') or ''}). "
                "Every node committed so far is intact; free space or make the cache writable, then run the "
                "build again") from None
    _summary(console, results, time.perf_counter() - t0)
    from rppg_prep.manifest import manifest_path

    console.print(f"manifest: {manifest_path(cache, pipe.dataset, pipe.name)}")
    if any(r.status != "ok" for r in results):
        sys.exit(1)


@main.command()
@_pipeline_options
def status(pipeline: str, root: Path | None, cache: Path, subjects: tuple[str, ...]) -> None:
    """Per subject and stage of PIPELINE: fresh, stale (with what changed), missing or failed (with the error).

    Exit code 1 when anything is not fresh.
    """
    console = stderr_console()
    pipe, root, found = _resolve(pipeline, root, cache, subjects, console, generate=False)
    if not _status_table(console, pipe, found, cache, title=f"status of {pipe.name} ({root})"):
        sys.exit(1)


def _status_table(console, pipe, subjects, cache: Path, title: str) -> bool:
    from rich.table import Table

    from rppg_prep.stages import ORDER
    from rppg_prep.maintenance import subject_status

    table = Table(title=title)
    table.add_column("subject")
    for stage in ORDER:
        table.add_column(stage)
    table.add_column("why", overflow="fold")
    colour = {"fresh": "green", "stale": "yellow", "missing": "blue", "failed": "red"}
    all_fresh = True
    for subj in subjects:
        st = subject_status(pipe, subj, cache)
        all_fresh &= all(v[0] == "fresh" for v in st.values())
        reasons = [f"{stage}: {why}" for stage, (state, why) in st.items() if why]
        cells = (f"[{colour[st[s][0]]}]{st[s][0]}[/]" for s in ORDER)
        table.add_row(subj.id, *cells, "\n".join(dict.fromkeys(reasons)))
    console.print(table)
    return all_fresh


#: columns of ``evaluate --csv`` (the writer and the help both read this)
SCORES_CSV_COLUMNS = ("subject", "window", "hr_pred_bpm", "hr_ref_bpm", "snr_db")
#: ``--hr-label`` choices and default: models.data.HR_LABELS / DEFAULT_HR_LABEL (tests/test_help_truth.py)
HR_LABELS, DEFAULT_HR_LABEL = ("beats", "welch"), "beats"


def _roi_description() -> str:
    from rppg_prep.roi import ROI_DESCRIPTION

    return ROI_DESCRIPTION


@main.command()
@_pipeline_options
@click.option("--method", type=click.Choice(["green", "chrom", "pos", "ica", "lgi", "pbv"]), default="pos",
              show_default=True, help=f"Unsupervised rPPG method run on the mean RGB of the crops' skin ROI: "
                                      f"{_roi_description()}.")
@click.option("--mode", type=click.Choice(["toolbox", "windowed"]), default="toolbox", show_default=True,
              help="toolbox: one HR per whole video (rPPG-Toolbox protocol: detrend lambda=100, band-pass, "
                   "FFT peak); windowed: one HR per --window-s window every --stride-s.")
@click.option("--band-hz", nargs=2, type=float, default=(0.75, 2.5), show_default=True,
              help="HR band, Hz (0.75 2.5 = 45-150 bpm, the NeurIPS 2023 protocol; the Toolbox now uses 0.6 3.3).")
@click.option("--window-s", type=click.FloatRange(min=2.0), default=10.0, show_default=True,
              help="Windowed mode: window length, seconds.")
@click.option("--stride-s", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Windowed mode: step between windows, seconds.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Write one row per subject (toolbox mode, window 0) or per window: {', '.join(SCORES_CSV_COLUMNS)} "
                   "(with --checkpoint one per clip: subject, clip, hr_pred_bpm, hr_ref_bpm, snr_db, bvp_r).")
@click.option("--plots", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNGs here: Bland-Altman, predicted vs reference HR, per-subject BVP + spectrum.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Score this trained model (from `rppg-prep train`) instead of --method: one HR per clip "
                   "from its predicted BVP (Welch peak, 42-210 bpm) against the contact PPG's over the same frames.")
@click.option("--adapt-steps", type=click.IntRange(min=0), default=0, show_default=True,
              help="Meta-rPPG checkpoints: transductive adaptation steps on each subject's clips first.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="With --checkpoint: auto = CUDA when present.")
@click.option("--hr-label", type=click.Choice(HR_LABELS), default=DEFAULT_HR_LABEL, show_default=True,
              help="With --checkpoint: the reference HR of a clip, the median of the contact PPG's beats (closer "
                   "to the oximeter on UBFC-rPPG) or its Welch peak.")
@click.option("--dry-run", is_flag=True, help="Print what would be built and scored, and where results would go; "
                                              "build, score and write nothing.")
def evaluate(pipeline: str, root: Path | None, cache: Path, subjects: tuple[str, ...], method: str, mode: str,
             band_hz: tuple[float, float], window_s: float, stride_s: float, csv_path: Path | None,
             plots: Path | None, checkpoint: Path | None, adapt_steps: int, device: str, hr_label: str,
             dry_run: bool) -> None:
    """Score an unsupervised method (GREEN, CHROM, POS, ...) or a trained model (--checkpoint) on
    PIPELINE's build: HR in bpm against the HR of the contact PPG computed the same way; MAE, RMSE,
    MAPE, Pearson r (with standard errors), SNR.

    Missing nodes are built first (with --root, or the embedded sample without it).
    """
    from rich.table import Table

    from rppg_prep.build import environment_threads
    from rppg_prep.dag import run_build
    from rppg_prep.scoring import evaluate_build
    from rppg_prep.protocols import metrics

    console = stderr_console()
    environment_threads()
    pipe, root, found = _resolve(pipeline, root, cache, subjects, console, generate=not dry_run)
    if dry_run:
        _status_table(console, pipe, found, cache, title=f"plan of {pipe.name} (dry run: nothing built or scored)")
        what = f"checkpoint {checkpoint}" if checkpoint is not None else f"{method.upper()} ({mode}, {band_hz[0]}-{band_hz[1]} Hz)"
        console.print(f"would score {what} on {len(found)} subject(s): {', '.join(s.id for s in found)}")
        for label, out in (("csv", csv_path), ("png", plots)):
            if out is not None:
                console.print(f"would write {label}: {out}")
        return
    results = run_build(pipe, found, cache, root=root)
    failed = [r for r in results if r.status != "ok"]
    for r in failed:
        console.print(f"[red]not evaluated[/] {r.subject}: {r.error}")
    ok = [r.subject for r in results if r.status == "ok"]
    if not ok:
        raise click.ClickException("no subject built; nothing to evaluate")
    if checkpoint is not None:
        _plugin("rppg_prep.checkpoint_report", "a trained checkpoint")(
            console, checkpoint, cache, pipe, ok, device, adapt_steps, csv_path, hr_label)
        if failed:
            sys.exit(1)
        return
    scores = evaluate_build(cache, pipe.dataset, pipe.name, method, mode=mode, band_hz=tuple(band_hz),
                            window_s=window_s, stride_s=stride_s, subjects=ok)
    table = Table(title=f"{method.upper()} on {pipe.name} ({mode}, {band_hz[0]}-{band_hz[1]} Hz)")
    for col in ("subject", "HR pred (bpm)", "HR ref (bpm)", "|error| (bpm)", "SNR (dB)"):
        table.add_column(col, justify="left" if col == "subject" else "right")
    for s in scores:
        err = np.nanmean(np.abs(s.hr_pred_bpm - s.hr_ref_bpm))
        table.add_row(s.subject, f"{np.nanmedian(s.hr_pred_bpm):.1f}", f"{np.nanmedian(s.hr_ref_bpm):.1f}",
                      f"{err:.1f}", f"{s.snr_db:.1f}")
    console.print(table)
    pred = np.concatenate([s.hr_pred_bpm for s in scores])
    ref = np.concatenate([s.hr_ref_bpm for s in scores])
    if len(pred) >= 2:
        m = metrics(pred, ref, snr_db=[s.snr_db for s in scores])
        console.print(f"overall (n={m.n}): MAE {m.mae:.2f} ± {m.mae_se:.2f} bpm, RMSE {m.rmse:.2f} ± {m.rmse_se:.2f} "
                      f"bpm, MAPE {m.mape:.2f} ± {m.mape_se:.2f} %, Pearson r {m.pearson_r:.3f} ± "
                      f"{m.pearson_r_se:.3f}, SNR {m.snr_db:.2f} ± {m.snr_db_se:.2f} dB")
    if csv_path is not None:
        _write_scores_csv(csv_path, scores)
        console.print(f"csv: {csv_path}")
    if plots is not None:
        for path in _score_plots(plots, scores, method, band_hz=tuple(band_hz)):
            console.print(f"png: {path}")
    if failed:
        sys.exit(1)


def _write_scores_csv(path: Path, scores) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SCORES_CSV_COLUMNS)
        for s in scores:
            for i, (p, r) in enumerate(zip(s.hr_pred_bpm, s.hr_ref_bpm)):
                w.writerow([s.subject, i, f"{p:.3f}", f"{r:.3f}", f"{s.snr_db:.3f}"])


def _score_plots(out: Path, scores, method: str, band_hz: tuple[float, float] = (0.75, 2.5)) -> list[Path]:
    from rppg_prep import plots

    out.mkdir(parents=True, exist_ok=True)
    pred = np.concatenate([s.hr_pred_bpm for s in scores])
    ref = np.concatenate([s.hr_ref_bpm for s in scores])
    paths = []
    if len(pred) >= 2:
        paths.append(plots.bland_altman(pred, ref, out / f"{method}_bland_altman.png", title=method.upper()))
        paths.append(plots.pred_vs_ref(pred, ref, out / f"{method}_pred_vs_ref.png", title=method.upper()))
    for s in scores:
        paths.append(plots.bvp_and_spectrum(s.bvp_pred, s.fs_hz, out / f"{method}_{s.subject}_bvp.png",
                                            bvp_ref=s.bvp_ref, hr_pred_bpm=float(np.nanmedian(s.hr_pred_bpm)),
                                            hr_ref_bpm=float(np.nanmedian(s.hr_ref_bpm)), band_hz=band_hz,
                                            title=f"{method.upper()} {s.subject}"))
    return paths


@main.command("inspect")
@click.argument("pipeline", default="ubfc")
@click.argument("subject", required=False)
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Store root holding the build.")
@click.option("--png", "png_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write PNGs here, per subject: face crops with landmarks, ST images of segment 0, labels "
                   "(and the lag curve with --alignment).")
@click.option("--alignment", is_flag=True, default=False,
              help="Also check that the label lines up with the pixels: per subject, the window-mean Pearson r "
                   "(10-s windows, 5-s stride, 0.7-3.5 Hz) between POS on the crops and the label shifted by "
                   "-1..+1 s. An aligned label peaks at lag 0 s. Reads every crop (a few s per subject).")
def inspect_command(pipeline: str, subject: str | None, cache: Path, png_dir: Path | None, alignment: bool) -> None:
    """What a build of PIPELINE stores: per subject, stage and array the shape, dtype, chunks, MB on disk
    and compression ratio (uncompressed / stored). SUBJECT (e.g. subject3) limits it to one subject.
    """
    from rich.table import Table

    from rppg_prep.errors import RppgPrepError
    from rppg_prep.report import inspect_png, summarize_build

    console = stderr_console()
    try:
        pipe = load_pipeline_or_exit(pipeline)
        rows = summarize_build(cache, pipe.dataset, pipe.name, subject)
    except RppgPrepError as exc:
        raise click.ClickException(str(exc)) from None
    table = Table(title=f"build {pipe.name} of {pipe.dataset} in {cache}")
    for col, just in (("subject", "left"), ("stage", "left"), ("array", "left"), ("shape", "right"),
                      ("dtype", "left"), ("chunks", "right"), ("MB on disk", "right"), ("ratio", "right")):
        table.add_column(col, justify=just, no_wrap=col in ("stage", "array"))
    for r in rows:
        ratio = "-" if r["ratio"] != r["ratio"] else ("inf" if r["ratio"] == float("inf") else f"{r['ratio']:.2f}")
        subj = r["subject"] if r["status"] == "ok" else f"{r['subject']} [red]({r['status']})[/]"
        mb = r["bytes_stored"] / 1e6
        table.add_row(subj, r["stage"], r["array"], "x".join(map(str, r["shape"])), r["dtype"],
                      "x".join(map(str, r["chunks"])), "<0.01" if 0 < mb < 0.005 else f"{mb:.2f}", ratio)
    stored, raw = sum(r["bytes_stored"] for r in rows), sum(r["nbytes"] for r in rows)
    table.caption = (f"{len({r['subject'] for r in rows})} subject(s), {stored / 1e6:.1f} MB on disk, "
                     f"{raw / 1e6:.1f} MB uncompressed (ratio {raw / max(stored, 1):.2f})")
    console.print(table)
    sids = list(dict.fromkeys(r["subject"] for r in rows))
    curves = {}
    if alignment:
        from rppg_prep.report import subject_alignment

        lag_table = Table(title="label vs pixels: window-mean r between POS and the label shifted by a lag")
        for col in ("subject", "r at 0 s", "r at -0.5 s", "r at +0.5 s", "best lag (s)", "r at best", "windows"):
            lag_table.add_column(col, justify="left" if col == "subject" else "right")
        for sid in sids:
            c = subject_alignment(cache, pipe.dataset, pipe.name, sid)
            if c is None:
                lag_table.add_row(sid, "-", "-", "-", "-", "-", "0")
                continue
            curves[sid] = c
            lag_table.add_row(sid, f"{c.at(0.0):.3f}", f"{c.at(-0.5):.3f}", f"{c.at(0.5):.3f}",
                              f"{c.best_lag_s:+.2f}", f"{float(np.nanmax(c.r)):.3f}", str(c.n_windows))
        if curves:
            mean0 = np.mean([c.at(0.0) for c in curves.values()])
            lag_table.caption = (f"mean r at lag 0: {mean0:.3f}. An aligned label peaks at 0 s; a peak elsewhere "
                                 "or no clear peak means the label is on another clock.")
        console.print(lag_table)
    if png_dir is not None:
        for sid in sids:
            try:
                paths = inspect_png(cache, pipe.dataset, pipe.name, sid, png_dir, alignment=curves.get(sid))
            except RppgPrepError as exc:
                raise click.ClickException(str(exc)) from None
            for p in paths:
                click.echo(str(p))


@main.command("datasets")
@click.argument("name", required=False)
def datasets_command(name: str | None) -> None:
    """List the dataset loaders and the files each expects under --root (or one: NAME).

    Build one with `rppg-prep build NAME --root FOLDER`; NAME is also the pipeline config
    pipelines/NAME.yaml when there is one (stage defaults otherwise).
    """
    from rich.table import Table

    from rppg_prep.datasets import LOADERS, get_loader
    from rppg_prep.pipeline import pipeline_names

    console = stderr_console()
    names = sorted(LOADERS)
    if name is not None:
        if name not in LOADERS:
            raise click.UsageError(f"unknown dataset {name!r}; known: {', '.join(names)}")
        names = [name]
    shipped = set(pipeline_names())
    table = Table(title="dataset loaders", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("pipeline")
    table.add_column("expected layout under --root")
    for n in names:
        loader = get_loader(n)
        config = f"pipelines/{n}.yaml" if n in shipped else "defaults"
        table.add_row(n, config, loader.LAYOUT)
    console.print(table)


@main.command()
@click.argument("pipeline", default="ubfc")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Store root holding the build.")
@click.option("--repair", is_flag=True,
              help="Rebuild exactly the damaged nodes from the dataset root the build recorded (each replaces "
                   "the damaged one atomically), then verify again.")
def verify(pipeline: str, cache: Path, repair: bool) -> None:
    """Read every chunk of every node of PIPELINE's build and check it against its CRC-32C checksum and
    the node's content digest.

    Prints each missing or corrupt chunk by subject, stage, array and chunk index, and exits 1 when
    any is found (0 when the store is intact). With --repair the damaged nodes are rebuilt and the
    store is verified again.
    """
    from rich.progress import Progress

    from rppg_prep.errors import RppgPrepError
    from rppg_prep.maintenance import verify_build

    console = stderr_console()
    pipe = load_pipeline_or_exit(pipeline)

    def check() -> tuple[int, list]:
        with Progress(transient=True, console=console) as bar:
            task = bar.add_task("verifying nodes", total=None)
            return verify_build(cache, pipe.dataset, pipe.name, progress=lambda d, t: bar.update(task, completed=d,
                                                                                                   total=t))

    try:
        n, problems = check()
    except RppgPrepError as exc:
        raise click.ClickException(str(exc)) from None
    for p in problems:
        click.echo(str(p))
    if not problems:
        click.echo(f"{n} node(s) of {pipe.name} verified: every chunk matches its checksum")
        return
    bad = sorted({(p.subject, p.stage) for p in problems})
    click.echo(f"{len(problems)} problem(s) in {len(bad)} of {n} node(s): "
               + ", ".join(f"{sid}/{st}" for sid, st in bad))
    if not repair:
        click.echo("run `rppg-prep verify --repair` to rebuild them")
        sys.exit(1)
    from rppg_prep.maintenance import repair as repair_build

    try:
        results, removed = repair_build(pipe, cache, problems)
    except RppgPrepError as exc:
        raise click.ClickException(str(exc)) from None
    for r in results:
        click.echo(f"rebuilt {r.subject}: {', '.join(r.ran) or 'nothing'}" if r.status == "ok"
                   else f"could not rebuild {r.subject}: {r.error}")
    for what in removed:
        click.echo(f"removed {what}: derived from a trained model; run `rppg-prep train st2s` to make it again")
    n, problems = check()
    for p in problems:
        click.echo(str(p))
    if problems:
        sys.exit(1)
    click.echo(f"repaired: {n} node(s) verified")


@main.command("gc")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Store root to clean.")
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@click.option("--older-than", "older_than", type=click.FloatRange(min=0), default=None, metavar="DAYS",
              help="Also remove superseded nodes (replaced by a later build of their subject) superseded more "
                   "than DAYS days ago.")
@click.option("--all-stale", is_flag=True, help="Also remove every superseded node.")
def gc_command(cache: Path, dry_run: bool, older_than: float | None, all_stale: bool) -> None:
    """Remove nodes that no build manifest lists, and abandoned partial nodes; report bytes freed.

    \b
    The rule: a node is removed only when no manifest lists it, neither as a
    subject's current node nor as a superseded one (a node a later build of its
    subject replaced). A manifest keeps every subject ever built under its
    pipeline name, whatever --root, config or --subjects a later build had.
    Superseded nodes are removed only with --older-than DAYS or --all-stale.

    \b
    gc removes nothing and exits 1 while a build is using the cache (a build
    that starts meanwhile waits for gc), or when a manifest cannot be read or
    does not validate (the error names it).
    """
    from rppg_prep.maintenance import gc
    from rppg_prep.errors import RppgPrepError

    if older_than is not None and all_stale:
        raise click.UsageError("give --older-than DAYS or --all-stale, not both")
    try:
        removed, freed = gc(cache, dry_run=dry_run, older_than_days=older_than, all_stale=all_stale)
    except RppgPrepError as exc:
        raise click.ClickException(str(exc)) from None
    for p in removed:
        click.echo(f"{'would remove' if dry_run else 'removed'} {p}")
    click.echo(f"{len(removed)} node(s), {freed} bytes ({freed / 1e6:.1f} MB) {'would be ' if dry_run else ''}freed")


class ConfigUsageError(click.ClickException):
    """A pipeline config that does not validate: exit status 2, as for any bad usage."""

    exit_code = 2


def load_pipeline_or_exit(name: str):
    """The pipeline NAME (a YAML path, a shipped config or a dataset's defaults); exit 2 when it is invalid."""
    from rppg_prep.errors import ConfigError
    from rppg_prep.pipeline import load_pipeline

    try:
        return load_pipeline(name)
    except ConfigError as exc:
        raise ConfigUsageError(str(exc)) from None


def _default_root(dataset: str, cache: Path, console, generate: bool = True) -> Path:
    from rppg_prep.sample import default_sample_dir, ensure_ubfc_sample

    def absent() -> click.ClickException:  # a read-only command (status, dry runs) never writes, not even the sample
        return click.ClickException(f"no --root given and no generated {dataset} sample in {cache}: "
                                    f"`rppg-prep build {dataset}` generates and builds it, or give --root")

    if dataset == "synthetic":
        from rppg_prep.datasets.synthetic import ensure_synthetic, synthetic_dir

        if not generate and not synthetic_dir(cache).exists():
            raise absent()
        return ensure_synthetic(cache)
    if dataset != "ubfc":
        raise click.UsageError(f"--root is required for dataset {dataset!r} (only ubfc and synthetic are "
                               "generated when it is left out)")
    if not (default_sample_dir(cache) / ".complete").exists():
        if not generate:
            raise absent()
        console.print("no --root given: generating the embedded UBFC-rPPG sample (synthetic, ~10 s) ...")
    return ensure_ubfc_sample(cache)


def _summary(console, results, wall_s: float) -> None:
    from rich.table import Table

    table = Table(title=f"build summary ({wall_s:.1f} s wall)")
    for col, just in (("subject", "left"), ("status", "left"), ("frames", "right"), ("seconds", "right"),
                      ("MB", "right"), ("ran / reason", "left")):
        table.add_column(col, justify=just, overflow="fold")
    by_note: dict[str, list[str]] = {}
    for r in results:
        for n in dict.fromkeys(r.notes or ()):
            by_note.setdefault(n, []).append(r.subject)
    shared = {n: sids for n, sids in by_note.items() if len(sids) > 1}  # said once, below the table
    for r in results:
        status = "[green]ok[/]" if r.status == "ok" else f"[red]failed[/] ({r.failed_stage})"
        detail = r.error if r.status != "ok" else (", ".join(r.ran) or "all fresh")
        own = [n for n in dict.fromkeys(r.notes or ()) if n not in shared]
        if own:
            detail += "\n" + "\n".join(f"note: {n}" for n in own)
        table.add_row(r.subject, status, str(r.frames), f"{r.seconds:.1f}", f"{r.bytes / 1e6:.1f}", detail)
    total_frames = sum(r.frames for r in results)
    n_ok = sum(r.status == "ok" for r in results)
    # a rate only over the subjects where something ran: reused nodes cost no frame of work
    reused = sum(len(r.nodes) - len(r.ran) for r in results if r.status == "ok")
    built = [r for r in results if r.ran]
    caption = f"{n_ok}/{len(results)} ok, {total_frames} frames"
    if not built:
        caption += f", nothing ran: {reused} nodes reused"  # the rows say "all fresh" per subject
    else:
        built_frames = sum(r.frames for r in built)
        caption += (f", {built_frames / max(wall_s, 1e-9):.0f} frames/s over the {len(built)} subject(s) built"
                    + (f", {reused} nodes reused" if reused else ""))
    table.caption = caption
    console.print(table)
    for n, sids in shared.items():
        console.print(f"note ({', '.join(sids)}): {n}", highlight=False, soft_wrap=True)


@main.group()
def sample() -> None:
    """Write a small synthetic dataset in a real dataset's on-disk format (no download needed)."""


@sample.command("ubfc")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write subject*/vid.avi + ground_truth.txt into.")
@click.option("--subjects", "n_subjects", type=click.IntRange(min=1), default=3, show_default=True,
              help="Number of subjects (each at its own HR in bpm).")
@click.option("--duration-s", type=click.FloatRange(min=1.0), default=20.0, show_default=True,
              help="Video length per subject, seconds.")
@click.option("--fps", type=click.FloatRange(min=5.0, max=120.0), default=30.0, show_default=True,
              help="Frame rate, frames per second.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same files).")
def sample_ubfc(out: Path, n_subjects: int, duration_s: float, fps: float, seed: int) -> None:
    """UBFC-rPPG DATASET_2 layout: 640x480 MJPG video of a real face photo (scikit-image's astronaut)
    with head motion and a skin pulse at a known HR, and ground_truth.txt (PPG, HR bpm, time s)."""
    from rich.progress import Progress

    from rppg_prep.sample import write_ubfc_sample

    with Progress(console=stderr_console()) as bar:
        task = bar.add_task("writing sample", total=None)
        subs = write_ubfc_sample(out, n_subjects=n_subjects, duration_s=duration_s, fps=fps, seed=seed,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
    for s in subs:
        click.echo(f"{s.id}\t{s.hr_bpm:.1f} bpm\t{s.video}")


@sample.command("synthetic")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to write synthetic.json + c<NN>/frames.npy + truth.csv into.")
@click.option("--videos-per-class", type=click.IntRange(min=1), default=4, show_default=True,
              help="60-frame (2-s) videos per HR class; each class is one subject.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed, same files).")
def sample_synthetic(out: Path, videos_per_class: int, seed: int) -> None:
    """Write Bousefsaf's pseudo-PPG videos (75 HR classes, 55-240 bpm, 25x25 px, 30 fps) as a dataset.

    Build it with `rppg-prep build synthetic --root OUT`, train the 3D-CNN on it with
    `rppg-prep train cnn3d`.
    """
    from rppg_prep.datasets.synthetic import write_synthetic

    with stderr_console().status("writing synthetic videos"):
        ids = write_synthetic(out, videos_per_class=videos_per_class, seed=seed)
    click.echo(f"wrote {len(ids)} subjects ({videos_per_class} videos each) to {out}")


@main.group("export")
def export_group() -> None:
    """Write a build in another toolbox's on-disk layout."""


@export_group.command("toolbox")
@click.argument("pipeline", metavar="BUILD")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Export root (rPPG-Toolbox's CACHED_PATH): NAME/<subject>_input<k>.npy, _label<k>.npy and "
                   "DataFileLists/NAME_0.0_1.0.csv.")
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_CACHE, show_default=True,
              help="Store root holding the build.")
@click.option("--chunk-length", type=click.IntRange(min=0), default=180, show_default=True,
              help="CHUNK_LENGTH in frames: non-overlapping chunks from frame 0, the remainder dropped; "
                   "0 = DO_CHUNK False (the whole video as one chunk).")
@click.option("--size", type=click.IntRange(min=1), default=None,
              help="RESIZE.W = RESIZE.H in pixels (the Toolbox's configs use 72) [default: the stored crop size].")
@click.option("--data-types", default="DiffNormalized,Standardized", show_default=True,
              help="DATA_TYPE: comma-separated Raw, DiffNormalized, Standardized, concatenated on the channel axis.")
@click.option("--label-type", type=click.Choice(["Raw", "DiffNormalized", "Standardized"]),
              default="DiffNormalized", show_default=True, help="LABEL_TYPE.")
@click.option("--name", default=None, help="The export's folder name; set the Toolbox's EXP_DATA_NAME to it "
                                           "[default: DATASET_SizeW.._ClipLength.._DataType.._LabelType.._rppg-prep].")
def export_toolbox_command(pipeline: str, out: Path, cache: Path, chunk_length: int, size: int | None,
                           data_types: str, label_type: str, name: str | None) -> None:
    """Export the build of BUILD (a pipeline) in rPPG-Toolbox's cached layout, from the stored face crops
    and frame-clock BVP; train on it with DO_PREPROCESS False, CACHED_PATH = OUT, EXP_DATA_NAME = NAME."""
    from rppg_prep.errors import ConfigError, RppgPrepError
    from rppg_prep.export import export_toolbox

    pipe = load_pipeline_or_exit(pipeline)
    try:
        res = export_toolbox(cache, pipe.dataset, pipe.name, out, chunk_length=chunk_length, size=size,
                             data_types=_split((data_types,)), label_type=label_type, name=name)
    except ConfigError as exc:
        raise ConfigUsageError(str(exc)) from None
    except RppgPrepError as exc:
        raise click.ClickException(str(exc)) from None
    for sid, n in res["chunks"].items():
        click.echo(f"{sid}\t{n} chunk(s)\t{res['dropped'][sid]} frame(s) dropped")
    click.echo(f"wrote {len(res['inputs'])} input/label pairs to {res['folder']}")
    click.echo(f"file list: {res['file_list']}")


if __name__ == "__main__":
    main()
