"""Subject-disjoint folds with a validation subject, and the whole-video (rPPG-Toolbox) HR."""

from __future__ import annotations

import numpy as np
import pytest

from rppg_models.folds import fixed_split, kfold_splits, mean_sd, overlap_average, whole_video_hr

UBFC = ["subject3", "subject4", "subject5", "subject8", "subject9", "subject10", "subject11", "subject12"]


def test_every_subject_is_tested_once_and_never_trained_or_validated_on_in_its_fold():
    splits = kfold_splits(UBFC, 4)
    assert sorted(s for sp in splits for s in sp.test) == sorted(UBFC)
    for sp in splits:
        assert len(sp.val) == 1 and sp.train and len(sp.test) == 2
        assert not set(sp.train) & set(sp.val) and not set(sp.train) & set(sp.test) and not set(sp.val) & set(sp.test)
        assert sorted(sp.train + sp.val + sp.test) == sorted(UBFC)
    assert len({sp.val[0] for sp in splits}) == 4  # each fold validates on another person


def test_too_few_subjects_for_the_folds_is_an_error():
    with pytest.raises(ValueError, match="folds need"):
        kfold_splits(["a", "b"], 2)  # no one left to train on
    with pytest.raises(ValueError):
        kfold_splits(UBFC, 1)


def test_fixed_split_validates_on_a_training_subject_and_refuses_overlaps():
    sp = fixed_split(UBFC, ["subject8", "subject9"])
    assert sp.val == ["subject3"] and "subject3" not in sp.train and "subject8" not in sp.train
    assert fixed_split(UBFC, ["subject8"], ["subject12"]).val == ["subject12"]
    with pytest.raises(ValueError, match="also test"):
        fixed_split(UBFC, ["subject8"], ["subject8"])
    with pytest.raises(ValueError, match="not in the build"):
        fixed_split(UBFC, ["subject99"])


def test_overlapping_clip_predictions_give_one_signal_and_its_toolbox_hr():
    fs, hr = 29.5, 84.0
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.uniform(0.8, 1.2, 1200)) / fs  # an uneven frame clock, as UBFC-rPPG's
    pulse = np.sin(2 * np.pi * hr / 60 * t)
    windows = np.array([(a, a + 160) for a in range(0, 1200 - 160 + 1, 60)])
    # each clip's prediction at its own scale and offset: z-scoring before averaging removes both
    preds = [3.0 * k * pulse[a:b] + k + rng.normal(0, 0.3, b - a) for k, (a, b) in enumerate(windows, 1)]
    sig = overlap_average(preds, windows, 1200)
    stop = windows[-1, 1]
    assert np.isnan(sig[stop:]).all() and np.isfinite(sig[:stop]).all()
    assert np.corrcoef(sig[:stop], pulse[:stop])[0, 1] > 0.95
    assert abs(whole_video_hr(sig, t) - hr) < 2.0  # NaN frames past the last clip are left out
    with pytest.raises(ValueError, match="window"):
        overlap_average([pulse[:10]], windows[:1], 1200)


def test_mean_sd_ignores_non_finite_values():
    m = mean_sd([1.0, 3.0, float("nan")])
    assert (m["mean"], m["n"]) == (2.0, 2) and m["sd"] == pytest.approx(np.sqrt(2))
    assert mean_sd([])["n"] == 0
