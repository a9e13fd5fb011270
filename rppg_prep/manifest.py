"""Build manifests: the one module that reads and writes ``<dataset>.builds/<pipeline>.json``.

A manifest records, per subject, the build's status and every node the build owns: the core stages
(:data:`rppg_prep.pipeline.ORDER`) and nodes derived from them later, such as ST2S's ``st2s_pred``
and ``split``. ``rppg-prep gc`` keeps exactly the nodes some manifest references, so every node is
recorded here, through :func:`record_build` or :func:`record_nodes`, under a file lock and with an
atomic replace. A derived node records the keys of the nodes it read; a rebuild keeps it while those
are still the subject's current nodes and drops it once they changed.

A manifest keeps every subject built under its pipeline name (whatever root, config or
``--subjects`` the latest build had), and a node a rebuild replaced stays listed under
``superseded`` until ``gc --older-than DAYS`` or ``gc --all-stale`` drops it. This module is the one
reader: :func:`read_manifest` and :func:`referenced_nodes` validate every manifest first
(:func:`validate_manifest`), so a node path that is not ``<dataset>.zarr/<subject>/<stage>-<key12>``
of its own entry never reaches a reader, ``verify``, ``repair`` or ``gc``.

The key of a build (:func:`build_key`) is a digest of its node keys, never of the manifest's bytes:
those carry timestamps and run times that change on every no-op rebuild.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rppg_prep import __version__
from rppg_prep.errors import ManifestError, RppgPrepError, StoreError
from rppg_prep.stage import canonical_json
from rppg_prep.store import check_name, dataset_store, file_lock, node_path, open_node, write_json_atomic

if TYPE_CHECKING:
    import zarr

    from rppg_prep.pipeline import Pipeline

__all__ = ["SubjectResult", "manifest_path", "read_manifest", "validate_manifest", "record_build", "record_nodes",
           "forget_nodes", "build_key", "open_build", "build_nodes", "config_digest", "referenced_nodes",
           "forget_superseded"]

log = logging.getLogger(__name__)


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

    Raises
    ------
    ConfigError
        ``dataset`` or ``pipeline`` is not a safe name (:func:`rppg_prep.store.check_name`).
    """
    dataset, pipeline = check_name(dataset, "dataset name"), check_name(pipeline, "pipeline name")
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
        ``subjects``: subject -> {``status``, ``root``, ``config_digest``, ``nodes``: stage ->
        {``key``, ``path``[, ``inputs``]}, ...}, and ``superseded``: node versions a later build of
        their subject replaced (:func:`record_build`). Every node path is validated: it is exactly
        ``<dataset>.zarr/<subject>/<stage>-<key12>`` for the subject, stage and key of its entry.

    Raises
    ------
    StoreError
        If the build does not exist. :class:`ManifestError` (a StoreError) if its manifest is not
        valid JSON (e.g. truncated) or does not validate (:func:`validate_manifest`).
    """
    path = manifest_path(cache, dataset, pipeline)
    try:
        return _load(path, cache, dataset)
    except FileNotFoundError:
        raise StoreError(f"no build of pipeline {pipeline!r} for dataset {dataset!r}; run `rppg-prep build` first",
                         path=path) from None


#: a node key: sha256 hex (:func:`rppg_prep.stage.node_key`)
_KEY = re.compile(r"[0-9a-f]{64}")


def _load(path: Path, cache: str | Path, dataset: str) -> dict[str, Any]:
    """Parse and validate the manifest at ``path``; FileNotFoundError when there is none."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"the build manifest cannot be read ({exc})", path=path) from None
    try:
        man = json.loads(text)
    except ValueError as exc:
        raise ManifestError(f"the build manifest is not valid JSON ({exc}); rebuild with `rppg-prep build`",
                            path=path) from None
    return validate_manifest(man, cache, dataset, path=path)


def validate_manifest(man: Any, cache: str | Path, dataset: str, *, path: str | Path | None = None) -> dict[str, Any]:
    """Check a parsed manifest's shape and that every node path in it is that node's own place.

    The one check of what a manifest says before anything reads, verifies, repairs or deletes the
    nodes it names: a node entry (current or superseded) needs a 64-hex ``key`` and a ``path`` that
    resolves to :func:`rppg_prep.store.node_path` of the entry's own subject, stage and key, inside
    ``<cache>/<dataset>.zarr/``.

    Parameters
    ----------
    man : Any
        The parsed JSON.
    cache : str or Path
        Store root.
    dataset : str
        The dataset the manifest belongs to (its folder is ``<dataset>.builds``).
    path : str or Path, optional
        The manifest file, for the messages.

    Returns
    -------
    dict
        ``man``, unchanged.

    Raises
    ------
    ManifestError
        Naming the manifest, the subject and the stage of the first entry that does not validate.
    """
    if not isinstance(man, dict) or not isinstance(man.get("subjects"), dict):
        raise ManifestError(f"not a build manifest: a JSON object with a 'subjects' mapping was expected, got "
                            f"{type(man).__name__}; rebuild with `rppg-prep build`", path=path)
    if man.get("dataset", dataset) != dataset:
        raise ManifestError(f"the manifest is of dataset {man.get('dataset')!r} but lies under {dataset}.builds",
                            path=path)
    for sid, rec in man["subjects"].items():
        _check_subject(cache, dataset, sid, rec, path)
    sup = man.get("superseded", [])
    if not isinstance(sup, list):
        raise ManifestError("'superseded' must be a list of node entries", path=path)
    for entry in sup:
        _check_superseded(cache, dataset, entry, path)
    return man


def _check_subject(cache: str | Path, dataset: str, sid: Any, rec: Any, path: str | Path | None) -> None:
    if not isinstance(rec, dict) or not isinstance(rec.get("nodes", {}), dict):
        raise ManifestError(f"subject {sid!r}: the entry must be a mapping with a 'nodes' mapping", path=path)
    for stage, node in rec.get("nodes", {}).items():
        _check_node(cache, dataset, sid, stage, node, path)


def _check_superseded(cache: str | Path, dataset: str, entry: Any, path: str | Path | None) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("since"), (int, float)):
        raise ManifestError(f"a superseded entry needs 'subject', 'stage', 'key', 'path' and 'since', got {entry!r}",
                            path=path)
    _check_node(cache, dataset, entry.get("subject"), entry.get("stage"), entry, path)


def _check_node(cache: str | Path, dataset: str, sid: Any, stage: Any, node: Any, path: str | Path | None) -> None:
    where = f"subject {sid!r}, stage {stage!r}"
    if not (isinstance(sid, str) and isinstance(stage, str) and isinstance(node, dict)
            and isinstance(node.get("key"), str) and _KEY.fullmatch(node["key"]) and isinstance(node.get("path"), str)):
        raise ManifestError(f"{where}: a node entry needs a 64-hex 'key' and a 'path', got {node!r}", path=path)
    key = node["key"]
    try:
        store = dataset_store(cache, dataset)
        expected = node_path(cache, dataset, sid, stage, key)
    except RppgPrepError as exc:  # a subject or stage that is no folder name (store.node_path checks)
        raise ManifestError(f"{where}: {exc.message}", path=path) from None
    try:  # subject and stage are one folder each, inside the dataset's store
        inside = sid != ".." and expected.relative_to(store).parts == (sid, f"{stage}-{key[:12]}")
    except ValueError:
        inside = False
    if not inside or (Path(cache) / node["path"]).resolve() != expected.resolve():
        raise ManifestError(f"{where}: node path {node['path']!r} is not that node's place in the cache "
                            f"({expected.relative_to(cache).as_posix() if inside else 'none'}); the manifest was "
                            "edited or damaged: nothing it names is read, verified, repaired or removed. Rebuild "
                            "with `rppg-prep build` (or remove the manifest)", path=path)
    inputs = node.get("inputs")
    if inputs is not None and not (isinstance(inputs, dict)
                                   and all(isinstance(k, str) and isinstance(v, str) for k, v in inputs.items())):
        raise ManifestError(f"{where}: 'inputs' must map stage names to node keys, got {inputs!r}", path=path)


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


def config_digest(config: dict[str, Any]) -> str:
    """sha256 hex of a pipeline config (:meth:`rppg_prep.pipeline.Pipeline.config`), as subjects record it.

    Parameters
    ----------
    config : dict
        Stage -> param -> value.

    Returns
    -------
    str
        64 hex characters; equal configs give equal digests.
    """
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()


def _previous(path: Path, cache: str | Path, dataset: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The subjects and superseded entries of the manifest at ``path`` that validate (none when unreadable)."""
    try:
        old = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}, []
    if not isinstance(old, dict) or not isinstance(old.get("subjects"), dict):
        log.warning("%s is not a build manifest; it is replaced", path)
        return {}, []
    subjects, superseded = {}, []
    for sid, rec in old["subjects"].items():
        try:
            _check_subject(cache, dataset, sid, rec, path)
        except ManifestError as exc:
            log.warning("dropping an entry of the manifest that does not validate: %s", exc)
            continue
        rec.setdefault("root", old.get("root"))  # written before subjects recorded their own
        if isinstance(old.get("config"), dict):
            rec.setdefault("config_digest", config_digest(old["config"]))
        subjects[sid] = rec
    for entry in old.get("superseded", []) if isinstance(old.get("superseded"), list) else []:
        try:
            _check_superseded(cache, dataset, entry, path)
        except ManifestError as exc:
            log.warning("dropping an entry of the manifest that does not validate: %s", exc)
            continue
        superseded.append(entry)
    return subjects, superseded


def record_build(cache: str | Path, pipe: Pipeline, root: str | Path, results: list[SubjectResult]) -> Path:
    """Merge subjects' build results into the manifest (under a lock; atomic replace).

    The manifest of a pipeline name keeps every subject ever built under it: subjects that were not
    rebuilt are kept whatever root, config or ``--subjects`` the new build had (each subject records
    the ``root`` and ``config_digest`` it was built with; ``rppg-prep status`` shows one built with
    another config stale), and so are a rebuilt subject's derived nodes whose inputs did not change.
    A node a rebuild replaces (or drops: a derived node whose inputs changed, a subject that failed)
    moves to ``superseded`` with the time (``since``, seconds since the epoch): ``rppg-prep gc``
    keeps it until told otherwise (``--older-than DAYS``, ``--all-stale``). A node that becomes
    current again (a reverted config) leaves ``superseded``.

    Parameters
    ----------
    cache : str or Path
        Store root.
    pipe : Pipeline
        The pipeline built.
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
    digest = config_digest(pipe.config())
    with file_lock(path):
        subjects, superseded = _previous(path, cache, pipe.dataset)
        now = round(time.time(), 3)
        for r in results:
            before = subjects.get(r.subject, {}).get("nodes", {})
            nodes = _current(r.nodes, before)
            superseded += [{"subject": r.subject, "stage": stage, "key": n["key"], "path": n["path"], "since": now}
                           for stage, n in before.items() if nodes.get(stage, {}).get("key") != n["key"]]
            subjects[r.subject] = {
                "status": r.status, "failed_stage": r.failed_stage, "error": r.error, "traceback": r.traceback,
                "input_file": r.input_file, "frames": r.frames, "seconds": round(r.seconds, 3),
                "bytes": r.bytes, "notes": r.notes, "nodes": nodes, "ran": r.ran, "root": root,
                "config_digest": digest,
            }
        write_json_atomic(path, {
            "pipeline": pipe.name, "dataset": pipe.dataset, "root": root, "rppg_prep": __version__,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "config": pipe.config(), "config_source": pipe.source,
            "subjects": subjects, "superseded": _unique_superseded(subjects, superseded),
        })
    return path


def _unique_superseded(subjects: dict[str, Any], superseded: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``superseded`` less the nodes that are current again and repeats (the earliest ``since`` stays)."""
    seen = {(sid, stage, n["key"]) for sid, rec in subjects.items() for stage, n in rec.get("nodes", {}).items()}
    out = []
    for entry in sorted(superseded, key=lambda e: e["since"]):
        ident = (entry["subject"], entry["stage"], entry["key"])
        if ident not in seen:
            seen.add(ident)
            out.append(entry)
    return out


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
                prev = rec["nodes"].get(stage)
                if prev and prev["key"] != node["key"]:  # kept by gc until told (record_build)
                    man.setdefault("superseded", []).append({"subject": sid, "stage": stage, "key": prev["key"],
                                                             "path": prev["path"], "since": round(time.time(), 3)})
                rec["nodes"][stage] = {"key": node["key"], "path": rel, "inputs": dict(node["inputs"])}
        man["superseded"] = _unique_superseded(man["subjects"], man.get("superseded", []))
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


def open_build(cache: str | Path, dataset: str, pipeline: str | None = None) -> dict[str, dict[str, zarr.Group]]:
    """Open a finished build: subject -> stage -> read-only zarr group of that node.

    Only subjects whose build succeeded are returned, in natural order (``subject3`` before
    ``subject10``), as the build ran them: every subject the manifest keeps, whichever build of
    the pipeline made it (a warning names those built with another config than the latest build).
    The stages are the core ones and any derived node the manifest records (``st2s_pred``, ``split``).

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset : str
        Loader name.
    pipeline : str, optional
        Pipeline name; defaults to ``dataset`` (the shipped configs are named after their dataset).

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

    pipeline = dataset if pipeline is None else pipeline
    man = read_manifest(cache, dataset, pipeline)
    out = {}
    latest = config_digest(man["config"]) if isinstance(man.get("config"), dict) else None
    other = [sid for sid, rec in man["subjects"].items()
             if rec.get("status") == "ok" and latest and rec.get("config_digest", latest) != latest]
    if other:
        log.warning("build %s of %s: subject(s) %s were built with another config than the latest build's; "
                    "`rppg-prep status` shows what is stale, `rppg-prep build` rebuilds them", pipeline, dataset,
                    ", ".join(sorted(other, key=natural_key)))
    for sid, nodes in build_nodes(cache, man).items():
        out[sid] = {stage: open_node(path) for stage, path in nodes.items()}
    return out


def build_nodes(cache: str | Path, man: dict[str, Any]) -> dict[str, dict[str, Path]]:
    """The node folders a manifest records for its subjects whose build succeeded.

    The one place that turns a manifest's node records into paths under the cache.

    Parameters
    ----------
    cache : str or Path
        Store root.
    man : dict
        A manifest as :func:`read_manifest` returns it (validated: every path stays in the store).

    Returns
    -------
    dict of str to dict of str to Path
        Subject (natural order) -> stage -> node folder.
    """
    from rppg_prep.datasets import natural_key

    return {sid: {stage: Path(cache) / node["path"] for stage, node in man["subjects"][sid]["nodes"].items()}
            for sid in sorted(man["subjects"], key=natural_key) if man["subjects"][sid].get("status") == "ok"}


def _manifests(cache: Path) -> list[tuple[Path, str]]:
    """Every manifest file under ``cache`` and its dataset: ``<dataset>.builds/**/*.json``, nested ones too."""
    return sorted((man, builds.name[: -len(".builds")]) for builds in cache.glob("*.builds") if builds.is_dir()
                  for man in builds.rglob("*.json") if man.is_file())


def _stale_cut(older_than_days: float | None, all_stale: bool) -> float | None:
    if all_stale:
        return float("inf")
    return None if older_than_days is None else time.time() - older_than_days * 86400.0


def referenced_nodes(cache: str | Path, *, older_than_days: float | None = None,
                     all_stale: bool = False) -> set[Path]:
    """The nodes the build manifests under ``cache`` keep: what ``rppg-prep gc`` must not remove.

    Every manifest (``<dataset>.builds/**/*.json``, nested folders too) is read and validated
    (:func:`validate_manifest`); one that cannot be read or does not validate stops the query,
    since the nodes it lists cannot be known.

    Parameters
    ----------
    cache : str or Path
        Store root.
    older_than_days : float, optional
        Leave out superseded nodes superseded more than this many days ago.
    all_stale : bool
        Leave out every superseded node.

    Returns
    -------
    set of Path
        Resolved node folders: every current node of every subject, and the superseded nodes kept.

    Raises
    ------
    ManifestError
        A manifest that cannot be read or does not validate (named with its subject and stage).
    """
    cache = Path(cache)
    cut = _stale_cut(older_than_days, all_stale)
    refs = set()
    for path, dataset in _manifests(cache):
        try:
            man = _load(path, cache, dataset)
        except FileNotFoundError:  # removed meanwhile: it keeps nothing
            continue
        for rec in man["subjects"].values():
            refs.update((cache / n["path"]).resolve() for n in rec.get("nodes", {}).values())
        refs.update((cache / e["path"]).resolve() for e in man.get("superseded", [])
                    if cut is None or e["since"] >= cut)
    return refs


def forget_superseded(cache: str | Path, *, older_than_days: float | None = None, all_stale: bool = False) -> int:
    """Drop superseded entries from every manifest under ``cache`` (each under its lock; atomic replace).

    Parameters
    ----------
    cache : str or Path
        Store root.
    older_than_days : float, optional
        Drop the entries superseded more than this many days ago.
    all_stale : bool
        Drop every superseded entry.

    Returns
    -------
    int
        Entries dropped (0 when neither option is given).

    Raises
    ------
    ManifestError
        A manifest that cannot be read or does not validate.
    """
    cache = Path(cache)
    cut = _stale_cut(older_than_days, all_stale)
    if cut is None:
        return 0
    dropped = 0
    for path, dataset in _manifests(cache):
        with file_lock(path):
            try:
                man = _load(path, cache, dataset)
            except FileNotFoundError:
                continue
            keep = [e for e in man.get("superseded", []) if e["since"] >= cut]
            if len(keep) != len(man.get("superseded", [])):
                dropped += len(man["superseded"]) - len(keep)
                man["superseded"] = keep
                write_json_atomic(path, man)
    return dropped
