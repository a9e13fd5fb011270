"""Tests of rppg_models.cnn3d (Bousefsaf 3D-CNN) and rppg_prep.pseudo_ppg (its pseudo-PPG generator)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import torch_threads
from rppg_models import cnn3d
from rppg_prep import pseudo_ppg as synthetic

FS = 30.0


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def batch():
    """8 videos of every class (608), seed 0: (videos, labels)."""
    return synthetic.generate(8 * cnn3d.N_CLASSES, rng=np.random.default_rng(0))


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def detrended_traces(videos: np.ndarray) -> np.ndarray:
    """(n, 60) mean over pixels of each video, minus its least-squares cubic.

    The generator's trends are polynomials of degree <= 3, so this removes them exactly (the linear
    ramp reaches 3x the pulse amplitude and would otherwise leak into the 55-bpm end of the band).
    """
    x = videos.reshape(len(videos), 60, -1).mean(axis=-1).astype(float)
    basis = np.vander(np.linspace(-1, 1, 60), 4)
    coef, *_ = np.linalg.lstsq(basis, x.T, rcond=None)
    return x - (basis @ coef).T


def power_spectrum(x: np.ndarray, nfft: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed power spectrum of the rows of ``x``: (freq in bpm, power)."""
    return (np.fft.rfftfreq(nfft, 1 / FS) * 60.0,
            np.abs(np.fft.rfft(x * np.hanning(x.shape[-1]), nfft)) ** 2)


# ------------------------------------------------------------------------------------ model

def test_parameter_count_matches_reference():
    model = cnn3d.Cnn3d()
    assert n_params(model) == 929_388
    assert n_params(model.conv) == 742_432
    assert n_params(model.fc1) == 147_968
    assert n_params(model.fc2) == 38_988


def test_forward_shape_and_layouts():
    model = cnn3d.Cnn3d().eval()
    x = torch.randn(3, 1, 60, 25, 25)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (3, 76) and out.dtype == torch.float32
        # Keras channels-last and channel-less layouts give the same logits
        assert torch.equal(model(x.permute(0, 2, 3, 4, 1).contiguous()), out)
        assert torch.equal(model(x[:, 0]), out)
    with pytest.raises(ValueError, match="60, 25, 25"):
        model(torch.randn(2, 1, 59, 25, 25))
    probs = cnn3d.predict_proba(model.train(), x)
    assert model.training  # mode restored
    assert torch.allclose(probs.sum(-1), torch.ones(3))


def test_keras_flatten_order():
    """fc1 input index = (h * 3 + w) * 32 + c, as Keras' channels-last Flatten."""
    model = cnn3d.Cnn3d().eval()
    seen = {}

    def keep_input(module, inp, out):
        seen["x"] = inp[0]

    model.fc1.register_forward_hook(keep_input)
    x = torch.randn(1, 1, 60, 25, 25)
    with torch.no_grad():
        model(x)
        pooled = torch.relu(model.pool(model.conv(x)))[0, :, 0]  # (32, 3, 3)
    assert torch.equal(seen["x"][0].reshape(3, 3, 32), pooled.permute(1, 2, 0))


def test_class_mapping():
    bpm = cnn3d.CLASS_BPM
    assert bpm.shape == (76,) and bpm[0] == 55.0 and bpm[74] == 240.0 and bpm[75] == -1.0
    assert np.allclose(np.diff(bpm[:75]), 2.5)
    assert np.array_equal(cnn3d.bpm_to_class(bpm[:75]), np.arange(75))
    assert np.array_equal(cnn3d.bpm_to_class([56.2, 40.0, 300.0]), [0, 0, 74])
    logits = torch.full((2, 3, 76), -5.0)
    logits[0, :, 10] = 5.0
    logits[1, :, 75] = 5.0
    hr = cnn3d.hr_from_logits(logits)
    assert hr.shape == (2, 3)
    assert np.all(hr[0] == 80.0) and np.all(hr[1] == -1.0)


def test_reduce_hr_map():
    p = np.full((2, 3, 4, 76), 0.001)
    p[0, :, :, 75] = 1.0  # window 0: noise everywhere...
    p[0, 0, 0, 75], p[0, 0, 0, 20] = 0.0, 1.0  # ...except one patch at class 20
    p[1, :, :, 75] = 1.0
    p[1, :2, :, 40] = 0.6  # window 1: noise wins in the mean, HR class 40 wins among HR classes
    p[1, 0, 0, 40] = 2.0
    p /= p.sum(-1, keepdims=True)
    assert np.array_equal(cnn3d.reduce_hr_map(p), [cnn3d.CLASS_BPM[20], cnn3d.CLASS_BPM[40]])
    mask = np.zeros((3, 4), bool)
    mask[2] = True  # only noise patches
    assert np.array_equal(cnn3d.reduce_hr_map(p, mask), [-1.0, -1.0])
    with pytest.raises(ValueError):
        cnn3d.reduce_hr_map(p, np.zeros((3, 4), bool))


def test_predict_map_shape():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (62, 27, 26, 3), dtype=np.uint8)
    out = cnn3d.predict_map(cnn3d.Cnn3d(), frames, rng=rng, batch_size=2)
    assert out.shape == (3, 3, 2, 76)
    assert np.allclose(out.sum(-1), 1.0, atol=1e-5)
    assert cnn3d.predict_map(cnn3d.Cnn3d(), frames[..., 1] / 255.0, patch_stride=2,
                             time_stride=2).shape == (2, 2, 1, 76)


def test_one_optimiser_step_lowers_cross_entropy(batch):
    videos, labels = batch
    x, y = torch.from_numpy(videos[:76:2]), torch.from_numpy(labels[:76:2])  # 38 classes, one each
    torch.manual_seed(0)
    model = cnn3d.Cnn3d()
    opt = cnn3d.make_optimizer(model)
    loss_fn = torch.nn.CrossEntropyLoss()

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(x), y))

    before = eval_loss()
    model.train()
    opt.zero_grad()
    loss_fn(model(x), y).backward()
    opt.step()
    assert eval_loss() < before


# -------------------------------------------------------------------------------- generator

def test_generator_shapes_dtypes_and_determinism(batch):
    videos, labels = batch
    assert videos.shape == (608, 1, 60, 25, 25) and videos.dtype == np.float32
    assert labels.dtype == np.int64 and np.array_equal(np.bincount(labels), np.full(76, 8))
    assert np.abs(videos.mean(axis=(1, 2, 3, 4))).max() < 1e-6  # zero-mean videos
    v1, l1 = synthetic.generate(100, rng=np.random.default_rng(5))
    v2, l2 = synthetic.generate(100, rng=np.random.default_rng(5), chunk_size=7)
    assert np.array_equal(v2, v1) and np.array_equal(l2, l1)  # same seed -> same arrays, any chunking
    v3, _ = synthetic.generate(100, rng=np.random.default_rng(6))
    assert not np.array_equal(v3, v1)
    with pytest.raises(ValueError):
        synthetic.generate(2, rng=np.random.default_rng(0), labels=[0, 76])


def test_pulse_videos_are_quantised_noise_videos_are_not(batch):
    videos, labels = batch
    pulse = videos[np.flatnonzero(labels < 75)[:20]].reshape(20, -1).astype(float)
    steps = (pulse - pulse.min(axis=1, keepdims=True)) * 255.0  # integer grey levels
    assert np.abs(steps - np.rint(steps)).max() < 1e-3
    noise = videos[np.flatnonzero(labels == 75)[:2]].reshape(2, -1)
    assert all(len(np.unique(v)) > 10_000 for v in noise)


def test_generator_dominant_frequency_is_class_hr(batch):
    videos, labels = batch
    pulse = labels < cnn3d.NOISE_CLASS
    f, power = power_spectrum(detrended_traces(videos[pulse]), nfft=2048)
    band = (f >= 40) & (f <= 255)  # HR range 55-240 bpm, plus half a resolution cell
    peak = f[band][power[:, band].argmax(axis=1)]
    resolution = FS / 60 * 60.0  # 1 / (2 s) = 0.5 Hz = 30 bpm
    err = np.abs(peak - cnn3d.CLASS_BPM[labels[pulse]])
    assert err.max() <= resolution / 2  # in fact ~10 bpm


def test_noise_class_has_no_dominant_peak(batch):
    videos, labels = batch
    f, power = power_spectrum(detrended_traces(videos), nfft=60)  # unpadded: 0.5-Hz bins
    band = (f >= 55) & (f <= 240)
    ratio = power[:, band].max(axis=1) / power[:, band].sum(axis=1)  # peak-to-band power
    noise, pulse = ratio[labels == 75], ratio[labels < 75]
    assert noise.max() < np.median(pulse)
    assert np.median(noise) < 0.75 * np.median(pulse)
