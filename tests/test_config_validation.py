"""Pipeline configs are refused, never built at the defaults, when their top level, a name or a value is wrong."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from rppg_prep.cli import main
from rppg_prep.errors import ConfigError
from rppg_prep.manifest import manifest_path
from rppg_prep.pipeline import Pipeline, load_pipeline, pipeline_names
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import dataset_store

#: config body -> (the key the message must name, a phrase it must hold)
BAD = {
    "stage_at_top_level": ("name: t\ndataset: ubfc\nclips:\n  size_px: 32\n", "clips", "under 'stages:'"),
    "stage_for_stages": ("name: t\ndataset: ubfc\nstage:\n  clips: {size_px: 32}\n", "stage", "did you mean 'stages'"),
    "unknown_top_key": ("name: t\ndataset: ubfc\nroot: /data\nstages: {}\n", "root", "unknown top-level key"),
    "stages_a_list": ("name: t\ndataset: ubfc\nstages: [labels]\n", "stages", "mapping"),
    "stage_a_list": ("name: t\ndataset: ubfc\nstages:\n  labels: [window_s]\n", "labels", "mapping"),
    "nan": ("name: t\ndataset: ubfc\nstages:\n  labels: {window_s: .nan}\n", "window_s", "finite"),
    "inf_in_tuple": ("name: t\ndataset: ubfc\nstages:\n  labels: {band_hz: [0.7, .inf]}\n", "band_hz", "finite"),
    "string_number": ("name: t\ndataset: ubfc\nstages:\n  face: {size_px: '128'}\n", "size_px", "a number"),
    "bool_number": ("name: t\ndataset: ubfc\nstages:\n  face: {enlarge: true}\n", "enlarge", "a number"),
    "fraction_int": ("name: t\ndataset: ubfc\nstages:\n  landmarks: {every_n_frames: 2.5}\n", "every_n_frames",
                     "whole number"),
    "short_tuple": ("name: t\ndataset: ubfc\nstages:\n  labels: {band_hz: [0.7]}\n", "band_hz", "list of 2"),
    "number_backend": ("name: t\ndataset: ubfc\nstages:\n  landmarks: {backend: 3}\n", "backend", "a string"),
    "name_escapes": ("name: ../../escaped\ndataset: ubfc\n", "name", "'../../escaped'"),
    "name_dotdot": ("name: '..'\ndataset: ubfc\n", "name", "'..'"),
    "name_absolute": ("name: /tmp/abs\ndataset: ubfc\n", "name", "/tmp/abs"),
    "name_not_string": ("name: [a]\ndataset: ubfc\n", "name", "['a']"),
    "dataset_escapes": ("name: t\ndataset: ../ubfc\n", "dataset", "'../ubfc'"),
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("cfg_root")
    write_ubfc_sample(out, n_subjects=1, duration_s=6.0, seed=5)
    return out


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_is_a_config_error_naming_the_file_and_the_key(case, tmp_path):
    body, key, phrase = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as err:
        load_pipeline(path)
    msg = str(err.value)
    assert str(path) in msg and key in msg and phrase in msg, msg


@pytest.mark.parametrize("case", ["stage_at_top_level", "stage_for_stages", "stages_a_list", "nan", "name_escapes"])
def test_build_exits_2_before_writing_anything(case, root, tmp_path):
    body, key, _ = BAD[case]
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    path = work / "bad.yaml"
    path.write_text(body)
    cache = work / "cache"
    res = CliRunner().invoke(main, ["build", str(path), "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 2, res.output
    assert str(path) in res.output and key in res.output, res.output
    assert not cache.exists()
    assert not list(tmp_path.rglob("*.json")), "nothing written, inside the cache or outside it"


def test_every_shipped_config_and_the_defaults_still_load():
    for name in pipeline_names():
        pipe = load_pipeline(name)
        assert pipe.name == name and pipe.source != "defaults"
    assert load_pipeline(None, dataset="pure").name == "pure"


def test_a_config_of_only_stages_with_int_for_float_still_loads(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"stages": {"labels": {"window_s": 8, "band_hz": [1, 3]}, "decode": None}}))
    pipe = load_pipeline(path)
    assert pipe.params["labels"].window_s == 8.0 and pipe.params["labels"].band_hz == (1.0, 3.0)
    assert (pipe.name, pipe.dataset) == ("ubfc", "ubfc")


@pytest.mark.parametrize("bad", ["../x", "..", ".", "a/b", "/abs", "", "a b", "x\\y", None, 3])
def test_paths_refuse_a_bad_dataset_or_pipeline_name(bad, tmp_path):
    with pytest.raises(ConfigError, match="dataset name"):
        dataset_store(tmp_path, bad)
    with pytest.raises(ConfigError, match="dataset name"):
        manifest_path(tmp_path, bad, "ubfc")
    with pytest.raises(ConfigError, match="pipeline name"):
        manifest_path(tmp_path, "ubfc", bad)
    with pytest.raises(ConfigError, match="key 'name'"):
        Pipeline(name=bad, dataset="ubfc", params={})
    from rppg_prep.store import check_name

    with pytest.raises(ConfigError):
        check_name(bad, "name")


def test_good_names_pass():
    from rppg_prep.store import check_name

    for good in ("ubfc", "mahnob-hci", "ubfc_phys", "v1.2", "A-b_c.d"):
        assert check_name(good, "name") == good
