"""A build as an xarray.DataTree (issue 22, item 4), and open_build's default pipeline."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main


@pytest.fixture(scope="module")
def sample_cache(tmp_path_factory):
    cache = tmp_path_factory.mktemp("dt_cache")
    res = CliRunner().invoke(main, ["build", "ubfc", "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    return cache


def test_open_build_pipeline_defaults_to_the_dataset(sample_cache):
    a = rppg_prep.open_build(sample_cache, "ubfc")
    b = rppg_prep.open_build(sample_cache, "ubfc", "ubfc")
    assert list(a) == list(b) == ["subject1", "subject2", "subject3"]
    assert {s: {k: g.attrs["key"] for k, g in n.items()} for s, n in a.items()} == \
        {s: {k: g.attrs["key"] for k, g in n.items()} for s, n in b.items()}


def test_the_datatree_has_stage_groups_clocks_windows_and_the_raw_values(sample_cache):
    pytest.importorskip("xarray")
    import dask.array as da

    tree = rppg_prep.open_datatree(sample_cache, "ubfc")
    build = rppg_prep.open_build(sample_cache, "ubfc")
    man = rppg_prep.read_manifest(sample_cache, "ubfc", "ubfc")
    assert tree.attrs["dataset"] == "ubfc" and tree.attrs["pipeline"] == "ubfc"
    assert list(tree.children) == list(build)
    for sid, nodes in build.items():
        assert sorted(tree[sid].children) == sorted(nodes)  # named by stage, not by key
        for stage, group in nodes.items():
            ds = tree[f"{sid}/{stage}"].to_dataset()
            assert ds.attrs["key"] == man["subjects"][sid]["nodes"][stage]["key"] == group.attrs["key"]
            assert ds.attrs["path"] == man["subjects"][sid]["nodes"][stage]["path"]
            for name in group.array_keys():
                var = ds[name].variable
                assert isinstance(var.data, da.Array)  # lazy
                np.testing.assert_array_equal(var.values, group[name][...])
                unit = group[name].attrs.get("units")
                assert var.attrs.get("units") == (unit or None) and "unit" not in var.attrs
    labels = tree["subject1/labels"].to_dataset()
    assert "t_s" in labels.coords and labels["t_s"].dims == ("frame",) and labels["t_s"].attrs["units"] == "s"
    assert labels["bvp"].coords["t_s"].shape == labels["bvp"].shape
    t = np.asarray(labels["t_s"].values)
    w = np.asarray(labels["window"].values)
    np.testing.assert_array_equal(labels["window_start_s"].values, t[w[:, 0]])
    assert labels["window_start_s"].dims == ("window",) and labels["window_stop_s"].attrs["units"] == "s"
    assert np.all(labels["window_stop_s"].values > labels["window_start_s"].values)
    # a video-stage node gets the labels' clock; clips carry their windows' times, not a frame clock
    face = tree["subject1/face"].to_dataset()
    np.testing.assert_array_equal(face["t_s"].values, t)
    clips = tree["subject1/clips"].to_dataset()
    assert "t_s" not in clips.coords
    cw = np.asarray(clips["window"].values)
    np.testing.assert_array_equal(clips["window_start_s"].values, t[cw[:, 0]])
    assert clips["window_start_s"].dims == ("clip",)
    assert tree["subject1/st_map"].to_dataset()["window_stop_s"].dims == ("segment",)


def test_without_xarray_the_error_says_what_to_install(sample_cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)
    with pytest.raises(ImportError, match="pip install xarray"):
        rppg_prep.open_datatree(sample_cache, "ubfc")


def test_a_node_opens_with_plain_xarray_and_zarr_without_warnings(sample_cache):
    """Consolidated metadata at commit and CF attributes: no manifest, no warning, t_s a coordinate."""
    import warnings

    import xarray as xr
    import zarr

    pytest.importorskip("xarray")
    cache = sample_cache
    for node in sorted(cache.glob("ubfc.zarr/subject1/*-*")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ds = xr.open_zarr(node)
            assert sorted(zarr.open_consolidated(str(node), mode="r").array_keys()) == sorted(ds.variables)
        stage = node.name.rsplit("-", 1)[0]
        if stage in ("decode", "labels"):
            assert "t_s" in ds.coords and ds["t_s"].dims == ("frame",) and ds["t_s"].attrs["units"] == "s"
        for var in ds.variables.values():
            assert "unit" not in var.attrs
    assert xr.open_zarr(next(cache.glob("ubfc.zarr/subject1/labels-*")))["bvp"].attrs["units"] == "a.u."


def test_a_real_subject_as_a_datatree_and_as_plain_xarray(real_build):
    pytest.importorskip("xarray")
    import xarray as xr

    _, cache, res = real_build
    assert res.exit_code == 0, res.output
    tree = rppg_prep.open_datatree(cache, "ubfc")
    sid = sorted(tree.children)[0]
    assert {"decode", "face", "labels", "clips", "st_map"} <= set(tree[sid].children)
    labels = tree[f"{sid}/labels"].to_dataset()
    t = np.asarray(labels["t_s"].values)
    assert labels["t_s"].dims == ("frame",) and t.size > 1000 and np.all(np.diff(t) > 0)
    np.testing.assert_array_equal(tree[f"{sid}/face"].to_dataset()["t_s"].values, t)
    w = np.asarray(labels["window"].values)
    np.testing.assert_array_equal(labels["window_start_s"].values, t[w[:, 0]])
    for var in labels.variables.values():
        assert "coordinates" not in var.attrs and "unit" not in var.attrs
    plain = xr.open_zarr(cache / rppg_prep.read_manifest(cache, "ubfc", "ubfc")["subjects"][sid]["nodes"]["labels"]["path"])
    np.testing.assert_array_equal(plain["t_s"].values, t)
    assert "t_s" in plain.coords and plain["hr_bpm"].attrs["units"] == "bpm"
