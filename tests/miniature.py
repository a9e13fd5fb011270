"""Helpers for dataset-miniature tests: synthetic recordings with a known pulse, built end to end.

A loader test writes :class:`rppg_prep.sample.FaceRecording` frames and PPG in its dataset's real
on-disk format (PNG + JSON, HDF5, MATLAB, BDF, ...), then :func:`build_and_check` runs
``rppg-prep build DATASET --root ...`` through the CLI and checks that the labels find the HR
each recording was generated at.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from click.testing import CliRunner

import rppg_prep
from rppg_prep.cli import main
from rppg_prep.sample import FaceRecording

#: the labels' median 10-s window HR must be this close to the generated mean HR (bpm)
HR_TOLERANCE_BPM = 1.5
#: long enough for two 10-s label windows, short enough to keep a test at a few seconds
DURATION_S = 12.0


def recording(hr_bpm: float, *, fps: float = 30.0, duration_s: float = DURATION_S, seed: int = 0) -> FaceRecording:
    """A synthetic face recording (640x480 frames) whose pulse has mean HR ``hr_bpm``."""
    return FaceRecording(hr_bpm, int(round(duration_s * fps)), fps, seed=seed)


def frames_rgb(rec: FaceRecording) -> np.ndarray:
    """All frames of ``rec`` as one uint8 RGB array, shape (T, 480, 640, 3)."""
    return np.stack([f[:, :, ::-1] for f in rec.frames_bgr()])


def build(dataset: str, root: Path, cache: Path, *extra: str):
    """Run ``rppg-prep build DATASET --root ROOT --cache CACHE``; return the click result."""
    return CliRunner().invoke(main, ["build", dataset, "--root", str(root), "--cache", str(cache), *extra])


def build_and_check(dataset: str, root: Path, cache: Path, expected_hr_bpm: dict[str, float]) -> dict:
    """Build ``dataset`` and assert every subject's labels recover its HR; return the opened build."""
    res = build(dataset, root, cache)
    assert res.exit_code == 0, res.output
    nodes = rppg_prep.open_build(cache, dataset, dataset)
    assert sorted(nodes) == sorted(expected_hr_bpm), (sorted(nodes), res.output)
    for sid, hr in expected_hr_bpm.items():
        labels = nodes[sid]["labels"]
        got = float(np.nanmedian(labels["hr_bpm"][:]))
        assert abs(got - hr) < HR_TOLERANCE_BPM, f"{sid}: labels say {got:.1f} bpm, generated at {hr} bpm"
        assert nodes[sid]["face"]["valid"][:].mean() > 0.95
    return nodes


def build_fails_naming(dataset: str, root: Path, cache: Path, name: str) -> str:
    """Build ``dataset`` and assert it fails with a message naming ``name``; return the output."""
    res = build(dataset, root, cache)
    assert res.exit_code != 0, res.output
    assert name in res.output, res.output
    return res.output
