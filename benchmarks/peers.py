"""The field's pretrained rPPG models (PyPI ``open-rppg``) scored on a build under the project's protocol (by hand).

    .venv/bin/pip install -e '.[peers]'
    .venv/bin/pip install --force-reinstall --no-deps opencv-contrib-python==4.14.0.94   # see below
    nice -n 5 .venv/bin/python benchmarks/peers.py --cache CACHE --root ../shared/data/ubfc-rppg \\
        --models FacePhys.rlap PhysNet.pure --input both --threads 1

``open-rppg`` 0.1.1 (Kegang Wang, MIT) ships Keras 3 / JAX ports of published rPPG networks with
weights trained on PURE and/or RLAP: FacePhys (RLAP only), PhysNet (Yu 2019), TS-CAN (Liu 2020),
EfficientPhys (Liu 2023), PhysFormer (Yu 2022), PhysMamba (Luo 2024) and RhythmMamba (Zou 2025).
None of them saw UBFC-rPPG, so on a UBFC build they are a cross-dataset reference line for the
models trained here. Each model is run on every subject two ways (``--input``):

* ``video``: the package's own pipeline on the subject's video (``Model.process_video``: PyAV
  decode, BlazeFace every 5th frame, a Kalman-smoothed box, INTER_AREA resize to the model's
  input, nearest-neighbour resampling to the model's 30 frames/s). Its samples carry the
  container time of their frame and are put back on the build's frames by that time
  (:func:`samples_to_frames`; frames the package filled twice keep their first sample).
* ``crops``: this project's stabilised 128 x 128 crops (``face/frames``), resized with INTER_AREA
  to the model's input and fed in the model's own chunk length with its state carried over
  (:func:`run_on_crops`), one model sample per stored frame. Comparing the two separates the face
  crop from the model.

Both are paired with ``labels/bvp`` by frame index (UBFC-rPPG's ground truth is frame-locked) and
scored by :func:`score_subject` on the frame clock ``labels/t_s``: (a) one HR per subject by the
rPPG-Toolbox protocol (:mod:`rppg_prep.protocols`: detrend lambda = 100, 1st-order Butterworth
band-pass, FFT peak within 0.75-2.5 Hz) against the contact PPG's HR computed the same way, with
MAE, RMSE, MAPE and Pearson r over the subjects; (b) the same per 10-s window (1-s stride), pooled
over all windows of all subjects; (c) the Pearson r between the predicted and the contact BVP per
window, both through the same detrend + band-pass, averaged over the windows; (d) frames/s of the
pass (model loading and JIT compilation excluded and reported apart) and its CPU seconds. POS on
the same crops' face-skin ROI (no training) is scored the same way as a row of the table.

The extra is optional: ``pip install -e '.[test]'`` (CI) does not need it, and nothing in
``rppg_prep`` or ``rppg_models`` imports it. Caveats of the package, handled here:

* it pulls ``opencv-python`` while the project pins ``opencv-contrib-python``; both install the
  same ``cv2`` folder and the one installed last owns the binary. The extra pins the same version
  (4.14.0.94) and the reinstall above puts the contrib build back (:func:`cv2_build` checks);
* it imports ``pkg_resources``, which setuptools >= 81 no longer ships: when it is missing a
  one-function stand-in (``resource_filename`` on :mod:`importlib.resources`) is registered
  before the import (:func:`import_open_rppg`);
* its ME-chunk / ME-flow loaders unpickle ``rppg/weights/state.pkl``: those models are refused
  here (:data:`REFUSED`); every other model loads Keras ``.h5`` weights only;
* a ``Model`` keeps its recurrent state between videos: it is reset to the loaded state before
  every subject (FacePhys is the stateful one);
* importing it sets Keras' global mixed-float16 policy and ``KERAS_BACKEND=jax``; the models run
  in JAX on the CPU here. In float16 TS-CAN overflows to NaN on some chunks (3 of 13 on subject8's
  crops; every subject's video), and a NaN in a first-difference output spoils the whole sum:
  ``--float32`` builds the models under the float32 policy instead (no NaN there). Threads:
  ``--threads`` sets the XLA / OpenMP environment before JAX is imported (1:
  ``--xla_cpu_multi_thread_eigen=false``) and the package's face-detection and resize pools;
* the chunked models (PhysNet 128 frames, TS-CAN / EfficientPhys / PhysFormer / RhythmMamba 160)
  run back to back on non-overlapping chunks, as the package (and rPPG-Toolbox) run them.
  PhysNet's output is several times larger in the first and last frames of a chunk than in the
  middle, so its whole-video spectrum can peak at a harmonic of the chunk rate (fs / 128: 70 and
  84 bpm at 29.9 frames/s) rather than at the pulse; the numbers here keep that behaviour.

Writes ``benchmarks/results/peers-<date>.json`` (``--out``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import importlib.resources
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rppg_prep import protocols, pulse

REPO = Path(__file__).resolve().parents[1]

#: the models scored by default: the package's PURE-trained weights, FacePhys on RLAP (it has no PURE weights)
DEFAULT_MODELS = ["FacePhys.rlap", "PhysNet.pure", "TSCAN.pure", "EfficientPhys.pure", "PhysFormer.pure",
                  "RhythmMamba.pure"]
#: every model of open-rppg 0.1.1 this script runs (``--models``); PhysMamba runs but at about 2 frames/s on a CPU core
KNOWN_MODELS = ["FacePhys.rlap", "PhysNet.pure", "PhysNet.rlap", "TSCAN.pure", "TSCAN.rlap", "EfficientPhys.pure",
                "EfficientPhys.rlap", "PhysFormer.pure", "PhysFormer.rlap", "RhythmMamba.pure", "RhythmMamba.rlap",
                "PhysMamba.pure", "PhysMamba.rlap"]
#: models whose loader unpickles a file of the package (``rppg/weights/state.pkl``): never loaded here
REFUSED = {"ME-chunk.rlap", "ME-chunk.pure", "ME-flow.rlap", "ME-flow.pure"}
INPUTS = ("video", "crops")
INSTALL_HINT = ("install the optional extra: pip install -e '.[peers]' (then pip install --force-reinstall "
                "--no-deps opencv-contrib-python==4.14.0.94; see benchmarks/peers.py)")
DIST_NAMES = ["open-rppg", "jax", "jaxlib", "keras", "onnxruntime", "av", "heartpy", "einops", "opencv-python",
              "opencv-contrib-python", "numpy", "scipy"]


class PeersUnavailable(ImportError):
    """open-rppg (the ``peers`` extra) or one of its imports is missing."""


# ---------------------------------------------------------------------------------------------
# pure helpers: no open-rppg needed (tested on CI)
# ---------------------------------------------------------------------------------------------

def samples_to_frames(sample_t_s, values, frame_t_s) -> tuple[np.ndarray, dict[str, int]]:
    """Put a stream of samples that carry their source frame's time back onto the frames.

    open-rppg resamples a video to its model's frame rate by repeating or dropping frames; every
    sample it returns carries the (container) time of the frame it came from. Each sample is
    matched to the frame whose time is nearest; a frame matched several times keeps its first
    sample, and a frame no sample came from is interpolated linearly from its neighbours.

    Parameters
    ----------
    sample_t_s : array_like of float, shape (S,)
        Time of each sample's frame, s, non-decreasing (open-rppg: from its first frame).
    values : array_like of float, shape (S,)
        The samples.
    frame_t_s : array_like of float, shape (T,)
        Time of each frame on the same clock, s, strictly increasing (``decode/t_s`` minus its
        first value).

    Returns
    -------
    per_frame : ndarray of float64, shape (T,)
        One value per frame.
    counts : dict
        ``repeated`` (samples dropped because their frame already had one), ``missing`` (frames
        interpolated) and ``off_grid`` (samples more than half a frame step from every frame,
        dropped).

    Raises
    ------
    ValueError
        Unequal lengths, no samples, or no frame with a sample.
    """
    ts, v, tf = (np.asarray(a, dtype=np.float64) for a in (sample_t_s, values, frame_t_s))
    if ts.shape != v.shape or ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"sample_t_s and values must be equally long and non-empty, got {ts.shape}, {v.shape}")
    if tf.ndim != 1 or tf.size < 2 or np.any(np.diff(tf) <= 0):
        raise ValueError("frame_t_s must be 1-D, strictly increasing, with at least 2 frames")
    k = np.clip(np.searchsorted(tf, ts), 1, tf.size - 1)
    k = np.where(np.abs(ts - tf[k - 1]) <= np.abs(ts - tf[k]), k - 1, k)
    half = 0.5 * np.median(np.diff(tf))
    on = np.abs(ts - tf[k]) <= half
    out = np.full(tf.size, np.nan)
    first = np.zeros(tf.size, dtype=bool)
    repeated = 0
    for i, j in zip(np.flatnonzero(on), k[on]):
        if first[j]:
            repeated += 1
            continue
        first[j], out[j] = True, v[i]
    if not first.any():
        raise ValueError("no sample falls on a frame")
    missing = int((~first).sum())
    idx = np.arange(tf.size)
    out[~first] = np.interp(idx[~first], idx[first], out[first])
    return out, {"repeated": repeated, "missing": missing, "off_grid": int((~on).sum())}


def resize_crops(frames: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """uint8 (N, h, w, 3) crops resized to (N, H, W, 3) with INTER_AREA (as open-rppg resizes its face boxes)."""
    import cv2

    h, w = size_hw
    frames = np.asarray(frames)
    if frames.shape[1:3] == (h, w):
        return np.ascontiguousarray(frames, dtype=np.uint8)
    return np.stack([cv2.resize(f, (w, h), interpolation=cv2.INTER_AREA) for f in frames]).astype(np.uint8)


def run_on_crops(call: Callable, state: Any, input_shape: tuple[int, int, int, int], frames,
                 *, block_frames: int = 256) -> np.ndarray:
    """Feed stored face crops to an open-rppg model function chunk by chunk; one output per frame.

    ``call(x, state) -> ({"bvp": y, ...}, state)`` is the model function of an open-rppg
    ``Model`` (``Model.call``): ``x`` uint8 ``input_shape`` = (L, H, W, 3) frames, ``y`` (L,).
    The crops are read ``block_frames`` at a time (zarr arrays work), resized to (H, W)
    (:func:`resize_crops`) and cut into chunks of L frames; the state returned by each chunk goes
    into the next, as the package does. The last chunk is padded with its last frame and the
    padding's outputs are dropped.

    Parameters
    ----------
    call : callable
    state : any
        The model's initial state (``Model.state`` right after loading).
    input_shape : (int, int, int, int)
        The model's ``meta["input"]``: chunk length L, height, width, 3.
    frames : array_like of uint8, shape (T, h, w, 3)
        RGB crops (``face/frames``).
    block_frames : int
        Frames read and resized at a time (rounded up to a multiple of L).

    Returns
    -------
    ndarray of float64, shape (T,)
        The model's ``bvp`` output of each frame (a first difference for models whose meta has
        ``cumsum_output``).

    Raises
    ------
    ValueError
        ``input_shape`` is not (L, H, W, 3), or the model returns the wrong number of samples.
    """
    if len(input_shape) != 4 or input_shape[3] != 3:
        raise ValueError(f"input_shape must be (L, H, W, 3), got {input_shape}")
    n_chunk, h, w = int(input_shape[0]), int(input_shape[1]), int(input_shape[2])
    total = int(frames.shape[0])
    out = np.empty(total, dtype=np.float64)
    block = max(1, -(-block_frames // n_chunk)) * n_chunk
    for a0 in range(0, total, block):
        x = resize_crops(frames[a0:a0 + block], (h, w))
        for a in range(0, len(x), n_chunk):
            c = x[a:a + n_chunk]
            n = len(c)
            if n < n_chunk:
                c = np.concatenate([c, np.repeat(c[-1:], n_chunk - n, axis=0)])
            r, state = call(c, state)
            y = np.asarray(r["bvp"], dtype=np.float64).reshape(-1)
            if y.size != n_chunk:
                raise ValueError(f"model returned {y.size} samples for a chunk of {n_chunk} frames")
            out[a0 + a:a0 + a + n] = y[:n]
    return out


CLOCKS = ("index", "even")


def _on_clock(t: np.ndarray, clock: str, *xs: np.ndarray) -> tuple[float, list[np.ndarray]]:
    """The signals and their rate: frame by frame at the mean rate over ``t`` (``index``) or resampled (``even``)."""
    fs = (t.size - 1) / (t[-1] - t[0])
    if clock == "index":
        return fs, list(xs)
    return fs, [pulse.resample_even(t, x, fs)[1] for x in xs]


def _filtered(x: np.ndarray, fs: float, band_hz) -> np.ndarray:
    """The Toolbox post-processing (detrend lambda = 100, 1st-order band-pass, zero phase)."""
    return pulse.bandpass(protocols.detrend_tarvainen(x), fs, band_hz, order=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))) or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def score_subject(bvp_pred, bvp_ref, t_s, *, diff_output: bool = False, window_s: float = 10.0,
                  stride_s: float = 1.0, band_hz=protocols.BAND_NEURIPS, clock: str = "index") -> dict[str, Any]:
    """HR of a predicted BVP against the contact PPG of the same frames, whole video and per window.

    Both signals are one value per frame, paired by index, on the frame clock ``t_s``. The rate
    the Toolbox protocol assumes is the mean frame rate over the clock, ``(T - 1) / (t[-1] - t[0])``
    (over the whole video, and again over each window). ``clock="index"`` (default) takes the
    samples frame by frame at that rate, as ``rppg-prep evaluate`` does; ``clock="even"``
    interpolates both signals linearly onto an even grid at that rate over ``t_s`` first, as
    ``rppg_models.evaluate.hr_on_clock`` does. UBFC-rPPG's logged capture times jitter by about
    +/- 10 ms from frame to frame (steps of 11 to 44 ms around 34 ms, 1st and 99th percentiles),
    more than a 30 frames/s camera can, so the interpolation of ``even`` spreads that jitter into
    the signal; ``index`` keeps the frames as they are and still gets the rate from the clock.

    Parameters
    ----------
    bvp_pred : array_like of float, shape (T,)
        The model's output per frame; a first difference if ``diff_output`` (it is summed first, as
        the Toolbox does for ``DiffNormalized`` outputs and open-rppg for ``cumsum_output`` models).
    bvp_ref : array_like of float, shape (T,)
        Contact PPG per frame (``labels/bvp``).
    t_s : array_like of float, shape (T,)
        Frame clock, s, strictly increasing (``labels/t_s``).
    diff_output : bool
    window_s, stride_s : float
        Windows (:func:`rppg_prep.pulse.windows_by_time` on ``t_s``), s.
    band_hz : (float, float)
        Band-pass and HR search band, Hz.
    clock : {"index", "even"}
        See above.

    Returns
    -------
    dict
        ``hr_pred_bpm``, ``hr_ref_bpm`` (whole video, :func:`rppg_prep.protocols.hr_from_bvp`),
        ``snr_db`` (:func:`rppg_prep.protocols.snr_toolbox` at the reference HR), ``fs_hz`` (the
        mean frame rate), ``windows`` ([start, stop) frames), ``win_hr_pred_bpm``, ``win_hr_ref_bpm``
        and ``win_bvp_r`` (Pearson r of the two signals after the same detrend + band-pass), one
        per window, NaN where a signal is not finite; ``bvp_r`` the mean of ``win_bvp_r``.

    Raises
    ------
    ValueError
        Unequal lengths, a clock that is not strictly increasing, or an unknown ``clock``.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock must be one of {CLOCKS}, got {clock!r}")
    p, r, t = (np.asarray(a, dtype=np.float64) for a in (bvp_pred, bvp_ref, t_s))
    if not (p.shape == r.shape == t.shape) or p.ndim != 1:
        raise ValueError(f"bvp_pred, bvp_ref and t_s must be 1-D and equally long, got {p.shape}, {r.shape}, {t.shape}")
    if diff_output:
        p = np.cumsum(p)
    if t.size < 2 or np.any(np.diff(t) <= 0):
        raise ValueError("t_s must be strictly increasing")
    fs, (xp, xr) = _on_clock(t, clock, p, r)
    hr_pred = protocols.hr_from_bvp(xp, fs, band_hz=band_hz)
    hr_ref = protocols.hr_from_bvp(xr, fs, band_hz=band_hz)
    snr = protocols.snr_toolbox(xp, fs, hr_ref, band_hz)
    wins = pulse.windows_by_time(t, window_s, stride_s)
    wp_hr, wr_hr, w_r = [], [], []
    for a, b in wins:
        fw, (wp, wr) = _on_clock(t[a:b], clock, p[a:b], r[a:b])
        wp_hr.append(protocols.hr_from_bvp(wp, fw, band_hz=band_hz))
        wr_hr.append(protocols.hr_from_bvp(wr, fw, band_hz=band_hz))
        ok = np.all(np.isfinite(wp)) and np.all(np.isfinite(wr))
        w_r.append(_pearson(_filtered(wp, fw, band_hz), _filtered(wr, fw, band_hz)) if ok else float("nan"))
    w_r = np.asarray(w_r, dtype=np.float64)
    return {"hr_pred_bpm": hr_pred, "hr_ref_bpm": hr_ref, "snr_db": snr, "fs_hz": fs,
            "windows": wins.tolist(), "win_hr_pred_bpm": wp_hr, "win_hr_ref_bpm": wr_hr, "win_bvp_r": w_r.tolist(),
            "bvp_r": float(np.nanmean(w_r)) if np.isfinite(w_r).any() else float("nan")}


def _metrics(pred, ref) -> dict[str, float]:
    pred, ref = np.asarray(pred, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    n_all = int(pred.size)
    ok = np.isfinite(pred) & np.isfinite(ref)
    if ok.sum() < 2:  # one subject (its |error|), or none (a model that returned NaN)
        e = np.abs(pred[ok] - ref[ok])
        one = float(e[0]) if e.size else float("nan")
        return {"n": int(ok.sum()), "of": n_all, "mae": one, "rmse": one,
                "mape": float(100 * e[0] / ref[ok][0]) if e.size else float("nan"), "pearson_r": float("nan")}
    m = protocols.metrics(pred, ref)
    return {"n": m.n, "of": n_all, "mae": m.mae, "mae_se": m.mae_se, "rmse": m.rmse, "mape": m.mape,
            "pearson_r": m.pearson_r}


def summarise(subjects: dict[str, dict]) -> dict[str, Any]:
    """Metrics over subjects: ``video`` (one HR per subject), ``window`` (every window pooled), BVP r, frames/s.

    ``subjects`` maps a subject to its :func:`score_subject` result, optionally with ``frames``,
    ``wall_s`` and ``cpu_s`` of its pass. ``n`` / ``of`` count the finite pairs among all.
    """
    s = list(subjects.values())
    win_r = np.concatenate([np.asarray(v["win_bvp_r"], dtype=np.float64) for v in s]) if s else np.array([])
    frames = sum(int(v.get("frames", 0)) for v in s)
    wall = sum(float(v.get("wall_s", 0.0)) for v in s)
    cpu = sum(float(v.get("cpu_s", 0.0)) for v in s)
    return {"video": _metrics([v["hr_pred_bpm"] for v in s], [v["hr_ref_bpm"] for v in s]),
            "window": _metrics([h for v in s for h in v["win_hr_pred_bpm"]],
                               [h for v in s for h in v["win_hr_ref_bpm"]]),
            "bvp_r": float(np.nanmean(win_r)) if np.isfinite(win_r).any() else float("nan"),
            "n_windows": int(win_r.size), "frames": frames, "wall_s": wall, "cpu_s": cpu,
            "frames_per_s": frames / wall if wall > 0 else float("nan"),
            "frames_per_cpu_s": frames / cpu if cpu > 0 else float("nan")}


def markdown_table(rows: list[dict]) -> str:
    """The results as a markdown table; a row: ``model``, ``input``, ``summary`` (:func:`summarise`), ``load_s``."""
    def f(x, nd=2):
        return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"

    out = ["| model | input | subjects | video MAE bpm | video RMSE | video MAPE % | video r | windows | window MAE bpm | "
           "window RMSE | window BVP r | frames/s | frames/CPU-s | load s |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        s, v, w = row["summary"], row["summary"]["video"], row["summary"]["window"]
        n = f"{v['n']}/{v['of']}" if v["n"] != v["of"] else str(v["of"])
        nw = f"{w['n']}/{w['of']}" if w["n"] != w["of"] else str(w["of"])
        out.append(f"| {row['model']} | {row['input']} | {n} | {f(v['mae'])} | {f(v['rmse'])} | {f(v['mape'], 1)} | "
                   f"{f(v['pearson_r'], 3)} | {nw} | {f(w['mae'])} | {f(w['rmse'])} | {f(s['bvp_r'], 3)} | "
                   f"{f(s['frames_per_s'], 0)} | {f(s['frames_per_cpu_s'], 0)} | {f(row.get('load_s'), 0)} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# open-rppg: needs the peers extra
# ---------------------------------------------------------------------------------------------

def configure_threads(n: int) -> None:
    """Thread limits for JAX/XLA, OpenMP and BLAS: effective only before JAX is first imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ[var] = str(n)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 and "xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import cv2

    cv2.setNumThreads(n)


def _pkg_resources_standin() -> None:
    """Register a ``pkg_resources`` with only ``resource_filename`` when setuptools no longer ships one.

    open-rppg 0.1.1 calls ``pkg_resources.resource_filename('rppg', 'weights/...')`` and nothing
    else from it; setuptools >= 81 removed ``pkg_resources``.
    """
    if "pkg_resources" in sys.modules or importlib.util.find_spec("pkg_resources") is not None:
        return
    mod = types.ModuleType("pkg_resources")
    mod.__doc__ = "stand-in registered by benchmarks/peers.py: resource_filename only"
    mod.resource_filename = lambda package, name: str(importlib.resources.files(package).joinpath(name))
    sys.modules["pkg_resources"] = mod


def import_open_rppg():
    """Import open-rppg's ``rppg`` package (quietly); raise :class:`PeersUnavailable` when it cannot be.

    Checks first that the distribution is installed (without importing JAX), then imports it with
    the ``pkg_resources`` stand-in (:func:`_pkg_resources_standin`) and its logger set to errors.
    """
    from importlib import metadata

    try:
        metadata.version("open-rppg")
    except metadata.PackageNotFoundError as e:
        raise PeersUnavailable(f"open-rppg is not installed; {INSTALL_HINT}") from e
    _pkg_resources_standin()
    try:
        import rppg
    except ImportError as e:
        raise PeersUnavailable(f"open-rppg is installed but does not import ({e}); {INSTALL_HINT}") from e
    import logging

    logging.getLogger("open-rppg").setLevel(logging.ERROR)
    return rppg


def cv2_build() -> str:
    """Which OpenCV build owns ``cv2``: ``"contrib"`` (the project's pin) or ``"main"`` (opencv-python's)."""
    import cv2

    built = next((ln for ln in cv2.getBuildInformation().splitlines() if "To be built:" in ln), "")
    return "contrib" if ("ximgproc" in built or "xfeatures2d" in built) else "main"


def versions() -> dict[str, str | None]:
    from importlib import metadata

    out = {}
    for name in DIST_NAMES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


@dataclass
class Peer:
    """A loaded open-rppg model: ``model`` (``rppg.Model``), its state as loaded, its meta, load seconds."""

    name: str
    model: Any
    init_state: Any
    meta: dict
    load_s: float
    diff_output: bool = field(init=False)

    def __post_init__(self) -> None:
        self.diff_output = bool(self.meta.get("cumsum_output", False))


def load_peer(name: str, threads: int = 1) -> Peer:
    """Load one open-rppg model (weights and JIT warm-up; tens of seconds on a CPU core).

    Raises ValueError for a model that unpickles package files (:data:`REFUSED`) or one open-rppg
    does not have, :class:`PeersUnavailable` without the extra.
    """
    if name in REFUSED:
        raise ValueError(f"{name} is refused: its loader unpickles rppg/weights/state.pkl")
    rppg = import_open_rppg()
    if name not in rppg.supported_models:
        raise ValueError(f"open-rppg has no model {name!r}; it has {', '.join(rppg.supported_models)}")
    t0 = time.perf_counter()
    m = rppg.Model(name)
    load_s = time.perf_counter() - t0
    m.face_detection_threads = m.face_resampling_threads = max(1, threads)
    return Peer(name, m, m.state, dict(m.meta), load_s)


def _timed(fn: Callable, *a, **kw):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0, time.process_time() - c0


def peer_on_crops(peer: Peer, frames) -> np.ndarray:
    """:func:`run_on_crops` with the peer's model function, input shape and loaded state."""
    return run_on_crops(peer.model.call, peer.init_state, tuple(peer.meta["input"]), frames)


def peer_on_video(peer: Peer, video: Path, frame_t_s: np.ndarray) -> tuple[np.ndarray, dict]:
    """The package's own pipeline on a video (``Model.process_video``), put back on the frames.

    ``frame_t_s`` is the container clock of the build's frames (``decode/t_s``). Returns the
    per-frame ``bvp`` output (:func:`samples_to_frames`) and counts: the package's statistics
    (``null`` = frames without a detected face, whose output it zeroes; ``filled`` = frames it
    repeated to reach 30 frames/s) and the mapping's.
    """
    m = peer.model
    m.state = peer.init_state  # the package keeps the last video's state otherwise
    m.process_video(str(video))
    signals, ts = m.collect_signals()
    if "bvp" not in signals:
        raise RuntimeError(f"{peer.name} returned no bvp signal for {video}")
    per_frame, counts = samples_to_frames(np.asarray(ts), np.asarray(signals["bvp"], dtype=np.float64),
                                          np.asarray(frame_t_s) - frame_t_s[0])
    return per_frame, {**{f"pkg_{k}": int(v) for k, v in m.statistic.items()}, **counts}


def find_video(root: Path, subject: str) -> Path:
    for name in ("vid.mp4", "vid.avi"):
        if (root / subject / name).is_file():
            return root / subject / name
    hits = sorted((root / subject).glob("vid*.*"))
    if not hits:
        raise FileNotFoundError(f"no vid.* under {root / subject}")
    return hits[0]


def pos_rows(build: dict, subjects: list[str], **score_kw) -> dict[str, dict]:
    """POS (Wang 2017) on each subject's face-skin ROI of the crops, scored like the models."""
    from rppg_prep.alignment import pixel_signal

    out = {}
    for sid in subjects:
        nodes = build[sid]
        (bvp, _), wall, cpu = _timed(pixel_signal, nodes, "pos")
        res = score_subject(bvp, nodes["labels"]["bvp"][:], nodes["labels"]["t_s"][:], **score_kw)
        out[sid] = {**res, "frames": int(bvp.size), "wall_s": wall, "cpu_s": cpu}
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _fmt(x: float) -> str:
    return "nan" if not np.isfinite(x) else f"{x:.1f}"


def default_root() -> Path:
    """``$RPPG_TEST_DATA/ubfc-rppg``, else ``<repo>/../shared/data/ubfc-rppg`` (as the tests find real data)."""
    return Path(os.environ.get("RPPG_TEST_DATA", REPO.parent / "shared" / "data")) / "ubfc-rppg"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, help="cache holding the ubfc build (read only)")
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="print the table of earlier runs' JSON files (summaries recomputed) and exit")
    ap.add_argument("--dataset", default="ubfc")
    ap.add_argument("--pipeline", default="ubfc")
    ap.add_argument("--root", type=Path, default=None,
                    help="folder of subject*/vid.* (the video input); default $RPPG_TEST_DATA/ubfc-rppg or "
                         "../shared/data/ubfc-rppg")
    ap.add_argument("--subjects", default=None, help="comma-separated; default every subject of the build")
    ap.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=KNOWN_MODELS, metavar="MODEL",
                    help=f"open-rppg model names (default {' '.join(DEFAULT_MODELS)}; also "
                         f"{' '.join(m for m in KNOWN_MODELS if m not in DEFAULT_MODELS)})")
    ap.add_argument("--input", default="both", choices=("video", "crops", "both"))
    ap.add_argument("--no-pos", action="store_true", help="skip the POS row")
    ap.add_argument("--window-s", type=float, default=10.0)
    ap.add_argument("--stride-s", type=float, default=1.0)
    ap.add_argument("--clock", default="index", choices=CLOCKS,
                    help="index: frames as they are at the mean rate over labels/t_s (default); even: both signals "
                         "interpolated onto an even grid over labels/t_s")
    ap.add_argument("--float32", action="store_true",
                    help="build the models under Keras' float32 policy instead of the package's global mixed_float16 "
                         "(TS-CAN overflows to NaN in float16 on some chunks)")
    ap.add_argument("--threads", type=int, default=1, help="XLA/OpenMP/OpenCV threads and the package's pools")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/peers-<date>.json)")
    args = ap.parse_args(argv)
    if args.table:
        rows = [r for p in args.table for r in json.loads(p.read_text())["rows"]]
        print(markdown_table([{**r, "summary": summarise(r["subjects"])} for r in rows]))
        return 0
    if args.cache is None:
        ap.error("--cache is required")
    configure_threads(args.threads)  # before JAX is imported

    from rppg_prep import open_build

    build = open_build(args.cache, args.dataset, args.pipeline)
    subjects = args.subjects.split(",") if args.subjects else list(build)
    unknown = [s for s in subjects if s not in build]
    if unknown:
        ap.error(f"subject(s) {unknown} not in the build; built: {', '.join(build)}")
    inputs = INPUTS if args.input == "both" else (args.input,)
    root = args.root or default_root()
    if "video" in inputs:
        videos = {s: find_video(root, s) for s in subjects}
    try:
        import_open_rppg()
    except PeersUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.float32:
        import keras

        keras.mixed_precision.set_global_policy("float32")  # after open-rppg's import set mixed_float16
    cv2_owner = cv2_build()
    if cv2_owner != "contrib":
        print("warning: cv2 is opencv-python's build, not the project's opencv-contrib-python; run "
              "pip install --force-reinstall --no-deps opencv-contrib-python==4.14.0.94", file=sys.stderr)
    score_kw = {"window_s": args.window_s, "stride_s": args.stride_s, "band_hz": protocols.BAND_NEURIPS,
                "clock": args.clock}
    out: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "git_commit": _git_commit(), "cache": str(args.cache),
        "root": str(root), "subjects": subjects, "inputs": list(inputs), "threads": args.threads,
        "band_hz": list(protocols.BAND_NEURIPS), "window_s": args.window_s, "stride_s": args.stride_s,
        "clock": args.clock, "keras_policy": "float32" if args.float32 else "mixed_float16 (the package's)",
        "protocol": "rPPG-Toolbox FFT (detrend lambda=100, 1st-order Butterworth band-pass, periodogram peak) at the "
                    "mean frame rate over labels/t_s (clock: index = frame by frame, even = interpolated onto an even "
                    "grid); reference: labels/bvp the same way; pairing by frame index",
        "versions": versions(), "cv2_build": cv2_owner, "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()), "rows": []}
    t_all = time.perf_counter()
    if not args.no_pos:
        print("POS on the crops' face-skin ROI ...", flush=True)
        per = pos_rows(build, subjects, **score_kw)
        out["rows"].append({"model": "POS (unsupervised)", "input": "crops", "load_s": None,
                            "summary": summarise(per), "subjects": per})
    for name in args.models:
        print(f"{name}: loading ...", flush=True)
        peer = load_peer(name, args.threads)
        print(f"{name}: loaded in {peer.load_s:.0f} s, input {tuple(peer.meta['input'])}", flush=True)
        for inp in inputs:
            per = {}
            for k, sid in enumerate(subjects, 1):
                nodes = build[sid]
                extra: dict[str, Any] = {}
                if inp == "crops":
                    frames = nodes["face"]["frames"]
                    bvp, wall, cpu = _timed(peer_on_crops, peer, frames)
                else:
                    (bvp, extra), wall, cpu = _timed(peer_on_video, peer, videos[sid], nodes["decode"]["t_s"][:])
                ref, t = nodes["labels"]["bvp"][:], nodes["labels"]["t_s"][:]
                if bvp.size != ref.size:
                    raise RuntimeError(f"{name} {inp} {sid}: {bvp.size} outputs for {ref.size} frames")
                res = score_subject(bvp, ref, t, diff_output=peer.diff_output, **score_kw)
                per[sid] = {**res, "frames": int(bvp.size), "wall_s": wall, "cpu_s": cpu,
                            "non_finite_outputs": int((~np.isfinite(bvp)).sum()), **extra}
                print(f"  {name} {inp} [{k}/{len(subjects)}] {sid}: {bvp.size} frames in {wall:.0f} s "
                      f"({bvp.size / wall:.0f}/s); HR {_fmt(res['hr_pred_bpm'])} vs {_fmt(res['hr_ref_bpm'])} bpm, "
                      f"window BVP r {res['bvp_r']:.2f}", flush=True)
            meta = {"input": list(peer.meta["input"]), "fps": peer.meta.get("fps"), "diff_output": peer.diff_output}
            out["rows"].append({"model": f"{name} float32" if args.float32 else name, "input": inp,
                                "load_s": peer.load_s, "meta": meta, "summary": summarise(per), "subjects": per})
    out["wall_s"] = time.perf_counter() - t_all
    out["loadavg_end"] = list(os.getloadavg())
    table = markdown_table(out["rows"])
    print()
    print(table)
    dest = args.out or REPO / "benchmarks" / "results" / f"peers-{time.strftime('%Y-%m-%d')}.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
