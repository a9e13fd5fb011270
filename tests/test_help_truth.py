"""The CLI's help, its summaries and its figures say what the code does (issue 22, item 3).

Where a help string can be built from the constant the code uses, it is, and these tests check the
help against that constant; the rest check the rendered text or figure against the values passed.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
from click.testing import CliRunner
from rich.console import Console

from rppg_prep import cli, plots, roi
from rppg_prep.build import ORDER, SubjectResult
from rppg_prep.cli import main

REPO = Path(__file__).resolve().parents[1]


def _help(command: str) -> str:
    res = CliRunner().invoke(main, [command, "--help"], terminal_width=200)
    assert res.exit_code == 0, res.output
    return " ".join(res.output.split())


def _option(command: str, name: str) -> click.Option:
    return next(p for p in main.commands[command].params if p.name == name)


def _capture_figures(monkeypatch) -> list:
    figs = []

    def keep(fig, path):
        figs.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


# ----------------------------------------------------------------------------------------------- help text

def test_method_help_describes_the_roi_the_code_uses():
    text = " ".join(_option("evaluate", "method").help.split())
    assert roi.ROI_DESCRIPTION in text
    assert "forehead + cheek" not in text
    for part in ("eyes", "eyebrows", "lips"):  # every part roi.EXCLUDED cuts out is named
        assert part in roi.ROI_DESCRIPTION


def test_build_help_gives_the_label_clock_and_the_default_hr_label():
    data = pytest.importorskip("models.data")  # the training layer (needs torch)
    text = _help("build")
    assert "on the video clock" not in text
    assert "frame clock: the logged capture times" in text
    default_words = {"beats": "median of the beats", "welch": "Welch peak"}[data.DEFAULT_HR_LABEL]
    assert f"{default_words}, the default label" in text


def test_hr_label_option_matches_the_training_layer():
    data = pytest.importorskip("models.data")
    opt = _option("evaluate", "hr_label")
    assert (cli.HR_LABELS, cli.DEFAULT_HR_LABEL) == (data.HR_LABELS, data.DEFAULT_HR_LABEL)
    assert tuple(opt.type.choices) == data.HR_LABELS and opt.default == data.DEFAULT_HR_LABEL


def test_csv_help_lists_the_columns_the_writer_writes(tmp_path):
    score = SimpleNamespace(subject="subject1", hr_pred_bpm=np.array([70.0, 71.0]),
                            hr_ref_bpm=np.array([69.0, 72.0]), snr_db=3.0)
    path = tmp_path / "scores.csv"
    cli._write_scores_csv(path, [score])
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    header = tuple(rows[0])
    assert header == cli.SCORES_CSV_COLUMNS
    assert all(len(r) == len(header) for r in rows)
    assert ", ".join(header) in " ".join(_option("evaluate", "csv_path").help.split())


def test_readme_batch_sentence_matches_the_code():
    from rppg_prep.build import BATCH_FRAMES
    from rppg_prep.sources import PREFETCH_BATCHES

    readme = (REPO / "README.md").read_text()
    line = next(ln for ln in readme.splitlines() if ln.startswith("| decode |"))
    assert f"batches of {BATCH_FRAMES} " in line
    assert f"{PREFETCH_BATCHES} batches decoded ahead" in line


def test_readme_build_speed_is_the_latest_benchmarks():
    readme = (REPO / "README.md").read_text()
    runs = [json.loads(p.read_text()) for p in (REPO / "benchmarks" / "results").glob("preprocess-every-n-*.json")]
    if not runs:
        pytest.skip("no every-n benchmark")
    latest = max(runs, key=lambda d: d["date"])
    fps = latest["every_n"]["n2"]["build"]["fps"]  # the default every_n_frames = 2
    assert f"{fps:.1f}" in readme
    # no other figure is called the final build speed
    assert not re.search(r"\| metric \| final", readme)


# ----------------------------------------------------------------------------------------------- figures

def test_evaluate_plots_shade_the_scoring_band(monkeypatch, tmp_path):
    figs = _capture_figures(monkeypatch)
    fs, n = 30.0, 600
    t = np.arange(n) / fs
    bvp = np.sin(2 * np.pi * 1.2 * t)
    score = SimpleNamespace(subject="subject1", hr_pred_bpm=np.array([72.0]), hr_ref_bpm=np.array([72.0]),
                            bvp_pred=bvp, bvp_ref=bvp, fs_hz=fs, snr_db=5.0)
    band_hz = (0.75, 2.5)
    cli._score_plots(tmp_path, [score], "pos", band_hz=band_hz)
    assert len(figs) == 1
    ax_f = figs[0].axes[1]
    spans = [p for p in ax_f.patches if p.get_label().startswith("band ")]
    assert len(spans) == 1
    x0, x1 = spans[0].get_x(), spans[0].get_x() + spans[0].get_width()
    assert (x0, x1) == pytest.approx((band_hz[0] * 60, band_hz[1] * 60))
    assert spans[0].get_label() == "band 45-150 bpm"


def test_evaluate_passes_its_band_to_the_plots():
    import inspect

    src = inspect.getsource(cli.evaluate.callback)
    assert "_score_plots(plots, scores, method, band_hz=tuple(band_hz))" in src


def test_labels_hr_axis_has_a_minimum_span(monkeypatch, tmp_path):
    figs = _capture_figures(monkeypatch)
    fs, n = 30.0, 900
    t = np.arange(n) / fs
    windows = np.array([[i, i + 300] for i in range(0, n - 300 + 1, 30)])
    hr = 70.0 + 0.75 * np.sin(np.arange(len(windows)))  # a 1.5-bpm range
    plots.labels_figure(t, np.sin(2 * np.pi * 70 / 60 * t), windows, hr, None, tmp_path / "l.png",
                        hr_beats_bpm=hr + 0.2)
    lo, hi = figs[0].axes[1].get_ylim()
    assert hi - lo >= 20.0
    assert lo < 70.0 < hi
    assert plots.MIN_HR_SPAN_BPM >= 20.0


def test_labels_hr_axis_still_shows_a_wide_range(monkeypatch, tmp_path):
    figs = _capture_figures(monkeypatch)
    t = np.arange(900) / 30.0
    windows = np.array([[i, i + 300] for i in range(0, 601, 30)])
    hr = np.linspace(60.0, 120.0, len(windows))
    plots.labels_figure(t, np.sin(t), windows, hr, None, tmp_path / "l.png")
    lo, hi = figs[0].axes[1].get_ylim()
    assert lo <= 60.0 and hi >= 120.0


def test_contact_sheet_title_is_drawn(monkeypatch, tmp_path):
    figs = _capture_figures(monkeypatch)
    plots.contact_sheet(np.zeros((2, 64, 64, 3), np.uint8), tmp_path / "c.png", title="subject7: face crops")
    assert figs[0].get_suptitle() == "subject7: face crops"


# ----------------------------------------------------------------------------------------------- a real build

@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from rppg_prep.sample import write_ubfc_sample

    tmp = tmp_path_factory.mktemp("help_truth")
    root, cache = tmp / "data", tmp / "cache"
    write_ubfc_sample(root, n_subjects=1, duration_s=12.0, fps=30.0)
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    return root, cache


def test_noop_rebuild_reports_nodes_reused_not_a_rate(built):
    root, cache = built
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    out = " ".join(res.output.split())
    assert "frames/s" not in out
    assert f"nothing ran: {len(ORDER)} nodes reused" in out


def test_crop_sheet_title_names_the_subject(built, monkeypatch, tmp_path):
    from rppg_prep.report import inspect_png

    titles = []
    real = plots.contact_sheet

    def spy(*args, **kwargs):
        titles.append(kwargs.get("title", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "contact_sheet", spy)
    inspect_png(built[1], "ubfc", "ubfc", "subject1", tmp_path / "png")
    assert len(titles) == 1 and "subject1" in titles[0]


def test_summary_rate_counts_only_subjects_that_ran():
    con = Console(record=True, width=200)
    nodes = {s: {"key": "k", "path": "p"} for s in ORDER}
    fresh = SubjectResult(subject="a", frames=300, nodes=dict(nodes))
    ran = SubjectResult(subject="b", frames=600, nodes=dict(nodes), ran=["labels"])
    cli._summary(con, [fresh, ran], wall_s=2.0)
    text = " ".join(con.export_text().split())
    assert "300 frames/s over the 1 subject(s) built" in text
    assert f"{2 * len(ORDER) - 1} nodes reused" in text
