"""MMPD loader (mobile-phone videos; one MATLAB file per recording).

Source: J. Tang, K. Chen, Y. Wang, Y. Shi, S. Patel, D. McDuff, X. Liu, "MMPD: Multi-Domain Mobile
Video Physiology Dataset", 45th IEEE EMBC, 2023 (arXiv 2302.03840); format from the dataset's README
(github.com/McJackTang/MMPD_rPPG_dataset) and rPPG-Toolbox's ``MMPDLoader`` as summarised in
``design/prior-art.md`` §1.6.

Layout: ``<root>/subject<N>/p<N>_<k>.mat`` (the download's folder is ``mat_dataset``; ``root`` may
be that folder, a folder holding it, or one ``subject<N>`` folder). Each file holds ``video``
(RGB floats in [0, 1], 320x240 in MMPD, 80x60 in mini-MMPD, 30 fps), ``GT_ppg`` (the contact PPG,
one sample per frame) and eight descriptive labels: ``light, motion, exercise, skin_color, gender,
glasser, hair_cover, makeup`` (:data:`ATTRIBUTES`; strings such as ``'LED-low'``, ``'Stationary'``,
``'True'``, and ``skin_color`` 3-6). Subject id = file stem (``"p1_0"``); the attributes are
returned by :func:`attributes` and written into ``Truth.notes``.

File versions. The released files are MATLAB v5 (rPPG-Toolbox and the README read them with
``scipy.io.loadmat``). v5 variables cannot be sliced, so :func:`open_frames` loads the whole
``video`` (and only it): ~1.7 GB for a 1-min 320x240 single-precision video, freed when the frame
source is closed. :func:`read_truth` loads only ``GT_ppg`` and the attributes. A MATLAB v7.3 (HDF5)
file with the same variables, told by ``h5py.is_hdf5``, is read lazily through h5py instead.

Axis order: ``video`` is taken as MATLAB (T, H, W, C), as rPPG-Toolbox uses it (the README writes
``[t, w, h, c]``); h5py shows a v7.3 copy reversed, (C, W, H, T). A (H, W, C, T) array is recognised
too (:func:`rppg_prep.datasets._mat73.video_axes`).

Quirks handled: when ``GT_ppg`` and ``video`` differ in length by more than one sample, the PPG is
spread evenly from the first to the last frame (what rPPG-Toolbox's index resampling assumes) and a
note says so; the motion label ``'Watching Videos'`` of older releases is kept as written and noted
as meaning ``'Walking'`` (per rPPG-Toolbox). Frames were downscaled from 1280x720 to 320x240
(reported in rPPG-Toolbox issue #149), so faces look narrower than they are; that is left as is.

Clock: ``GT_ppg`` holds one sample per frame (frame-locked: the labels pair by index, on the 30-fps
frame clock) when its length matches the video's; otherwise the PPG is spread over the video's span
as above and resampled onto the frames by time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, check_subjects, natural_key
from rppg_prep.datasets._mat73 import as_vector, h5_video_source, open_v73, video_axes
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

NAME = "mmpd"
VERSION = "1"
#: frame rate of the videos and sample rate of ``GT_ppg``, Hz
FPS = 30.0
VIDEO_VAR = "video"
PPG_VAR = "GT_ppg"
#: the descriptive labels stored beside the video, in the dataset's order
ATTRIBUTES = ("light", "motion", "exercise", "skin_color", "gender", "glasser", "hair_cover", "makeup")
LAYOUT = (
    "MMPD. ROOT/subject<N>/p<N>_<k>.mat (ROOT may also be mat_dataset's parent or one subject folder), MATLAB v5 "
    "(v7.3 accepted): video = T x H x W x 3 floats in [0, 1] (320x240; mini-MMPD 80x60), 30 fps; GT_ppg = PPG, one "
    "sample per frame; attributes light, motion, exercise, skin_color, gender, glasser, hair_cover, makeup."
)
_SUBJECT_DIR = re.compile(r"^subject\d+$", re.IGNORECASE)


def _mats(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".mat" and not p.name.startswith(".")]


def find_subjects(root: str | Path) -> list[Subject]:
    """List the MMPD recordings under ``root`` in natural order.

    Parameters
    ----------
    root : str or Path
        A folder of ``subject<N>`` folders (``mat_dataset``), a folder holding ``mat_dataset``, or
        one ``subject<N>`` folder.

    Returns
    -------
    list of Subject
        One per ``.mat`` file, id = file stem, sorted so that ``p2_0`` < ``p10_0`` and ``p1_2`` <
        ``p1_10``; ``video`` and ``truth[0]`` are both the ``.mat`` file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` does not exist, holds no recording, or two files share a stem.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root does not exist or is not a folder. {LAYOUT}", path=root)
    files = _mats(root)
    if not files:
        base = root / "mat_dataset" if (root / "mat_dataset").is_dir() else root
        for folder in base.iterdir():
            if folder.is_dir() and _SUBJECT_DIR.match(folder.name):
                files.extend(_mats(folder))
    if not files:
        raise DatasetLayoutError(f"no MMPD .mat files found. {LAYOUT}", path=root)
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise DatasetLayoutError(f"two recordings share the id {p.stem!r}: {seen[p.stem]} and {p}", path=root)
        seen[p.stem] = p
    files.sort(key=lambda p: natural_key(p.stem))
    return check_subjects([Subject(NAME, p.stem, p, (p,), "") for p in files], root)


def _is_v73(path: Path, subject: str, error: type) -> bool:
    import h5py

    if not path.exists():
        raise error("MATLAB file is missing", subject=subject, path=path)
    try:
        return bool(h5py.is_hdf5(str(path)))
    except OSError as exc:
        raise error(f"cannot read the file: {exc}", subject=subject, path=path) from None


def _load_v5(path: Path, names: list[str], subject: str, error: type) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path, variable_names=names)
    except MemoryError:
        raise
    except Exception as exc:  # scipy raises ValueError, MatReadError, zlib.error, ... for non-MAT data
        raise error(f"not a readable MATLAB file (corrupt, truncated or not a .mat file; re-download it): {exc}",
                    subject=subject, path=path) from None


def _v5_names(path: Path) -> dict[str, tuple[int, ...]]:
    import scipy.io

    try:
        return {name: tuple(shape) for name, shape, _ in scipy.io.whosmat(path)}
    except Exception:  # only used to enrich messages and count frames
        return {}


def _v5_value(raw) -> object:
    a = np.asarray(raw)
    if a.dtype.kind == "U":
        return " ".join(str(s).strip() for s in a.reshape(-1))
    if a.dtype.kind == "O":
        return [_v5_value(v) for v in a.reshape(-1)] if a.size != 1 else _v5_value(a.reshape(-1)[0])
    return _scalar(a)


def _scalar(a: np.ndarray) -> object:
    if a.size == 0:
        return None
    if a.size != 1:
        return a.reshape(-1).tolist()
    v = a.reshape(-1)[0]
    if a.dtype.kind == "b":
        return bool(v)
    if a.dtype.kind == "f" and float(v).is_integer():
        return int(v)
    return v.item()


def _h5_value(ds) -> object:
    cls = ds.attrs.get("MATLAB_class", b"")
    cls = cls.decode() if isinstance(cls, bytes) else str(cls)
    if "MATLAB_empty" in ds.attrs:
        return "" if cls == "char" else None
    a = np.asarray(ds[()])
    if cls == "char":
        return "".join(chr(int(c)) for c in a.reshape(-1))
    if cls == "logical":
        return _scalar(a.astype(bool))
    return _scalar(a)


def _read(subject: Subject, names: list[str]) -> tuple[dict[str, object], int | None, list[str]]:
    """Raw variables ``names`` that exist (attributes converted), the video's frame count, all variable names."""
    import h5py

    path = subject.truth[0]
    out: dict[str, object] = {}
    if _is_v73(path, subject.id, GroundTruthError):
        with open_v73(path, subject.id, GroundTruthError) as f:
            present = sorted(k for k in f.keys() if not k.startswith("#"))
            try:
                for n in names:
                    ds = f.get(n)
                    if isinstance(ds, h5py.Dataset):
                        out[n] = ds[()] if n == PPG_VAR else _h5_value(ds)
            except OSError as exc:
                raise GroundTruthError(f"cannot read variable {n!r} (corrupt file): {exc}", subject=subject.id,
                                       path=path) from None
            vid = f.get(VIDEO_VAR)
            axes = video_axes(vid.shape, reversed_=True) if isinstance(vid, h5py.Dataset) else None
            n_frames = vid.shape[axes.index("T")] if axes else None
        return out, n_frames, present
    raw = _load_v5(path, names, subject.id, GroundTruthError)
    for n in names:
        if n in raw:
            out[n] = raw[n] if n == PPG_VAR else _v5_value(raw[n])
    shapes = _v5_names(path)
    axes = video_axes(shapes[VIDEO_VAR], reversed_=False) if VIDEO_VAR in shapes else None
    n_frames = shapes[VIDEO_VAR][axes.index("T")] if axes else None
    return out, n_frames, sorted(shapes)


def attributes(subject: Subject) -> dict[str, object]:
    """The descriptive labels of one recording, as stored.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    dict
        The keys of :data:`ATTRIBUTES` that the file holds, in that order. MATLAB strings come back as
        ``str`` (``'LED-low'``, ``'Stationary'``, ``'True'``, ``'male'``), numbers as ``int``/``float``
        (``skin_color`` 3-6), MATLAB logicals as ``bool``.

    Raises
    ------
    GroundTruthError
        The file is missing or not a readable MATLAB file; the message names subject and file.
    """
    values, _, _ = _read(subject, list(ATTRIBUTES))
    return {k: values[k] for k in ATTRIBUTES if k in values}


def read_truth(subject: Subject) -> Truth:
    """Read ``GT_ppg`` (30 Hz, one sample per frame) and the attributes.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (float64, (n,), a.u.); ``t_s = i / 30`` s and ``frame_locked=True`` when ``n`` is
        within one sample of the frame count; otherwise ``t_s`` spreads the samples evenly from the
        first frame (0 s) to the last, ``frame_locked=False``, and a note says so. ``hr_bpm=None``
        (MMPD has no device HR track). ``notes`` holds one line ``MMPD attributes: light=..., ...``.

    Raises
    ------
    GroundTruthError
        The file is missing, not a readable MATLAB file, or ``GT_ppg`` is missing, not a numeric
        vector or shorter than 2 samples; the message names subject and file. Non-finite samples
        meet the rule of every loader (:func:`rppg_prep.datasets.check_truth`) when the build reads it.
    """
    path = subject.truth[0]
    values, n_frames, present = _read(subject, [PPG_VAR, *ATTRIBUTES])
    if PPG_VAR not in values:
        raise GroundTruthError(f"the file has no PPG variable {PPG_VAR!r}; variables: {', '.join(present) or 'none'}",
                               subject=subject.id, path=path)
    raw = values.pop(PPG_VAR)
    ppg = as_vector(raw)
    if ppg is None:
        raise GroundTruthError(f"{PPG_VAR!r} has shape {np.shape(raw)} and dtype {np.asarray(raw).dtype}; expected "
                               "a numeric vector", subject=subject.id, path=path)
    if ppg.size < 2:  # non-finite samples: rppg_prep.datasets.check_truth, the rule of every loader
        raise GroundTruthError(f"{PPG_VAR!r} has too few ({ppg.size}) samples", subject=subject.id, path=path)
    notes = []
    attrs = {k: values[k] for k in ATTRIBUTES if k in values}
    if attrs:
        notes.append("MMPD attributes: " + ", ".join(f"{k}={v}" for k, v in attrs.items()))
    missing = [k for k in ATTRIBUTES if k not in attrs]
    if missing:
        notes.append(f"attributes missing from the file: {', '.join(missing)}")
    if attrs.get("motion") == "Watching Videos":
        notes.append("motion 'Watching Videos' is an older release's name for 'Walking' (rPPG-Toolbox)")
    if n_frames is None or abs(ppg.size - n_frames) <= 1:
        return Truth(ppg=ppg, t_s=np.arange(ppg.size) / FPS, hr_bpm=None, frame_locked=True, notes=tuple(notes))
    notes.append(f"{PPG_VAR} has {ppg.size} samples for {n_frames} frames; spread evenly from the first to the "
                 f"last frame ({ppg.size / (n_frames / FPS):.2f} Hz)")
    t_s = np.linspace(0.0, (n_frames - 1) / FPS, ppg.size)
    return Truth(ppg=ppg, t_s=t_s, hr_bpm=None, frame_locked=False, notes=tuple(notes))


class _Loaded:
    """An in-memory video that :class:`ArraySource` slices, dropped on close."""

    def __init__(self, array: np.ndarray):
        self.a, self.shape, self.dtype = array, array.shape, array.dtype

    def __getitem__(self, index):
        return self.a[index]

    def release(self) -> None:
        self.a = None


def open_frames(subject: Subject):
    """Open the ``video`` of an MMPD file (v5: loaded whole; v7.3: read lazily).

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    rppg_prep.sources.ArraySource
        RGB frames (``round(x * 255)`` as uint8; 320x240 in MMPD) at ``i / 30`` s. Closing it frees
        the loaded video (v5) or closes the file (v7.3).

    Raises
    ------
    VideoDecodeError
        The file is missing, not a readable MATLAB file, has no ``video``, or ``video`` is not a 4-D
        RGB array; the message names subject and file.
    """
    from rppg_prep.sources import ArraySource

    path = subject.video
    if _is_v73(path, subject.id, VideoDecodeError):
        return h5_video_source(open_v73(path, subject.id, VideoDecodeError), VIDEO_VAR, subject, fps=FPS)
    raw = _load_v5(path, [VIDEO_VAR], subject.id, VideoDecodeError)
    if VIDEO_VAR not in raw:
        names = ", ".join(sorted(_v5_names(path))) or "none"
        raise VideoDecodeError(f"the file has no video variable {VIDEO_VAR!r}; variables: {names}", subject=subject.id,
                               path=path)
    video = raw.pop(VIDEO_VAR)
    axes = video_axes(video.shape, reversed_=False)
    if axes is None or video.dtype.kind not in "fiu":
        raise VideoDecodeError(f"variable {VIDEO_VAR!r} has shape {video.shape} and dtype {video.dtype}; expected a "
                               "MATLAB T x H x W x 3 RGB video", subject=subject.id, path=path)
    held = _Loaded(video)
    del video, raw
    return ArraySource(held, axes=axes, fps=FPS, path=path, value_range="unit" if held.dtype.kind == "f" else "uint8",
                       subject=subject.id, on_close=held.release)
