"""Figures for checking a build and an rPPG method's output: one function per figure, one PNG each.

Every function draws on its own :class:`matplotlib.figure.Figure` with the Agg canvas (no pyplot,
no global state, safe in threads and on machines without a display), writes ``path`` (parent folders
are created) and returns it as a :class:`~pathlib.Path`. Heart rates are in bpm, times in s,
frequencies in Hz; inputs are validated and empty or mismatched ones raise :class:`ValueError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["bland_altman", "pred_vs_ref", "bvp_and_spectrum", "contact_sheet", "labels_figure", "st_image_figure"]

DPI = 100
PRED_COLOUR, REF_COLOUR, DEVICE_COLOUR = "tab:blue", "tab:red", "tab:green"
#: the labels figure's HR axis spans at least this, bpm, centred on the median HR: autoscaled to a
#: steady HR (a 1.5-bpm range) it would show the Welch bins' and beats' noise as a trend
MIN_HR_SPAN_BPM = 20.0


# ----------------------------------------------------------------------------------------------- helpers

def _figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _vector(x, name: str, *, allow_empty: bool = False) -> np.ndarray:
    v = np.asarray(x, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if v.size == 0 and not allow_empty:
        raise ValueError(f"{name} is empty")
    return v


def _hr_pairs(hr_pred_bpm, hr_ref_bpm) -> tuple[np.ndarray, np.ndarray, int]:
    """Finite (pred, ref) pairs and the number of pairs dropped for NaN / inf."""
    p, r = _vector(hr_pred_bpm, "hr_pred_bpm"), _vector(hr_ref_bpm, "hr_ref_bpm")
    if p.shape != r.shape:
        raise ValueError(f"hr_pred_bpm and hr_ref_bpm differ in length: {p.size} vs {r.size}")
    ok = np.isfinite(p) & np.isfinite(r)
    if not ok.any():
        raise ValueError(f"no finite (predicted, reference) HR pair among {p.size}")
    return p[ok], r[ok], int(p.size - ok.sum())


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = np.nanstd(x)
    return (x - np.nanmean(x)) / (sd if sd > 0 else 1.0)


def _fill_nonfinite(x: np.ndarray, name: str) -> np.ndarray:
    ok = np.isfinite(x)
    if not ok.any():
        raise ValueError(f"{name} has no finite value")
    if ok.all():
        return x
    idx = np.arange(x.size)
    return np.interp(idx, idx[ok], x[ok])


def _spectrum(x: np.ndarray, fs_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD (Hann, linear detrend; 8-s segments when the signal has 16 s, else one segment),
    zero-padded to a fine grid, normalised to a peak of 1."""
    from scipy.signal import welch

    n = x.size
    nperseg = int(round(8.0 * fs_hz)) if n >= 16.0 * fs_hz else n
    nfft = 1 << int(np.ceil(np.log2(max(8192, nperseg))))
    f, p = welch(x, fs=fs_hz, window="hann", nperseg=nperseg, noverlap=nperseg // 2, nfft=nfft, detrend="linear")
    top = p.max()
    return f, p / top if top > 0 else p


# ----------------------------------------------------------------------------------------------- HR agreement

def bland_altman(hr_pred_bpm, hr_ref_bpm, path: str | Path, *, title: str = "") -> Path:
    """Bland-Altman plot of predicted against reference heart rate.

    Each point is one window / clip / subject: x the mean of the two HRs, y predicted minus
    reference; horizontal lines at the bias (mean difference) and the 95 % limits of agreement,
    bias +/- 1.96 SD (SD with ``ddof=1``).

    Parameters
    ----------
    hr_pred_bpm, hr_ref_bpm : array_like of float, shape (n,)
        Predicted and reference HR in bpm, paired by index. Pairs with a NaN / inf are dropped
        (their count is shown in the title).
    path : str or Path
        Output PNG.
    title : str
        Text before the statistics in the title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Inputs not 1-D, empty, of different lengths, or without one finite pair.
    """
    p, r, dropped = _hr_pairs(hr_pred_bpm, hr_ref_bpm)
    mean, diff = (p + r) / 2.0, p - r
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else 0.0
    lo, hi = bias - 1.96 * sd, bias + 1.96 * sd
    fig = _figure(7.0, 5.0)
    ax = fig.add_subplot()
    ax.scatter(mean, diff, s=14, alpha=0.7, color=PRED_COLOUR, edgecolors="none", label=f"n = {p.size}")
    ax.axhline(bias, color="k", lw=1.2, label=f"bias {bias:+.2f} bpm")
    ax.axhline(hi, color="0.4", lw=1.0, ls="--", label=f"+1.96 SD {hi:+.2f} bpm")
    ax.axhline(lo, color="0.4", lw=1.0, ls="--", label=f"-1.96 SD {lo:+.2f} bpm")
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("mean of predicted and reference HR (bpm)")
    ax.set_ylabel("predicted - reference HR (bpm)")
    span = max(abs(lo), abs(hi), float(np.abs(diff).max()), 1.0)
    ax.set_ylim(-1.15 * span, 1.15 * span)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    extra = f"\n{dropped} non-finite pair(s) dropped" if dropped else ""
    ax.set_title(f"{title + ': ' if title else ''}bias {bias:+.2f} bpm, 95 % LoA [{lo:+.2f}, {hi:+.2f}] bpm{extra}",
                 fontsize="medium")
    return _save(fig, path)


def pred_vs_ref(hr_pred_bpm, hr_ref_bpm, path: str | Path, *, title: str = "") -> Path:
    """Scatter of predicted against reference heart rate, with the identity line.

    The title gives n, MAE and RMSE in bpm and Pearson's r (NaN with fewer than 2 pairs or a
    constant input).

    Parameters
    ----------
    hr_pred_bpm, hr_ref_bpm : array_like of float, shape (n,)
        Predicted and reference HR in bpm, paired by index; pairs with a NaN / inf are dropped.
    path : str or Path
        Output PNG.
    title : str
        Text before the statistics in the title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Inputs not 1-D, empty, of different lengths, or without one finite pair.
    """
    p, r, dropped = _hr_pairs(hr_pred_bpm, hr_ref_bpm)
    err = p - r
    mae, rmse = float(np.abs(err).mean()), float(np.sqrt((err ** 2).mean()))
    pearson = float(np.corrcoef(p, r)[0, 1]) if p.size > 1 and p.std() > 0 and r.std() > 0 else float("nan")
    fig = _figure(6.0, 6.0)
    ax = fig.add_subplot()
    lo, hi = float(min(p.min(), r.min())), float(max(p.max(), r.max()))
    pad = max(2.0, 0.05 * (hi - lo))
    lim = (lo - pad, hi + pad)
    ax.plot(lim, lim, color="k", lw=1.0, ls="--", label="identity")
    ax.scatter(r, p, s=14, alpha=0.7, color=PRED_COLOUR, edgecolors="none",
               label=f"n = {p.size}, r = {pearson:.3f}, MAE = {mae:.2f} bpm")
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xlabel("reference HR (bpm)")
    ax.set_ylabel("predicted HR (bpm)")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    extra = f"\n{dropped} non-finite pair(s) dropped" if dropped else ""
    ax.set_title(f"{title + ': ' if title else ''}r = {pearson:.3f}, MAE = {mae:.2f} bpm, RMSE = {rmse:.2f} bpm"
                 f"{extra}", fontsize="medium")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- signals

def bvp_and_spectrum(bvp_pred, fs_hz: float, path: str | Path, *, bvp_ref=None, hr_pred_bpm: float | None = None,
                     hr_ref_bpm: float | None = None, band_hz: tuple[float, float] = (0.7, 3.5),
                     title: str = "") -> Path:
    """Pulse trace(s) over time and their power spectra.

    Top panel: the predicted (and reference) pulse, each z-scored, against time in s from the
    first sample. Bottom panel: Welch power spectra (Hann, linear detrend, 8-s segments for
    signals of 16 s or more), each normalised to a peak of 1, against frequency in bpm, with the
    HR band shaded and vertical markers at the given HRs.

    Parameters
    ----------
    bvp_pred : array_like of float, shape (n,)
        Predicted pulse signal (any unit), uniformly sampled at ``fs_hz``. NaNs are drawn as gaps
        and linearly interpolated for the spectrum.
    fs_hz : float
        Sampling rate, Hz (> 0).
    path : str or Path
        Output PNG.
    bvp_ref : array_like of float, shape (n,), optional
        Reference pulse (contact PPG) on the same clock.
    hr_pred_bpm, hr_ref_bpm : float, optional
        HRs to mark on the spectrum, bpm.
    band_hz : (float, float)
        HR band to shade, Hz, ``0 < low < high``.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        ``bvp_pred`` not 1-D, shorter than 2 samples or all NaN; ``bvp_ref`` of another length;
        ``fs_hz`` not positive; ``band_hz`` invalid.
    """
    x = _vector(bvp_pred, "bvp_pred")
    if x.size < 2:
        raise ValueError(f"bvp_pred needs at least 2 samples, got {x.size}")
    if not (np.isfinite(fs_hz) and fs_hz > 0):
        raise ValueError(f"fs_hz must be > 0, got {fs_hz}")
    lo, hi = (float(b) for b in band_hz)
    if not 0 < lo < hi:
        raise ValueError(f"band_hz must be (low, high) with 0 < low < high, got {band_hz}")
    ref = None
    if bvp_ref is not None:
        ref = _vector(bvp_ref, "bvp_ref")
        if ref.shape != x.shape:
            raise ValueError(f"bvp_ref has {ref.size} samples, bvp_pred {x.size}")
    t = np.arange(x.size) / fs_hz
    fig = _figure(11.0, 6.5)
    ax_t, ax_f = fig.subplots(2, 1)
    series = [("predicted", x, PRED_COLOUR, hr_pred_bpm)]
    if ref is not None:
        series.append(("reference", ref, REF_COLOUR, hr_ref_bpm))
    for name, s, colour, _ in series:
        ax_t.plot(t, _zscore(s), color=colour, lw=0.9, label=name)
    ax_t.set_xlabel("time (s)")
    ax_t.set_ylabel("pulse (z-score)")
    ax_t.set_xlim(t[0], t[-1])
    ax_t.legend(loc="upper right", fontsize="small")
    ax_t.grid(alpha=0.3)
    f_max_bpm = min(fs_hz / 2.0, 1.5 * hi) * 60.0
    for name, s, colour, hr in series:
        f, pw = _spectrum(_fill_nonfinite(s, f"{name} pulse"), fs_hz)
        keep = f * 60.0 <= f_max_bpm
        ax_f.plot(f[keep] * 60.0, pw[keep], color=colour, lw=1.0, label=f"{name} spectrum")
        if hr is not None and np.isfinite(hr):
            ax_f.axvline(hr, color=colour, ls="--", lw=1.2, label=f"{name} HR {hr:.1f} bpm")
    ax_f.axvspan(lo * 60.0, min(hi * 60.0, f_max_bpm), color="0.85", zorder=0,
                 label=f"band {lo * 60:.0f}-{hi * 60:.0f} bpm")
    ax_f.set_xlim(0.0, f_max_bpm)
    ax_f.set_ylim(0.0, 1.05)
    ax_f.set_xlabel("frequency (bpm)")
    ax_f.set_ylabel("power (normalised)")
    ax_f.legend(loc="upper right", fontsize="small")
    ax_f.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def labels_figure(t_s, bvp, windows, hr_bpm, hr_device_bpm, path: str | Path, *, title: str = "",
                  hr_beats_bpm=None) -> Path:
    """A subject's labels: the reference pulse over time, and HR per window against the device's HR.

    Parameters
    ----------
    t_s : array_like of float, shape (T,)
        Frame times, s (the ``labels`` node's ``t_s``).
    bvp : array_like of float, shape (T,)
        Contact PPG on the frame clock (the ``labels`` node's ``bvp``), any unit.
    windows : array_like of int, shape (W, 2)
        [start, stop) frame indices of the HR windows (``labels/window``).
    hr_bpm : array_like of float, shape (W,)
        HR of the PPG per window, bpm (``labels/hr_bpm``); NaN = no estimate.
    hr_device_bpm : array_like of float, shape (W,), or None
        The oximeter's median HR per window, bpm (``labels/hr_device_window_bpm``); NaN = dropout.
    path : str or Path
        Output PNG.
    title : str
        Figure title.
    hr_beats_bpm : array_like of float, shape (W,), optional
        Beat-based HR per window, bpm (``labels/hr_beats_bpm``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Empty or mismatched inputs, or a window outside ``[0, T]``.
    """
    t = _vector(t_s, "t_s")
    b = _vector(bvp, "bvp")
    if b.shape != t.shape:
        raise ValueError(f"bvp has {b.size} samples, t_s {t.size}")
    win = np.asarray(windows)
    if win.ndim != 2 or win.shape[1] != 2:
        raise ValueError(f"windows must have shape (W, 2), got {win.shape}")
    win = win.astype(np.int64)
    hr = _vector(hr_bpm, "hr_bpm", allow_empty=True)
    if hr.shape != (len(win),):
        raise ValueError(f"hr_bpm has {hr.size} values for {len(win)} windows")
    dev = None
    if hr_device_bpm is not None:
        dev = _vector(hr_device_bpm, "hr_device_bpm", allow_empty=True)
        if dev.shape != (len(win),):
            raise ValueError(f"hr_device_bpm has {dev.size} values for {len(win)} windows")
    if len(win) and (win.min() < 0 or win.max() > t.size or np.any(win[:, 1] <= win[:, 0])):
        raise ValueError(f"windows must satisfy 0 <= start < stop <= {t.size}")
    t0 = t[0]
    fig = _figure(11.0, 6.5)
    ax_b, ax_h = fig.subplots(2, 1, sharex=True)
    ax_b.plot(t - t0, b, color=REF_COLOUR, lw=0.8)
    ax_b.set_ylabel("contact PPG (a.u.)")
    ax_b.set_title("reference pulse on the frame clock", fontsize="medium")
    ax_b.grid(alpha=0.3)
    if len(win):
        centre = (t[win[:, 0]] + t[win[:, 1] - 1]) / 2.0 - t0
        ax_h.plot(centre, hr, "o-", color=REF_COLOUR, ms=3, lw=1.0, label="PPG HR (Welch peak)")
        if hr_beats_bpm is not None:
            ax_h.plot(centre, np.asarray(hr_beats_bpm, dtype=np.float64), "^-", color="tab:green", ms=3, lw=1.0,
                      label="PPG HR (median of beats)")
        if dev is not None:
            ax_h.plot(centre, dev, "s--", color=DEVICE_COLOUR, ms=3, lw=1.0, label="device HR (median)")
        shown = np.concatenate([hr] + [np.asarray(v, dtype=np.float64).ravel()
                                       for v in (hr_beats_bpm, dev) if v is not None])
        shown = shown[np.isfinite(shown)]
        if shown.size:
            mid = float(np.median(shown))
            ax_h.set_ylim(min(float(shown.min()), mid - MIN_HR_SPAN_BPM / 2) - 1.0,
                          max(float(shown.max()), mid + MIN_HR_SPAN_BPM / 2) + 1.0)
        ax_h.legend(loc="best", fontsize="small")
        length = float(np.median(t[win[:, 1] - 1] - t[win[:, 0]]))
        ax_h.set_title(f"HR per {len(win)} window(s) of ~{length:.1f} s, at window centres", fontsize="medium")
    else:
        ax_h.text(0.5, 0.5, "no HR window (video shorter than one window)", ha="center", va="center",
                  transform=ax_h.transAxes)
    ax_h.set_xlabel("time from first frame (s)")
    ax_h.set_ylabel("HR (bpm)")
    ax_h.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def lag_curve_figure(curves, path: str | Path, *, title: str = "") -> Path:
    """Pixel-to-label lag-correlation curves, one line per subject (:mod:`rppg_prep.alignment`).

    Parameters
    ----------
    curves : sequence of rppg_prep.alignment.LagCurve
        ``lags_s`` (s) and window-mean Pearson ``r`` per subject.
    path : str or Path
        Output PNG.
    title : str
        Figure title.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        No curve.
    """
    if not len(curves):
        raise ValueError("no lag curve to draw")
    fig = _figure(8.0, 4.5)
    ax = fig.subplots()
    for c in curves:
        ax.plot(c.lags_s, c.r, lw=1.2, label=f"{c.subject}: r(0) {c.at(0.0):.2f}, best {c.best_lag_s:+.2f} s")
    ax.axvline(0.0, color="black", lw=0.8, ls="--")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set_xlabel("lag of the label (s): r between the pixels at t and the label at t + lag")
    ax.set_ylabel("window-mean Pearson r")
    ax.set_title("pixel pulse (POS) vs label, 0.7-3.5 Hz, 10-s windows: aligned labels peak at 0",
                 fontsize="medium")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------- images

def _images(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{name} must have shape (n, H, W, 3), got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0 or a.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got {a.dtype}")
    return a


def _titles(titles: Sequence[str] | None, n: int) -> list[str] | None:
    if titles is None:
        return None
    titles = [str(s) for s in titles]
    if len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    return titles


def contact_sheet(crops_uint8, path: str | Path, *, landmarks_px=None, ncols: int = 8,
                  titles: Sequence[str] | None = None, gap_px: int = 2, title: str = "") -> Path:
    """A grid of face crops, optionally with landmark dots.

    The crops are tiled into one image (``gap_px`` white pixels between tiles) drawn at about one
    screen pixel per crop pixel, so they are not resampled much.

    Parameters
    ----------
    crops_uint8 : array_like of uint8, shape (n, H, W, 3)
        RGB crops (the ``face`` node's ``frames``).
    path : str or Path
        Output PNG.
    landmarks_px : array_like of float, shape (n, K, 2), optional
        x, y of K landmarks per crop in crop pixel coordinates (0 = left / top edge of the crop);
        NaN points are not drawn.
    ncols : int
        Crops per row (>= 1).
    titles : sequence of str, optional
        One caption per crop.
    gap_px : int
        Gap between tiles, px.
    title : str
        Title above the sheet (e.g. the subject).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Crops not (n, H, W, 3) uint8 or empty; landmarks or titles not matching n; ``ncols < 1``.
    """
    crops = _images(crops_uint8, "crops_uint8")
    n, h, w, _ = crops.shape
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    lm = None
    if landmarks_px is not None:
        lm = np.asarray(landmarks_px, dtype=np.float64)
        if lm.ndim != 3 or lm.shape[0] != n or lm.shape[2] != 2:
            raise ValueError(f"landmarks_px must have shape ({n}, K, 2), got {lm.shape}")
    caps = _titles(titles, n)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    scale = max(1.0, 160.0 / w)  # small crops are drawn larger
    cap_px = int(np.ceil(13.0 / scale)) if caps else 0  # white band above each row for the captions
    pitch_y, pitch_x = h + gap_px + cap_px, w + gap_px
    sheet = np.full((nrows * pitch_y - gap_px, ncols * pitch_x - gap_px, 3), 255, np.uint8)
    offsets = []
    for i in range(n):
        r, c = divmod(i, ncols)
        y0, x0 = r * pitch_y + cap_px, c * pitch_x
        sheet[y0:y0 + h, x0:x0 + w] = crops[i]
        offsets.append((x0, y0))
    img_h_in, title_in = sheet.shape[0] * scale / DPI, 0.3 if title else 0.0
    fig = _figure(sheet.shape[1] * scale / DPI, img_h_in + title_in)
    fig.set_layout_engine("none")
    ax = fig.add_axes((0.0, 0.0, 1.0, img_h_in / (img_h_in + title_in)))
    if title:
        fig.suptitle(title, y=1.0 - 0.5 * title_in / (img_h_in + title_in), va="center", fontsize=9)
    ax.imshow(sheet, interpolation="nearest")
    if lm is not None:
        pts = np.concatenate([lm[i] + np.asarray(offsets[i], np.float64) for i in range(n)])
        # crop coordinates are pixel edges (0 = left edge); imshow puts pixel centres on integers
        ax.scatter(pts[:, 0] - 0.5, pts[:, 1] - 0.5, s=2.0 * scale * max(1.0, w / 128.0), c="#00ff40",
                   marker="o", linewidths=0, alpha=0.9)
    if caps:
        for (x0, y0), cap in zip(offsets, caps):
            ax.text(x0 + w / 2, y0 - 1, cap, ha="center", va="bottom", fontsize=7, clip_on=False)
    ax.set_xlim(-0.5, sheet.shape[1] - 0.5)
    ax.set_ylim(sheet.shape[0] - 0.5, -0.5)
    ax.set_axis_off()
    return _save(fig, path)


def st_image_figure(images, path: str | Path, *, titles: Sequence[str] | None = None,
                    x_step_s: float | None = None) -> Path:
    """A few spatiotemporal (ST2S) images stacked vertically, each at its own aspect.

    Parameters
    ----------
    images : array_like of uint8, shape (k, H, W, 3)
        RGB images, e.g. ``st_map/images[segment, strips]``: rows are face rows, columns run along
        time (``strip_px`` columns per frame).
    path : str or Path
        Output PNG.
    titles : sequence of str, optional
        One caption per image.
    x_step_s : float, optional
        Seconds per image column (1 / (fps * strip_px)); when given, the x axis is in s, else in
        image columns.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        Images not (k, H, W, 3) uint8 or empty, titles not matching k, ``x_step_s`` not positive.
    """
    imgs = _images(images, "images")
    k, h, w, _ = imgs.shape
    caps = _titles(titles, k)
    if x_step_s is not None and not x_step_s > 0:
        raise ValueError(f"x_step_s must be > 0, got {x_step_s}")
    width_in = 12.0
    panel_in = max(0.6, width_in * h / w)
    fig = _figure(width_in, k * (panel_in + 0.45) + 0.4)
    axes = fig.subplots(k, 1, squeeze=False)[:, 0]
    extent = None if x_step_s is None else (0.0, w * x_step_s, h, 0)
    for i, ax in enumerate(axes):
        ax.imshow(imgs[i], aspect="auto", interpolation="nearest", extent=extent)
        ax.set_ylabel("face row (px)", fontsize="small")
        ax.tick_params(labelsize="small")
        if caps:
            ax.set_title(caps[i], fontsize="small")
        if i < k - 1:
            ax.tick_params(labelbottom=False)
    axes[-1].set_xlabel("time (s)" if x_step_s is not None else "time (image columns)")
    return _save(fig, path)
