"""SCAMPS loader (synthetic avatars; one MATLAB v7.3 file per video).

Source: D. McDuff, M. Wander, X. Liu, B. L. Hill, J. Hernandez, J. Lester, T. Baltrusaitis,
"SCAMPS: Synthetics for Camera Measurement of Physiological Signals", NeurIPS 2022 Datasets and
Benchmarks Track; format from the dataset's README (github.com/danmcduff/scampsdataset) and
rPPG-Toolbox's ``SCAMPSLoader`` as summarised in ``design/prior-art.md`` §1.6.

Layout: a flat folder of ``P<6 digits>.mat`` files (``P000001.mat`` ...), 600 frames each at 30 fps.
Each file is MATLAB v7.3, i.e. HDF5 behind a 512-byte MATLAB user block, read here with h5py.
Variables used: ``Xsub`` (the 240x240 face crop, RGB, floats in [0, 1]) and ``d_ppg`` (the PPG
waveform that drove the skin colour, one sample per frame). ``RawFrames`` (320x240 uncropped),
``d_br``, head pose, action units and the segmentation masks are not read.

Axis order. HDF5 stores MATLAB's column-major arrays with the axes reversed, so h5py shows a
MATLAB (a, b, c, d) array as (d, c, b, a). The README lists ``Xsub`` as ``[c, w, h, t]`` and reads
the files with h5py, and rPPG-Toolbox (mat73 0.59, which transposes back to MATLAB order) uses it as
(T, H, W, 3): so MATLAB (T, H, W, C), h5py (C, W, H, T). A file written from a MATLAB (H, W, C, T)
array reads in h5py as (T, C, W, H); both are recognised by where the 3 channels are
(:func:`rppg_prep.datasets._mat73.video_axes`). In either case W precedes H in the h5py view, as MATLAB images are (rows, cols).
``d_ppg`` (a MATLAB column or row vector) reads as (1, T) or (T, 1) and is flattened.

Reading is lazy: frames are sliced from the HDF5 dataset a time block at a time (:class:`rppg_prep.datasets._mat73.TimeBlocks`),
never loaded whole (a SCAMPS video is ~0.8 GB as float64).

Quirks handled: the labels-only download (``scamps_waveforms``: ``.mat`` files without ``Xsub``)
gives an error that says so; integer-typed frames are taken as 0-255; no dataset HR track is read
(the README's summary HR variables are not documented by name), so ``hr_bpm`` is None.

Clock: ``d_ppg`` drove the rendered skin colour frame by frame, so it is frame-locked
(``Truth.frame_locked``): the labels pair sample i with frame i, on the frame source's 30-fps clock.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, check_subjects, natural_key
from rppg_prep.datasets._mat73 import as_vector, h5_video_source, open_v73
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

NAME = "scamps"
VERSION = "1"
#: frame rate of the renders and sample rate of ``d_ppg``, Hz
FPS = 30.0
VIDEO_VAR = "Xsub"
PPG_VAR = "d_ppg"
LAYOUT = (
    "SCAMPS. ROOT/P<6 digits>.mat (flat folder), MATLAB v7.3 (HDF5): Xsub = 240x240 RGB face crop in [0, 1] "
    "(MATLAB T x H x W x C, 600 frames, 30 fps), d_ppg = PPG, one sample per frame. Other variables are ignored."
)
_NAME_RE = re.compile(r"^P\d+$", re.IGNORECASE)



def find_subjects(root: str | Path) -> list[Subject]:
    """List the SCAMPS videos under ``root`` in natural order.

    Parameters
    ----------
    root : str or Path
        The folder holding the ``P*.mat`` files.

    Returns
    -------
    list of Subject
        One per ``.mat`` file; id = file stem (``"P000001"``); ``video`` and ``truth[0]`` are both
        the ``.mat`` file; ``fmt = "v7.3"``. Files named ``P<digits>.mat`` are taken; if there are
        none, every ``*.mat`` file is.

    Raises
    ------
    DatasetLayoutError
        If ``root`` does not exist or holds no ``.mat`` file.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root does not exist or is not a folder. {LAYOUT}", path=root)
    mats = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".mat" and not p.name.startswith(".")]
    named = [p for p in mats if _NAME_RE.match(p.stem)]
    files = sorted(named or mats, key=lambda p: natural_key(p.name))
    if not files:
        raise DatasetLayoutError(f"no SCAMPS .mat files found. {LAYOUT}", path=root)
    return check_subjects([Subject(NAME, p.stem, p, (p,), "v7.3") for p in files], root)


def open_frames(subject: Subject):
    """Open the ``Xsub`` face-crop video of a SCAMPS file, read lazily.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    rppg_prep.sources.ArraySource
        RGB frames (``round(x * 255)`` as uint8, 240x240 in the real data) at ``i / 30`` s; closing it
        closes the file.

    Raises
    ------
    VideoDecodeError
        The file is missing, not HDF5, truncated or corrupt, has no ``Xsub``, or ``Xsub`` is not a 4-D
        RGB video; the message names the subject and file.
    """
    f = open_v73(subject.video, subject.id, VideoDecodeError)
    # a labels-only download (scamps_waveforms) has d_ppg but no video
    hint = " (this looks like the labels-only download; the videos are in scamps_videos.tar.gz)" \
        if PPG_VAR in f and VIDEO_VAR not in f else ""
    return h5_video_source(f, VIDEO_VAR, subject, fps=FPS, missing_hint=hint)


def read_truth(subject: Subject) -> Truth:
    """Read ``d_ppg``, one sample per frame at 30 Hz.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (float64, (600,) in the real data, a.u.), ``t_s = i / 30`` s, ``frame_locked=True``,
        ``hr_bpm=None``.

    Raises
    ------
    GroundTruthError
        The file is missing, not HDF5, truncated or corrupt; ``d_ppg`` is missing, not a vector,
        or shorter than 2 samples. The message names the subject and file. Non-finite samples meet the
        rule of every loader (:func:`rppg_prep.datasets.check_truth`) when the build reads it.
    """
    import h5py

    path = subject.truth[0]
    with open_v73(path, subject.id, GroundTruthError) as f:
        ds = f.get(PPG_VAR)
        if not isinstance(ds, h5py.Dataset):
            names = ", ".join(sorted(k for k in f.keys() if not k.startswith("#")))
            raise GroundTruthError(f"the file has no PPG variable {PPG_VAR!r}; variables: {names or 'none'}",
                                   subject=subject.id, path=path)
        try:
            raw = ds[()]
        except OSError as exc:
            raise GroundTruthError(f"cannot read {PPG_VAR!r} (corrupt file): {exc}", subject=subject.id,
                                   path=path) from None
    ppg = as_vector(raw)
    if ppg is None:
        raise GroundTruthError(f"{PPG_VAR!r} has shape {np.shape(raw)} and dtype {np.asarray(raw).dtype}; expected "
                               "a numeric vector", subject=subject.id, path=path)
    if ppg.size < 2:  # non-finite samples: rppg_prep.datasets.check_truth, the rule of every loader
        raise GroundTruthError(f"{PPG_VAR!r} has too few ({ppg.size}) samples", subject=subject.id, path=path)
    return Truth(ppg=ppg, t_s=np.arange(ppg.size) / FPS, hr_bpm=None, frame_locked=True)
