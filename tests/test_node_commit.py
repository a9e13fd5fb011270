"""Committing a node: a damaged node in the way is replaced, and a replace that crashes loses nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from conftest import REPO_ROOT
from rppg_prep import store
from rppg_prep.cli import main
from rppg_prep.maintenance import gc
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import NodeWriter, node_exists, node_path, open_node

KEY = "ab" * 32


def _write(final: Path, value: float, *, replace: bool = False) -> Path:
    with NodeWriter(final, {"key": KEY, "stage": "st", "subject": "s1"}, replace=replace) as w:
        w.write("x", np.full(4, value, dtype=np.float32))
    return final


def _value(final: Path) -> float:
    return float(open_node(final)["x"][0])


def _exchange_works(tmp_path: Path) -> bool:
    a, b = tmp_path / "probe_a", tmp_path / "probe_b"
    a.mkdir(), b.mkdir()
    try:
        return store._exchange(a, b)
    finally:
        a.rmdir(), b.rmdir()


def _reference(cache: Path, final: Path) -> None:
    """A manifest that references ``final`` (so that gc keeps it)."""
    man = {"pipeline": "p", "dataset": "ds", "subjects": {"s1": {"status": "ok", "nodes": {
        "st": {"key": KEY, "path": final.relative_to(cache).as_posix()}}}}}
    (cache / "ds.builds").mkdir(exist_ok=True)
    (cache / "ds.builds" / "p.json").write_text(json.dumps(man))


@pytest.fixture
def final(tmp_path):
    return node_path(tmp_path / "cache", "ds", "s1", "st", KEY)


def test_a_folder_that_is_not_a_complete_node_is_replaced(final):
    _write(final, 1.0)
    (final / "zarr.json").write_text((final / "zarr.json").read_text()[:40])  # truncated
    assert not node_exists(final)
    _write(final, 2.0)
    assert node_exists(final) and _value(final) == 2.0


def test_a_complete_node_is_kept_without_replace_and_swapped_with_it(final, tmp_path):
    _write(final, 1.0)
    _write(final, 2.0)
    assert _value(final) == 1.0  # same key, same content: the first one wins
    _write(final, 3.0, replace=True)
    assert _value(final) == 3.0
    cache = tmp_path / "cache"
    assert not list((cache / ".partial").iterdir()) and not (cache / ".replaced").exists()


@pytest.mark.parametrize("exchange", ["1", "0"])
def test_a_crash_in_the_middle_of_a_replace_loses_nothing(exchange, final, tmp_path):
    """SIGKILL between the two steps of a --force replace (the fault hook), with and without renameat2."""
    if exchange == "1" and not _exchange_works(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    _write(final, 1.0)
    script = textwrap.dedent(f"""
        import numpy as np
        from rppg_prep.store import NodeWriter
        with NodeWriter({str(final)!r}, {{"key": {KEY!r}, "stage": "st", "subject": "s1"}}, replace=True) as w:
            w.write("x", np.full(4, 2.0, dtype=np.float32))
    """)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), RPPG_PREP_FAULT="crash-replace:st:s1",
               RPPG_PREP_RENAME_EXCHANGE=exchange)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr
    cache = tmp_path / "cache"
    if exchange == "1":  # the swap is done: the new node is in place, the old one is a partial for gc
        assert node_exists(final) and _value(final) == 2.0
    else:  # between the renames nothing is at the node's path: the old node is parked, not in .partial
        assert not final.exists()
        assert len(list((cache / ".replaced").rglob("zarr.json"))) >= 1
    _reference(cache, final)
    removed, _ = gc(cache)
    assert node_exists(final), "gc put the old node back (or kept the new one); it never deletes it"
    assert _value(final) == (2.0 if exchange == "1" else 1.0)
    assert final not in removed and not (cache / ".replaced").exists()
    _write(final, 3.0, replace=True)  # and a rebuild gives a complete node
    assert _value(final) == 3.0 and not (cache / ".replaced").exists()


def test_a_read_uses_the_parked_node_in_place_and_the_next_plan_restores_it(final, tmp_path, monkeypatch):
    """Fallback path, crash simulated by leaving the state of a kill between the two renames.

    Reading must write nothing (a read-only cache stays readable), so the read finds the parked node
    where it lies; putting it back is the next build's (or gc's) job."""
    monkeypatch.setenv("RPPG_PREP_RENAME_EXCHANGE", "0")
    _write(final, 1.0)
    parked = store._backup_path(final, KEY)
    parked.parent.mkdir(parents=True)
    os.rename(final, parked)  # what a crash after the first rename leaves
    assert _value(final) == 1.0  # open_node read the old node where the crash left it
    assert parked.exists() and not final.exists()
    assert store.restore_replaced(final)
    assert _value(final) == 1.0 and not parked.exists()


def test_an_error_in_the_second_rename_puts_the_old_node_back(final, tmp_path, monkeypatch):
    monkeypatch.setenv("RPPG_PREP_RENAME_EXCHANGE", "0")
    _write(final, 1.0)
    real, calls = os.rename, []

    def flaky(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError(5, "injected I/O error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", flaky)
    with pytest.raises(OSError, match="injected"):
        _write(final, 2.0, replace=True)
    monkeypatch.setattr(os, "rename", real)
    assert node_exists(final) and _value(final) == 1.0, "the old node is back in place at once"
    cache = tmp_path / "cache"
    _reference(cache, final)
    gc(cache)
    assert node_exists(final) and _value(final) == 1.0
    assert len(calls) == 3 and not (cache / ".replaced").exists()


# --------------------------------------------------------------------------- through the CLI, on the sample

@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("commit_root")
    write_ubfc_sample(out, n_subjects=1, duration_s=11.0, seed=13)
    return out


def _build(root, cache, *extra, env=None):
    cmd = [sys.executable, "-m", "rppg_prep.cli", "build", "ubfc", "--root", str(root), "--cache", str(cache), *extra]
    return subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), **(env or {})),
                          capture_output=True, text=True)


def _status(root, cache):
    return CliRunner().invoke(main, ["status", "ubfc", "--root", str(root), "--cache", str(cache)])


def _labels_path(cache) -> Path:
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    return cache / man["subjects"]["subject1"]["nodes"]["labels"]["path"]


def test_a_truncated_node_is_rebuilt_and_status_says_fresh(root, tmp_path):
    cache = tmp_path / "cache"
    assert _build(root, cache).returncode == 0
    labels = _labels_path(cache)
    bvp = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject1"]["labels"]["bvp"][:]
    meta = labels / "zarr.json"
    meta.write_bytes(meta.read_bytes()[:100])
    assert _status(root, cache).exit_code == 1
    res = _build(root, cache)
    assert res.returncode == 0, res.stderr
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    assert man["subjects"]["subject1"]["ran"] == ["labels"]
    assert node_exists(labels)
    status = _status(root, cache)
    assert status.exit_code == 0 and "missing" not in status.output, status.output
    np.testing.assert_array_equal(rppg_prep.open_build(cache, "ubfc", "ubfc")["subject1"]["labels"]["bvp"][:], bvp)
    assert json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject1"]["ran"] == ["labels"]
    assert _build(root, cache).returncode == 0
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    assert man["subjects"]["subject1"]["ran"] == []


def test_a_force_build_killed_between_the_renames_keeps_the_old_node(root, tmp_path):
    cache = tmp_path / "cache"
    assert _build(root, cache).returncode == 0
    labels = _labels_path(cache)
    bvp = open_node(labels)["bvp"][:]
    res = _build(root, cache, "--force", "labels",
                 env={"RPPG_PREP_FAULT": "crash-replace:labels:subject1", "RPPG_PREP_RENAME_EXCHANGE": "0"})
    assert res.returncode == -9, res.stderr
    assert not labels.exists()
    status = _status(root, cache)  # the plan finishes the interrupted replace
    assert status.exit_code == 0, status.output
    np.testing.assert_array_equal(open_node(labels)["bvp"][:], bvp)
    assert _build(root, cache, "--force", "labels").returncode == 0
    assert node_exists(labels) and not (cache / ".replaced").exists()
