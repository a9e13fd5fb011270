"""Node plans and the runners that call the stage kernels to write nodes (scheduling is in ``dag.py``).

Stages of one subject::

    video ─▶ decode ─▶ landmarks ─▶ face ─┬─▶ clips ──┐
                 │                        └─▶ st_map ─┤
                 └────────────────────────────────────┴─▶ labels ◀── ground truth

The stages and their order come from the stage declarations (:mod:`rppg_prep.stages`): each
``Stage`` names its inputs and its kernel (``fn``). The streaming stages (``decode``, ``landmarks``,
``face``) are consumers of one pass over the frames (decoding twice would cost more than the rest
of the build); every other stage's kernel reads its input nodes and writes its own. A node's key chains
its stage's name, version and params with its upstream keys and the content hashes of its raw
inputs; a node whose key exists is not recomputed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rppg_prep.datasets import Subject, get_loader, open_source, read_truth
from rppg_prep.errors import GroundTruthError, RppgPrepError, StoreError, VideoDecodeError
from rppg_prep.manifest import SubjectResult
from rppg_prep.pipeline import Pipeline
from rppg_prep.stages import ORDER, STAGES
from rppg_prep.stage import NodeContext, StreamCarry, node_key, node_provenance
from rppg_prep.store import (NodeWriter, fingerprint, node_cache, node_exists, node_path, open_node, parked_node,
                             restore_replaced)

__all__ = ["plan_subject", "video_pass", "run_stage", "raw_files", "RUNNERS", "SubjectResult", "NodePlan",
           "environment_threads"]

log = logging.getLogger(__name__)

# an execution setting: it bounds memory, never the values written (so it is in no key)
# frames in flight stay few: with 2 batches decoded ahead and 2 crop batches in flight, 4-frame batches
# cut two workers' summed peak RSS from 815 to 759 MiB against 8 frames with 3 and 4 (the 8 UBFC-rPPG
# subjects; one process 408 vs 430 MiB), at the same speed within noise; the arrays are bitwise equal
BATCH_FRAMES = 4

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
    inputs : dict of str to (Path, str)
        Raw input role -> (file, content hash entered in the key), for the nodes that read raw
        files (decode: the video; labels: the ground truth).
    """

    stage: str
    key: str
    path: Path
    fresh: bool
    force: bool = False
    inputs: dict[str, tuple[Path, str]] = field(default_factory=dict)


def _file_hash(path: Path, cache: Path, remember: bool = True) -> str:
    return fingerprint(path, cache, remember=remember) if Path(path).exists() else f"missing:{Path(path).name}"


def raw_files(subject: Subject, roles: tuple[str, ...]) -> dict[str, Path]:
    """The subject's raw files for the roles a stage declares (:attr:`rppg_prep.stage.Stage.raw_inputs`).

    Parameters
    ----------
    subject : Subject
    roles : tuple of str
        Of :data:`rppg_prep.stage.RAW_ROLES`.

    Returns
    -------
    dict of str to Path
        Key entry -> file: ``video``, ``frame_file0..`` (the loader's ``frame_clock_files``),
        ``truth0..``; these names enter the node key.
    """
    files: dict[str, Path] = {}
    if "video" in roles:
        files["video"] = subject.video
    if "frame_clock" in roles:
        clock = getattr(get_loader(subject.dataset), "frame_clock_files", lambda s: ())(subject)
        files.update({f"frame_file{i}": Path(p) for i, p in enumerate(clock)})
    if "truth" in roles:
        files.update({f"truth{i}": Path(p) for i, p in enumerate(subject.truth)})
    return files


def _unchanged_inputs(subject: Subject, node: NodePlan) -> None:
    """Raise when a raw input of the node changed since it was keyed: the node would mix two versions."""
    cache = node_cache(node.path)
    for role, (path, planned) in node.inputs.items():
        if _file_hash(path, cache) != planned:
            error = GroundTruthError if role.startswith("truth") else VideoDecodeError
            raise error(f"the file changed while the build ran ({role} of node {node.stage}); nothing computed "
                        "from it was kept; run the build again", subject=subject.id, path=path)


def plan_subject(pipe: Pipeline, subject: Subject, cache: str | Path, *, read_only: bool = False
                 ) -> dict[str, NodePlan]:
    """Key every node of ``subject`` and say which already exist.

    Parameters
    ----------
    pipe : Pipeline
        The resolved pipeline.
    subject : Subject
        One subject of ``pipe.dataset``.
    cache : str or Path
        Store root.
    read_only : bool
        Write nothing (``status``, dry runs): the fingerprint memo is only read, and the old node a
        crashed replace left parked counts as fresh where it lies instead of being moved back.

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
    loader_version = f"{subject.dataset}/{getattr(get_loader(subject.dataset), 'VERSION', '1')}"
    keys: dict[str, str] = {}
    plan = {}
    for name in ORDER:
        st = STAGES[name]
        raw = {role: (p, _file_hash(p, cache, remember=not read_only))
               for role, p in raw_files(subject, st.raw_inputs).items()}
        files = {role: h for role, (_, h) in raw.items()}
        if "truth" in st.raw_inputs:  # the loader reads the truth: a change in how it does is a change
            files["loader"] = loader_version
        key = node_key(st, pipe.params[name], {u: keys[u] for u in st.inputs}, files)
        keys[name] = key
        path = node_path(cache, pipe.dataset, subject.id, name, key)
        # a replace a crash interrupted is finished first (store.restore_replaced): the old node counts
        if read_only:
            fresh = node_exists(path) or parked_node(path) is not None
        else:
            fresh = node_exists(path) or (restore_replaced(path) and node_exists(path))
        plan[name] = NodePlan(name, key, path, fresh, inputs=raw)
    return plan


def _attrs(pipe: Pipeline, subject: Subject, node: NodePlan, plan: dict[str, NodePlan], **extra: Any) -> dict:
    st = STAGES[node.stage]
    return node_provenance(st, node.key, pipe.params[node.stage], {u: plan[u].key for u in st.inputs},
                           subject=subject.id, dataset=pipe.dataset,
                           source={"video": str(subject.video), "truth": [str(p) for p in subject.truth]}, **extra)


@contextlib.contextmanager
def _node_io(subject: Subject, node: NodePlan):
    """An OS error (a full disk, a read-only cache) while a node is built names that node."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, RppgPrepError):
            raise
        raise StoreError(f"I/O error while building node {node.stage}-{node.key[:12]}: {exc.strerror or exc}. "
                         "Nothing of this node was committed; the nodes built before it are kept. Free space "
                         "or fix the cache's permissions, then run the build again", subject=subject.id,
                         path=node.path) from exc


def _ctx(pipe: Pipeline, subject: Subject, name: str, inputs: dict[str, Any], writer: NodeWriter | None,
         progress: ProgressFn) -> NodeContext:
    st = STAGES[name]
    return NodeContext(st, subject, pipe.params[name], inputs, writer,
                       lambda done, total: progress(subject.id, name, done, total),
                       # the loader, then the shared checks; only for a stage whose key follows the truth files
                       truth=(lambda: read_truth(subject)) if "truth" in st.raw_inputs else None)


def video_pass(pipe: Pipeline, subject: Subject, plan: dict[str, NodePlan], res: SubjectResult,
               progress: ProgressFn) -> None:
    """Stream the frames once through the streaming stages (decode, landmarks, face) whose nodes are missing.

    Every streaming stage is a consumer of the pass (its kernel, ``Stage.fn``, given the pass's one
    :class:`~rppg_prep.stage.StreamCarry`): a missing node is computed and written, a fresh one that
    a missing later stage needs is read back. Nodes are committed in stage order, so a face that
    fails still leaves its decode and landmarks nodes.

    Parameters
    ----------
    pipe : Pipeline
        The resolved pipeline.
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
    streaming = [s for s in ORDER if STAGES[s].streams]
    wanted = {s for s in streaming if not plan[s].fresh}
    for name in reversed(streaming):  # a missing stage needs the streaming stages it reads
        if name in wanted:
            wanted |= {u for u in STAGES[name].inputs if u in streaming}
    source = open_source(subject)
    carry = StreamCarry(info=source.info)
    consumers: list[tuple[str, NodeContext, Any]] = []
    committed: set[str] = set()
    try:
        for name in (s for s in streaming if s in wanted):
            node = plan[name]
            with _node_io(subject, node):
                writer = None if node.fresh else NodeWriter(node.path, _attrs(pipe, subject, node, plan),
                                                            replace=node.force)
                try:
                    inputs = {name: open_node(node.path)} if node.fresh else {}
                    ctx = _ctx(pipe, subject, name, inputs, writer, progress)
                    consumers.append((name, ctx, STAGES[name].fn(ctx, carry)))
                except BaseException:
                    if writer is not None:
                        writer.abort()
                    raise
        shown = next((s for s in reversed(streaming) if s in wanted and not plan[s].fresh), streaming[0])
        total = max(source.info.n_frames, 1)
        for batch in source.batches(BATCH_FRAMES):
            for name, _, consumer in consumers:
                with _node_io(subject, plan[name]):
                    consumer.push(batch, carry)
            progress(subject.id, shown, batch.start + len(batch.frames), total)
        res.frames = carry.n_frames
        for name, ctx, consumer in consumers:
            with _node_io(subject, plan[name]):
                consumer.finish(carry)
                res.notes.extend(ctx.notes)
                if ctx.writer is not None:
                    _unchanged_inputs(subject, plan[name])
                    ctx.writer.commit()
                    committed.add(name)
                    res.ran.append(name)
    except BaseException:
        for name, ctx, consumer in consumers:
            consumer.abort()
            if ctx.writer is not None and name not in committed:
                ctx.writer.abort()
        raise
    finally:
        source.close()


def run_stage(name: str, pipe: Pipeline, subject: Subject, plan: dict[str, NodePlan], res: SubjectResult,
              progress: ProgressFn) -> None:
    """Write the node of a stage that reads other nodes (clips, st_map, labels) with its kernel.

    Parameters
    ----------
    name : str
        The stage (not a streaming one).
    pipe : Pipeline
    subject : Subject
    plan : dict of str to NodePlan
        The stage's inputs must be committed.
    res : SubjectResult
        Updated in place: ``ran`` and ``notes``.
    progress : callable (subject, stage, done, total)

    Raises
    ------
    RppgPrepError
        Whatever the kernel raises for bad input (e.g. GroundTruthError), naming the subject.
    """
    st, node = STAGES[name], plan[name]
    inputs = {u: open_node(plan[u].path) for u in st.inputs}
    with _node_io(subject, node), NodeWriter(node.path, _attrs(pipe, subject, node, plan),
                                             replace=node.force) as writer:
        ctx = _ctx(pipe, subject, name, inputs, writer, progress)
        st.fn(ctx)
        _unchanged_inputs(subject, node)
    res.notes.extend(ctx.notes)
    res.ran.append(name)


#: stage -> runner of its task, for every stage that is not fed by the streaming pass
RUNNERS = {name: partial(run_stage, name) for name in ORDER if not STAGES[name].streams}


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
    # a library another thread is importing right now is in sys.modules half-initialised: leave it
    # alone, it reads the environment set above when its import gets there
    set_threads = getattr(sys.modules.get("cv2"), "setNumThreads", None)
    if set_threads is not None:
        set_threads(1)
    zarr_config = getattr(sys.modules.get("zarr"), "config", None)
    if zarr_config is not None:
        zarr_config.set({"threading.max_workers": 1, "async.concurrency": 4})
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass
