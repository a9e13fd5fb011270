"""Shared test fixtures.

Real test data (other people's recordings, read in place, never copied into the repo) live in
``<repo>/../shared/data`` or wherever ``$RPPG_TEST_DATA`` points. Tests that need them take the
``real_data`` fixture: it skips when the folder is missing, except on CI (``CI=true``), where a
missing folder is a failure so that real-data tests cannot silently vanish.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """Folder with the real test data: ``$RPPG_TEST_DATA`` or ``<repo>/../shared/data``."""
    return Path(os.environ.get("RPPG_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))


def require_real_data() -> Path:
    """Return :func:`data_root` if it exists; otherwise skip the test, or fail it when ``CI=true``."""
    root = data_root()
    if not root.is_dir():
        msg = f"real test data not found at {root}; set RPPG_TEST_DATA"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Path of the real test data; skip (fail on CI) when it is absent."""
    return require_real_data()


def video_frame_count(path: Path) -> int:
    """Frames OpenCV decodes from ``path`` (counted, not the container's estimate)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


@pytest.fixture(scope="session")
def real_build(tmp_path_factory, real_data):
    """The 8 real UBFC-rPPG subjects built once through the CLI: (root, cache, CliRunner result)."""
    from click.testing import CliRunner

    from rppg_prep.cli import main

    root = real_data / "ubfc-rppg"
    # a developer may point RPPG_TEST_REAL_CACHE at a cache that already holds the build: the build
    # below is then a no-op rebuild (or rebuilds only what changed)
    cache = Path(os.environ["RPPG_TEST_REAL_CACHE"]) if os.environ.get("RPPG_TEST_REAL_CACHE") \
        else tmp_path_factory.mktemp("real_cache")
    result = CliRunner().invoke(main, ["build", "ubfc", "--root", str(root), "--cache", str(cache)])
    return root, cache, result


def array_hashes(cache: Path, pipeline: str = "ubfc", dataset: str = "ubfc") -> dict[str, str]:
    """sha256 of every array of every node of a build: ``subject/stage/array`` -> hex digest."""
    import hashlib

    import numpy as np

    import rppg_prep

    out = {}
    for sid, nodes in rppg_prep.open_build(cache, dataset, pipeline).items():
        for stage, group in nodes.items():
            for name, arr in group.arrays():
                data = np.ascontiguousarray(arr[...])
                out[f"{sid}/{stage}/{name}"] = hashlib.sha256(data.tobytes() + str(data.shape).encode()).hexdigest()
    return out


def blank_face(src: Path, dst: Path, start: int, stop: int) -> None:
    """Rewrite the video ``src`` to ``dst`` (MJPG, same fps) with frames [start, stop) flat grey: no face."""
    import cv2
    import numpy as np

    cap = cv2.VideoCapture(str(src))
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    out = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"MJPG"), cap.get(cv2.CAP_PROP_FPS), (w, h))
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        out.write(np.full_like(frame, 90) if start <= i < stop else frame)
        i += 1
    cap.release()
    out.release()


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with ``n`` torch intra-op threads, restoring the previous count afterwards.

    Model tests use 1 (or 2 for the heaviest): fewer spinning threads are faster and steadier on a
    loaded 2-core machine.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
