"""Whole builds on real UBFC-rPPG recordings (the 8 subjects of ../shared/data and the 2.5-s cut)."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

import rppg_prep
from conftest import video_frame_count
from rppg_prep.cli import main
from rppg_prep.stages.st_map import strip_columns

SUBJECTS = ["subject3", "subject4", "subject5", "subject8", "subject9", "subject10", "subject11", "subject12"]


def test_all_real_subjects_build_with_expected_arrays(real_build):
    root, cache, result = real_build
    assert result.exit_code == 0, result.output
    build = rppg_prep.open_build(cache, "ubfc", "ubfc")
    assert list(build) == SUBJECTS  # natural order, as the build ran them (not the manifest's lexical keys)
    for sid in SUBJECTS:
        nodes = build[sid]
        n_frames = video_frame_count(root / sid / "vid.mp4")
        crops = nodes["face"]["frames"]
        assert crops.shape == (n_frames, 128, 128, 3) and crops.dtype == np.uint8
        assert nodes["decode"]["t_s"].shape == (n_frames,)
        assert nodes["landmarks"]["landmarks"].shape == (n_frames, 468, 2)
        valid = nodes["face"]["valid"][:]
        assert valid.shape == (n_frames,) and valid.mean() >= 0.95, (sid, valid.mean())
        # a crop is a face, not padding: its centre is bright skin, not the zero fill
        mid = crops[n_frames // 2]
        assert mid[40:90, 40:90].mean() > 40
        clips = nodes["clips"]
        win = clips["window"][:]
        assert clips["clips"].shape == (len(win), 160, 64, 64, 3)
        assert len(win) == (n_frames - 160) // 60 + 1
        assert clips["clips"].chunks == (1, 160, 64, 64, 3)
        st = nodes["st_map"]
        n_seg = st["window"].shape[0]
        assert n_seg == int(n_frames / nodes["face"].attrs["fps"] // 10)
        seg_len = int(st["window"][0, 1] - st["window"][0, 0])
        assert st["images"].shape == (n_seg, len(strip_columns(128, 3, 1 / 6)), 128, 3 * seg_len, 3)
        labels = nodes["labels"]
        assert labels["bvp"].shape == (n_frames,) and np.isfinite(labels["bvp"][:]).all()
        assert labels["clip_hr_bpm"].shape == (len(win),)
        assert labels["st_hr_bpm"].shape == (n_seg,)


def test_st_images_are_strips_of_the_crops(real_build):
    _, cache, _ = real_build
    nodes = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject8"]
    crops, st = nodes["face"]["frames"], nodes["st_map"]
    a, _ = st["window"][1]
    col = int(st["strip_col"][4])
    img = st["images"][1, 4]
    for t in (0, 7, 250):
        np.testing.assert_array_equal(img[:, 3 * t:3 * t + 3], crops[a + t][:, col:col + 3])


def test_labels_hr_agrees_with_oximeter_over_10s_windows(real_build):
    """Median |HR(PPG) - HR(oximeter)| over all 10-s windows (1-s stride) of the 8 subjects <= 3 bpm."""
    _, cache, _ = real_build
    diffs = []
    for sid, nodes in rppg_prep.open_build(cache, "ubfc", "ubfc").items():
        lab = nodes["labels"]
        assert lab.attrs["params"]["window_s"] == 10.0 and lab.attrs["params"]["stride_s"] == 1.0
        hr, dev = lab["hr_bpm"][:], lab["hr_device_window_bpm"][:]
        assert len(hr) > 30
        ok = np.isfinite(dev)
        diffs.append(np.abs(hr[ok] - dev[ok]))
    d = np.concatenate(diffs)
    assert len(d) > 350
    assert np.median(d) <= 3.0, np.median(d)


def test_manifest_records_every_subject_and_noop_rebuild_runs_nothing(real_build):
    root, cache, _ = real_build
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    assert set(man["subjects"]) == set(SUBJECTS)
    assert all(rec["status"] == "ok" for rec in man["subjects"].values())
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache),
                                    "--subjects", "subject5,subject12"])
    assert res.exit_code == 0, res.output
    man2 = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    assert man2["subjects"]["subject5"]["ran"] == [] and man2["subjects"]["subject12"]["ran"] == []
    assert set(man2["subjects"]) == set(SUBJECTS)  # the other subjects stay in the manifest


def test_short_real_clip_builds(real_data, tmp_path):
    root = real_data / "ubfc-rppg-short"
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(tmp_path)])
    assert res.exit_code == 0, res.output
    nodes = rppg_prep.open_build(tmp_path, "ubfc", "ubfc")["ubfc-rppg-short"]
    assert nodes["face"]["frames"].shape == (74, 128, 128, 3)
    assert nodes["face"]["valid"][:].all()
    assert nodes["clips"]["clips"].shape[0] == 0  # 2.5 s is shorter than one 160-frame clip
    assert "extra samples are unused" in " ".join(nodes["labels"].attrs["notes"])
