"""VIPL-HR: a miniature in the release layout (MJPG AVI whose container says 25 fps for a 30-fps camera,
per-frame time.txt in ms, wave.csv at 60 Hz, gt_HR.csv per second)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from miniature import build, build_and_check, build_fails_naming, recording
from rppg_prep import open_build
from rppg_prep.datasets import vipl_hr
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

CAMERA_FPS, CONTAINER_FPS, WAVE_HZ = 30.0, 25.0, 60.0
HR = {"p1_v1_source1": 66.0, "p2_v3_source4": 96.0}


def _write(folder, rec, *, keep=None, grey=False, time_txt=True):
    """Write one source folder; ``keep`` = indices of the frames the camera delivered (others lost)."""
    folder.mkdir(parents=True)
    keep = np.arange(rec.t_s.size) if keep is None else np.asarray(keep)
    kept = set(keep.tolist())
    vw = cv2.VideoWriter(str(folder / "video.avi"), cv2.VideoWriter_fourcc(*"MJPG"), CONTAINER_FPS, (640, 480),
                         isColor=not grey)
    assert vw.isOpened()
    for i, frame in enumerate(rec.frames_bgr()):
        if i in kept:
            vw.write(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if grey else frame)  # NIR camera: one channel
    vw.release()
    t = rec.t_s[keep]  # the true, jittered frame times; ms resolution like the logger
    if time_txt:
        (folder / "time.txt").write_text("".join(f"{round(v * 1000)}\n" for v in t))
    # the oximeter runs with the video: 60-Hz integer wave from the first frame to one step past the last
    duration = t[-1] + np.median(np.diff(t))
    tw = np.arange(int(round(duration * WAVE_HZ))) / WAVE_HZ
    ppg, _ = rec.contact_ppg(tw)
    (folder / "wave.csv").write_text("Wave\n" + "".join(f"{round(60 + 25 * v)}\n" for v in ppg))
    hr = np.interp(np.arange(int(duration)) + 0.5, rec.t_s, rec.inst_hr_bpm)
    (folder / "gt_HR.csv").write_text("HR\n" + "".join(f"{round(v)}\n" for v in hr))
    (folder / "gt_SpO2.csv").write_text("SpO2\n" + "98\n" * int(duration))
    return keep


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("vipl_hr")
    recs = {}
    for k, (sid, hr) in enumerate(HR.items()):
        p, v, s = sid.split("_")
        recs[sid] = recording(hr, fps=CAMERA_FPS, seed=k)
        _write(root / "data" / p / v / s, recs[sid], grey=s == "source4")
    return root, recs


def test_find_subjects_order_ids_and_nir(tmp_path):
    for rel in ["p10/v1/source1", "p2/v9/source2", "p2/v2-2/source3", "p2/v2/source4", "p2/v2/source1"]:
        (tmp_path / "data" / rel).mkdir(parents=True)
    (tmp_path / "data" / "fold").mkdir()  # beside p*/ in the release
    subs = vipl_hr.find_subjects(tmp_path)
    assert [s.id for s in subs] == ["p2_v2_source1", "p2_v2_source4", "p2_v2-2_source3", "p2_v9_source2",
                                    "p10_v1_source1"]
    assert [s.fmt for s in subs] == ["RGB", "NIR", "RGB", "RGB", "RGB"]
    assert [p.name for p in subs[0].truth] == ["wave.csv", "gt_HR.csv", "time.txt"]
    assert [s.id for s in vipl_hr.find_subjects(tmp_path / "data")] == [s.id for s in subs]
    with pytest.raises(DatasetLayoutError, match="no VIPL-HR"):
        vipl_hr.find_subjects(tmp_path / "data" / "fold")


def test_build_finds_the_hr_on_the_time_txt_clock(mini, tmp_path):
    root, recs = mini
    nodes = build_and_check("vipl-hr", root, tmp_path / "cache", HR)
    for sid, rec in recs.items():
        dec = nodes[sid]["decode"]
        # the frame clock is time.txt (30 fps, jittered), not the container's 25 fps
        assert dec["t_s"][:] == pytest.approx(rec.t_s, abs=1e-6)
        assert dec.attrs["fps"] == pytest.approx(CAMERA_FPS, rel=0.01)
        lab = nodes[sid]["labels"]
        assert np.corrcoef(lab["bvp"][:], rec.pulse)[0, 1] > 0.9
        assert np.nanmedian(lab["hr_device_bpm"][:]) == pytest.approx(HR[sid], abs=3)


def test_labels_line_up_only_on_the_logged_clock(tmp_path):
    """Frames lost by the camera: only time.txt says where the later frames belong."""
    rec = recording(72.0, fps=CAMERA_FPS, seed=7)
    n = rec.t_s.size
    keep = np.setdiff1d(np.arange(n), np.r_[120:150, 240:255])  # a 1-s and a 0.5-s drop
    src = tmp_path / "root" / "data" / "p3" / "v2" / "source1"
    _write(src, rec, keep=keep)
    res = build("vipl-hr", tmp_path / "root", tmp_path / "cache")
    assert res.exit_code == 0, res.output
    bvp = open_build(tmp_path / "cache", "vipl-hr", "vipl-hr")["p3_v2_source1"]["labels"]["bvp"][:]
    truth_pulse = rec.pulse[keep]
    assert np.corrcoef(bvp, truth_pulse)[0, 1] > 0.9
    # the same wave on the container's clock (frame i at i / 25 s, wave stretched over that) does not line up
    wave = np.loadtxt(src / "wave.csv", skiprows=1)
    t_cont = np.arange(keep.size) / CONTAINER_FPS
    t_wave = np.arange(wave.size) * (keep.size / CONTAINER_FPS) / wave.size
    assert np.corrcoef(np.interp(t_cont, t_wave, wave), truth_pulse)[0, 1] < 0.6


def test_truth_rate_is_derived_and_hr_is_mid_second(mini):
    root, recs = mini
    s = vipl_hr.find_subjects(root)[0]
    truth = vipl_hr.read_truth(s)
    assert 1.0 / np.median(np.diff(truth.t_s)) == pytest.approx(WAVE_HZ, rel=0.01)
    assert any("Hz (nominal ~60 Hz)" in n for n in truth.notes)
    per_s = np.loadtxt(s.truth[1], skiprows=1)
    i = int(np.argmin(np.abs(truth.t_s - 3.5)))
    assert truth.hr_bpm[i] == pytest.approx(per_s[3], abs=0.5)
    assert np.isnan(truth.hr_bpm[truth.t_s >= per_s.size]).all()


def test_source2_without_time_txt_uses_the_container_rate(tmp_path):
    rec = recording(80.0, fps=CONTAINER_FPS, duration_s=2.4)
    src = tmp_path / "data" / "p1" / "v8" / "source2"
    _write(src, rec, time_txt=False)
    (s,) = vipl_hr.find_subjects(tmp_path)
    with vipl_hr.open_frames(s) as fs:
        assert fs.t_s is None and fs.info.fps == CONTAINER_FPS
    truth = vipl_hr.read_truth(s)
    assert any("no time.txt" in n for n in truth.notes)
    assert truth.t_s[-1] == pytest.approx(rec.t_s.size / CONTAINER_FPS, abs=0.05)


def _copy(mini, tmp_path):
    root, _ = mini
    s = vipl_hr.find_subjects(root)[0]
    dst = tmp_path / "root" / "data" / "p1" / "v1" / "source1"
    shutil.copytree(s.video.parent, dst)
    (s,) = vipl_hr.find_subjects(tmp_path / "root")
    return s, dst


def test_missing_wave_names_the_file(mini, tmp_path):
    s, dst = _copy(mini, tmp_path)
    (dst / "wave.csv").unlink()
    with pytest.raises(GroundTruthError, match="missing") as err:
        vipl_hr.read_truth(s)
    assert err.value.path.endswith("wave.csv") and err.value.subject == "p1_v1_source1"


def test_corrupt_and_truncated_wave(mini, tmp_path):
    s, dst = _copy(mini, tmp_path)
    lines = (dst / "wave.csv").read_text().splitlines()
    (dst / "wave.csv").write_text("\n".join(lines[:5] + ["6O"] + lines[6:]))
    with pytest.raises(GroundTruthError, match="line 6 is not a number") as err:
        vipl_hr.read_truth(s)
    assert err.value.path.endswith("wave.csv")
    (dst / "wave.csv").write_text("\n".join(lines[: len(lines) // 2]))  # half the recording
    with pytest.raises(GroundTruthError, match="does not span the video") as err:
        vipl_hr.read_truth(s)
    assert err.value.path.endswith("wave.csv")


def test_short_time_txt_names_it(mini, tmp_path):
    s, dst = _copy(mini, tmp_path)
    lines = (dst / "time.txt").read_text().splitlines()
    (dst / "time.txt").write_text("\n".join(lines[:-20]) + "\n")
    with pytest.raises(VideoDecodeError, match="frame times but video.avi has 360 frames") as err:
        vipl_hr.open_frames(s)
    assert err.value.path.endswith("time.txt")
    build_fails_naming("vipl-hr", tmp_path / "root", tmp_path / "cache", "time.txt")


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.vipl_hr; "
            "assert not {'h5py', 'scipy.io', 'pyedflib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_time_txt_is_part_of_the_decode_key(mini, tmp_path):
    """time.txt is the frame clock: editing it must re-key decode (and all that follows), not only labels."""
    from rppg_prep.build import plan_subject
    from rppg_prep.pipeline import load_pipeline

    s, dst = _copy(mini, tmp_path)
    pipe = load_pipeline("vipl-hr")
    before = plan_subject(pipe, s, tmp_path / "cache")
    times = (dst / "time.txt").read_text().splitlines()
    (dst / "time.txt").write_text("\n".join(times[:-1] + [str(int(times[-1]) + 5)]) + "\n")
    after = plan_subject(pipe, s, tmp_path / "cache")
    assert before["decode"].key != after["decode"].key and before["face"].key != after["face"].key
