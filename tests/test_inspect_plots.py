"""`rppg_prep.report` (store summary, PNGs of a subject) and `rppg_prep.plots` (the figures)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from rppg_prep import plots
from rppg_prep.build import ORDER
from rppg_prep.cli import main
from rppg_prep.errors import StoreError
from rppg_prep.report import inspect_png, landmarks_in_crop, summarize_build
from rppg_prep.sample import write_ubfc_sample

DURATION_S, FPS = 12.0, 30.0
N_FRAMES = int(round(DURATION_S * FPS))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A one-subject, 12-s synthetic UBFC sample built through the CLI; returns the cache."""
    tmp = tmp_path_factory.mktemp("inspect")
    root, cache = tmp / "data", tmp / "cache"
    write_ubfc_sample(root, n_subjects=1, duration_s=DURATION_S, fps=FPS)
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    return cache


def _png(path: Path) -> np.ndarray:
    """RGB float image in [0, 1] of a PNG."""
    assert path.is_file() and path.suffix == ".png", path
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    return img[..., :3]


def _assert_rendered(path: Path, min_width: int = 300, min_std: float = 0.05) -> np.ndarray:
    img = _png(path)
    assert img.shape[1] > min_width, img.shape
    assert img.std() > min_std, f"{path.name} looks blank (pixel std {img.std():.3f})"
    return img


# ------------------------------------------------------------------------------------------- summarize_build

def test_summary_face_frames_row_is_compressed_and_matches_the_store(built):
    rows = summarize_build(built, "ubfc", "ubfc")
    assert {r["subject"] for r in rows} == {"subject1"}
    assert [s for s in ORDER if any(r["stage"] == s for r in rows)] == list(ORDER)
    face = [r for r in rows if r["stage"] == "face" and r["array"] == "frames"]
    assert len(face) == 1
    row = face[0]
    assert row["shape"] == (N_FRAMES, 128, 128, 3)
    assert row["dtype"] == "uint8"
    assert row["chunks"] == (32, 128, 128, 3)
    assert row["nbytes"] == N_FRAMES * 128 * 128 * 3
    assert 0 < row["bytes_stored"] < row["nbytes"]
    assert row["ratio"] == pytest.approx(row["nbytes"] / row["bytes_stored"]) and row["ratio"] > 1
    # the key is the node's folder suffix, and the bytes are the files under that array's folder
    node_dir = Path(row["path"]).parent
    assert node_dir.name == f"face-{row['key']}" and len(row["key"]) == 12
    chunk_files = [f for f in (node_dir / "frames" / "c").rglob("*") if f.is_file()]
    assert len(chunk_files) == -(-N_FRAMES // 32)
    assert row["bytes_stored"] == sum(f.stat().st_size for f in chunk_files)


def test_summary_bytes_add_up_to_the_node_size_recorded_at_commit(built):
    rows = summarize_build(built, "ubfc", "ubfc", subject="subject1")
    for stage in ORDER:
        mine = [r for r in rows if r["stage"] == stage]
        node_dir = Path(mine[0]["path"]).parent
        committed = json.loads((node_dir / "zarr.json").read_text())["attributes"]["bytes"]
        chunks = sum(r["bytes_stored"] for r in mine)
        # the node's bytes = its chunks + a little JSON metadata per array
        assert chunks <= committed < chunks + 4096 * (len(mine) + 1), (stage, chunks, committed)
        group = rppg_prep.open_build(built, "ubfc", "ubfc")["subject1"][stage]
        assert sorted(r["array"] for r in mine) == sorted(name for name, _ in group.arrays())


def test_unknown_subject_names_the_known_ones(built, tmp_path):
    with pytest.raises(StoreError, match=r"subject9.*known subjects: subject1"):
        summarize_build(built, "ubfc", "ubfc", subject="subject9")
    with pytest.raises(StoreError, match=r"known subjects: subject1"):
        inspect_png(built, "ubfc", "ubfc", "subject9", tmp_path)
    assert not list(tmp_path.iterdir())


def test_missing_build_is_a_store_error(built, tmp_path):
    with pytest.raises(StoreError, match="no build of pipeline 'other'"):
        summarize_build(built, "ubfc", "other")
    with pytest.raises(StoreError, match="run `rppg-prep build` first"):
        inspect_png(tmp_path / "empty", "ubfc", "ubfc", "subject1", tmp_path / "png")


# ------------------------------------------------------------------------------------------- inspect_png

def test_landmarks_map_onto_the_face_crop(built):
    nodes = rppg_prep.open_build(built, "ubfc", "ubfc")["subject1"]
    valid = nodes["face"]["valid"][:]
    lm = landmarks_in_crop(nodes["landmarks"]["landmarks"][:], nodes["face"]["box"][:], 128)
    lm = lm[valid & np.isfinite(nodes["landmarks"]["landmarks"][:][:, 0, 0])]  # measured or interpolated
    assert len(lm) > 0.9 * N_FRAMES
    lo, hi = np.nanmin(lm, axis=1), np.nanmax(lm, axis=1)
    # the crop is a square 1.2x the landmark extent, centred on the smoothed track of the extent
    assert np.all(lo > -2) and np.all(hi < 130)
    centre, extent = (lo + hi) / 2, (hi - lo).max(axis=1)
    assert np.median(np.abs(centre - 64)) < 4
    assert np.median(extent) == pytest.approx(128 / 1.2, rel=0.1)


def test_landmarks_in_crop_maths():
    lm = np.array([[[110.0, 220.0], [150.0, 260.0]]])
    box = np.array([[100.0, 200.0, 80.0, 80.0]])
    np.testing.assert_allclose(landmarks_in_crop(lm, box, 160), [[[20.0, 40.0], [100.0, 120.0]]])
    with pytest.raises(ValueError):
        landmarks_in_crop(lm, box[:, :3], 160)


def test_inspect_png_writes_three_rendered_pngs(built, tmp_path):
    out = inspect_png(built, "ubfc", "ubfc", "subject1", tmp_path / "png")
    assert [p.name for p in out] == ["subject1_crops.png", "subject1_st.png", "subject1_labels.png"]
    for p in out:
        _assert_rendered(p)
    sheet = _png(out[0])
    # the same layout with blank crops and no landmarks: the real sheet must show faces
    frames = rppg_prep.open_build(built, "ubfc", "ubfc")["subject1"]["face"]["frames"]
    n = len(np.unique(np.linspace(0, frames.shape[0] - 1, 16).round()))
    blank = _png(plots.contact_sheet(np.zeros((n, 128, 128, 3), np.uint8), tmp_path / "blank.png",
                                     titles=[""] * n, title="subject1: face crops with landmarks"))
    assert blank.shape == sheet.shape
    assert np.abs(sheet - blank).mean() > 0.2
    # landmark dots are drawn: bright green pixels, which the sample's face photo does not have
    green = (sheet[..., 1] > 0.8) & (sheet[..., 0] < 0.4) & (sheet[..., 2] < 0.5)
    assert green.sum() > 16 * 50


# ------------------------------------------------------------------------------------------- plots

def _pulse(n: int, fs: float, hr_bpm: float, noise: float, seed: int = 0) -> np.ndarray:
    t = np.arange(n) / fs
    return np.sin(2 * np.pi * hr_bpm / 60 * t) + noise * np.random.default_rng(seed).normal(size=n)


def test_bland_altman_and_pred_vs_ref_render(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.uniform(55, 110, 40)
    pred = ref + rng.normal(1.0, 3.0, 40)
    pred[3] = np.nan  # dropped, not drawn as a gap in the statistics
    _assert_rendered(plots.bland_altman(pred, ref, tmp_path / "ba.png", title="POS on UBFC"))
    _assert_rendered(plots.pred_vs_ref(pred, ref, tmp_path / "pvr.png", title="POS on UBFC"))
    # a single pair still renders (no SD, no r)
    _assert_rendered(plots.bland_altman([70.0], [72.0], tmp_path / "ba1.png"))
    _assert_rendered(plots.pred_vs_ref([70.0], [72.0], tmp_path / "pvr1.png"))


def test_bvp_and_spectrum_marks_the_hr(tmp_path):
    fs = 30.0
    ref = _pulse(600, fs, 72.0, 0.1)
    pred = _pulse(600, fs, 72.0, 0.8, seed=2)
    pred[100:110] = np.nan
    path = plots.bvp_and_spectrum(pred, fs, tmp_path / "bvp.png", bvp_ref=ref, hr_pred_bpm=71.5, hr_ref_bpm=72.0)
    img = _assert_rendered(path)
    assert img.shape[0] > 300
    _assert_rendered(plots.bvp_and_spectrum(pred[:200], fs, tmp_path / "bvp_short.png"))


def test_labels_and_st_figures_render(tmp_path):
    fs, n = 30.0, 900
    t = 17.0 + np.arange(n) / fs
    bvp = _pulse(n, fs, 80.0, 0.05)
    win = np.array([[a, a + 300] for a in range(0, n - 300 + 1, 30)])
    hr = 80 + np.random.default_rng(3).normal(0, 1, len(win))
    dev = np.full(len(win), 81.0)
    dev[2] = np.nan
    _assert_rendered(plots.labels_figure(t, bvp, win, hr, dev, tmp_path / "labels.png"))
    _assert_rendered(plots.labels_figure(t, bvp, np.zeros((0, 2), int), [], [], tmp_path / "labels0.png"))
    rng = np.random.default_rng(4)
    st = rng.integers(0, 255, (3, 128, 900, 3), dtype=np.uint8)
    _assert_rendered(plots.st_image_figure(st, tmp_path / "st.png", titles=["a", "b", "c"], x_step_s=1 / 90))


def test_contact_sheet_draws_crops_and_landmarks(tmp_path):
    crops = np.zeros((10, 64, 64, 3), np.uint8)
    crops[..., 0] = 200  # red crops
    lm = np.tile(np.array([[16.0, 16.0], [48.0, 48.0], [np.nan, np.nan]]), (10, 1, 1))
    bare = _assert_rendered(plots.contact_sheet(crops, tmp_path / "bare.png", ncols=4), min_width=200)
    dots = _png(plots.contact_sheet(crops, tmp_path / "dots.png", ncols=4, landmarks_px=lm))
    assert dots.shape == bare.shape
    changed = np.abs(dots - bare).sum(axis=2) > 0.3
    assert 10 * 2 <= changed.sum() < 0.05 * changed.size  # a few dots per crop, not a wash
    assert np.all(dots[changed][:, 1] > bare[changed][:, 1])  # and they are green
    # 10 crops in rows of 4: three rows, the third half empty (white)
    assert bare.shape[0] == pytest.approx(3 / 4 * bare.shape[1], rel=0.1)


@pytest.mark.parametrize("call", [
    lambda p: plots.bland_altman([], [], p),
    lambda p: plots.bland_altman([70, 80], [70], p),
    lambda p: plots.pred_vs_ref([np.nan], [70], p),
    lambda p: plots.bvp_and_spectrum(np.zeros(10), 0.0, p),
    lambda p: plots.bvp_and_spectrum(np.zeros(10), 30.0, p, bvp_ref=np.zeros(9)),
    lambda p: plots.bvp_and_spectrum([], 30.0, p),
    lambda p: plots.contact_sheet(np.zeros((0, 8, 8, 3), np.uint8), p),
    lambda p: plots.contact_sheet(np.zeros((2, 8, 8, 3), np.uint8), p, landmarks_px=np.zeros((3, 5, 2))),
    lambda p: plots.contact_sheet(np.zeros((2, 8, 8, 3), np.uint8), p, titles=["one"]),
    lambda p: plots.contact_sheet(np.zeros((2, 8, 8)), p),
    lambda p: plots.labels_figure(np.arange(5.0), np.zeros(4), np.zeros((0, 2), int), [], [], p),
    lambda p: plots.labels_figure(np.arange(5.0), np.zeros(5), [[0, 6]], [70.0], [70.0], p),
    lambda p: plots.labels_figure(np.arange(5.0), np.zeros(5), [[0, 5]], [70.0, 71.0], None, p),
    lambda p: plots.st_image_figure(np.zeros((0, 8, 8, 3), np.uint8), p),
], ids=["ba-empty", "ba-mismatch", "pvr-no-finite", "bvp-fs", "bvp-ref-len", "bvp-empty", "sheet-empty",
        "sheet-lm", "sheet-titles", "sheet-shape", "labels-len", "labels-window", "labels-hr", "st-empty"])
def test_bad_inputs_raise_value_error(call, tmp_path):
    path = tmp_path / "x.png"
    with pytest.raises(ValueError):
        call(path)
    assert not path.exists()


def test_inspect_command_prints_the_table_and_writes_pngs(tmp_path):
    from click.testing import CliRunner

    from rppg_prep.cli import main
    from rppg_prep.sample import write_ubfc_sample

    root, cache = tmp_path / "root", tmp_path / "cache"
    write_ubfc_sample(root, n_subjects=1, duration_s=11.0, seed=2)
    assert CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)]).exit_code == 0
    png = tmp_path / "png"
    res = CliRunner().invoke(main, ["inspect", "ubfc", "subject1", "--cache", str(cache), "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "frames" in res.output and "330x128x128x3" in res.output
    assert sorted(p.name for p in png.glob("*.png")) == [
        "subject1_crops.png", "subject1_labels.png", "subject1_st.png"]
    bad = CliRunner().invoke(main, ["inspect", "ubfc", "subject9", "--cache", str(cache)])
    assert bad.exit_code == 1 and "subject1" in bad.output
