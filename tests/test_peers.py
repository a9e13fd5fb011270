"""benchmarks/peers.py: the field's pretrained models (open-rppg, the optional ``peers`` extra) as a reference line.

The pure helpers (frame mapping, the crop adapter, the scoring) run everywhere, CI included. The
tests that load a pretrained model need the extra (``pip install -e '.[peers]'``) and skip with the
reason when it is absent; with it, they run on 20 s of a real subject built here.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT


def _load_peers():
    spec = importlib.util.spec_from_file_location("peers_benchmark", REPO_ROOT / "benchmarks" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


peers = _load_peers()


def _clock(n: int, fs: float = 29.6, jitter_s: float = 0.008, seed: int = 0) -> np.ndarray:
    """A UBFC-like frame clock: mean rate ``fs``, each frame's logged time off by up to ``jitter_s``."""
    rng = np.random.default_rng(seed)
    return np.arange(n) / fs + rng.uniform(-jitter_s, jitter_s, n)


# ---------------------------------------------------------------------------------------------
# without the extra
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("clock", peers.CLOCKS)
def test_score_subject_finds_a_sinusoids_rate_on_a_jittered_clock(clock):
    t = _clock(1800)  # 61 s
    ref = np.sin(2 * np.pi * 1.2 * t)  # 72 bpm
    rng = np.random.default_rng(1)
    pred = np.sin(2 * np.pi * 1.2 * t + 0.3) + 0.3 * rng.standard_normal(t.size) + 0.01 * np.arange(t.size)
    res = peers.score_subject(pred, ref, t, clock=clock)
    grid_bpm = 60 * res["fs_hz"] / 2048  # the Toolbox's FFT bin at 1800 samples
    assert abs(res["hr_ref_bpm"] - 72) <= grid_bpm and abs(res["hr_pred_bpm"] - 72) <= grid_bpm
    assert abs(res["fs_hz"] - 29.6) < 0.05
    wins = np.asarray(res["windows"])
    assert len(wins) == len(res["win_hr_pred_bpm"]) == len(res["win_bvp_r"]) == 51  # 10-s windows, 1-s stride
    assert np.all(np.abs(np.asarray(res["win_hr_pred_bpm"]) - 72) < 4)  # 10-s windows: 512-point FFT, 3.5-bpm bins
    assert 0.8 < res["bvp_r"] <= 1  # noise and a 0.3-rad phase lower r a little; the trend is filtered out
    assert res["snr_db"] > 0


def test_score_subject_sums_a_first_difference_and_sees_a_quarter_period_lag():
    t = np.arange(1500) / 30.0
    ref = np.sin(2 * np.pi * 1.5 * t)  # 90 bpm
    d = np.diff(np.sin(2 * np.pi * 1.5 * t), prepend=0.0)  # what TS-CAN / EfficientPhys return
    res = peers.score_subject(d, ref, t, diff_output=True)
    assert abs(res["hr_pred_bpm"] - 90) < 1 and res["bvp_r"] > 0.99
    lag = peers.score_subject(np.cos(2 * np.pi * 1.5 * t), ref, t)  # a quarter period late: same HR, r = 0
    assert abs(lag["hr_pred_bpm"] - 90) < 1 and abs(lag["bvp_r"]) < 0.1
    bad = peers.score_subject(np.full(t.size, np.nan), ref, t)  # a model that returns NaN scores NaN, not a crash
    assert np.isnan(bad["hr_pred_bpm"]) and np.isnan(bad["bvp_r"])
    with pytest.raises(ValueError, match="equally long"):
        peers.score_subject(ref[:-1], ref, t)
    with pytest.raises(ValueError, match="clock"):
        peers.score_subject(ref, ref, t, clock="container")


def test_summarise_pools_windows_and_counts_frames_per_second():
    t = np.arange(900) / 30.0
    per = {}
    for k, (f_pred, f_ref) in enumerate([(1.2, 1.2), (1.5, 1.4), (2.0, 2.0)]):
        res = peers.score_subject(np.sin(2 * np.pi * f_pred * t), np.sin(2 * np.pi * f_ref * t), t)
        per[f"s{k}"] = {**res, "frames": 900, "wall_s": 3.0, "cpu_s": 6.0}
    s = peers.summarise(per)
    assert s["video"]["n"] == 3 and 1 < s["video"]["mae"] < 4  # one subject off by 6 bpm
    assert s["window"]["n"] == s["n_windows"] == 3 * 21
    assert s["frames_per_s"] == pytest.approx(300) and s["frames_per_cpu_s"] == pytest.approx(150)
    table = peers.markdown_table([{"model": "m", "input": "crops", "summary": s, "load_s": 1.0}])
    assert table.count("\n") == 2 and "| m | crops | 3 |" in table and "| 63 |" in table


def test_samples_to_frames_undoes_the_packages_resampling_to_30_fps():
    """open-rppg repeats frames of a 29.55-fps video to make 30 samples/s, each stamped with its frame's time."""
    fps_video, n = 29.55, 600
    frame_t = np.arange(n) / fps_video
    value = np.sin(frame_t)  # the model's output for each frame
    k = np.minimum(np.floor(np.arange(int(np.ceil(n * 30 / fps_video))) * fps_video / 30 + 1e-9).astype(int), n - 1)
    per_frame, counts = peers.samples_to_frames(frame_t[k], value[k], frame_t)
    np.testing.assert_array_equal(per_frame, value)
    assert counts == {"repeated": len(k) - n, "missing": 0, "off_grid": 0}
    keep = np.ones(len(k), dtype=bool)
    keep[k == 100] = False  # a frame the package dropped is interpolated from its neighbours
    per_frame, counts = peers.samples_to_frames(frame_t[k][keep], value[k][keep], frame_t)
    assert counts["missing"] == 1 and per_frame[100] == pytest.approx((value[99] + value[101]) / 2)
    with pytest.raises(ValueError, match="increasing"):
        peers.samples_to_frames([0.0], [1.0], [0.0, 0.0])


class _FakeModel:
    """An open-rppg model function: (L, H, W, 3) uint8 in, {"bvp": (L,)} out, state = chunks seen."""

    def __init__(self, shape):
        self.shape, self.seen = shape, []

    def __call__(self, x, state):
        assert x.shape == self.shape and x.dtype == np.uint8, x.shape
        self.seen.append(x.copy())
        return {"bvp": x[..., 1].mean(axis=(1, 2)), "other": np.zeros(3)}, state + 1


@pytest.mark.parametrize("shape", [(1, 36, 36, 3), (160, 72, 72, 3), (128, 128, 128, 3)])
def test_run_on_crops_feeds_the_models_chunks_and_returns_one_value_per_frame(shape):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (350, 128, 128, 3), dtype=np.uint8)  # not a multiple of any chunk length
    model = _FakeModel(shape)
    out = peers.run_on_crops(model, 0, shape, crops, block_frames=100)
    n_chunk = shape[0]
    assert out.shape == (350,) and out.dtype == np.float64
    assert len(model.seen) == -(-350 // n_chunk)
    expect = peers.resize_crops(crops, shape[1:3])[..., 1].mean(axis=(1, 2))
    np.testing.assert_allclose(out, expect)
    last = model.seen[-1]
    pad = n_chunk * len(model.seen) - 350
    if pad:  # the last chunk is padded with its last frame
        assert np.array_equal(last[-1], last[-pad - 1])
    with pytest.raises(ValueError, match="input_shape"):
        peers.run_on_crops(model, 0, (160, 36, 36), crops)


def test_models_that_unpickle_package_files_are_refused_before_anything_is_imported():
    with pytest.raises(ValueError, match="state.pkl"):
        peers.load_peer("ME-flow.rlap")


# ---------------------------------------------------------------------------------------------
# with the extra: open-rppg's pretrained weights on a real subject
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def open_rppg():
    try:
        return peers.import_open_rppg()
    except peers.PeersUnavailable as e:
        pytest.skip(f"the peers extra is not installed: {e}")


@pytest.fixture(scope="module")
def subject4(open_rppg, real_data, tmp_path_factory):
    """subject4 of the real UBFC-rPPG recordings built alone (1,368 frames, about 15 s)."""
    from click.testing import CliRunner

    import rppg_prep
    from rppg_prep.cli import main

    cache = tmp_path_factory.mktemp("peers_cache")
    root = real_data / "ubfc-rppg"
    result = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache),
                                       "--subjects", "subject4"])
    assert result.exit_code == 0, result.output
    return root, rppg_prep.open_build(cache, "ubfc", "ubfc")["subject4"]


@pytest.fixture(scope="module")
def facephys(open_rppg):
    return peers.load_peer("FacePhys.rlap")


def test_cv2_is_still_the_projects_contrib_build_with_the_extra(open_rppg):
    assert peers.cv2_build() == "contrib", (
        "opencv-python (open-rppg's dependency) overwrote the cv2 binary of opencv-contrib-python; run "
        "pip install --force-reinstall --no-deps opencv-contrib-python==4.14.0.94")


def test_facephys_on_20_s_of_real_crops_finds_the_label_hr(subject4, facephys):
    _, nodes = subject4
    n = 600  # 20 s
    bvp = peers.peer_on_crops(facephys, nodes["face"]["frames"][:n])
    assert bvp.shape == (n,) and np.all(np.isfinite(bvp))
    res = peers.score_subject(bvp, nodes["labels"]["bvp"][:n], nodes["labels"]["t_s"][:n])
    assert abs(res["hr_pred_bpm"] - res["hr_ref_bpm"]) < 5, res
    assert res["bvp_r"] > 0.3
    again = peers.peer_on_crops(facephys, nodes["face"]["frames"][:n])  # the loaded state, not the last run's
    np.testing.assert_array_equal(again, bvp)


def test_the_packages_own_pipeline_gives_one_value_per_frame(subject4, facephys):
    root, nodes = subject4
    bvp, counts = peers.peer_on_video(facephys, peers.find_video(root, "subject4"), nodes["decode"]["t_s"][:])
    n = nodes["face"]["frames"].shape[0]
    assert bvp.shape == (n,) and np.all(np.isfinite(bvp))
    assert counts["missing"] == 0 and counts["off_grid"] == 0
    assert counts["repeated"] == counts["pkg_filled"] > 0  # 29.6 fps made 30 by repeating frames
    res = peers.score_subject(bvp, nodes["labels"]["bvp"][:], nodes["labels"]["t_s"][:])
    assert np.isfinite(res["hr_pred_bpm"]) and res["bvp_r"] > 0.3


def test_a_chunked_model_gets_its_input_shape_from_the_crop_adapter(subject4, open_rppg):
    _, nodes = subject4
    peer = peers.load_peer("PhysNet.pure")
    assert tuple(peer.meta["input"]) == (128, 32, 32, 3)
    shapes = []

    def spy(x, state):
        shapes.append((x.shape, x.dtype))
        return peer.model.call(x, state)

    bvp = peers.run_on_crops(spy, peer.init_state, tuple(peer.meta["input"]), nodes["face"]["frames"][:300])
    assert shapes == [((128, 32, 32, 3), np.dtype(np.uint8))] * 3 and bvp.shape == (300,)
    assert np.all(np.isfinite(bvp))
