"""PURE: a miniature in the real layout (Image<ns>.png frames + json with a 60-Hz oximeter on its own clock)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from miniature import build_and_check, build_fails_naming, recording
from rppg_prep.datasets import pure
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

FPS = 30.0
HR = {"01-01": 66.0, "02-01": 96.0}
#: host-clock epoch nanoseconds of the first frame (PURE's file names look like this)
T0_NS = 1_392_643_993_642_815_123
LEAD_S, TAIL_S = 0.4, 0.3  # the oximeter starts before the first frame and stops after the last one


def _oximeter_clock(rng, t_end_s: float) -> np.ndarray:
    """~60-Hz sample times (s, frame clock) with their own jitter, from -LEAD_S to t_end_s + TAIL_S."""
    n = int((t_end_s + LEAD_S + TAIL_S) * 60.0)
    return -LEAD_S + np.arange(n) / 60.03 + rng.uniform(-0.002, 0.002, n)


def _write_sequence(frames_dir, json_path, rec, *, seed=0, with_image=True):
    """Write one PURE sequence: PNG frames named by their ns timestamp and the json."""
    rng = np.random.default_rng(seed)
    frames_dir.mkdir(parents=True, exist_ok=True)
    frame_ns = T0_NS + np.round(rec.t_s * 1e9).astype(np.int64)  # rec.t_s: ~33 ms steps, ms jitter
    for ns, frame in zip(frame_ns, rec.frames_bgr()):
        # level 0: still a real, lossless PNG, and about twice as fast to write as level 1
        cv2.imwrite(str(frames_dir / f"Image{ns}.png"), frame, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    t = _oximeter_clock(rng, rec.t_s[-1])
    ppg, hr = rec.contact_ppg(t)
    package = [{"Timestamp": int(T0_NS + round(ts * 1e9)),
                "Value": {"waveform": int(round(100 + 40 * p)), "pulseRate": int(h), "o2saturation": 98,
                          "signalStrength": 4}}
               for ts, p, h in zip(t, ppg, hr)]
    data = {"/FullPackage": package}
    if with_image:
        data["/Image"] = [{"Timestamp": int(ns)} for ns in frame_ns]
    json_path.write_text(json.dumps(data))
    return frame_ns


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    root = tmp_path_factory.mktemp("pure")
    recs = {}
    for k, (sid, hr) in enumerate(HR.items()):
        rec = recording(hr, fps=FPS, seed=k)
        _write_sequence(root / sid / sid, root / sid / f"{sid}.json", rec, seed=k)
        recs[sid] = rec
    return root, recs


def _skeleton(root, sid, *, flat=False, n=2, n_image=None):
    """A tiny sequence (8x8 frames): enough for discovery and clock checks, not for a build."""
    frames = root / sid if flat else root / sid / sid
    json_path = root / f"{sid}.json" if flat else root / sid / f"{sid}.json"
    frames.mkdir(parents=True, exist_ok=True)
    ns = T0_NS + np.arange(n, dtype=np.int64) * 33_333_333
    for v in ns:
        cv2.imwrite(str(frames / f"Image{v}.png"), np.zeros((8, 8, 3), np.uint8))
    image = T0_NS + np.arange(n if n_image is None else n_image, dtype=np.int64) * 33_333_333
    pkg = [{"Timestamp": int(T0_NS + i * 16_666_667), "Value": {"waveform": i % 7, "pulseRate": 70}}
           for i in range(4 * n)]
    json_path.write_text(json.dumps({"/FullPackage": pkg, "/Image": [{"Timestamp": int(v)} for v in image]}))
    return frames, json_path


def test_find_subjects_layouts(tmp_path):
    nested = tmp_path / "nested"
    for sid in ("10-01", "02-03", "01-02"):
        _skeleton(nested, sid)
    (nested / "05-01").mkdir()  # named like a sequence, files missing: still listed
    subs = pure.find_subjects(nested)
    assert [s.id for s in subs] == ["01-02", "02-03", "05-01", "10-01"]
    assert subs[0].video == nested / "01-02" / "01-02" and subs[0].truth == (nested / "01-02" / "01-02.json",)
    assert subs[0].fmt == "nested"
    assert subs[2].truth == (nested / "05-01" / "05-01.json",)

    flat = tmp_path / "flat"  # pyVHR's arrangement: json beside the frame folder
    for sid in ("03-01", "01-01"):
        _skeleton(flat, sid, flat=True)
    subs = pure.find_subjects(flat)
    assert [(s.id, s.fmt) for s in subs] == [("01-01", "flat"), ("03-01", "flat")]
    assert subs[0].video == flat / "01-01" and subs[0].truth == (flat / "01-01.json",)

    # a root that is one sequence, either arrangement
    assert [s.id for s in pure.find_subjects(nested / "02-03")] == ["02-03"]
    one = pure.find_subjects(flat / "03-01")
    assert [(s.id, s.video, s.truth) for s in one] == [("03-01", flat / "03-01", (flat / "03-01.json",))]

    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetLayoutError):
        pure.find_subjects(tmp_path / "empty")


def test_build_finds_the_hr_and_aligns_by_timestamps(mini, tmp_path):
    root, recs = mini
    nodes = build_and_check("pure", root, tmp_path / "cache", HR)
    for sid, rec in recs.items():
        # frame times come from the timestamps (jittered), re-based on the first frame
        np.testing.assert_allclose(nodes[sid]["decode"]["t_s"][:], rec.t_s, atol=1e-6)
        bvp = nodes[sid]["labels"]["bvp"][:]
        assert np.corrcoef(bvp, rec.pulse)[0, 1] > 0.9
        # the test can tell: stretching the oximeter samples to the frame count by index (the
        # rPPG-Toolbox way) misses the 0.4-s head start and does not line up
        truth = pure.read_truth(pure.find_subjects(root / sid)[0])
        by_index = np.interp(np.linspace(0, len(truth.ppg) - 1, len(rec.t_s)), np.arange(len(truth.ppg)), truth.ppg)
        assert np.corrcoef(by_index, rec.pulse)[0, 1] < 0.5


def test_truth_clock_and_device_hr(mini):
    root, recs = mini
    sub = pure.find_subjects(root)[1]
    truth = pure.read_truth(sub)
    assert truth.t_s[0] == pytest.approx(-LEAD_S, abs=0.003) and np.all(np.diff(truth.t_s) > 0)
    assert truth.t_s[-1] > recs[sub.id].t_s[-1] and not truth.frame_locked
    assert truth.hr_bpm is not None and abs(np.nanmedian(truth.hr_bpm) - HR[sub.id]) < 3
    assert truth.ppg.dtype == np.float64 and truth.ppg.shape == truth.t_s.shape


def test_flat_layout_and_names_without_image_list(mini, tmp_path):
    root, _ = mini
    ref = pure.read_truth(pure.find_subjects(root)[0])
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "01-01").symlink_to(root / "01-01" / "01-01", target_is_directory=True)
    data = json.loads((root / "01-01" / "01-01.json").read_text())
    (flat / "01-01.json").write_text(json.dumps(data))
    sub = pure.find_subjects(flat)[0]
    assert sub.fmt == "flat"
    np.testing.assert_array_equal(pure.read_truth(sub).t_s, ref.t_s)
    # without /Image the frame times come from the file names, and a note says so
    del data["/Image"]
    (flat / "01-01.json").write_text(json.dumps(data))
    truth = pure.read_truth(sub)
    np.testing.assert_array_equal(truth.t_s, ref.t_s)
    assert any("file names" in n for n in truth.notes)
    src = pure.open_frames(sub)
    assert src.info.n_frames == 360 and (src.info.width, src.info.height) == (640, 480)
    np.testing.assert_allclose(src.t_s, pure.open_frames(pure.find_subjects(root)[0]).t_s)


def test_image_count_mismatch_names_the_folder(tmp_path):
    frames, _ = _skeleton(tmp_path / "root", "07-02", n=5, n_image=6)
    sub = pure.find_subjects(tmp_path / "root")[0]
    with pytest.raises(VideoDecodeError, match="6 frame timestamps.*5 Image") as err:
        pure.open_frames(sub)
    assert err.value.path == str(frames) and err.value.subject == "07-02"
    with pytest.raises(GroundTruthError, match="/Image") as err:
        pure.read_truth(sub)
    assert err.value.path == str(frames)
    build_fails_naming("pure", tmp_path / "root", tmp_path / "cache", "07-02")
    manifest = json.loads((tmp_path / "cache" / "pure.builds" / "pure.json").read_text())
    assert str(frames) in manifest["subjects"]["07-02"]["error"]  # the table in the output wraps long paths


def test_missing_and_corrupt_json_name_the_file(tmp_path):
    frames, json_path = _skeleton(tmp_path, "01-01", n=3)
    sub = pure.find_subjects(tmp_path)[0]
    assert pure.read_truth(sub).ppg.size == 12
    json_path.write_text('{"/FullPackage": [{"Timestamp": 1, "Val')
    with pytest.raises(GroundTruthError, match="cannot read") as err:
        pure.read_truth(sub)
    assert err.value.path == str(json_path) and err.value.subject == "01-01"
    json_path.write_text(json.dumps({"/FullPackage": [{"Timestamp": T0_NS, "Value": {"pulseRate": 70}}] * 3}))
    with pytest.raises(GroundTruthError, match="waveform") as err:
        pure.read_truth(sub)
    assert err.value.path == str(json_path)
    json_path.unlink()
    with pytest.raises(GroundTruthError, match="missing") as err:
        pure.read_truth(sub)
    assert err.value.path == str(json_path)
    for f in frames.iterdir():
        f.unlink()
    with pytest.raises(VideoDecodeError, match="no Image") as err:
        pure.open_frames(sub)
    assert err.value.path == str(frames)


def test_import_is_light():
    code = ("import sys, rppg_prep.datasets.pure; "
            "assert not {'h5py', 'scipy.io', 'pyedflib'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)
