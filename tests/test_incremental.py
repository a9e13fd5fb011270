"""Content-keyed nodes: rebuilds run exactly what changed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.sample import write_ubfc_sample


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("inc_root")
    write_ubfc_sample(out, n_subjects=2, duration_s=11.0, seed=11)
    return out


def _pipeline(tmp_path, **stages):
    path = tmp_path / f"p{len(list(tmp_path.glob('p*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump({"name": "inc", "dataset": "ubfc", "stages": stages}))
    return path


def _build(root, cache, pipeline):
    res = CliRunner().invoke(main, ["build", str(pipeline), "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    man = json.loads((cache / "ubfc.builds" / "inc.json").read_text())
    return {sid: rec["ran"] for sid, rec in man["subjects"].items()}, man


def test_rebuilds_run_exactly_what_changed(root, tmp_path):
    cache = tmp_path / "cache"
    base = _pipeline(tmp_path)
    ran, man0 = _build(root, cache, base)
    assert ran["subject1"] == ["decode", "landmarks", "face", "clips", "st_map", "labels"]
    assert _build(root, cache, base)[0] == {"subject1": [], "subject2": []}

    ran, _ = _build(root, cache, _pipeline(tmp_path, labels={"window_s": 8.0}))
    assert ran == {"subject1": ["labels"], "subject2": ["labels"]}

    ran, man = _build(root, cache, _pipeline(tmp_path, face={"size_px": 96}))
    assert ran["subject1"] == ["face", "clips", "st_map", "labels"]  # re-cropped from stored landmarks
    assert man["subjects"]["subject1"]["nodes"]["landmarks"] == man0["subjects"]["subject1"]["nodes"]["landmarks"]
    crops = rppg_prep.open_build(cache, "ubfc", "inc")["subject1"]["face"]["frames"]
    assert crops.shape[1:] == (96, 96, 3)

    ran, man = _build(root, cache, base)  # reverting reuses the earlier nodes
    assert ran == {"subject1": [], "subject2": []}
    assert man["subjects"]["subject1"]["nodes"] == man0["subjects"]["subject1"]["nodes"]


def test_touch_keeps_keys_new_content_reruns_only_that_subject(root, tmp_path):
    cache = tmp_path / "cache"
    pipe = _pipeline(tmp_path)
    _, man0 = _build(root, cache, pipe)
    gt = root / "subject2" / "ground_truth.txt"
    st = gt.stat()
    os.utime(gt, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched, same bytes
    assert _build(root, cache, pipe)[0] == {"subject1": [], "subject2": []}
    text = gt.read_text()
    try:
        lines = text.splitlines()
        ppg = np.array(lines[0].split(), float)
        lines[0] = " ".join(f"{v:.7e}" for v in ppg * 2.0)  # new content: the labels must change
        gt.write_text("\n".join(lines) + "\n")
        ran, man = _build(root, cache, pipe)
        assert ran == {"subject1": [], "subject2": ["labels"]}
        bvp = rppg_prep.open_build(cache, "ubfc", "inc")["subject2"]["labels"]["bvp"][:]
        assert np.isfinite(bvp).all()
    finally:
        gt.write_text(text)
