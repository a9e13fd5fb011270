"""`rppg-prep export toolbox`: a build in rPPG-Toolbox's cached layout (`rppg_prep.export`)."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.errors import ConfigError
from rppg_prep.export import chunk_bounds, diff_normalize_frames, diff_normalize_label, standardize
from rppg_prep.sample import write_ubfc_sample

DURATION_S, FPS = 7.0, 30.0


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """Two 7-s synthetic UBFC subjects built through the CLI; returns the cache."""
    tmp = tmp_path_factory.mktemp("export")
    root, cache = tmp / "data", tmp / "cache"
    write_ubfc_sample(root, n_subjects=2, duration_s=DURATION_S, fps=FPS)
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    return cache


# independent references: plain loops in float64, written from the Toolbox's description

def _ref_diff_frames(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    d = np.zeros_like(x)
    for t in range(len(x) - 1):
        d[t] = (x[t + 1] - x[t]) / (x[t + 1] + x[t] + 1e-7)
    d[:-1] /= d[:-1].std()
    return np.nan_to_num(d, nan=0.0)


def _ref_std(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return np.nan_to_num((x - x.mean()) / x.std(), nan=0.0)


def _ref_diff_label(y: np.ndarray) -> np.ndarray:
    y = y.astype(np.float64)
    d = np.array([y[t + 1] - y[t] for t in range(len(y) - 1)] + [0.0])
    d[:-1] /= d[:-1].std()
    return d


def _read_list(path: Path) -> list[str]:
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["", "input_files"]
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(len(rows) - 1)]
    return [r[1] for r in rows[1:]]


def test_cli_export_matches_the_formulas_on_the_stored_crops(built, tmp_path):
    out = tmp_path / "tb"
    res = CliRunner().invoke(main, ["export", "toolbox", "ubfc", "--cache", str(built), "--out", str(out),
                                    "--chunk-length", "64", "--size", "72"])
    assert res.exit_code == 0, res.output
    name = "UBFC_SizeW72_SizeH72_ClipLength64_DataTypeDiffNormalized_Standardized_LabelTypeDiffNormalized_rppg-prep"
    folder = out / name
    files = _read_list(out / "DataFileLists" / f"{name}_0.0_1.0.csv")
    assert files == sorted(files)
    build = rppg_prep.open_build(built, "ubfc", "ubfc")
    expected = []
    for sid, nodes in build.items():
        crops = nodes["face"]["frames"][...]
        bvp = nodes["labels"]["bvp"][...]
        n = len(crops)
        resized = np.stack([cv2.resize(f, (72, 72), interpolation=cv2.INTER_AREA) for f in crops])
        x = np.concatenate([_ref_diff_frames(resized), _ref_std(resized)], axis=-1)
        y = _ref_diff_label(bvp)
        assert n // 64 >= 2
        for k in range(n // 64):
            path = folder / f"{sid}_input{k}.npy"
            expected.append(str(path))
            inp, lab = np.load(path), np.load(folder / f"{sid}_label{k}.npy")
            assert inp.shape == (64, 72, 72, 6) and inp.dtype == np.float32
            assert lab.shape == (64,) and lab.dtype == np.float32
            np.testing.assert_allclose(inp, x[k * 64:(k + 1) * 64], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(lab, y[k * 64:(k + 1) * 64], rtol=1e-5, atol=1e-6)
        assert not (folder / f"{sid}_input{n // 64}.npy").exists()  # remainder dropped
        assert f"{sid}\t{n // 64} chunk(s)\t{n % 64} frame(s) dropped" in res.output
    assert sorted(expected) == files
    # every file the list names loads, in the list's order, and each has its label (Toolbox: input -> label)
    for f in files:
        assert np.load(f).shape[0] == 64 and Path(f.replace("input", "label")).is_file()
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.name.startswith(".")) == []


def test_raw_standardized_label_and_whole_video_chunk(built, tmp_path):
    out = tmp_path / "tb"
    res = CliRunner().invoke(main, ["export", "toolbox", "ubfc", "--cache", str(built), "--out", str(out),
                                    "--chunk-length", "0", "--data-types", "Raw", "--label-type", "Standardized",
                                    "--name", "whole"])
    assert res.exit_code == 0, res.output
    files = _read_list(out / "DataFileLists" / "whole_0.0_1.0.csv")
    build = rppg_prep.open_build(built, "ubfc", "ubfc")
    assert [Path(f).name for f in files] == [f"{sid}_input0.npy" for sid in sorted(build)]
    for sid, nodes in build.items():
        crops, bvp = nodes["face"]["frames"][...], nodes["labels"]["bvp"][...]
        inp = np.load(out / "whole" / f"{sid}_input0.npy")
        assert inp.shape == crops.shape and inp.dtype == np.float32  # stored crop size, no resize
        np.testing.assert_array_equal(inp, crops.astype(np.float32))
        np.testing.assert_allclose(np.load(out / "whole" / f"{sid}_label0.npy"), _ref_std(bvp), atol=1e-5)


def test_formulas_edge_cases():
    flat = np.full((5, 2, 2, 3), 7, np.uint8)
    assert np.all(diff_normalize_frames(flat) == 0) and np.all(standardize(flat) == 0)
    assert np.all(diff_normalize_label(np.ones(4)) == 0)
    rng = np.random.default_rng(0)
    v = rng.integers(0, 256, (9, 3, 4, 3)).astype(np.uint8)
    d = diff_normalize_frames(v)
    assert d.shape == v.shape and d.dtype == np.float32 and np.all(d[-1] == 0)
    np.testing.assert_allclose(d, _ref_diff_frames(v), rtol=1e-5, atol=1e-6)
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8)] and chunk_bounds(10, 0) == [(0, 10)]
    with pytest.raises(ValueError):
        diff_normalize_frames(np.zeros((3, 4)))


def test_bad_options_are_usage_errors(built, tmp_path):
    res = CliRunner().invoke(main, ["export", "toolbox", "ubfc", "--cache", str(built), "--out",
                                    str(tmp_path / "o"), "--data-types", "Foo"])
    assert res.exit_code == 2 and "data types" in res.output
    res = CliRunner().invoke(main, ["export", "toolbox", "ubfc", "--cache", str(built), "--out",
                                    str(tmp_path / "inputs")])
    assert res.exit_code == 2 and "'input'" in res.output
    res = CliRunner().invoke(main, ["export", "toolbox", "ubfc", "--cache", str(built), "--out",
                                    str(tmp_path / "o"), "--name", ".."])
    assert res.exit_code == 2
    assert not (tmp_path / "o").exists() and not (tmp_path / "inputs").exists()
    with pytest.raises(ConfigError):
        chunk_bounds(3, -1)
