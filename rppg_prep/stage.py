"""Stage declarations and content keys.

A stage is a pure function plus a small frozen record: ``name``, a hand-bumped ``version``, a frozen
params dataclass, the upstream stages it reads and the arrays it writes. A node (stage, subject) is
keyed by the sha256 of the stage's identity, its canonical params, its upstream node keys and the
fingerprints of its raw input files, so a downstream key changes exactly when something it depends
on changed (the chaining of Hugging Face datasets' fingerprints and DVC's stage hashes).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

    from rppg_prep.sources import VideoInfo

__all__ = ["ArraySpec", "Stage", "NodeContext", "StreamCarry", "canonical_json", "node_key",
           "node_provenance", "params_from_dict"]

KEY_LEN = 64
#: on-disk format of every node; part of every key, so a change rebuilds every node once
#: (2: each chunk ends with its CRC-32C, empty chunks are written, nodes record a content digest)
STORE_FORMAT = "2"


#: the roles of a subject's raw files a stage can declare (:attr:`Stage.raw_inputs`)
RAW_ROLES = ("video", "frame_clock", "truth")


@dataclass(frozen=True)
class ArraySpec:
    """One array a stage writes.

    Parameters
    ----------
    name : str
        Array name inside the node group.
    dtype : str
        numpy dtype name.
    axes : tuple of str
        Named axes, e.g. ``("frame", "y", "x", "channel")``.
    unit : str
        Physical unit, ``""`` when dimensionless.
    doc : str
        One-line meaning.
    """

    name: str
    dtype: str
    axes: tuple[str, ...]
    unit: str = ""
    doc: str = ""


@dataclass(frozen=True)
class Stage:
    """Declaration of a pipeline stage.

    Parameters
    ----------
    name : str
    version : str
        Bump by hand whenever the stage's output changes for the same params.
    params : type
        Frozen dataclass of the settings that change the output (never execution settings).
    inputs : tuple of str
        Upstream stage names whose node keys enter this stage's key; the build runs a stage after
        its inputs (:func:`rppg_prep.stages.topological_order`).
    outputs : tuple of ArraySpec
        The arrays the node holds; the kernel creates them from these (:meth:`NodeContext.create`).
    fn : callable (NodeContext) -> None, or (NodeContext, StreamCarry) -> consumer
        The kernel. A stage that reads other nodes writes its node in one call, ``fn(ctx)``. A
        ``streams`` stage is called ``fn(ctx, carry)`` with the pass's :class:`StreamCarry` and
        returns a consumer of the one streaming pass over the frames instead (its ``fn`` is the
        consumer class: ``push(batch, carry)`` per batch, then ``finish(carry)``, or ``abort()``).
    streams : bool
        The stage is fed from the frame source (decode, landmarks, face share one pass).
    raw_inputs : tuple of str
        The subject's raw files the stage reads, by role (:data:`RAW_ROLES`): ``"video"``, the
        video file or frame folder; ``"frame_clock"``, files beside it that hold the frame times
        (VIPL-HR's ``time.txt``); ``"truth"``, the ground-truth files, read through the dataset's
        loader. Each file's content hash enters the node's key (with ``"truth"``, the loader's
        version too), and a kernel is given ``NodeContext.truth`` only when it declares ``"truth"``.
    """

    name: str
    version: str
    params: type
    inputs: tuple[str, ...]
    outputs: tuple[ArraySpec, ...]
    fn: Callable[..., Any] | None = None
    streams: bool = False
    raw_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [r for r in self.raw_inputs if r not in RAW_ROLES]
        if unknown:
            raise ValueError(f"stage {self.name}: raw input role(s) {unknown} unknown; roles: {list(RAW_ROLES)}")

    def spec(self, name: str) -> ArraySpec:
        """The declared output ``name``.

        Parameters
        ----------
        name : str

        Returns
        -------
        ArraySpec

        Raises
        ------
        KeyError
            Not an output of this stage.
        """
        for s in self.outputs:
            if s.name == name:
                return s
        raise KeyError(f"stage {self.name} declares no output {name!r}; outputs: {[s.name for s in self.outputs]}")


@dataclass
class NodeContext:
    """What a stage kernel gets: its subject, params, upstream nodes and the writer of its node.

    Parameters
    ----------
    stage : Stage
    subject : rppg_prep.subject.Subject
    params : dataclass instance
        The stage's params.
    inputs : dict of str to zarr.Group
        Upstream stage -> its committed node (opened read-only).
    writer : rppg_prep.store.NodeWriter or None
        Where the node goes; None when the node is fresh and a streaming stage only feeds the
        stages after it.
    progress : callable (done, total)
        Progress within the node.
    notes : list of str
        Warnings for the build summary; the kernel appends to it.
    truth : callable () -> rppg_prep.subject.Truth, optional
        Reads the subject's ground truth (for stages that take it, like ``labels``).
    """

    stage: Stage
    subject: Any
    params: Any
    inputs: dict[str, Any]
    writer: Any
    progress: Callable[[int, int], None]
    notes: list[str] = dataclasses.field(default_factory=list)
    truth: Callable[[], Any] | None = None

    def create(self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], fill_value: Any = 0) -> Any:
        """Create the declared output ``name`` (dtype, axes, unit and doc from its :class:`ArraySpec`).

        Parameters
        ----------
        name : str
            An output of the stage.
        shape, chunks : tuple of int
            Axis 0 may start at 0 and grow by appends.
        fill_value : scalar

        Returns
        -------
        zarr.Array
        """
        s = self.stage.spec(name)
        return self.writer.create(name, shape=shape, dtype=s.dtype, chunks=chunks, unit=s.unit, axes=s.axes,
                                  doc=s.doc, fill_value=fill_value)

    def write(self, name: str, data: Any, chunks: tuple[int, ...] | None = None) -> None:
        """Write the declared output ``name`` whole.

        Parameters
        ----------
        name : str
            An output of the stage.
        data : array_like
            Of the declared dtype.
        chunks : tuple of int, optional
            Default: one chunk (:meth:`rppg_prep.store.NodeWriter.write`).

        Raises
        ------
        TypeError
            ``data`` is not of the declared dtype (the declaration and the kernel disagree).
        """
        import numpy as np

        s = self.stage.spec(name)
        data = np.asarray(data)
        if data.dtype != np.dtype(s.dtype):
            raise TypeError(f"stage {self.stage.name}: output {name} is declared {s.dtype}, got {data.dtype}")
        self.writer.write(name, data, chunks=chunks, unit=s.unit, axes=s.axes, doc=s.doc)

    def appender(self, name: str, rows: int) -> Any:
        """An appender to the declared output ``name``, which writes whole chunks of ``rows`` rows.

        Parameters
        ----------
        name : str
            An output of the stage, created with 0 rows (:meth:`create`).
        rows : int
            Rows per chunk along axis 0 (the chunking ``name`` was created with).

        Returns
        -------
        rppg_prep.store.Appender
            ``add(rows)`` queues rows, ``close()`` writes the last, partial chunk.
        """
        from rppg_prep.store import Appender  # here, not at the top: the store imports what imports the stages

        self.stage.spec(name)
        return Appender(self.writer, name, rows)


@dataclass
class StreamCarry:
    """What the streaming stages of one pass over the frames hand on to each other.

    :func:`rppg_prep.build.video_pass` makes one per pass and gives it to every consumer, in stage
    order: decode, landmarks, face (those of them the pass runs).

    Parameters
    ----------
    info : rppg_prep.sources.VideoInfo
        The frame source's description: nominal ``fps`` (Hz), ``width`` and ``height`` (px),
        declared ``n_frames``. Set by the video pass; read by decode (nominal rate and frame size
        for its node) and face (rate and frame size for the tracker).
    landmark_rows : collections.deque of (numpy.ndarray, numpy.ndarray)
        Landmark rows in frame order, each (landmarks (k, K, 2) float32 px, detected (k,) bool).
        Appended by landmarks (computed, or read back from its fresh node), lagging the frames by
        up to ``every_n_frames - 1``; popped from the left by face, which waits for them.
    t_s : numpy.ndarray or None
        (T,) float64, s: every frame's presentation time, repaired. Set by decode's ``finish``;
        read by face's ``finish``. None before.
    n_frames : int
        T, the frames decoded. Set by decode's ``finish`` (0 before); read by face's ``finish`` and
        by the video pass (the subject's frame count).
    fps : float or None
        Effective frame rate, Hz: (T - 1) / the span of ``t_s`` (the nominal rate when T < 2). Set
        by decode's ``finish``; read by face's ``finish``. None before.
    """

    info: VideoInfo
    landmark_rows: deque[tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=deque)
    t_s: np.ndarray | None = None
    n_frames: int = 0
    fps: float | None = None


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, Path):
        return obj.as_posix()
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise TypeError(f"cannot hash non-finite float {obj!r}")
        return obj
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    raise TypeError(f"cannot hash value of type {type(obj).__name__}: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Serialise ``obj`` to canonical JSON (sorted keys, no spaces, tuples as lists).

    Parameters
    ----------
    obj : Any
        Dataclasses, dicts, lists, tuples, enums, paths, finite floats, ints, strings, None.

    Returns
    -------
    str
        The same text for equal values, whatever their order or container type.

    Raises
    ------
    TypeError
        If a value has no canonical JSON form; rather than guessing a key (a silent recompute).

    Examples
    --------
    >>> canonical_json({"b": (1, 2), "a": 1.5})
    '{"a":1.5,"b":[1,2]}'
    """
    return json.dumps(_plain(obj), sort_keys=True, separators=(",", ":"), allow_nan=False)


def node_key(stage: Stage, params: Any, upstream: dict[str, str], fingerprints: dict[str, str]) -> str:
    """Key of one node: sha256 hex of stage identity, params, upstream keys and input hashes.

    Parameters
    ----------
    stage : Stage
    params : dataclass instance
        The stage's params.
    upstream : dict of str to str
        Upstream stage name -> node key.
    fingerprints : dict of str to str
        Raw input role (e.g. ``"video"``) -> content sha256.

    Returns
    -------
    str
        64 lowercase hex characters.
    """
    payload = {
        "store": STORE_FORMAT,
        "stage": stage.name,
        "version": stage.version,
        "params": params,
        "inputs": dict(sorted(upstream.items())),
        "files": dict(sorted(fingerprints.items())),
    }
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def node_provenance(stage: Stage, key: str, params: Any, upstream: dict[str, str], *, subject: str, dataset: str,
                    fingerprints: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """The provenance attributes every node carries: what :func:`node_key` hashed, in readable form.

    Parameters
    ----------
    stage : Stage
    key : str
        The node's key (:func:`node_key` of the same arguments).
    params : dataclass instance
        The stage's params.
    upstream : dict of str to str
        Upstream stage name -> node key.
    subject, dataset : str
        Subject id and loader name.
    fingerprints : dict of str to str, optional
        Raw input role -> content hash, when the node reads raw inputs.
    **extra
        Further attributes (frame counts, notes, the source files).

    Returns
    -------
    dict
        JSON-ready: ``key``, ``stage``, ``version``, ``subject``, ``dataset``, ``params``, ``inputs``,
        ``rppg_prep`` (package version), ``files`` when given, and ``extra``.
    """
    from rppg_prep import __version__

    out = {"key": key, "stage": stage.name, "version": stage.version, "subject": subject, "dataset": dataset,
           "params": json.loads(canonical_json(params)), "inputs": dict(sorted(upstream.items())),
           "rppg_prep": __version__}
    if fingerprints:
        out["files"] = dict(sorted(fingerprints.items()))
    return {**out, **extra}


def params_from_dict(cls: type, values: dict[str, Any] | None) -> Any:
    """Build a params dataclass from a config mapping, casting numbers to the declared field types.

    YAML ``1`` and CLI ``1.0`` then give the same key.

    ``cls`` is the frozen params dataclass (``Stage.params``) to build.

    Parameters
    ----------
    values : dict, optional
        Parameter name -> value; missing ones take the defaults.

    Returns
    -------
    dataclass instance
        ``cls(**values)`` with the values cast.

    Raises
    ------
    ValueError
        Unknown keys (the message lists the valid ones), or a value of the wrong type for its field
        (the type of the field's default: a string or a boolean for a number, a non-integral number
        for an integer, a list of another length for a tuple) or a non-finite number (``.nan``,
        ``.inf``); the message names the parameter.
    """
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields), key=str)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(fields)}")
    defaults = cls()
    return cls(**{name: _cast(name, getattr(defaults, name), value) for name, value in values.items()})


def _cast(name: str, default: Any, value: Any) -> Any:
    """``value`` as the type of ``default`` (a config value of param ``name``), or a ValueError."""
    def bad(kind: str) -> ValueError:
        return ValueError(f"{name} must be {kind}, got {value!r}")

    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        if not math.isfinite(value):
            raise bad("a finite number")
        if isinstance(default, float):
            return float(value)
        if not float(value).is_integer():
            raise bad("a whole number")
        return int(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or len(value) != len(default):
            raise bad(f"a list of {len(default)} values")
        return tuple(_cast(f"{name}[{i}]", d, v) for i, (d, v) in enumerate(zip(default, value)))
    if isinstance(default, str) and not isinstance(value, str):
        raise bad("a string")
    return value
