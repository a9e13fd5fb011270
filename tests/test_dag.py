"""The build DAG: change detection, crashes, concurrent builds, dask.distributed, status and gc."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml
from click.testing import CliRunner

from conftest import REPO_ROOT, array_hashes
from rppg_prep.pipeline import load_pipeline
from rppg_prep.cli import main
from rppg_prep.dag import run_build
from rppg_prep.maintenance import subject_status
from rppg_prep.datasets import ubfc
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import node_exists

ALL = ["decode", "landmarks", "face", "clips", "st_map", "labels"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("dag_root")
    write_ubfc_sample(out, n_subjects=3, duration_s=11.0, seed=21)
    return out


@pytest.fixture(scope="module")
def clean(root, tmp_path_factory):
    """A clean single-process build of ``root``: (cache, manifest, array hashes)."""
    cache = tmp_path_factory.mktemp("dag_clean")
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    return cache, man, array_hashes(cache)


def _cli(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "rppg_prep.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _ran(cache):
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    return {sid: rec["ran"] for sid, rec in man["subjects"].items()}


def test_same_inputs_give_bitwise_identical_arrays(root, clean, tmp_path):
    cache = tmp_path / "again"
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0
    assert array_hashes(cache) == clean[2]
    pipe = load_pipeline("ubfc")
    for subj in ubfc.find_subjects(root):
        assert {s: v[0] for s, v in subject_status(pipe, subj, cache).items()} == dict.fromkeys(ALL, "fresh")


def test_new_video_content_reruns_only_that_subject(root, clean, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(clean[0], cache)
    src = root / "subject2" / "vid.avi"
    backup = src.read_bytes()
    try:
        src.write_bytes(backup + b"\0" * 64)  # new bytes, same frames: the content key must change
        res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
        assert res.exit_code == 0, res.output
        assert _ran(cache) == {"subject1": [], "subject2": ALL, "subject3": []}
    finally:
        src.write_bytes(backup)


def test_kill_9_mid_build_then_rebuild_equals_a_clean_build(root, clean, tmp_path):
    cache = tmp_path / "killed"
    proc = _cli("build", "ubfc", "--root", str(root), "--cache", str(cache))
    deadline = time.time() + 120
    # kill while a node is half-written: one subject's face committed, another node in .partial
    while time.time() < deadline and not (list(cache.glob("ubfc.zarr/*/face-*"))
                                          and (cache / ".partial").exists() and any((cache / ".partial").iterdir())):
        time.sleep(0.02)
    assert proc.poll() is None, "the build ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((cache / ".partial").iterdir()), "kill -9 should have left partial nodes behind"
    for node in cache.glob("ubfc.zarr/*/*-*"):
        assert node_exists(node)  # whatever is in place is complete
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    assert array_hashes(cache) == clean[2]
    res = CliRunner().invoke(main, ["gc", "--cache", str(cache)])
    assert res.exit_code == 0 and not list((cache / ".partial").iterdir())


def test_two_builds_at_once_both_finish_and_agree(root, clean, tmp_path):
    cache = tmp_path / "twice"
    a = _cli("build", "ubfc", "--root", str(root), "--cache", str(cache))
    b = _cli("build", "ubfc", "--root", str(root), "--cache", str(cache))
    assert a.wait(timeout=300) == 0, a.stderr.read()[-2000:]
    assert b.wait(timeout=300) == 0, b.stderr.read()[-2000:]
    assert array_hashes(cache) == clean[2]
    for node in cache.glob("ubfc.zarr/*/*-*"):
        assert node_exists(node)


def test_local_cluster_gives_identical_keys_and_arrays(root, clean, tmp_path):
    cache = tmp_path / "cluster"
    pipe = load_pipeline("ubfc")
    results = run_build(pipe, ubfc.find_subjects(root), cache, root=root, scheduler="local-cluster", workers=2)
    assert [r.status for r in results] == ["ok"] * 3
    assert {r.subject: r.nodes for r in results} == {s: rec["nodes"] for s, rec in clean[1]["subjects"].items()}
    assert array_hashes(cache) == clean[2]


def test_failure_is_recorded_and_shown_by_status(root, tmp_path):
    bad_root = tmp_path / "root"
    shutil.copytree(root, bad_root)
    gt = bad_root / "subject3" / "ground_truth.txt"
    gt.write_text(gt.read_text().replace("e", "x", 5))
    cache = tmp_path / "cache"
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(bad_root), "--cache", str(cache)])
    assert res.exit_code == 1
    rec = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject3"]
    assert rec["failed_stage"] == "labels" and rec["input_file"] == str(gt)
    assert "not numeric" in rec["error"] and any("ubfc.py" in ln for ln in rec["traceback"])
    st = CliRunner().invoke(main, ["status", "ubfc", "--root", str(bad_root), "--cache", str(cache)])
    assert st.exit_code == 1
    assert "failed" in st.output and "not numeric" in st.output


def test_gc_removes_what_no_manifest_references(root, clean, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(clean[0], cache)
    p = tmp_path / "ubfc.yaml"
    p.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": {"labels": {"window_s": 6.0}}}))
    res = CliRunner().invoke(main, ["build", str(p), "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0 and all(r == ["labels"] for r in _ran(cache).values())
    assert len(list(cache.glob("ubfc.zarr/*/labels-*"))) == 6
    old = [cache / rec["nodes"]["labels"]["path"] for rec in clean[1]["subjects"].values()]
    old_bytes = sum(f.stat().st_size for d in old for f in d.rglob("*") if f.is_file())
    res = CliRunner().invoke(main, ["gc", "--cache", str(cache)])
    assert res.exit_code == 0 and "0 node(s)" in res.output  # superseded, still listed: kept until told
    res = CliRunner().invoke(main, ["gc", "--cache", str(cache), "--all-stale"])
    assert res.exit_code == 0 and f"3 node(s), {old_bytes} bytes" in res.output
    assert not any(d.exists() for d in old)
    assert len(list(cache.glob("ubfc.zarr/*/labels-*"))) == 3
    assert len(list(cache.glob("ubfc.zarr/*/face-*"))) == 3  # still referenced


def test_dry_run_prints_the_plan_and_builds_nothing(root, tmp_path):
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(tmp_path), "--dry-run"])
    assert res.exit_code == 0 and "missing" in res.output
    assert not list(tmp_path.glob("ubfc.zarr/*/*-*"))


def test_two_pipelines_share_the_nodes_of_a_shared_stage_configuration(root, clean, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(clean[0], cache)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"name": "other", "dataset": "ubfc", "stages": {"clips": {"stride_frames": 80}}}))
    res = CliRunner().invoke(main, ["build", str(other), "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    man = json.loads((cache / "ubfc.builds" / "other.json").read_text())["subjects"]
    for sid, rec in man.items():
        assert rec["ran"] == ["clips", "labels"]  # labels reads the clip windows
        for stage in ("decode", "landmarks", "face", "st_map"):
            assert rec["nodes"][stage] == clean[1]["subjects"][sid]["nodes"][stage]


def test_a_worker_killed_mid_task_is_a_recorded_failure(root, clean, tmp_path, monkeypatch):
    import dask

    cache = tmp_path / "cache"
    shutil.copytree(clean[0], cache)
    for node in cache.glob("ubfc.zarr/subject2/clips-*"):
        shutil.rmtree(node)  # so that subject2 has a clips task to die in
    monkeypatch.setenv("RPPG_PREP_FAULT", "kill:clips:subject2")
    pipe = load_pipeline("ubfc")
    # one retry: the injected kill repeats and fails the task; a worker lost to load alone is retried
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        results = run_build(pipe, ubfc.find_subjects(root), cache, root=root, scheduler="local-cluster", workers=2)
    by_id = {r.subject: r for r in results}
    assert by_id["subject1"].status == "ok" and by_id["subject3"].status == "ok", [r.error for r in results]
    bad = by_id["subject2"]
    assert bad.status == "failed" and bad.failed_stage == "clips" and "worker process died" in bad.error
    rec = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject2"]
    assert rec["status"] == "failed" and "worker process died" in rec["error"]


def test_local_lanes_follow_the_installed_dask():
    """The lanes read one private convention of dask.local (dag.batch_keys): on the installed dask,
    video tasks run on the video lane and the rest on the stage lane; a foreign batch fails loudly."""
    import threading

    import dask.threaded

    from rppg_prep.dag import _LaneExecutor, batch_keys

    def where():
        return threading.current_thread().name

    dsk = {f"video-s{i}": (where,) for i in range(3)}
    dsk.update({f"face-s{i}": (lambda _: where(), f"video-s{i}") for i in range(3)})
    pool = _LaneExecutor(1, 2, {k for k in dsk if k.startswith("video-")}, set(dsk))
    try:
        ran = dict(zip(dsk, dask.threaded.get(dsk, list(dsk), pool=pool, chunksize=1)))
    finally:
        pool.shutdown()
    assert all(ran[k].startswith("video" if k.startswith("video-") else "stage") for k in dsk), ran
    with pytest.raises(RuntimeError, match="batch_keys"):
        batch_keys(({"video-s0": 1},), set(dsk))
