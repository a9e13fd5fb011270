"""Fault campaign over the real UBFC-rPPG subjects (run by hand, never by the tests; ~20-30 min on 2 cores).

    .venv/bin/python benchmarks/faults.py [--data DIR] [--cases kill9,disk_full,...] [--out FILE] [--keep]

Every case is scripted and prints one row: what was done, whether any data was lost or silently
corrupted (the goal is never), the error message a user sees, and the time to recover. The
reference is a clean build of the same subjects in a fresh cache; "bitwise equal" compares the
sha256 of every array of every node. The dataset is read in place; every cache, copy and made-up
video goes to a temp dir (deleted unless ``--keep``). The disk-full and read-only cases mount a
small tmpfs (root only); without root they fall back to an injected ``ENOSPC`` and skip read-only.

Cases: kill9 (10 SIGKILLs at random moments, each followed by a resumed build), disk_full,
chunk_damage (flip, truncate, delete, then ``verify --repair`` and the training Dataset), read_only,
odd_path (spaces and non-ASCII letters), truncated_manifest, stale_lock, two_builds, truth_edited
(a ground-truth file edited during a build), long_video (a 10-min video from the real ones: peak RSS
against a 1-min one).

Issue 21 (each of these checks the message the user sees too, and counts a wrong one as a failure):
gc_during_build (``gc`` while a fresh build runs), root_dot (``--root .`` inside a subject folder and
``--root ..``), hostile_manifest (node paths pointing outside the cache, a manifest of ``[]``, a
truncated one, a nested one: ``verify --repair``, ``gc``, ``inspect``, ``status``), hostile_config (a
pipeline ``name: ../../escaped``, a top-level stage, a ``stage:`` typo, a NaN), crafted_checkpoint (a
checkpoint whose unpickling would run a shell command), tcp_relative (``dask scheduler`` and ``dask
worker`` in another directory, relative ``--root``/``--cache``; then a worker that sees a tmpfs of
its own at the cache's path: ``unshare -m``, root only), clock_ms (line 3 of ground_truth.txt in ms,
then all zero), corrupt_node_rebuild (a node's zarr.json truncated), force_crash (SIGKILL in the middle
of a ``--force`` replace, with and without ``renameat2``), manifest_other_root (a build from another
``--root``, then ``gc``). A case with variants prints one row per variant.

Results: a markdown table and ``benchmarks/results/faults-<date>.json`` (or ``--out FILE``); rows of
cases that file already holds and that this run did not repeat are kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "rppg-prep")
ENV = dict(os.environ, PYTHONWARNINGS="ignore", GLOG_minloglevel="2")
CASES = ["kill9", "disk_full", "chunk_damage", "read_only", "odd_path", "truncated_manifest", "stale_lock",
         "two_builds", "truth_edited", "long_video", "gc_during_build", "root_dot", "hostile_manifest",
         "hostile_config", "crafted_checkpoint", "tcp_relative", "clock_ms", "corrupt_node_rebuild", "force_crash",
         "manifest_other_root"]
#: what marks the line of a message a user sees in a command's output
MESSAGE_MARKS = ("rror", "No space", "Read-only", "changed while", "not valid JSON", "refus", "cannot",
                 "removed nothing", "never advances", "capture clock", "not loaded", "does not see")


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def cli(*args: str, cache: Path, root: Path | None = None, timeout: float = 1800, env: dict | None = None):
    cmd = [CLI, *args, "--cache", str(cache)] + (["--root", str(root)] if root else [])
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    return res, time.perf_counter() - t0


def start(*args: str, cache: Path, root: Path) -> subprocess.Popen:
    return subprocess.Popen([CLI, *args, "--cache", str(cache), "--root", str(root)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def hashes(cache: Path, pipeline: str = "ubfc") -> dict[str, str]:
    import rppg_prep

    out = {}
    for sid, nodes in rppg_prep.open_build(cache, "ubfc", pipeline).items():
        for stage, group in nodes.items():
            for name, arr in group.arrays():
                data = np.ascontiguousarray(arr[...])
                out[f"{sid}/{stage}/{name}"] = hashlib.sha256(data.tobytes() + str(data.shape).encode()).hexdigest()
    return out


def verified(cache: Path) -> tuple[bool, str]:
    res, _ = cli("verify", cache=cache)
    return res.returncode == 0, (res.stdout.strip().splitlines() or [""])[-1]


def run_in(cwd: Path, *args: str, timeout: float = 1800, env: dict | None = None):
    """``rppg-prep ARGS`` run in ``cwd``, the paths in ARGS as given (relative ones resolve there)."""
    t0 = time.perf_counter()
    res = subprocess.run([CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env or ENV)
    return res, time.perf_counter() - t0


def error_line(res) -> str:
    """The first line of a command's output that reads as its error message (the campaign's temp dir as TMP)."""
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/rppg-faults-\w+", "TMP",
                  (res.stderr or "") + (res.stdout or ""))
    lines = [ln.strip(" │") for ln in text.splitlines() if not ln.strip(" │").startswith("note:")
             and (ln.strip(" │").startswith("Error") or any(mark in ln for mark in MESSAGE_MARKS))]
    return lines[0][:240] if lines else ""


def output(res) -> str:
    return (res.stdout or "") + (res.stderr or "")


def nodes(cache: Path) -> list[str]:
    return sorted(p.relative_to(cache).as_posix() for p in cache.glob("ubfc.zarr/*/*-*"))


def manifest(cache: Path) -> dict:
    return json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())


class Campaign:
    def __init__(self, data: Path, tmp: Path):
        self.data, self.tmp = data, tmp
        self.rows: list[dict] = []
        self.clean = tmp / "clean"
        step("clean reference build")
        res, self.clean_s = cli("build", "ubfc", cache=self.clean, root=data)
        assert res.returncode == 0, res.stderr[-3000:]
        self.ref = hashes(self.clean)
        self.sids = list(dict.fromkeys(k.split("/")[0] for k in self.ref))  # natural order: subject3 first
        self.clean_bytes = sum(f.stat().st_size for f in self.clean.rglob("*") if f.is_file())
        step(f"clean build: {self.clean_s:.1f} s, {len(self.ref)} arrays, {self.clean_bytes / 1e6:.0f} MB")

    def row(self, case: str, tried: str, lost: bool, message: str, recover_s: float | None, **detail) -> None:
        message = message.replace(str(self.tmp), "TMP")
        r = {"case": case, "tried": tried, "lost_or_corrupted": lost, "message": message,
             "recover_s": None if recover_s is None else round(recover_s, 2), **detail}
        self.rows.append(r)
        step(f"{case}: lost={lost} recover={r['recover_s']} s  {message[:140]}")

    @staticmethod
    def damaged_in_place(cache: Path) -> list[str]:
        """Node folders in place (not under .partial) that are incomplete or fail their checksums."""
        from rppg_prep.integrity import check_node
        from rppg_prep.store import node_exists

        return [str(p) for p in cache.glob("ubfc.zarr/*/*-*") if p.is_dir() and (not node_exists(p) or check_node(p))]

    def copy(self, name: str) -> Path:
        dst = self.tmp / name
        shutil.copytree(self.clean, dst, symlinks=True)
        return dst

    def of(self, sid: str) -> dict[str, str]:
        """The reference hashes of one subject."""
        return {k: v for k, v in self.ref.items() if k.split("/")[0] == sid}

    # ------------------------------------------------------------------ cases

    def kill9(self) -> None:
        cache, rng, moments = self.tmp / "kill9", random.Random(0), []
        for _ in range(10):
            t = rng.uniform(2.0, 0.2 * self.clean_s)
            proc = start("build", "ubfc", cache=cache, root=self.data)
            time.sleep(t)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            moments.append(round(t, 1))
        res, recover = cli("build", "ubfc", cache=cache, root=self.data)
        ok, last = verified(cache)
        lost = res.returncode != 0 or not ok or hashes(cache) != self.ref
        self.row("kill9", f"SIGKILL 10 times, {moments} s after each (re)start, then a last build", lost,
                 f"none (the last build resumed; {last})", recover, kill_moments_s=moments)

    def _tmpfs(self, path: Path, size: str) -> bool:
        path.mkdir(parents=True, exist_ok=True)
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True).returncode == 0

    def _umount(self, path: Path) -> None:
        subprocess.run(["umount", str(path)], capture_output=True)

    def disk_full(self) -> None:
        mnt = self.tmp / "small_disk"
        size_mb = int(0.5 * self.clean_bytes / 1e6)
        if self._tmpfs(mnt, f"{size_mb}m"):
            try:
                cache = mnt / "cache"
                res, _ = cli("build", "ubfc", cache=cache, root=self.data)
                try:
                    failed = [(s, r["failed_stage"]) for s, r in manifest(cache)["subjects"].items()
                              if r["status"] != "ok"]
                except (OSError, ValueError) as exc:  # the manifest itself could not be written
                    failed = [f"manifest: {exc}"]
                half = self.damaged_in_place(cache)
                errors = [r.get("error") for r in manifest(cache)["subjects"].values() if r.get("error")] \
                    if (cache / "ubfc.builds" / "ubfc.json").exists() else []
                message = (errors[0] if errors else error_line(res)) or ""
                subprocess.run(["mount", "-o", f"remount,size={int(3 * self.clean_bytes / 1e6)}m", str(mnt)],
                               check=True)
                res2, recover = cli("build", "ubfc", cache=cache, root=self.data)
                lost = res.returncode == 0 or bool(half) or res2.returncode != 0 or hashes(cache) != self.ref
                self.row("disk_full", f"tmpfs of {size_mb} MB (half the build), then grown to 3x", lost, message,
                         recover, failed_subjects=failed, exit_code_full=res.returncode, damaged_in_place=half)
            finally:
                self._umount(mnt)
        else:
            cache = self.tmp / "enospc"
            env = dict(ENV, RPPG_PREP_FAULT="enospc:face:subject8")
            res, _ = cli("build", "ubfc", cache=cache, root=self.data, env=env)
            ok, _ = verified(cache)
            res2, recover = cli("build", "ubfc", cache=cache, root=self.data)
            lost = res.returncode == 0 or not ok or res2.returncode != 0 or hashes(cache) != self.ref
            self.row("disk_full", "injected ENOSPC writing subject8's face node (no root for a tmpfs)", lost,
                     error_line(res), recover)

    def chunk_damage(self) -> None:
        from rppg_prep.integrity import chunk_paths

        cache = self.copy("damage")
        rng = np.random.default_rng(1)
        nodes = sorted(cache.glob("ubfc.zarr/*/*-*"))
        picks = [nodes[i] for i in rng.choice(len(nodes), 3, replace=False)]
        clips_node = next(cache.glob("ubfc.zarr/subject9/clips-*"))
        done = []
        for how, node in zip(("flip", "truncate", "delete"), picks):
            arrays = sorted(p.parent for p in node.glob("*/zarr.json"))
            arr = arrays[rng.integers(len(arrays))]
            idx, path = chunk_paths(arr)[0]
            if how == "flip":
                b = bytearray(path.read_bytes())
                b[rng.integers(len(b))] ^= 0x04
                path.write_bytes(bytes(b))
            elif how == "truncate":
                path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
            else:
                path.unlink()
            done.append(f"{how} {node.parent.name}/{node.name.split('-')[0]}/{arr.name}")
        clip_chunks = chunk_paths(clips_node / "clips")
        k = min(3, len(clip_chunks) - 1)
        chunk = clip_chunks[k][1]
        b = bytearray(chunk.read_bytes())
        b[500] ^= 0x01
        chunk.write_bytes(bytes(b))
        done.append(f"flip subject9/clips/clips chunk {k} (for the Dataset)")
        res, _ = cli("verify", cache=cache)
        found = [ln for ln in res.stdout.splitlines() if ln.startswith("subject ")]
        from rppg_models.data import ClipDataset
        from rppg_prep.errors import StoreError

        try:
            ClipDataset(cache, "ubfc", "ubfc", subjects=["subject9"])[k]
            refused = "NOT refused"
        except StoreError as exc:
            refused = str(exc)
        res2, recover = cli("verify", "--repair", cache=cache)
        print(res2.stdout[-3000:], res2.stderr[-3000:], flush=True)
        after = hashes(cache)
        differ = sorted(k for k in set(after) | set(self.ref) if after.get(k) != self.ref.get(k))
        lost = len(found) != 4 or res.returncode != 1 or res2.returncode != 0 or bool(differ) \
            or refused == "NOT refused"
        self.row("chunk_damage", "; ".join(done), lost, f"verify: {found[0] if found else ''} | Dataset: {refused[:120]}",
                 recover, verify_found=found, verify_exit=res.returncode, repair_exit=res2.returncode,
                 repair_output=res2.stdout[-1500:] + res2.stderr[-1500:], arrays_differing=differ)

    def read_only(self) -> None:
        mnt = self.tmp / "ro"
        if not self._tmpfs(mnt, f"{int(2 * self.clean_bytes / 1e6)}m"):
            self.row("read_only", "skipped: mounting a tmpfs needs root", False, "", None)
            return
        try:
            cache = mnt / "cache"
            shutil.copytree(self.clean, cache)
            subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
            reads = [cli(*a, cache=cache, root=self.data if a[0] == "status" else None)[0].returncode
                     for a in (["status", "ubfc"], ["verify"], ["inspect", "ubfc"])]
            res, _ = cli("build", "ubfc", "--force", "labels", cache=cache, root=self.data)
            noop, _ = cli("build", "ubfc", cache=cache, root=self.data)
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
            lost = res.returncode == 0 or hashes(cache) != self.ref or any(reads)
            self.row("read_only", "status, verify, inspect, a forced labels rebuild and a no-op build on a read-only "
                     "cache", lost, f"{error_line(res)[:200]} / no-op build: exit {noop.returncode}, the same error", 0.0,
                     read_exit_codes=reads)
        finally:
            self._umount(mnt)

    def odd_path(self) -> None:
        root = self.tmp / "data dir ü" / "ubfc rppg ✓"
        root.parent.mkdir(parents=True)
        root.symlink_to(self.data)
        cache = self.tmp / "cache with spaces" / "ünïcødé ☃"
        res, took = cli("build", "ubfc", cache=cache, root=root)
        ok, last = verified(cache)
        same = hashes(cache) == self.ref
        self.row("odd_path", f"dataset root and cache under {root.parent.name!r} / {cache.name!r}",
                 res.returncode != 0 or not ok or not same, f"none ({last})", None, build_s=round(took, 1))

    def truncated_manifest(self) -> None:
        cache = self.copy("truncated")
        (cache / "ubfc.builds" / "ubfc.json").write_bytes(b"")
        res, _ = cli("inspect", "ubfc", cache=cache)
        res2, recover = cli("build", "ubfc", cache=cache, root=self.data)
        lost = res.returncode == 0 or res2.returncode != 0 or hashes(cache) != self.ref or \
            "all fresh" not in res2.stderr
        self.row("truncated_manifest", "manifest truncated to 0 bytes; inspect, then build", lost,
                 error_line(res), recover)

    def stale_lock(self) -> None:
        cache = self.copy("stale_lock")
        keys = [n["key"] for r in manifest(cache)["subjects"].values() for n in r["nodes"].values()]
        for node in cache.glob("ubfc.zarr/subject4/labels-*"):
            shutil.rmtree(node)
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import time
            from filelock import FileLock
            paths = [{str(cache / 'ubfc.builds' / 'ubfc.json.lock')!r}]
            paths += [{str(cache / '.locks')!r} + '/' + k + '.lock' for k in {keys!r}]
            for p in paths:
                FileLock(p).acquire()
            print('held', flush=True)
            time.sleep(600)
            """)], stdout=subprocess.PIPE, text=True)
        holder.stdout.readline()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        res, recover = cli("build", "ubfc", cache=cache, root=self.data, timeout=300)
        lost = res.returncode != 0 or hashes(cache) != self.ref
        self.row("stale_lock", "a process holding every lock is killed -9; its lock files stay; build", lost,
                 "none (flock locks die with their process)", recover)

    def two_builds(self) -> None:
        cache = self.tmp / "two"
        t0 = time.perf_counter()
        a = start("build", "ubfc", cache=cache, root=self.data)
        b = start("build", "ubfc", cache=cache, root=self.data)
        ra, rb = a.wait(), b.wait()
        took = time.perf_counter() - t0
        lost = ra != 0 or rb != 0 or hashes(cache) != self.ref
        self.row("two_builds", "two builds of the same dataset started together", lost,
                 f"none (exit codes {ra}, {rb}; one waits on the other's node locks)", None, both_done_s=round(took, 1))

    def truth_edited(self) -> None:
        root = self.tmp / "truth_root"
        shutil.copytree(self.data / "subject4", root / "subject4")
        truth = root / "subject4" / "ground_truth.txt"
        cache = self.tmp / "truth_cache"
        proc = start("build", "ubfc", cache=cache, root=root)
        deadline = time.time() + 120
        while time.time() < deadline and not list(cache.glob(".partial/face-*")):
            time.sleep(0.05)
        lines = truth.read_text().splitlines()
        lines[0] = " ".join(f"{-float(v):.6e}" for v in lines[0].split())
        truth.write_text("\n".join(lines) + "\n")
        proc.wait()
        first = manifest(cache)["subjects"]["subject4"]
        res, recover = cli("build", "ubfc", cache=cache, root=root)
        import rppg_prep

        fresh = self.tmp / "truth_fresh"
        cli("build", "ubfc", cache=fresh, root=root)
        got = rppg_prep.open_build(cache, "ubfc", "ubfc")["subject4"]["labels"]["bvp"][:]
        want = rppg_prep.open_build(fresh, "ubfc", "ubfc")["subject4"]["labels"]["bvp"][:]
        lost = res.returncode != 0 or not np.array_equal(got, want)
        message = first.get("error") or f"first build {first['status']}; the edit came before the labels were keyed"
        self.row("truth_edited", "ground_truth.txt rewritten while subject4's video pass ran", lost, message[:240],
                 recover, first_build_status=first["status"])

    def long_video(self) -> None:
        import cv2

        from rppg_prep.datasets import ubfc

        subjects = ubfc.find_subjects(self.data)
        long_root, short_root = self.tmp / "long", self.tmp / "short"
        (long_root / "subject1").mkdir(parents=True)
        shutil.copytree(self.data / subjects[0].id, short_root / "subject1")
        out = cv2.VideoWriter(str(long_root / "subject1" / "vid.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30.0,
                              (640, 480))
        ppg, hr, t = [], [], []
        offset, n = 0.0, 0
        while n < 18000:  # 10 min at 30 fps
            for s in subjects:
                rows = [ln.split() for ln in s.truth[0].read_text().splitlines()[:3]]
                cap = cv2.VideoCapture(str(s.video))
                k = 0
                while k < len(rows[0]):  # frame-locked: as many frames as samples (some files lack one)
                    ok, frame = cap.read()
                    if not ok:
                        break
                    out.write(cv2.resize(frame, (640, 480)))
                    k += 1
                cap.release()
                n += k
                ts = np.array(rows[2][:k], float)
                ppg += rows[0][:k]
                hr += rows[1][:k]
                t += list(ts - ts[0] + offset)
                offset = t[-1] + 1 / 30
                if n >= 18000:
                    break
        out.release()
        (long_root / "subject1" / "ground_truth.txt").write_text(
            " ".join(ppg) + "\n" + " ".join(hr) + "\n" + " ".join(f"{v:.6f}" for v in t) + "\n")

        def peak(root: Path, cache: Path) -> tuple[float, int, float]:
            t0 = time.perf_counter()
            proc = subprocess.Popen([CLI, "build", "ubfc", "--root", str(root), "--cache", str(cache)], env=ENV,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            rec = manifest(cache)["subjects"]["subject1"]
            if rec["status"] != "ok":
                raise RuntimeError(f"the build of {root} failed: {rec['error']}")
            return usage.ru_maxrss / 1024, rec["frames"], time.perf_counter() - t0

        short_mib, short_n, _ = peak(short_root, self.tmp / "short_cache")
        long_mib, long_n, long_s = peak(long_root, self.tmp / "long_cache")
        ok = manifest(self.tmp / "long_cache")["subjects"]["subject1"]["status"] == "ok"
        ratio = long_mib / short_mib
        self.row("long_video", f"{long_n} frames ({long_n / 30 / 60:.1f} min) against {short_n} "
                 f"({short_n / 30 / 60:.1f} min)", not ok, f"peak RSS {long_mib:.0f} vs {short_mib:.0f} MiB "
                 f"(x{ratio:.3f}; goal <= 1.10)", None, long_build_s=round(long_s, 1), rss_ratio=round(ratio, 3))

    # ------------------------------------------------------------------ issue 21

    def gc_during_build(self) -> None:
        from rppg_prep.store import node_exists

        cache = self.tmp / "gc_during"
        proc = start("build", "ubfc", cache=cache, root=self.data)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None and \
                not any(node_exists(p) for p in cache.glob("ubfc.zarr/*/face-*")):
            time.sleep(0.05)
        during, committed = proc.poll() is None, nodes(cache)
        res, _ = cli("gc", cache=cache)
        kept = set(committed) <= set(nodes(cache))
        _, err = proc.communicate(timeout=1800)
        ok, last = verified(cache)
        said = "build(s) are using this cache" in output(res) and "gc removed nothing" in output(res)
        lost = not during or res.returncode != 1 or not said or not kept or proc.returncode != 0 or not ok \
            or hashes(cache) != self.ref
        self.row("gc_during_build", f"`gc` once {len(committed)} node(s) of a fresh build were committed (no "
                 "manifest lists them yet); the build goes on", lost, error_line(res), None, gc_exit=res.returncode,
                 build_exit=proc.returncode, committed_before_gc=len(committed), verify=last,
                 build_stderr_tail=err[-600:] if proc.returncode else "")

    def root_dot(self) -> None:
        sid = self.sids[0]
        folder = self.tmp / "dot" / sid
        shutil.copytree(self.data / sid, folder)
        files = sorted(os.listdir(folder))
        for root, name in ((".", "dot_cache"), ("..", "dotdot_cache")):
            cache, before = self.tmp / name, set(os.listdir(self.tmp))
            res, took = run_in(folder, "build", "ubfc", "--root", root, "--cache", str(cache))
            outside = sorted(set(os.listdir(self.tmp)) - before - {name}) + \
                sorted(set(os.listdir(folder.parent)) - {sid}) + sorted(set(os.listdir(folder)) - set(files))
            store = cache / "ubfc.zarr"
            stores = sorted(p.name for p in store.iterdir() if p.is_dir()) if store.is_dir() else []
            built = len(list((store / sid).glob("*-*")))
            ok, last = verified(cache)
            lost = res.returncode != 0 or stores != [sid] or built != 6 or bool(outside) or not ok \
                or hashes(cache) != self.of(sid)
            self.row(f"root_dot ({root})", f"`build ubfc --root {root} --cache TMP/{name}` run in TMP/dot/{sid}",
                     lost, f"none ({last})" if not lost else error_line(res) or f"exit {res.returncode}", None,
                     subject_folders=stores, nodes=built, written_outside=outside, build_s=round(took, 1))

    def _hostile_copy(self, name: str) -> tuple[Path, dict]:
        cache = self.copy(name)
        return cache, manifest(cache)

    def _refusals(self, cache: Path, must: tuple[str, ...]) -> dict[str, dict]:
        """verify --repair, gc, gc --all-stale, inspect and status on ``cache``: exit code, message, and whether
        the output names every string of ``must``."""
        out = {}
        for args in (["verify", "--repair"], ["gc"], ["gc", "--all-stale"], ["inspect", "ubfc"], ["status", "ubfc"]):
            res, _ = cli(*args, cache=cache, root=self.data if args[0] == "status" else None)
            out[" ".join(args)] = {"exit": res.returncode, "message": error_line(res).replace(str(self.tmp), "TMP"),
                                   "names_it": all(m in output(res) for m in must),
                                   "traceback": "Traceback" in output(res)}
        return out

    def hostile_manifest(self) -> None:
        precious = self.tmp / "precious"
        precious.mkdir()
        (precious / "keep").write_text("not a node")
        a, b = self.sids[:2]
        for how, name, sid, stage, path in (("absolute", "hostile/absolute", a, "labels", str(precious)),
                                            ("dotdot", "hostile/dotdot", b, "face", "../../precious")):
            cache, man = self._hostile_copy(name)
            man["subjects"][sid]["nodes"][stage]["path"] = path
            mpath = cache / "ubfc.builds" / "ubfc.json"
            mpath.write_text(json.dumps(man))
            before = nodes(cache)
            seen = self._refusals(cache, (str(mpath), f"subject '{sid}', stage '{stage}'"))
            refused = {k: v for k, v in seen.items() if k != "status ubfc"}
            intact = (precious / "keep").exists() and nodes(cache) == before
            shutil.copy2(self.clean / "ubfc.builds" / "ubfc.json", mpath)
            same = hashes(cache) == self.ref
            lost = not intact or not same or any(v["exit"] != 1 or not v["names_it"] or v["traceback"]
                                                 for v in refused.values()) or seen["status ubfc"]["traceback"]
            st = seen["status ubfc"]
            self.row(f"hostile_manifest ({how})", f"{sid}'s {stage} node path in the manifest set to "
                     f"{path.replace(str(self.tmp), 'TMP')!r}; verify --repair, gc, gc --all-stale, inspect, status",
                     lost, f"{seen['gc']['message']} / status: exit {st['exit']}"
                     f"{', names the manifest' if st['names_it'] else ', does not name the manifest'}", None,
                     commands=seen, precious_kept=(precious / "keep").exists(), nodes_kept=nodes(cache) == before)
            shutil.rmtree(cache)
        for how, edit in (("list", lambda p: p.write_text("[]")),
                          ("truncated", lambda p: p.write_bytes(p.read_bytes()[:300])),
                          ("nested", lambda p: p.rename(p.parent / "ablation" / "stride2.json"))):
            cache, _ = self._hostile_copy(f"hostile/{how}")
            mpath = cache / "ubfc.builds" / "ubfc.json"
            named = cache / "ubfc.builds" / "ablation" / "stride2.json" if how == "nested" else mpath
            named.parent.mkdir(exist_ok=True)
            edit(mpath)
            before = nodes(cache)
            dry, _ = cli("gc", "--dry-run", cache=cache)
            res, _ = cli("gc", cache=cache)
            kept = nodes(cache) == before
            if how == "nested":  # a valid manifest in a nested folder: read like any other, nothing to remove
                fine = all(r.returncode == 0 and "0 node(s)" in output(r) for r in (dry, res))
                message = f"none (gc --dry-run and gc: {res.stdout.strip().splitlines()[-1]})" if fine else \
                    error_line(res) or output(res)[-200:]
                named.rename(mpath)
            else:
                fine = all(r.returncode == 1 and str(named) in output(r) and "Traceback" not in output(r)
                           for r in (dry, res))
                message = error_line(res)
                shutil.copy2(self.clean / "ubfc.builds" / "ubfc.json", mpath)
            fine &= "would remove" not in output(dry)
            lost = not kept or not fine or hashes(cache) != self.ref
            tried = {"list": "manifest holds `[]`", "truncated": "manifest cut to its first 300 bytes",
                     "nested": "the manifest moved to ubfc.builds/ablation/stride2.json"}[how]
            self.row(f"hostile_manifest ({how})", f"{tried}; gc --dry-run, gc", lost, message, None,
                     dry_run_exit=dry.returncode, gc_exit=res.returncode, nodes_kept=kept,
                     dry_run_output=output(dry)[-400:].replace(str(self.tmp), "TMP"))
            shutil.rmtree(cache)

    def hostile_config(self) -> None:
        configs = {"name_escapes": ("name: ../../escaped\ndataset: ubfc\n", "name", "`name: ../../escaped`"),
                   "stage_at_top_level": ("name: t\ndataset: ubfc\nclips:\n  size_px: 32\n", "clips",
                                          "a top-level `clips:` section"),
                   "stage_for_stages": ("name: t\ndataset: ubfc\nstage:\n  clips: {size_px: 32}\n", "stage",
                                        "`stage:` for `stages:`"),
                   "nan": ("name: t\ndataset: ubfc\nstages:\n  labels: {window_s: .nan}\n", "window_s",
                           "`labels: {window_s: .nan}`")}
        for how, (body, key, what) in configs.items():
            work = self.tmp / "cfg" / how / "deep"
            work.mkdir(parents=True)
            path, cache = work / "bad.yaml", work / "cache"
            path.write_text(body)
            res, _ = cli("build", str(path), "--subjects", self.sids[0], cache=cache, root=self.data)
            escaped = [str(p) for p in (*self.tmp.rglob("escaped*"), *self.tmp.parent.glob("escaped*"))]
            lost = res.returncode != 2 or str(path) not in output(res) or key not in output(res) or cache.exists() \
                or bool(escaped) or "Traceback" in output(res)
            self.row(f"hostile_config ({how})", f"build with a pipeline YAML holding {what}", lost,
                     error_line(res), None, exit_code=res.returncode, cache_made=cache.exists(), escaped_files=escaped)

    def crafted_checkpoint(self) -> None:
        import shlex

        import torch

        marker = self.tmp / "pwned"

        class Payload:  # what a crafted checkpoint could hold: unpickling it runs a shell command
            def __reduce__(self):
                return os.system, (f"touch {shlex.quote(str(marker))}",)

        ckpt = self.tmp / "stgnet-crafted.pt"
        torch.save({"family": "stgnet", "state_dict": {}, "config": {}, "x": Payload()}, ckpt)
        cache = self.copy("checkpoint")
        res, _ = cli("evaluate", "ubfc", "--checkpoint", str(ckpt), "--subjects", self.sids[0], cache=cache,
                     root=self.data)
        lost = res.returncode == 0 or marker.exists() or "not loaded" not in output(res) or "Traceback" in output(res)
        self.row("crafted_checkpoint", "`evaluate --checkpoint` of a torch.save'd dict whose unpickling runs "
                 "`touch TMP/pwned` (os.system)", lost, error_line(res), None, exit_code=res.returncode,
                 pwned=marker.exists())
        shutil.rmtree(cache)

    def _workers(self, address: str, but: set[str] = frozenset()) -> set[str]:
        """Wait for one worker at the scheduler that is not in ``but``; the addresses of its workers."""
        from distributed import Client

        with Client(address, timeout=30) as client:
            deadline = time.time() + 120
            while time.time() < deadline:
                now = set(client.scheduler_info()["workers"])
                if now and not now & set(but):
                    return now
                time.sleep(0.2)
        raise RuntimeError(f"no new dask worker at {address}")

    def tcp_relative(self) -> None:
        import shlex

        from rppg_prep.store import node_exists

        base, sid = self.tmp / "tcp", self.sids[0]
        client_dir, elsewhere = base / "client", base / "elsewhere"
        shutil.copytree(self.data / sid, client_dir / "data" / sid)
        elsewhere.mkdir()
        dask_cli, sched_file = str(Path(sys.executable).parent / "dask"), base / "scheduler.json"
        quiet = dict(cwd=elsewhere, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs = [subprocess.Popen([dask_cli, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(sched_file)], **quiet)]
        try:
            deadline = time.time() + 60
            while not (sched_file.exists() and sched_file.read_text().strip()):
                if time.time() > deadline or procs[0].poll() is not None:
                    raise RuntimeError("the dask scheduler did not start")
                time.sleep(0.1)
            address = json.loads(sched_file.read_text())["address"]
            worker = [dask_cli, "worker", address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                      "--no-dashboard"]
            procs.append(subprocess.Popen(worker, **quiet))
            first = self._workers(address)
            res, took = run_in(client_dir, "build", "ubfc", "--root", "data", "--cache", "cache", "--scheduler",
                               address)
            cache = client_dir / "cache"
            rec = manifest(cache)["subjects"].get(sid, {}) if (cache / "ubfc.builds" / "ubfc.json").exists() else {}
            ok, last = verified(cache)
            there = all(node_exists(cache / n["path"]) for n in rec.get("nodes", {}).values())
            lost = res.returncode != 0 or rec.get("status") != "ok" or not rec.get("frames") or not there \
                or (elsewhere / "cache").exists() or not ok or hashes(cache) != self.of(sid)
            self.row("tcp_relative", "`dask scheduler` + `dask worker` run in TMP/tcp/elsewhere; `build --root data "
                     "--cache cache --scheduler tcp://...` run in TMP/tcp/client", lost,
                     f"none ({rec.get('frames')} frames; {last})" if not lost
                     else error_line(res) or rec.get("error", ""), None, frames=rec.get("frames"),
                     worker_cwd_after=sorted(os.listdir(elsewhere)), build_s=round(took, 1))
            if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
                self.row("tcp_relative (worker's own cache)", "skipped: `unshare -m` needs root", False, "", None)
                return
            procs.pop().terminate()
            blind = client_dir / "cache_blind"
            blind.mkdir()
            script = f"mount -t tmpfs tmpfs {shlex.quote(str(blind))} && exec {shlex.join(worker)}"
            procs.append(subprocess.Popen(["unshare", "-m", "sh", "-c", script], **quiet))
            self._workers(address, but=first)
            res, _ = run_in(client_dir, "build", "ubfc", "--root", "data", "--cache", "cache_blind", "--scheduler",
                            address)
            mpath = blind / "ubfc.builds" / "ubfc.json"
            rec = manifest(blind)["subjects"].get(sid, {}) if mpath.exists() else {}
            message = rec.get("error") or error_line(res)
            lost = res.returncode != 1 or "does not see" not in message or "every worker sees" not in message
            self.row("tcp_relative (worker's own cache)", "the worker sees a tmpfs of its own at the client's cache "
                     "path (`unshare -m`); build", lost, message, None, exit_code=res.returncode,
                     failed_stage=rec.get("failed_stage"))
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in reversed(procs):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()

    def _clock_root(self, name: str, edit) -> Path:
        """Copies of the first two subjects under TMP/clock/NAME, line 3 of the first's ground_truth.txt edited."""
        root = self.tmp / "clock" / name
        for sid in self.sids[:2]:
            shutil.copytree(self.data / sid, root / sid)
        truth = root / self.sids[0] / "ground_truth.txt"
        lines = truth.read_text().splitlines()
        lines[2] = " ".join(f"{v:.7e}" for v in edit(np.array(lines[2].split(), dtype=np.float64)))
        truth.write_text("\n".join(lines) + "\n")
        return root

    def clock_ms(self) -> None:
        a, b = self.sids[:2]
        cache = self.tmp / "clock_cache"
        for how, edit, phrase in (("ms", lambda t: 1000.0 * t, "capture clock"),
                                  ("zeros", np.zeros_like, "never advances")):
            root = self._clock_root(how, edit)
            res, _ = cli("build", "ubfc", cache=cache, root=root)
            subs = manifest(cache)["subjects"]
            err = subs[a].get("error") or ""
            lost = res.returncode != 1 or subs[a]["status"] != "failed" or phrase not in err \
                or str(root / a / "ground_truth.txt") not in err or "ValueError" in err or subs[b]["status"] != "ok" \
                or hashes(cache) != self.of(b)
            tried = {"ms": "capture clock (line 3) x 1000", "zeros": "capture clock all zero"}[how]
            self.row(f"clock_ms ({how})", f"{a}'s {tried}, built with an unmodified copy of {b}", lost, err[:240], None,
                     exit_code=res.returncode, failed_stage=subs[a].get("failed_stage"), other_status=subs[b]["status"])

    def corrupt_node_rebuild(self) -> None:
        cache, sid = self.copy("corrupt_node"), self.sids[0]
        meta = cache / manifest(cache)["subjects"][sid]["nodes"]["labels"]["path"] / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:100])
        res, recover = cli("build", "ubfc", cache=cache, root=self.data)
        ran = {s: r["ran"] for s, r in manifest(cache)["subjects"].items()}
        res2, _ = cli("build", "ubfc", cache=cache, root=self.data)
        ran2 = {s: r["ran"] for s, r in manifest(cache)["subjects"].items()}
        ok, last = verified(cache)
        lost = res.returncode != 0 or ran != {s: ["labels"] if s == sid else [] for s in ran} or res2.returncode != 0 \
            or any(ran2.values()) or "all fresh" not in res2.stderr or not ok or hashes(cache) != self.ref
        self.row("corrupt_node_rebuild", f"{sid}'s labels node: zarr.json cut to 100 bytes; build twice", lost,
                 f"none (first build ran {ran.get(sid)}, the second all fresh; {last})", recover, first_ran=ran,
                 second_ran=ran2)
        shutil.rmtree(cache)

    def force_crash(self) -> None:
        from rppg_prep.store import node_exists

        sid = self.sids[0]
        for exchange in ("1", "0"):
            cache = self.copy(f"force_crash{exchange}")
            labels = cache / manifest(cache)["subjects"][sid]["nodes"]["labels"]["path"]
            env = dict(ENV, RPPG_PREP_FAULT=f"crash-replace:labels:{sid}", RPPG_PREP_RENAME_EXCHANGE=exchange)
            res, _ = cli("build", "ubfc", "--force", "labels", "--subjects", sid, cache=cache, root=self.data, env=env)
            in_place = node_exists(labels)
            st, recover = cli("status", "ubfc", cache=cache, root=self.data)
            ok, last = verified(cache)
            same = hashes(cache) == self.ref
            g, _ = cli("gc", cache=cache)
            after_gc = hashes(cache) == self.ref
            lost = res.returncode not in (-9, 137) or st.returncode != 0 or not ok or not same or g.returncode != 0 \
                or not after_gc or (cache / ".replaced").exists()
            self.row(f"force_crash (exchange={exchange})", f"SIGKILL between the steps of `build --force labels "
                     f"--subjects {sid}` (RPPG_PREP_RENAME_EXCHANGE={exchange}); status, verify, gc", lost,
                     f"none (build exit {res.returncode}; node in place after the kill: {in_place}; status exit "
                     f"{st.returncode}; {last}; gc: {(g.stdout.strip().splitlines() or [''])[-1]})", recover,
                     build_exit=res.returncode, node_in_place_after_kill=in_place, status_exit=st.returncode,
                     gc_exit=g.returncode)
            shutil.rmtree(cache)

    def manifest_other_root(self) -> None:
        import rppg_prep

        cache, sid = self.copy("other_root_cache"), self.sids[0]
        root = self.tmp / "other_root"
        shutil.copytree(self.data / sid, root / sid)
        before = nodes(cache)
        res, _ = cli("build", "ubfc", cache=cache, root=root)
        rec = manifest(cache)["subjects"][sid]
        g, recover = cli("gc", cache=cache)
        listed = list(rppg_prep.open_build(cache, "ubfc", "ubfc"))
        lost = res.returncode != 0 or g.returncode != 0 or "0 node(s)" not in g.stdout or nodes(cache) != before \
            or listed != self.sids or rec["root"] != str(root.resolve()) or hashes(cache) != self.ref
        self.row("manifest_other_root", f"build from a root holding only a copy of {sid}, then gc", lost,
                 f"none (gc: {(g.stdout.strip().splitlines() or [''])[-1]}; open_build lists {len(listed)} subjects)",
                 recover, listed=listed, gc_output=g.stdout[-300:])
        shutil.rmtree(cache)


def main() -> None:
    default = Path(os.environ.get("RPPG_TEST_DATA", REPO.parent / "shared" / "data")) / "ubfc-rppg"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default, help="UBFC-rPPG root (default: %(default)s)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--out", type=Path, default=None,
                    help="results JSON (default: benchmarks/results/faults-<date>.json); the rows it already holds "
                         "of cases this run does not repeat are kept")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    tmp = Path(tempfile.mkdtemp(prefix="rppg-faults-"))
    t0 = time.perf_counter()
    try:
        camp = Campaign(args.data, tmp)
        for case in cases:
            n = len(camp.rows)
            try:
                getattr(camp, case)()
            except Exception as exc:  # a case that could not run is a row too, never a silent gap
                import traceback

                traceback.print_exc()
                camp.row(case, "the case script itself failed", True, f"{type(exc).__name__}: {exc}"[:240], None)
            for r in camp.rows[n:]:  # a case with variants prints one row per variant
                r["method"] = case
    finally:
        if not args.keep:
            subprocess.run(["umount", str(tmp / "small_disk")], capture_output=True)
            subprocess.run(["umount", str(tmp / "ro")], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "subjects": len({k.split("/")[0] for k in camp.ref}),
           "clean_build_s": round(camp.clean_s, 1), "clean_bytes": camp.clean_bytes,
           "wall_s": round(time.perf_counter() - t0, 1), "cases_run": cases, "cases": camp.rows}
    print("\n| case | tried | lost or corrupted | message | recover (s) |\n| --- | --- | --- | --- | --- |")
    for r in camp.rows:
        print(f"| {r['case']} | {r['tried']} | {'YES' if r['lost_or_corrupted'] else 'no'} | "
              f"{r['message'].replace('|', '/')} | {r['recover_s'] if r['recover_s'] is not None else '-'} |")
    lost = sum(r["lost_or_corrupted"] for r in camp.rows)
    print(f"\n{len(camp.rows)} row(s), {lost} with lost or corrupted data (or an outcome not met); "
          f"wall {out['wall_s']:.0f} s")
    dest = args.out or REPO / "benchmarks" / "results" / f"faults-{time.strftime('%Y-%m-%d')}.json"
    if dest.exists():  # a run of some cases keeps the rows of the others
        earlier = json.loads(dest.read_text())
        kept = [r for r in earlier.get("cases", []) if r.get("method", r["case"]) not in cases]
        if kept:
            order = {c: i for i, c in enumerate(CASES)}
            out["cases"] = sorted(kept + out["cases"], key=lambda r: order.get(r.get("method", r["case"]), len(CASES)))
            out["earlier_runs"] = earlier.get("earlier_runs", []) + [
                {k: earlier.get(k) for k in ("date", "clean_build_s", "wall_s", "cases_run")}]
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(f"written {dest}")

if __name__ == "__main__":
    main()
