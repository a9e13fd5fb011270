"""Keeping a cache: the status of a build, checking and repairing its nodes, collecting garbage.

:func:`subject_status` says per stage whether a node is fresh for the current config and why not,
writing nothing. :func:`verify_build` re-reads every chunk of every node a manifest references
(:func:`rppg_prep.integrity.check_node`); :func:`repair` rebuilds exactly the damaged nodes with the
build's own settings. :func:`gc` removes the nodes no manifest references and the partial nodes no
build is writing. The build itself is :mod:`rppg_prep.dag`.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rppg_prep.build import NodePlan, ProgressFn, dir_bytes, plan_subject
from rppg_prep.dag import run_build
from rppg_prep.datasets import Subject, get_loader
from rppg_prep.errors import ConfigError, ManifestError, RppgPrepError
from rppg_prep.integrity import ChunkProblem, check_node
from rppg_prep.manifest import (SubjectResult, build_nodes, config_digest, forget_nodes, forget_superseded,
                                read_manifest, referenced_nodes)
from rppg_prep.pipeline import Pipeline
from rppg_prep.stages import ORDER
from rppg_prep.store import (gc_lock, holding_build_lock, iter_nodes, iter_partials, node_exists, node_lock, open_node,
                             parked_node, partial_key, recover_replaced)

__all__ = ["subject_status", "verify_build", "repair", "gc"]


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
    build lock (:func:`rppg_prep.dag.run_build`, :func:`repair` and ST2S's derived nodes hold one from before they
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
            recover_replaced(cache)
        refs = referenced_nodes(cache, older_than_days=older_than_days, all_stale=all_stale)
        victims = [p for p in iter_nodes(cache) if p.resolve() not in refs]
        for part in iter_partials(cache):
            try:
                with node_lock(cache, partial_key(part), timeout_s=0):
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
    """Rebuild exactly the nodes :func:`verify_build` found damaged.

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
        From :func:`verify_build`.
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


def verify_build(cache: str | Path, dataset: str, pipeline: str,
                 progress: Callable[[int, int], None] | None = None) -> tuple[int, list[ChunkProblem]]:
    """Check every chunk of every node a build's manifest references.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The build.
    progress : callable (done, total), optional
        Called after each node.

    Returns
    -------
    n_nodes : int
        Nodes checked (of the subjects whose build succeeded).
    problems : list of ChunkProblem
        Empty when the store is intact; a node folder that is gone is one ``missing`` problem. A node
        an interrupted replace left parked (``store.parked_node``) is checked where it lies: the next
        build puts it back, and checking writes nothing.

    Raises
    ------
    StoreError
        No such build, or its manifest is unreadable.
    """
    man = read_manifest(cache, dataset, pipeline)
    nodes = [(sid, stage, path) for sid, paths in build_nodes(cache, man).items() for stage, path in paths.items()]
    problems: list[ChunkProblem] = []
    for i, (sid, stage, node) in enumerate(nodes):
        if (node / "zarr.json").exists():
            found = check_node(node)
        elif (parked := parked_node(node)) is not None:
            found = check_node(parked)
        else:
            found = [ChunkProblem(node, "", (), "missing", node)]
        # named by the manifest's record: the node's own metadata may be what is damaged
        problems.extend(dataclasses.replace(p, node=node, subject=sid, stage=stage) for p in found)
        if progress:
            progress(i + 1, len(nodes))
    return len(nodes), problems
