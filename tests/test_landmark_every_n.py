"""landmarks.every_n_frames: the mesh on one frame in n, interpolation between, dense measurement when needed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.stage import NodeContext, StreamCarry
from rppg_prep.stages import landmarks as L


class FakeDetector:
    """A 'face' of 4 landmarks whose centre follows ``track[i]`` (None = no face); counts its calls."""

    def __init__(self, track):
        self.track, self.calls = track, []

    def __call__(self, frame):
        i = int(frame[0, 0, 0]) * 256 + int(frame[0, 0, 1])  # the frame index is written in its first pixel
        self.calls.append(i)
        c = self.track[i]
        if c is None:
            return None
        return np.array([[c - 50, 100], [c + 50, 100], [c - 50, 200], [c + 50, 200]], dtype=np.float32)

    def close(self):
        pass


def _run(track, n, monkeypatch, max_motion_frac=0.03):
    det = FakeDetector(track)
    monkeypatch.setattr(L, "make_detector", lambda params: det)
    written = {}

    class Writer:
        attrs: dict = {}

        def create(self, name, **kw):
            written[name] = []

        def append(self, name, data):
            written[name].append(np.asarray(data))

    params = L.LandmarkParams(backend="haar", every_n_frames=n, max_motion_frac=max_motion_frac)
    ctx = NodeContext(stage=L.STAGE, subject=None, params=params, inputs={}, writer=Writer(),
                      progress=lambda done, total: None)
    carry = StreamCarry(info=None)
    track_consumer = L.LandmarkTrack(ctx, carry)
    frames = np.zeros((len(track), 2, 2, 3), np.uint8)
    frames[:, 0, 0, 0], frames[:, 0, 0, 1] = np.arange(len(track)) // 256, np.arange(len(track)) % 256
    for start in range(0, len(track), 8):
        track_consumer.push(SimpleNamespace(start=start, frames=frames[start:start + 8]), carry)
    track_consumer.finish(carry)
    lm = np.concatenate([r[0] for r in carry.landmark_rows])
    detected = np.concatenate([r[1] for r in carry.landmark_rows])
    stored = np.concatenate(written["landmarks"])
    np.testing.assert_array_equal(stored, lm)  # the node holds what the face stage got
    return lm, detected, sorted(det.calls)


def test_one_frame_in_n_is_measured_and_the_rest_interpolated_exactly_on_a_steady_move(monkeypatch):
    track = [300.0 + 0.5 * i for i in range(100)]  # a slow, steady move: interpolation is exact
    lm, detected, calls = _run(track, 3, monkeypatch)
    assert calls == list(range(0, 100, 3)) + ([99] if 99 % 3 else [])
    np.testing.assert_array_equal(np.flatnonzero(detected), calls)
    centre = lm[:, :, 0].mean(axis=1)
    np.testing.assert_allclose(centre, track, atol=1e-3)


def test_n_1_measures_every_frame(monkeypatch):
    track = [300.0 + i for i in range(20)]
    lm, detected, calls = _run(track, 1, monkeypatch)
    assert calls == list(range(20)) and detected.all()


def test_a_fast_move_and_a_lost_face_are_measured_frame_by_frame(monkeypatch):
    track: list = [300.0] * 30 + [300.0 + 20 * k for k in range(1, 10)] + [480.0] * 21 + [None] * 10 + [480.0] * 30
    lm, detected, calls = _run(track, 4, monkeypatch)
    measured = set(calls)
    assert set(range(30, 40)) <= measured, "frames of the fast move are all measured"
    assert set(range(60, 71)) <= measured, "frames around the lost face are all measured"
    assert len(measured) < 0.6 * len(track), "steady stretches are still subsampled"
    lost = np.isnan(lm[:, 0, 0])
    assert np.flatnonzero(lost).tolist() == list(range(60, 70)), "only the frames without a face have none"
    centre = lm[:, :, 0].mean(axis=1)
    ok = ~lost
    assert np.abs(centre[ok] - np.asarray([c for c in track if c is not None])).max() < 1e-3


def test_invalid_every_n_is_a_config_error():
    from rppg_prep.errors import ConfigError

    with pytest.raises(ConfigError, match="every_n_frames"):
        L.LandmarkParams(every_n_frames=0)


def test_interpolated_crops_follow_the_per_frame_track_on_a_real_subject(real_build, tmp_path):
    """subject3 with the mesh on one frame in 3 against the per-frame build: crop centres within 2 px."""
    root, cache, result = real_build
    assert result.exit_code == 0, result.output
    per_frame = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject3"]
    n = max(3, L.LandmarkParams().every_n_frames)
    config = tmp_path / "every.yaml"
    config.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc",
                                      "stages": {"landmarks": {"every_n_frames": n}}}))
    res = CliRunner().invoke(main, ["build", str(config), "--root", str(root), "--cache", str(tmp_path / "c"),
                                    "--subjects", "subject3"])
    assert res.exit_code == 0, res.output
    sub = rppg_prep.open_build(tmp_path / "c", "ubfc", "ubfc")["subject3"]
    box_a, box_b = per_frame["face"]["box"][:], sub["face"]["box"][:]
    err = np.linalg.norm((box_a[:, :2] + box_a[:, 2:] / 2) - (box_b[:, :2] + box_b[:, 2:] / 2), axis=1)
    assert np.median(err) < 2.0, np.median(err)
    assert np.percentile(err, 95) < 4.0
    measured = sub["landmarks"]["detected"][:]
    assert 1 / n - 0.02 < measured.mean() < 1 / n + 0.1, "the mesh ran on about one frame in n"
    assert np.isfinite(sub["landmarks"]["landmarks"][:][:, 0, 0]).mean() >= \
        np.isfinite(per_frame["landmarks"]["landmarks"][:][:, 0, 0]).mean() - 0.01
    assert sub["face"]["valid"][:].mean() >= per_frame["face"]["valid"][:].mean() - 0.01


def test_the_direct_graph_path_gives_the_landmarks_of_facemesh_process(real_data, monkeypatch):
    """MeshDetector feeds the graph itself and reads the landmarks off the wire; FaceMesh.process must agree bitwise."""
    import cv2

    wire = []
    read = L._xy_from_wire
    monkeypatch.setattr(L, "_xy_from_wire", lambda data, n: wire.append(read(data, n) is not None) or read(data, n))

    cap = cv2.VideoCapture(str(real_data / "ubfc-rppg" / "subject3" / "vid.mp4"))
    frames = []
    for _ in range(60):
        ok, bgr = cap.read()
        assert ok
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    frames.append(np.zeros_like(frames[0]))  # no face: both give None, and tracking restarts after it
    frames.extend(frames[:10])
    direct, reference = L.MeshDetector(L.LandmarkParams()), L.MeshDetector(L.LandmarkParams())
    assert direct._input is not None, "mediapipe's solution internals changed: the direct path is not used"
    reference._input = None  # force FaceMesh.process
    got = [direct(f) for f in frames]
    want = [reference(f) for f in frames]
    direct.close()
    reference.close()
    assert sum(g is None for g in got) == 1 and got[60] is None and want[60] is None
    assert len(wire) == len(frames) - 1 and all(wire)  # the numpy reading, not the protobuf fallback
    for g, w in zip(got, want):
        assert (g is None) == (w is None)
        if g is not None:
            np.testing.assert_array_equal(g, w)


def test_landmarks_read_from_the_wire_match_protobuf_and_other_layouts_fall_back():
    from mediapipe.framework.formats import landmark_pb2

    rng = np.random.default_rng(0)
    msg = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in rng.uniform(-0.2, 1.2, size=(468, 3)):
        p = msg.landmark.add()
        p.x, p.y, p.z = x, y, z
    msg.landmark[5].x = 0.0  # a set zero is still written (proto2 presence)
    want = np.array([(p.x, p.y) for p in msg.landmark], dtype=np.float32)
    np.testing.assert_array_equal(L._xy_from_wire(msg.SerializeToString(), 468), want)
    assert L._xy_from_wire(msg.SerializeToString(), 467) is None  # wrong count
    msg.landmark[7].visibility = 0.5  # another layout: the caller must parse with protobuf
    assert L._xy_from_wire(msg.SerializeToString(), 468) is None
