"""Pipelines, node plans and the stage runners that write nodes (scheduling is in ``dag.py``).

Stages of one subject::

    video ─▶ decode ─▶ landmarks ─▶ face ─┬─▶ clips ──┐
                 │                        └─▶ st_map ─┤
                 └────────────────────────────────────┴─▶ labels ◀── ground truth

``decode``, ``landmarks`` and ``face`` share one streaming pass over the video when more than one
of them is missing (decoding twice would cost more than the rest of the build). A node's key chains
its stage's name, version and params with its upstream keys and the content hashes of its raw
inputs; a node whose key exists is not recomputed.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rppg_prep.datasets import Subject, get_loader, open_source
from rppg_prep.errors import FaceNotFoundError, VideoDecodeError
from rppg_prep.pipeline import ORDER, STAGES, Pipeline, load_pipeline
from rppg_prep.stage import node_key, node_provenance
from rppg_prep.stages import clips, face, labels, landmarks, st_map
from rppg_prep.store import NodeWriter, fingerprint, node_exists, node_path, open_node

__all__ = ["plan_subject", "video_pass", "RUNNERS", "SubjectResult", "NodePlan", "environment_threads",
           "Pipeline", "load_pipeline", "STAGES", "ORDER"]

log = logging.getLogger(__name__)

# execution settings: they bound memory and overlap, never the values written (so they are in no key)
BATCH_FRAMES = 8  # frames in flight stay few: peak RSS 364 vs 421 MiB at 16, same speed
CROP_IN_FLIGHT = 4  # batches handed to the crop thread and not yet cropped: slack against stalls

ProgressFn = Callable[[str, str, int, int], None]


@dataclass
class NodePlan:
    """One node of a subject's plan.

    Parameters
    ----------
    stage : str
        Stage name.
    key : str
        The node's 64-hex content key.
    path : Path
        Where the node lives (:func:`rppg_prep.store.node_path`).
    fresh : bool
        A complete node with this key exists.
    force : bool
        Recompute it even so (``--force``).
    """

    stage: str
    key: str
    path: Path
    fresh: bool
    force: bool = False


@dataclass
class SubjectResult:
    """What happened to one subject in a build (one record of the manifest).

    Parameters
    ----------
    subject : str
        Subject id.
    status : {"ok", "failed"}
    failed_stage : str, optional
        The stage that failed (or was skipped first).
    error : str, optional
        The error, naming the subject and file.
    frames : int
        Frames decoded.
    seconds : float
        Wall-clock time of the tasks that ran, s.
    bytes : int
        Bytes on disk of the subject's nodes.
    ran : list of str
        Stages computed in this build (the rest were fresh).
    nodes : dict
        stage -> ``{"key": ..., "path": ...}`` (path relative to the cache).
    notes : list of str
        Warnings worth reading (face gaps, filled frame times, clock drift).
    traceback : list of str
        The last lines of the traceback of a failure.
    input_file : str, optional
        The file that caused a failure.
    """

    subject: str
    status: str = "ok"
    failed_stage: str | None = None
    error: str | None = None
    frames: int = 0
    seconds: float = 0.0
    bytes: int = 0
    ran: list[str] = field(default_factory=list)
    nodes: dict[str, dict[str, str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    traceback: list[str] = field(default_factory=list)
    input_file: str | None = None


def _truth_files(subject: Subject, cache: Path) -> dict[str, str]:
    loader = get_loader(subject.dataset)
    files = {"loader": f"{subject.dataset}/{getattr(loader, 'VERSION', '1')}"}
    for i, p in enumerate(subject.truth):
        files[f"truth{i}"] = fingerprint(p, cache) if Path(p).exists() else f"missing:{Path(p).name}"
    return files


def plan_subject(pipe: Pipeline, subject: Subject, cache: str | Path) -> dict[str, NodePlan]:
    """Key every node of ``subject`` and say which already exist.

    Parameters
    ----------
    pipe : Pipeline
        The resolved pipeline.
    subject : Subject
        One subject of ``pipe.dataset``.
    cache : str or Path
        Store root.

    Returns
    -------
    dict of str to NodePlan
        Stage -> its node, for every core stage in :data:`rppg_prep.pipeline.ORDER`.

    Raises
    ------
    VideoDecodeError
        If the video file is missing (nothing can be keyed without it).
    """
    cache = Path(cache)
    if not subject.video.exists():
        raise VideoDecodeError("video file (or frame folder) is missing", subject=subject.id, path=subject.video)
    decode_files = {"video": fingerprint(subject.video, cache)}
    # files the frame source reads besides the video (VIPL-HR's time.txt holds the frame clock)
    for i, p in enumerate(getattr(get_loader(subject.dataset), "frame_clock_files", lambda s: ())(subject)):
        decode_files[f"frame_file{i}"] = fingerprint(p, cache) if Path(p).exists() else f"missing:{Path(p).name}"
    files = {"decode": decode_files, "labels": _truth_files(subject, cache)}
    keys: dict[str, str] = {}
    plan = {}
    for name in ORDER:
        st = STAGES[name]
        key = node_key(st, pipe.params[name], {u: keys[u] for u in st.inputs}, files.get(name, {}))
        keys[name] = key
        path = node_path(cache, pipe.dataset, subject.id, name, key)
        plan[name] = NodePlan(name, key, path, node_exists(path))
    return plan


def _attrs(pipe: Pipeline, subject: Subject, node: NodePlan, plan: dict[str, NodePlan], **extra: Any) -> dict:
    st = STAGES[node.stage]
    return node_provenance(st, node.key, pipe.params[node.stage], {u: plan[u].key for u in st.inputs},
                           subject=subject.id, dataset=pipe.dataset,
                           source={"video": str(subject.video), "truth": [str(p) for p in subject.truth]}, **extra)


class _Appender:
    """Buffers appends so that each write to a growing array fills whole chunks."""

    def __init__(self, writer: NodeWriter, name: str, chunk: int):
        self.w, self.name, self.chunk, self.buf = writer, name, chunk, []
        self.n = 0

    def add(self, data: np.ndarray) -> None:
        self.buf.append(data)
        self.n += len(data)
        if self.n >= self.chunk:
            joined = np.concatenate(self.buf)
            cut = (len(joined) // self.chunk) * self.chunk
            self.w.append(self.name, joined[:cut])
            self.buf, self.n = ([joined[cut:]] if cut < len(joined) else []), len(joined) - cut

    def close(self) -> None:
        if self.buf:
            self.w.append(self.name, np.concatenate(self.buf))
        self.buf, self.n = [], 0


def _gaps(valid: np.ndarray, t_s: np.ndarray) -> list[tuple[float, float]]:
    """(start s, length s) of each run of invalid frames."""
    bad = np.concatenate([[False], ~valid, [False]]).astype(np.int8)
    starts, stops = np.flatnonzero(np.diff(bad) == 1), np.flatnonzero(np.diff(bad) == -1)
    dt = float(np.median(np.diff(t_s))) if len(t_s) > 1 else 0.0
    return [(float(t_s[a]), float(t_s[b - 1] - t_s[a] + dt)) for a, b in zip(starts, stops)]


def video_pass(pipe: Pipeline, subject: Subject, plan: dict[str, NodePlan], res: SubjectResult,
                progress: ProgressFn) -> None:
    """Stream the video once and write whichever of decode / landmarks / face are missing.

    Parameters
    ----------
    pipe : Pipeline
        The resolved pipeline (landmarks and face params).
    subject : Subject
        The subject whose frames are read (:func:`rppg_prep.datasets.open_source`).
    plan : dict of str to NodePlan
        From :func:`plan_subject`; fresh nodes are read, not rewritten.
    res : SubjectResult
        Updated in place: ``frames``, ``ran`` and ``notes``.
    progress : callable (subject, stage, done, total)
        Called after every batch of frames.

    Raises
    ------
    VideoDecodeError
        The frames cannot be decoded.
    FaceNotFoundError
        Fewer than ``face.min_valid_fraction`` of the frames have a tracked face.
    """
    from rppg_prep.sources import repair_times

    need = {s: not plan[s].fresh for s in ("decode", "landmarks", "face")}
    source = open_source(subject)
    info = source.info
    lp, fp = pipe.params["landmarks"], pipe.params["face"]
    writers: list[NodeWriter] = []
    pools: list[ThreadPoolExecutor] = []
    try:
        stored = None if need["landmarks"] else open_node(plan["landmarks"].path)
        detector = landmarks.make_detector(lp) if need["landmarks"] else None
        n_lm = landmarks.N_LANDMARKS[lp.backend]
        if need["landmarks"]:
            lm_w = NodeWriter(plan["landmarks"].path, _attrs(pipe, subject, plan["landmarks"], plan,
                                                            n_landmarks=n_lm, backend=lp.backend),
                              replace=plan["landmarks"].force)
            writers.append(lm_w)
            lm_w.create("landmarks", shape=(0, n_lm, 2), dtype="float32", chunks=(256, n_lm, 2), unit="px",
                        axes=("frame", "landmark", "xy"), doc="landmarks in the source frame, NaN = no face",
                        fill_value=float("nan"))
            lm_w.create("detected", shape=(0,), dtype="bool", chunks=(4096,), axes=("frame",),
                        doc="a face was found", fill_value=False)
            lm_app, det_app = _Appender(lm_w, "landmarks", 256), _Appender(lm_w, "detected", 4096)
        if need["face"]:
            s = fp.size_px
            fc_w = NodeWriter(plan["face"].path, _attrs(pipe, subject, plan["face"], plan), replace=plan["face"].force)
            writers.append(fc_w)
            fc_w.create("frames", shape=(0, s, s, 3), dtype="uint8", chunks=(fp.chunk_frames, s, s, 3),
                        axes=("frame", "y", "x", "channel"), doc="stabilised RGB face crops")
            fc_w.create("box", shape=(0, 4), dtype="float32", chunks=(4096, 4), unit="px",
                        axes=("frame", "xywh"), doc="crop square in the source frame: x0, y0, side, side")
            fc_w.create("valid", shape=(0,), dtype="bool", chunks=(4096,), axes=("frame",),
                        doc="face tracked (gaps <= max_gap_s bridged)")
            apps = {k: _Appender(fc_w, k, fp.chunk_frames if k == "frames" else 4096) for k in ("frames", "box", "valid")}
            tracker = face.FaceTracker(fp, info.fps, (info.height, info.width))
            valid_parts: list[np.ndarray] = []

        def emit(out: dict[str, np.ndarray] | None) -> None:
            if out is not None:
                for k, app in apps.items():
                    app.add(out[k])
                valid_parts.append(out["valid"])

        # cropping and compressing run on a second thread while this one waits on MediaPipe
        crop_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop")
        in_flight: list = []
        pools.append(crop_pool)

        def crop_async(raw: np.ndarray, frames: np.ndarray) -> None:
            in_flight.append(crop_pool.submit(lambda: emit(tracker.push(raw, frames))))
            while len(in_flight) > CROP_IN_FLIGHT:
                in_flight.pop(0).result()

        times = []
        total = max(info.n_frames, 1)
        for batch in source.batches(BATCH_FRAMES):
            times.append(batch.t_s)
            b = len(batch.frames)
            if need["landmarks"] or need["face"]:
                if need["landmarks"]:
                    lm = np.full((b, n_lm, 2), np.nan, dtype=np.float32)
                    det = np.zeros(b, dtype=bool)
                    for i, fr in enumerate(batch.frames):
                        pts = detector(fr)
                        if pts is not None:
                            lm[i], det[i] = pts, True
                    lm_app.add(lm)
                    det_app.add(det)
                else:
                    sl = slice(batch.start, batch.start + b)
                    lm, det = stored["landmarks"][sl], stored["detected"][sl]
                if need["face"]:
                    crop_async(face.raw_boxes(lm, det), batch.frames)
            progress(subject.id, "face" if need["face"] else "decode", batch.start + b, total)
        if detector is not None:
            detector.close()
        if need["face"]:
            for fut in in_flight:
                fut.result()
            crop_pool.shutdown()
        t_s, n_filled = repair_times(np.concatenate(times), info.fps)
        n = len(t_s)
        res.frames = n
        fps_eff = (n - 1) / max(t_s[-1] - t_s[0], 1e-9) if n > 1 else info.fps
        if n_filled:
            res.notes.append(f"{n_filled} frame time(s) missing in the container; filled from {info.fps:.3f} fps")
        if need["decode"]:
            with NodeWriter(plan["decode"].path, _attrs(
                    pipe, subject, plan["decode"], plan, n_frames=n, fps_nominal=info.fps, fps=fps_eff,
                    width=info.width, height=info.height, times_filled=n_filled),
                    replace=plan["decode"].force) as dw:
                dw.write("t_s", t_s, chunks=(max(n, 1),), unit="s", axes=("frame",), doc="frame presentation time")
            res.ran.append("decode")
        if need["landmarks"]:
            lm_app.close()
            det_app.close()
            writers.remove(lm_w)
            lm_w.commit()
            res.ran.append("landmarks")
        if need["face"]:
            emit(tracker.flush())
            valid = np.concatenate(valid_parts)
            if valid.mean() < fp.min_valid_fraction:
                raise FaceNotFoundError(
                    f"a face was tracked in only {100 * valid.mean():.0f}% of {n} frames "
                    f"(at least {100 * fp.min_valid_fraction:.0f}% needed, face.min_valid_fraction)",
                    subject=subject.id, path=subject.video)
            gaps = [g for g in _gaps(valid, t_s) if g[1] >= fp.gap_report_s]
            for start, length in gaps[:5]:
                res.notes.append(f"no face for {length:.1f} s from {start:.1f} s in {subject.video.name}: "
                                 "those frames are marked invalid")
            for app in apps.values():
                app.close()
            fc_w.attrs.update(n_frames=n, fps=fps_eff, size_px=fp.size_px, valid_fraction=float(valid.mean()),
                              gaps_s=[list(g) for g in gaps])
            writers.remove(fc_w)
            fc_w.commit()
            res.ran.append("face")
    except BaseException:
        for pool in pools:
            pool.shutdown(wait=True, cancel_futures=True)
        for w in writers:
            w.abort()
        raise
    finally:
        source.close()


def _clips_stage(pipe: Pipeline, subject: Subject, plan: dict[str, NodePlan], res: SubjectResult,
                 progress: ProgressFn) -> None:
    cp = pipe.params["clips"]
    frames = open_node(plan["face"].path)["frames"]
    n = frames.shape[0]
    win = clips.clip_windows(n, cp.length_frames, cp.stride_frames)
    L, s = cp.length_frames, cp.size_px
    with NodeWriter(plan["clips"].path, _attrs(pipe, subject, plan["clips"], plan, n_clips=len(win)),
                    replace=plan["clips"].force) as w:
        arr = w.create("clips", shape=(len(win), L, s, s, 3), dtype="uint8", chunks=(1, L, s, s, 3),
                       axes=("clip", "frame", "y", "x", "channel"), doc="RGB clip tensors")
        for i, clip in enumerate(clips.iter_clips(lambda a, b: frames[a:min(b, n)], win, s)):
            arr[i] = clip
            progress(subject.id, "clips", i + 1, len(win))
        w.write("window", win, chunks=(max(len(win), 1), 2), unit="frame", axes=("clip", "start_stop"))
    res.ran.append("clips")


def _st_map_stage(pipe: Pipeline, subject: Subject, plan: dict[str, NodePlan], res: SubjectResult,
                  progress: ProgressFn) -> None:
    sp = pipe.params["st_map"]
    fnode = open_node(plan["face"].path)
    frames = fnode["frames"]
    n, h, wd = frames.shape[:3]
    win = st_map.segment_windows(n, float(fnode.attrs["fps"]), sp.segment_s, sp.stride_s)
    cols = st_map.strip_columns(wd, sp.strip_px, sp.margin_frac)
    seg_len = int(win[0, 1] - win[0, 0]) if len(win) else int(round(sp.segment_s * float(fnode.attrs["fps"])))
    shape = (len(win), len(cols), h, sp.strip_px * seg_len, 3)
    with NodeWriter(plan["st_map"].path, _attrs(pipe, subject, plan["st_map"], plan, n_segments=len(win),
                                                n_strips=len(cols)), replace=plan["st_map"].force) as w:
        arr = w.create("images", shape=shape, dtype="uint8", chunks=(1, 1) + shape[2:],
                       axes=("segment", "strip", "y", "x_time", "channel"), doc="ST2S spatiotemporal images, RGB")
        for i, (a, b) in enumerate(win):
            arr[i] = st_map.st_images(frames[a:b], cols, sp.strip_px)
            progress(subject.id, "st_map", i + 1, len(win))
        w.write("window", win, chunks=(max(len(win), 1), 2), unit="frame", axes=("segment", "start_stop"))
        w.write("strip_col", cols, chunks=(max(len(cols), 1),), unit="px", axes=("strip",))
    res.ran.append("st_map")


def _labels_stage(pipe: Pipeline, subject: Subject, plan: dict[str, NodePlan], res: SubjectResult,
                  progress: ProgressFn) -> None:
    loader = get_loader(subject.dataset)
    truth = loader.read_truth(subject)
    t_s = open_node(plan["decode"].path)["t_s"][:]
    cw = open_node(plan["clips"].path)["window"][:]
    sw = open_node(plan["st_map"].path)["window"][:]
    arrays, notes = labels.make_labels(truth, t_s, cw, sw, pipe.params["labels"], subject=subject.id,
                                       path=str(subject.truth[0]))
    res.notes.extend(list(truth.notes) + notes)
    specs = {a.name: a for a in labels.STAGE.outputs}
    with NodeWriter(plan["labels"].path, _attrs(pipe, subject, plan["labels"], plan, notes=list(truth.notes) + notes,
                                                band_hz=list(pipe.params["labels"].band_hz)),
                    replace=plan["labels"].force) as w:
        for name, data in arrays.items():
            sp = specs[name]
            w.write(name, data, chunks=tuple(max(d, 1) for d in data.shape), unit=sp.unit, axes=sp.axes, doc=sp.doc)
    progress(subject.id, "labels", 1, 1)
    res.ran.append("labels")


RUNNERS = {"clips": _clips_stage, "st_map": _st_map_stage, "labels": _labels_stage}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def environment_threads() -> None:
    """One compute thread per library per process: threads fight on small machines (dependencies.md).

    Set through the environment, so that it holds for OpenCV and zarr whenever they are imported
    later (a no-op rebuild never imports them) and costs nothing to call again; libraries already
    imported are set directly. Also caps glibc's malloc arenas at 2: every thread otherwise gets its
    own arena, and the freed frame buffers they keep raised peak RSS by ~90 MB in a one-process build.
    """
    import sys

    for var, value in (("OMP_NUM_THREADS", "1"), ("OPENBLAS_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1"),
                       ("OPENCV_FOR_THREADS_NUM", "1"), ("ZARR_THREADING__MAX_WORKERS", "1"),
                       ("ZARR_ASYNC__CONCURRENCY", "4")):
        os.environ.setdefault(var, value)
    if "cv2" in sys.modules:
        sys.modules["cv2"].setNumThreads(1)
    if "zarr" in sys.modules:
        sys.modules["zarr"].config.set({"threading.max_workers": 1, "async.concurrency": 4})
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
