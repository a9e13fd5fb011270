"""Beat detection of the contact PPG (rppg_prep.pulse.beat_times) and the beat-based HR labels."""

from __future__ import annotations

import numpy as np
import pytest

from rppg_prep import pulse


def _iphys(real_data):
    import scipy.io

    ppg = scipy.io.loadmat(real_data / "ppg" / "iphys" / "PPGData.mat", squeeze_me=True,
                           struct_as_record=False)["PPG"]
    x = np.asarray(ppg.data, dtype=np.float64)
    fs = float(ppg.fs)
    annotated_s = (np.asarray(ppg.peaks, dtype=np.int64) - 1) / fs  # MATLAB indices are 1-based
    return np.arange(x.size) / fs, x, annotated_s


def test_iphys_annotated_beats_are_found_within_50ms(real_data):
    """iPhys annotates each beat at its pulse onset: every annotation is the minimum of PPG.data,
    ~180 ms before the systolic maximum. The onsets (fiducial="foot") must hit >= 95 % of them
    within 50 ms, and the systolic peaks must give exactly one peak per annotated beat."""
    t, x, ann = _iphys(real_data)
    assert ann.size == 68
    feet = pulse.beat_times(t, x, fiducial="foot")
    hit = np.abs(ann[:, None] - feet[None, :]).min(axis=1) <= 0.050
    assert hit.mean() >= 0.95, hit.mean()
    peaks = pulse.beat_times(t, x)
    # exactly one systolic peak between consecutive onsets: no beat missed, none doubled
    per_beat = np.histogram(peaks, bins=ann)[0]
    assert np.all(per_beat == 1), np.flatnonzero(per_beat != 1)
    hr_beats = np.median(60.0 / np.diff(peaks))
    assert abs(hr_beats - 60.0 / np.mean(np.diff(ann))) < 1.5  # 67.8 bpm from the annotations


def test_heartpy_ppg_beats_match_the_welch_hr(real_data):
    x = np.loadtxt(real_data / "ppg" / "heartpy" / "data.csv")
    fs = 100.0
    t = np.arange(x.size) / fs
    beats = pulse.beat_times(t, x)
    ibi = np.diff(beats)
    assert np.all(ibi > 60 / 210)
    assert abs(60 / np.median(ibi) - pulse.hr_welch(x, fs)) < 4.0


def test_ibi_per_frame_and_missed_beats():
    beats = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 6.0])  # the beat at 4 s is missed
    t = np.arange(0, 7, 0.5)
    ibi = pulse.ibi_per_frame(beats, t)
    np.testing.assert_allclose(ibi[:6], 1000.0)
    assert np.all(np.isnan(ibi[6:10]))  # 3..5 s holds a missed beat
    np.testing.assert_allclose(ibi[10:12], 1000.0)
    assert np.all(np.isnan(ibi[12:]))  # after the last beat
    hr, complete = pulse.beats_hr_per_window(ibi, np.array([[0, 6], [2, 8]]))
    np.testing.assert_allclose(hr, [60.0, 60.0])
    assert complete.tolist() == [True, False]


def test_beats_follow_an_hr_that_moves_within_the_window():
    """HR rising 80 -> 100 bpm over 10 s: the median of the beats is ~90 bpm."""
    fs = 30.0
    t = np.arange(0, 10, 1 / fs)
    hr_hz = (80 + 2 * t) / 60.0
    x = np.sin(2 * np.pi * np.cumsum(hr_hz) / fs) + 0.3 * np.sin(4 * np.pi * np.cumsum(hr_hz) / fs)
    beats = pulse.beat_times(t, x)
    ibi = pulse.ibi_per_frame(beats, t)
    hr, _ = pulse.beats_hr_per_window(ibi, np.array([[0, t.size]]))
    assert abs(hr[0] - 90.0) < 2.0


def test_beat_times_rejects_bad_input():
    with pytest.raises(ValueError, match="fiducial"):
        pulse.beat_times(np.arange(10.0), np.zeros(10), fiducial="top")
    with pytest.raises(ValueError, match="finite"):
        pulse.beat_times(np.arange(3.0), np.array([0.0, np.nan, 1.0]))
    assert pulse.beat_times(np.arange(5.0), np.zeros(5)).size == 0
