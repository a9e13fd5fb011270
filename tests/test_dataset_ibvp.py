"""iBVP: a miniature in the real layout (BMP frames, thermal .raw files, 30-Hz BVP CSV with SQ columns)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from miniature import build_and_check, recording
from rppg_prep.datasets import ibvp
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

FPS = 30.0
HR = {"p01_a": 66.0, "p02_a": 96.0}
DURATION_S = {"p01_a": 16.0, "p02_a": 12.0}
#: rows of p01_a whose SQ2 is low (13-14 s): late enough that the first windows stay clean
BAD = slice(390, 420)
HEADER = "BVP,SQPhysMD,SQ1,SQ2,Perfusion_Value"


def _write_recording(folder, rec, *, bad: slice | None = None, seed=0):
    rng = np.random.default_rng(seed)
    sid = folder.name
    rgb = folder / f"{sid}_rgb"
    rgb.mkdir(parents=True)
    for i, frame in enumerate(rec.frames_bgr()):
        cv2.imwrite(str(rgb / f"{i + 1}.bmp"), frame)  # unpadded numbers: name order must be natural
    thermal = folder / f"{sid}_t"
    thermal.mkdir()
    for i in range(2):  # 640x512 uint16 frames; tolerated, not read
        rng.integers(7000, 8000, (512, 640), dtype=np.uint16).tofile(thermal / f"{i + 1}.raw")
    ppg, _ = rec.contact_ppg()  # one BVP sample per frame, as the dataset stores it
    n = ppg.size
    sq2 = rng.uniform(0.7, 0.95, n)
    sq1 = np.ones(n)
    if bad is not None:
        sq2[bad] = rng.uniform(0.0, 0.3, sq2[bad].size)
        sq2[bad.start] = 0.3  # the threshold itself is unreliable
        sq1[bad] = 0.0
    cols = np.column_stack([ppg, (sq2 > 0.5).astype(float), sq1, sq2, rng.uniform(1.0, 2.0, n)])
    np.savetxt(folder / f"{sid}_bvp.csv", cols, fmt="%.6f", delimiter=",", header=HEADER, comments="")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("ibvp")
    recs = {}
    for k, (sid, hr) in enumerate(HR.items()):
        rec = recording(hr, fps=FPS, duration_s=DURATION_S[sid], seed=k)
        _write_recording(root / sid, rec, bad=BAD if sid == "p01_a" else None, seed=k)
        recs[sid] = rec
    return root, recs


def test_find_subjects(mini, tmp_path):
    root, _ = mini
    subs = ibvp.find_subjects(root)
    assert [s.id for s in subs] == ["p01_a", "p02_a"]
    assert subs[0].video == root / "p01_a" / "p01_a_rgb" and subs[0].truth == (root / "p01_a" / "p01_a_bvp.csv",)
    assert [s.id for s in ibvp.find_subjects(root / "p02_a")] == ["p02_a"]
    other = tmp_path / "other"
    for sid in ("p10_a", "p2_b"):
        (other / sid / f"{sid}_rgb").mkdir(parents=True)
    (other / "p3_a").mkdir()  # named like a recording, files missing: still listed
    (other / "notes").mkdir()
    subs = ibvp.find_subjects(other)
    assert [s.id for s in subs] == ["p2_b", "p3_a", "p10_a"]
    assert subs[1].truth == (other / "p3_a" / "p3_a_bvp.csv",)
    with pytest.raises(DatasetLayoutError):
        ibvp.find_subjects(other / "notes")


def test_build_keeps_every_frame_and_masks_low_quality(mini, tmp_path):
    root, recs = mini
    nodes = build_and_check("ibvp", root, tmp_path / "cache", HR)
    for sid, rec in recs.items():
        n = rec.t_s.size
        # every frame stays on the clock: no gap where the quality is low
        np.testing.assert_array_equal(nodes[sid]["decode"]["t_s"][:], np.arange(n) / FPS)
        lab = nodes[sid]["labels"]
        assert np.corrcoef(lab["bvp"][:], rec.pulse)[0, 1] > 0.95
        ok = lab["bvp_ok"][:]
        expect = np.ones(n, bool)
        if sid == "p01_a":
            expect[BAD] = False
        np.testing.assert_array_equal(ok, expect)
        win, hr = lab["window"][:], lab["hr_bpm"][:]
        touching = np.array([not ok[a:b].all() for a, b in win])
        np.testing.assert_array_equal(np.isnan(hr), touching)
        assert np.all(np.abs(hr[~touching] - HR[sid]) < 3.0)
        if sid == "p01_a":
            assert touching.sum() >= 2 and (~touching).sum() >= 2
        else:
            assert not touching.any()


def test_read_truth_quality_flags(mini):
    root, recs = mini
    truth = ibvp.read_truth(ibvp.find_subjects(root)[0])
    n = recs["p01_a"].t_s.size
    assert truth.frame_locked and truth.hr_bpm is None and truth.ppg.shape == (n,)
    np.testing.assert_array_equal(truth.t_s, np.arange(n) / FPS)
    np.testing.assert_array_equal(np.flatnonzero(~truth.quality_ok), np.arange(BAD.start, BAD.stop))
    assert any("SQ2" in note for note in truth.notes)
    src = ibvp.open_frames(ibvp.find_subjects(root)[0])
    assert src.info.n_frames == n and src.info.fps == FPS and (src.info.width, src.info.height) == (640, 480)
    assert [f.name for f in src.files[:3]] == ["1.bmp", "2.bmp", "3.bmp"] and src.files[9].name == "10.bmp"


def test_csv_variants_and_errors_name_the_file(mini, tmp_path):
    root, _ = mini
    folder = tmp_path / "p05_a"
    folder.mkdir()
    sub = ibvp.find_subjects(folder)[0]
    csv_path = folder / "p05_a_bvp.csv"
    assert sub.truth == (csv_path,)
    with pytest.raises(GroundTruthError, match="missing") as err:
        ibvp.read_truth(sub)
    assert err.value.path == str(csv_path) and err.value.subject == "p05_a"
    # columns are found by name, in any order and case
    csv_path.write_text(" sq2 ,Perfusion_Value, bvp\n0.9,1,0.5\n0.1,1,0.7\n0.8,1,\n0.9,1,0.4\n")
    truth = ibvp.read_truth(sub)
    np.testing.assert_allclose(truth.ppg, [0.5, 0.7, 0.55, 0.4])
    np.testing.assert_array_equal(truth.quality_ok, [True, False, False, True])
    # no header: by position (BVP column 1, SQ2 column 4)
    csv_path.write_text("0.5,1,1,0.9,1\n0.6,1,1,0.2,1\n")
    truth = ibvp.read_truth(sub)
    np.testing.assert_array_equal(truth.quality_ok, [True, False])
    assert any("no header" in note for note in truth.notes)
    for text, match in ((f"{HEADER}\n0.5,1,1,0.9,1\nx,1,1,0.9,1\n", "line 3 is not numeric"),
                        ("SQ1,SQ2\n1,0.9\n1,0.9\n", "no BVP column"),
                        (f"{HEADER}\n0.5,1,1,0.9,1\n", "need at least 2"),
                        (f"{HEADER}\n0.5,1,1,0.9,1\n0.5,1,1\n", "line 3 has 3 columns")):
        csv_path.write_text(text)
        with pytest.raises(GroundTruthError, match=match) as err:
            ibvp.read_truth(sub)
        assert err.value.path == str(csv_path)
    with pytest.raises(VideoDecodeError, match="missing") as err:
        ibvp.open_frames(sub)
    assert err.value.path == str(folder / "p05_a_rgb")
    (folder / "p05_a_rgb").mkdir()
    (folder / "p05_a_rgb" / "1.bmp").write_bytes(b"BM not really")
    with pytest.raises(VideoDecodeError, match="cannot be read") as err:
        ibvp.open_frames(sub)
    assert err.value.path == str(folder / "p05_a_rgb" / "1.bmp")


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.ibvp; "
            "assert not {'h5py', 'scipy.io', 'pyedflib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
