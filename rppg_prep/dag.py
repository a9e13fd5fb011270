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
:func:`rppg_prep.maintenance.repair`) holds a build lock of its own for its whole run
(:func:`rppg_prep.store.build_lock`): nodes are recorded in the manifest only as each subject
finishes, so :func:`rppg_prep.maintenance.gc` refuses to run meanwhile, and a build waits for a
running gc before it starts. Status, verification, repair and gc live in :mod:`rppg_prep.maintenance`.
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from rppg_prep.build import RUNNERS, NodePlan, environment_threads, plan_subject, raw_files, video_pass
from rppg_prep.datasets import Subject
from rppg_prep.errors import ConfigError, RppgPrepError, VideoDecodeError
from rppg_prep.faults import fault_point
from rppg_prep.manifest import SubjectResult, record_build
from rppg_prep.pipeline import Pipeline
from rppg_prep.stages import ORDER, STAGES, STREAMING, clock_stage, video_stage
from rppg_prep.store import holding_build_lock, node_attrs, node_bytes, node_exists, node_lock

__all__ = ["run_build", "task_key", "parse_task_key", "batch_keys", "VIDEO_TASK", "VIDEO_STAGES", "TASK_STAGES"]

log = logging.getLogger(__name__)

#: the task that runs the one streaming pass over the frames
VIDEO_TASK = "video"
#: the stages fed by the one streaming pass over the frames: one task, :data:`VIDEO_TASK`
VIDEO_STAGES = STREAMING
#: task name -> stages it writes (derived from the stage declarations)
TASK_STAGES = {VIDEO_TASK: VIDEO_STAGES, **{s: (s,) for s in ORDER if not STAGES[s].streams}}


def _task_of(stage: str) -> str:
    return VIDEO_TASK if stage in VIDEO_STAGES else stage


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
    """The raw file ``stage`` reads (its first declared raw input: labels the ground truth, decode
    the video), for errors. A stage with none of its own (landmarks, face, clips, st_map) names the
    video its input derives from.
    """
    try:
        files = raw_files(subject, STAGES[stage].raw_inputs) if stage in STAGES else {}
    except Exception:  # naming a file must never hide the error it names
        return str(subject.video)
    return str(next(iter(files.values()), subject.video))


def _failed(subject: Subject, task: str, stage: str, exc: BaseException) -> Outcome:
    if isinstance(exc, VideoDecodeError):
        stage = clock_stage()
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
    fault_point("kill", task, subject.id)
    environment_threads()  # again in this process: a dask.distributed worker is a process of its own
    # a video task's only upstream is the previous video pass of its lane: an ordering edge, not data
    bad = [] if task == VIDEO_TASK else [u for u in upstream if u.status != "ok"]
    if bad:
        return Outcome(subject.id, task, "skipped", TASK_STAGES[task][0],
                       f"not built: {bad[0].task} of subject {subject.id} did not finish")
    res = SubjectResult(subject.id)
    t0 = time.perf_counter()
    progress = progress or (lambda *a: None)
    stage = TASK_STAGES[task][0]
    try:
        with _locked_plan(cache, plan, TASK_STAGES[task]):
            if task == VIDEO_TASK:
                if not all(plan[s].fresh for s in VIDEO_STAGES):
                    stage = video_stage()
                    video_pass(pipe, subject, plan, res, progress)
            elif not plan[task].fresh:
                RUNNERS[task](pipe, subject, plan, res, progress)
    except Exception as exc:
        return _failed(subject, task, stage, exc)
    res.seconds = time.perf_counter() - t0
    return Outcome(subject.id, task, result=res)


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


_TASK_KEY = re.compile(r"(?P<task>.+?)-(?P<node>[0-9a-f]{16})-(?P<subject>.+)")


def task_key(task: str, subject: str, plan: dict[str, NodePlan]) -> str:
    """The dask key of one task: ``<task>-<16 hex of its last node's key>-<subject id>``.

    The node key in it makes two builds that share a scheduler give different keys to different
    work; :func:`parse_task_key` reads it back.

    Parameters
    ----------
    task : str
        A task of :data:`TASK_STAGES`.
    subject : str
        The subject id.
    plan : dict of str to NodePlan
        The subject's plan (:func:`rppg_prep.build.plan_subject`).

    Returns
    -------
    str
    """
    return f"{task}-{plan[TASK_STAGES[task][-1]].key[:16]}-{subject}"


def parse_task_key(key: Any) -> tuple[str, str]:
    """Read a :func:`task_key` back (a subject id may hold ``-``; a task name may too).

    Parameters
    ----------
    key : str
        A dask key of this module's graphs.

    Returns
    -------
    task, subject : str

    Raises
    ------
    ValueError
        Not a task key of this module.
    """
    m = _TASK_KEY.fullmatch(str(key))
    if m is None:
        raise ValueError(f"{key!r} is not a task key (<task>-<16 hex>-<subject>)")
    return m["task"], m["subject"]


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
        names = {t: task_key(t, subject.id, plan) for t in TASK_STAGES}
        for task, deps in TASK_DEPS.items():
            args = [names[d] for d in deps]
            if task == VIDEO_TASK and video_lanes and len(videos) >= video_lanes:
                args.append(videos[-video_lanes])  # an ordering edge only: its outcome is ignored
            dsk[names[task]] = (partial(run_task, task, pipe, subject, str(cache), plan, progress), *args)
            keys.append(names[task])
        videos.append(names[VIDEO_TASK])
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

    pool = _LaneExecutor(video, stage, {k for k in dsk if parse_task_key(k)[0] == VIDEO_TASK}, set(dsk))
    try:
        with Callback(posttask=lambda key, result, dsk, state, worker_id: on_outcome(result)):
            dask.threaded.get(dsk, keys, pool=pool, chunksize=1)
    finally:
        pool.shutdown()


def _lost(key: str, subject: str, exc: BaseException | None) -> Outcome:
    """The outcome of a task that a dask.distributed worker took down with it."""
    task = parse_task_key(key)[0]
    culprit = str(getattr(exc, "task", None) or key)
    if culprit != key:  # it was an upstream task that killed its worker
        try:
            what = parse_task_key(culprit)[0]
        except ValueError:
            what = culprit
        return Outcome(subject, task, "skipped", TASK_STAGES[task][0],
                       f"not built: {what} of subject {subject} did not finish")
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
        clock = plan[clock_stage()].path
        if not result.frames and node_exists(clock):
            result.frames = int(node_attrs(clock)["n_frames"])
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
            _merge(results[subj.id], _failed(subj, VIDEO_TASK, clock_stage(), exc))
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
            owners = {k: parse_task_key(k)[1] for k in keys}
            _run_distributed(dsk, keys, scheduler, workers, partial(_client_sees, on_outcome, plan_of), owners,
                             security=security, dashboard=dashboard)
    return [results[s.id] for s in subjects]
