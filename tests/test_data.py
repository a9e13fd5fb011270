"""The torch Dataset over a build: shapes, normalisations, labels, lazy opening in DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.utils.data import DataLoader

from rppg_models.data import ClipDataset, normalize, subject_folds
from rppg_prep.cli import main
from rppg_prep.sample import SAMPLE_HR_BPM, write_ubfc_sample


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root, cache = tmp_path_factory.mktemp("data_root"), tmp_path_factory.mktemp("data_cache")
    write_ubfc_sample(root, n_subjects=2, duration_s=12.0, seed=4)
    assert CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)]).exit_code == 0
    return cache


def test_items_have_the_layout_and_labels_of_the_build(cache):
    ds = ClipDataset(cache, "ubfc", "ubfc", layout="NCDHW")
    assert len(ds) == 2 * ((360 - 160) // 60 + 1)
    x, bvp, hr, idx = ds[1]
    assert x.shape == (3, 160, 64, 64) and x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0
    assert bvp.shape == (160,) and abs(float(bvp.mean())) < 1e-4 and abs(float(bvp.std()) - 1) < 0.01
    assert 50 < float(hr) < 120 and idx.tolist() == [0, 1]
    assert ClipDataset(cache, "ubfc", "ubfc", layout="NDCHW")[0][0].shape == (160, 3, 64, 64)


def test_normalisations():
    rng = np.random.default_rng(0)
    clip = rng.integers(50, 200, (8, 4, 4, 3), dtype=np.uint8)
    st = normalize(clip, "standardized")
    assert abs(st.mean()) < 1e-5 and abs(st.std() - 1) < 1e-4
    dn = normalize(clip, "diffnorm")
    assert np.all(dn[-1] == 0) and abs(dn.std() - 1) < 1e-3
    x = clip.astype(np.float32)
    ref = (x[1] - x[0]) / (x[1] + x[0] + 1e-7)
    np.testing.assert_allclose(dn[0] / dn[0].std(), ref / ref.std(), rtol=1e-4)
    tm = normalize(clip, "temporal")
    np.testing.assert_allclose(tm.mean(axis=0), 0.0, atol=1e-5)  # every pixel's clip mean is gone
    assert abs(tm.std() - 1) < 1e-4
    still = normalize(np.repeat(clip[:1], 8, axis=0), "temporal")
    assert np.all(still == 0)  # a face that does not change carries nothing
    with pytest.raises(ValueError):
        normalize(clip, "nope")


def test_hr_label_and_size_choices(cache):
    beats = ClipDataset(cache, "ubfc", "ubfc", hr_label="beats", size_px=16)
    welch = ClipDataset(cache, "ubfc", "ubfc", hr_label="welch")
    x, _, hr_b, _ = beats[0]
    assert x.shape == (3, 160, 16, 16)
    hr_w = welch[0][2]
    assert 50 < float(hr_b) < 120 and abs(float(hr_b) - float(hr_w)) < 10  # the sample's HR drifts slowly
    with pytest.raises(ValueError, match="hr_label"):
        ClipDataset(cache, "ubfc", "ubfc", hr_label="oximeter")


def _peak_bpm(sig: np.ndarray, fs_hz: float = 30.0) -> float:
    sig = sig - sig.mean()
    f = np.fft.rfftfreq(4096, 1 / fs_hz)
    return float(60 * f[np.argmax(np.abs(np.fft.rfft(sig, 4096)))])


@pytest.mark.parametrize("k", [0.5, 2.0])
def test_speed_scales_the_pulse_of_pixels_and_label_alike(cache, k):
    """A window of 160 k frames resampled to 160 shows the pulse at HR x k, in the face and in the label."""
    torch.manual_seed(0)
    ds = ClipDataset(cache, "ubfc", "ubfc", subjects=["subject1"], norm="raw", size_px=16, jitter=True,
                     speed=(k, k))
    for i in range(3):
        x, bvp, hr, _ = ds[i]
        assert x.shape == (3, 160, 16, 16) and bvp.shape == (160,) and np.isnan(float(hr))
        want = SAMPLE_HR_BPM[0] * k  # the sample's subject1 beats at 66 bpm, drifting +/-2
        assert abs(_peak_bpm(bvp.numpy()) - want) < 2 * k + 2
        # the sample's face brightens with the pulse: its mean green follows the label's rate
        assert abs(_peak_bpm(x[1].mean(axis=(1, 2)).numpy()) - _peak_bpm(bvp.numpy())) < 3
    plain = ClipDataset(cache, "ubfc", "ubfc", subjects=["subject1"], norm="raw", size_px=16, jitter=True)
    assert abs(_peak_bpm(plain[0][1].numpy()) - SAMPLE_HR_BPM[0]) < 4
    with pytest.raises(ValueError, match="speed needs jitter"):
        ClipDataset(cache, "ubfc", "ubfc", speed=(0.7, 1.4))


def test_subject_folds_are_disjoint_and_cover_everyone():
    subs = [f"s{i}" for i in range(7)]
    tests = []
    for k in range(3):
        train, test = subject_folds(subs, 3, k)
        assert not set(train) & set(test) and set(train) | set(test) == set(subs)
        tests += test
    assert sorted(tests) == sorted(subs)


def test_dataloader_workers_open_the_store_themselves(cache):
    ds = ClipDataset(cache, "ubfc", "ubfc", subjects=["subject2"], norm="diffnorm")
    loader = DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    assert sum(len(b[0]) for b in batches) == len(ds)
    assert ds._open is None  # the parent never opened it: each worker did
