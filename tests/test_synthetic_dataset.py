"""The Bousefsaf pseudo-PPG generator as a dataset the pipeline builds, and the 3D-CNN trained on that build."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from conftest import torch_threads
from rppg_models import cnn3d
from rppg_prep import pseudo_ppg as synthetic
from rppg_prep.cli import main
from rppg_prep.datasets import synthetic as syn_ds

CLASSES = (0, 30, 60)  # 55, 130, 205 bpm
K = 3  # videos per class


@pytest.fixture(scope="module")
def syn_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    syn_ds.write_synthetic(root, videos_per_class=K, classes=CLASSES, seed=1)
    cache = tmp_path_factory.mktemp("syn_cache")
    res = CliRunner().invoke(main, ["build", "synthetic", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    return root, cache


def test_uint8_videos_are_the_generator_output_before_normalisation():
    labels = np.array([0, 10, 74, 40])
    videos, _ = synthetic.generate(4, rng=np.random.default_rng(5), labels=labels)
    grey, signal, _ = synthetic.pulse_videos_uint8(4, rng=np.random.default_rng(5), labels=labels)
    x = grey / 255.0
    x -= x.mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(videos[:, 0], x, atol=1e-6)
    assert signal.shape == (4, 60) and grey.dtype == np.uint8
    with pytest.raises(ValueError, match="noise"):
        synthetic.pulse_videos_uint8(1, rng=np.random.default_rng(0), labels=[cnn3d.NOISE_CLASS])


def test_build_clips_are_exactly_the_generator_videos(syn_build):
    root, cache = syn_build
    nodes = rppg_prep.open_build(cache, "synthetic", "synthetic")
    assert sorted(nodes) == [f"c{c:02d}" for c in CLASSES]
    for c in CLASSES:
        n = nodes[f"c{c:02d}"]
        frames = np.load(root / f"c{c:02d}" / "frames.npy")
        clips = n["clips"]["clips"][:]
        assert clips.shape == (K, 60, 25, 25, 3)
        np.testing.assert_array_equal(clips, frames.reshape(K, 60, 25, 25, 3))
        # the class HR is the device HR of every clip; the Welch peak of a 2-s pseudo-PPG (under two
        # beats at 55 bpm, plus a trend) lands within 12 % of it
        np.testing.assert_allclose(n["labels"]["clip_hr_device_bpm"][:], cnn3d.HR_CLASSES_BPM[c], atol=1e-3)
        assert np.all(np.abs(n["labels"]["clip_hr_bpm"][:] / cnn3d.HR_CLASSES_BPM[c] - 1) < 0.12)


def test_cnn3d_trains_on_the_build_and_writes_a_checkpoint(syn_build, tmp_path):
    from rppg_models.evaluate import load_checkpoint
    from rppg_models.train import fit_cnn3d

    _, cache = syn_build
    with torch_threads(2):
        res = fit_cnn3d(cache, steps=25, batch=16, device="cpu", out=tmp_path, progress=False)
    assert all(math.isfinite(v) for v in res["losses"])
    assert np.mean(res["losses"][-5:]) < 0.5 * res["losses"][0]
    model, meta = load_checkpoint(res["checkpoint"])
    assert meta["family"] == "cnn3d" and meta["build"]["key"] and len(meta["subjects"]) == len(CLASSES)
    assert isinstance(model, cnn3d.Cnn3d)


def test_train_cnn3d_refuses_a_build_of_other_clips(real_build):
    _, cache, _ = real_build
    res = CliRunner().invoke(main, ["train", "cnn3d", "--build", "ubfc", "--cache", str(cache), "--steps", "1"])
    assert res.exit_code != 0 and "(60, 25, 25)" in res.output


def test_synthetic_without_root_is_generated_in_the_cache(tmp_path):
    target = syn_ds.ensure_synthetic(tmp_path)
    assert target == tmp_path / "samples" / "synthetic-v1" and (target / "synthetic.json").exists()
    assert len(syn_ds.find_subjects(target)) == cnn3d.N_HR_CLASSES
    assert not list((tmp_path / "samples").glob(".*tmp*"))
    stamp = (target / "synthetic.json").stat().st_mtime_ns
    assert syn_ds.ensure_synthetic(tmp_path) == target and (target / "synthetic.json").stat().st_mtime_ns == stamp
