"""UBFC-Phys: a miniature in the real layout (MJPG AVI at 35 fps + headerless 64-Hz BVP CSV)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from miniature import build_and_check, build_fails_naming, recording
from rppg_prep.datasets import ubfc_phys
from rppg_prep.errors import GroundTruthError

FPS = 35.0
HR = {"s1_T1": 66.0, "s2_T3": 96.0}


def _write(folder, sid, rec):
    s, task = sid.split("_")
    folder.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(folder / f"vid_{s}_{task}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for f in rec.frames_bgr():
        vw.write(f)
    vw.release()
    # the E4 samples at 64 Hz on its own clock, from the first frame to past the last one
    t = np.arange(int((rec.t_s[-1] + 0.5) * ubfc_phys.BVP_FS_HZ)) / ubfc_phys.BVP_FS_HZ
    ppg, _ = rec.contact_ppg(t)
    np.savetxt(folder / f"bvp_{s}_{task}.csv", ppg, fmt="%.6f")
    return rec


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("ubfc_phys")
    recs = {sid: _write(root / sid.split("_")[0], sid, recording(hr, fps=FPS, seed=k))
            for k, (sid, hr) in enumerate(HR.items())}
    (root / "s1" / "eda_s1_T1.csv").write_text("0.1\n0.2\n")  # beside the BVP in the real data, ignored
    return root, recs


def test_find_subjects(mini):
    root, _ = mini
    subs = ubfc_phys.find_subjects(root)
    assert [s.id for s in subs] == ["s1_T1", "s2_T3"]
    assert [s.fmt for s in subs] == ["T1", "T3"]
    assert [s.id for s in ubfc_phys.find_subjects(root / "s2")] == ["s2_T3"]


def test_build_finds_the_hr_and_aligns_by_time(mini, tmp_path):
    root, recs = mini
    nodes = build_and_check("ubfc-phys", root, tmp_path / "cache", HR)
    for sid, rec in recs.items():
        bvp = nodes[sid]["labels"]["bvp"][:]
        assert bvp.shape == rec.pulse.shape
        # 64-Hz samples interpolated at the 35-fps frame times follow the pulse the frames show
        assert np.corrcoef(bvp, rec.pulse)[0, 1] > 0.95


def test_missing_and_corrupt_bvp_name_the_file(mini, tmp_path):
    root, _ = mini
    bad = tmp_path / "bad"
    (bad / "s1").mkdir(parents=True)
    (bad / "s1" / "vid_s1_T1.avi").write_bytes((root / "s1" / "vid_s1_T1.avi").read_bytes())
    build_fails_naming("ubfc-phys", bad, tmp_path / "cache", "bvp_s1_T1.csv")
    (bad / "s1" / "bvp_s1_T1.csv").write_text("0.1\nnot-a-number\n")
    with pytest.raises(GroundTruthError, match="numeric") as err:
        ubfc_phys.read_truth(ubfc_phys.find_subjects(bad)[0])
    assert err.value.path.endswith("bvp_s1_T1.csv") and err.value.subject == "s1_T1"


def test_import_is_light():
    code = "import sys, rppg_prep.datasets.ubfc_phys; assert 'h5py' not in sys.modules and 'scipy.io' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
