"""Tests of rppg_prep.protocols (rPPG-Toolbox evaluation parity): hand-computed metrics, detrending
against the dense formula, FFT HR on synthetic signals, windowed HR, SNR, then a real PPG record."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
from scipy import signal as sps

from rppg_prep import protocols as E


def pulse_wave(hr_bpm, fs_hz, duration_s, *, a2=0.8):
    """Noise-free PPG-like wave: fundamental + 2nd (amplitude ``a2``) + 3rd harmonic.

    ``hr_bpm`` may be a callable of time (s); the phase stays continuous.
    """
    t = np.arange(int(round(duration_s * fs_hz))) / fs_hz
    hr = hr_bpm(t) if callable(hr_bpm) else np.full_like(t, hr_bpm)
    ph = 2 * np.pi * np.cumsum(hr / 60.0) / fs_hz
    return t, np.cos(ph) + a2 * np.cos(2 * ph + 0.8) + 0.2 * np.cos(3 * ph + 1.9)


# ---------------------------------------------------------------------------- metrics

def test_metrics_equal_hand_computed_values():
    pred = [60.0, 72.0, 80.0, 100.0]
    ref = [62.0, 70.0, 85.0, 100.0]
    m = E.metrics(pred, ref)
    # errors e = pred - ref = [-2, 2, -5, 0]; |e| = [2, 2, 5, 0]; e^2 = [4, 4, 25, 0]; n = 4
    mae = (2 + 2 + 5 + 0) / 4                                                   # 2.25
    mae_se = np.sqrt(((2 - mae) ** 2 * 2 + (5 - mae) ** 2 + (0 - mae) ** 2) / 4) / np.sqrt(4)
    mse = (4 + 4 + 25 + 0) / 4                                                  # 8.25
    std_sq = np.sqrt(((4 - mse) ** 2 * 2 + (25 - mse) ** 2 + (0 - mse) ** 2) / 4)
    rmse, rmse_se = np.sqrt(mse), np.sqrt(std_sq / np.sqrt(4))
    ape = np.array([2 / 62, 2 / 70, 5 / 85, 0 / 100])
    mape = 100 * ape.sum() / 4
    mape_se = 100 * np.sqrt(((ape - ape.sum() / 4) ** 2).sum() / 4) / np.sqrt(4)
    # Pearson r by hand: means 78 and 79.25
    dp = np.array([60, 72, 80, 100]) - 78.0
    dr = np.array([62, 70, 85, 100]) - 79.25
    r = (dp * dr).sum() / np.sqrt((dp**2).sum() * (dr**2).sum())
    r_se = np.sqrt((1 - r**2) / (4 - 2))
    assert m.n == 4
    assert m.mae == pytest.approx(2.25, abs=1e-12) and mae == 2.25
    assert m.mae_se == pytest.approx(mae_se, rel=1e-12)
    assert m.rmse == pytest.approx(rmse, rel=1e-12)
    assert m.rmse_se == pytest.approx(rmse_se, rel=1e-12)
    assert m.mape == pytest.approx(mape, rel=1e-12)
    assert m.mape_se == pytest.approx(mape_se, rel=1e-12)
    assert m.pearson_r == pytest.approx(r, rel=1e-12)
    assert m.pearson_r_se == pytest.approx(r_se, rel=1e-12)
    assert np.isnan(m.snr_db) and np.isnan(m.snr_db_se)


def test_metrics_drop_nan_pairs_and_average_snr():
    m = E.metrics([60.0, np.nan, 72.0, 80.0, 90.0], [62.0, 70.0, np.inf, 85.0, 91.0],
                  snr_db=[3.0, 1.0, np.nan, 5.0, -2.0])
    ref = E.metrics([60.0, 80.0, 90.0], [62.0, 85.0, 91.0])
    assert m.n == 3 and m.mae == ref.mae and m.pearson_r == ref.pearson_r
    s = np.array([3.0, 1.0, 5.0, -2.0])
    assert m.snr_db == pytest.approx(7.0 / 4)
    assert m.snr_db_se == pytest.approx(np.sqrt(((s - 7.0 / 4) ** 2).mean()) / 2)


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="length"):
        E.metrics([60.0, 70.0, 80.0], [60.0, 70.0])
    with pytest.raises(ValueError, match="at least 2"):
        E.metrics([60.0, np.nan], [61.0, 70.0])
    with pytest.raises(ValueError, match="snr_db"):
        E.metrics([60.0, 70.0], [61.0, 70.0], snr_db=[1.0])
    two = E.metrics([60.0, 70.0], [61.0, 72.0])
    assert two.pearson_r == pytest.approx(1.0) and np.isnan(two.pearson_r_se)
    assert np.isnan(E.metrics([60.0, 60.0, 60.0], [61.0, 70.0, 80.0]).pearson_r)


# ---------------------------------------------------------------------------- detrending

def test_detrend_equals_dense_formula():
    n, lam = 300, 100.0
    rng = np.random.default_rng(1)
    x = rng.standard_normal(n).cumsum() + 0.01 * np.arange(n) ** 1.5
    d2 = np.zeros((n - 2, n))
    for i in range(n - 2):
        d2[i, i:i + 3] = [1.0, -2.0, 1.0]
    dense = x - np.linalg.inv(np.eye(n) + lam**2 * d2.T @ d2) @ x
    np.testing.assert_allclose(E.detrend_tarvainen(x, lam), dense, rtol=0, atol=1e-8)
    # a different lambda gives a different answer (the parameter is used)
    assert np.max(np.abs(E.detrend_tarvainen(x, 10.0) - dense)) > 1e-3


def test_detrend_removes_quadratic_keeps_pulse():
    fs = 30.0
    t = np.arange(1800) / fs
    pulse = np.sin(2 * np.pi * 1.2 * t)
    trend = 20 * ((t - 30) / 30) ** 2 + 0.05 * t
    assert np.corrcoef(pulse + trend, pulse)[0, 1] < 0.5
    assert np.corrcoef(E.detrend_tarvainen(pulse + trend), pulse)[0, 1] > 0.99


def test_detrend_long_signal_and_edge_cases():
    y = E.detrend_tarvainen(np.random.default_rng(2).standard_normal(6300).cumsum())  # sparse: ms
    assert y.shape == (6300,) and y.dtype == np.float64 and np.all(np.isfinite(y))
    np.testing.assert_array_equal(E.detrend_tarvainen([1.0, 2.0]), [0.0, 0.0])
    line = 3.0 + 0.5 * np.arange(50.0)                    # a line is in the null space of D2
    np.testing.assert_allclose(E.detrend_tarvainen(line), 0.0, atol=1e-9)
    with pytest.raises(ValueError):
        E.detrend_tarvainen(np.zeros((3, 3)))
    with pytest.raises(ValueError):
        E.detrend_tarvainen(np.zeros(10), lam=0.0)


# ---------------------------------------------------------------------------- FFT heart rate

@pytest.mark.parametrize("band", [E.BAND_NEURIPS, E.BAND_TOOLBOX_CURRENT])
def test_fft_hr_of_sinusoid_within_bin_resolution(band):
    fs, n = 30.0, 1800
    x = np.sin(2 * np.pi * 1.2 * np.arange(n) / fs + 0.3)
    nfft = 2048                                           # next power of two of 1800
    res_bpm = 60 * fs / nfft                              # 0.879 bpm
    for hr in (E.hr_fft_toolbox(x, fs, band), E.hr_from_bvp(x, fs, band_hz=band)):
        assert abs(hr - 72.0) <= res_bpm / 2 + 1e-9
        k = hr / 60 * nfft / fs
        assert k == pytest.approx(round(k), abs=1e-9)     # on the FFT grid: no interpolation


def test_fft_hr_equals_plain_fft_argmax():
    fs = 25.0
    rng = np.random.default_rng(3)
    x = np.sin(2 * np.pi * 1.7 * np.arange(1000) / fs) + 0.8 * rng.standard_normal(1000)
    nfft = 1024
    f = np.fft.rfftfreq(nfft, 1 / fs)
    p = np.abs(np.fft.rfft(x, nfft)) ** 2
    inband = (f >= 0.75) & (f <= 2.5)
    assert E.hr_fft_toolbox(x, fs) == pytest.approx(60 * f[inband][np.argmax(p[inband])], abs=1e-9)


@pytest.mark.parametrize("hr", [60.0, 66.0, 72.0])
def test_diff_label_path_gives_the_wave_hr(hr):
    fs = 30.0
    _, w = pulse_wave(hr, fs, 60.0, a2=0.9)
    res_bpm = 60 * fs / 2048
    hr_wave = E.hr_from_bvp(w, fs)
    assert abs(hr_wave - hr) <= res_bpm
    assert E.hr_from_bvp(np.diff(w), fs, diff_label=True) == pytest.approx(hr_wave, abs=res_bpm)
    # without integration the derivative's strong 2nd harmonic wins: the flag matters
    assert abs(E.hr_from_bvp(np.diff(w), fs) - 2 * hr) <= 2 * res_bpm


def test_hr_from_bvp_edge_cases():
    fs = 30.0
    assert np.isnan(E.hr_from_bvp(np.ones(9), fs))
    x = np.sin(2 * np.pi * 1.2 * np.arange(600) / fs)
    x[5] = np.nan
    assert np.isnan(E.hr_from_bvp(x, fs))
    assert np.isnan(E.hr_from_bvp(np.zeros(600), fs))
    with pytest.raises(ValueError, match="protocol"):
        E.hr_from_bvp(np.ones(600), fs, protocol="peak")
    with pytest.raises(ValueError, match="band_hz"):
        E.hr_from_bvp(np.ones(600), fs, band_hz=(0.75, 20.0))


# ---------------------------------------------------------------------------- windowed HR

def test_windowed_hr_follows_a_step_change():
    fs = 30.0
    _, w = pulse_wave(lambda t: np.where(t < 30.0, 60.0, 90.0), fs, 60.0, a2=0.4)
    windows, hr = E.windowed_hr(w, fs, window_s=10.0, stride_s=1.0)
    assert windows.dtype == np.int64 and windows.shape == (51, 2) and hr.shape == (51,)
    np.testing.assert_array_equal(windows[0], [0, 300])
    np.testing.assert_array_equal(windows[-1], [1500, 1800])
    res_bpm = 60 * fs / 512                               # 300 samples -> nfft 512: 3.5 bpm
    before = windows[:, 1] <= 900
    after = windows[:, 0] >= 900
    assert before.sum() == 21 and after.sum() == 21
    assert np.all(np.abs(hr[before] - 60.0) <= res_bpm)
    assert np.all(np.abs(hr[after] - 90.0) <= res_bpm)
    short_w, short_hr = E.windowed_hr(w[:200], fs)
    assert short_w.shape == (0, 2) and short_hr.shape == (0,)


# ---------------------------------------------------------------------------- SNR

def test_snr_toolbox_on_exact_bin_tones():
    fs, n = 32.0, 1024                                    # nfft = n: bins every 1/32 Hz, no leakage
    t = np.arange(n) / fs
    sig = np.cos(2 * np.pi * 1.25 * t)                    # f0 = 75 bpm, power 1/2
    noise = 0.5 * np.cos(2 * np.pi * 2.0 * t)             # in band, outside +/- 0.1 Hz: power 1/8
    harm2 = 0.5 * np.cos(2 * np.pi * 2.5 * t)             # 2nd harmonic: signal
    out = 3.0 * np.cos(2 * np.pi * 3.0 * t)               # outside 0.75-2.5 Hz: ignored
    snr = E.snr_toolbox(sig + noise + out, fs, 75.0, preprocess=False)
    assert snr == pytest.approx(20 * np.log10(0.5 / 0.125), abs=1e-9)    # 12.04 dB
    snr2 = E.snr_toolbox(sig + noise + harm2, fs, 75.0, preprocess=False)
    assert snr2 == pytest.approx(20 * np.log10((0.5 + 0.125) / 0.125), abs=1e-9)
    assert E.snr_toolbox(sig, fs, 75.0, preprocess=False) > 100.0      # only rounding noise
    assert E.snr_toolbox(np.zeros(n), fs, 75.0, preprocess=False) == 0.0  # no noise power: Toolbox 0
    assert np.isnan(E.snr_toolbox(sig, fs, np.nan))


def test_snr_toolbox_drops_with_noise():
    fs = 30.0
    _, w = pulse_wave(72.0, fs, 30.0, a2=0.4)
    rng = np.random.default_rng(4)
    clean = E.snr_toolbox(w + 0.1 * rng.standard_normal(w.size), fs, 72.0)
    noisy = E.snr_toolbox(w + 2.0 * rng.standard_normal(w.size), fs, 72.0)
    assert clean > 10.0 and noisy < clean - 10.0


# ---------------------------------------------------------------------------- real PPG record

def test_ppgdata_toolbox_hr_matches_annotated_beats(real_data):
    mat = scipy.io.loadmat(real_data / "ppg" / "iphys" / "PPGData.mat", squeeze_me=True, struct_as_record=False)
    ppg = mat["PPG"]
    x = np.asarray(ppg.data, dtype=np.float64).ravel()
    peaks = np.asarray(ppg.peaks, dtype=np.int64).ravel()
    fs = float(ppg.fs)
    assert fs == 250.0 and x.size == 15000 and peaks.size == 68
    ref_bpm = 60.0 / np.mean(np.diff(peaks) / fs)
    assert abs(ref_bpm - 67.8) < 0.05
    # the Toolbox applies its protocol at the video frame rate (labels resampled to frames)
    x30 = sps.resample_poly(x, 3, 25)
    hr30 = {band: E.hr_from_bvp(x30, 30.0, band_hz=band) for band in (E.BAND_NEURIPS, E.BAND_TOOLBOX_CURRENT)}
    # lambda = 100 is a ~0.016 fs high-pass: at 250 Hz it suppresses the fundamental and the
    # periodogram peak moves to the 2nd harmonic (documented pitfall)
    hr250 = E.hr_from_bvp(x, fs)
    hr_welch = E.hr_from_bvp(x, fs, protocol="welch")
    snr = E.snr_toolbox(x30, 30.0, ref_bpm)
    print(f"PPGData: annotated {ref_bpm:.2f} bpm; toolbox@30Hz {hr30}; toolbox@250Hz {hr250:.2f}; "
          f"welch@250Hz {hr_welch:.2f}; SNR {snr:.1f} dB")
    for hr in hr30.values():
        assert abs(hr - ref_bpm) < 1.5
    assert abs(hr_welch - ref_bpm) < 1.5
    assert abs(hr250 - 2 * ref_bpm) < 3.0
    assert snr > 10.0
