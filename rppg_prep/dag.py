"""The build DAG: (stage, subject) nodes as dask tasks, with locks, failure records and status.

Tasks of one subject (a task per node; the three nodes of the video share one streaming pass)::

    video-<s> (decode, landmarks, face) ─┬─▶ clips-<s> ──┐
                                         ├─▶ st_map-<s> ─┤
                                         └───────────────┴─▶ labels-<s>

Schedulers
----------
``threads`` (default)
    This process, two lanes: one runs the video tasks one subject after another (MediaPipe keeps a
    core busy and ~250 MB of memory per concurrent pass), the other runs every other task as soon as
    its inputs exist. Lanes are sized from the machine: more video lanes on more cores and memory.
``local-cluster``
    A ``dask.distributed.LocalCluster`` of ``workers`` processes, one thread each.
``tcp://HOST:PORT`` or ``tls://HOST:PORT``
    An existing ``dask.distributed`` scheduler; the cache must be on storage every worker sees, at
    the same absolute path. Paths are made absolute before the graph is built (a worker has a
    working directory of its own), and a node a worker reports written that this client cannot see
    fails its subject. ``tls://`` takes a ``distributed.Security`` (``security=``, or dask's
    ``distributed.comm.tls.*`` config). Anyone who can reach a plain ``tcp://`` scheduler can run
    code on its workers and on this client (tasks and results are pickles); ``local-cluster``
    listens on 127.0.0.1 only, with no HTTP listener unless ``dashboard=True``.

A task never raises for bad input: it returns an outcome with the error, the first lines of the
traceback and the input file, and its dependants are skipped. A worker that dies is recorded as a
failure of the tasks it held. Every node is written under a file lock and committed atomically, so
two builds on one cache wait for each other instead of writing the same node twice. A build (and
:func:`repair`) holds a build lock of its own for its whole run (:func:`rppg_prep.store.build_lock`):
nodes are recorded in the manifest only as each subject finishes, so :func:`gc` refuses to run
meanwhile, and a build waits for a running gc before it starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from rppg_prep.build import (RUNNERS, NodePlan, SubjectResult, dir_bytes, environment_threads, plan_subject,
                             video_pass)
from rppg_prep.datasets import Subject
from rppg_prep.pipeline import ORDER, STAGES, Pipeline
from rppg_prep.errors import ConfigError, ManifestError, RppgPrepError, VideoDecodeError
from rppg_prep.manifest import config_digest, forget_superseded, read_manifest, record_build, referenced_nodes
from rppg_prep.store import gc_lock, holding_build_lock, node_attrs, node_bytes, node_exists, node_lock, open_node

__all__ = ["run_build", "subject_status", "gc", "repair", "VIDEO_STAGES", "TASK_STAGES"]

log = logging.getLogger(__name__)

#: the stages fed by the one streaming pass over the frames: one task, "video"
VIDEO_STAGES = tuple(s for s in ORDER if STAGES[s].streams)
#: task name -> stages it writes (derived from the stage declarations)
TASK_STAGES = {"video": VIDEO_STAGES, **{s: (s,) for s in ORDER if not STAGES[s].streams}}


def _task_of(stage: str) -> str:
    return "video" if stage in VIDEO_STAGES else stage


#: task name -> the tasks whose nodes it reads (from the stages' declared inputs)
TASK_DEPS = {task: tuple(dict.fromkeys(_task_of(u) for s in stages for u in STAGES[s].inputs if _task_of(u) != task))
             for task, stages in TASK_STAGES.items()}
#: memory one concurrent video pass may take, bytes (MediaPipe graph + frames in flight, measured ~250 MB)
VIDEO_LANE_BYTES = 600 * 2**20
TRACEBACK_LINES = 8

ProgressFn = Callable[[str, str, int, int], None]


@dataclass
class Outcome:
    """What one task did."""

    subject: str
    task: str
    status: str = "ok"  # ok | failed | skipped
    stage: str | None = None  # the stage that failed
    error: str | None = None
    traceback: list[str] = field(default_factory=list)
    input_file: str | None = None
    result: SubjectResult | None = None


# --------------------------------------------------------------------------- tasks

def _locked_plan(cache: str | Path, plan: dict[str, NodePlan], stages: Iterable[str]) -> ExitStack:
    """Hold the locks of the missing nodes among ``stages`` (sorted by key: no deadlock), then re-check."""
    stack = ExitStack()
    todo = sorted((plan[s] for s in stages if not plan[s].fresh), key=lambda p: p.key)
    for node in todo:
        stack.enter_context(node_lock(cache, node.key))
        if not node.force and node_exists(node.path):
            node.fresh = True  # another build committed it while we waited
    return stack


def _stage_input(subject: Subject, stage: str) -> str:
    """The raw file ``stage`` reads (labels: the ground truth; the video stages: the video), for errors.

    A stage with no raw input of its own (clips, st_map read the face node) names the video its
    input derives from.
    """
    from rppg_prep.build import _raw_inputs

    try:
        raw = _raw_inputs(subject)
    except Exception:  # naming a file must never hide the error it names
        return str(subject.video)
    files = raw.get("decode" if stage in VIDEO_STAGES else stage) or raw["decode"]
    return str(next(iter(files.values()), subject.video))


def _failed(subject: Subject, task: str, stage: str, exc: BaseException) -> Outcome:
    if isinstance(exc, VideoDecodeError):
        stage = "decode"
    tb = traceback.format_exception(type(exc), exc, exc.__traceback__)
    own = _stage_input(subject, stage)
    if isinstance(exc, RppgPrepError):
        message = str(exc)
        input_file = exc.path or own
    else:  # a bug: still name the subject and the failing stage's own input, and keep the traceback
        message = f"subject {subject.id}, file {own}: {type(exc).__name__}: {exc}"
        input_file = own
    lines = [ln.rstrip() for chunk in tb[-TRACEBACK_LINES:] for ln in chunk.splitlines()][-TRACEBACK_LINES:]
    log.debug("subject %s, %s failed:\n%s", subject.id, stage, "".join(tb))
    return Outcome(subject.id, task, "failed", stage, message, lines, input_file)


def run_task(task: str, pipe: Pipeline, subject: Subject, cache: str, plan: dict[str, NodePlan],
             progress: ProgressFn | None, *upstream: Outcome) -> Outcome:
    """Run one task (module-level and picklable, for dask.distributed).

    Skips when an upstream task failed; otherwise locks its missing nodes, re-checks them and
    builds what is still missing. Never raises for bad input or bugs in a stage.
    """
    _inject_fault(task, subject)
    environment_threads()  # again in this process: a dask.distributed worker is a process of its own
    # a video task's only upstream is the previous video pass of its lane: an ordering edge, not data
    bad = [] if task == "video" else [u for u in upstream if u.status != "ok"]
    if bad:
        return Outcome(subject.id, task, "skipped", TASK_STAGES[task][0],
                       f"not built: {bad[0].task} of subject {subject.id} did not finish")
    res = SubjectResult(subject.id)
    t0 = time.perf_counter()
    progress = progress or (lambda *a: None)
    stage = TASK_STAGES[task][0]
    try:
        with _locked_plan(cache, plan, TASK_STAGES[task]):
            if task == "video":
                if not all(plan[s].fresh for s in VIDEO_STAGES):
                    stage = "face"
                    video_pass(pipe, subject, plan, res, progress)
            elif not plan[task].fresh:
                RUNNERS[task](pipe, subject, plan, res, progress)
    except Exception as exc:
        return _failed(subject, task, stage, exc)
    res.seconds = time.perf_counter() - t0
    return Outcome(subject.id, task, result=res)


def _inject_fault(task: str, subject: Subject) -> None:
    """Fault injection for the tests: ``RPPG_PREP_FAULT=kill:<task>:<subject>`` kills the worker process."""
    fault = os.environ.get("RPPG_PREP_FAULT", "")
    if fault == f"kill:{task}:{subject.id}":
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _absolute(cache: str | Path, root: str | Path | None, subjects: list[Subject]):
    """Cache, root and the subjects' files as absolute paths (symlinks kept): a dask.distributed
    worker resolves a relative path against its own working directory, not this process's."""
    ab = lambda p: Path(os.path.abspath(p))  # noqa: E731
    return (ab(cache), None if root is None else ab(root),
            [replace(s, video=ab(s.video), truth=tuple(ab(p) for p in s.truth)) for s in subjects])


def _client_sees(on_outcome: Callable[[Outcome], None], plans: dict[str, dict[str, NodePlan]], out: Outcome) -> None:
    """Pass a worker's outcome on, failed where a node it reports written is not where this client looks."""
    if out.status == "ok":
        for stage in TASK_STAGES[out.task]:
            path = plans[out.subject][stage].path
            if not node_exists(path):
                out = Outcome(out.subject, out.task, "failed", stage,
                              f"subject {out.subject}: a worker reported node {stage} built, but this client "
                              f"does not see it at {path}; the cache must be on storage every worker sees, at the "
                              "same absolute path")
                break
    on_outcome(out)


def _security(scheduler: str, security: Any) -> Any:
    """The ``distributed.Security`` of a tls:// scheduler (given, or from dask's config); None otherwise."""
    if not scheduler.startswith("tls://"):
        if security:
            raise ConfigError(f"TLS settings were given but the scheduler {scheduler!r} is not tls://HOST:PORT")
        return None
    import dask
    from distributed import Security

    if security is None and dask.config.get("distributed.client.security-loader", None):
        return None  # the Client calls the configured loader
    if not isinstance(security, Security):
        security = Security(**(security or {}))  # unset fields from distributed.comm.tls.* in dask's config
    if not (security.tls_ca_file and security.tls_client_cert):
        raise ConfigError(f"scheduler {scheduler} is tls:// but no CA file and client certificate are set: pass "
                          "--tls-ca-file, --tls-cert and --tls-key, or set distributed.comm.tls.ca-file and "
                          "distributed.comm.tls.client.cert (and .key) in dask's config")
    return security


def _task_key(task: str, subject: Subject, plan: dict[str, NodePlan]) -> str:
    node = plan["face" if task == "video" else task]
    return f"{task}-{node.key[:16]}-{subject.id}"


# --------------------------------------------------------------------------- graph and execution

def build_graph(pipe: Pipeline, plans: list[tuple[Subject, dict[str, NodePlan]]], cache: str | Path, *,
                video_lanes: int | None, progress: ProgressFn | None) -> tuple[dict, list[str]]:
    """A dask graph of every task, and the keys of the tasks whose outcomes are wanted.

    With ``video_lanes`` set, video task k also waits for video task k - video_lanes, so at most
    that many video passes run at once (their memory adds up); ``None`` leaves them free.
    """
    dsk: dict[str, Any] = {}
    keys: list[str] = []
    videos: list[str] = []
    for subject, plan in plans:
        names = {t: _task_key(t, subject, plan) for t in TASK_STAGES}
        for task, deps in TASK_DEPS.items():
            args = [names[d] for d in deps]
            if task == "video" and video_lanes and len(videos) >= video_lanes:
                args.append(videos[-video_lanes])  # an ordering edge only: its outcome is ignored
            dsk[names[task]] = (partial(run_task, task, pipe, subject, str(cache), plan, progress), *args)
            keys.append(names[task])
        videos.append(names["video"])
    return dsk, keys


def batch_keys(args: tuple, known: set) -> list:
    """The task keys of one batch that ``dask.local`` hands to its pool, checked.

    The one place that reads a private convention of dask: ``dask.local.get_async`` calls
    ``pool.submit(batch_execute_tasks, batch)`` with ``batch`` a list of tuples that each start with
    a task key. dask documents no way to route its local tasks, so :class:`_LaneExecutor` reads the
    keys here. A dask release that changes the convention raises here, at the first task, rather
    than sending video tasks to the wrong lane (tests/test_dag.py checks it on the installed dask).

    Parameters
    ----------
    args : tuple
        The positional arguments after the function that the pool's ``submit`` received.
    known : set
        Every key of the graph being run.

    Returns
    -------
    list
        The batch's task keys.

    Raises
    ------
    RuntimeError
        When the batch does not have that shape.
    """
    batch = args[0] if len(args) == 1 else None
    if not isinstance(batch, list) or not all(isinstance(item, tuple) and item and item[0] in known
                                             for item in batch):
        import dask

        raise RuntimeError(f"dask {dask.__version__} hands its pool tasks in a form rppg-prep does not know "
                           "(rppg_prep.dag.batch_keys); run with --scheduler local-cluster, or install the "
                           "dask version pinned in pyproject.toml")
    return [item[0] for item in batch]


class _LaneExecutor(Executor):
    """Routes dask's local tasks to a video lane and a stage lane (dask.local has no resources)."""

    def __init__(self, video_threads: int, stage_threads: int, video_keys: set, keys: set):
        self._video = ThreadPoolExecutor(video_threads, thread_name_prefix="video")
        self._stage = ThreadPoolExecutor(stage_threads, thread_name_prefix="stage")
        self._max_workers = 1024  # let dask hand over every ready task; the lanes bound concurrency
        self._video_keys, self._keys = video_keys, keys

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        is_video = any(key in self._video_keys for key in batch_keys(args, self._keys))
        return (self._video if is_video else self._stage).submit(fn, *args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._video.shutdown(wait, cancel_futures=cancel_futures)
        self._stage.shutdown(wait, cancel_futures=cancel_futures)


def machine_lanes() -> tuple[int, int]:
    """(video lanes, stage lanes) for this machine: a video lane per 2 cores and per 600 MB free."""
    import psutil

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    free = psutil.virtual_memory().available
    video = max(1, min(cores // 2, int(free // VIDEO_LANE_BYTES)))
    return video, max(1, cores - video)


def _run_threads(dsk: dict, keys: list[str], on_outcome: Callable[[Outcome], None]) -> None:
    import dask.threaded
    from dask.callbacks import Callback

    video, stage = machine_lanes()

    pool = _LaneExecutor(video, stage, {k for k in dsk if str(k).startswith("video-")}, set(dsk))
    try:
        with Callback(posttask=lambda key, result, dsk, state, worker_id: on_outcome(result)):
            dask.threaded.get(dsk, keys, pool=pool, chunksize=1)
    finally:
        pool.shutdown()


def _lost(key: str, subject: str, exc: BaseException | None) -> Outcome:
    """The outcome of a task that a dask.distributed worker took down with it."""
    task = key.split("-", 1)[0]
    culprit = str(getattr(exc, "task", None) or key)
    if culprit != key:  # it was an upstream task that killed its worker
        return Outcome(subject, task, "skipped", TASK_STAGES[task][0],
                       f"not built: {culprit.split('-', 1)[0]} of subject {subject} did not finish")
    return Outcome(subject, task, "failed", TASK_STAGES[task][0],
                   f"subject {subject}: the worker process died while running {task} "
                   f"({type(exc).__name__}: {exc})")


def _stop_http(dask_worker) -> None:  # noqa: ANN001 - run on each worker by Client.run
    dask_worker.http_server.stop()


def _local_cluster(workers: int, dashboard: bool):
    """A LocalCluster listening on 127.0.0.1 only, with no HTTP listener unless ``dashboard``."""
    import dask
    from distributed import LocalCluster

    # a task per thread and no more: tasks queued on a worker would die with it when it is killed
    settings: dict[str, Any] = {"distributed.scheduler.worker-saturation": 1.0}
    if not dashboard:  # dask serves info pages and metrics over HTTP even without a dashboard
        settings.update({"distributed.scheduler.http.routes": [], "distributed.worker.http.routes": []})
    with dask.config.set(settings):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0" if dashboard else None)
    if dashboard:
        log.warning("dask dashboard: %s", cluster.dashboard_link)
    else:
        cluster.scheduler.http_server.stop()
    return cluster


def _run_distributed(dsk: dict, keys: list[str], scheduler: str, workers: int,
                     on_outcome: Callable[[Outcome], None], subjects: dict[str, str], *,
                     security: Any = None, dashboard: bool = False) -> None:
    from distributed import Client, as_completed

    if scheduler == "local-cluster":
        cluster = _local_cluster(workers, dashboard)
        client = Client(cluster)
    else:
        try:
            cluster, client = None, Client(scheduler, security=security)
        except OSError as exc:  # unreachable, or a TLS handshake refused (ssl.SSLError is an OSError)
            raise ConfigError(f"cannot connect to the dask scheduler {scheduler}: {exc}") from None
    try:
        if cluster is not None and not dashboard:
            client.run(_stop_http)  # the workers' HTTP listeners, serving nothing now, closed too
        futures = client.get(dsk, keys, sync=False)
        by_future = dict(zip(futures, keys))
        for fut in as_completed(futures):
            key = by_future[fut]
            try:  # result() also waits for a result lost with its worker to be recomputed
                out = fut.result()
            except Exception as exc:  # only a dead worker gets here: tasks catch everything else
                out = _lost(key, subjects[key], exc)
            on_outcome(out)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# --------------------------------------------------------------------------- the build

def _merge(result: SubjectResult, out: Outcome) -> None:
    if out.status == "ok" and out.result is not None:
        r = out.result
        result.ran += r.ran
        result.notes += r.notes
        result.frames = result.frames or r.frames
        result.seconds += r.seconds
    elif result.status == "ok" or out.status == "failed":
        # a real failure beats a "not built" skip; of two failures (a dead worker can take several
        # tasks with it, in whatever order the scheduler reports them) the earliest stage is reported
        earlier = (out.status == "failed" and result.failed_stage in ORDER and out.stage in ORDER
                   and ORDER.index(out.stage) < ORDER.index(result.failed_stage))
        if result.status == "ok" or result.error is None or result.error.startswith("not built") or earlier:
            result.status, result.failed_stage, result.error = "failed", out.stage, out.error
            result.traceback, result.input_file = out.traceback, out.input_file


def _finalize(result: SubjectResult, plan: dict[str, NodePlan] | None) -> SubjectResult:
    result.ran.sort(key=ORDER.index)
    if plan is not None and result.status == "ok":
        if not result.frames and node_exists(plan["decode"].path):
            result.frames = int(node_attrs(plan["decode"].path)["n_frames"])
        result.bytes = sum(node_bytes(p.path) for p in plan.values())
    return result


@holding_build_lock  # gc refuses while a build runs: its nodes are recorded only as each subject ends
def run_build(pipe: Pipeline, subjects: list[Subject], cache: str | Path, *, root: str | Path | None = None,
              scheduler: str = "threads", workers: int = 1, force: Iterable[str] = (),
              force_nodes: Iterable[tuple[str, str]] = (),
              security: Any = None, dashboard: bool = False,
              progress: ProgressFn | None = None,
              on_result: Callable[[SubjectResult], None] | None = None) -> list[SubjectResult]:
    """Build ``subjects`` and return one result per subject, in the order given.

    Parameters
    ----------
    pipe : Pipeline
    subjects : list of Subject
    cache : str or Path
        Store root.
    root : str or Path, optional
        Dataset root, recorded in the manifest (which is updated as each subject finishes).
    scheduler : {"threads", "local-cluster"} or "tcp://HOST:PORT" or "tls://HOST:PORT"
    workers : int
        Worker processes of a ``local-cluster``.
    force : iterable of str
        Stages to recompute even where their node exists.
    force_nodes : iterable of (subject, stage)
        Single nodes to recompute (``rppg-prep verify --repair``); the new node replaces the old
        one atomically.
    security : distributed.Security or dict of its arguments, optional
        TLS files of a ``tls://`` scheduler; unset ones come from dask's config
        (``distributed.comm.tls.*``).
    dashboard : bool
        Serve dask's dashboard on 127.0.0.1 (a free port; the link is logged); ``local-cluster`` only.
    progress : callable (subject, stage, done, total), optional
        Frame-level progress (``threads`` only).
    on_result : callable (SubjectResult), optional
        Called as each subject finishes.

    Returns
    -------
    list of SubjectResult
        One per subject, in the order given; a failed subject names its stage, error and file,
        and never stops the others.

    Raises
    ------
    ConfigError
        Unknown ``force`` stage or scheduler, a tls:// scheduler without a CA file and client
        certificate, TLS settings for another scheduler, or a scheduler that cannot be reached.
    """
    force, force_nodes = tuple(force), tuple(force_nodes)
    unknown = sorted(set(force) - set(ORDER) | {st for _, st in force_nodes} - set(ORDER))
    if unknown:
        raise ConfigError(f"--force names unknown stage(s) {unknown}; stages: {list(ORDER)}")
    if scheduler not in ("threads", "local-cluster") and not scheduler.startswith(("tcp://", "tls://")):
        raise ConfigError(f"unknown scheduler {scheduler!r}: use threads, local-cluster, tcp://HOST:PORT "
                          "or tls://HOST:PORT")
    security = _security(scheduler, security)
    cache, root, subjects = _absolute(cache, root, subjects)  # the workers may run in another directory
    results = {s.id: SubjectResult(s.id) for s in subjects}
    plans: list[tuple[Subject, dict[str, NodePlan]]] = []
    plan_of: dict[str, dict[str, NodePlan]] = {}
    for subj in subjects:
        try:
            plan = plan_subject(pipe, subj, cache)
        except Exception as exc:  # a missing video: nothing of this subject can be keyed
            _merge(results[subj.id], _failed(subj, "video", "decode", exc))
            continue
        for name in force + tuple(st for sid, st in force_nodes if sid == subj.id):
            plan[name].fresh, plan[name].force = False, True
        results[subj.id].nodes = {s: {"key": p.key, "path": p.path.relative_to(Path(cache)).as_posix()}
                                  for s, p in plan.items()}
        plans.append((subj, plan))
        plan_of[subj.id] = plan
    remaining = {s.id: len(TASK_STAGES) for s, _ in plans}

    def done(sid: str) -> None:
        res = _finalize(results[sid], plan_of.get(sid))
        if root is not None:
            record_build(cache, pipe, root, [res])
        if on_result:
            on_result(res)

    for subj in subjects:
        if subj.id not in plan_of:
            done(subj.id)

    def on_outcome(out: Outcome) -> None:
        _merge(results[out.subject], out)
        remaining[out.subject] -= 1
        if remaining[out.subject] == 0:
            done(out.subject)

    for subj, plan in [(s, p) for s, p in plans if all(n.fresh for n in p.values())]:
        done(subj.id)  # nothing to run: no task, no scheduler (a no-op rebuild stays fast)
    plans = [(s, p) for s, p in plans if not all(n.fresh for n in p.values())]
    if plans:
        threads = scheduler == "threads"
        lanes = machine_lanes()[0] if threads else None
        dsk, keys = build_graph(pipe, plans, cache, video_lanes=lanes, progress=progress if threads else None)
        if threads:
            _run_threads(dsk, keys, on_outcome)
        else:
            owners = {k: next(s.id for s, _ in plans if k.endswith("-" + s.id)) for k in keys}
            _run_distributed(dsk, keys, scheduler, workers, partial(_client_sees, on_outcome, plan_of), owners,
                             security=security, dashboard=dashboard)
    return [results[s.id] for s in subjects]


# --------------------------------------------------------------------------- status and gc

def _why_stale(old_attrs: dict[str, Any], pipe: Pipeline, stage: str, plan: dict[str, NodePlan]) -> str:
    new_params = pipe.config()[stage]
    changed = [f"{k} {old_attrs.get('params', {}).get(k)!r} -> {v!r}" for k, v in new_params.items()
               if old_attrs.get("params", {}).get(k) != v]
    if changed:
        return "params changed: " + ", ".join(changed)
    ups = [u for u, k in old_attrs.get("inputs", {}).items() if u in plan and plan[u].key != k]
    if ups:
        return "upstream changed: " + ", ".join(ups)
    if old_attrs.get("version") is not None:
        return "stage version or input file changed"
    return "key changed"


def subject_status(pipe: Pipeline, subject: Subject, cache: str | Path) -> dict[str, tuple[str, str]]:
    """Per stage of ``subject``: whether its node is fresh for the current config, and why not.

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
    dict of str to (str, str)
        Stage -> (``fresh`` | ``stale`` | ``missing`` | ``failed``, reason): a stale node names the
        params or upstream nodes that changed; a failed one carries the recorded error.
    """
    try:
        rec = read_manifest(cache, pipe.dataset, pipe.name).get("subjects", {}).get(subject.id, {})
    except ManifestError as exc:  # a manifest that does not validate is reported, never read as "no record"
        return {s: ("failed", str(exc)) for s in ORDER}
    except RppgPrepError:  # no build yet
        rec = {}
    try:
        plan = plan_subject(pipe, subject, cache, read_only=True)
    except RppgPrepError as exc:
        return {s: ("failed", str(exc)) for s in ORDER}
    out: dict[str, tuple[str, str]] = {}
    failed_upstream = None
    for stage in ORDER:
        node = plan[stage]
        old = rec.get("nodes", {}).get(stage, {})
        if node.fresh:
            out[stage] = ("fresh", "")
        elif rec.get("status") == "failed" and rec.get("failed_stage") == stage and old.get("key") == node.key:
            out[stage] = ("failed", rec.get("error") or "")
            failed_upstream = stage
        elif failed_upstream:
            out[stage] = ("missing", f"upstream {failed_upstream} failed")
        elif old.get("key") and old["key"] != node.key:
            old_path = Path(cache) / old["path"]
            attrs = dict(open_node(old_path).attrs) if node_exists(old_path) else {}
            out[stage] = ("stale", _why_stale(attrs, pipe, stage, plan))
        else:
            out[stage] = ("missing", "never built with this config")
    return out


def _referenced(cache: Path, *, older_than_days: float | None = None, all_stale: bool = False) -> set[Path]:
    return referenced_nodes(cache, older_than_days=older_than_days, all_stale=all_stale)


def _node_dirs(cache: Path) -> Iterator[Path]:
    for store in cache.glob("*.zarr"):
        for subject in (p for p in store.iterdir() if p.is_dir()):
            yield from (p for p in subject.iterdir() if p.is_dir())


def gc(cache: str | Path, *, dry_run: bool = False, older_than_days: float | None = None,
       all_stale: bool = False) -> tuple[list[Path], int]:
    """Remove nodes no build manifest lists, and partial nodes no build is writing.

    The rule: a node is removed only when no manifest lists it, neither as a subject's current
    node nor as a superseded one (a node that a later build of its subject replaced). A manifest
    keeps every subject ever built under its pipeline name, whatever ``--root``, config or
    ``--subjects`` a later build had (:func:`rppg_prep.manifest.record_build`). Superseded nodes
    go only when asked: ``older_than_days`` removes those superseded more than that many days ago,
    ``all_stale`` all of them (the manifests then forget them).

    Safety: gc holds the cache alone (:func:`rppg_prep.store.gc_lock`). While any build holds its
    build lock (:func:`run_build`, :func:`repair` and ST2S's derived nodes hold one from before they
    plan until their nodes are recorded) gc removes nothing and raises :class:`CacheBusyError`; a
    build that starts during a gc waits for it to finish. Every manifest, nested folders too, is
    read and validated first (:func:`rppg_prep.manifest.referenced_nodes`): one that cannot be read
    or does not validate stops gc before anything is removed.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dry_run : bool
        List what would be removed and remove nothing (the manifests are not changed either).
    older_than_days : float, optional
        Also remove superseded nodes superseded more than this many days ago.
    all_stale : bool
        Also remove every superseded node.

    Returns
    -------
    removed : list of Path
        Node and partial folders removed (or that would be).
    bytes_freed : int
        Their size on disk.

    Raises
    ------
    CacheBusyError
        A build is running on this cache; nothing was removed.
    ManifestError
        A manifest cannot be read or does not validate; nothing was removed.
    """
    cache = Path(cache)
    if not cache.is_dir():
        return [], 0
    with gc_lock(cache):
        if not dry_run:  # a replace a crash interrupted puts its old node back first (never deleted)
            from rppg_prep.store import recover_replaced

            recover_replaced(cache)
        refs = _referenced(cache, older_than_days=older_than_days, all_stale=all_stale)
        victims = [p for p in _node_dirs(cache) if p.resolve() not in refs]
        for part in sorted((cache / ".partial").glob("*")) if (cache / ".partial").exists() else []:
            key = part.name.split(".", 1)[0].rsplit("-", 1)[-1]
            try:
                with node_lock(cache, key, timeout_s=0):
                    victims.append(part)
            except Exception:  # a running build holds it
                continue
        freed = sum(dir_bytes(p) for p in victims)
        if not dry_run:
            forget_superseded(cache, older_than_days=older_than_days, all_stale=all_stale)
            for p in victims:
                shutil.rmtree(p, ignore_errors=True)
            for store in cache.glob("*.zarr"):
                for subject in (p for p in store.iterdir() if p.is_dir()):
                    if not any(c.is_dir() for c in subject.iterdir()):
                        shutil.rmtree(subject, ignore_errors=True)
    return victims, freed


@holding_build_lock
def repair(pipe: Pipeline, cache: str | Path, problems: list, *,
           progress: ProgressFn | None = None) -> tuple[list[SubjectResult], list[str]]:
    """Rebuild exactly the nodes :func:`rppg_prep.integrity.verify_build` found damaged.

    Each damaged core node is recomputed from the dataset root the manifest records and replaces
    the damaged one atomically; every other node is kept. A damaged node derived from a trained
    model (ST2S's ``st2s_pred`` / ``split``) cannot be rebuilt without retraining: it is removed
    and dropped from the manifest.

    Parameters
    ----------
    pipe : Pipeline
        The build's pipeline (its config must be the manifest's).
    cache : str or Path
        Store root.
    problems : list of ChunkProblem
        From :func:`rppg_prep.integrity.verify_build`.
    progress : callable (subject, stage, done, total), optional

    Returns
    -------
    results : list of SubjectResult
        One per subject rebuilt; a damaged subject no longer under the recorded root is a failed
        result naming the subject and the root (the others are still repaired).
    removed : list of str
        Derived nodes removed (rebuild them with ``rppg-prep train st2s``).

    Raises
    ------
    ConfigError
        ``pipe``'s config differs from the build's, or a damaged subject was built with another
        config (the manifest keeps subjects of earlier builds).
    DatasetLayoutError
        The dataset root of the build (each subject's own root) is gone.
    """
    from rppg_prep.datasets import get_loader
    from rppg_prep.manifest import forget_nodes

    man = read_manifest(cache, pipe.dataset, pipe.name)
    if man.get("config") != pipe.config():
        raise ConfigError(f"pipeline {pipe.name!r} now resolves to another config than the one the build used; "
                          "repair rebuilds with the build's own settings only")
    core = {(p.subject, p.stage) for p in problems if p.stage in ORDER}
    latest = config_digest(pipe.config())  # a subject the manifest kept from a build with another config
    earlier = sorted({sid for sid, _ in core if man["subjects"].get(sid, {}).get("config_digest", latest) != latest})
    if earlier:
        raise ConfigError(f"subject(s) {', '.join(earlier)} of build {pipe.name!r} were built with another config "
                          "than the build's latest; repair rebuilds with a node's own settings only: rebuild them "
                          f"with `rppg-prep build {pipe.name} --subjects {','.join(earlier)}`")
    derived = sorted({(p.subject, p.stage, p.node) for p in problems if p.stage not in ORDER})
    removed = []
    for sid, stage, node in derived:
        if node.exists():
            trash = Path(cache) / ".partial" / f"{node.name}.damaged-{os.getpid()}"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.rename(node, trash)  # gone at once, then deleted: never a half-deleted node in place
            shutil.rmtree(trash, ignore_errors=True)
        removed.append(f"subject {sid}, {stage} ({node.name})")
    if derived:
        forget_nodes(cache, pipe.dataset, pipe.name, {sid: [st for s2, st, _ in derived if s2 == sid]
                                                      for sid, _, _ in derived})
    if not core:
        return [], removed
    damaged = sorted({sid for sid, _ in core})
    # each subject is rebuilt from the root it was built from (a manifest keeps subjects of several)
    roots = {sid: man["subjects"].get(sid, {}).get("root") or man["root"] for sid in damaged}
    found = {s.id: s for r in sorted(set(roots.values())) for s in get_loader(pipe.dataset).find_subjects(r)
             if roots.get(s.id) == r}
    gone = []
    for sid in (s for s in damaged if s not in found):  # moved or deleted since the build: say so, repair the rest
        stages = sorted((st for s2, st in core if s2 == sid), key=ORDER.index)
        gone.append(SubjectResult(
            sid, status="failed", failed_stage=stages[0], input_file=roots[sid],
            error=f"subject {sid}: not found under the dataset root {roots[sid]} that the build recorded, so its "
                  f"damaged node(s) ({', '.join(stages)}) cannot be rebuilt; put the recording back there, or "
                  "rebuild it with `rppg-prep build --root DIR`. The other subjects are repaired"))
    subjects = [found[sid] for sid in damaged if sid in found]
    results = [res for r in sorted({roots[s.id] for s in subjects})
               for res in run_build(pipe, [s for s in subjects if roots[s.id] == r], cache, root=r,
                                    force_nodes=core, progress=progress)]
    return results + gone, removed
