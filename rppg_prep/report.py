"""Look inside a finished build: what each node stores and how well it compresses, and PNGs to eyeball.

:func:`summarize_build` lists every array of every node (shape, dtype, chunks, bytes on disk,
compression ratio); :func:`inspect_png` draws a subject's face crops with their landmarks, a few
ST images and the labels (see :mod:`rppg_prep.plots`). Both read the build manifest, so they see
exactly the nodes a ``rppg-prep build`` recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rppg_prep.datasets import natural_key
from rppg_prep.errors import StoreError
from rppg_prep.manifest import manifest_path, read_manifest
from rppg_prep.stages import ORDER
from rppg_prep.stages.labels import label_name
from rppg_prep.store import node_exists, open_node

__all__ = ["summarize_build", "inspect_png", "array_disk_bytes", "landmarks_in_crop"]

log = logging.getLogger(__name__)

N_CROPS = 16
N_ST_IMAGES = 4


def array_disk_bytes(node_dir: str | Path, name: str) -> int:
    """Bytes of the stored chunks of array ``name`` of the node at ``node_dir``.

    In a zarr v3 local store the array lives in ``<node_dir>/<name>/``: its ``zarr.json`` metadata
    and its chunks under ``c/``. Only the chunk files are counted (chunks equal to the fill value are
    not written, so an all-fill array stores 0 bytes).
    """
    chunk_dir = Path(node_dir) / name / "c"
    return sum(f.stat().st_size for f in chunk_dir.rglob("*") if f.is_file()) if chunk_dir.is_dir() else 0


def landmarks_in_crop(landmarks_px, box, size_px: int) -> np.ndarray:
    """Map landmarks from source-frame pixels into the coordinates of the S x S face crop.

    Parameters
    ----------
    landmarks_px : array_like of float, shape (n, K, 2)
        x, y in source-frame px (the ``landmarks`` node); NaN stays NaN.
    box : array_like of float, shape (n, 4)
        Crop squares x0, y0, side, side in source px (the ``face`` node's ``box``).
    size_px : int
        Crop side S, px.

    Returns
    -------
    ndarray of float64, shape (n, K, 2)
        ``(lm - (x0, y0)) * S / side``: 0 is the crop's left / top edge, S its right / bottom edge.

    Raises
    ------
    ValueError
        Shapes that do not match, or a box side that is not positive.
    """
    lm = np.asarray(landmarks_px, dtype=np.float64)
    bx = np.asarray(box, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[2] != 2 or bx.shape != (lm.shape[0], 4):
        raise ValueError(f"landmarks_px must be (n, K, 2) and box (n, 4); got {lm.shape} and {bx.shape}")
    if np.any(~(bx[:, 2] > 0)):
        raise ValueError("box sides must be > 0 px")
    return (lm - bx[:, None, :2]) * (float(size_px) / bx[:, None, 2:3])


def _subjects(cache: str | Path, dataset: str, pipeline: str, subject: str | None) -> dict[str, dict[str, Any]]:
    """Manifest records of the requested subject(s); a StoreError naming the known ones otherwise."""
    man = read_manifest(cache, dataset, pipeline)
    subjects = man.get("subjects", {})
    if subject is None:
        return subjects
    if subject not in subjects:
        known = ", ".join(sorted(subjects, key=natural_key)) or "none"
        raise StoreError(f"no subject {subject!r} in the build of pipeline {pipeline!r} for dataset {dataset!r}; "
                         f"known subjects: {known}", path=manifest_path(cache, dataset, pipeline))
    return {subject: subjects[subject]}


def _nodes(cache: str | Path, sid: str, rec: dict[str, Any]) -> dict[str, tuple[Path, Any]]:
    """stage -> (node dir, zarr group) of the subject's nodes that exist.

    A subject that built ok must have all its nodes (a missing one raises StoreError); a failed
    subject contributes the nodes it finished.
    """
    out = {}
    for stage in sorted(rec.get("nodes", {}), key=lambda s: ORDER.index(s) if s in ORDER else 99):
        path = Path(cache) / rec["nodes"][stage]["path"]
        if rec.get("status") != "ok" and not node_exists(path):
            continue
        out[stage] = (path, open_node(path))
    return out


def summarize_build(cache: str | Path, dataset: str, pipeline: str, subject: str | None = None) -> list[dict]:
    """One row per (subject, stage, array) of a build.

    Parameters
    ----------
    cache : str or Path
        Store root of the build.
    dataset, pipeline : str
        Dataset name (``ubfc``) and pipeline name (``ubfc``) of the build.
    subject : str, optional
        Only this subject; default every subject in the manifest (failed subjects list the nodes
        they finished).

    Returns
    -------
    list of dict
        Rows in subject, stage (pipeline order), array-name order, with keys ``subject``, ``stage``,
        ``key`` (12 hex chars of the node key), ``array``, ``shape`` (tuple), ``dtype`` (str),
        ``chunks`` (tuple), ``bytes_stored`` (int, bytes of the array's chunk files on disk),
        ``nbytes`` (int, uncompressed), ``ratio`` (``nbytes / bytes_stored``; inf when nothing is
        stored, NaN for an empty array), ``status`` (the subject's build status) and ``path``.

    Raises
    ------
    StoreError
        No such build, no such subject (the message lists the known ones), or a node of a
        successfully built subject is missing.
    """
    rows = []
    subjects = _subjects(cache, dataset, pipeline, subject)
    for sid in sorted(subjects, key=natural_key):
        rec = subjects[sid]
        for stage, (path, group) in _nodes(cache, sid, rec).items():
            key = str(group.attrs.get("key", rec["nodes"][stage]["key"]))[:12]
            for name, arr in sorted(group.arrays(), key=lambda kv: kv[0]):
                stored = array_disk_bytes(path, name)
                nbytes = int(arr.nbytes)
                ratio = float("nan") if nbytes == 0 else (nbytes / stored if stored else float("inf"))
                rows.append({
                    "subject": sid, "stage": stage, "key": key, "array": name,
                    "shape": tuple(int(s) for s in arr.shape), "dtype": str(arr.dtype),
                    "chunks": tuple(int(c) for c in arr.chunks), "bytes_stored": stored, "nbytes": nbytes,
                    "ratio": ratio, "status": rec.get("status", "?"), "path": str(path / name),
                })
    return rows


def _even(n: int, k: int) -> np.ndarray:
    """Up to ``k`` distinct indices spread evenly over ``range(n)``, first and last included."""
    return np.unique(np.linspace(0, n - 1, min(k, n)).round().astype(np.int64))


def inspect_png(cache: str | Path, dataset: str, pipeline: str, subject: str, out_dir: str | Path, *,
                alignment=None) -> list[Path]:
    """Write PNGs of one subject's build into ``out_dir``.

    - ``<subject>_crops.png``: 16 evenly spaced face crops with the landmarks mapped into crop
      coordinates, ``(lm - (x0, y0)) * S / side`` from the face ``box``; captions give frame, time
      and whether the frame is valid.
    - ``<subject>_st.png``: 4 ST images of segment 0, strips spread across the face (if the video
      holds a whole segment).
    - ``<subject>_labels.png``: the reference pulse and the HR per window (Welch and beats) against
      the device HR.
    - ``<subject>_alignment.png``: with ``alignment`` (a :class:`rppg_prep.alignment.LagCurve` from
      :func:`subject_alignment`), the pixel-to-label lag-correlation curve.

    A figure whose nodes are missing (a failed subject) is skipped with a warning.

    Parameters
    ----------
    cache : str or Path
        Store root of the build.
    dataset, pipeline : str
        Dataset and pipeline names of the build.
    subject : str
        Subject id, e.g. ``subject3``.
    out_dir : str or Path
        Folder for the PNGs (created).
    alignment : LagCurve, optional
        Drawn as ``<subject>_alignment.png``.

    Returns
    -------
    list of Path
        The PNGs written.

    Raises
    ------
    StoreError
        No such build, or no such subject (the message lists the known ones).
    """
    from rppg_prep import plots

    rec = _subjects(cache, dataset, pipeline, subject)[subject]
    nodes = {stage: g for stage, (_, g) in _nodes(cache, subject, rec).items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def missing(what: str, need: tuple[str, ...]) -> bool:
        lost = [s for s in need if s not in nodes]
        if lost:
            log.warning("%s: no %s node(s) (subject status %s); %s PNG skipped", subject, ", ".join(lost),
                        rec.get("status"), what)
        return bool(lost)

    if not missing("crops", ("face", "landmarks")):
        face, lmk = nodes["face"], nodes["landmarks"]
        frames = face["frames"]
        n, size = frames.shape[0], frames.shape[1]
        if n:
            idx = _even(n, N_CROPS)
            crops = frames.oindex[idx]
            valid = face["valid"].oindex[idx]
            lm_crop = landmarks_in_crop(lmk["landmarks"].oindex[idx], face["box"].oindex[idx], size)
            t_s = nodes["decode"]["t_s"].oindex[idx] if "decode" in nodes else idx / float(face.attrs.get("fps", 30.0))
            titles = [f"#{i}  {t:.1f} s{'' if v else '  INVALID'}"
                      for i, t, v in zip(idx, t_s, valid)]
            written.append(plots.contact_sheet(crops, out_dir / f"{subject}_crops.png", landmarks_px=lm_crop,
                                               ncols=8, titles=titles,
                                               title=f"{subject}: face crops with landmarks"))
    if not missing("ST", ("st_map",)):
        st = nodes["st_map"]
        images = st["images"]
        if images.shape[0] and images.shape[1]:
            strips = _even(images.shape[1], N_ST_IMAGES)
            imgs = images.oindex[0, strips]
            cols = st["strip_col"][:]
            win = st["window"][0]
            strip_px = int(st.attrs.get("params", {}).get("strip_px", 3))
            fps = float(nodes["face"].attrs["fps"]) if "face" in nodes and "fps" in nodes["face"].attrs else None
            titles = [f"segment 0 (frames {win[0]}-{win[1]}), strip {k} at column {cols[k]} px" for k in strips]
            written.append(plots.st_image_figure(imgs, out_dir / f"{subject}_st.png", titles=titles,
                                                 x_step_s=1.0 / (fps * strip_px) if fps else None))
        else:
            log.warning("%s: no ST segment (video shorter than one segment); ST PNG skipped", subject)
    if not missing("labels", ("labels", "decode")):
        lab = nodes["labels"]
        dev, beats = label_name("", "hr_device"), label_name("", "hr_beats")
        written.append(plots.labels_figure(
            lab["t_s"][:] if "t_s" in lab else nodes["decode"]["t_s"][:], lab["bvp"][:], lab["window"][:],
            lab[label_name("", "hr")][:], lab[dev][:] if dev in lab else None,
            out_dir / f"{subject}_labels.png", title=f"{subject}: labels",
            hr_beats_bpm=lab[beats][:] if beats in lab else None))
    if alignment is not None:
        written.append(plots.lag_curve_figure([alignment], out_dir / f"{subject}_alignment.png",
                                              title=f"{subject}: does the label line up with the pixels?"))
    return written


def subject_alignment(cache: str | Path, dataset: str, pipeline: str, subject: str, *, method: str = "pos"):
    """The pixel-to-label lag-correlation curve of one subject (:func:`rppg_prep.alignment.build_alignment`).

    Returns
    -------
    rppg_prep.alignment.LagCurve, or None when the subject lacks a face, landmarks or labels node,
    or is shorter than one 10-s window plus the +/-1-s lags (a warning says which).

    Raises
    ------
    StoreError
        No such build or subject.
    """
    from rppg_prep.alignment import build_alignment

    rec = _subjects(cache, dataset, pipeline, subject)[subject]
    nodes = {stage: g for stage, (_, g) in _nodes(cache, subject, rec).items()}
    lost = [s for s in ("face", "landmarks", "labels", "decode") if s not in nodes]
    if lost:
        log.warning("%s: no %s node(s); no alignment curve", subject, ", ".join(lost))
        return None
    try:
        return build_alignment(nodes, subject, method=method)
    except ValueError as exc:
        log.warning("%s: no alignment curve: %s", subject, exc)
        return None
