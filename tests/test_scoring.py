"""Unsupervised methods through the pipeline: skin ROI traces, POS on the real subjects, the CLI."""

from __future__ import annotations

import csv

import cv2
import numpy as np
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.scoring import evaluate_build
from rppg_prep.protocols import metrics
from rppg_prep.roi import EXCLUDED, roi_mask, to_crop_coords


def test_skin_roi_covers_the_face_but_not_eyes_or_lips(real_build):
    _, cache, _ = real_build
    nodes = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject8"]
    t = 900
    lm = to_crop_coords(nodes["landmarks"]["landmarks"][t:t + 1], nodes["face"]["box"][t:t + 1], 128)[0]
    mask = roi_mask(lm, 128)
    assert 0.2 < mask.mean() < 0.7
    for part in ("eye_left", "eye_right", "lips"):
        cx, cy = np.round(lm[list(EXCLUDED[part])].mean(axis=0)).astype(int)
        assert mask[cy, cx] == 0, part
    # skin is redder than it is blue in RGB; the background of UBFC is not
    skin = cv2.mean(nodes["face"]["frames"][t], mask=mask)[:3]
    assert skin[0] > skin[2] + 10


def test_pos_whole_video_mae_on_the_real_subjects(real_build):
    """POS on the 8 real subjects, Toolbox protocol, against the ground-truth PPG's HR: MAE <= 8 bpm."""
    _, cache, _ = real_build
    scores = evaluate_build(cache, "ubfc", "ubfc", "pos")
    assert len(scores) == 8
    pred = np.concatenate([s.hr_pred_bpm for s in scores])
    ref = np.concatenate([s.hr_ref_bpm for s in scores])
    m = metrics(pred, ref)
    assert m.n == 8 and m.mae <= 8.0, [(s.subject, s.hr_pred_bpm, s.hr_ref_bpm) for s in scores]
    # GREEN on the same traces is much worse on these compressed videos: the ROI trace is not trivial
    green = evaluate_build(cache, "ubfc", "ubfc", "green")
    g = metrics(np.concatenate([s.hr_pred_bpm for s in green]), ref)
    assert g.mae > m.mae


def test_evaluate_cli_writes_csv_and_plots(real_data, real_build, tmp_path):
    root, cache, _ = real_build
    out_csv, plots = tmp_path / "pos.csv", tmp_path / "plots"
    res = CliRunner().invoke(main, ["evaluate", "--method", "pos", "--root", str(root), "--cache", str(cache),
                                    "--csv", str(out_csv), "--plots", str(plots)])
    assert res.exit_code == 0, res.output
    assert "MAE" in res.output
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["subject"] for r in rows] == ["subject3", "subject4", "subject5", "subject8", "subject9", "subject10",
                                            "subject11", "subject12"]
    assert all(40 < float(r["hr_pred_bpm"]) < 160 and 40 < float(r["hr_ref_bpm"]) < 160 for r in rows)
    pngs = sorted(plots.glob("*.png"))
    assert len(pngs) == 2 + 8
    for p in pngs:
        img = cv2.imread(str(p))
        assert img is not None and img.shape[1] > 300 and img.std() > 5, p


def test_windowed_mode_gives_one_row_per_window(real_build):
    _, cache, _ = real_build
    (s,) = evaluate_build(cache, "ubfc", "ubfc", "chrom", mode="windowed", subjects=["subject12"])
    assert len(s.hr_pred_bpm) == len(s.hr_ref_bpm) > 40
    assert np.nanmedian(np.abs(s.hr_pred_bpm - s.hr_ref_bpm)) < 5.0  # subject12 is a clean recording
