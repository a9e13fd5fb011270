"""The README's main job: `rppg-prep build ubfc` with no --root builds the embedded sample."""

from __future__ import annotations

import numpy as np
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.sample import SAMPLE_HR_BPM, default_sample_dir


def test_build_without_root_generates_and_builds_the_sample(tmp_path):
    res = CliRunner().invoke(main, ["build", "ubfc", "--cache", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (default_sample_dir(tmp_path) / "subject1" / "ground_truth.txt").exists()
    build = rppg_prep.open_build(tmp_path, "ubfc", "ubfc")
    assert sorted(build) == ["subject1", "subject2", "subject3"]
    for k, sid in enumerate(["subject1", "subject2", "subject3"]):
        nodes = build[sid]
        assert nodes["face"]["frames"].shape == (600, 128, 128, 3)
        assert nodes["face"]["valid"][:].mean() > 0.95
        # the labels recover the HR each subject was generated at
        assert abs(np.nanmedian(nodes["labels"]["hr_bpm"][:]) - SAMPLE_HR_BPM[k]) < 1.5
        assert nodes["labels"]["st_hr_bpm"].shape == (2,)
    assert "3/3 ok" in res.output
    # a second build finds every node and runs nothing
    res2 = CliRunner().invoke(main, ["build", "ubfc", "--cache", str(tmp_path)])
    assert res2.exit_code == 0 and "all fresh" in res2.output
