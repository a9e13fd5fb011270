"""Export a build in rPPG-Toolbox's cached layout (issue 22, item 5: "a path from rPPG-Toolbox").

rPPG-Toolbox (ubicomp-lab/rPPG-Toolbox) preprocesses each video inside its loader into one
``{index}_input{k}.npy`` and one ``{index}_label{k}.npy`` per chunk under
``CACHED_PATH/EXP_DATA_NAME/``, and reads them back through a file-list CSV
``FILE_LIST_PATH/{EXP_DATA_NAME}_{BEGIN}_{END}.csv`` (default ``FILE_LIST_PATH`` =
``CACHED_PATH/DataFileLists``; one column ``input_files`` plus pandas' unnamed index; it sorts the
list and derives each label path by replacing ``input`` with ``label``). :func:`export_toolbox`
writes that layout from the stabilised face crops (``face/frames``) and the frame-clock BVP
(``labels/bvp``) of a build, so a Toolbox config with ``DO_PREPROCESS: False``, ``CACHED_PATH``
set to the export folder and ``EXP_DATA_NAME`` set to the export's name trains on them.

The transforms are written from the description of ``BaseLoader.preprocess`` in
``shared/design/prior-art.md`` §1.3-1.4 (Toolbox ``BaseLoader.py`` L249-259, L407-422, L599-637),
not copied from its code. Every statistic (mean, std) is over the **whole video**, before
chunking, as the Toolbox does.

Differences from the Toolbox, by design: the frames are this package's stabilised crops (its face
stage), not the Toolbox's Haar-box crops, and ``size`` resizes the stored uint8 crop (OpenCV
``INTER_AREA``, the Toolbox's interpolation) rather than the original frame; the label is the BVP
on the frame clock (``labels/bvp``), not the Toolbox's index-resampled PPG.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rppg_prep.errors import ConfigError, StoreError
from rppg_prep.store import atomic_write, check_path_part

#: the Toolbox's ``DATA_TYPE`` values (concatenated on the channel axis, in the order given)
DATA_TYPES = ("Raw", "DiffNormalized", "Standardized")
#: the Toolbox's ``LABEL_TYPE`` values
LABEL_TYPES = ("Raw", "DiffNormalized", "Standardized")
#: the Toolbox's ``CHUNK_LENGTH`` default
DEFAULT_CHUNK_LENGTH = 180
#: the data types of its DeepPhys / TS-CAN configs (6 channels)
DEFAULT_DATA_TYPES = ("DiffNormalized", "Standardized")
DEFAULT_LABEL_TYPE = "DiffNormalized"


def diff_normalize_frames(frames: np.ndarray) -> np.ndarray:
    """The Toolbox's ``DiffNormalized`` data type: normalised frame differences of a whole video.

    ``d[t] = (x[t+1] - x[t]) / (x[t+1] + x[t] + 1e-7)`` for t = 0..T-2, then ``d / std(d)`` with the
    std over every element of the whole video's ``d``, then one zero frame appended so the length
    stays T, and NaN (e.g. 0/0 for a constant video) set to 0. Source: rPPG-Toolbox
    ``BaseLoader.diff_normalize_data`` as described in prior-art.md §1.3 (L599-612).

    Parameters
    ----------
    frames : ndarray, shape (T, H, W, C)
        Pixel values (uint8 0-255 or float); T >= 1.

    Returns
    -------
    ndarray, shape (T, H, W, C), float32
        Dimensionless; the last frame is all zeros.

    Raises
    ------
    ValueError
        ``frames`` is not 4-D or has no frame.
    """
    x = _video(frames)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (x[1:] - x[:-1]) / (x[1:] + x[:-1] + 1e-7)
        d = d / np.std(d) if d.size else d
    out = np.concatenate([d, np.zeros((1, *x.shape[1:]), dtype=np.float64)], axis=0)
    out[np.isnan(out)] = 0.0
    return out.astype(np.float32)


def standardize(x: np.ndarray) -> np.ndarray:
    """The Toolbox's ``Standardized`` type: ``(x - mean) / std`` over all elements, NaN set to 0.

    Used for frames (mean and std over the whole video, every pixel and channel) and for labels.
    Source: rPPG-Toolbox ``BaseLoader.standardized_data`` / ``standardized_label`` as described in
    prior-art.md §1.3 (L614-637).

    Parameters
    ----------
    x : ndarray, any shape
        A video (T, H, W, C) or a label (T,), any numeric dtype.

    Returns
    -------
    ndarray, same shape, float32
        Zero mean, unit std; all zeros when ``x`` is constant (0/0 -> NaN -> 0).
    """
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = (x - np.mean(x)) / np.std(x) if x.size else x.copy()
    out[np.isnan(out)] = 0.0
    return out.astype(np.float32)


def diff_normalize_label(label: np.ndarray) -> np.ndarray:
    """The Toolbox's ``DiffNormalized`` label type: ``diff(y) / std(diff(y))``, a zero appended.

    Source: rPPG-Toolbox ``BaseLoader.diff_normalize_label`` as described in prior-art.md §1.3
    (L614-637); std over the whole video; NaN (a constant label) set to 0.

    Parameters
    ----------
    label : ndarray, shape (T,)
        The BVP on the frame clock (arbitrary units); T >= 1.

    Returns
    -------
    ndarray, shape (T,), float32
        Dimensionless; the last sample is 0.

    Raises
    ------
    ValueError
        ``label`` is not 1-D or is empty.
    """
    y = np.asarray(label, dtype=np.float64)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"a label must be 1-D and non-empty, got shape {y.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.diff(y)
        d = d / np.std(d) if d.size else d
    out = np.concatenate([d, np.zeros(1)])
    out[np.isnan(out)] = 0.0
    return out.astype(np.float32)


def transform_frames(frames: np.ndarray, data_types: Sequence[str]) -> np.ndarray:
    """The Toolbox's input of one whole video: each ``DATA_TYPE`` concatenated on the channel axis.

    Parameters
    ----------
    frames : ndarray, shape (T, H, W, 3)
        The (resized) crops, 0-255.
    data_types : sequence of str
        Each of ``Raw`` (as is), ``DiffNormalized`` (:func:`diff_normalize_frames`),
        ``Standardized`` (:func:`standardize`), in the order given.

    Returns
    -------
    ndarray, shape (T, H, W, 3 * len(data_types)), float32

    Raises
    ------
    ConfigError
        An unknown or empty ``data_types``.
    """
    data_types = check_data_types(data_types)
    parts = []
    for kind in data_types:
        if kind == "Raw":
            parts.append(np.asarray(frames, dtype=np.float32))
        elif kind == "DiffNormalized":
            parts.append(diff_normalize_frames(frames))
        else:
            parts.append(standardize(frames))
    return np.concatenate(parts, axis=-1)


def transform_label(label: np.ndarray, label_type: str) -> np.ndarray:
    """The Toolbox's label of one whole video for ``LABEL_TYPE`` (``Raw``, ``DiffNormalized``,
    ``Standardized``): shape (T,) float32. Raises :class:`ConfigError` for an unknown type."""
    if label_type not in LABEL_TYPES:
        raise ConfigError(f"label type {label_type!r} is not one of {', '.join(LABEL_TYPES)}")
    if label_type == "DiffNormalized":
        return diff_normalize_label(label)
    if label_type == "Standardized":
        return standardize(label)
    return np.asarray(label, dtype=np.float32)


def chunk_bounds(n_frames: int, chunk_length: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk: non-overlapping from frame 0, the remainder dropped.

    The Toolbox's ``chunk`` (``DO_CHUNK: True``, prior-art.md §1.3, L407-422): ``n_frames //
    chunk_length`` chunks. ``chunk_length`` 0 is ``DO_CHUNK: False``: the whole video as one chunk.
    """
    if chunk_length < 0:
        raise ConfigError(f"chunk length must be >= 0 (0 = the whole video), got {chunk_length}")
    if chunk_length == 0:
        return [(0, n_frames)] if n_frames else []
    return [(k * chunk_length, (k + 1) * chunk_length) for k in range(n_frames // chunk_length)]


def check_data_types(data_types: Iterable[str]) -> list[str]:
    """``data_types`` as a list, or a :class:`ConfigError` when empty or holding an unknown type."""
    data_types = list(data_types)
    bad = [t for t in data_types if t not in DATA_TYPES]
    if not data_types or bad:
        raise ConfigError(f"data types must be a non-empty list of {', '.join(DATA_TYPES)}, got {data_types}")
    return data_types


def default_name(dataset: str, size: int, chunk_length: int, data_types: Sequence[str], label_type: str) -> str:
    """The export's folder name (its ``EXP_DATA_NAME``), in the spirit of the Toolbox's auto-built one.

    E.g. ``UBFC_SizeW72_SizeH72_ClipLength180_DataTypeDiffNormalized_Standardized_LabelTypeDiffNormalized_rppg-prep``.
    The Toolbox's own name carries more fields (its crop and detector settings), which describe its
    face crop and not this one, so set ``EXP_DATA_NAME`` in the Toolbox config to this name.
    """
    return (f"{dataset.upper()}_SizeW{size}_SizeH{size}_ClipLength{chunk_length}_DataType{'_'.join(data_types)}"
            f"_LabelType{label_type}_rppg-prep")


def _video(frames: np.ndarray) -> np.ndarray:
    x = np.asarray(frames, dtype=np.float64)
    if x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(f"a video must be (T, H, W, C) with T >= 1, got shape {x.shape}")
    return x


def _resize(frames: np.ndarray, size: int) -> np.ndarray:
    import cv2

    if frames.shape[1:3] == (size, size):
        return frames
    return np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def export_toolbox(cache: str | Path, dataset: str, pipeline: str, out: str | Path, *,
                   chunk_length: int = DEFAULT_CHUNK_LENGTH, size: int | None = None,
                   data_types: Sequence[str] = DEFAULT_DATA_TYPES, label_type: str = DEFAULT_LABEL_TYPE,
                   name: str | None = None, begin: float = 0.0, end: float = 1.0,
                   subjects: Sequence[str] | None = None) -> dict:
    """Write a finished build in rPPG-Toolbox's cached layout under ``out``.

    Per subject (the build's natural order), the whole video's crops ``face/frames`` are resized to
    ``size`` and transformed per ``data_types`` (:func:`transform_frames`), its ``labels/bvp`` per
    ``label_type`` (:func:`transform_label`), both over the whole video, then cut into chunks
    (:func:`chunk_bounds`) and saved as::

        out/<name>/<subject>_input<k>.npy   float32 (chunk_length, size, size, 3 * len(data_types))
        out/<name>/<subject>_label<k>.npy   float32 (chunk_length,)
        out/DataFileLists/<name>_<begin>_<end>.csv

    The CSV is the Toolbox's file list (pandas layout: header ``,input_files``, then ``i,<absolute
    input path>``), its rows in the order the Toolbox reads them (it sorts the list as strings).
    Every file is written atomically (:func:`rppg_prep.store.atomic_write`); nothing is written
    outside ``out``. Files of an earlier export in the same folder are overwritten, never removed.
    Memory: one subject's whole video in float64 per data type (a 2,000-frame 128-px video: ~0.8 GB each).

    Parameters
    ----------
    cache : str or Path
        Store root holding the build.
    dataset, pipeline : str
        Loader name and pipeline name of the build.
    out : str or Path
        Export root (the Toolbox's ``CACHED_PATH``).
    chunk_length : int
        ``CHUNK_LENGTH`` in frames (Toolbox default 180); 0 = ``DO_CHUNK: False`` (one chunk per video).
    size : int, optional
        ``RESIZE.W`` = ``RESIZE.H`` in pixels; default the stored crop size (no resize).
    data_types : sequence of str
        ``DATA_TYPE``: of ``Raw``, ``DiffNormalized``, ``Standardized``.
    label_type : str
        ``LABEL_TYPE``: ``Raw``, ``DiffNormalized`` or ``Standardized``.
    name : str, optional
        The folder name (``EXP_DATA_NAME``); default :func:`default_name`.
    begin, end : float
        ``BEGIN`` / ``END`` in the file list's name (the export holds every chosen subject).
    subjects : sequence of str, optional
        Only these subjects (default all of the build).

    Returns
    -------
    dict
        ``name``, ``folder``, ``file_list`` (Paths), ``inputs`` (list of input Paths, file-list
        order), ``chunks`` (subject -> number of chunks), ``dropped`` (subject -> frames dropped).

    Raises
    ------
    ConfigError
        Unknown data or label type, a bad size / chunk length / name, an unknown subject, or a
        path or subject id holding ``input`` (the Toolbox would derive a wrong label path).
    StoreError
        The build, or its face or labels node, is missing, or labels and frames differ in length.
    """
    from rppg_prep.manifest import open_build

    data_types = check_data_types(data_types)
    if label_type not in LABEL_TYPES:
        raise ConfigError(f"label type {label_type!r} is not one of {', '.join(LABEL_TYPES)}")
    if size is not None and size < 1:
        raise ConfigError(f"size must be >= 1 pixel, got {size}")
    chunk_bounds(0, chunk_length)  # validates
    build = open_build(cache, dataset, pipeline)
    if subjects is not None:
        unknown = [s for s in subjects if s not in build]
        if unknown:
            raise ConfigError(f"subject(s) {', '.join(unknown)} not in the build of {pipeline} (has "
                              f"{', '.join(build) or 'none'})")
        build = {s: build[s] for s in build if s in subjects}
    if not build:
        raise StoreError(f"the build of {pipeline} of {dataset} in {cache} has no finished subject")
    for sid, nodes in build.items():
        check_path_part("subject id", sid)
        missing = [s for s in ("face", "labels") if s not in nodes]
        if missing:
            raise StoreError(f"{sid}: the build has no {' or '.join(missing)} node to export")
    first = next(iter(build.values()))["face"]["frames"]
    size = int(size if size is not None else first.shape[1])
    name = check_path_part("export name", name or default_name(dataset, size, chunk_length, data_types,
                                                                 label_type))
    root = Path(out).resolve()
    folder = root / name
    bad = [p for p in (str(folder), *build) if "input" in p]
    if bad:
        raise ConfigError(f"{bad[0]!r} holds 'input': rPPG-Toolbox finds each label file by replacing every "
                          "'input' in the input path with 'label'; choose another --out / name")
    inputs, chunks, dropped = [], {}, {}
    for sid, nodes in build.items():
        frames = np.asarray(nodes["face"]["frames"][...])
        bvp = np.asarray(nodes["labels"]["bvp"][...])
        if bvp.shape != (frames.shape[0],):
            raise StoreError(f"{sid}: labels/bvp has shape {bvp.shape}, face/frames {frames.shape}: not one "
                             "label sample per frame")
        x = transform_frames(_resize(frames, size), data_types)
        y = transform_label(bvp, label_type)
        bounds = chunk_bounds(len(frames), chunk_length)
        for k, (a, b) in enumerate(bounds):
            _save_npy(folder / f"{sid}_input{k}.npy", np.ascontiguousarray(x[a:b]))
            _save_npy(folder / f"{sid}_label{k}.npy", np.ascontiguousarray(y[a:b]))
            inputs.append(folder / f"{sid}_input{k}.npy")
        chunks[sid] = len(bounds)
        dropped[sid] = len(frames) - (bounds[-1][1] if bounds else 0)
    inputs.sort(key=str)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["", "input_files"])
    for i, p in enumerate(inputs):
        writer.writerow([i, str(p)])
    file_list = root / "DataFileLists" / f"{name}_{float(begin)}_{float(end)}.csv"
    with atomic_write(file_list) as tmp:
        tmp.write_text(buf.getvalue())
    return {"name": name, "folder": folder, "file_list": file_list, "inputs": inputs, "chunks": chunks,
            "dropped": dropped}
