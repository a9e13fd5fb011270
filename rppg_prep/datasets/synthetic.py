"""The synthetic pseudo-PPG videos of Bousefsaf's 3D-CNN, as a dataset the pipeline builds.

Source: F. Bousefsaf, A. Pruski, C. Maaoui, "3D convolutional neural networks for remote pulse rate
measurement and mapping from facial video", Applied Sciences 9(20):4364, 2019; generator as
specified in ``design/models.md`` §3.4 and implemented in :mod:`rppg_prep.pseudo_ppg`.

Layout written by :func:`write_synthetic` (and read by :func:`find_subjects`)::

    <root>/synthetic.json        generator, version, seed, videos_per_class, fps
    <root>/c<NN>/frames.npy      uint8 (K * 60, 25, 25, 3): K videos of HR class NN, one after another
    <root>/c<NN>/truth.csv       header t_s,ppg,hr_bpm; one row per frame

A subject is one HR class (``linspace(55, 240, 75)`` bpm); its K videos of 60 frames (2 s at
30 fps) are concatenated, so 60-frame clips with stride 60 (``pipelines/synthetic.yaml``) are
exactly the generator's videos. Frames are the integer grey levels of step 7 of the specification,
replicated to RGB; the model-side read (/255, minus the clip mean) gives back exactly what
:func:`rppg_prep.pseudo_ppg.generate` returns. ``ppg`` is each video's pseudo-PPG (waveform plus
trend), ``hr_bpm`` the class HR. The noise class is not quantised in the specification and has no
uint8 form; the trainer draws it on the fly.

Clock: the pseudo-PPG is generated with the frames (frame-locked): the labels pair row i with frame
i, on the 30-fps frame clock.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, check_subjects, natural_key
from rppg_prep.errors import DatasetLayoutError, GroundTruthError, VideoDecodeError

NAME = "synthetic"
VERSION = "1"
FPS = 30.0
LAYOUT = (
    "Bousefsaf pseudo-PPG videos (made by `rppg-prep sample synthetic`, or generated under "
    "CACHE/samples when --root is left out). ROOT/synthetic.json + ROOT/c<NN>/frames.npy (uint8 (K*60, 25, 25, 3), "
    "30 fps) + truth.csv (t_s, ppg, hr_bpm per frame); one subject per HR class."
)
_META = "synthetic.json"


def write_synthetic(out_dir: str | Path, *, videos_per_class: int = 4, classes=None, seed: int = 0) -> list[str]:
    """Write the pseudo-PPG dataset into ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Created if missing.
    videos_per_class : int
        K 60-frame videos per HR class (K * 2 s per subject).
    classes : iterable of int, optional
        HR classes in [0, 74] to write; all 75 by default.
    seed : int
        Class c draws from ``numpy.random.default_rng([seed, c])``: same seed, same files.

    Returns
    -------
    list of str
        Subject ids written.

    Raises
    ------
    ValueError
        ``videos_per_class < 1`` or a class outside [0, 74].
    """
    from rppg_prep import pseudo_ppg as synthetic
    from rppg_prep.pseudo_ppg import HR_CLASSES_BPM, N_HR_CLASSES

    classes = list(range(N_HR_CLASSES)) if classes is None else [int(c) for c in classes]
    if videos_per_class < 1 or any(not 0 <= c < N_HR_CLASSES for c in classes):
        raise ValueError(f"need videos_per_class >= 1 and classes in [0, {N_HR_CLASSES - 1}]")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = []
    for c in classes:
        grey, signal, _ = synthetic.pulse_videos_uint8(
            videos_per_class, rng=np.random.default_rng([seed, c]), labels=np.full(videos_per_class, c))
        frames = np.repeat(grey.reshape(-1, synthetic.SIZE, synthetic.SIZE)[..., None], 3, axis=-1)
        folder = out / f"c{c:02d}"
        folder.mkdir(exist_ok=True)
        np.save(folder / "frames.npy", frames)
        t = np.arange(len(frames)) / FPS
        hr = np.full(len(frames), HR_CLASSES_BPM[c])
        np.savetxt(folder / "truth.csv", np.column_stack([t, signal.reshape(-1), hr]), delimiter=",",
                   header="t_s,ppg,hr_bpm", comments="", fmt="%.6f")
        ids.append(folder.name)
    meta = {"generator": "bousefsaf-2019", "version": VERSION, "seed": seed, "videos_per_class": videos_per_class,
            "fps": FPS}
    (out / _META).write_text(json.dumps(meta, indent=1) + "\n")
    return ids


def synthetic_dir(cache: str | Path) -> Path:
    """``<cache>/samples/synthetic-v<VERSION>``, where :func:`ensure_synthetic` writes (it may not exist)."""
    return Path(cache) / "samples" / f"synthetic-v{VERSION}"


def ensure_synthetic(cache: str | Path) -> Path:
    """``<cache>/samples/synthetic-v<VERSION>``, written (all 75 classes, K = 4) on first use.

    Written to a temporary sibling and renamed into place, so an interrupted run leaves nothing
    that looks complete.
    """
    target = synthetic_dir(cache)
    if (target / _META).exists():
        return target
    from rppg_prep.store import atomic_write

    with atomic_write(target, complete=lambda p: (p / _META).exists()) as tmp:
        write_synthetic(tmp)
    return target


def find_subjects(root: str | Path) -> list[Subject]:
    """One subject per class folder ``c<NN>`` (``fmt`` = its HR in bpm as text).

    Raises
    ------
    DatasetLayoutError
        If ``root`` has no ``synthetic.json`` or no class folder.
    """
    root = Path(root)
    if not (root / _META).is_file():
        raise DatasetLayoutError(f"not a synthetic dataset folder (no {_META}). {LAYOUT}", path=root)
    from rppg_prep.pseudo_ppg import HR_CLASSES_BPM

    subjects = []
    for folder in sorted(root.glob("c[0-9][0-9]"), key=lambda p: natural_key(p.name)):
        c = int(folder.name[1:])
        hr = f"{HR_CLASSES_BPM[c]:.1f}" if c < len(HR_CLASSES_BPM) else "?"
        subjects.append(Subject(NAME, folder.name, folder / "frames.npy", (folder / "truth.csv",), hr))
    if not subjects:
        raise DatasetLayoutError(f"no class folders c<NN> found. {LAYOUT}", path=root)
    return check_subjects(subjects, root)


def open_frames(subject: Subject):
    """The frames of one class, memory-mapped (an :class:`~rppg_prep.sources.ArraySource`).

    Raises
    ------
    VideoDecodeError
        If ``frames.npy`` is missing or not a uint8 (T, H, W, 3) array.
    """
    from rppg_prep.sources import ArraySource

    try:
        frames = np.load(subject.video, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise VideoDecodeError(f"cannot read the frame array: {exc}", subject=subject.id, path=subject.video) from None
    if frames.dtype != np.uint8:
        raise VideoDecodeError(f"frames must be uint8, found {frames.dtype}", subject=subject.id, path=subject.video)
    return ArraySource(frames, axes="THWC", fps=FPS, path=subject.video, subject=subject.id)


def read_truth(subject: Subject) -> Truth:
    """The pseudo-PPG and the class HR of one subject, one sample per frame.

    Raises
    ------
    GroundTruthError
        Missing file, wrong header or columns, or fewer than 2 rows.
    """
    path = subject.truth[0]
    try:
        data = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise GroundTruthError(f"cannot read truth.csv (t_s, ppg, hr_bpm): {exc}", subject=subject.id,
                               path=path) from None
    if data.shape[1] != 3 or data.shape[0] < 2:
        raise GroundTruthError(f"expected >= 2 rows of 3 columns, got shape {data.shape}", subject=subject.id,
                               path=path)
    return Truth(ppg=data[:, 1], t_s=data[:, 0], hr_bpm=data[:, 2], frame_locked=True)
