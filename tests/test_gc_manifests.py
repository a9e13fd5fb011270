"""The cache's maintenance: gc against running builds, manifests gc cannot read, manifests that keep
earlier subjects and superseded nodes, and node paths a manifest may not point elsewhere (issue 21)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO_ROOT
from rppg_prep.cli import main
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import node_exists

ALL = ["decode", "landmarks", "face", "clips", "st_map", "labels"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("gc_root")
    write_ubfc_sample(out, n_subjects=3, duration_s=8.0, seed=41)
    return out


@pytest.fixture(scope="module")
def clean(root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("gc_clean")
    res = _build(root, cache)
    assert res.exit_code == 0, res.output
    return cache


@pytest.fixture()
def cache(clean, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(clean, out)
    return out


def _build(root, cache, *extra, pipeline="ubfc"):
    return CliRunner().invoke(main, ["build", pipeline, "--root", str(root), "--cache", str(cache), *extra])


def _gc(cache, *extra):
    return CliRunner().invoke(main, ["gc", "--cache", str(cache), *extra])


def _nodes(cache):
    return sorted(p.relative_to(cache).as_posix() for p in cache.glob("ubfc.zarr/*/*-*"))


def _manifest(cache):
    return cache / "ubfc.builds" / "ubfc.json"


def _clean_exit(res, code=1):
    """A CLI error: the exit code and a message, never a traceback."""
    assert res.exit_code == code, res.output
    assert isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output


# --------------------------------------------------------------------------- 1. gc against a running build

def test_gc_during_a_build_removes_nothing_and_the_build_verifies(root, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONWARNINGS="ignore")
    proc = subprocess.Popen([sys.executable, "-m", "rppg_prep.cli", "build", "ubfc", "--root", str(root),
                             "--cache", str(cache)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    # wait for committed nodes that no manifest lists yet (their subject has not finished)
    while time.time() < deadline and not any(node_exists(p) for p in cache.glob("ubfc.zarr/*/face-*")):
        time.sleep(0.02)
    assert proc.poll() is None, "the build ended before gc could run during it"
    committed = _nodes(cache)
    res = _gc(cache)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    _clean_exit(res)
    assert "build(s) are using this cache" in res.output and "removed nothing" in res.output
    assert set(committed) <= set(_nodes(cache))
    ver = CliRunner().invoke(main, ["verify", "--cache", str(cache)])
    assert ver.exit_code == 0 and "18 node(s)" in ver.output, ver.output


def test_gc_refuses_while_a_build_holds_the_cache_and_a_build_waits_for_gc(cache):
    from rppg_prep.store import build_lock, gc_lock

    _manifest(cache).unlink()  # the nodes of a build that has not recorded them yet
    before = _nodes(cache)
    with build_lock(cache):
        res = _gc(cache)
    _clean_exit(res)
    assert f"process {os.getpid()}" in res.output and _nodes(cache) == before
    started = threading.Event()

    def a_build():
        with build_lock(cache):
            started.set()

    with gc_lock(cache):
        t = threading.Thread(target=a_build)
        t.start()
        assert not started.wait(0.5), "a build started while gc held the cache"
    assert started.wait(10)
    t.join()
    assert not list((cache / ".locks" / "builds").iterdir())  # a finished build leaves no lock file


def test_a_killed_build_leaves_a_lock_file_that_does_not_block_gc(cache):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from rppg_prep.store import build_lock
        with build_lock({str(cache)!r}):
            print("held", flush=True)
            time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    try:
        assert holder.stdout.readline().strip() == "held"
        _clean_exit(_gc(cache, "--dry-run"))
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        holder.kill()
    assert list((cache / ".locks" / "builds").glob("*.lock")), "kill -9 should leave its lock file"
    res = _gc(cache)
    assert res.exit_code == 0 and "0 node(s)" in res.output, res.output
    assert not list((cache / ".locks" / "builds").glob("*.lock"))


# --------------------------------------------------------------------------- 3. manifests gc cannot read

@pytest.mark.parametrize("content", [b"", b'{"subjects": {"subject1": {"nodes": {"face": {"key"', b"[]",
                                     b'{"subjects": []}'], ids=["empty", "truncated", "list", "bad-subjects"])
@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "gc"])
def test_gc_stops_on_a_manifest_it_cannot_read(cache, content, dry_run):
    before = _nodes(cache)
    _manifest(cache).write_bytes(content)
    res = _gc(cache, *(["--dry-run"] if dry_run else []))
    _clean_exit(res)
    assert str(_manifest(cache)) in res.output and "would remove" not in res.output
    assert _nodes(cache) == before


def test_gc_reads_a_manifest_in_a_nested_folder(cache):
    nested = cache / "ubfc.builds" / "ablation" / "stride2.json"
    nested.parent.mkdir()
    _manifest(cache).rename(nested)  # as a pipeline named ablation/stride2 wrote it
    before = _nodes(cache)
    res = _gc(cache)
    assert res.exit_code == 0 and "0 node(s)" in res.output, res.output
    assert _nodes(cache) == before
    man = json.loads(nested.read_text())
    man["subjects"]["subject1"]["nodes"]["labels"]["path"] = "elsewhere"
    nested.write_text(json.dumps(man))
    _clean_exit(_gc(cache))  # and it is validated like any other
    assert _nodes(cache) == before


# --------------------------------------------------------------------------- 5. earlier subjects and superseded nodes

def test_a_build_with_another_root_keeps_the_earlier_subjects(root, cache, tmp_path):
    other = tmp_path / "other_root"
    shutil.copytree(root / "subject1", other / "subject1")
    res = _build(other, cache)
    assert res.exit_code == 0, res.output
    man = json.loads(_manifest(cache).read_text())
    assert man["subjects"].keys() == {"subject1", "subject2", "subject3"}
    assert man["subjects"]["subject1"]["root"] == str(other.resolve())
    assert man["subjects"]["subject2"]["root"] == str(root.resolve())
    before = _nodes(cache)
    res = _gc(cache)
    assert res.exit_code == 0 and "0 node(s)" in res.output, res.output
    assert _nodes(cache) == before
    ver = CliRunner().invoke(main, ["verify", "--cache", str(cache)])
    assert ver.exit_code == 0 and "18 node(s)" in ver.output, ver.output
    import rppg_prep

    assert list(rppg_prep.open_build(cache, "ubfc", "ubfc")) == ["subject1", "subject2", "subject3"]


def test_one_subject_rebuilt_with_a_new_config_keeps_the_others_and_its_old_node_until_told(root, cache, tmp_path):
    old = json.loads(_manifest(cache).read_text())["subjects"]
    cfg = tmp_path / "ubfc.yaml"
    cfg.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": {"labels": {"window_s": 6.0}}}))
    res = _build(root, cache, "--subjects", "subject1", pipeline=str(cfg))
    assert res.exit_code == 0, res.output
    man = json.loads(_manifest(cache).read_text())
    assert man["subjects"].keys() == {"subject1", "subject2", "subject3"}
    assert man["subjects"]["subject2"] == old["subject2"]
    assert [(e["subject"], e["stage"]) for e in man["superseded"]] == [("subject1", "labels")]
    old_labels = cache / old["subject1"]["nodes"]["labels"]["path"]
    st = CliRunner().invoke(main, ["status", str(cfg), "--root", str(root), "--cache", str(cache)])
    assert st.exit_code == 1 and "stale" in st.output  # subject2 and 3: labels built with the old window
    before = _nodes(cache)
    for extra in ([], ["--older-than", "1"]):  # superseded just now: kept
        res = _gc(cache, *extra)
        assert res.exit_code == 0 and "0 node(s)" in res.output, res.output
    assert _nodes(cache) == before
    _clean_exit(_gc(cache, "--older-than", "1", "--all-stale"), code=2)
    res = _gc(cache, "--all-stale", "--dry-run")
    assert res.exit_code == 0 and f"would remove {old_labels}" in res.output and "1 node(s)" in res.output
    assert json.loads(_manifest(cache).read_text())["superseded"]  # a dry run changes no manifest
    res = _gc(cache, "--all-stale")
    assert res.exit_code == 0 and "1 node(s)" in res.output, res.output
    assert not old_labels.exists() and len(_nodes(cache)) == 18
    assert json.loads(_manifest(cache).read_text())["superseded"] == []


def test_gc_older_than_removes_nodes_superseded_long_ago(root, cache, tmp_path):
    cfg = tmp_path / "ubfc.yaml"
    cfg.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": {"labels": {"window_s": 6.0}}}))
    assert _build(root, cache, pipeline=str(cfg)).exit_code == 0
    man = json.loads(_manifest(cache).read_text())
    assert len(man["superseded"]) == 3
    man["superseded"][0]["since"] -= 3 * 86400  # superseded three days ago
    _manifest(cache).write_text(json.dumps(man))
    res = _gc(cache, "--older-than", "2")
    assert res.exit_code == 0 and "1 node(s)" in res.output, res.output
    assert not (cache / man["superseded"][0]["path"]).exists()
    assert len(json.loads(_manifest(cache).read_text())["superseded"]) == 2
    # reverting makes the superseded nodes current again: no longer superseded
    assert _build(root, cache).exit_code == 0
    man = json.loads(_manifest(cache).read_text())
    assert len(man["superseded"]) == 3  # the window-6 labels nodes now
    assert {e["key"] for e in man["superseded"]}.isdisjoint(
        n["key"] for rec in man["subjects"].values() for n in rec["nodes"].values())


# --------------------------------------------------------------------------- 7. node paths a manifest may hold

def _point(cache, subject, stage, path, key=None, **extra):
    man = json.loads(_manifest(cache).read_text())
    node = man["subjects"][subject]["nodes"].setdefault(stage, {})
    node.update({"key": key or node.get("key") or "ab" * 32, "path": path, **extra})
    _manifest(cache).write_text(json.dumps(man))


def _victim(tmp_path):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "thesis.txt").write_text("not a node")
    return victim


def test_verify_repair_never_touches_a_folder_outside_the_cache(cache, tmp_path):
    victim = _victim(tmp_path)
    _point(cache, "subject1", "split", str(victim), inputs={"labels": "cd" * 32})
    res = CliRunner().invoke(main, ["verify", "--repair", "--cache", str(cache)])
    assert (victim / "thesis.txt").read_text() == "not a node", res.output
    _clean_exit(res)
    assert "subject 'subject1', stage 'split'" in res.output and str(_manifest(cache)) in res.output


@pytest.mark.parametrize("how", ["absolute", "dotdot", "other-subject", "other-key"])
def test_every_reader_refuses_a_node_path_that_is_not_its_own(root, cache, tmp_path, how):
    import rppg_prep
    from rppg_models.data import ClipDataset
    from rppg_prep.errors import RppgPrepError

    victim = _victim(tmp_path)
    man = json.loads(_manifest(cache).read_text())["subjects"]
    path = {"absolute": str(victim), "dotdot": "../precious",
            "other-subject": man["subject2"]["nodes"]["labels"]["path"],
            "other-key": man["subject1"]["nodes"]["labels"]["path"]}[how]
    _point(cache, "subject1", "labels", path, key="ef" * 32 if how == "other-key" else None)
    before = _nodes(cache)
    with pytest.raises(RppgPrepError, match="subject 'subject1', stage 'labels'") as err:
        rppg_prep.open_build(cache, "ubfc", "ubfc")
    assert type(err.value).__name__ == "ManifestError" and str(_manifest(cache)) in str(err.value)
    with pytest.raises(RppgPrepError, match="subject 'subject1', stage 'labels'"):
        ClipDataset(cache, "ubfc", "ubfc")
    for args in (["gc"], ["gc", "--all-stale"], ["verify"], ["verify", "--repair"]):
        _clean_exit(CliRunner().invoke(main, [*args, "--cache", str(cache)]))
    status = CliRunner().invoke(main, ["status", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert status.exit_code == 1 and "stage 'labels'" in " ".join(status.output.split()), status.output
    assert _nodes(cache) == before and (victim / "thesis.txt").exists()


def test_a_build_replaces_an_entry_that_does_not_validate_and_keeps_the_rest(root, cache, tmp_path):
    victim = _victim(tmp_path)
    _point(cache, "subject1", "labels", str(victim))
    res = _build(root, cache, "--subjects", "subject1")
    assert res.exit_code == 0, res.output
    man = json.loads(_manifest(cache).read_text())
    assert man["subjects"].keys() == {"subject1", "subject2", "subject3"}
    assert CliRunner().invoke(main, ["verify", "--cache", str(cache)]).exit_code == 0
    assert (victim / "thesis.txt").exists()
