"""Issue 22 item 1: a build prints no MediaPipe / TFLite / absl / glog line unless -v."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOISE = re.compile(r"XNNPACK delegate|absl::InitializeLog|inference_feedback_manager|^[IWEF]\d{4} \d+:\d+:\d+\.\d+ ",
                   re.M)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # -c with cwd=REPO_ROOT imports this checkout's rppg_prep (a clone too), not the installed one
    code = f"import sys; sys.path.insert(0, {str(REPO_ROOT)!r}); from rppg_prep.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("q22") / "root"
    res = _cli("sample", "ubfc", "--out", str(root), "--subjects", "2", "--duration-s", "3", cwd=root.parent)
    assert res.returncode == 0, res.stderr
    return root


def test_build_prints_no_native_log_lines(small_root, tmp_path):
    res = _cli("build", "ubfc", "--root", str(small_root), "--cache", str(tmp_path / "c"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "build summary" in res.stderr
    noise = NOISE.findall(res.stderr)
    assert not noise, f"native log lines reached stderr: {noise}"


def test_verbose_build_passes_native_log_lines_through(small_root, tmp_path):
    res = _cli("-v", "build", "ubfc", "--root", str(small_root), "--cache", str(tmp_path / "c"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "inference_feedback_manager" in res.stderr


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size if p.is_file() else 0)
            for p in folder.rglob("*")}


@pytest.mark.parametrize("command", [["status", "ubfc"], ["inspect", "ubfc"], ["verify", "ubfc"]])
def test_read_only_commands_write_nothing_in_an_empty_folder(tmp_path, command):
    before = _snapshot(tmp_path)
    res = _cli(*command, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert _snapshot(tmp_path) == before, f"{command} wrote {set(_snapshot(tmp_path)) - set(before)}"
    assert "sample" not in res.stderr.split("Error")[0], res.stderr  # did not generate the sample


def test_status_of_a_build_writes_nothing(small_root, tmp_path):
    cache = tmp_path / "c"
    assert _cli("build", "ubfc", "--root", str(small_root), "--cache", str(cache), cwd=tmp_path).returncode == 0
    before = _snapshot(tmp_path)
    res = _cli("status", "ubfc", "--root", str(small_root), "--cache", str(cache), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert _snapshot(tmp_path) == before


def test_a_note_shared_by_subjects_is_said_once(small_root, tmp_path):
    res = _cli("build", "ubfc", "--root", str(small_root), "--cache", str(tmp_path / "c"), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("logged capture clock") == 1, res.stderr
    assert "note (subject1, subject2): labels use the logged capture clock" in res.stderr


@pytest.mark.parametrize("command", [["evaluate", "ubfc", "--dry-run"], ["status", "synthetic"],
                                     ["build", "ubfc", "--dry-run"]])
def test_dry_runs_write_nothing_in_an_empty_folder(tmp_path, command):
    before = _snapshot(tmp_path)
    res = _cli(*command, cwd=tmp_path)
    assert res.returncode == 1, res.stderr
    assert _snapshot(tmp_path) == before, f"{command} wrote {set(_snapshot(tmp_path)) - set(before)}"
    assert "no generated" in res.stderr, res.stderr


def _read_only(folder: Path, writable: bool = False) -> None:
    for p in [folder, *folder.rglob("*")]:
        if p.is_dir() or p.is_file():
            mode = p.stat().st_mode
            p.chmod(mode | 0o200 if writable else mode & ~0o222)


def test_read_only_commands_write_nothing_in_a_read_only_build(small_root, tmp_path):
    """status, inspect, verify and evaluate --dry-run on a read-only build whose fingerprint memo is stale
    (the video was touched) and whose one node a crashed replace left parked: they read, never write."""
    from rppg_prep.store import _backup_path, node_attrs

    cache = tmp_path / "c"
    assert _cli("build", "ubfc", "--root", str(small_root), "--cache", str(cache), cwd=tmp_path).returncode == 0
    video = next(small_root.rglob("vid.avi"))
    os_time = video.stat().st_mtime_ns + 10**9
    import os

    os.utime(video, ns=(os_time, os_time))  # same bytes, new mtime: the memo must be recomputed
    face = next(cache.glob("ubfc.zarr/subject1/face-*"))
    parked = _backup_path(face, node_attrs(face)["key"])
    parked.parent.mkdir(parents=True)
    face.rename(parked)  # what a crash between NodeWriter.commit's two renames leaves
    _read_only(cache)
    try:
        before = _snapshot(tmp_path)
        common = ("--root", str(small_root), "--cache", str(cache))
        for command in (["status", "ubfc", *common], ["inspect", "ubfc", "--cache", str(cache)],
                        ["verify", "ubfc", "--cache", str(cache)], ["evaluate", "ubfc", "--dry-run", *common]):
            res = _cli(*command, cwd=tmp_path)
            assert res.returncode == 0, (command, res.stderr)
            assert _snapshot(tmp_path) == before, f"{command[0]} wrote in a read-only build"
        assert "would score POS" in res.stderr
        assert not face.exists() and parked.exists()
    finally:
        _read_only(cache, writable=True)
