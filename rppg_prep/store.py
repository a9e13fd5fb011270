"""Zarr v3 node store: atomic node commits, locks and input fingerprints (manifests: :mod:`rppg_prep.manifest`).

Layout (under the cache root)::

    <dataset>.zarr/                         zarr v3 group, one per dataset
      <subject>/<stage>-<key12>/<array>     one node; group attrs carry its provenance
    <dataset>.builds/<pipeline>.json        manifest: subject -> stage -> node, status, config
    fingerprints.json                       sha256 of raw inputs, memoised on (path, size, mtime_ns)
    .partial/                               nodes being written (never read)

A node is written under ``.partial/`` and renamed into place only after its last array and its
``complete`` attribute are written (zarr's own ``_atomic_write`` idea, at directory level), so a crash
leaves the old node or none, never a half node that looks finished.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from rppg_prep.errors import StoreError

__all__ = [
    "NodeWriter",
    "Appender",
    "atomic_write",
    "node_attrs",
    "node_path",
    "open_node",
    "node_exists",
    "node_bytes",
    "fingerprint",
    "write_json_atomic",
    "dataset_store",
    "node_lock",
    "file_lock",
]

#: zstd level 1 with bit-shuffle: the best speed/size trade-off measured on decoded video frames
PIXEL_CODEC = {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"}
SIGNAL_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}

if TYPE_CHECKING:  # zarr is imported where nodes are opened or written: a no-op rebuild only reads JSON
    import zarr


def dataset_store(cache: str | Path, dataset: str) -> Path:
    """Path of the zarr group of ``dataset`` under ``cache``.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset : str
        Loader name, e.g. ``"ubfc"``.

    Returns
    -------
    Path
        ``cache/<dataset>.zarr``.
    """
    return Path(cache) / f"{dataset}.zarr"


def node_path(cache: str | Path, dataset: str, subject: str, stage: str, key: str) -> Path:
    """Final path of node (``stage``, ``subject``) with content key ``key``.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset, subject, stage : str
        Loader name, subject id and stage name.
    key : str
        The node's 64-hex content key (:func:`rppg_prep.stage.node_key`).

    Returns
    -------
    Path
        ``cache/<dataset>.zarr/<subject>/<stage>-<key[:12]>``.
    """
    return dataset_store(cache, dataset) / subject / f"{stage}-{key[:12]}"


@contextlib.contextmanager
def atomic_write(target: str | Path, *, complete: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Write a file or folder atomically: write the yielded temporary sibling, and it replaces ``target``.

    The one write-then-rename helper of the package (zarr's ``_atomic_write`` idea): readers see
    the old ``target`` or the new one, never a half-written one. When the block raises, the
    temporary path is removed and ``target`` is untouched.

    Parameters
    ----------
    target : str or Path
        The final file or folder; its parent is created.
    complete : callable (Path) -> bool, optional
        For a folder: whether an existing ``target`` is already complete. Renaming onto a
        non-empty folder fails; when ``complete(target)`` says another process finished it first,
        that is success and the temporary folder is discarded.

    Yields
    ------
    Path
        ``<parent>/.<name>.<pid>-<random>``: write the file, or create and fill the folder, here.

    Raises
    ------
    OSError
        The rename failed (and ``target`` is not a complete folder), or the disk is full.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        try:
            os.replace(tmp, target)
        except OSError:
            if complete is None or not complete(target):
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink(missing_ok=True)


def _ensure_group(path: Path, attrs: dict[str, Any] | None = None) -> None:
    if not (path / "zarr.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        with atomic_write(path / "zarr.json") as tmp:
            tmp.write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attrs or {}}))


def node_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of the node group at ``path`` (read from its ``zarr.json``; no zarr import).

    Parameters
    ----------
    path : str or Path
        A node folder.

    Returns
    -------
    dict
        Empty when there is no node or its metadata is unreadable.
    """
    try:
        return dict(json.loads((Path(path) / "zarr.json").read_text())["attributes"])
    except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
        return {}


def node_exists(path: Path) -> bool:
    """True when a complete node is at ``path``.

    Parameters
    ----------
    path : Path
        A node folder.

    Returns
    -------
    bool
        Its ``complete`` attribute, written last by :meth:`NodeWriter.commit` (False when absent).
    """
    return bool(node_attrs(path).get("complete", False))


def node_bytes(path: Path) -> int:
    """Bytes on disk of a committed node, recorded at commit.

    Parameters
    ----------
    path : Path
        A node folder.

    Returns
    -------
    int
        0 when there is no node.
    """
    try:
        return int(node_attrs(path).get("bytes", 0))
    except (TypeError, ValueError):
        return 0


def open_node(path: str | Path) -> zarr.Group:
    """Open a committed node read-only.

    Parameters
    ----------
    path : str or Path
        A node folder.

    Returns
    -------
    zarr.Group
        Its arrays (``group[name]``) and provenance attributes (``group.attrs``).

    Raises
    ------
    StoreError
        If there is no complete node at ``path``.
    """
    path = Path(path)
    if not node_exists(path):
        raise StoreError("no complete node here; run `rppg-prep build` first", path=path)
    import zarr

    return zarr.open_group(str(path), mode="r")


class NodeWriter:
    """Write one node into a private temporary folder, then commit it atomically.

    Use as a context manager: the node is committed when the block exits normally and removed
    when it raises. Arrays are zarr v3, Blosc-zstd compressed (level 1 with bit-shuffle for uint8
    pixels, level 3 with byte-shuffle for signals).

    Parameters
    ----------
    final : Path
        Where the node will live (from :func:`node_path`).
    attrs : dict
        Provenance attributes (key, stage, version, params, inputs, files...).
    replace : bool
        Replace a node already at ``final`` (``--force``); otherwise an existing node wins, since
        the same key means the same content.

    Raises
    ------
    OSError
        The temporary folder under ``cache/.partial`` cannot be created (read-only or full disk).
    """

    def __init__(self, final: Path, attrs: dict[str, Any], *, replace: bool = False):
        self.final = Path(final)
        self.replace = replace
        cache = self.final.parents[2]
        # the partial's name carries the full key so that `gc` can tell whether a build still owns it
        self.tmp = cache / ".partial" / f"{attrs.get('stage', 'node')}-{attrs.get('key', '')}.{uuid.uuid4().hex}"
        self.attrs = dict(attrs)
        self._t0 = time.perf_counter()
        self.tmp.mkdir(parents=True)
        import zarr

        self.group = zarr.open_group(str(self.tmp), mode="w", zarr_format=3)
        self.arrays: dict[str, zarr.Array] = {}

    def create(self, name: str, *, shape: tuple[int, ...], dtype: str | np.dtype, chunks: tuple[int, ...],
               unit: str = "", axes: tuple[str, ...] = (), doc: str = "", fill_value: Any = 0) -> zarr.Array:
        """Create an array in the node (shape may start at 0 along axis 0 and grow by :meth:`append`)."""
        dtype = np.dtype(dtype)
        from zarr.codecs import BloscCodec, Crc32cCodec

        _inject_fault("enospc", self.attrs)
        # crc32c last: every chunk file carries the checksum of its bytes, checked on every read;
        # empty chunks are written too, so that a deleted chunk file is a visible loss
        codecs = (BloscCodec(**(PIXEL_CODEC if dtype == np.uint8 else SIGNAL_CODEC)), Crc32cCodec())
        arr = self.group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=codecs,
                                      fill_value=fill_value, dimension_names=axes or None,
                                      attributes={"unit": unit, "doc": doc}, config={"write_empty_chunks": True})
        self.arrays[name] = arr
        return arr

    def write(self, name: str, data: np.ndarray, *, chunks: tuple[int, ...] | None = None, unit: str = "",
              axes: tuple[str, ...] = (), doc: str = "") -> None:
        """Create array ``name`` holding ``data`` whole."""
        data = np.asarray(data)
        if chunks is None:
            chunks = tuple(max(1, s) for s in data.shape) if data.ndim else ()
        arr = self.create(name, shape=data.shape, dtype=data.dtype, chunks=chunks, unit=unit, axes=axes, doc=doc)
        if data.size:
            arr[...] = data

    def append(self, name: str, data: np.ndarray) -> None:
        """Append ``data`` along axis 0 of array ``name``."""
        if len(data):
            self.arrays[name].append(np.asarray(data), axis=0)

    def commit(self) -> Path:
        """Write the provenance attributes with ``complete=True`` last, then move the node into place."""
        self.attrs["wall_s"] = round(time.perf_counter() - self._t0, 3)
        self.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.attrs["bytes"] = sum(f.stat().st_size for f in self.tmp.rglob("*") if f.is_file())
        from rppg_prep.integrity import content_digest

        self.attrs["content_digest"] = content_digest(self.tmp)
        self.attrs["complete"] = True
        self.group.attrs.update(self.attrs)
        _ensure_group(self.final.parents[1], {"rppg_prep": "dataset store"})
        _ensure_group(self.final.parent, {"subject": self.final.parent.name})
        if self.final.exists() and self.replace:
            old = self.tmp.with_name(self.tmp.name + ".old")
            os.rename(self.final, old)
            os.rename(self.tmp, self.final)
            shutil.rmtree(old, ignore_errors=True)
            return self.final
        if self.final.exists():
            # same key means same content: another build got there first
            shutil.rmtree(self.tmp, ignore_errors=True)
            return self.final
        try:
            os.rename(self.tmp, self.final)
        except OSError:
            if not node_exists(self.final):
                raise
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> NodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _inject_fault(kind: str, attrs: dict[str, Any]) -> None:
    """Fault injection for the tests and ``benchmarks/faults.py``: ``RPPG_PREP_FAULT=enospc:<stage>:<subject>``
    makes writing that node fail as a full disk would."""
    if os.environ.get("RPPG_PREP_FAULT", "") == f"{kind}:{attrs.get('stage')}:{attrs.get('subject')}":
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Appender:
    """Buffers appends to a growing array of a :class:`NodeWriter` so that each write fills whole chunks.

    Parameters
    ----------
    writer : NodeWriter
    name : str
        An array created with 0 rows.
    chunk : int
        Rows per chunk along axis 0.
    """

    def __init__(self, writer: NodeWriter, name: str, chunk: int):
        self.w, self.name, self.chunk, self.buf = writer, name, chunk, []
        self.n = 0

    def add(self, data: np.ndarray) -> None:
        """Queue rows; whole chunks are written as soon as they are complete."""
        self.buf.append(data)
        self.n += len(data)
        if self.n >= self.chunk:
            joined = np.concatenate(self.buf)
            cut = (len(joined) // self.chunk) * self.chunk
            self.w.append(self.name, joined[:cut])
            self.buf, self.n = ([joined[cut:]] if cut < len(joined) else []), len(joined) - cut

    def close(self) -> None:
        """Write the rows still queued (the last, partial chunk)."""
        if self.buf:
            self.w.append(self.name, np.concatenate(self.buf))
        self.buf, self.n = [], 0


def node_lock(cache: str | Path, key: str, *, timeout_s: float = -1) -> FileLock:
    """Inter-process lock of node ``key`` (a file under ``cache/.locks``; released if the holder dies).

    Parameters
    ----------
    cache : str or Path
        Store root.
    key : str
        The node's content key.
    timeout_s : float
        Seconds to wait; -1 waits for ever, 0 fails at once.

    Returns
    -------
    filelock.FileLock
        Use as a context manager; raises ``filelock.Timeout`` when the wait runs out.
    """
    path = Path(cache) / ".locks" / f"{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=timeout_s)


def file_lock(path: str | Path) -> FileLock:
    """Inter-process lock guarding a read-modify-write of ``path`` (the lock file is ``<path>.lock``).

    Parameters
    ----------
    path : str or Path
        The file to guard.

    Returns
    -------
    filelock.FileLock
        Use as a context manager.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")))


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON (indented, sorted keys) to ``path`` through :func:`atomic_write`.

    Parameters
    ----------
    path : Path
        Target file; its parent is created.
    obj : Any
        JSON-serialisable; other values are written as ``str(value)``.

    Raises
    ------
    OSError
        The disk is full or the folder is not writable; ``path`` is then unchanged.
    """
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def fingerprint(path: str | Path, cache: str | Path) -> str:
    """sha256 of a raw input file or frame folder, memoised in ``cache/fingerprints.json``.

    A file is memoised on (path, size, mtime_ns). A folder (one image per frame, as in PURE or
    iBVP) hashes the relative name and bytes of every file under it in sorted order, memoised on a
    digest of its listing (names, sizes, mtimes). Keys follow the bytes, not the name: a copied or
    touched-but-identical input keeps its key (as in DVC).

    Parameters
    ----------
    path : str or Path
        A raw input: a video, a ground-truth file or a frame folder.
    cache : str or Path
        Store root holding the memo.

    Returns
    -------
    str
        64 lowercase hex characters.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path).resolve()
    memo_path = Path(cache) / "fingerprints.json"
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        listing = hashlib.sha256()
        for f in files:
            st = f.stat()
            listing.update(f"{f.relative_to(path)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        size, stamp = sum(f.stat().st_size for f in files), listing.hexdigest()
    else:
        st = path.stat()
        files, size, stamp = [path], st.st_size, st.st_mtime_ns
    rec = _read_json(memo_path).get(str(path))
    if rec and rec["size"] == size and rec["mtime_ns"] == stamp:
        return rec["sha256"]
    if path.is_dir():
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path)}\0".encode())
            with open(f, "rb") as fh:
                h.update(hashlib.file_digest(fh, "sha256").digest())
        digest = h.hexdigest()
    else:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    with file_lock(memo_path):
        memo = _read_json(memo_path)
        memo[str(path)] = {"size": size, "mtime_ns": stamp, "sha256": digest}
        write_json_atomic(memo_path, memo)
    return digest


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
