"""Fault campaign over the real UBFC-rPPG subjects (run by hand, never by the tests; ~15-25 min on 2 cores).

    .venv/bin/python benchmarks/faults.py [--data DIR] [--cases kill9,disk_full,...] [--keep]

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

Results: a markdown table and ``benchmarks/results/faults-<date>.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
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
         "two_builds", "truth_edited", "long_video"]


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


def error_line(res) -> str:
    text = (res.stderr or "") + (res.stdout or "")
    lines = [ln.strip(" │") for ln in text.splitlines() if "rror" in ln or "No space" in ln or "Read-only" in ln
             or "changed while" in ln or "not valid JSON" in ln]
    return lines[0][:240] if lines else ""


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
        self.clean_bytes = sum(f.stat().st_size for f in self.clean.rglob("*") if f.is_file())
        step(f"clean build: {self.clean_s:.1f} s, {len(self.ref)} arrays, {self.clean_bytes / 1e6:.0f} MB")

    def row(self, case: str, tried: str, lost: bool, message: str, recover_s: float | None, **detail) -> None:
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
            idx, path = chunk_paths(arr, json.loads((arr / "zarr.json").read_text()))[0]
            if how == "flip":
                b = bytearray(path.read_bytes())
                b[rng.integers(len(b))] ^= 0x04
                path.write_bytes(bytes(b))
            elif how == "truncate":
                path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
            else:
                path.unlink()
            done.append(f"{how} {node.parent.name}/{node.name.split('-')[0]}/{arr.name}")
        clip_chunks = chunk_paths(clips_node / "clips", json.loads((clips_node / "clips" / "zarr.json").read_text()))
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


def main() -> None:
    default = Path(os.environ.get("RPPG_TEST_DATA", REPO.parent / "shared" / "data")) / "ubfc-rppg"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default, help="UBFC-rPPG root (default: %(default)s)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rppg-faults-"))
    try:
        camp = Campaign(args.data, tmp)
        for case in args.cases.split(","):
            try:
                getattr(camp, case)()
            except Exception as exc:  # a case that could not run is a row too, never a silent gap
                import traceback

                traceback.print_exc()
                camp.row(case, "the case script itself failed", True, f"{type(exc).__name__}: {exc}"[:240], None)
    finally:
        if not args.keep:
            subprocess.run(["umount", str(tmp / "small_disk")], capture_output=True)
            subprocess.run(["umount", str(tmp / "ro")], capture_output=True)
            shutil.rmtree(tmp, ignore_errors=True)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "subjects": len({k.split("/")[0] for k in camp.ref}),
           "clean_build_s": round(camp.clean_s, 1), "clean_bytes": camp.clean_bytes, "cases": camp.rows}
    print("\n| case | tried | lost or corrupted | message | recover (s) |\n| --- | --- | --- | --- | --- |")
    for r in camp.rows:
        print(f"| {r['case']} | {r['tried']} | {'YES' if r['lost_or_corrupted'] else 'no'} | "
              f"{r['message'].replace('|', '/')} | {r['recover_s'] if r['recover_s'] is not None else '-'} |")
    lost = sum(r["lost_or_corrupted"] for r in camp.rows)
    print(f"\n{len(camp.rows)} case(s), {lost} with lost or corrupted data")
    dest = REPO / "benchmarks" / "results" / f"faults-{time.strftime('%Y-%m-%d')}.json"
    dest.write_text(json.dumps(out, indent=1, ensure_ascii=False))
    print(f"written {dest}")


if __name__ == "__main__":
    main()
