"""Chunk checksums and node digests: finding a store that is no longer what the build wrote.

Every array a stage writes ends its codec chain with zarr v3's ``crc32c`` codec: each chunk file
carries the CRC-32C of its compressed bytes in its last 4 bytes (little-endian), which zarr checks
on every read. With ``write_empty_chunks`` on, every chunk of the grid is a file, so a deleted chunk
is visible as one. At commit, :func:`content_digest` folds each array's name, shape and the
checksum of every chunk into one sha256, stored in the node's ``content_digest`` attribute: a chunk
replaced by another valid chunk passes its own checksum but changes the digest.

:func:`check_node` re-reads every chunk of a node and reports what is wrong, chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ChunkProblem", "content_digest", "check_node", "chunk_paths"]


@dataclass(frozen=True)
class ChunkProblem:
    """One thing wrong with a node.

    Parameters
    ----------
    node : Path
        The node folder.
    array : str
        Array name, or ``""`` for the node as a whole.
    chunk : tuple of int
        Chunk index in the array's chunk grid (empty for the node as a whole).
    problem : str
        ``missing`` (no chunk file), ``checksum`` (its bytes no longer match their CRC-32C),
        ``digest`` (every chunk is valid but the node's content differs from what was committed),
        ``metadata`` (an array's ``zarr.json`` is unreadable) or ``no checksums`` (a node written
        before checksums existed).
    path : Path or None
        The chunk file.
    subject, stage : str
        Whose node it is: from the node's own attributes (:func:`check_node`), or from the manifest
        that references it (``rppg_prep.maintenance.verify_build``); ``""`` when neither says.
    """

    node: Path
    array: str
    chunk: tuple[int, ...]
    problem: str
    path: Path | None = None
    subject: str = ""
    stage: str = ""

    def __str__(self) -> str:
        where = f"array {self.array}" if self.array else "node"
        chunk = f" chunk {'.'.join(map(str, self.chunk))}" if self.chunk else ""
        return f"subject {self.subject}, stage {self.stage}, {where}{chunk}: {self.problem}" + \
            (f" ({self.path})" if self.path else "")


def chunk_paths(array_dir: Path) -> list[tuple[tuple[int, ...], Path]]:
    """Every chunk of an array's grid and the file it must be in.

    The grid and the chunk keys come from zarr's own reading of the array's metadata (its chunk
    grid and chunk key encoding), so any separator or encoding zarr writes is followed; a chunk is
    one file because the store writes no sharding codec.

    Parameters
    ----------
    array_dir : Path
        The array's folder (holding ``zarr.json``).

    Returns
    -------
    list of (tuple of int, Path)
        (chunk index, its file, e.g. ``<array>/c/i/j``), in C order; empty for an array with a
        zero-length axis.

    Raises
    ------
    Exception
        Whatever zarr raises on metadata it cannot read (a missing or damaged ``zarr.json``).
    """
    return _chunk_files(_open(array_dir), array_dir)


def _open(array_dir: Path):  # noqa: ANN202 - zarr.Array, imported lazily
    import zarr

    return zarr.open_array(str(array_dir), mode="r")


def _chunk_files(arr, array_dir: Path) -> list[tuple[tuple[int, ...], Path]]:  # noqa: ANN001 - zarr.Array
    return [(idx, Path(array_dir).joinpath(*arr.metadata.encode_chunk_key(idx).split("/")))
            for idx in itertools.product(*(range(n) for n in arr.cdata_shape))]


def _has_crc(arr) -> bool:  # noqa: ANN001 - zarr.Array
    from zarr.codecs import Crc32cCodec

    return any(isinstance(c, Crc32cCodec) for c in arr.metadata.codecs)


def content_digest(node: str | Path) -> str:
    """sha256 over every array's name, shape and the stored CRC-32C of every chunk of a node.

    Parameters
    ----------
    node : str or Path
        A node folder (committed or still being written).

    Returns
    -------
    str
        64 hex characters; a missing chunk enters as ``missing``.
    """
    h = hashlib.sha256()
    for meta in sorted(Path(node).glob("*/zarr.json")):
        arr = _open(meta.parent)
        # list(shape) prints as zarr.json's JSON list: digests of nodes written earlier still match
        h.update(f"{meta.parent.name}\0{list(arr.shape)}\n".encode())
        for idx, path in _chunk_files(arr, meta.parent):
            try:
                with open(path, "rb") as fh:
                    fh.seek(-4, 2)
                    crc = fh.read(4).hex()
            except OSError:
                crc = "missing"
            h.update(f"{idx}\0{crc}\n".encode())
    return h.hexdigest()


def check_node(node: str | Path) -> list[ChunkProblem]:
    """Read every chunk of a committed node and check it.

    Parameters
    ----------
    node : str or Path
        A node folder.

    Returns
    -------
    list of ChunkProblem
        Empty when every chunk is present, matches its CRC-32C, and the node's content digest is
        the one recorded at commit. Each names the subject and stage of the node's attributes.
    """
    import google_crc32c

    node = Path(node)
    problems: list[ChunkProblem] = []
    try:
        attrs = json.loads((node / "zarr.json").read_text())["attributes"]
    except (OSError, ValueError, KeyError):
        return [ChunkProblem(node, "", (), "metadata", node / "zarr.json")]
    for meta_path in sorted(node.glob("*/zarr.json")):
        name = meta_path.parent.name
        try:
            arr = _open(meta_path.parent)
            has_crc, chunks = _has_crc(arr), _chunk_files(arr, meta_path.parent)
        except Exception:  # noqa: BLE001 - zarr raises JSON, key and validation errors on damaged metadata
            problems.append(ChunkProblem(node, name, (), "metadata", meta_path))
            continue
        if not has_crc:
            problems.append(ChunkProblem(node, name, (), "no checksums"))
            continue
        for idx, path in chunks:
            try:
                data = path.read_bytes()
            except OSError:
                problems.append(ChunkProblem(node, name, idx, "missing", path))
                continue
            if len(data) < 4 or google_crc32c.value(data[:-4]).to_bytes(4, "little") != data[-4:]:
                problems.append(ChunkProblem(node, name, idx, "checksum", path))
    recorded = attrs.get("content_digest")
    if not problems:
        if recorded is None:
            problems.append(ChunkProblem(node, "", (), "no checksums"))
        elif content_digest(node) != recorded:
            problems.append(ChunkProblem(node, "", (), "digest"))
    owner = {"subject": str(attrs.get("subject", "")), "stage": str(attrs.get("stage", ""))}
    return [dataclasses.replace(p, **owner) for p in problems]
