"""The synthetic UBFC-rPPG sample: layout, ground truth, pulse in the pixels, determinism, caching."""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np
import pytest
from scipy.signal import welch

import rppg_prep.sample as sample_mod
from rppg_prep.datasets import ubfc
from rppg_prep.sample import (GENERATOR_VERSION, SAMPLE_HR_BPM, default_sample_dir, ensure_ubfc_sample,
                              write_ubfc_sample)

DURATION_S, FPS = 12.0, 30.0
#: skin of cheeks, nose and forehead in the 640x480 frame (face centred near x=330, y=190)
FACE_BOX = (slice(150, 230), slice(295, 365))


def spectral_hr(x: np.ndarray, fs: float) -> float:
    """HR (bpm) at the Welch peak in 0.7-3.5 Hz, one Hann segment, zero-padded to 2**16."""
    x = np.asarray(x, np.float64)
    f, p = welch(x - x.mean(), fs=fs, window="hann", nperseg=x.size, nfft=2**16)
    band = (f >= 0.7) & (f <= 3.5)
    return 60.0 * float(f[band][np.argmax(p[band])])


def read_truth(path) -> list[np.ndarray]:
    return [np.array(line.split(), dtype=np.float64) for line in path.read_text().splitlines()]


def decode(path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("ubfc_sample")
    calls = []
    subjects = write_ubfc_sample(out, n_subjects=2, duration_s=DURATION_S, fps=FPS, seed=7,
                                 progress=lambda done, total: calls.append((done, total)))
    frames = {s.id: decode(s.video) for s in subjects}
    return out, subjects, frames, calls


def test_layout_and_ground_truth_shape(generated):
    out, subjects, frames, calls = generated
    assert [s.id for s in subjects] == ["subject1", "subject2"]
    assert [s.hr_bpm for s in subjects] == list(SAMPLE_HR_BPM[:2])
    n = int(DURATION_S * FPS)
    for s in subjects:
        assert s.video == out / s.id / "vid.avi" and s.ground_truth == out / s.id / "ground_truth.txt"
        assert len(frames[s.id]) == n
        assert frames[s.id][0].shape == (480, 640, 3)
        rows = read_truth(s.ground_truth)
        assert len(rows) == 3
        assert [r.size for r in rows] == [n, n, n]
        t = rows[2]
        assert t[0] == 0.0 and np.all(np.diff(t) > 0)
        assert abs(t[-1] - (n - 1) / FPS) < 0.05
        assert np.all(rows[1] == np.round(rows[1]))  # device HR is whole bpm
    assert calls[-1] == (2 * n, 2 * n)
    assert [d for d, _ in calls] == list(range(1, 2 * n + 1))


def test_project_loader_reads_it_cleanly(generated):
    out, subjects, _, _ = generated
    found = ubfc.find_subjects(out)
    assert [s.id for s in found] == ["subject1", "subject2"]
    for s in found:
        assert s.fmt == "DATASET_2" and s.video.name == "vid.avi"
        truth = ubfc.read_truth(s)
        assert truth.notes == ()  # no repaired clock, no masked device HR


def test_ground_truth_gives_back_requested_hr(generated):
    _, subjects, _, _ = generated
    for s in subjects:
        ppg, hr, t = read_truth(s.ground_truth)
        fs = 1.0 / np.median(np.diff(t))
        assert abs(spectral_hr(ppg, fs) - s.hr_bpm) < 1.0
        assert abs(hr.mean() - s.hr_bpm) < 2.5
        assert hr.max() - hr.min() <= 6  # +/-2 bpm drift, rounded


def test_pulse_survives_in_the_decoded_pixels(generated):
    _, subjects, frames, _ = generated
    for s in subjects:
        green = np.array([f[FACE_BOX[0], FACE_BOX[1], 1].mean() for f in frames[s.id]])
        assert abs(spectral_hr(green, FPS) - s.hr_bpm) < 3.0
        # skin darkens when the contact PPG (blood volume) rises
        ppg = read_truth(s.ground_truth)[0]
        assert np.corrcoef(green, ppg)[0, 1] < -0.5


def test_head_moves(generated):
    _, subjects, frames, _ = generated
    seq = frames[subjects[0].id]

    def smooth_gray(f):
        return cv2.GaussianBlur(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY).astype(np.float32), (0, 0), 2.0)

    ref = smooth_gray(seq[0])
    shifts = [np.hypot(*cv2.phaseCorrelate(ref, smooth_gray(f))[0]) for f in seq[::15]]
    assert max(shifts) > 0.5
    assert max(shifts) < 15.0  # small head motion, not jumps


def test_same_seed_same_files_other_seed_differs(tmp_path):
    kw = dict(n_subjects=1, duration_s=3.0)
    a = write_ubfc_sample(tmp_path / "a", seed=11, **kw)[0]
    b = write_ubfc_sample(tmp_path / "b", seed=11, **kw)[0]
    c = write_ubfc_sample(tmp_path / "c", seed=12, **kw)[0]
    assert a.ground_truth.read_bytes() == b.ground_truth.read_bytes()
    assert a.video.read_bytes() == b.video.read_bytes()
    assert a.ground_truth.read_bytes() != c.ground_truth.read_bytes()


@pytest.mark.parametrize("kw", [dict(n_subjects=0), dict(fps=0.0), dict(duration_s=0.01)])
def test_rejects_bad_arguments(tmp_path, kw):
    with pytest.raises(ValueError):
        write_ubfc_sample(tmp_path, **kw)


def test_ensure_generates_once_atomically(tmp_path, monkeypatch):
    calls = []
    real = functools.partial(write_ubfc_sample, n_subjects=1, duration_s=2.0)

    def counting(out_dir, **kw):
        calls.append(out_dir)
        return real(out_dir, **kw)

    monkeypatch.setattr(sample_mod, "write_ubfc_sample", counting)
    target = default_sample_dir(tmp_path)
    assert target == tmp_path / "samples" / f"ubfc-v{GENERATOR_VERSION}"
    target.mkdir(parents=True)
    (target / "junk.txt").write_text("left by an interrupted run without the marker")

    first = ensure_ubfc_sample(tmp_path)
    assert first == target and len(calls) == 1
    assert calls[0] != target  # written elsewhere, then renamed into place
    assert not (target / "junk.txt").exists()
    gt = target / "subject1" / "ground_truth.txt"
    assert gt.exists() and (target / "subject1" / "vid.avi").exists()
    mtime = os.stat(gt).st_mtime_ns

    second = ensure_ubfc_sample(str(tmp_path))
    assert second == first and len(calls) == 1
    assert os.stat(gt).st_mtime_ns == mtime
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp folders left
