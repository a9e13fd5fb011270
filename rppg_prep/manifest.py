"""Build manifests: the one module that reads and writes ``<dataset>.builds/<pipeline>.json``.

A manifest records, per subject, the build's status and every node the build owns: the core stages
(:data:`rppg_prep.pipeline.ORDER`) and nodes derived from them later, such as ST2S's ``st2s_pred``
and ``split``. ``rppg-prep gc`` keeps exactly the nodes some manifest references, so every node is
recorded here, through :func:`record_build` or :func:`record_nodes`, under a file lock and with an
atomic replace. A derived node records the keys of the nodes it read; a rebuild keeps it while those
are still the subject's current nodes and drops it once they changed.

The key of a build (:func:`build_key`) is a digest of its node keys, never of the manifest's bytes:
those carry timestamps and run times that change on every no-op rebuild.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rppg_prep import __version__
from rppg_prep.errors import StoreError
from rppg_prep.stage import canonical_json
from rppg_prep.store import file_lock, node_path, open_node, write_json_atomic

if TYPE_CHECKING:
    import zarr

    from rppg_prep.build import SubjectResult
    from rppg_prep.pipeline import Pipeline

__all__ = ["manifest_path", "read_manifest", "record_build", "record_nodes", "forget_nodes", "build_key",
           "open_build"]


def manifest_path(cache: str | Path, dataset: str, pipeline: str) -> Path:
    """Path of the build manifest of ``pipeline`` over ``dataset``.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        Loader name and pipeline name.

    Returns
    -------
    Path
        ``cache/<dataset>.builds/<pipeline>.json``.
    """
    return Path(cache) / f"{dataset}.builds" / f"{pipeline}.json"


def read_manifest(cache: str | Path, dataset: str, pipeline: str) -> dict[str, Any]:
    """Read a build manifest.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        Loader name and pipeline name.

    Returns
    -------
    dict
        ``pipeline``, ``dataset``, ``root``, ``config``, ``config_source``, ``updated`` and
        ``subjects``: subject -> {``status``, ``nodes``: stage -> {``key``, ``path``[, ``inputs``]}, ...}.

    Raises
    ------
    StoreError
        If the build does not exist, or its manifest is not valid JSON (e.g. truncated).
    """
    path = manifest_path(cache, dataset, pipeline)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise StoreError(f"no build of pipeline {pipeline!r} for dataset {dataset!r}; run `rppg-prep build` first",
                         path=path) from None
    except ValueError as exc:
        raise StoreError(f"the build manifest is not valid JSON ({exc}); rebuild with `rppg-prep build`",
                         path=path) from None


def _current(nodes: dict[str, dict[str, Any]], old: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``nodes`` plus the derived nodes of ``old`` whose inputs are all among the current nodes' keys."""
    out = dict(nodes)
    derived = {s: n for s, n in old.items() if s not in nodes and n.get("inputs")}
    grew = True
    while grew:  # a derived node may read another derived node (split reads st2s_pred)
        grew = False
        for stage, node in list(derived.items()):
            if all(stage_in in out and out[stage_in]["key"] == key for stage_in, key in node["inputs"].items()):
                out[stage] = node
                del derived[stage]
                grew = True
    return out


def record_build(cache: str | Path, pipe: Pipeline, root: str | Path, results: list[SubjectResult]) -> Path:
    """Merge subjects' build results into the manifest (under a lock; atomic replace).

    Subjects of an earlier build of the same pipeline, root and config that were not rebuilt are
    kept, and so are a rebuilt subject's derived nodes whose inputs did not change.

    Parameters
    ----------
    cache : str or Path
        Store root.
    pipe : Pipeline
    root : str or Path
        Dataset root (recorded resolved).
    results : list of SubjectResult
        One per subject built.

    Returns
    -------
    Path
        The manifest file.
    """
    path = manifest_path(cache, pipe.dataset, pipe.name)
    root = str(Path(root).resolve())
    with file_lock(path):
        subjects: dict[str, Any] = {}
        try:
            old = json.loads(path.read_text())
            if old.get("root") == root and old.get("config") == pipe.config():
                subjects.update(old.get("subjects", {}))
        except (FileNotFoundError, ValueError):
            pass
        for r in results:
            before = subjects.get(r.subject, {}).get("nodes", {})
            subjects[r.subject] = {
                "status": r.status, "failed_stage": r.failed_stage, "error": r.error, "traceback": r.traceback,
                "input_file": r.input_file, "frames": r.frames, "seconds": round(r.seconds, 3),
                "bytes": r.bytes, "notes": r.notes, "nodes": _current(r.nodes, before), "ran": r.ran,
            }
        write_json_atomic(path, {
            "pipeline": pipe.name, "dataset": pipe.dataset, "root": root, "rppg_prep": __version__,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": pipe.config(), "config_source": pipe.source,
            "subjects": subjects,
        })
    return path


def record_nodes(cache: str | Path, dataset: str, pipeline: str, nodes: dict[str, dict[str, dict[str, str]]]) -> None:
    """Record derived nodes (e.g. ST2S's ``st2s_pred`` and ``split``) in a build's manifest.

    Parameters
    ----------
    cache : str or Path
    dataset, pipeline : str
    nodes : dict
        subject -> stage -> ``{"key": node key, "inputs": {upstream stage: its node key}}``; the
        upstream stages are core stages or derived nodes recorded in the same call or earlier.

    Raises
    ------
    StoreError
        No such build, a subject that is not in it, or inputs that are no longer the subject's
        current nodes (the build changed while the derived nodes were computed).
    """
    path = manifest_path(cache, dataset, pipeline)
    with file_lock(path):
        man = read_manifest(cache, dataset, pipeline)
        for sid, stages in nodes.items():
            rec = man["subjects"].get(sid)
            if rec is None or rec.get("status") != "ok":
                raise StoreError(f"subject {sid} has no finished build to derive nodes from", path=path)
            for stage, node in stages.items():
                stale = [u for u, k in node["inputs"].items() if rec["nodes"].get(u, {}).get("key") != k]
                if stale:
                    raise StoreError(f"subject {sid}: node {stage} read {stale}, which the build has replaced "
                                     "since; run it again", path=path)
                rel = node_path(cache, dataset, sid, stage, node["key"]).relative_to(Path(cache)).as_posix()
                rec["nodes"][stage] = {"key": node["key"], "path": rel, "inputs": dict(node["inputs"])}
        write_json_atomic(path, man)


def forget_nodes(cache: str | Path, dataset: str, pipeline: str, nodes: dict[str, list[str]]) -> None:
    """Drop derived nodes from a build's manifest (after they were removed as damaged).

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        The build.
    nodes : dict of str to list of str
        subject -> stages to forget; core stages are never forgotten (a build re-records them).

    Raises
    ------
    StoreError
        No such build.
    """
    from rppg_prep.pipeline import ORDER

    path = manifest_path(cache, dataset, pipeline)
    with file_lock(path):
        man = read_manifest(cache, dataset, pipeline)
        for sid, stages in nodes.items():
            rec = man["subjects"].get(sid, {}).get("nodes", {})
            for stage in stages:
                if stage not in ORDER:
                    rec.pop(stage, None)
        write_json_atomic(path, man)


def build_key(man: dict[str, Any], stages: tuple[str, ...], subjects: list[str] | None = None) -> str:
    """Digest of the node keys a consumer of a build reads (sha256 hex, 64 characters).

    Parameters
    ----------
    man : dict
        A manifest (:func:`read_manifest`).
    stages : tuple of str
        The stages whose nodes are read, e.g. ``("clips", "labels")``.
    subjects : list of str, optional
        The subjects read; default every subject whose build succeeded.

    Returns
    -------
    str
        Changes exactly when one of those nodes changes; timestamps, run times and notes of the
        manifest do not enter it.
    """
    ok = [s for s, rec in man["subjects"].items() if rec.get("status") == "ok"]
    keys = {sid: {st: man["subjects"][sid]["nodes"][st]["key"] for st in stages}
            for sid in sorted(subjects if subjects is not None else ok)}
    return hashlib.sha256(canonical_json(keys).encode()).hexdigest()


def open_build(cache: str | Path, dataset: str, pipeline: str) -> dict[str, dict[str, zarr.Group]]:
    """Open a finished build: subject -> stage -> read-only zarr group of that node.

    Only subjects whose build succeeded are returned, in natural order (``subject3`` before
    ``subject10``), as the build ran them. The stages are the core ones and any derived node the
    manifest records (``st2s_pred``, ``split``).

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, pipeline : str
        Loader name and pipeline name.

    Returns
    -------
    dict of str to dict of str to zarr.Group
        E.g. ``build["subject3"]["clips"]["clips"]`` is a (N, L, S, S, 3) uint8 array.

    Raises
    ------
    StoreError
        If the build or one of its nodes is missing.
    """
    from rppg_prep.datasets import natural_key

    man = read_manifest(cache, dataset, pipeline)
    out = {}
    for sid in sorted(man["subjects"], key=natural_key):
        rec = man["subjects"][sid]
        if rec["status"] != "ok":
            continue
        out[sid] = {stage: open_node(Path(cache) / node["path"]) for stage, node in rec["nodes"].items()}
    return out
