"""MATLAB v7.3 (HDF5) helpers shared by the SCAMPS and MMPD loaders.

HDF5 stores MATLAB's column-major arrays with the axes reversed, so h5py shows a MATLAB
(a, b, c, d) array as (d, c, b, a). Videos are read lazily, a block of frames at a time.
h5py is imported by the callers' functions only (``open_v73``), never at import time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject
from rppg_prep.errors import VideoDecodeError

#: memory a :class:`TimeBlocks` reader may hold for one block of frames (as stored, e.g. float64)
BLOCK_BYTES = 64 * 2**20
#: upper bound when a block must span a whole HDF5 chunk along time
MAX_BLOCK_BYTES = 256 * 2**20


def open_v73(path: Path, subject: str, error: type):
    """Open a MATLAB v7.3 file with h5py.

    Parameters
    ----------
    path : Path
    subject : str
        Named in errors.
    error : type
        :class:`VideoDecodeError` or :class:`GroundTruthError`, whichever the caller raises.

    Returns
    -------
    h5py.File
        Open read-only; the caller closes it.

    Raises
    ------
    error
        The file is missing, is not HDF5 (e.g. a MATLAB v5 file or not a MAT file at all), or
        cannot be opened (truncated or corrupt).
    """
    import h5py

    if not path.exists():
        raise error("MATLAB file is missing", subject=subject, path=path)
    try:
        is_h5 = h5py.is_hdf5(str(path))
    except OSError as exc:
        raise error(f"cannot read the file: {exc}", subject=subject, path=path) from None
    if not is_h5:
        raise error("not a MATLAB v7.3 (HDF5) file: it may be corrupt, truncated at the start, or saved "
                    "in another MAT version; re-download it", subject=subject, path=path)
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise error(f"cannot open the MATLAB v7.3 file (truncated or corrupt; re-download it): {exc}",
                    subject=subject, path=path) from None


def video_axes(shape: tuple[int, ...], *, reversed_: bool) -> str | None:
    """The axis string (for ``ArraySource``) of a stored 4-D RGB video array, or None.

    The layout is told by where the 3 colour channels sit. MATLAB orders recognised: (T, H, W, C)
    (SCAMPS, MMPD) and (H, W, C, T) (MATLAB's ``VideoReader``/``read`` order).

    Parameters
    ----------
    shape : tuple of int
        Shape as read.
    reversed_ : bool
        True for h5py views of MATLAB v7.3 data (axes reversed: ``"CWHT"`` or ``"TCWH"``); False for
        arrays in MATLAB order (scipy.io.loadmat: ``"THWC"`` or ``"HWCT"``).

    Examples
    --------
    >>> video_axes((3, 240, 240, 600), reversed_=True)
    'CWHT'
    >>> video_axes((600, 240, 320, 3), reversed_=False)
    'THWC'
    """
    if len(shape) != 4:
        return None
    for matlab in ("THWC", "HWCT"):
        axes = matlab[::-1] if reversed_ else matlab
        c = axes.index("C")
        if shape[c] == 3 and sum(1 for s in shape if s == 3) == 1:
            return axes
    return None


class TimeBlocks:
    """Sliceable view of an h5py video dataset that reads whole blocks of frames at a time.

    The video pass asks for a few frames at a time (``build.BATCH_FRAMES``). MATLAB v7.3 arrays are
    chunked and compressed, and with time as the fastest-varying axis a few frames touch every
    chunk, so each small read would decompress much of the file. This view reads ``block`` frames
    at once (aligned to the chunk extent along time when it fits in :data:`MAX_BLOCK_BYTES`), keeps
    that one block, and serves the small slices from it: memory stays bounded by one block.

    Parameters
    ----------
    dataset : h5py.Dataset
        4-D video dataset.
    t_axis : int
        Index of the time axis in ``dataset.shape``.

    Attributes
    ----------
    shape, dtype
        Those of ``dataset``.
    block : int
        Frames per block read.
    """

    def __init__(self, dataset, t_axis: int):
        self.ds, self.t_axis = dataset, int(t_axis)
        self.shape, self.dtype = tuple(int(s) for s in dataset.shape), dataset.dtype
        n_t = self.shape[self.t_axis]
        frame_bytes = max(1, int(np.prod(self.shape)) // max(n_t, 1) * dataset.dtype.itemsize)
        block = max(1, BLOCK_BYTES // frame_bytes)
        chunks = dataset.chunks
        if chunks is not None:
            ct = int(chunks[self.t_axis])
            if ct <= block:
                block = (block // ct) * ct
            elif ct * frame_bytes <= MAX_BLOCK_BYTES:
                block = ct
        self.block = int(min(block, max(n_t, 1)))
        self._start, self._data = -1, None

    def __getitem__(self, index):
        if not isinstance(index, tuple) or len(index) != len(self.shape):
            raise TypeError("TimeBlocks takes one slice per axis")
        start, stop, step = index[self.t_axis].indices(self.shape[self.t_axis])
        if step != 1 or stop <= start:
            return self.ds[index]
        parts = []
        pos = start
        while pos < stop:  # a request straddling two blocks is served from both, one after the other
            self._load((pos // self.block) * self.block)
            end = min(stop, self._start + self.block)
            local = tuple(slice(pos - self._start, end - self._start) if a == self.t_axis else index[a]
                          for a in range(len(self.shape)))
            parts.append(self._data[local])
            pos = end
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=self.t_axis)

    def _load(self, b0: int) -> None:
        if self._start == b0:
            return
        n_t = self.shape[self.t_axis]
        sel = tuple(slice(b0, min(b0 + self.block, n_t)) if a == self.t_axis else slice(None)
                    for a in range(len(self.shape)))
        self._data, self._start = None, -1  # free the old block before reading the next
        self._data, self._start = self.ds[sel], b0

    def release(self) -> None:
        """Drop the cached block."""
        self._data, self._start = None, -1


def h5_video_source(f, var: str, subject: Subject, *, fps: float, missing_hint: str = ""):
    """An ``ArraySource`` over video variable ``var`` of an open MATLAB v7.3 file; closes ``f`` on close.

    Parameters
    ----------
    f : h5py.File
        Open file; owned by the returned source from now on (closed on error too).
    var : str
        Variable name (``"Xsub"`` for SCAMPS, ``"video"`` for MMPD).
    subject : Subject
    fps : float
        Frame rate, Hz; frame i is at ``i / fps``.

    Returns
    -------
    rppg_prep.sources.ArraySource
        Float data as ``value_range="unit"``, integer data as ``"uint8"``.

    Raises
    ------
    VideoDecodeError
        ``var`` is missing or is not a 4-D RGB array in a recognised layout.
    """
    import h5py

    from rppg_prep.sources import ArraySource

    path = subject.video
    try:
        ds = f.get(var)
        if not isinstance(ds, h5py.Dataset):
            names = ", ".join(sorted(k for k in f.keys() if not k.startswith("#")))
            raise VideoDecodeError(f"the file has no video variable {var!r}{missing_hint}; "
                                   f"variables: {names or 'none'}",
                                   subject=subject.id, path=path)
        axes = video_axes(ds.shape, reversed_=True)
        if axes is None:
            raise VideoDecodeError(
                f"variable {var!r} has shape {ds.shape} as stored; expected a MATLAB T x H x W x 3 (or H x W x 3 x T) "
                "RGB video", subject=subject.id, path=path)
        unit = ds.dtype.kind == "f"
        if not unit and ds.dtype.kind not in "iu":
            raise VideoDecodeError(f"variable {var!r} has dtype {ds.dtype}; expected floats in [0, 1] or 0-255 integers",
                                   subject=subject.id, path=path)
        view = TimeBlocks(ds, axes.index("T"))

        def close() -> None:
            view.release()
            f.close()

        return ArraySource(view, axes=axes, fps=fps, path=path, value_range="unit" if unit else "uint8",
                           subject=subject.id, on_close=close)
    except BaseException:
        f.close()
        raise


def as_vector(raw: np.ndarray) -> np.ndarray | None:
    """A MATLAB vector (n,), (1, n) or (n, 1) as float64 (n,); None for any other shape."""
    arr = np.asarray(raw)
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.dtype.kind not in "fiub":
        return None
    return arr.astype(np.float64)
