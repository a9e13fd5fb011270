"""MMPD: a miniature of MATLAB v5 files (scipy.io.savemat) and one v7.3 file (HDF5 + MATLAB header)."""

from __future__ import annotations

import subprocess
import sys
import time

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from miniature import build_and_check, build_fails_naming, frames_rgb, recording
from rppg_prep.datasets import mmpd
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

ATTRS = {"light": "LED-low", "motion": "Stationary", "exercise": "False", "skin_color": 3, "gender": "male",
         "glasser": "False", "hair_cover": "True", "makeup": "False"}


def write_v73(path, variables: dict, *, compress: bool = True) -> None:
    """Write ``variables`` as MATLAB ``save -v7.3`` does: HDF5 after a 512-byte MATLAB header.

    Arrays are given in MATLAB order and stored column-major (h5py shows the axes reversed); 1-D
    arrays are MATLAB column vectors; strings become MATLAB char arrays (uint16 codes).
    """
    classes = {"float64": "double", "float32": "single", "int64": "int64"}
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, value in variables.items():
            if isinstance(value, str):
                ds = f.create_dataset(name, data=np.array([[ord(c) for c in value]], np.uint16).T)
                ds.attrs["MATLAB_class"] = np.bytes_("char")
                ds.attrs["MATLAB_int_decode"] = np.int32(2)
                continue
            arr = np.asarray(value, dtype=np.float64) if np.isscalar(value) else np.asarray(value)
            arr = arr.reshape(1, 1) if arr.ndim == 0 else (arr[:, None] if arr.ndim == 1 else arr)
            stored = np.ascontiguousarray(arr.T)
            big = compress and stored.size > 4096
            ds = f.create_dataset(name, data=stored, chunks=True if big else None,
                                  compression="gzip" if big else None, compression_opts=1 if big else None)
            ds.attrs["MATLAB_class"] = np.bytes_(classes[str(arr.dtype)])
    stamp = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(0))
    text = f"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: {stamp} HDF5 schema 1.00 .".ljust(116)
    with open(path, "r+b") as fh:
        fh.write(text.encode("ascii") + b" " * 8 + b"\x00\x02" + b"IM")


def phone_frames(frames: np.ndarray, *, squeeze: bool, size=(320, 240)) -> np.ndarray:
    """FaceRecording frames (T, 480, 640, 3) downscaled to MMPD's 320x240.

    ``squeeze``: take a 16:9 band (as the phone's 1280x720) and squeeze it into 4:3, as the released
    files were made (rPPG-Toolbox issue #149); otherwise a plain 4:3 downscale.
    """
    src = frames[:, 60:420] if squeeze else frames
    return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in src])


def _mat_vars(video_u8: np.ndarray, ppg: np.ndarray, **attrs) -> dict:
    # video is MATLAB T x H x W x C single in [0, 1]; GT_ppg one sample per frame
    return {"video": (video_u8 / 255.0).astype(np.float32), "GT_ppg": ppg, **ATTRS, **attrs}


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    base = tmp_path_factory.mktemp("mmpd")
    root = base / "mat_dataset"
    recs = {hr: recording(hr, fps=mmpd.FPS, seed=k) for k, hr in enumerate((66.0, 96.0))}
    videos = {"p1_0": phone_frames(frames_rgb(recs[66.0]), squeeze=True),
              "p2_0": phone_frames(frames_rgb(recs[96.0]), squeeze=False)}
    ppg = {hr: rec.contact_ppg()[0] for hr, rec in recs.items()}
    for n in (1, 2):
        (root / f"subject{n}").mkdir(parents=True)
    # v5 without compression (as subjects 12-15 of the release; compressing float noise is slow here)
    scipy.io.savemat(root / "subject1" / "p1_0.mat", _mat_vars(videos["p1_0"], ppg[66.0]), oned_as="column")
    scipy.io.savemat(root / "subject2" / "p2_0.mat",
                     _mat_vars(videos["p2_0"], ppg[96.0], light="Nature", motion="Talking", skin_color=5),
                     oned_as="row")
    # MATLAB v7.3 (HDF5, deflated) with the first 2 s of p1_0, in a root of its own to keep the build short
    v73 = base / "v73" / "subject10"
    v73.mkdir(parents=True)
    write_v73(v73 / "p10_0.mat", _mat_vars(videos["p1_0"][:60], ppg[66.0][:60], motion="Watching Videos"))
    return base, recs, videos


def test_find_subjects_accepts_every_root_in_natural_order(mini, tmp_path):
    base, _, _ = mini
    subs = mmpd.find_subjects(base)
    assert [s.id for s in subs] == ["p1_0", "p2_0"]
    assert [s.id for s in mmpd.find_subjects(base / "mat_dataset")] == ["p1_0", "p2_0"]
    assert all(s.video == s.truth[0] == base / "mat_dataset" / f"subject{s.id[1]}" / f"{s.id}.mat" for s in subs)
    assert [s.id for s in mmpd.find_subjects(base / "mat_dataset" / "subject2")] == ["p2_0"]
    for name in ("subject1/p1_10.mat", "subject1/p1_2.mat", "subject1/p1_0.mat", "subject10/p10_0.mat",
                 "subject2/p2_0.mat", "notes/readme.mat"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert [s.id for s in mmpd.find_subjects(tmp_path)] == ["p1_0", "p1_2", "p1_10", "p2_0", "p10_0"]
    (tmp_path / "empty" / "subject3").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="no MMPD .mat files") as err:
        mmpd.find_subjects(tmp_path / "empty")
    assert err.value.path == str(tmp_path / "empty")


def test_build_finds_the_hr_and_labels_line_up(mini, tmp_path):
    base, recs, _ = mini
    nodes = build_and_check("mmpd", base, tmp_path / "cache", {"p1_0": 66.0, "p2_0": 96.0})
    for sid, hr in (("p1_0", 66.0), ("p2_0", 96.0)):
        assert nodes[sid]["decode"]["t_s"].shape == (360,)
        # GT_ppg sample i belongs to frame i
        assert np.corrcoef(nodes[sid]["labels"]["bvp"][:], recs[hr].pulse)[0, 1] > 0.9


def test_attributes_and_notes(mini):
    base, _, _ = mini
    s1, s2 = mmpd.find_subjects(base)
    (s10,) = mmpd.find_subjects(base / "v73")
    assert mmpd.attributes(s1) == ATTRS
    assert mmpd.attributes(s2) == {**ATTRS, "light": "Nature", "motion": "Talking", "skin_color": 5}
    assert mmpd.attributes(s10) == {**ATTRS, "motion": "Watching Videos"}
    t1, t10 = mmpd.read_truth(s1), mmpd.read_truth(s10)
    assert t1.frame_locked and t1.hr_bpm is None and t1.t_s[1] == pytest.approx(1 / 30)
    assert t1.notes[0].startswith("MMPD attributes: light=LED-low, motion=Stationary, exercise=False, skin_color=3")
    assert t10.frame_locked and any("'Walking'" in n for n in t10.notes)
    np.testing.assert_allclose(t10.ppg, t1.ppg[:60])  # the v7.3 copy holds the first 2 s of p1_0


def test_v73_frames_are_read_lazily_and_exactly(mini):
    base, _, videos = mini
    (s10,) = mmpd.find_subjects(base / "v73")
    with h5py.File(s10.video) as f:
        assert f["video"].shape == (3, 320, 240, 60) and f["GT_ppg"].shape == (1, 60)
    with mmpd.open_frames(s10) as src:
        assert (src.info.width, src.info.height, src.info.n_frames) == (320, 240, 60)
        got = np.concatenate([b.frames for b in src.batches(8)])
    np.testing.assert_array_equal(got, videos["p1_0"][:60])


def test_compressed_v5_mini_resolution_and_ppg_of_another_length(mini, tmp_path):
    # mini-MMPD is 80x60; a PPG with twice the samples of the video is spread over the video's span
    _, recs, videos = mini
    rec = recs[66.0]
    video = np.stack([cv2.resize(f, (80, 60), interpolation=cv2.INTER_AREA) for f in videos["p2_0"]])
    ppg, _ = rec.contact_ppg(np.linspace(0.0, 359 / 30.0, 720))
    folder = tmp_path / "subject7"
    folder.mkdir()
    scipy.io.savemat(folder / "p7_3.mat", _mat_vars(video, ppg), do_compression=True)
    sub = mmpd.find_subjects(folder)[0]
    truth = mmpd.read_truth(sub)
    assert not truth.frame_locked and "720 samples for 360 frames" in truth.notes[-1]
    assert truth.t_s[-1] == pytest.approx(359 / 30.0)
    at_frames = np.interp(np.arange(360) / 30.0, truth.t_s, truth.ppg)
    assert np.corrcoef(at_frames, rec.pulse)[0, 1] > 0.95
    with mmpd.open_frames(sub) as src:  # v5: loaded whole, dropped on close
        assert (src.info.width, src.info.height) == (80, 60)
        np.testing.assert_array_equal(np.concatenate([b.frames for b in src.batches(64)]), video)
    assert src.array.a is None


def test_missing_ppg_and_non_mat_file_name_the_file(tmp_path):
    folder = tmp_path / "subject3"
    folder.mkdir()
    tiny = np.zeros((4, 6, 8, 3), np.uint8)
    scipy.io.savemat(folder / "p3_0.mat", {"video": tiny / 255.0, **ATTRS})
    write_v73(folder / "p3_1.mat", {"video": tiny / 255.0, **ATTRS})
    for sub in mmpd.find_subjects(folder):
        with pytest.raises(GroundTruthError, match="no PPG variable 'GT_ppg'") as err:
            mmpd.read_truth(sub)
        assert err.value.path.endswith(f"{sub.id}.mat") and err.value.subject == sub.id

    bad = tmp_path / "bad" / "subject4"
    bad.mkdir(parents=True)
    (bad / "p4_0.mat").write_bytes(b"<html>download quota exceeded</html>\n" * 20)
    out = build_fails_naming("mmpd", bad.parent, tmp_path / "cache", "p4_0.mat")
    assert "not a readable MATLAB file" in out
    sub = mmpd.find_subjects(bad)[0]
    with pytest.raises(GroundTruthError) as err:
        mmpd.read_truth(sub)
    assert err.value.path.endswith("p4_0.mat")
    with pytest.raises(VideoDecodeError) as err:
        mmpd.open_frames(sub)
    assert err.value.path.endswith("p4_0.mat")


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.mmpd; "
            "assert 'h5py' not in sys.modules and 'scipy.io' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
