"""Throughput, memory and store size of `rppg-prep build ubfc` on real UBFC-rPPG videos.

Run by hand, never from the test suite (it takes ~3-4 min on 2 cores)::

    .venv/bin/python benchmarks/preprocess.py [--data DIR] [--keep] [--workers-also 2]

DIR holds subject*/vid.mp4 + ground_truth.txt (default ``$RPPG_TEST_DATA/ubfc-rppg``, else
``<repo>/../shared/data/ubfc-rppg``). The videos are read in place; every cache, log and cut video
goes to a temp dir that is deleted at the end unless ``--keep``. Each build is the real CLI run as
its own subprocess with a fresh cache; its peak RSS comes from ``os.wait4`` (``ru_maxrss``).

Numbers (printed as a markdown table, saved to ``benchmarks/results/preprocess-<date>.json``):

- decode_fps            frames/s: OpenCV FFmpeg (1 decoder thread) read + BGR->RGB of every frame, one process
- build_fps             frames/s: manifest frames / wall s of ``build --workers 1``, all subjects, fresh cache
- build_over_decode     build_fps / decode_fps (1.0 would mean the build costs no more than decoding)
- decode_mesh_fps       frames/s: decode + MediaPipe Face Mesh (tracking) alone, in this process, right
  after the build; build_over_decode_mesh = build_fps / decode_mesh_fps (the machine's speed drifts)
- build_peak_rss_mib    MiB: peak RSS of that build process (ru_maxrss, KiB / 1024)
- store_bytes_per_frame bytes/frame: apparent size of all files under CACHE/ubfc.zarr / frames
  (also ``store_disk_bytes_per_frame``: allocated blocks, as ``du``), and per stage ``<stage>-*`` nodes
- cut_* / full_*        peak RSS (MiB) of subject11 cut to its first 20 s (FFV1 lossless AVI, source fps,
  first N ground-truth samples) vs the full ~68-s subject11 (H.264), each built alone; ffv1_full_* is
  the whole subject11 re-encoded to FFV1 too (same codec as the cut); rss_ratio_* = full / cut
- workersN_*            with ``--workers-also N``: the same full build with N worker processes;
  ``peak_rss_mib`` is the largest single process of the tree (wait4 reports the max, not the sum),
  ``tree_rss_sum_mib`` the peak of the summed RSS of all its processes, sampled every 0.1 s (psutil;
  shared pages are counted once per process)
- every_n (``--every-n``)  per n: build frames/s against decode + mesh, the share of frames the mesh
  ran on, whole-video POS and CHROM MAE (rPPG-Toolbox protocol, with each subject's HR) and the
  POS-label window r at lag 0; and a noise band: the same figures for n = 1 rebuilt with the crop
  0.8 % smaller and larger (face.enlarge 1.19, 1.21), i.e. how far they move for a change that
  should not matter
- cpu_s / other_cpu_s   CPU s (user+sys) of the build's process tree / busy CPU s of everything else on
  the machine during it (/proc/stat); load_* the 1-min load average before / after each step
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil

REPO = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).parent / "rppg-prep"
CUT_S, CUT_SUBJECT = 20.0, "subject11"


def step(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}  (load {os.getloadavg()[0]:.2f})", flush=True)


def decode_fps(videos: list[Path]) -> dict:
    """Decode every frame like the pipeline's decode stage (RGB out), in this process."""
    cv2.setNumThreads(1)
    n, t0 = 0, time.perf_counter()
    for v in videos:
        cap = cv2.VideoCapture(str(v), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
        cap.release()
    dt = time.perf_counter() - t0
    return {"frames": n, "wall_s": round(dt, 2), "fps": round(n / dt, 1)}


def decode_mesh_fps(videos: list[Path], *, direct: bool = False) -> dict:
    """Decode + MediaPipe Face Mesh (tracking mode, no crops, nothing stored): the floor a build stands on.

    Measured in the same run as the build because this machine's speed drifts by +-30 % over minutes.
    By default the mesh is called as MediaPipe documents it (``FaceMesh.process``, then the
    landmarks read from its protobuf objects), as when issue 15 set the goal; ``direct`` uses the
    build's own faster call (:class:`rppg_prep.stages.landmarks.MeshDetector`'s graph path).
    """
    from rppg_prep.stages.landmarks import LandmarkParams, make_detector

    n, t0 = 0, time.perf_counter()
    for v in videos:
        det = make_detector(LandmarkParams())
        if not direct:
            det._input = None  # FaceMesh.process
        cap = cv2.VideoCapture(str(v), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            det(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            n += 1
        cap.release()
        det.close()
    dt = time.perf_counter() - t0
    return {"frames": n, "wall_s": round(dt, 2), "fps": round(n / dt, 1)}


def mesh_ms_by_scale(video: Path, scales=(1.0, 0.5, 0.35), frames: int = 300) -> dict:
    """Face Mesh wall ms per call on the first ``frames`` frames of one video, the frame resized by each scale.

    Issue 15 asked for the mesh on a downscaled frame when the face is large; this says whether it
    pays. (The mesh crops its face ROI from the frame and resizes it to the model's 192 x 192
    input, so the frame size should matter little.) Also the cost of the INTER_AREA resize.
    """
    from rppg_prep.stages.landmarks import LandmarkParams, make_detector

    cap = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    rgb = []
    while len(rgb) < frames:
        ok, bgr = cap.read()
        if not ok:
            break
        rgb.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    cap.release()
    out = {}
    for scale in scales:
        t0 = time.perf_counter()
        small = rgb if scale == 1.0 else [cv2.resize(f, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
                                         for f in rgb]
        resize_ms = 1000 * (time.perf_counter() - t0) / len(rgb)
        det = make_detector(LandmarkParams())
        t0 = time.perf_counter()
        found = sum(det(f) is not None for f in small)
        out[str(scale)] = {"mesh_ms": round(1000 * (time.perf_counter() - t0) / len(small), 3),
                           "resize_ms": round(resize_ms, 3), "faces_found": found, "frames": len(small),
                           "frame_hw": list(small[0].shape[:2])}
        det.close()
    return out


def cpu_busy_s() -> float:
    """Machine-wide busy CPU seconds so far (all cores, /proc/stat: everything but idle and iowait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def build(root: Path, cache: Path, *, subjects: str | None = None, workers: int = 1, pipeline: str = "ubfc") -> dict:
    """Run the CLI build as a child process; wall time, peak RSS (wait4) and manifest totals."""
    cmd = [str(CLI), "build", pipeline, "--root", str(root), "--cache", str(cache), "--workers", str(workers)]
    cmd += ["--subjects", subjects] if subjects else []
    log = cache.with_suffix(".log")
    load0, busy0 = os.getloadavg()[0], cpu_busy_s()
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        tree_peak, done = [0], threading.Event()

        def sample() -> None:  # summed RSS of the process tree (matters with worker processes)
            while not done.wait(0.1):
                try:
                    p = psutil.Process(proc.pid)
                    tree_peak[0] = max(tree_peak[0], sum(c.memory_info().rss for c in [p, *p.children(True)]))
                except psutil.Error:
                    pass

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall, busy = time.perf_counter() - t0, cpu_busy_s() - busy0
        done.set()
        th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        print(f"!! build exited {proc.returncode}; log {log}:\n" + log.read_text()[-4000:], file=sys.stderr)
    cpu = ru.ru_utime + ru.ru_stime
    man = json.loads((cache / "ubfc.builds" / "ubfc.json").read_text())["subjects"]
    frames = sum(s["frames"] for s in man.values())
    failed = {k: s["error"] for k, s in man.items() if s["status"] != "ok"}
    return {"exit_code": proc.returncode, "failed": failed, "subjects": len(man), "frames": frames,
            "manifest_bytes": sum(s["bytes"] for s in man.values()), "wall_s": round(wall, 2),
            "fps": round(frames / wall, 1), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
            "tree_rss_sum_mib": round(tree_peak[0] / 2**20, 1), "cpu_s": round(cpu, 1),
            "other_cpu_s": round(busy - cpu, 1),
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}


def store_sizes(cache: Path, frames: int) -> dict:
    """Apparent and allocated bytes of the whole store, and apparent bytes per stage, per frame."""
    store = cache / "ubfc.zarr"
    files = [f for f in store.rglob("*") if f.is_file()]
    per_stage: dict[str, int] = {}
    for f in files:
        rel = f.relative_to(store).parts
        if len(rel) > 2:  # <subject>/<stage>-<key12>/...
            stage = rel[1].rsplit("-", 1)[0]
            per_stage[stage] = per_stage.get(stage, 0) + f.stat().st_size
    total = sum(f.stat().st_size for f in files)
    disk = sum(f.stat().st_blocks * 512 for f in files)
    from rppg_prep.integrity import chunk_paths

    # the size cost of the crc32c checksums: 4 bytes at the end of every chunk file
    chunks = sum(len(chunk_paths(m.parent)) for m in store.glob("*/*-*/*/zarr.json"))
    return {"store_bytes": total, "store_disk_bytes": disk, "store_files": len(files), "chunks": chunks,
            "crc32c_bytes": 4 * chunks, "crc32c_fraction": round(4 * chunks / max(total, 1), 8),
            "store_bytes_per_frame": round(total / frames), "store_disk_bytes_per_frame": round(disk / frames),
            "stage_bytes_per_frame": {s: round(b / frames) for s, b in sorted(per_stage.items())}}


def make_cut(src: Path, dst: Path, seconds: float = CUT_S) -> dict:
    """First ``seconds`` of src/vid.mp4 as lossless FFV1 AVI + the first N ground-truth samples."""
    dst.mkdir(parents=True)
    cap = cv2.VideoCapture(str(src / "vid.mp4"), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    fps = cap.get(cv2.CAP_PROP_FPS)
    n = int(round(seconds * fps))
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    out = cv2.VideoWriter(str(dst / "vid.avi"), cv2.VideoWriter_fourcc(*"FFV1"), fps, size)
    written = 0
    while written < n:
        ok, bgr = cap.read()
        if not ok:
            break
        out.write(bgr)
        written += 1
    cap.release()
    out.release()
    lines = (src / "ground_truth.txt").read_text().split("\n")[:3]
    (dst / "ground_truth.txt").write_text("\n".join(" ".join(ln.split()[:written]) for ln in lines) + "\n")
    return {"codec": "FFV1 (lossless) in AVI", "fps": round(fps, 3), "frames": written,
            "seconds": round(written / fps, 2), "file_bytes": (dst / "vid.avi").stat().st_size}


def accuracy(cache: Path) -> dict:
    """POS and CHROM whole-video MAE (rPPG-Toolbox protocol) and the POS-label window-mean r at lag 0."""
    import numpy as np

    import rppg_prep
    from rppg_prep.alignment import build_alignment
    from rppg_prep.scoring import evaluate_build

    out = {}
    for method in ("pos", "chrom"):
        scores = evaluate_build(cache, "ubfc", "ubfc", method, mode="toolbox")
        err = np.concatenate([np.abs(s.hr_pred_bpm - s.hr_ref_bpm) for s in scores])
        out[f"{method}_mae_bpm"] = round(float(np.nanmean(err)), 3)
        out[f"{method}_hr_bpm_per_subject"] = {s.subject: round(float(s.hr_pred_bpm[0]), 1) for s in scores}
        out["ref_hr_bpm_per_subject"] = {s.subject: round(float(s.hr_ref_bpm[0]), 1) for s in scores}
    build_nodes = rppg_prep.open_build(cache, "ubfc", "ubfc")
    r0 = [build_alignment(nodes, sid).at(0.0) for sid, nodes in build_nodes.items()]
    out["pos_label_r_lag0"] = round(float(np.mean(r0)), 4)
    out["pos_label_r_lag0_per_subject"] = [round(float(v), 4) for v in r0]
    return out


def sweep_every_n(data: Path, tmp: Path, videos: list[Path], ns: list[int], workers: int | None) -> dict:
    """``landmarks.every_n_frames`` = n for each n: build frames/s, decode + mesh frames/s, accuracy."""
    from rppg_prep.stages.landmarks import LandmarkParams

    out: dict = {"decode_mesh_before": decode_mesh_fps(videos)}
    step(f"   decode + mesh alone: {out['decode_mesh_before']['fps']} frames/s")
    default_n = LandmarkParams().every_n_frames
    workers_n = default_n if default_n in ns else ns[-1]
    for n in ns:
        yaml = write_pipeline(tmp / f"every{n}.yaml", {"landmarks": {"every_n_frames": n}})
        step(f"   every_n_frames = {n}: full build, 1 process")
        b = build(data, tmp / f"every{n}", pipeline=str(yaml))
        man = json.loads((tmp / f"every{n}" / "ubfc.builds" / "ubfc.json").read_text())
        measured = 0
        for rec in man["subjects"].values():
            node = tmp / f"every{n}" / rec["nodes"]["landmarks"]["path"] / "zarr.json"
            measured += json.loads(node.read_text())["attributes"].get("measured_frames", 0)
        out[f"n{n}"] = {"build": b, "measured_fraction": round(measured / max(b["frames"], 1), 4),
                        **accuracy(tmp / f"every{n}")}
        step(f"   n={n}: {b['fps']} frames/s, {out[f'n{n}']}")
        if workers and n == workers_n:
            step(f"   every_n_frames = {n}, --workers {workers}")
            out[f"n{n}_workers{workers}"] = build(data, tmp / f"every{n}w", pipeline=str(yaml), workers=workers)
    if 1 in ns:
        out["noise"] = noise_band(data, tmp, out)
    out["decode_mesh_after"] = decode_mesh_fps(videos)
    out["decode_mesh_direct"] = decode_mesh_fps(videos, direct=True)
    step(f"   decode + mesh alone after: {out['decode_mesh_after']['fps']} frames/s; with the build's direct "
         f"mesh call {out['decode_mesh_direct']['fps']}")
    # last: the frames it holds would raise the RSS a forked build child starts from
    out["mesh_ms_by_scale"] = mesh_ms_by_scale(videos[0], frames=100)
    dm = (out["decode_mesh_before"]["fps"] + out["decode_mesh_after"]["fps"]) / 2
    out["decode_mesh_fps_mean"] = round(dm, 1)
    for n in ns:
        out[f"n{n}"]["build_over_decode_mesh"] = round(out[f"n{n}"]["build"]["fps"] / dm, 3)
    return out


NOISE_ENLARGE = (1.19, 1.21)
#: the accuracy figures of :func:`accuracy` that the noise band covers
FIGURES = ("pos_mae_bpm", "chrom_mae_bpm", "pos_label_r_lag0")


def write_pipeline(path: Path, stages: dict) -> Path:
    """A pipeline config for the UBFC-rPPG build with these stage params (the rest default)."""
    import yaml

    path.write_text(yaml.safe_dump({"name": "ubfc", "dataset": "ubfc", "stages": stages}))
    return path


def noise_band(data: Path, tmp: Path, sw: dict) -> dict:
    """How far the accuracy figures move under a change that should not matter, as a yardstick for n.

    The n = 1 build is rebuilt with ``face.enlarge`` at each of :data:`NOISE_ENLARGE` instead of
    1.2 (crops 0.8 % smaller or larger; the stored landmarks are reused). The band is the range of each figure over
    these two and n = 1 itself: an n whose MAE is no higher than the band's top and whose r is no
    lower than its bottom is accurate within noise.
    """
    runs = {"n1": {k: sw["n1"][k] for k in FIGURES}}
    for e in NOISE_ENLARGE:
        name = f"n1_enlarge{e}"
        shutil.copytree(tmp / "every1", tmp / name)
        yaml = write_pipeline(tmp / f"{name}.yaml", {"landmarks": {"every_n_frames": 1}, "face": {"enlarge": e}})
        step(f"   noise band: n = 1 with face.enlarge = {e} (landmarks reused)")
        b = build(data, tmp / name, pipeline=str(yaml))
        runs[name] = {"exit_code": b["exit_code"], **accuracy(tmp / name)}
    band = {k: [min(r[k] for r in runs.values()), max(r[k] for r in runs.values())] for k in FIGURES}
    within = {}
    for k, v in sw.items():
        if k.startswith("n") and "pos_mae_bpm" in v:
            within[k] = (v["pos_mae_bpm"] <= band["pos_mae_bpm"][1] and v["chrom_mae_bpm"] <= band["chrom_mae_bpm"][1]
                         and v["pos_label_r_lag0"] >= band["pos_label_r_lag0"][0])
    return {"runs": runs, "band": band, "within_band": within}


def sweep_table(sw: dict, ns: list[int]) -> str:
    rows = ["| every_n_frames | build frames/s | / decode+mesh | mesh runs on | POS MAE (bpm) | CHROM MAE (bpm) "
            "| POS-label r at lag 0 | peak RSS (MiB) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in ns:
        r = sw[f"n{n}"]
        rows.append(f"| {n} | {r['build']['fps']} | {r['build_over_decode_mesh']} | {100 * r['measured_fraction']:.1f} % "
                    f"| {r['pos_mae_bpm']} | {r['chrom_mae_bpm']} | {r['pos_label_r_lag0']} | {r['build']['peak_rss_mib']} |")
    rows.append(f"\ndecode + mesh alone (FaceMesh.process; mean of before and after): {sw['decode_mesh_fps_mean']} "
                f"frames/s; with the build's direct mesh call: {sw['decode_mesh_direct']['fps']}")
    rows.append("mesh per call by frame scale: " + ", ".join(
        f"{k}: {v['mesh_ms']} ms (+{v['resize_ms']} ms resize, {v['faces_found']}/{v['frames']} found)"
        for k, v in sw["mesh_ms_by_scale"].items()))
    if "noise" in sw:
        nb = sw["noise"]
        for name, r in nb["runs"].items():
            if name != "n1":
                rows.append(f"{name}: POS MAE {r['pos_mae_bpm']}, CHROM MAE {r['chrom_mae_bpm']}, "
                            f"r {r['pos_label_r_lag0']}")
        rows.append(f"noise band (n = 1, face.enlarge 1.2 and {' and '.join(map(str, NOISE_ENLARGE))}): " + ", ".join(
            f"{k} {lo}-{hi}" for k, (lo, hi) in nb["band"].items()))
        rows.append("within the band: " + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in nb["within_band"].items()))
    for n in ns:
        r = sw[f"n{n}"]
        rows.append(f"n={n} POS HR per subject: " + " ".join(f"{v}" for v in r["pos_hr_bpm_per_subject"].values()))
    rows.append("reference HR per subject: " + " ".join(f"{v}" for v in sw[f"n{ns[0]}"]["ref_hr_bpm_per_subject"].values()))
    for k, v in sw.items():
        if "workers" in k:
            rows.append(f"{k}: {v['fps']} frames/s, summed RSS of the process tree {v['tree_rss_sum_mib']} MiB")
    return "\n".join(rows)


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    git = lambda *a: subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True).stdout.strip()
    return {"nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "cpu_model": cpu,
            "mem_total_gib": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "opencv": cv2.__version__, "platform": platform.platform(), "git_commit": git("rev-parse", "HEAD"),
            "git_dirty": git("status", "--porcelain", "--untracked-files=no").splitlines(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()]}


def table(r: dict, workers: int | None) -> str:
    """The results as a markdown table (RSS in MiB and, for the 500-MB target, decimal MB)."""
    b, s, c, f, v = r["build"], r["store"], r["cut_build"], r["full_build"], r["ffv1_full_build"]
    mem = lambda x: f"{x['peak_rss_mib']} MiB ({x['peak_rss_mib'] * 2**20 / 1e6:.0f} MB)"
    rows = [("pure decode (frames/s)", r["decode"]["fps"]),
            ("build, 1 process (frames/s)", f"{b['fps']} ({b['frames']} frames in {b['wall_s']} s)"),
            ("  CPU s: build / rest of the machine meanwhile", f"{b['cpu_s']} / {b['other_cpu_s']}"),
            ("build / decode", r["build_over_decode"]),
            ("decode + face mesh only, same run (frames/s)", r["decode_mesh"]["fps"]),
            ("build / (decode + face mesh)", r["build_over_decode_mesh"]),
            ("build peak RSS", mem(b)),
            ("store (bytes/frame)", f"{s['store_bytes_per_frame']} (on disk {s['store_disk_bytes_per_frame']})"),
            *[(f"  {k} (bytes/frame)", n) for k, n in s["stage_bytes_per_frame"].items()],
            (f"peak RSS, {CUT_SUBJECT} first {c['frames']} frames (FFV1)", mem(c)),
            (f"peak RSS, {CUT_SUBJECT} all {f['frames']} frames (H.264 source)", mem(f)),
            (f"peak RSS, {CUT_SUBJECT} all {v['frames']} frames re-encoded FFV1", mem(v)),
            ("RSS full / cut: H.264, FFV1", f"{r['rss_ratio_full_over_cut']}, {r['rss_ratio_ffv1_full_over_cut']}")]
    if workers:
        w = r[f"workers{workers}_build"]
        rows += [(f"build, {workers} processes (frames/s)", w["fps"]),
                 ("  RSS max single process / summed tree (MiB)", f"{w['peak_rss_mib']} / {w['tree_rss_sum_mib']}")]
    for name in ("build", "cut_build", "full_build", "ffv1_full_build", f"workers{workers}_build"):
        if r.get(name, {}).get("failed") or r.get(name, {}).get("exit_code"):
            rows.append((f"FAILED in {name}", r[name]["failed"] or f"exit {r[name]['exit_code']}"))
    rows.append(("load average 1 min (start -> end)",
                 f"{r['machine']['loadavg_start'][0]} -> {r['machine']['loadavg_end'][0]}"))
    return "\n| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def main() -> None:
    env_data = os.environ.get("RPPG_TEST_DATA")
    default = Path(env_data) / "ubfc-rppg" if env_data else REPO.parent / "shared" / "data" / "ubfc-rppg"
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default, help=f"UBFC-rPPG root (default {default})")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (caches, logs, cut video)")
    ap.add_argument("--workers-also", "--workers", dest="workers_also", type=int, metavar="N",
                    help="also time a full build with N worker processes")
    ap.add_argument("--every-n", default=None, metavar="N[,N...]",
                    help="only the landmarks.every_n_frames sweep (e.g. 1,2,3,4): build frames/s against decode + "
                         "mesh, POS/CHROM MAE and the POS-label r at lag 0 per n; with --workers-also, the default n "
                         "(or the last) is also built with that many workers")
    args = ap.parse_args()
    videos = sorted(args.data.glob("subject*/vid.mp4"))
    if not videos:
        sys.exit(f"no subject*/vid.mp4 under {args.data}")
    tmp = Path(tempfile.mkdtemp(prefix="rppg-bench-"))
    r: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "data": str(args.data.resolve()),
               "machine": machine(), "tmp": str(tmp)}
    if args.every_n:
        ns = [int(v) for v in args.every_n.split(",")]
        try:
            r["every_n"] = sweep_every_n(args.data, tmp, videos, ns, args.workers_also)
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
        print(sweep_table(r["every_n"], ns))
        out = REPO / "benchmarks" / "results" / f"preprocess-every-n-{datetime.date.today().isoformat()}.json"
        k = 2
        while out.exists():  # several sweeps a day: keep each
            out = out.with_name(f"preprocess-every-n-{datetime.date.today().isoformat()}-run{k}.json")
            k += 1
        out.write_text(json.dumps(r, indent=2) + "\n")
        print(f"\nresults: {out}")
        return
    try:
        step(f"1/4 pure decode of {len(videos)} videos")
        r["decode"] = decode_fps(videos)
        step(f"2/4 full build, 1 process, {len(videos)} subjects (~90 s)")
        r["build"] = build(args.data, tmp / "full")
        r["store"] = store_sizes(tmp / "full", r["build"]["frames"])
        r["build_over_decode"] = round(r["build"]["fps"] / r["decode"]["fps"], 3)
        step("   decode + face mesh only, same videos (the floor under the build)")
        r["decode_mesh"] = decode_mesh_fps(videos)
        r["build_over_decode_mesh"] = round(r["build"]["fps"] / r["decode_mesh"]["fps"], 3)
        step(f"3/4 {CUT_SUBJECT}: first {CUT_S:.0f} s vs full, each built alone")
        r["cut"] = make_cut(args.data / CUT_SUBJECT, tmp / "cutroot" / f"{CUT_SUBJECT}cut")
        r["cut_build"] = build(tmp / "cutroot", tmp / "cut")
        r["full_build"] = build(args.data, tmp / "one", subjects=CUT_SUBJECT)
        r["ffv1_full"] = make_cut(args.data / CUT_SUBJECT, tmp / "ffv1root" / f"{CUT_SUBJECT}ffv1", 1e9)
        r["ffv1_full_build"] = build(tmp / "ffv1root", tmp / "ffv1")
        for k in ("full", "ffv1_full"):
            r[f"rss_ratio_{k}_over_cut"] = round(r[f"{k}_build"]["peak_rss_mib"] / r["cut_build"]["peak_rss_mib"], 3)
        if args.workers_also:
            step(f"4/4 full build with --workers {args.workers_also}")
            r[f"workers{args.workers_also}_build"] = build(args.data, tmp / f"w{args.workers_also}",
                                                           workers=args.workers_also)
        r["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(table(r, args.workers_also))
    out = REPO / "benchmarks" / "results" / f"preprocess-{datetime.date.today().isoformat()}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
