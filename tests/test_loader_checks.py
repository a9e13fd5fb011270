"""The checks every loader's output meets: subject ids that are one folder of the store, unique ids,
a sane UBFC capture clock, finite and non-flat contact signals, and errors that name the right file.

Builds run on one synthetic 8-s UBFC-rPPG subject, copied and broken one way per test. Every copy
keeps the id ``subject1`` and the same video, so they share one cache and only the labels rerun.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.datasets import Truth, mahnob, ubfc
from rppg_prep.errors import ConfigError, DatasetLayoutError, GroundTruthError
from rppg_prep.integrity import chunk_paths
from rppg_prep.sample import write_ubfc_sample
from rppg_prep.stages.labels import LabelParams, make_labels
from rppg_prep.store import node_path

FPS = 30.0
EMPTY = np.zeros((0, 2), np.int64)
KEY = "0" * 64


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """One good 8-s synthetic subject folder to copy and break."""
    out = tmp_path_factory.mktemp("checks_template")
    (s,) = write_ubfc_sample(out, n_subjects=1, duration_s=8.0, fps=FPS, seed=3)
    return s.video.parent


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("checks_cache")


def _gt(folder: Path) -> list[np.ndarray]:
    lines = [ln for ln in (folder / "ground_truth.txt").read_text().splitlines() if ln.strip()]
    return [np.array(ln.split(), dtype=np.float64) for ln in lines[:3]]


def _write_gt(folder: Path, ppg, hr, t) -> None:
    (folder / "ground_truth.txt").write_text(
        "\n".join(" ".join(f"{v:.7e}" for v in row) for row in (ppg, hr, t)) + "\n")


def _to_dataset1(folder: Path, *, edit=None) -> Path:
    """Replace DATASET_2's ground_truth.txt with DATASET_1's gtdump.xmp (time ms, HR, SpO2, PPG at 62 Hz)."""
    ppg, hr, t = _gt(folder)
    t = t - t[0]
    t1 = np.arange(0.0, t[-1] + 0.3, 1 / 62.0)
    rows = np.column_stack([1000.0 * t1, np.interp(t1, t, hr), np.full(t1.size, 98.0), np.interp(t1, t, ppg)])
    if edit is not None:
        edit(rows)
    (folder / "ground_truth.txt").unlink()
    path = folder / "gtdump.xmp"
    path.write_text("\n".join(",".join("nan" if np.isnan(v) else f"{v:.6f}" for v in r) for r in rows) + "\n")
    return path


def _variant(template: Path, tmp_path: Path, edit=None) -> Path:
    """A copy of the template as ``<tmp>/root/subject1``, edited; returns the subject folder."""
    folder = tmp_path / "root" / "subject1"
    shutil.copytree(template, folder)
    if edit is not None:
        edit(folder)
    return folder


def _build(root: Path, cache: Path, *extra: str):
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache), *extra])
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())
    return res, man["subjects"]


# --------------------------------------------------------------------------- item 2: ids that leave the store

@pytest.mark.parametrize("bad", ["", ".", "..", " ", "a/b", "../up", "a\\b", "a\0b"])
def test_node_path_refuses_a_subject_id_that_is_not_one_plain_folder(tmp_path, bad):
    with pytest.raises(ConfigError, match="subject id"):
        node_path(tmp_path, "ubfc", bad, "labels", KEY)


@pytest.mark.parametrize("good", ["subject1", "subject 1", "sujet-é_2", "...x"])
def test_node_path_keeps_ids_with_spaces_and_letters_of_any_script(tmp_path, good):
    assert node_path(tmp_path, "ubfc", good, "labels", KEY).parent == tmp_path / "ubfc.zarr" / good


def test_a_root_given_as_dot_or_dotdot_takes_the_real_folder_name(template, tmp_path, monkeypatch):
    folder = _variant(template, tmp_path)
    monkeypatch.chdir(folder)
    (s,) = ubfc.find_subjects(".")
    assert s.id == "subject1" and s.video == folder / "vid.avi"
    (folder / "inner").mkdir()
    monkeypatch.chdir(folder / "inner")
    (s,) = ubfc.find_subjects("..")
    assert s.id == "subject1"


def test_build_with_root_dot_inside_the_subject_folder_stays_inside_the_store(template, tmp_path, monkeypatch):
    folder = _variant(template, tmp_path)
    cache = tmp_path / "space" / "cache"
    monkeypatch.chdir(folder)
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", ".", "--cache", str(cache)])
    assert res.exit_code == 0, res.output
    store = cache / "ubfc.zarr"
    assert sorted(p.name for p in store.iterdir() if p.is_dir()) == ["subject1"]
    assert len(list((store / "subject1").glob("*-*"))) == 6
    assert sorted(p.name for p in (tmp_path / "space").iterdir()) == ["cache"]  # nothing beside the cache
    assert set(rppg_prep.open_build(cache, "ubfc", "ubfc")) == {"subject1"}
    res = CliRunner().invoke(main, ["verify", "--cache", str(cache)])
    assert res.exit_code == 0 and "6 node(s)" in res.output, res.output


def test_two_mahnob_sessions_that_sanitise_alike_are_an_error_naming_both(tmp_path):
    for name in ("7 a", "7_a"):
        d = tmp_path / "Sessions" / name
        d.mkdir(parents=True)
        (d / "P1-Rec1-2009_C1 trigger _C_Section_7.avi").write_bytes(b"")
        (d / "Part_1_S_Trial7_emotion.bdf").write_bytes(b"")
    with pytest.raises(DatasetLayoutError, match="'7_a'") as info:
        mahnob.find_subjects(tmp_path)
    assert "7 a" in str(info.value) and "Sessions/7_a" in str(info.value)


# --------------------------------------------------------------------------- item 11: the UBFC capture clock

def _frame_locked(t_capture):
    n = t_capture.size
    ppg = np.sin(2 * np.pi * 1.2 * np.arange(n) / FPS)
    return Truth(ppg=ppg, t_s=t_capture, frame_locked=True, capture_clock=True), np.arange(n) / FPS


def test_a_capture_clock_in_milliseconds_fails_naming_the_file():
    truth, t_cont = _frame_locked(1000.0 * np.arange(600) / FPS)
    with pytest.raises(GroundTruthError, match=r"capture clock.*0\.03 Hz.*30 fps.*20 %") as info:
        make_labels(truth, t_cont, EMPTY, EMPTY, LabelParams(), subject="s1", path="/d/s1/ground_truth.txt")
    assert "subject s1, file /d/s1/ground_truth.txt" in str(info.value)


def test_a_capture_clock_that_drifts_by_a_quarter_of_the_video_fails():
    # the right mean rate, but the first half is logged at 20 Hz and the second at 60 Hz: 15 s apart midway
    t = np.concatenate([np.arange(900) / 20.0, 45.0 + np.arange(1, 901) * (15.0 / 900)])
    truth, t_cont = _frame_locked(t)
    with pytest.raises(GroundTruthError, match=r"drifts up to 1[45]\.\d+ s.*20 % of the video"):
        make_labels(truth, t_cont, EMPTY, EMPTY, LabelParams(), subject="s1", path="gt")


def test_a_capture_clock_that_stalls_like_ubfcs_still_labels():
    rng = np.random.default_rng(0)
    dt = np.full(1799, 1 / FPS)
    dt[rng.choice(1799, 12, replace=False)] += 0.75  # 9 s of stalls in a minute: far more than UBFC-rPPG has
    truth, t_cont = _frame_locked(np.concatenate([[0.0], np.cumsum(dt)]))
    _, notes = make_labels(truth, t_cont, EMPTY, EMPTY, LabelParams())
    assert any("capture clock" in n for n in notes)


def test_build_with_line_3_in_milliseconds_fails_the_subject_naming_ground_truth(template, tmp_path, shared_cache):
    def ms(folder):
        ppg, hr, t = _gt(folder)
        _write_gt(folder, ppg, hr, 1000.0 * t)

    folder = _variant(template, tmp_path, ms)
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 1 and rec["status"] == "failed" and rec["failed_stage"] == "labels"
    assert str(folder / "ground_truth.txt") in rec["error"] and "capture clock" in rec["error"], rec["error"]
    assert rec["input_file"] == str(folder / "ground_truth.txt")


def test_build_with_all_zero_timestamps_fails_with_a_ground_truth_error(template, tmp_path, shared_cache):
    def zeros(folder):
        ppg, hr, t = _gt(folder)
        _write_gt(folder, ppg, hr, np.zeros_like(t))

    folder = _variant(template, tmp_path, zeros)
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 1 and rec["status"] == "failed", rec
    assert str(folder / "ground_truth.txt") in rec["error"] and "never advances" in rec["error"], rec["error"]
    assert "ValueError" not in rec["error"]


def test_the_real_subjects_clocks_pass_the_capture_check(real_data):
    from rppg_prep.datasets import read_truth
    from rppg_prep.sources import probe

    for s in ubfc.find_subjects(real_data / "ubfc-rppg"):
        truth = read_truth(s)
        t_cont = np.arange(truth.ppg.size) / probe(s.video).fps  # the container plays every frame at its fps
        _, notes = make_labels(truth, t_cont, EMPTY, EMPTY, LabelParams(), subject=s.id)
        assert not any("missing" in n for n in notes), (s.id, notes)


# --------------------------------------------------------------------------- item 12: finite, non-flat signals

def test_check_truth_rules():
    from rppg_prep.datasets import FLAT_STRETCH_S, MAX_MISSING_FRACTION, check_truth

    assert (FLAT_STRETCH_S, MAX_MISSING_FRACTION) == (2.0, 0.5)
    t = np.arange(900) / FPS
    ppg = np.sin(2 * np.pi * 1.2 * t)
    good = Truth(ppg=ppg, t_s=t)
    assert check_truth(good) is good
    with pytest.raises(GroundTruthError, match="timestamp of sample 5 is not a number"):
        check_truth(Truth(ppg=ppg, t_s=np.where(np.arange(900) == 4, np.nan, t)), subject="s", path="f")
    with pytest.raises(GroundTruthError, match="do not increase at sample 4"):
        check_truth(Truth(ppg=ppg, t_s=np.where(np.arange(900) == 3, t[2], t)))
    with pytest.raises(GroundTruthError, match="flat"):
        check_truth(Truth(ppg=np.full(900, 3.0), t_s=t))
    with pytest.raises(GroundTruthError, match=r"60\.0 %.*at most 50 %"):
        check_truth(Truth(ppg=np.where(t < 18.0, np.nan, ppg), t_s=t))
    with pytest.raises(GroundTruthError, match=r"in flat stretches.*at most 50 %"):
        check_truth(Truth(ppg=np.where(t < 18.0, 0.0, ppg), t_s=t))
    # some missing: bridged, flagged, noted
    holes = np.where((t >= 3.0) & (t < 4.0), np.nan, ppg)
    holes[600:700] = holes[600]  # a 3.3-s flat stretch
    out = check_truth(Truth(ppg=holes, t_s=t, notes=("before",)))
    assert np.isfinite(out.ppg).all()
    assert set(np.flatnonzero(~out.quality_ok)) == set(np.flatnonzero(~np.isfinite(holes))) | set(range(600, 700))
    assert out.notes[0] == "before" and "130 of the 900" in out.notes[1] and "30 not a number" in out.notes[1]
    # a flat stretch shorter than 2 s (the real data has up to 0.8 s) is not missing
    short = ppg.copy()
    short[100:150] = short[100]
    assert check_truth(Truth(ppg=short, t_s=t)).quality_ok is None


def test_dataset_1_with_a_nan_timestamp_fails_naming_gtdump(template, tmp_path, shared_cache):
    def nan_time(rows):
        rows[100, 0] = np.nan

    folder = _variant(template, tmp_path, lambda f: _to_dataset1(f, edit=nan_time))
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 1 and rec["status"] == "failed" and rec["failed_stage"] == "labels", rec
    assert str(folder / "gtdump.xmp") in rec["error"] and "sample 101 is not a number" in rec["error"], rec["error"]


def test_dataset_1_with_some_nan_ppg_builds_with_a_note_and_flags(template, tmp_path, shared_cache):
    def nan_ppg(rows):
        rows[124:186, 3] = np.nan  # 1 s of PPG at 2-3 s

    folder = _variant(template, tmp_path, lambda f: _to_dataset1(f, edit=nan_ppg))
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 0 and rec["status"] == "ok", rec
    assert any("62 not a number" in n for n in rec["notes"]), rec["notes"]
    lab = rppg_prep.open_build(shared_cache, "ubfc", "ubfc")["subject1"]["labels"]
    t, ok = lab["t_s"][:], lab["bvp_ok"][:]
    assert np.isfinite(lab["bvp"][:]).all()
    assert not ok[(t > 2.05) & (t < 2.95)].any() and ok[(t < 1.9) | (t > 3.1)].all()


def test_dataset_2_with_a_flat_ppg_fails(template, tmp_path, shared_cache):
    def flat(folder):
        ppg, hr, t = _gt(folder)
        _write_gt(folder, np.full_like(ppg, 1.5), hr, t)

    folder = _variant(template, tmp_path, flat)
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 1 and rec["status"] == "failed", rec
    assert "flat" in rec["error"] and str(folder / "ground_truth.txt") in rec["error"], rec["error"]


def test_dataset_2_with_mostly_nan_ppg_fails_by_the_stated_rule(template, tmp_path, shared_cache):
    def mostly_nan(folder):
        ppg, hr, t = _gt(folder)
        ppg[: int(0.7 * ppg.size)] = np.nan
        _write_gt(folder, ppg, hr, t)

    folder = _variant(template, tmp_path, mostly_nan)
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 1 and "at most 50 %" in rec["error"], rec["error"]


# --------------------------------------------------------------------------- item 14: the right file, repair, --subjects

def test_an_unexpected_error_in_labels_names_the_ground_truth_not_the_video(template, tmp_path, shared_cache,
                                                                             monkeypatch):
    import rppg_prep.stages.labels as labels_mod

    def boom(*args, **kwargs):
        raise ValueError("a bad value in the ground truth")

    folder = _variant(template, tmp_path, _to_dataset1)
    monkeypatch.setattr(labels_mod, "make_labels", boom)
    res, subjects = _build(folder.parent, shared_cache)
    rec = subjects["subject1"]
    assert res.exit_code == 1 and rec["failed_stage"] == "labels"
    assert f"file {folder / 'gtdump.xmp'}: ValueError: a bad value" in rec["error"], rec["error"]
    assert rec["input_file"] == str(folder / "gtdump.xmp") and "vid.avi" not in rec["error"]


def test_repair_names_a_subject_gone_from_the_root_and_repairs_the_others(template, tmp_path):
    root = tmp_path / "root"
    for sid in ("subject1", "subject2"):
        shutil.copytree(template, root / sid)
    cache = tmp_path / "cache"
    res, _ = _build(root, cache)
    assert res.exit_code == 0, res.output
    for sid in ("subject1", "subject2"):
        bvp = next((cache / "ubfc.zarr" / sid).glob("labels-*")) / "bvp"
        chunk_paths(bvp)[0][1].unlink()
    shutil.rmtree(root / "subject2")
    res = CliRunner().invoke(main, ["verify", "--cache", str(cache), "--repair"])
    assert not isinstance(res.exception, KeyError), res.output
    assert res.exit_code == 1
    assert "rebuilt subject1: labels" in res.output, res.output
    assert "could not rebuild subject2" in res.output and str(root.resolve()) in res.output, res.output
    res = CliRunner().invoke(main, ["verify", "--cache", str(cache)])
    assert "subject subject2, stage labels" in res.output and "subject subject1," not in res.output, res.output


def test_subjects_option_takes_comma_separated_ids_with_spaces(template, tmp_path):
    root = tmp_path / "root"
    for sid in ("subject 1", "subject2", "subject 3"):
        shutil.copytree(template, root / sid)
    cache = tmp_path / "cache"
    res = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache), "--dry-run",
                                    "--subjects", "subject 1, subject 3"])
    assert res.exit_code == 0, res.output
    assert "subject 1" in res.output and "subject 3" in res.output and "subject2" not in res.output
    text = " ".join(CliRunner().invoke(main, ["build", "--help"]).output.split())
    assert "comma-separated" in text and '--subjects "subject 1,subject 2"' in text, text

