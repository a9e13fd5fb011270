"""Zarr v3 node store: atomic node commits, locks and input fingerprints (manifests: :mod:`rppg_prep.manifest`).

Layout (under the cache root)::

    <dataset>.zarr/                         zarr v3 group, one per dataset
      <subject>/<stage>-<key12>/<array>     one node; group attrs carry its provenance
    <dataset>.builds/<pipeline>.json        manifest: subject -> stage -> node, status, config
    fingerprints.json                       sha256 of raw inputs, memoised on (path, size, mtime_ns)
    .partial/                               nodes being written (never read)
    .replaced/                              an old node parked while a replace's two renames run

A node is written under ``.partial/`` and renamed into place only after its last array and its
``complete`` attribute are written (zarr's own ``_atomic_write`` idea, at directory level), so a crash
leaves the old node or none, never a half node that looks finished. Replacing a node (``--force``, or a
damaged one in the way) is crash-safe too (:meth:`NodeWriter.commit`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import sys
import time
import threading
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING

import numpy as np
from filelock import FileLock

from rppg_prep.errors import ConfigError, StoreError
from rppg_prep.faults import fault_point

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
    "build_lock",
    "holding_build_lock",
    "gc_lock",
    "check_name",
    "check_path_part",
    "restore_replaced",
    "parked_node",
    "recover_replaced",
    "node_cache",
    "iter_nodes",
    "partial_dir",
    "partial_key",
    "iter_partials",
]

#: zstd level 1 with bit-shuffle: the best speed/size trade-off measured on decoded video frames
PIXEL_CODEC = {"cname": "zstd", "clevel": 1, "shuffle": "bitshuffle"}
SIGNAL_CODEC = {"cname": "zstd", "clevel": 3, "shuffle": "shuffle"}

if TYPE_CHECKING:  # zarr is imported where nodes are opened or written: a no-op rebuild only reads JSON
    import zarr


#: what a dataset or pipeline name may be: one path component, so that it can never leave the cache
_NAME = re.compile(r"[A-Za-z0-9._-]+")


def check_name(value: Any, what: str) -> str:
    """``value`` if it is a safe dataset or pipeline name, else a :class:`ConfigError`.

    The one check of every name that becomes part of a path under the cache: letters, digits,
    ``.``, ``_`` and ``-`` only, and not ``.`` or ``..`` (so never a separator, an absolute path
    or a way out of the cache).

    Parameters
    ----------
    value : Any
        The name.
    what : str
        What it names, for the message (e.g. ``"pipeline name"``).

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    ConfigError
        ``value`` is not a string, or not such a name.
    """
    if not isinstance(value, str) or not _NAME.fullmatch(value) or value in (".", ".."):
        raise ConfigError(f"{what} must be letters, digits, '.', '_' or '-' (and not '.' or '..'), got {value!r}")
    return value


def check_path_part(kind: str, value: Any) -> str:
    """``value`` if it can be one folder name under the cache, else a :class:`ConfigError`.

    The check of every subject id before it becomes a folder of the store. Subject ids come from
    the dataset's own folder and file names, so spaces and non-ASCII letters are allowed (unlike
    :func:`check_name`); what is refused is what would put a node somewhere else: an empty id,
    ``.`` or ``..``, a path separator (``/`` or ``\\``) or a NUL character.

    Parameters
    ----------
    kind : str
        What the value is, for the message (e.g. ``"subject id"``).
    value : Any
        The would-be folder name.

    Returns
    -------
    str
        ``value``.

    Raises
    ------
    ConfigError
        ``value`` is not a string, or not a single, plain folder name.
    """
    if (not isinstance(value, str) or value.strip() in ("", ".", "..")
            or any(c in value for c in ("/", "\\", "\0"))):
        raise ConfigError(f"{kind} {value!r} cannot be a folder name in the store (it is empty, '.' or '..', or "
                          "holds a path separator or NUL); a dataset root given as '.' or '..' is resolved to "
                          "its real folder name, so rename the folder or pass its full path as --root")
    return value


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

    Raises
    ------
    ConfigError
        ``dataset`` is not a safe name (:func:`check_name`).
    """
    return Path(cache) / f"{check_name(dataset, 'dataset name')}.zarr"


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

    Raises
    ------
    ConfigError
        ``subject`` or ``stage`` is not one plain folder name (:func:`check_path_part`): a node
        never lands beside the subjects' folders or outside the store.
    """
    return (dataset_store(cache, dataset) / check_path_part("subject id", subject)
            / f"{check_path_part('stage name', stage)}-{key[:12]}")


def node_cache(path: str | Path) -> Path:
    """The store root a node folder (:func:`node_path`) lies under: the inverse of its layout.

    Parameters
    ----------
    path : str or Path
        ``cache/<dataset>.zarr/<subject>/<stage>-<key12>``.

    Returns
    -------
    Path
        ``cache``.
    """
    return Path(path).parents[2]


def iter_nodes(cache: str | Path) -> Iterator[Path]:
    """Every node folder under ``cache``, of every dataset and subject (complete or not).

    Parameters
    ----------
    cache : str or Path
        Store root.

    Yields
    ------
    Path
        ``cache/<dataset>.zarr/<subject>/<stage>-<key12>``.
    """
    for store in sorted(Path(cache).glob("*.zarr")):
        for subject in sorted(p for p in store.iterdir() if p.is_dir()):
            yield from sorted(p for p in subject.iterdir() if p.is_dir())


def partial_dir(cache: str | Path, stage: str, key: str) -> Path:
    """A fresh folder name under ``cache/.partial/`` for a node being written.

    Its name carries the stage and the full key, so that ``gc`` can tell whether a build still owns
    it (:func:`partial_key`).

    Parameters
    ----------
    cache : str or Path
        Store root.
    stage, key : str
        The node's stage and 64-hex key.

    Returns
    -------
    Path
        ``cache/.partial/<stage>-<key>.<uuid4 hex>`` (not created).
    """
    return Path(cache) / ".partial" / f"{stage}-{key}.{uuid.uuid4().hex}"


def partial_key(path: str | Path) -> str:
    """The node key in the name of a :func:`partial_dir` folder.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    str
        The key, ``""`` when the name carries none.
    """
    return Path(path).name.split(".", 1)[0].rsplit("-", 1)[-1]


def iter_partials(cache: str | Path) -> list[Path]:
    """The folders under ``cache/.partial/``: nodes being written, or left by a crash.

    Parameters
    ----------
    cache : str or Path
        Store root.

    Returns
    -------
    list of Path
        Sorted; empty when there is no ``.partial`` folder.
    """
    folder = Path(cache) / ".partial"
    return sorted(folder.iterdir()) if folder.is_dir() else []


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
        # a replace a crash interrupted left the old node parked: read it there (reading never renames;
        # the next build or gc puts it back, store.restore_replaced)
        parked = parked_node(path)
        if parked is None:
            raise StoreError("no complete node here; run `rppg-prep build` first", path=path)
        path = parked
    import zarr

    return zarr.open_group(str(path), mode="r")


_CONSOLIDATE_LOCK = threading.Lock()


def _array_attrs(unit: str, doc: str) -> dict[str, str]:
    """An array's attributes: CF's ``units`` (omitted when dimensionless) and a ``doc`` line."""
    return {"units": unit, "doc": doc} if unit else {"doc": doc}


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
        self.tmp = partial_dir(node_cache(self.final), attrs.get("stage", "node"), attrs.get("key", ""))
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

        self._fault("enospc")
        # crc32c last: every chunk file carries the checksum of its bytes, checked on every read;
        # empty chunks are written too, so that a deleted chunk file is a visible loss
        codecs = (BloscCodec(**(PIXEL_CODEC if dtype == np.uint8 else SIGNAL_CODEC)), Crc32cCodec())
        arr = self.group.create_array(name, shape=shape, dtype=dtype, chunks=chunks, compressors=codecs,
                                      fill_value=fill_value, dimension_names=axes or None,
                                      attributes=_array_attrs(unit, doc), config={"write_empty_chunks": True})
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
        """Write the provenance attributes with ``complete=True`` last, then move the node into place.

        The caller holds the node's lock (:func:`node_lock`; the build does). Three cases:

        * nothing at ``final``: one rename puts the finished folder there;
        * a complete node at ``final`` and no ``replace``: it is kept (same key, same content)
          and the new folder is dropped;
        * ``replace`` (``--force``), or a folder at ``final`` that is not a complete node (a
          damaged one, e.g. a truncated ``zarr.json``, which :func:`node_exists` rejects): the new
          node takes its place.

        Replacing is crash-safe. On Linux it is one atomic ``renameat2(RENAME_EXCHANGE)`` of the
        two folders: readers and crashes see the old node or the new one; the old one, now at the
        temporary path under ``.partial/``, is then deleted (after a crash there, ``gc`` deletes
        it). Where that call is missing or refused (another OS, NFS, or
        ``RPPG_PREP_RENAME_EXCHANGE=0``), it is two renames, and in between the old node waits
        under ``cache/.replaced/`` (its path relative to the cache, with the key appended), never
        under ``.partial/`` where ``gc`` would delete it. An error in the second rename puts it
        back at once; after a crash there, the next :func:`open_node` of that node, the next
        build's plan or ``gc`` puts it back (:func:`restore_replaced`). A backup the new node
        supersedes is dropped by the commit.
        """
        self.attrs["wall_s"] = round(time.perf_counter() - self._t0, 3)
        self.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.attrs["bytes"] = sum(f.stat().st_size for f in self.tmp.rglob("*") if f.is_file())
        from rppg_prep.integrity import content_digest

        self.attrs["content_digest"] = content_digest(self.tmp)
        self.attrs["complete"] = True
        import zarr

        self._mark_clock()
        self.group.attrs.update(self.attrs)
        # after the last metadata write: plain xarray.open_zarr and zarr.open_consolidated read the
        # node's metadata from one file, without the "no consolidated metadata" warning
        with _CONSOLIDATE_LOCK, warnings.catch_warnings():
            # zarr notes on every call that consolidation is a zarr-python extension of v3; known and
            # wanted here. The lock: catch_warnings swaps process-wide state, and stages run in threads
            warnings.filterwarnings("ignore", "Consolidated metadata is currently not part", UserWarning)
            zarr.consolidate_metadata(str(self.tmp))
        _ensure_group(self.final.parents[1], {"rppg_prep": "dataset store"})
        _ensure_group(self.final.parent, {"subject": self.final.parent.name})
        if self.final.exists() and not self.replace and node_exists(self.final):
            # same key means same content: another build got there first
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.final.exists():  # --force, or a damaged node in the way
            self._replace()
        else:
            try:
                os.rename(self.tmp, self.final)
            except OSError:
                if not node_exists(self.final):
                    raise
                shutil.rmtree(self.tmp, ignore_errors=True)
        for backup in _backups(self.final):  # an interrupted replace's old node: superseded now
            _drop_backup(backup)
        return self.final

    def _fault(self, kind: str) -> None:
        """This node's fault point of ``kind`` (:func:`rppg_prep.faults.fault_point`)."""
        fault_point(kind, str(self.attrs.get("stage")), str(self.attrs.get("subject")))

    def _mark_clock(self) -> None:
        """Name ``t_s`` as the coordinate of ``frame`` with CF's ``coordinates`` attribute, so that
        ``xarray.open_zarr`` on the node gives the frame clock as a coordinate.

        As xarray writes it: on each array along ``frame``, or on the group when no other array is.
        """
        clock = self.arrays.get("t_s")
        if clock is None or tuple(clock.metadata.dimension_names or ()) != ("frame",):
            return
        on_frame = [arr for name, arr in self.arrays.items()
                    if name != "t_s" and "frame" in (arr.metadata.dimension_names or ())]
        for arr in on_frame:
            arr.attrs["coordinates"] = "t_s"
        if not on_frame:
            self.attrs["coordinates"] = "t_s"

    def _replace(self) -> None:
        """Swap the finished node in for whatever is at ``final`` (see :meth:`commit`)."""
        if _exchange(self.tmp, self.final):
            self._fault("crash-replace")
            _remove(self.tmp)  # the old node, swapped out
            return
        backup = _backup_path(self.final, str(self.attrs.get("key", "")))
        _remove(backup)
        backup.parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.final, backup)
        self._fault("crash-replace")
        try:
            os.rename(self.tmp, self.final)
        except BaseException:
            os.rename(backup, self.final)
            _drop_backup(backup)  # the emptied folders
            raise
        _drop_backup(backup)

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> NodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the two existing paths ``a`` and ``b`` in one atomic step (Linux ``renameat2``).

    Returns
    -------
    bool
        False where the call is unavailable (not Linux, no glibc symbol, a filesystem that refuses
        it, or ``RPPG_PREP_RENAME_EXCHANGE=0``): nothing was changed, rename another way.

    Raises
    ------
    OSError
        The swap failed for another reason (e.g. a path is missing).
    """
    if not sys.platform.startswith("linux") or os.environ.get("RPPG_PREP_RENAME_EXCHANGE", "1") == "0":
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _backup_path(final: Path, key: str) -> Path:
    """Where :meth:`NodeWriter.commit` parks the node it replaces.

    ``cache/.replaced/<dataset>.zarr/<subject>/<node>.<key>``: outside ``.partial/`` (``gc``).
    """
    cache = node_cache(final)
    return cache / ".replaced" / final.relative_to(cache).parent / f"{final.name}.{key}"


def _drop_backup(backup: Path) -> None:
    """Delete a parked old node and the folders under ``cache/.replaced`` it leaves empty."""
    _remove(backup)
    for folder in list(backup.parents)[:3]:  # <subject>, <dataset>.zarr, .replaced
        try:
            folder.rmdir()
        except OSError:  # not empty (or gone)
            break


def _backups(final: Path) -> list[Path]:
    if len(final.parents) < 3:  # not a node path (cache/<dataset>.zarr/<subject>/<node>)
        return []
    folder = _backup_path(final, "").parent
    return sorted(folder.glob(f"{final.name}.*")) if folder.is_dir() else []


def parked_node(final: str | Path) -> Path | None:
    """The complete old node a crash left parked for ``final`` (nothing at ``final``), else None.

    Read-only: readers and ``status`` use it in place; :func:`restore_replaced` moves it back.

    Parameters
    ----------
    final : str or Path
        A node folder (:func:`node_path`).

    Returns
    -------
    Path or None
    """
    final = Path(final)
    if final.exists():
        return None
    found = _backups(final)
    return found[-1] if found and node_exists(found[-1]) else None


def restore_replaced(final: str | Path) -> bool:
    """Finish a replace of node ``final`` that a crash interrupted between its two renames.

    When nothing is at ``final`` and :meth:`NodeWriter.commit` left the old node under
    ``cache/.replaced/``, the old node is renamed back into place; when a node is at ``final``, the
    backup is superseded and deleted. Skipped while a build holds the node's lock (it is writing it).

    Parameters
    ----------
    final : str or Path
        A node folder (:func:`node_path`).

    Returns
    -------
    bool
        True when a node was put back at ``final``.
    """
    final = Path(final)
    found = _backups(final)
    if not found:
        return False
    key = found[-1].name.split(".", 1)[1]
    try:
        lock = node_lock(node_cache(final), key, timeout_s=0) if key else contextlib.nullcontext()
        with lock:
            if final.exists():
                for backup in found:
                    _drop_backup(backup)
                return False
            os.rename(found[-1], final)
            _drop_backup(found[-1])  # only its emptied parent folders are left to remove
            return True
    except Exception:  # a build holds the lock, or the cache is read-only: leave it to the next try
        return False


def recover_replaced(cache: str | Path) -> list[Path]:
    """:func:`restore_replaced` for every node an interrupted replace left under ``cache/.replaced/``.

    Parameters
    ----------
    cache : str or Path
        Store root.

    Returns
    -------
    list of Path
        The nodes put back in place.
    """
    parked = Path(cache) / ".replaced"
    if not parked.is_dir():
        return []
    finals = {p.parent.relative_to(parked) / p.name.split(".", 1)[0] for p in parked.glob("*/*/*")}
    return [Path(cache) / f for f in sorted(finals) if restore_replaced(Path(cache) / f)]


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


# The cache's use lock: builds share the cache, `gc` takes it alone. filelock has no shared mode, so
# every build holds a lock file of its own, ``.locks/builds/<pid>-<random>.lock``, and ``.locks/gc.lock``
# is exclusive: a build takes it only while it creates its own lock (so it waits while a gc runs),
# and gc holds it for its whole run and refuses while any build lock is held. Locks are OS file
# locks: a killed build releases its lock, and gc deletes the lock file it left.

def _use_locks(cache: str | Path) -> tuple[Path, Path]:
    locks = Path(cache) / ".locks"
    (locks / "builds").mkdir(parents=True, exist_ok=True)
    return locks / "gc.lock", locks / "builds"


@contextlib.contextmanager
def build_lock(cache: str | Path) -> Iterator[Path]:
    """Hold the cache for a build (shared with other builds; ``gc`` refuses to run meanwhile).

    Everything that writes nodes and records them in a manifest afterwards holds it from before
    it plans until it has recorded them (:func:`rppg_prep.dag.run_build`, ST2S's derived nodes).
    Waits while a ``gc`` runs.

    Parameters
    ----------
    cache : str or Path
        Store root.

    Yields
    ------
    Path
        This build's own lock file, ``cache/.locks/builds/<pid>-<random>.lock``.
    """
    gc_path, builds = _use_locks(cache)
    mine = FileLock(str(builds / f"{os.getpid()}-{uuid.uuid4().hex[:12]}.lock"))
    with FileLock(str(gc_path)):  # not while a gc runs
        mine.acquire()
    try:
        yield Path(mine.lock_file)
    finally:
        mine.release()
        Path(mine.lock_file).unlink(missing_ok=True)


def holding_build_lock(fn: Callable) -> Callable:
    """Decorator: run ``fn`` under :func:`build_lock` of its ``cache`` argument.

    Parameters
    ----------
    fn : callable
        A function with a parameter named ``cache``.

    Returns
    -------
    callable
        ``fn`` with the same signature and docstring.
    """
    import functools
    import inspect

    sig = inspect.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with build_lock(sig.bind(*args, **kwargs).arguments["cache"]):
            return fn(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def gc_lock(cache: str | Path) -> Iterator[None]:
    """Hold the cache alone, for ``gc``: no build runs meanwhile, and none starts until it is released.

    Parameters
    ----------
    cache : str or Path
        Store root.

    Yields
    ------
    None

    Raises
    ------
    CacheBusyError
        A build holds the cache (its lock file is named); nothing was done.
    """
    from filelock import Timeout

    from rppg_prep.errors import CacheBusyError

    gc_path, builds = _use_locks(cache)
    with FileLock(str(gc_path)):  # another gc: wait for it
        busy = []
        for path in sorted(builds.glob("*.lock")):
            try:
                with FileLock(str(path), timeout=0):
                    pass
            except Timeout:
                busy.append(path)
                continue
            path.unlink(missing_ok=True)  # left by a build that was killed
        if busy:
            pids = sorted({p.name.split("-", 1)[0] for p in busy})
            raise CacheBusyError(f"{len(busy)} build(s) are using this cache (process {', '.join(pids)}; lock "
                                 f"{busy[0]}); gc removed nothing. Run it again when they have finished")
        yield


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


def fingerprint(path: str | Path, cache: str | Path, *, remember: bool = True) -> str:
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
    remember : bool
        Write a new digest into the memo. False for read-only commands (``status``): the memo is
        read, never written.

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
    if not remember:
        return digest
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
