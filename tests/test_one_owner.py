"""One owner per fact: pipeline configs, the manifest, checkpoint keys and the settings that change output.

Each test here failed on the code before issue 13: a broken shipped config built with the defaults,
a rebuild dropped the ST2S nodes from the manifest, checkpoint keys hashed the manifest's bytes and
the DataLoader workers, the configs were only found beside a source checkout, and three settings that
change the stored face node sat in no params record.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO_ROOT, blank_face
from rppg_prep import pipeline as pipeline_mod
from rppg_prep.cli import main
from rppg_prep.errors import ConfigError
from rppg_prep.pipeline import load_pipeline
from rppg_prep.sample import write_ubfc_sample


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("owner_root")
    write_ubfc_sample(out, n_subjects=2, duration_s=8.0, seed=5)
    return out


def _shipped(monkeypatch, name: str, path: Path | None) -> None:
    """Pretend the package ships ``path`` as pipeline ``name`` (None: ships no config of that name)."""
    real = pipeline_mod.pipeline_file
    monkeypatch.setattr(pipeline_mod, "pipeline_file", lambda n: path if n == name else real(n))


# --------------------------------------------------------------------------- defect 1

@pytest.mark.parametrize("stages, bad_key", [
    ({"clips": {"stride_frame": 30}}, "stride_frame"),  # misspelt key
    ({"face": {"size_px": 4}}, "size_px"),  # invalid value
    ({"clip": {"stride_frames": 30}}, "clip"),  # misspelt stage
])
def test_a_broken_shipped_config_exits_2_naming_file_and_key(monkeypatch, tmp_path, sample_root, stages, bad_key):
    broken = tmp_path / "ubfc.yaml"
    broken.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": stages}))
    _shipped(monkeypatch, "ubfc", broken)
    cache = tmp_path / "cache"
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(sample_root), "--cache", str(cache)])
    assert res.exit_code == 2, res.output
    assert str(broken) in res.output and bad_key in res.output
    assert not (cache / "ubfc.builds").exists(), "nothing may be built with a config that did not validate"
    for command in (["status", "ubfc", "--root", str(sample_root)], ["inspect", "ubfc"]):
        res = CliRunner().invoke(main, [*command, "--cache", str(cache)])
        assert res.exit_code == 2 and bad_key in res.output, res.output


def test_a_dataset_without_a_shipped_config_takes_the_stage_defaults(monkeypatch):
    _shipped(monkeypatch, "pure", None)
    pipe = load_pipeline("pure")
    assert (pipe.name, pipe.dataset, pipe.source) == ("pure", "pure", "defaults")
    assert pipe.config() == load_pipeline(None, dataset="pure").config()


def test_an_unknown_name_is_an_error_listing_what_exists(tmp_path):
    with pytest.raises(ConfigError, match="no pipeline named 'ubcf'.*ubfc"):
        load_pipeline("ubcf")
    res = CliRunner().invoke(main, ["build", "ubcf", "--cache", str(tmp_path)])
    assert res.exit_code == 2 and "no pipeline named" in res.output


# --------------------------------------------------------------------------- defect 4

def test_a_non_editable_install_finds_its_shipped_configs(tmp_path, sample_root):
    """``pip install .`` (a wheel, no source tree) run from another folder uses the installed ubfc.yaml."""
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    src = tmp_path / "src"
    shutil.copytree(REPO_ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "cache", "build", "*.egg-info",
                                                                  "__pycache__", ".pytest_cache"))
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, capture_output=True)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl"))],
                   check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = subprocess.run([sys.executable, "-c", "import rppg_prep, rppg_prep.pipeline as p; "
                            "print(rppg_prep.__file__); print(p.pipeline_file('ubfc'))"],
                           cwd=elsewhere, env=env, check=True, capture_output=True, text=True)
    package, config = probe.stdout.split()
    assert Path(package).is_relative_to(target), "the test must run the installed copy, not the checkout"
    assert Path(config) == target / "rppg_prep" / "pipelines" / "ubfc.yaml"
    cache = tmp_path / "cache"
    res = subprocess.run([sys.executable, "-m", "rppg_prep.cli", "build", "ubfc", "--root", str(sample_root),
                          "--cache", str(cache), "--subjects", "subject1"],
                         cwd=elsewhere, env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    assert man["config_source"] == config
    shipped = yaml.safe_load((REPO_ROOT / "pipelines" / "ubfc.yaml").read_text())["stages"]
    for stage, values in shipped.items():
        for key, value in values.items():
            got = man["config"][stage][key]
            assert got == (list(value) if isinstance(value, tuple) else value), (stage, key)


# --------------------------------------------------------------------------- defect 5

@pytest.mark.parametrize("param, value", [("min_valid_fraction", 0.9), ("gap_report_s", 2.0), ("chunk_frames", 16)])
def test_face_settings_that_change_the_node_are_params_and_change_its_key(tmp_path, param, value):
    from rppg_prep.build import plan_subject
    from rppg_prep.datasets import ubfc

    root = tmp_path / "root"
    write_ubfc_sample(root, n_subjects=1, duration_s=2.0, seed=1)
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": {"face": {param: value}}}))
    subject = ubfc.find_subjects(root)[0]
    base = plan_subject(load_pipeline("ubfc"), subject, tmp_path / "cache")
    new = plan_subject(load_pipeline(changed), subject, tmp_path / "cache")
    assert base["landmarks"].key == new["landmarks"].key
    assert all(base[s].key != new[s].key for s in ("face", "clips", "st_map", "labels"))


def _yaml(path: Path, face: dict) -> Path:
    path.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": {"face": face}}))
    return path


def test_the_face_params_decide_failure_gap_report_and_chunks(tmp_path, sample_root):
    """A subject whose face is gone for 3 s of 8 s (frames 60-150: 62 % valid)."""
    from rppg_prep.dag import run_build
    from rppg_prep.datasets import ubfc
    from rppg_prep.store import open_node

    root = tmp_path / "root"
    shutil.copytree(sample_root / "subject1", root / "subject1")
    blank_face(sample_root / "subject1" / "vid.avi", root / "subject1" / "vid.avi", 60, 150)
    subjects = ubfc.find_subjects(root)
    cache = tmp_path / "cache"

    default = run_build(load_pipeline("ubfc"), subjects, cache)[0]
    assert default.status == "ok", default.error
    face = open_node(cache / default.nodes["face"]["path"])
    assert 0.55 < face.attrs["valid_fraction"] < 0.7
    assert len(face.attrs["gaps_s"]) == 1 and 2.5 < face.attrs["gaps_s"][0][1] < 3.5
    assert face["frames"].chunks[0] == 32

    other = run_build(load_pipeline(_yaml(tmp_path / "o.yaml", {"gap_report_s": 4.0, "chunk_frames": 16})),
                      subjects, cache)[0]
    assert other.status == "ok" and other.ran == ["face", "clips", "st_map", "labels"]
    face = open_node(cache / other.nodes["face"]["path"])
    assert face.attrs["gaps_s"] == [] and face["frames"].chunks[0] == 16
    assert not any("no face for" in n for n in other.notes)

    strict = run_build(load_pipeline(_yaml(tmp_path / "s.yaml", {"min_valid_fraction": 0.9})), subjects, cache)[0]
    assert strict.status == "failed" and strict.failed_stage == "face"
    assert "min_valid_fraction" in strict.error and "subject1" in strict.error


# --------------------------------------------------------------------------- defect 3

def test_checkpoint_keys_follow_the_nodes_not_the_manifest_bytes_or_the_workers(tmp_path, sample_root):
    import time

    from rppg_models.train import TrainConfig, fit

    from conftest import torch_threads

    cache = tmp_path / "cache"
    build = ["build", "ubfc", "--root", str(sample_root), "--cache", str(cache)]
    assert CliRunner().invoke(main, build).exit_code == 0
    cfg = TrainConfig(steps=1, batch=1, size_px=16, norm="temporal")

    def ckpt(cfg: TrainConfig) -> str:
        with torch_threads(1):
            return fit("stgnet", cache, "ubfc", "ubfc", cfg, device="cpu", out=tmp_path / "models",
                       progress=False)["checkpoint"].name

    first = ckpt(cfg)
    man = cache / "ubfc.builds" / "ubfc.json"
    before = man.read_bytes()
    time.sleep(1.1)  # the manifest records the time of each build to the second
    res = CliRunner().invoke(main, build)
    assert res.exit_code == 0 and "all fresh" in res.output
    assert man.read_bytes() != before, "a no-op rebuild rewrites the manifest (time, run seconds)"
    assert ckpt(cfg) == first
    assert ckpt(TrainConfig(steps=1, batch=1, size_px=16, norm="temporal", workers=1)) == first
    assert ckpt(TrainConfig(steps=1, batch=1, size_px=16, norm="temporal", seed=1)) != first
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc",
                                       "stages": {"clips": {"stride_frames": 40}}}))
    assert CliRunner().invoke(main, ["build", str(changed), "--root", str(sample_root), "--cache", str(cache)]).exit_code == 0
    assert ckpt(cfg) != first, "new clip nodes give a new checkpoint key"
