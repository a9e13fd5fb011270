"""MMSE-HR: a miniature in the release layout (JPEG frames at 25 fps + 1000-Hz one-column physiology)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from miniature import build_and_check, build_fails_naming, recording
from rppg_prep.datasets import Subject, mmse_hr
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

FPS = 25.0
HR = {"F013_T1": 66.0, "M005_T10": 96.0}
FIRST10_2D, FIRST10_PHY = "first 10 subjects 2D", "first 10 subjects Phydata released/Phydata"
T10_2D, T10_PHY = "T10_T11_30Subjects", "T10_T11_30PhyBPHRData"


def _write(frames_dir, phys_dir, rec, rng):
    frames_dir.mkdir(parents=True)
    phys_dir.mkdir(parents=True)
    for i, frame in enumerate(rec.frames_bgr(), start=1):
        assert cv2.imwrite(str(frames_dir / f"{i:03d}.jpg"), frame)
    # the physiology starts with the first frame and runs a little past the last one, at 1000 Hz
    t = np.arange(int((rec.t_s[-1] + 0.5) * 1000)) / 1000.0
    # arterial pressure rises with blood volume: diastolic ~80 mmHg plus a 30-mmHg pulse
    bp = 80.0 + 30.0 * rec.pulse_at(t) + rng.normal(0.0, 0.3, t.size)
    _, device_hr = rec.contact_ppg(t)
    np.savetxt(phys_dir / "BP_mmHg.txt", bp, fmt="%.4f", newline="\r\n")  # Windows line ends, as released
    np.savetxt(phys_dir / "Pulse Rate_BPM.txt", device_hr, fmt="%.0f", newline="\r\n")
    np.savetxt(phys_dir / "Resp_Volts.txt", np.zeros(t.size), fmt="%.1f")  # beside them in the release, unused


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("mmse_hr")
    rng = np.random.default_rng(3)
    recs = {}
    for k, (sid, hr) in enumerate(HR.items()):
        subj, task = sid.split("_")
        two_d, phy = (FIRST10_2D, FIRST10_PHY) if task == "T1" else (T10_2D, T10_PHY)
        recs[sid] = recording(hr, fps=FPS, seed=k)
        _write(root / two_d / subj / task, root / phy / subj / task, recs[sid], rng)
    return root, recs


def test_find_subjects_both_trees(mini):
    root, _ = mini
    subs = mmse_hr.find_subjects(root)
    assert [s.id for s in subs] == ["F013_T1", "M005_T10"]
    assert [s.fmt for s in subs] == ["first10", "T10_T11"]
    assert subs[0].video == root / FIRST10_2D / "F013" / "T1"
    assert [p.name for p in subs[1].truth] == ["BP_mmHg.txt", "Pulse Rate_BPM.txt"]
    assert subs[1].truth[0].parent == root / T10_PHY / "M005" / "T10"


def test_find_subjects_no_space_spelling_natural_order_and_partial(tmp_path):
    for subj, task in [("F010", "T8"), ("F002", "T10"), ("F002", "T1"), ("M001", "T3")]:
        (tmp_path / "first10subjects_2D" / subj / task).mkdir(parents=True)
        (tmp_path / "first10subjects_Phydatareleased" / "Phydata" / subj / task).mkdir(parents=True)
    # physiology without frames: listed, and building it names the missing frame folder
    (tmp_path / "first10subjects_Phydatareleased" / "Phydata" / "M001" / "T4").mkdir()
    subs = mmse_hr.find_subjects(tmp_path)
    assert [s.id for s in subs] == ["F002_T1", "F002_T10", "F010_T8", "M001_T3", "M001_T4"]
    assert not subs[-1].video.exists()
    assert subs[0].truth[0] == tmp_path / "first10subjects_Phydatareleased" / "Phydata" / "F002" / "T1" / "BP_mmHg.txt"


def test_missing_and_empty_root(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        mmse_hr.find_subjects(tmp_path / "nope")
    with pytest.raises(DatasetLayoutError, match="no MMSE-HR task folders"):
        mmse_hr.find_subjects(tmp_path)


def test_build_finds_the_hr_and_labels_follow_the_pulse(mini, tmp_path):
    root, recs = mini
    nodes = build_and_check("mmse-hr", root, tmp_path / "cache", HR)
    for sid, rec in recs.items():
        assert nodes[sid]["decode"]["t_s"][:] == pytest.approx(np.arange(rec.t_s.size) / FPS)
        bvp = nodes[sid]["labels"]["bvp"][:]
        # 1000-Hz BP read at the 25-fps frame times follows the blood volume the frames show
        assert np.corrcoef(bvp, rec.pulse)[0, 1] > 0.9
        dev = nodes[sid]["labels"]["hr_device_bpm"][:]
        assert np.nanmedian(dev) == pytest.approx(HR[sid], abs=3)


def test_truth_clock_and_device_hr(mini):
    root, recs = mini
    s = mmse_hr.find_subjects(root)[0]
    truth = mmse_hr.read_truth(s)
    assert truth.t_s[0] == 0.0 and np.diff(truth.t_s) == pytest.approx(1e-3)
    assert truth.ppg.mean() == pytest.approx(80 + 30 * recs[s.id].pulse.mean(), abs=2)  # not inverted, DC kept
    assert truth.hr_bpm.shape == truth.ppg.shape and not truth.frame_locked


def test_frames_sorted_numerically_and_gaps_keep_time(tmp_path):
    folder = tmp_path / "F001" / "T1"
    folder.mkdir(parents=True)
    img = np.full((8, 8, 3), 128, np.uint8)
    for n in (1, 2, 3, 10, 11):  # frames 4-9 lost
        cv2.imwrite(str(folder / f"{n}.jpg"), img)
    s = Subject("mmse-hr", "F001_T1", folder, (tmp_path / "BP_mmHg.txt", tmp_path / "Pulse Rate_BPM.txt"))
    with mmse_hr.open_frames(s) as src:
        assert src.info.fps == FPS and src.info.n_frames == 5
        (batch,) = list(src.batches(16))
    assert batch.t_s.tolist() == pytest.approx([0.0, 0.04, 0.08, 0.36, 0.40])
    for f in list(folder.iterdir()):
        f.unlink()
    with pytest.raises(VideoDecodeError, match="no .jpg frames") as err:
        mmse_hr.open_frames(s)
    assert err.value.path == str(folder)


def _copy_phys(mini, tmp_path):
    root, _ = mini
    s = mmse_hr.find_subjects(root)[0]
    phys = tmp_path / "phys"
    shutil.copytree(s.truth[0].parent, phys)
    return Subject("mmse-hr", s.id, s.video, (phys / "BP_mmHg.txt", phys / "Pulse Rate_BPM.txt"), s.fmt), phys


def test_missing_bp_names_the_file(mini, tmp_path):
    s, phys = _copy_phys(mini, tmp_path)
    (phys / "BP_mmHg.txt").unlink()
    with pytest.raises(GroundTruthError, match="missing") as err:
        mmse_hr.read_truth(s)
    assert err.value.path.endswith("BP_mmHg.txt") and err.value.subject == "F013_T1"


def test_non_numeric_line_names_file_and_line(mini, tmp_path):
    s, phys = _copy_phys(mini, tmp_path)
    lines = (phys / "BP_mmHg.txt").read_text().splitlines()
    lines[2] = "81.2 mmHg"
    (phys / "BP_mmHg.txt").write_text("\n".join(lines))
    with pytest.raises(GroundTruthError, match="line 3 is not a number") as err:
        mmse_hr.read_truth(s)
    assert err.value.path.endswith("BP_mmHg.txt")
    (phys / "BP_mmHg.txt").write_text("\n".join(lines[:2] + lines[3:]))
    (phys / "Pulse Rate_BPM.txt").write_text("66\n66\n--\n")
    with pytest.raises(GroundTruthError, match="line 3") as err:
        mmse_hr.read_truth(s)
    assert err.value.path.endswith("Pulse Rate_BPM.txt")


def test_physiology_shorter_than_the_video(mini, tmp_path):
    s, phys = _copy_phys(mini, tmp_path)
    lines = (phys / "BP_mmHg.txt").read_text().splitlines()
    (phys / "BP_mmHg.txt").write_text("\n".join(lines[:8000]))  # 8 s of a 12-s video
    with pytest.raises(GroundTruthError, match="shorter than the video") as err:
        mmse_hr.read_truth(s)
    assert err.value.path.endswith("BP_mmHg.txt") and "300 frames" in str(err.value)


def test_missing_hr_file_is_only_noted(mini, tmp_path):
    s, phys = _copy_phys(mini, tmp_path)
    (phys / "Pulse Rate_BPM.txt").unlink()
    truth = mmse_hr.read_truth(s)
    assert truth.hr_bpm is None and any("Pulse Rate_BPM.txt is missing" in n for n in truth.notes)


def test_build_names_a_missing_frame_folder(tmp_path):
    phys = tmp_path / "root" / FIRST10_PHY / "F001" / "T1"
    phys.mkdir(parents=True)
    (phys / "BP_mmHg.txt").write_text("80\n81\n")
    build_fails_naming("mmse-hr", tmp_path / "root", tmp_path / "cache", "F001_T1")
    # the table wraps long paths; the manifest keeps the whole message
    manifest = json.loads((tmp_path / "cache" / "mmse-hr.builds" / "mmse-hr.json").read_text())
    assert f"{tmp_path / 'root' / FIRST10_2D / 'F001' / 'T1'}: video file (or frame folder) is missing" in str(manifest)


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.mmse_hr; "
            "assert not {'h5py', 'scipy.io', 'pyedflib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
