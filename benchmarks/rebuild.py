"""Incremental rebuild benchmark over the real UBFC-rPPG subjects (run by hand, never by the tests).

    .venv/bin/python benchmarks/rebuild.py [--data DIR] [--keep]

Measures, in one process on a fresh cache:
  full_build_s       building every stage of every subject (wall seconds)
  noop_rebuild_s     the same build again: every node is fresh, nothing runs (median of 3, wall seconds,
                     excluding interpreter start and imports, which `noop_cli_s` includes)
  noop_cli_s         `rppg-prep build ubfc --root ...` with every node fresh, interpreter start included
                     (median of 5); `status_cli_s` the same for `rppg-prep status`
  labels_change_s    a labels parameter changed (window_s 10 -> 8): only the labels nodes run
and the ratio labels_change_s / full_build_s. Targets: noop_cli_s and status_cli_s < 0.6 s (heavy
libraries are imported only where used, and an all-fresh build starts no scheduler), labels change
<= 5 % of the full build.
Results are printed as a markdown table and written to benchmarks/results/rebuild-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from rppg_prep.build import environment_threads  # noqa: E402
from rppg_prep.pipeline import load_pipeline  # noqa: E402
from rppg_prep.dag import run_build  # noqa: E402
from rppg_prep.datasets import ubfc  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    default = Path(os.environ.get("RPPG_TEST_DATA", REPO.parent / "shared" / "data")) / "ubfc-rppg"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default, help="UBFC-rPPG root (default: %(default)s)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary cache")
    args = ap.parse_args()
    environment_threads()
    tmp = Path(tempfile.mkdtemp(prefix="rppg-rebuild-"))
    cache = tmp / "cache"
    subjects = ubfc.find_subjects(args.data)
    base = load_pipeline("ubfc")
    changed_yaml = tmp / "ubfc.yaml"
    changed_yaml.write_text("name: ubfc\ndataset: ubfc\nstages:\n  labels: {window_s: 8.0}\n")
    changed = load_pipeline(changed_yaml)
    try:
        print(f"full build of {len(subjects)} subjects ...", flush=True)
        full_s, res = timed(lambda: run_build(base, subjects, cache, root=args.data))
        assert all(r.status == "ok" for r in res), [r.error for r in res if r.status != "ok"]
        frames = sum(r.frames for r in res)
        noops = []
        for _ in range(3):
            s, res = timed(lambda: run_build(base, subjects, cache, root=args.data))
            assert all(r.ran == [] for r in res)
            noops.append(s)
        cli = [str(REPO / ".venv" / "bin" / "rppg-prep")]
        where = ["ubfc", "--root", str(args.data), "--cache", str(cache)]
        cli_s = statistics.median(timed(lambda: subprocess.run([*cli, "build", *where], check=True,
                                                                capture_output=True))[0] for _ in range(5))
        status_s = statistics.median(timed(lambda: subprocess.run([*cli, "status", *where], check=True,
                                                                   capture_output=True))[0] for _ in range(5))
        lab_s, res = timed(lambda: run_build(changed, subjects, cache, root=args.data))
        assert all(r.ran == ["labels"] for r in res), [r.ran for r in res]
        out = {
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "subjects": len(subjects), "frames": frames,
            "nproc": os.cpu_count(), "loadavg": os.getloadavg(),
            "full_build_s": round(full_s, 2), "noop_rebuild_s": round(statistics.median(noops), 3),
            "noop_cli_s": round(cli_s, 3), "status_cli_s": round(status_s, 3), "labels_change_s": round(lab_s, 2),
            "labels_change_fraction": round(lab_s / full_s, 4),
        }
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print("| metric | value |\n| --- | --- |")
    for k, v in out.items():
        print(f"| {k} | {v} |")
    dest = REPO / "benchmarks" / "results" / f"rebuild-{time.strftime('%Y-%m-%d')}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
