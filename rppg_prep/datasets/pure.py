"""PURE loader (Pulse Rate Detection Dataset).

Source: R. Stricker, S. Müller, H.-M. Gross, "Non-contact video-based pulse rate measurement on a
mobile service robot", IEEE RO-MAN 2014; format from the dataset's documentation as summarised in
``design/models.md`` §6.2 and ``prior-art.md`` §1.6.

Layout: ``<root>/<ii-jj>/<ii-jj>/Image<timestamp_ns>.png`` (lossless 640x480 frames, ~30 fps) and
``<root>/<ii-jj>/<ii-jj>.json`` (ii = person, jj = setup). Also accepted: the json beside the frame
folder (``<root>/<ii-jj>.json`` with frames in ``<root>/<ii-jj>/``, as pyVHR arranges it), and a
``root`` that is one sequence folder. The json holds ``/FullPackage``, a list of
``{"Timestamp": ns, "Value": {"waveform", "pulseRate", "o2saturation", "signalStrength"}}`` from the
finger pulse oximeter at ~60 Hz, and ``/Image``, a list of ``{"Timestamp": ns}``, one per frame.

Alignment is by time, not by sample index (rPPG-Toolbox stretches the waveform to the frame count):
both clocks are nanoseconds on the same host clock, so the frame times come from ``/Image`` (or,
when the json has no ``/Image``, from the timestamps in the file names, which the dataset writes
identically; a note says so), the waveform times from ``/FullPackage``, and both are re-based on the
first frame. Integer nanoseconds are subtracted before converting to seconds (epoch nanoseconds
do not fit a float64 exactly). ``hr_bpm`` is the oximeter's ``pulseRate``.

Quirks handled:

* A sequence whose ``/Image`` count differs from its number of PNG files cannot be aligned frame by
  frame: building it raises an error naming the frame folder (rather than guessing which frames
  are missing).
* ``/Image`` timestamps that differ from the file names by more than 1 ms are noted; ``/Image`` wins.
* Oximeter packets logged out of order are sorted by timestamp, repeated timestamps spread evenly
  (both noted); the ``pulseRate`` dropouts/jumps are masked as in the UBFC loader.
* A waveform that starts after the first frame is noted (the first frames take its first value).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, scan_subjects
from rppg_prep.datasets.ubfc import mask_device_hr, repair_clock
from rppg_prep.errors import GroundTruthError, RppgPrepError, VideoDecodeError

NAME = "pure"
VERSION = "1"
#: nominal camera frame rate, Hz (frames carry their own timestamps; this is only reported)
FPS = 30.0
LAYOUT = (
    "PURE. ROOT/<ii-jj>/<ii-jj>/Image<timestamp_ns>.png (640x480, ~30 fps) + ROOT/<ii-jj>/<ii-jj>.json "
    "(/FullPackage: 60-Hz oximeter {Timestamp ns, Value: {waveform, pulseRate, o2saturation, signalStrength}}; "
    "/Image: {Timestamp ns} per frame). Also ROOT/<ii-jj>/ frames + ROOT/<ii-jj>.json, or ROOT = one sequence."
)
_FRAME = re.compile(r"^Image(\d+)\.png$", re.IGNORECASE)
_SEQ = re.compile(r"^\d{2}-\d{2}$")
#: /Image and file-name times further apart than this are noted
_NAME_MISMATCH_NS = 1_000_000


def _has_frames(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(_FRAME.match(e.name) for e in it)
    except OSError:
        return False


def _nested(folder: Path, sid: str) -> Subject:
    """``folder/<sid>/`` frames and ``folder/<sid>.json`` (frames directly in ``folder`` if that is where they are)."""
    frames = folder / sid
    if not frames.is_dir() and _has_frames(folder):
        frames = folder
    return Subject(NAME, sid, frames, (folder / f"{sid}.json",), "nested")


def _flat(frames: Path, parent: Path, sid: str) -> Subject:
    """Frames in ``frames/``, json ``parent/<sid>.json`` (or inside the frame folder)."""
    inside = frames / f"{sid}.json"
    json_path = inside if inside.is_file() else parent / f"{sid}.json"
    return Subject(NAME, sid, frames, (json_path,), "flat")


def _sequence_at(folder: Path, parent: Path) -> Subject | None:
    sid = folder.name
    if (folder / sid).is_dir() or (folder / f"{sid}.json").is_file():
        return _nested(folder, sid)
    if (parent / f"{sid}.json").is_file() or _has_frames(folder):
        return _flat(folder, parent, sid)
    return None


def find_subjects(root: str | Path) -> list[Subject]:
    """List the PURE sequences under ``root`` in natural order.

    Parameters
    ----------
    root : str or Path
        The PURE folder holding ``<ii-jj>`` sequence folders (with or without the inner frame
        folder), or one sequence folder.

    Returns
    -------
    list of Subject
        Ids are the sequence names (``"01-01"``); ``video`` is the frame folder, ``truth`` the json;
        ``fmt`` is ``"nested"`` (json inside the sequence folder) or ``"flat"`` (json beside it). A
        folder named like a sequence whose frames or json are missing is still listed; building it
        raises an error naming the missing file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` does not exist or holds no sequence.
    """
    return scan_subjects(root, what="PURE sequence folders", layout=LAYOUT,
                         recordings=lambda f: _sequence_at(f, f.parent),
                         placeholder=lambda f: _nested(f, f.name) if _SEQ.match(f.name) else None)


def _list_frames(subject: Subject, err: type[RppgPrepError]) -> tuple[list[Path], np.ndarray]:
    """Frame files sorted by the timestamp in their name, and those timestamps (int64 ns)."""
    folder = subject.video
    if not folder.is_dir():
        raise err("frame folder is missing", subject=subject.id, path=folder)
    found = []
    with os.scandir(folder) as it:
        for e in it:
            m = _FRAME.match(e.name)
            if m:
                found.append((int(m.group(1)), Path(e.path)))
    if not found:
        raise err("frame folder holds no Image<timestamp_ns>.png files", subject=subject.id, path=folder)
    found.sort()
    return [p for _, p in found], np.array([ns for ns, _ in found], dtype=np.int64)


def _load_json(subject: Subject) -> dict:
    path = subject.truth[0]
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise GroundTruthError("ground-truth json is missing; every PURE sequence needs <ii-jj>.json",
                               subject=subject.id, path=path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GroundTruthError(f"cannot read the ground-truth json ({exc})", subject=subject.id, path=path) from None
    if not isinstance(data, dict):
        raise GroundTruthError("ground-truth json is not an object with /FullPackage and /Image",
                               subject=subject.id, path=path)
    return data


def _key(data: dict, name: str):
    """``data["/<name>"]`` (also accepted without the slash), or None."""
    return data.get(f"/{name}", data.get(name))


def _frame_clock(subject: Subject, data: dict | None, name_ns: np.ndarray,
                 err: type[RppgPrepError]) -> tuple[np.ndarray, list[str]]:
    """Frame times in int64 ns (from /Image, else from the file names) and notes."""
    images = None if data is None else _key(data, "Image")
    json_path = subject.truth[0]
    if images is None:
        why = "the json has no /Image list" if data is not None else "the json is missing"
        return name_ns, [f"frame times taken from the Image<ns>.png file names ({why})"]
    try:
        image_ns = np.array([int(e["Timestamp"]) for e in images], dtype=np.int64)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise err(f"/Image entries must be objects with an integer Timestamp (ns) ({exc!r})",
                  subject=subject.id, path=json_path) from None
    if image_ns.size != name_ns.size:
        raise err(f"the json's /Image lists {image_ns.size} frame timestamps but the frame folder holds "
                  f"{name_ns.size} Image*.png files ({json_path.name}); frames cannot be matched to their "
                  "times. Restore the missing frames or exclude this sequence",
                  subject=subject.id, path=subject.video)
    d = np.diff(image_ns)
    if np.any(d <= 0):
        i = int(np.argmax(d <= 0))
        raise err(f"/Image timestamps do not increase at frame {i + 1}", subject=subject.id, path=json_path)
    notes = []
    off = np.abs(image_ns - name_ns)
    if off.max() > _NAME_MISMATCH_NS:
        notes.append(f"/Image timestamps differ from the file names by up to {off.max() / 1e6:.1f} ms "
                     f"({int((off > _NAME_MISMATCH_NS).sum())} frames); /Image is used")
    return image_ns, notes


def frame_clock_files(subject: Subject) -> tuple[Path, ...]:
    """The JSON when present: its ``/Image`` timestamps are the frame clock (hashed into the decode key)."""
    return tuple(p for p in subject.truth if p.exists())


def open_frames(subject: Subject):
    """Open the PNG frames of a sequence, timed by the json's ``/Image`` timestamps.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    rppg_prep.sources.ImageSequenceSource
        Frames sorted by the timestamp in their file name; ``t_s`` (float64, shape (T,), s) from
        ``/Image`` relative to the first frame (from the file names when the json is missing or has
        no ``/Image``).

    Raises
    ------
    VideoDecodeError
        Frame folder missing or empty, ``/Image`` count different from the PNG count (names the
        folder), ``/Image`` malformed or not increasing, or an unreadable first frame.
    GroundTruthError
        The json exists but cannot be parsed.
    """
    from rppg_prep.sources import ImageSequenceSource

    files, name_ns = _list_frames(subject, VideoDecodeError)
    data = _load_json(subject) if subject.truth[0].exists() else None
    frame_ns, _ = _frame_clock(subject, data, name_ns, VideoDecodeError)
    t_s = (frame_ns - frame_ns[0]).astype(np.float64) / 1e9
    return ImageSequenceSource(files, fps=FPS, t_s=t_s, subject=subject.id, folder=subject.video)


def read_truth(subject: Subject) -> Truth:
    """Read the oximeter waveform and pulse rate onto a clock whose 0 is the first frame.

    Parameters
    ----------
    subject : Subject
        From :func:`find_subjects`.

    Returns
    -------
    Truth
        ``ppg`` (oximeter waveform, a.u., float64 (n,)), ``t_s`` (s, strictly increasing, negative
        where the oximeter ran before the first frame), ``hr_bpm`` (``pulseRate`` with dropouts
        masked as NaN), ``frame_locked=False``.

    Raises
    ------
    GroundTruthError
        Missing or unparsable json, ``/FullPackage`` missing, malformed or shorter than 2 samples,
        frame folder missing or empty, or ``/Image`` count different from
        the PNG count (names the frame folder); the message names subject and file.
    """
    path = subject.truth[0]
    data = _load_json(subject)
    _, name_ns = _list_frames(subject, GroundTruthError)
    frame_ns, notes = _frame_clock(subject, data, name_ns, GroundTruthError)
    package = _key(data, "FullPackage")
    if not isinstance(package, list):
        raise GroundTruthError("the json has no /FullPackage list (oximeter samples)", subject=subject.id, path=path)
    ts, wave, hr = [], [], []
    for k, e in enumerate(package):
        try:
            value = e["Value"]
            ts.append(int(e["Timestamp"]))
            wave.append(float(value["waveform"]))
            hr.append(float(value.get("pulseRate", np.nan)))
        except (KeyError, TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise GroundTruthError(f"/FullPackage entry {k} lacks Timestamp or Value.waveform ({exc!r})",
                                   subject=subject.id, path=path) from None
    if len(ts) < 2:
        raise GroundTruthError(f"/FullPackage holds {len(ts)} sample(s); need at least 2", subject=subject.id,
                               path=path)
    ns = np.array(ts, dtype=np.int64)
    ppg, hr_arr = np.array(wave, dtype=np.float64), np.array(hr, dtype=np.float64)
    # non-finite waveform values: rppg_prep.datasets.check_truth, the rule of every loader
    if np.any(np.diff(ns) < 0):
        order = np.argsort(ns, kind="stable")
        ns, ppg, hr_arr = ns[order], ppg[order], hr_arr[order]
        notes.append("oximeter packets were logged out of order; sorted by timestamp")
    t, n_fixed = repair_clock((ns - frame_ns[0]).astype(np.float64) / 1e9)
    if n_fixed:
        notes.append(f"{n_fixed} repeated oximeter timestamps spread evenly")
    frame_dt = float(np.median(np.diff(frame_ns))) / 1e9 if frame_ns.size > 1 else 1.0 / FPS
    if t[0] > frame_dt:
        notes.append(f"the oximeter starts {t[0]:.2f} s after the first frame; earlier frames take its first value")
    hr_m, n_masked = mask_device_hr(hr_arr, t)
    if n_masked:
        notes.append(f"{n_masked} pulseRate samples masked as dropouts or jumps")
    return Truth(ppg=ppg, t_s=t, hr_bpm=hr_m, frame_locked=False, notes=tuple(notes))
