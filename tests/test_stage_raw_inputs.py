"""A stage declares its raw inputs (issue 23, item 1): a new stage that reads the ground truth is
one module plus one registry line, and its key follows the truth file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from rppg_prep.sample import write_ubfc_sample
from rppg_prep.stage import ArraySpec, Stage

REPO_ROOT = Path(__file__).resolve().parents[1]

#: the new stage's module, as a contributor would write it (in a copy of the package: the rest of
#: the package finds it through the registry alone)
STAGE_MODULE = '''
"""Mean of the contact PPG (stands in for a respiration label: a stage that reads the ground truth)."""
from dataclasses import dataclass

import numpy as np

from rppg_prep.stage import ArraySpec, Stage


@dataclass(frozen=True)
class PpgMeanParams:
    pass


def ppg_mean(ctx):
    truth = ctx.truth()
    ctx.write("ppg_mean", np.array([float(np.mean(truth.ppg))]))


STAGE = Stage(name="ppg_mean", version="1", params=PpgMeanParams, inputs=("decode",),
              outputs=(ArraySpec("ppg_mean", "float64", ("one",), "a.u.", "mean contact PPG"),),
              fn=ppg_mean, raw_inputs=("truth",))
'''

#: the registry line it adds to rppg_prep/stages/__init__.py
REGISTRY_LINE = '    "ppg_mean",\n'


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A copy of the package with the new stage: its module, and its line in the registry."""
    out = tmp_path_factory.mktemp("pkg")
    pkg = out / "rppg_prep"
    shutil.copytree(REPO_ROOT / "rppg_prep", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "stages" / "ppg_mean.py").write_text(STAGE_MODULE)
    init = pkg / "stages" / "__init__.py"
    text = init.read_text()
    anchor = '    "labels",\n)'
    assert text.count(anchor) == 1
    init.write_text(text.replace(anchor, '    "labels",\n' + REGISTRY_LINE + ")"))
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw_root")
    write_ubfc_sample(out, n_subjects=2, duration_s=11.0, seed=23)
    return out


def _build(package: Path, root: Path, cache: Path) -> dict:
    driver = f"import sys; sys.path[:0] = [{str(package)!r}, {str(REPO_ROOT)!r}]; " \
             "from rppg_prep.cli import main; main(sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", driver, "build", "ubfc", "--root", str(root), "--cache", str(cache)],
                         capture_output=True, text=True, cwd=cache.parent)
    assert res.returncode == 0, res.stderr
    return json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]


def test_a_new_stage_that_reads_the_truth_is_rebuilt_when_the_truth_changes(package, root, tmp_path):
    cache = tmp_path / "cache"
    man0 = _build(package, root, cache)
    assert {"ppg_mean", "labels", "decode"} <= set(man0["subject2"]["nodes"])
    gt = root / "subject2" / "ground_truth.txt"
    text = gt.read_text()
    try:
        lines = text.splitlines()
        lines[0] = " ".join(f"{v:.7e}" for v in np.array(lines[0].split(), float) * 2.0 + 1.0)
        gt.write_text("\n".join(lines) + "\n")
        man = _build(package, root, cache)
    finally:
        gt.write_text(text)
    assert man["subject1"]["ran"] == [] and man["subject1"]["nodes"] == man0["subject1"]["nodes"]
    assert sorted(man["subject2"]["ran"]) == ["labels", "ppg_mean"]  # the video stages keep their nodes
    old, new = (np.asarray(zarr.open_group(str(cache / m["subject2"]["nodes"]["ppg_mean"]["path"]), mode="r")
                           ["ppg_mean"][...]) for m in (man0, man))
    np.testing.assert_allclose(new, old * 2.0 + 1.0, rtol=1e-5)


def test_only_a_stage_that_declares_the_truth_gets_it():
    from rppg_prep.build import _ctx
    from rppg_prep.pipeline import ORDER, STAGES, load_pipeline
    from rppg_prep.subject import Subject

    pipe = load_pipeline("ubfc")
    subject = Subject(id="s1", dataset="ubfc", video=Path("vid.avi"), truth=(Path("gt.txt"),))
    for name in ORDER:
        ctx = _ctx(pipe, subject, name, {}, None, lambda *a: None)
        assert (ctx.truth is not None) == ("truth" in STAGES[name].raw_inputs), name
    assert [n for n in ORDER if "truth" in STAGES[n].raw_inputs] == ["labels"]


def test_an_unknown_raw_input_role_is_refused():
    with pytest.raises(ValueError, match="raw input role"):
        Stage("x", "1", object, (), (ArraySpec("a", "float32", ("t",)),), raw_inputs=("respiration_belt",))
