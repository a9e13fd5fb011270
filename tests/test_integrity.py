"""Integrity: chunk checksums, `verify --repair`, a full disk, a truncated manifest, stale locks."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import REPO_ROOT, array_hashes
from rppg_prep.cli import main
from rppg_prep.errors import StoreError
from rppg_prep.integrity import chunk_paths, check_node
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import node_exists


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity_root")
    write_ubfc_sample(out, n_subjects=3, duration_s=8.0, seed=31)
    return out


@pytest.fixture(scope="module")
def clean(root, tmp_path_factory):
    cache = tmp_path_factory.mktemp("integrity_clean")
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    return cache, array_hashes(cache)


@pytest.fixture()
def cache(clean, tmp_path):
    out = tmp_path / "cache"
    shutil.copytree(clean[0], out)
    return out


def _node(cache, subject, stage):
    return next((cache / "ubfc.zarr" / subject).glob(f"{stage}-*"))


def _chunk(node, array, index=0):
    return chunk_paths(node / array)[index][1]


def _build(root, cache, *extra):
    return CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache), *extra])


def test_every_array_carries_checksums_and_a_clean_build_verifies(clean):
    cache, _ = clean
    nodes = list(cache.glob("ubfc.zarr/*/*-*"))
    assert len(nodes) == 18
    for node in nodes:
        for meta in node.glob("*/zarr.json"):
            assert any(c["name"] == "crc32c" for c in json.loads(meta.read_text())["codecs"]), meta
        assert check_node(node) == []
    res = CliRunner().invoke(main, ["verify", "--cache", str(cache)])
    assert res.exit_code == 0 and "18 node(s)" in res.output, res.output


def test_verify_names_each_damaged_chunk_and_repair_restores_the_clean_build(root, clean, cache):
    flipped = _chunk(_node(cache, "subject2", "face"), "frames", 1)
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = _chunk(_node(cache, "subject1", "labels"), "bvp")
    truncated.write_bytes(truncated.read_bytes()[:-7])
    deleted = _chunk(_node(cache, "subject3", "clips"), "clips", 1)
    deleted.unlink()
    untouched = {p: p.stat().st_mtime_ns for p in cache.glob("ubfc.zarr/*/*-*")
                 if p.name.split("-")[0] not in ("face", "labels", "clips")}

    res = CliRunner().invoke(main, ["verify", "--cache", str(cache)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert any("subject2, stage face, array frames chunk 1.0.0.0: checksum" in ln for ln in lines), res.output
    assert any("subject1, stage labels, array bvp chunk 0: checksum" in ln for ln in lines), res.output
    assert any("subject3, stage clips, array clips chunk 1.0.0.0.0: missing" in ln for ln in lines), res.output
    assert "3 problem(s) in 3 of 18 node(s)" in res.output

    res = CliRunner().invoke(main, ["verify", "--cache", str(cache), "--repair"])
    assert res.exit_code == 0, res.output
    assert "rebuilt subject2: face" in res.output and "rebuilt subject3: clips" in res.output
    assert "rebuilt subject1: labels" in res.output and "repaired: 18 node(s) verified" in res.output
    assert array_hashes(cache) == clean[1]
    assert {p: p.stat().st_mtime_ns for p in untouched} == untouched, "only the damaged nodes are rebuilt"


def test_the_dataset_refuses_a_damaged_chunk(cache):
    from rppg_models.data import ClipDataset

    node = _node(cache, "subject1", "clips")
    chunk = _chunk(node, "clips", 0)
    data = bytearray(chunk.read_bytes())
    data[40] ^= 0x80
    chunk.write_bytes(bytes(data))
    ds = ClipDataset(cache, "ubfc", "ubfc", subjects=["subject1"])
    with pytest.raises(StoreError, match="clips chunk 0 of subject subject1.*verify --repair") as info:
        ds[0]
    assert str(node) in str(info.value)
    assert ds[1][0].shape[1] == 160, "undamaged clips still read"


def test_a_full_disk_fails_the_node_by_name_and_keeps_everything_else(root, clean, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RPPG_PREP_FAULT", "enospc:clips:subject2")  # the disk fills as subject2's clips are written
    res = _build(root, cache)
    assert res.exit_code == 1
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]
    bad = man["subject2"]
    assert bad["status"] == "failed" and bad["failed_stage"] == "clips"
    assert "No space left on device" in bad["error"] and "node clips-" in bad["error"], bad["error"]
    assert man["subject1"]["status"] == "ok" and man["subject3"]["status"] == "ok"
    assert not list((cache / "ubfc.zarr" / "subject2").glob("clips-*")), "no half-written clips node in place"
    assert list((cache / "ubfc.zarr" / "subject2").glob("face-*")), "the nodes built before it are kept"
    for node in cache.glob("ubfc.zarr/*/*-*"):
        assert node_exists(node) and check_node(node) == []
    assert not [p for p in (cache / ".partial").iterdir()], "the aborted node's partial folder is removed"
    monkeypatch.delenv("RPPG_PREP_FAULT")
    res = _build(root, cache)
    assert res.exit_code == 0, res.output
    assert json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject2"]["ran"] == \
        ["clips", "labels"]
    assert array_hashes(cache) == clean[1]


def test_a_manifest_truncated_to_zero_bytes_is_a_clear_error_and_a_build_recovers_it(root, clean, cache):
    manifest = cache / "ubfc.builds" / "ubfc.json"
    manifest.write_bytes(b"")
    for args in (["verify"], ["inspect", "ubfc"]):
        res = CliRunner().invoke(main, [*args, "--cache", str(cache)])
        assert res.exit_code == 1 and "not valid JSON" in res.output and str(manifest) in res.output, res.output
    res = _build(root, cache)
    assert res.exit_code == 0 and res.output.count("all fresh") == 3, res.output
    assert json.loads(manifest.read_text())["subjects"].keys() == {"subject1", "subject2", "subject3"}
    assert array_hashes(cache) == clean[1]


def test_stale_locks_left_by_a_killed_process_do_not_block_a_build(root, clean, cache):
    """Locks are OS file locks (flock): a killed holder releases them, and a leftover lock file is only a file."""
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    keys = [n["key"] for rec in man["subjects"].values() for n in rec["nodes"].values()]
    for key in keys:  # lock files left behind, nobody holding them
        (cache / ".locks" / f"{key}.lock").touch()
    for node in cache.glob("ubfc.zarr/subject1/labels-*"):
        shutil.rmtree(node)  # so the build has a node to lock and write
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from filelock import FileLock
        locks = [FileLock({str(cache / "ubfc.builds" / "ubfc.json.lock")!r})]
        locks += [FileLock({str(cache / ".locks")!r} + "/" + k + ".lock") for k in {keys!r}]
        for lock in locks:
            lock.acquire()
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
        env = dict(os.environ, PYTHONWARNINGS="ignore")
        done = subprocess.run([sys.executable, "-m", "rppg_prep.cli", "build", "ubfc", "--root", str(root),
                               "--cache", str(cache)], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120)
    finally:
        holder.kill()
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject1"]["ran"] == ["labels"]
    assert array_hashes(cache) == clean[1]


def test_a_flipped_byte_in_a_real_build_is_found_and_refused(real_build):
    """On the real subjects: one chunk of every stage of one subject, flipped, found, then put back."""
    from rppg_models.data import ClipDataset

    _, cache, result = real_build
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    for stage in ("decode", "landmarks", "face", "clips", "st_map", "labels"):
        node = _node(cache, "subject3", stage)
        arrays = sorted(p.parent.name for p in node.glob("*/zarr.json"))
        array = arrays[rng.integers(len(arrays))]
        chunks = chunk_paths(node / array)
        idx, path = chunks[rng.integers(len(chunks))]
        original = path.read_bytes()
        damaged = bytearray(original)
        damaged[rng.integers(len(damaged))] ^= 1 << int(rng.integers(8))
        try:
            path.write_bytes(bytes(damaged))
            found = check_node(node)
            assert [(p.array, p.chunk, p.problem) for p in found] == [(array, idx, "checksum")], (stage, found)
            if stage == "clips" and array == "clips":
                with pytest.raises(StoreError, match="verify --repair"):
                    ClipDataset(cache, "ubfc", "ubfc", subjects=["subject3"])[idx[0]]
        finally:
            path.write_bytes(original)
        assert check_node(node) == []
    clips = _node(cache, "subject3", "clips")
    path = _chunk(clips, "clips", 2)
    original = path.read_bytes()
    try:
        path.write_bytes(original[:100] + bytes([original[100] ^ 0x10]) + original[101:])
        with pytest.raises(StoreError, match="clips chunk 2 of subject subject3"):
            ClipDataset(cache, "ubfc", "ubfc", subjects=["subject3"])[2]
    finally:
        path.write_bytes(original)


def test_a_ground_truth_edited_during_the_build_is_reported_and_rebuilt_next_time(root, clean, tmp_path, monkeypatch):
    """The edit lands after the subject was keyed and before its labels are made: no label mixes versions."""
    from rppg_prep.datasets import ubfc

    work = tmp_path / "root"
    shutil.copytree(root / "subject1", work / "subject1")
    truth = work / "subject1" / "ground_truth.txt"
    cache = tmp_path / "cache"
    read_truth = ubfc.read_truth

    def edit_then_read(subject):
        lines = truth.read_text().splitlines()
        ppg = [float(v) for v in lines[0].split()]
        lines[0] = " ".join(f"{-v:.6e}" for v in ppg)  # the PPG inverted: another signal, same length
        truth.write_text("\n".join(lines) + "\n")
        monkeypatch.setattr(ubfc, "read_truth", read_truth)  # one edit only
        return read_truth(subject)

    monkeypatch.setattr(ubfc, "read_truth", edit_then_read)
    res = _build(work, cache)
    assert res.exit_code == 1
    rec = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject1"]
    assert rec["failed_stage"] == "labels" and "changed while the build ran" in rec["error"], rec["error"]
    assert "ground_truth.txt" in rec["error"]
    assert not list((cache / "ubfc.zarr" / "subject1").glob("labels-*"))
    res = _build(work, cache)
    assert res.exit_code == 0, res.output
    rec = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]["subject1"]
    assert rec["ran"] == ["labels"]
    import rppg_prep

    new = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject1"]["labels"]["bvp"][:]
    old = rppg_prep.open_build(clean[0], "ubfc", "ubfc")["subject1"]["labels"]["bvp"][:]
    assert np.corrcoef(new, old)[0, 1] < -0.99, "the labels are the edited file's, whole"


def test_thread_settings_leave_a_library_that_is_still_being_imported_alone(monkeypatch):
    """Found by benchmarks/faults.py: a task set zarr's threads while another task's thread was importing zarr."""
    import types

    from rppg_prep.build import environment_threads

    monkeypatch.setitem(sys.modules, "zarr", types.ModuleType("zarr"))  # half-initialised: no .config yet
    monkeypatch.setitem(sys.modules, "cv2", types.ModuleType("cv2"))
    environment_threads()
    assert os.environ["ZARR_THREADING__MAX_WORKERS"] == "1" and os.environ["OPENCV_FOR_THREADS_NUM"] == "1"


@pytest.mark.parametrize("encoding", [{"name": "default", "separator": "/"}, {"name": "default", "separator": "."},
                                      {"name": "v2", "separator": "."}])
@pytest.mark.parametrize("shape,chunks", [((5, 3), (2, 2)), ((), ()), ((0, 3), (2, 3))])
def test_chunk_paths_are_the_files_zarr_writes(tmp_path, encoding, shape, chunks):
    """chunk_paths reads the grid and keys through zarr: any encoding zarr writes is followed, and a
    zarr release that changed them would fail here rather than make verify miss chunks."""
    import zarr

    arr = zarr.create_array(str(tmp_path / "a"), shape=shape, chunks=chunks if shape else "auto", dtype="f4",
                            chunk_key_encoding=encoding, config={"write_empty_chunks": True})
    arr[...] = 1.0
    written = {p for p in (tmp_path / "a").rglob("*") if p.is_file() and p.name != "zarr.json"}
    listed = chunk_paths(tmp_path / "a")
    assert {p for _, p in listed} == written
    assert len(listed) == math.prod(-(-s // c) for s, c in zip(shape, chunks))
