"""UBFC-rPPG loader: layouts, natural order, clocks, dropouts, and the DATASET_1 format."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.datasets import ubfc
from rppg_prep.errors import DatasetLayoutError, GroundTruthError
from rppg_prep.sample import write_ubfc_sample


def test_real_subjects_in_natural_order_with_their_quirks(real_data):
    subs = ubfc.find_subjects(real_data / "ubfc-rppg")
    assert [s.id for s in subs] == ["subject3", "subject4", "subject5", "subject8", "subject9", "subject10",
                                    "subject11", "subject12"]
    assert all(s.fmt == "DATASET_2" and s.video.name == "vid.mp4" for s in subs)
    truths = {s.id: ubfc.read_truth(s) for s in subs}
    for sid, t in truths.items():
        assert t.frame_locked and t.t_s[0] == 0.0 and np.all(np.diff(t.t_s) > 0), sid
    # subject4's logger clock starts at 23.575 s: re-based, and said so
    assert any("23.575" in n for n in truths["subject4"].notes)
    assert truths["subject4"].t_s[-1] == pytest.approx(46.234, abs=1e-3)
    # subject11's oximeter drops out to 1-3 bpm; those are masked, its real 127-bpm runs are kept
    hr11 = truths["subject11"].hr_bpm
    raw11 = np.array((real_data / "ubfc-rppg" / "subject11" / "ground_truth.txt").read_text().split("\n")[1].split(),
                     dtype=float)
    assert np.all(np.isnan(hr11[raw11 < 30]))
    assert np.sum(raw11 < 30) > 100
    assert np.sum(hr11 == 127) > 100
    assert np.all(np.isfinite(truths["subject12"].hr_bpm))


def test_single_subject_folder_is_a_root(real_data):
    (s,) = ubfc.find_subjects(real_data / "ubfc-rppg-short")
    assert s.id == "ubfc-rppg-short" and s.video.name == "vid.avi"


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        ubfc.find_subjects(tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="no UBFC-rPPG subject"):
        ubfc.find_subjects(tmp_path)


def test_repeated_and_backwards_timestamps():
    t, n = ubfc.repair_clock(np.array([0.0, 0.1, 0.1, 0.1, 0.4]))
    assert n == 2 and t.tolist() == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match="backwards"):
        ubfc.repair_clock(np.array([0.0, 0.2, 0.1]))


def test_ground_truth_with_unequal_lines_is_refused(tmp_path):
    d = tmp_path / "subject1"
    d.mkdir()
    (d / "vid.avi").write_bytes(b"")
    (d / "ground_truth.txt").write_text("1 2 3\n60 60 60\n0 0.1\n")
    (s,) = ubfc.find_subjects(tmp_path)
    with pytest.raises(GroundTruthError, match="differ in length") as err:
        ubfc.read_truth(s)
    assert "subject1" in str(err.value) and "ground_truth.txt" in str(err.value)


def _to_dataset1(src_subject, dst: object, ppg_fs_hz: float = 62.0) -> None:
    """Rewrite a DATASET_2 sample subject as DATASET_1: gtdump.xmp (ms, HR, SpO2, PPG) at ~62 Hz."""
    ppg, hr, ts = (np.array(ln.split(), float) for ln in src_subject.ground_truth.read_text().splitlines())
    t = np.arange(0.0, ts[-1], 1.0 / ppg_fs_hz)
    rows = np.stack([np.round(t * 1000.0), np.interp(t, ts, hr), np.full_like(t, 98.0), np.interp(t, ts, ppg)], 1)
    dst.mkdir()
    (dst / "vid.avi").write_bytes(src_subject.video.read_bytes())
    np.savetxt(dst / "gtdump.xmp", rows, delimiter=",", fmt="%.4f")


def test_dataset1_layout_builds_and_recovers_the_hr(tmp_path):
    (s,) = write_ubfc_sample(tmp_path / "src", n_subjects=1, duration_s=12.0, seed=5)
    root = tmp_path / "DATASET_1"
    root.mkdir()
    _to_dataset1(s, root / "5-gt")
    (sub,) = ubfc.find_subjects(root)
    assert sub.fmt == "DATASET_1" and sub.id == "5-gt"
    truth = ubfc.read_truth(sub)
    assert not truth.frame_locked and 1.0 / np.median(np.diff(truth.t_s)) == pytest.approx(62.0, rel=0.02)
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    lab = rppg_prep.open_build(tmp_path / "c", "ubfc", "ubfc")["5-gt"]["labels"]
    assert lab["bvp"].shape == (360,)
    assert abs(np.nanmedian(lab["hr_bpm"][:]) - s.hr_bpm) < 1.5
