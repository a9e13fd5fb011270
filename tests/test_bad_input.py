"""Bad input: each broken subject fails with a message naming it and its file; the rest build;
nothing half-written looks complete."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from conftest import blank_face
from rppg_prep.cli import main
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.store import node_exists

FPS = 30.0


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One good 8-s synthetic subject to copy and break."""
    out = tmp_path_factory.mktemp("template")
    (s,) = write_ubfc_sample(out, n_subjects=1, duration_s=8.0, fps=FPS, seed=3)
    return s.video.parent


def _copy(template, root, name):
    dst = root / name
    shutil.copytree(template, dst)
    return dst


@pytest.fixture(scope="module")
def broken_build(template, tmp_path_factory):
    root = tmp_path_factory.mktemp("broken_root")
    cache = tmp_path_factory.mktemp("broken_cache")
    _copy(template, root, "subject1")  # good

    d = _copy(template, root, "subject2")  # unopenable: not a video at all
    (d / "vid.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())

    d = _copy(template, root, "subject3")  # truncated: the second half of the file is gone
    data = (d / "vid.avi").read_bytes()
    (d / "vid.avi").write_bytes(data[: len(data) // 2])

    d = _copy(template, root, "subject4")  # zero frames: a valid container with nothing in it
    (d / "vid.avi").unlink()
    w = cv2.VideoWriter(str(d / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (640, 480))
    w.release()

    d = _copy(template, root, "subject5")  # ground truth missing
    (d / "ground_truth.txt").unlink()

    d = _copy(template, root, "subject6")  # ground truth short: half the samples
    lines = (d / "ground_truth.txt").read_text().splitlines()
    (d / "ground_truth.txt").write_text("\n".join(" ".join(ln.split()[: len(ln.split()) // 2]) for ln in lines))

    d = _copy(template, root, "subject7")  # ground truth non-numeric
    lines = (d / "ground_truth.txt").read_text().splitlines()
    lines[1] = lines[1].replace(lines[1].split()[5], "n/a", 1)
    (d / "ground_truth.txt").write_text("\n".join(lines))

    d = _copy(template, root, "subject8")  # the face is gone for 3 s (frames 60-150)
    blank_face(template / "vid.avi", d / "vid.avi", 60, 150)

    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    return root, cache, res, man["subjects"]


@pytest.mark.parametrize("sid, stage, words", [
    ("subject2", "decode", ["cannot open"]),
    ("subject3", "decode", ["truncated"]),
    ("subject4", "decode", ["no decodable frames"]),
    ("subject5", "labels", ["missing", "ground_truth.txt"]),
    ("subject6", "labels", ["short"]),
    ("subject7", "labels", ["not numeric", "line 2"]),
])
def test_each_broken_subject_fails_with_a_message_naming_it(broken_build, sid, stage, words):
    root, _, res, subjects = broken_build
    rec = subjects[sid]
    assert rec["status"] == "failed" and rec["failed_stage"] == stage
    assert sid in rec["error"]
    fname = "ground_truth.txt" if stage == "labels" else "vid.avi"
    assert str(root / sid / fname) in rec["error"]
    for w in words:
        assert w in rec["error"], rec["error"]
    assert sid in res.output


def test_the_other_subjects_build_and_the_exit_code_says_some_failed(broken_build):
    _, cache, res, subjects = broken_build
    assert res.exit_code == 1
    assert subjects["subject1"]["status"] == "ok" and subjects["subject8"]["status"] == "ok"
    build = rppg_prep.open_build(cache, "ubfc", "ubfc")
    assert set(build) == {"subject1", "subject8"}
    assert build["subject1"]["labels"]["bvp"].shape == (240,)


def test_face_absent_for_seconds_is_flagged_not_fatal(broken_build):
    _, cache, _, subjects = broken_build
    notes = " ".join(subjects["subject8"]["notes"])
    assert "no face for" in notes and "vid.avi" in notes
    face = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject8"]["face"]
    valid = face["valid"][:]
    assert not valid[75:135].any()  # deep inside the 3-s gap
    assert valid[:50].all() and valid[165:].all()
    assert face["frames"].shape == (240, 128, 128, 3)


def test_nothing_half_written_looks_complete(broken_build):
    _, cache, _, subjects = broken_build
    assert not any((cache / ".partial").iterdir()) if (cache / ".partial").exists() else True
    for subject_dir in (cache / "ubfc.zarr").iterdir():
        if not subject_dir.is_dir():
            continue
        for node in subject_dir.iterdir():
            if node.is_dir():
                assert node_exists(node), f"incomplete node {node}"
    # failed video subjects have no face node; failed ground truth subjects keep their face node
    for sid in ("subject2", "subject3", "subject4"):
        assert not list((cache / "ubfc.zarr" / sid).glob("face-*")) if (cache / "ubfc.zarr" / sid).exists() else True
    assert list((cache / "ubfc.zarr" / "subject5").glob("face-*"))
    assert not list((cache / "ubfc.zarr" / "subject5").glob("labels-*"))
