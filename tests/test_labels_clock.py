"""Labels on an uneven frame clock (lost frames): HR must not be scaled by the time lost."""

from __future__ import annotations

import numpy as np

from rppg_prep.datasets import Truth
from rppg_prep.stages.labels import LabelParams, make_labels

HR_BPM = 72.0


def _truth() -> Truth:
    t = np.arange(0, 30, 1 / 100.0)  # contact sensor at 100 Hz, covering the gaps too
    return Truth(ppg=np.sin(2 * np.pi * HR_BPM / 60 * t), t_s=t)


def _labels(t_frames):
    empty = np.zeros((0, 2), np.int64)
    return make_labels(_truth(), t_frames, empty, empty, LabelParams())


def test_even_clock_recovers_the_hr():
    out, notes = _labels(np.arange(0, 25, 1 / 30.0))
    assert np.all(np.abs(out["hr_bpm"] - HR_BPM) < 0.5) and not any("uneven" in n for n in notes)


def test_lost_frames_do_not_bias_the_hr():
    t = np.arange(0, 25, 1 / 30.0)
    t = t[(t < 8.0) | (t >= 9.5)]  # the camera loses 1.5 s
    out, notes = _labels(t)
    assert any("uneven" in n for n in notes)
    assert np.all(np.abs(out["hr_bpm"] - HR_BPM) < 0.5), out["hr_bpm"]
    assert np.all(out["snr_db"] > 5.0)
    # treating the uneven frames as evenly spaced (the old way) biases the windows across the gap
    from rppg_prep import pulse

    fps = (t.size - 1) / (t[-1] - t[0])
    naive = pulse.hr_per_window(out["bvp"], fps, out["window"], LabelParams().band_hz)
    assert np.nanmax(np.abs(naive - HR_BPM)) > 2.0
