"""The shape of the house: what each package may import, what the CLI loads, and the documented public surface."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

#: modules whose public names (``__all__``) carry numpydoc Parameters / Returns sections
DOCUMENTED = ["rppg_prep", "rppg_prep.store", "rppg_prep.manifest", "rppg_prep.build", "rppg_prep.dag",
              "rppg_prep.maintenance", "rppg_prep.integrity", "rppg_prep.stages",
              "rppg_prep.pipeline", "rppg_prep.stage", "rppg_models", "rppg_models.train", "rppg_models.data",
              "rppg_models.evaluate", "rppg_models.families", "rppg_models.st2s_pipeline", "rppg_models.st2s",
              "rppg_models.stgnet",
              "rppg_models.meta_rppg", "rppg_models.ienet", "rppg_models.cnn3d", "rppg_models.layers"]
#: numpydoc checks: no docstring, parameter not documented, documented parameter that does not exist,
#: no Returns section for a function that returns a value
CHECKS = {"GL08", "PR01", "PR02", "RT01"}


def _imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_rppg_prep_never_imports_the_training_layer():
    offenders = {str(p.relative_to(REPO_ROOT)): sorted(m for m in _imports(p) if m.split(".")[0] == "rppg_models")
                 for p in (REPO_ROOT / "rppg_prep").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_stage_module_imports_a_dataset_loader():
    offenders = {p.name: sorted(m for m in _imports(p) if m.startswith("rppg_prep.datasets"))
                 for p in (REPO_ROOT / "rppg_prep" / "stages").glob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


@pytest.mark.parametrize("argv", [["status", "--help"], ["--help"], ["build", "--help"]])
def test_the_cli_loads_no_model_or_face_library_to_answer(argv):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    res = subprocess.run([sys.executable, "-X", "importtime", "-m", "rppg_prep.cli", *argv], env=env,
                         capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    # listing the commands (--help) loads the training layer's command module, but never torch
    heavy = {"torch", "mediapipe", "distributed", "matplotlib", "scipy", "zarr"}
    assert not loaded & heavy, sorted(loaded & heavy)


def test_the_public_names_resolve():
    import rppg_models
    import rppg_prep

    for mod in (rppg_prep, rppg_models):
        for name in mod.__all__:
            assert getattr(mod, name) is not None, name
    assert rppg_prep.open_build is importlib.import_module("rppg_prep.manifest").open_build


def _resolve(qualname: str):
    module, _, name = qualname.rpartition(".")
    while module not in sys.modules:
        module, _, outer = module.rpartition(".")
        name = f"{outer}.{name}"
    obj = sys.modules[module]
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def _public(module_name: str):
    mod = importlib.import_module(module_name)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            yield f"{obj.__module__}.{obj.__qualname__}"


def test_the_public_surface_has_numpydoc_sections():
    from numpydoc.validate import validate

    names = sorted({q for m in DOCUMENTED for q in _public(m)})
    assert len(names) > 60
    problems = {}
    for q in names:
        checks = CHECKS
        obj = _resolve(q)
        if inspect.isclass(obj) and "__init__" not in vars(obj):
            checks = {"GL08"}  # an inherited constructor is documented where it is defined (RppgPrepError)
        problems[q] = [f"{code}: {msg}" for code, msg in validate(q)["errors"] if code in checks]
    assert not {q: p for q, p in problems.items() if p}
