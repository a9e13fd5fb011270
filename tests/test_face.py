"""Face track: streaming equals whole-array processing, gaps are bridged or flagged, crops pad."""

from __future__ import annotations

import numpy as np

from rppg_prep.stages.face import FaceParams, FaceTracker, crop_square, raw_boxes


def _run(raw: np.ndarray, frames: np.ndarray, batch: int, params: FaceParams, fps: float = 30.0):
    tr = FaceTracker(params, fps, frames.shape[1:3])
    outs = []
    for a in range(0, len(raw), batch):
        outs.append(tr.push(raw[a:a + batch], frames[a:a + batch]))
    outs.append(tr.flush())
    outs = [o for o in outs if o is not None]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def _moving_face(n: int = 300, gap: tuple[int, int] | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    cx = 320 + 30 * np.sin(2 * np.pi * t / 150)
    cy = 240 + 10 * np.cos(2 * np.pi * t / 90)
    lm = np.zeros((n, 4, 2), np.float32)
    for i in range(n):
        lm[i] = [[cx[i] - 60, cy[i] - 70], [cx[i] + 60, cy[i] - 70], [cx[i] + 60, cy[i] + 70], [cx[i] - 60, cy[i] + 70]]
    lm += rng.normal(0, 1.0, lm.shape).astype(np.float32)  # landmark jitter
    det = np.ones(n, bool)
    if gap:
        det[gap[0]:gap[1]] = False
        lm[~det] = np.nan
    frames = rng.integers(0, 255, (n, 480, 640, 3), dtype=np.uint8)
    return lm, det, frames, cx, cy


def test_streaming_output_does_not_depend_on_batch_size():
    lm, det, frames, _, _ = _moving_face(200, gap=(50, 60))
    raw = raw_boxes(lm, det)
    p = FaceParams()
    a, b = _run(raw, frames, 7, p), _run(raw, frames, 64, p)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["frames"].shape == (200, 128, 128, 3)


def test_track_follows_motion_and_removes_jitter():
    lm, det, frames, cx, cy = _moving_face(300)
    out = _run(raw_boxes(lm, det), frames, 16, FaceParams())
    centre = out["box"][:, 0] + out["box"][:, 2] / 2
    err = centre[20:-20] - cx[20:-20]
    assert np.abs(err).max() < 2.0  # no lag on smooth motion
    raw_centre = raw_boxes(lm, det)[:, 0]
    assert np.std(np.diff(centre, 2)) < 0.5 * np.std(np.diff(raw_centre, 2))  # smoother than raw
    assert out["valid"].all()


def test_short_gap_bridged_long_gap_flagged():
    fps = 30.0
    lm, det, frames, _, _ = _moving_face(300, gap=(100, 110))  # 0.33 s
    assert _run(raw_boxes(lm, det), frames, 16, FaceParams(), fps)["valid"].all()
    lm, det, frames, _, _ = _moving_face(300, gap=(100, 190))  # 3 s
    out = _run(raw_boxes(lm, det), frames, 16, FaceParams(), fps)
    assert not out["valid"][120:170].any() and out["valid"][:100].all() and out["valid"][190:].all()
    # the box holds still through the long gap instead of jumping to the frame centre
    assert np.ptp(out["box"][130:160, 0]) < 1.0


def test_crop_square_pads_outside_and_keeps_inside():
    frame = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    inside = crop_square(frame, 10, 20, 50, 50)
    np.testing.assert_array_equal(inside, frame[20:70, 10:60])
    edge = crop_square(frame, 80, 80, 40, 40)
    assert edge[25:, :].max() == 0 and edge[:, 25:].max() == 0
    np.testing.assert_array_equal(edge[:20, :20], frame[80:, 80:])
