"""Tests of rppg_models.st2s: the ST2S-rPPG stage-1 CNN regressor and stage-2 good/bad classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import torch_threads
from rppg_models import st2s


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def brightness_images(hr_bpm: np.ndarray, seed: int = 0) -> torch.Tensor:
    """(N, 3, 64, 64) images whose uniform brightness encodes HR (50-120 bpm -> ~0.06-0.94)."""
    rng = np.random.default_rng(seed)
    level = ((hr_bpm - 45.0) / 80.0)[:, None, None, None]
    noise = rng.normal(0.0, 0.02, (len(hr_bpm), 3, 64, 64))
    return torch.from_numpy(np.clip(level + noise, 0, 1).astype(np.float32))


# ------------------------------------------------------------------------------ stage-1 CNN

def test_cnn_parameter_count_and_forward_shape():
    model = st2s.St2sCnn()
    assert n_params(model) == 548_129
    assert n_params(st2s.St2sCnn(hidden_units=3)) == 35_879  # the reference's accidental size
    out = model(torch.rand(4, 3, 64, 64))
    assert out.shape == (4,) and out.dtype == torch.float32


def test_cnn_rejects_unresized_input():
    # the reference silently reshaped a 3x64x900 image into pseudo-samples
    with pytest.raises(ValueError, match="64, 64"):
        st2s.St2sCnn()(torch.rand(1, 3, 64, 900))


def test_st_to_tensor_resizes_and_scales():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 128, 885, 3), dtype=np.uint8)
    images[1] = 255
    x = st2s.st_to_tensor(images, "paper")
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.allclose(x[1], torch.ones(3, 64, 64))
    # INTER_AREA averages: a random image's mean brightness is preserved
    assert abs(float(x[0].mean()) - images[0].mean() / 255.0) < 0.01
    # channel order kept (RGB in, RGB channels out)
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 200
    x_red = st2s.st_to_tensor(red, layout="paper")[0]
    assert float(x_red[0].mean()) == pytest.approx(200 / 255) and float(x_red[1:].max()) == 0.0
    with pytest.raises(ValueError):
        st2s.st_to_tensor(images.astype(np.float32))
    with pytest.raises(ValueError, match="layout"):
        st2s.st_to_tensor(images, "square")


def st_images_of(frames: np.ndarray, strip_px: int = 3) -> np.ndarray:
    """(T, H, W, 3) uint8 frames -> (R, H, strip_px * T, 3) ST images, the store's recipe."""
    from rppg_prep.stages.st_map import st_images, strip_columns

    return st_images(frames, strip_columns(frames.shape[2], strip_px, 1 / 6), strip_px)


def test_time_layout_keeps_a_column_per_frame_and_the_parameter_count():
    assert st2s.input_shape("time") == (3, 64, 300) and st2s.input_shape("paper") == (3, 64, 64)
    # a frame counter: frame t has brightness t in every pixel, 250 frames (a 25-fps segment)
    t = np.arange(250)
    frames = np.broadcast_to(t[:, None, None, None], (250, 128, 48, 3)).astype(np.uint8)
    x = st2s.st_to_tensor(st_images_of(frames), "time")
    assert x.shape[1:] == (3, 64, 300) and x.shape[0] == len(st_images_of(frames[:1]))
    col = x[0, 1, 5].numpy()
    assert col.shape[0] >= 300  # at least one column per frame at 30 fps
    assert np.all(np.diff(col) > 0)  # time order kept, no two frames merged
    ramp = np.clip((np.arange(300) + 0.5) * 250 / 300 - 0.5, 0, 249)  # OpenCV's linear resampling
    expected = (ramp - ramp.mean()) / ramp.std()
    np.testing.assert_allclose(col, expected, atol=0.02)  # linear in time: a linear resampling
    model = st2s.St2sCnn(input_size=(64, 300))
    assert n_params(model) == 548_129
    assert model(x[:2]).shape == (2,)
    with pytest.raises(ValueError, match="64, 300"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple"):
        st2s.st_to_tensor(np.zeros((1, 8, 100, 3), np.uint8), "time")


def test_time_layout_normalises_each_row_over_time():
    rng = np.random.default_rng(6)
    n, h = 300, 128
    # each face row and channel its own offset and contrast, the same pulse at 1.5 Hz in all
    pulse = np.sin(2 * np.pi * 1.5 * np.arange(n) / 30.0)
    offset = rng.uniform(70, 180, (h, 1, 3))
    gain = rng.uniform(5, 40, (h, 1, 3))
    frames = offset[None] + gain[None] * pulse[:, None, None, None] + rng.normal(0, 0.3, (n, h, 1, 3))
    frames = np.repeat(np.clip(frames, 0, 255), 30, axis=2).astype(np.uint8)  # (T, H, 30, 3)
    frames[:, :10] = 77  # constant rows (a flat background): 0, not NaN
    x = st2s.st_to_tensor(st_images_of(frames), "time").numpy()
    assert np.isfinite(x).all()
    rows = x[:, :, 5:]  # rows 5.. come from varying face rows only
    np.testing.assert_allclose(rows.mean(-1), 0.0, atol=1e-4)
    np.testing.assert_allclose(rows.std(-1), 1.0, atol=1e-3)
    assert np.abs(x[:, :, :5]).max() == 0.0
    # every row now carries the pulse at the same scale, whatever its offset and contrast
    assert np.corrcoef(rows[0, 1, 20], rows[0, 0, 40])[0, 1] > 0.99
    np.testing.assert_allclose(rows[0, 1, 20], rows[0, 0, 40], atol=0.25)


def test_paper_layout_flag_still_gives_the_papers_image():
    images = np.random.default_rng(7).integers(0, 256, (3, 128, 888, 3), dtype=np.uint8)
    x = st2s.st_to_tensor(images, "paper")
    assert x.shape == (3, 3, 64, 64) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    model = st2s.St2sCnn()  # the paper's input size by default
    assert model.input_size == (64, 64) and n_params(model) == 548_129
    # a paper-layout state dict loads into the pooled model unchanged (the pool is the identity)
    assert set(model.state_dict()) == {"features.0.weight", "features.0.bias", "features.3.weight",
                                       "features.3.bias", "features.6.weight", "features.6.bias",
                                       "head.1.weight", "head.1.bias", "head.3.weight", "head.3.bias"}
    feats = model.features(x)
    assert torch.equal(model.pool(feats), feats)


def pulse_st_images(hr_bpm: float, rng: np.random.Generator, *, n_frames: int = 300, fps: float = 30.0,
                    rows: int = 32, width: int = 12) -> np.ndarray:
    """ST images (the store's recipe) of a 10-s synthetic face video with a pulse at ``hr_bpm``.

    Every face row has its own skin tone and pulse amplitude (2-4 grey levels, strongest in green),
    all rows share a slow brightness drift, and every pixel has sensor noise (sd 1 level). Returns
    (R, rows, 3 * n_frames, 3) uint8, R = 3 strips for ``width`` 12.
    """
    t = np.arange(n_frames) / fps
    pulse = np.sin(2 * np.pi * hr_bpm / 60.0 * t + rng.uniform(0, 2 * np.pi))
    base = rng.uniform(90, 170, (1, rows, 1, 3))
    gain = np.array([0.5, 1.0, 0.3]) * rng.uniform(2, 4, (1, rows, 1, 1))
    drift = np.cumsum(rng.normal(0, 0.1, n_frames))[:, None, None, None]
    frames = base + drift + gain * pulse[:, None, None, None] + rng.normal(0, 1.0, (n_frames, rows, width, 3))
    return st_images_of(np.clip(frames, 0, 255).astype(np.uint8))


def test_time_layout_cnn_learns_hr_from_the_pulse():
    """Where the pulse is in the images (and nothing else tells HR), the time-layout CNN reads it."""
    rng = np.random.default_rng(0)
    hr_train, hr_test = rng.uniform(50, 150, 96), rng.uniform(55, 145, 24)
    x_train = st2s.st_to_tensor(np.concatenate([pulse_st_images(h, rng)[:1] for h in hr_train]), "time")
    x_test = st2s.st_to_tensor(np.concatenate([pulse_st_images(h, rng)[:1] for h in hr_test]), "time")
    model = st2s.fit_regressor(x_train, hr_train, epochs=8, batch=8, seed=0, bias_init=True)
    mae = np.abs(st2s.predict_hr(model, x_test) - hr_test).mean()
    constant = np.abs(hr_test - hr_train.mean()).mean()  # ~26 bpm
    assert mae < 0.5 * constant, (mae, constant)


def test_bias_init_starts_at_the_mean_hr_and_on_epoch_sees_every_epoch():
    hr = np.linspace(60, 100, 8).astype(np.float32)
    x = brightness_images(hr)
    seen = []
    model = st2s.fit_regressor(x, hr, epochs=2, batch=4, bias_init=True,
                               on_epoch=lambda e, m: seen.append((e, m.training)))
    assert seen == [(1, False), (2, False)] and not model.training
    plain = st2s.fit_regressor(x, hr, epochs=1, lr=1e-12, bias_init=False)
    init = st2s.fit_regressor(x, hr, epochs=1, lr=1e-12, bias_init=True)
    assert init.head[-1].bias.item() == pytest.approx(80.0, abs=1e-3)
    assert abs(plain.head[-1].bias.item()) < 1.0


# --------------------------------------------------------------------------- good/bad rule

def test_good_bad_labels_threshold_edges_and_nan():
    label = np.array([70.0, 70.0, 70.0, 70.0, np.nan, 70.0])
    pred = np.array([74.99, 75.0, 75.01, 64.0, 70.0, np.nan])
    out = st2s.good_bad_labels(pred, label, 5.0)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError):
        st2s.good_bad_labels(pred[:2], label, 5.0)
    with pytest.raises(ValueError):
        st2s.good_bad_labels(pred, label, -1.0)


# ------------------------------------------------------------------------------ HOG features

def test_hog_features_length_and_content():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (2, 128, 885, 3), dtype=np.uint8)
    feats = st2s.hog_features(images)
    assert feats.shape == (2, 34_020) == (2, st2s.HOG_LENGTH) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and (feats >= 0).all() and feats.std() > 0
    flat = st2s.hog_features(np.full((1, 40, 60, 3), 128, np.uint8))
    assert np.allclose(flat, 0.0)  # no gradients anywhere


# -------------------------------------------------------------------------- stage-1 training

def test_one_adam_step_lowers_l1_loss():
    torch.manual_seed(0)
    model = st2s.St2sCnn()
    x = torch.rand(8, 3, 64, 64)
    y = torch.full((8,), 0.5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss0 = torch.nn.functional.l1_loss(model(x), y)
    loss0.backward()
    opt.step()
    with torch.no_grad():
        loss1 = torch.nn.functional.l1_loss(model(x), y)
    assert loss1.item() < loss0.item()


def test_fit_regressor_learns_brightness_to_hr():
    rng = np.random.default_rng(3)
    hr = rng.uniform(50, 120, 32).astype(np.float32)
    x = brightness_images(hr)
    model = st2s.fit_regressor(x, hr, epochs=6, lr=1e-3, batch=4, seed=0)
    assert not model.training
    pred = st2s.predict_hr(model, x, batch=10)  # several prediction batches
    assert pred.shape == (32,) and pred.dtype == np.float32
    mae = np.abs(pred - hr).mean()
    assert mae < 0.25 * hr.std(), (mae, hr.std())


def test_fit_regressor_same_seed_same_weights():
    hr = np.linspace(60, 100, 12).astype(np.float32)
    x = brightness_images(hr, seed=4)
    a = st2s.fit_regressor(x, hr, epochs=1, batch=4, seed=7).state_dict()
    b = st2s.fit_regressor(x, hr, epochs=1, batch=4, seed=7).state_dict()
    c = st2s.fit_regressor(x, hr, epochs=1, batch=4, seed=8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_fit_regressor_rejects_bad_input():
    x = torch.rand(3, 3, 64, 64)
    with pytest.raises(ValueError):
        st2s.fit_regressor(x, [70.0, np.nan, 80.0], epochs=1)
    with pytest.raises(ValueError):
        st2s.fit_regressor(x, [70.0, 80.0], epochs=1)


# ------------------------------------------------------------------------ stage-2 classifier

def hog_like(n: int, rng: np.random.Generator, n_features: int = st2s.HOG_LENGTH):
    """Non-negative HOG-like features; class 1 (bad) has 2,000 features raised by 0.1."""
    labels = rng.integers(0, 2, n)
    feats = rng.uniform(0.0, 0.2, (n, n_features)).astype(np.float32)
    feats[labels == 1, :2000] += 0.1
    return feats, labels


def test_classifier_architecture():
    clf = st2s.St2sClassifier()
    linears = [m for m in clf.net if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [200] * 6 + [2]
    assert linears[0].in_features == 34_020
    assert clf(torch.rand(3, 34_020)).shape == (3, 2)


def test_classifier_separates_synthetic_features():
    rng = np.random.default_rng(5)
    train_x, train_y = hog_like(200, rng)
    test_x, test_y = hog_like(100, rng)
    clf = st2s.fit_classifier(train_x, train_y, epochs=3, lr=1e-2, batch=50, seed=0)
    assert torch.allclose(clf.mean, torch.from_numpy(train_x.mean(0)), atol=1e-5)
    keep = st2s.predict_keep(clf, test_x)
    assert keep.dtype == np.bool_ and keep.shape == (100,)
    accuracy = (keep == (test_y == 0)).mean()
    assert accuracy > 0.9, accuracy
    with pytest.raises(ValueError):  # wrong feature length is refused, not reshaped
        st2s.predict_keep(clf, test_x[:, :-1])


def test_fit_classifier_rejects_bad_labels():
    with pytest.raises(ValueError):
        st2s.fit_classifier(np.zeros((4, 10)), [0, 1, 2, 0], epochs=1)


# ------------------------------------------------------------------------------ segment HR

def test_segment_hr_kept_mean_and_flagged_fallback():
    pred = np.array([70.0, 80.0, 200.0, 60.0, 64.0, 90.0])
    keep = np.array([True, True, False, False, False, True])
    segment_of = np.array([3, 3, 3, 5, 5, 9])
    hr, flagged = st2s.segment_hr(pred, keep, segment_of)
    np.testing.assert_allclose(hr, [75.0, 62.0, 90.0])  # segments 3, 5, 9 in ascending order
    np.testing.assert_array_equal(flagged, [False, True, False])
    with pytest.raises(ValueError):
        st2s.segment_hr(pred, keep[:3], segment_of)
