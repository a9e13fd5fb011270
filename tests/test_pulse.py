"""Tests of rppg_prep.pulse: synthetic signals with known answers, then real PPG recordings."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from conftest import require_real_data
from rppg_prep import pulse as S
from rppg_prep.datasets import ubfc


# ---------------------------------------------------------------------------- synthetic signals

def ppg_like(hr_bpm, fs_hz, duration_s, *, noise=0.3, drift=1.0, seed=0):
    """PPG-shaped pulse train (fundamental + 2 harmonics) with white noise and baseline drift.

    ``hr_bpm`` may be a callable of time (s) for a varying HR.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(duration_s * fs_hz))) / fs_hz
    hr = hr_bpm(t) if callable(hr_bpm) else np.full_like(t, hr_bpm)
    phase = 2 * np.pi * np.cumsum(hr / 60.0) / fs_hz
    pulse = np.cos(phase) + 0.5 * np.cos(2 * phase + 0.8) + 0.2 * np.cos(3 * phase + 1.9)
    baseline = drift * (np.sin(2 * np.pi * 0.07 * t + 0.3) + 0.05 * t)
    return t, pulse + baseline + noise * rng.standard_normal(t.size)


@pytest.mark.parametrize("hr", [45.0, 63.3, 78.0, 101.7, 143.0, 190.0])
@pytest.mark.parametrize("fs", [30.0, 29.5, 60.0])
def test_hr_welch_ppg_like_10s(hr, fs):
    _, x = ppg_like(hr, fs, 10.0, seed=int(hr * 10))
    assert abs(S.hr_welch(x, fs) - hr) < 0.5


@pytest.mark.parametrize("hr", [57.0, 88.8, 120.0])
def test_hr_welch_pure_sinusoid_with_noise(hr):
    fs = 30.0
    t = np.arange(300) / fs
    x = np.sin(2 * np.pi * hr / 60 * t + 1.0) + 0.5 * np.random.default_rng(1).standard_normal(t.size)
    assert abs(S.hr_welch(x, fs) - hr) < 0.5


def test_hr_welch_long_signal_uses_welch_segments_and_tracks_mean_hr():
    fs = 30.0
    _, x = ppg_like(84.0, fs, 60.0, noise=0.5, seed=3)
    assert abs(S.hr_welch(x, fs) - 84.0) < 0.5
    # HR ramping 70 -> 80 bpm: the estimate must land near the mean, not at an end of the ramp
    _, x = ppg_like(lambda t: 70.0 + 10.0 * t / 60.0, fs, 60.0, noise=0.2, seed=4)
    assert abs(S.hr_welch(x, fs) - 75.0) < 2.0


def test_hr_welch_long_record_with_wandering_hr_estimates_mean_hr():
    """8-s Welch segments follow the mean HR of a long record whose HR wanders (random walk)."""
    fs, errs, errs_single = 30.0, [], []
    for seed in range(20):
        steps = np.cumsum(np.random.default_rng(seed).normal(0.0, 2.0, 13))
        hr_of_t = lambda t, k=steps - steps.mean(): 80.0 + np.interp(t, np.linspace(0, 60, 13), k)  # noqa: E731
        t, x = ppg_like(hr_of_t, fs, 60.0, noise=1.0, seed=seed + 100)
        errs.append(abs(S.hr_welch(x, fs) - hr_of_t(t).mean()))
        errs_single.append(abs(S.hr_welch(x, fs, segment_s=1e3) - hr_of_t(t).mean()))
    assert np.mean(errs) < 0.6 and np.max(errs) < 3.0
    assert np.mean(errs) < 0.5 * np.mean(errs_single)  # one 60-s periodogram is worse


def test_hr_welch_respects_band():
    fs = 30.0
    t = np.arange(300) / fs
    x = np.sin(2 * np.pi * 0.5 * t) + 0.3 * np.sin(2 * np.pi * 1.5 * t)  # 30 bpm (out of band) + 90 bpm
    assert abs(S.hr_welch(x, fs) - 90.0) < 0.5
    assert abs(S.hr_welch(x, fs, band_hz=(0.3, 3.5)) - 30.0) < 0.5


def test_hr_welch_nan_on_unusable_input():
    fs = 30.0
    _, x = ppg_like(80.0, fs, 10.0)
    assert np.isnan(S.hr_welch(np.ones(300), fs))
    assert np.isnan(S.hr_welch(x[:20], fs))  # < one period of 0.7 Hz
    y = x.copy()
    y[17] = np.nan
    assert np.isnan(S.hr_welch(y, fs))
    with pytest.raises(ValueError):
        S.hr_welch(x.reshape(30, 10), fs)
    with pytest.raises(ValueError):
        S.hr_welch(x, 5.0)  # band 0.7-3.5 Hz is above the 2.5-Hz Nyquist frequency
    with pytest.raises(ValueError):
        S.hr_welch(x, fs, band_hz=(2.0, 1.0))


def test_hr_per_window_matches_hr_welch_and_accepts_per_window_rates():
    fs = 30.0
    _, x = ppg_like(lambda t: 60.0 + t, fs, 40.0, noise=0.1, seed=5)  # HR rises 1 bpm per second
    w = S.sliding_windows(x.size, 300, 150)
    hr = S.hr_per_window(x, fs, w)
    assert hr.dtype == np.float32 and hr.shape == (len(w),)
    np.testing.assert_allclose(hr, [S.hr_welch(x[a:b], fs) for a, b in w], rtol=1e-6)
    mid_hr = 60.0 + (w.mean(axis=1)) / fs
    assert np.all(np.abs(hr - mid_hr) < 1.0)
    assert np.all(np.diff(hr) > 0)
    # a per-window rate is used: claiming 2x the rate doubles the HR
    np.testing.assert_allclose(S.hr_per_window(x, np.full(len(w), 2 * fs), w), 2 * hr, rtol=1e-5)
    assert S.hr_per_window(x, fs, np.zeros((0, 2), np.int64)).shape == (0,)
    fs_w = np.full(len(w), fs)
    fs_w[1] = np.nan  # e.g. a one-frame window on an irregular clock
    hr_nan = S.hr_per_window(x, fs_w, w)
    assert np.isnan(hr_nan[1]) and np.array_equal(np.delete(hr_nan, 1), np.delete(hr, 1))
    with pytest.raises(ValueError):
        S.hr_welch(x, fs, segment_s=0.0)
    with pytest.raises(ValueError):
        S.hr_per_window(x, fs, [[0, x.size + 1]])


def test_snr_clean_sinusoid_far_above_noise():
    fs, hr = 30.0, 75.0
    t = np.arange(300) / fs
    rng = np.random.default_rng(7)
    clean = np.sin(2 * np.pi * hr / 60 * t)
    noise = rng.standard_normal(t.size)
    snr_clean = S.snr_db(clean, fs, hr)
    snr_noise = S.snr_db(noise, fs, hr)
    # a 10-s Hann window caps a perfect sinusoid at ~10.4 dB (main lobe +/-0.2 Hz vs template +/-0.1 Hz)
    assert 9.5 < snr_clean < 11.0
    assert snr_noise < -3.0
    assert snr_clean - snr_noise > 15.0
    # the cap rises with duration: a single segment is used, not 8-s Welch segments
    t30 = np.arange(900) / fs
    assert S.snr_db(np.sin(2 * np.pi * hr / 60 * t30), fs, hr) > 30.0
    # SNR falls as noise grows, and the wrong HR scores far below the right one
    levels = [S.snr_db(clean + a * noise, fs, hr) for a in (0.1, 0.5, 2.0)]
    assert levels[0] > levels[1] > levels[2]
    assert S.snr_db(clean, fs, 120.0) < snr_clean - 15.0
    assert np.isnan(S.snr_db(clean, fs, float("nan")))


def test_snr_counts_second_harmonic():
    fs, hr = 30.0, 72.0
    t = np.arange(300) / fs
    f0 = hr / 60
    with_h2 = np.sin(2 * np.pi * f0 * t) + 0.8 * np.sin(2 * np.pi * 2 * f0 * t)
    with_other = np.sin(2 * np.pi * f0 * t) + 0.8 * np.sin(2 * np.pi * 1.55 * f0 * t)
    assert S.snr_db(with_h2, fs, hr) > S.snr_db(with_other, fs, hr) + 8.0


def test_snr_per_window_shapes_and_values():
    fs = 30.0
    _, x = ppg_like(90.0, fs, 30.0, noise=0.2)
    w = S.sliding_windows(x.size, 300, 60)
    snr = S.snr_per_window(x, fs, w, 90.0, (0.7, 3.5))
    assert snr.dtype == np.float32 and snr.shape == (len(w),)
    assert np.all(snr > 5.0)
    hr = np.full(len(w), 90.0)
    hr[1] = np.nan
    hr[2] = 150.0
    snr2 = S.snr_per_window(x, fs, w, hr, (0.7, 3.5))
    assert np.isnan(snr2[1]) and snr2[2] < snr[2] - 10.0


def test_resample_to_frames_analytic():
    rng = np.random.default_rng(11)
    t_src = np.cumsum(rng.uniform(0.01, 0.02, 4000))  # irregular ~67 Hz source clock
    f = lambda t: np.sin(2 * np.pi * 0.9 * t) + 0.3 * t  # noqa: E731
    t_frames = np.arange(t_src[0], t_src[-1], 1 / 29.97)
    y = S.resample_to_frames(t_src, f(t_src), t_frames)
    assert y.dtype == np.float32 and y.shape == t_frames.shape
    # linear interpolation error <= h^2 / 8 * max|f''| with h <= 0.02 s
    bound = 0.02**2 / 8 * (2 * np.pi * 0.9) ** 2 + 1e-5
    assert np.max(np.abs(y - f(t_frames))) < bound
    # edge hold outside the source range
    y_edge = S.resample_to_frames(t_src, f(t_src), [t_src[0] - 5.0, t_src[-1] + 5.0])
    np.testing.assert_allclose(y_edge, [f(t_src[0]), f(t_src[-1])], rtol=1e-6)


def test_resample_to_frames_rejects_bad_input():
    with pytest.raises(ValueError):
        S.resample_to_frames([0.0, 1.0, 1.0], [1.0, 2.0, 3.0], [0.5])
    with pytest.raises(ValueError):
        S.resample_to_frames([0.0, 2.0, 1.0], [1.0, 2.0, 3.0], [0.5])
    with pytest.raises(ValueError):
        S.resample_to_frames([0.0, 1.0], [1.0, 2.0, 3.0], [0.5])
    with pytest.raises(ValueError):
        S.resample_to_frames([], [], [0.5])
    with pytest.raises(ValueError):
        S.resample_to_frames(np.zeros((2, 2)), np.zeros((2, 2)), [0.5])


def test_sliding_windows_edge_cases():
    w = S.sliding_windows(10, 4, 3)
    assert w.dtype == np.int64
    assert w.tolist() == [[0, 4], [3, 7], [6, 10]]
    assert S.sliding_windows(10, 10, 1).tolist() == [[0, 10]]
    assert S.sliding_windows(9, 10, 1).shape == (0, 2)
    assert S.sliding_windows(0, 10, 1).shape == (0, 2)
    assert S.sliding_windows(10, 3, 5).tolist() == [[0, 3], [5, 8]]
    assert S.sliding_windows(10, 1, 1).shape == (10, 2)
    for bad in [(10, 0, 1), (10, 3, 0), (-1, 3, 1)]:
        with pytest.raises(ValueError):
            S.sliding_windows(*bad)


def test_windows_by_time_uniform_clock_equals_sliding_windows():
    fs = 30.0
    t = 12.5 + np.arange(1000) / fs
    np.testing.assert_array_equal(S.windows_by_time(t, 10.0, 1.0), S.sliding_windows(1000, 300, 30))
    np.testing.assert_array_equal(S.windows_by_time(t[:300], 10.0, 1.0), [[0, 300]])
    assert S.windows_by_time(t[:299], 10.0, 1.0).shape == (0, 2)
    assert S.windows_by_time(t[:1], 10.0, 1.0).shape == (0, 2)


def test_windows_by_time_irregular_clock():
    rng = np.random.default_rng(2)
    t = 3.0 + np.cumsum(rng.uniform(0.01, 0.06, 2000))
    w = S.windows_by_time(t, 10.0, 1.0)
    assert w.dtype == np.int64 and len(w) > 30
    for k, (a, b) in enumerate(w):
        t0 = t[0] + k
        assert t[a] >= t0 - 1e-9 and (a == 0 or t[a - 1] < t0)
        assert t[b - 1] < t0 + 10.0 and (b == len(t) or t[b] >= t0 + 10.0 - 1e-9)
    assert t[0] + len(w) - 1 + 10.0 <= t[-1] + np.median(np.diff(t)) + 1e-9
    with pytest.raises(ValueError):
        S.windows_by_time(t[::-1], 10.0, 1.0)
    with pytest.raises(ValueError):
        S.windows_by_time(t, 0.0, 1.0)


def test_device_hr_per_window_masks_and_thresholds():
    hr = np.array([70, 72, np.nan, np.nan, np.nan, 90, 91, 92, np.nan, 93], dtype=float)
    w = np.array([[0, 4], [2, 6], [5, 10], [8, 8]])
    out = S.device_hr_per_window(hr, w)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[[0, 2]], [71.0, 91.5])
    assert np.isnan(out[1])  # 1 of 4 valid < 0.5
    assert np.isnan(out[3])  # empty window
    assert np.isclose(S.device_hr_per_window(hr, w, min_valid_frac=0.25)[1], 90.0)
    with pytest.raises(ValueError):
        S.device_hr_per_window(hr, [[0, 11]])
    with pytest.raises(ValueError):
        S.device_hr_per_window(hr, w, min_valid_frac=1.5)


def test_bandpass_zero_phase_and_attenuation():
    fs = 30.0
    t = np.arange(900) / fs
    inband = np.sin(2 * np.pi * 1.4 * t)
    y = S.bandpass(inband + 5.0 + np.sin(2 * np.pi * 9.0 * t) + np.sin(2 * np.pi * 0.05 * t), fs, (0.7, 3.5))
    mid = slice(150, 750)
    assert np.max(np.abs(y[mid] - inband[mid])) < 0.1  # DC, 0.05 Hz and 9 Hz removed, no phase lag
    assert abs(S.bandpass(np.sin(2 * np.pi * 9.0 * t), fs, (0.7, 3.5))[mid]).max() < 0.02
    with pytest.raises(ValueError):
        S.bandpass(inband[:10], fs, (0.7, 3.5))
    with pytest.raises(ValueError):
        S.bandpass(inband, fs, (0.7, 20.0))


def test_real_data_fixture_fails_on_ci_and_skips_elsewhere(monkeypatch, tmp_path):
    monkeypatch.setenv("RPPG_TEST_DATA", str(tmp_path / "missing"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="set RPPG_TEST_DATA"):
        require_real_data()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="set RPPG_TEST_DATA"):
        require_real_data()
    monkeypatch.setenv("RPPG_TEST_DATA", str(tmp_path))
    assert require_real_data() == tmp_path


# ---------------------------------------------------------------------------- real PPG recordings

def test_ppgdata_whole_record_matches_annotated_beats(real_data):
    mat = scipy.io.loadmat(real_data / "ppg" / "iphys" / "PPGData.mat", squeeze_me=True, struct_as_record=False)
    ppg = mat["PPG"]
    x = np.asarray(ppg.data, dtype=np.float64).ravel()
    peaks = np.asarray(ppg.peaks, dtype=np.int64).ravel()
    fs = 250.0
    assert x.size == 15000 and peaks.size == 68
    ref_bpm = 60.0 / np.mean(np.diff(peaks) / fs)
    assert abs(ref_bpm - 67.8) < 0.05
    est = S.hr_welch(x, fs)
    print(f"PPGData: hr_welch {est:.2f} bpm, annotated beats {ref_bpm:.2f} bpm")
    assert abs(est - ref_bpm) < 1.5


def _effective_fs(t, windows):
    """Frames per second of each window on an irregular clock."""
    return np.array([(b - a - 1) / (t[b - 1] - t[a]) for a, b in windows])


@pytest.fixture(scope="module")
def ubfc_windows(real_data):
    """Per UBFC subject: truth, 10-s/1-s windows, PPG HR and device HR per window."""
    subjects = ubfc.find_subjects(real_data / "ubfc-rppg")
    out = {}
    for subj in subjects:
        truth = ubfc.read_truth(subj)
        t = truth.t_s  # DATASET_2: sample i is frame i, so the PPG clock is the frame clock
        w = S.windows_by_time(t, 10.0, 1.0)
        hr_ppg = S.hr_per_window(truth.ppg, _effective_fs(t, w), w)
        hr_dev = S.device_hr_per_window(truth.hr_bpm, w)
        out[subj.id] = (truth, w, hr_ppg, hr_dev)
    return out


def test_ubfc_ppg_hr_matches_oximeter(ubfc_windows, record_property):
    assert len(ubfc_windows) == 8
    diffs, lines = [], []
    for sid, (_, w, hr_ppg, hr_dev) in ubfc_windows.items():
        assert np.all(np.isfinite(hr_ppg)), sid
        d = np.abs(hr_ppg - hr_dev)[np.isfinite(hr_dev)]
        diffs.append(d)
        lines.append(f"{sid}: {len(w)} windows, {d.size} with device HR, mean |diff| {d.mean():.2f} bpm")
    d = np.concatenate(diffs)
    n_win = sum(len(v[1]) for v in ubfc_windows.values())
    summary = f"UBFC |HR_ppg - HR_device|: median {np.median(d):.2f}, mean {d.mean():.2f} bpm over {d.size} windows"
    print("\n".join(lines + [summary]))
    record_property("ubfc_median_abs_diff_bpm", float(np.median(d)))
    record_property("ubfc_n_windows", int(d.size))
    assert n_win > 400
    assert np.median(d) <= 3.0, summary


def test_ubfc_subject11_dropouts_do_not_leak_into_window_labels(ubfc_windows):
    truth, w, hr_ppg, hr_dev = ubfc_windows["subject11"]
    masked = ~np.isfinite(truth.hr_bpm)
    assert masked.any()
    # the oximeter reads 1-3 bpm for ~15 s mid-recording; those windows must carry no device HR
    t = truth.t_s
    gap = [(a, b) for a, b in w if t[a] >= 37.0 and t[b - 1] <= 50.0]
    assert gap and np.all(np.isnan(hr_dev[[i for i, ab in enumerate(w.tolist()) if tuple(ab) in gap]]))
    ok = np.isfinite(hr_dev)
    assert np.all((hr_dev[ok] > 60) & (hr_dev[ok] < 180))
    assert np.max(np.abs(hr_ppg[ok] - hr_dev[ok])) < 10.0


def test_hr_welch_stays_in_the_band_on_noise_and_edge_peaks():
    from rppg_prep.pulse import hr_welch

    rng = np.random.default_rng(0)
    band = (0.7, 3.5)
    hrs = [hr_welch(rng.standard_normal(160), 30.0, band) for _ in range(200)]
    assert all(42.0 - 1e-9 <= h <= 210.0 + 1e-9 for h in hrs)
    t = np.arange(300) / 30.0
    # all the power below the band: the answer is the band's lower edge, not an extrapolated vertex
    assert hr_welch(np.sin(2 * np.pi * 0.66 * t), 30.0, band) == pytest.approx(42.0, abs=0.11)
