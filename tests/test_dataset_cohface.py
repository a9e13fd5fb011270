"""COHFACE: a miniature in the real layout (<subject>/<session>/data.avi at 20 fps + data.hdf5 with
pulse / respiration / time written by h5py), built through the CLI."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import h5py
import numpy as np
import pytest

from miniature import build_and_check, build_fails_naming, recording
from rppg_prep.datasets import cohface
from rppg_prep.errors import GroundTruthError

FPS = 20.0
HR = {"1-0": 66.0, "2-1": 96.0}
#: id -> (sensor rate Hz, first `time` value s). 2-1's sensor clock runs at 250 Hz although the
#: dataset's nominal rate is 256 Hz: only reading `time` keeps its BVP on the frames.
CLOCKS = {"1-0": (256.0, 0.0), "2-1": (250.0, 1407.25)}


def write_session(folder, rec, rate_hz: float, t0: float, *, with_time: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    vw = cv2.VideoWriter(str(folder / "data.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    for f in rec.frames_bgr():
        vw.write(f)
    vw.release()
    t = np.arange(int((rec.t_s[-1] + 0.5) * rate_hz)) / rate_hz  # from the first frame to past the last
    pulse, _ = rec.contact_ppg(t)
    with h5py.File(folder / "data.hdf5", "w") as f:
        f.create_dataset("pulse", data=pulse)
        f.create_dataset("respiration", data=np.sin(2 * np.pi * 0.25 * t))
        if with_time:
            f.create_dataset("time", data=t0 + t)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("cohface")
    recs = {}
    for k, (sid, hr) in enumerate(HR.items()):
        subj, sess = sid.split("-")
        recs[sid] = recording(hr, fps=FPS, seed=k)
        write_session(root / subj / sess, recs[sid], *CLOCKS[sid])
    return root, recs


@pytest.fixture(scope="module")
def built(mini, tmp_path_factory):
    root, _ = mini
    cache = tmp_path_factory.mktemp("cohface_cache")
    return build_and_check("cohface", root, cache, HR), cache


def test_find_subjects(mini, tmp_path):
    root, _ = mini
    assert [s.id for s in cohface.find_subjects(root)] == ["1-0", "2-1"]
    assert [s.id for s in cohface.find_subjects(root / "2")] == ["2-1"]
    (one,) = cohface.find_subjects(root / "2" / "1")
    assert one.id == "2-1" and one.video.name == "data.avi" and one.truth == (root / "2" / "1" / "data.hdf5",)
    # natural order, data.mkv copies, and a session lacking its hdf5 is still listed
    for rel in ("10/3/data.mkv", "10/3/data.hdf5", "2/0/data.avi", "2/0/data.hdf5", "9/1/data.avi"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    subs = cohface.find_subjects(tmp_path)
    assert [s.id for s in subs] == ["2-0", "9-1", "10-3"]
    assert [s.video.name for s in subs] == ["data.avi", "data.avi", "data.mkv"]
    assert not subs[1].truth[0].exists()


def test_build_finds_the_hr_and_uses_the_time_dataset(mini, built):
    _, recs = mini
    nodes, _ = built
    for sid, rec in recs.items():
        bvp = nodes[sid]["labels"]["bvp"][:]
        assert bvp.shape == rec.pulse.shape
        assert np.corrcoef(bvp, rec.pulse)[0, 1] > 0.95


def test_time_is_relative_and_i_over_256_without_it(mini, tmp_path):
    root, recs = mini
    truth = cohface.read_truth(cohface.find_subjects(root / "2" / "1")[0])
    assert truth.t_s[0] == 0.0 and truth.t_s[1] == pytest.approx(1 / 250.0)
    assert any("250.0 Hz" in n for n in truth.notes)
    # with i / 256 the 250-Hz pulse would slip 0.28 s behind by the end and lose the frames
    t_wrong = np.arange(truth.ppg.size) / 256.0
    rec = recs["2-1"]
    assert np.corrcoef(np.interp(rec.t_s, t_wrong, truth.ppg), rec.pulse)[0, 1] < 0.5
    write_session(tmp_path / "3" / "0", recording(80.0, fps=FPS, duration_s=2.0), 256.0, 5.0, with_time=False)
    truth = cohface.read_truth(cohface.find_subjects(tmp_path / "3" / "0")[0])
    assert truth.t_s[1] == 1 / 256.0 and any("no 'time'" in n for n in truth.notes)


def test_missing_hdf5_names_the_file(mini, built, tmp_path):
    root, _ = mini
    cache = tmp_path / "cache"
    shutil.copytree(built[1], cache)  # the video nodes are reused: only the labels stage runs and fails
    (tmp_path / "bad" / "1" / "0").mkdir(parents=True)
    shutil.copy2(root / "1" / "0" / "data.avi", tmp_path / "bad" / "1" / "0" / "data.avi")
    out = build_fails_naming("cohface", tmp_path / "bad", cache, "data.hdf5")
    assert "missing" in out


def test_hdf5_without_pulse_and_corrupt_hdf5(tmp_path):
    folder = tmp_path / "4" / "2"
    folder.mkdir(parents=True)
    with h5py.File(folder / "data.hdf5", "w") as f:
        f.create_dataset("respiration", data=np.zeros(512))
        f.create_dataset("time", data=np.arange(512) / 256.0)
    (s,) = cohface.find_subjects(folder)
    assert s.id == "4-2"
    with pytest.raises(GroundTruthError, match="no 'pulse'") as err:
        cohface.read_truth(s)
    assert err.value.path == str(folder / "data.hdf5") and err.value.subject == "4-2"
    (folder / "data.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(GroundTruthError, match="HDF5") as err:
        cohface.read_truth(s)
    assert err.value.path == str(folder / "data.hdf5")


def test_import_is_light():
    code = "import sys, rppg_prep.datasets.cohface; assert 'h5py' not in sys.modules and 'scipy.io' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
