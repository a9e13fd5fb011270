"""A finished build as one ``xarray.DataTree``: ``/<subject>/<stage>`` groups of lazy dask arrays.

xarray is optional (``pip install 'rppg-prep[xarray]'``); nothing here imports it at module level.
The tree is built from the nodes the build manifest records (:func:`rppg_prep.manifest.read_manifest`
validates every path first), each array wrapped with :func:`dask.array.from_zarr`, so opening a
tree reads only metadata plus the small clock and window arrays its coordinates need.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import xarray
    import zarr

__all__ = ["open_datatree"]

#: the stages whose ``t_s`` is the subject's frame clock, most trusted first
_CLOCKS = ("labels", "decode")


def open_datatree(cache: str | Path, dataset: str, pipeline: str | None = None) -> xarray.DataTree:
    """Open a finished build as an ``xarray.DataTree``, one group per subject and stage.

    The groups are named by stage, not by key: ``tree["subject3/labels"]``. Each stage group is
    an ``xarray.Dataset`` of the node's arrays as lazy dask arrays (nothing big is read), with the
    node's provenance attributes plus ``path`` (relative to ``cache``, as the manifest records it);
    ``key`` is the node key. Array attributes keep the store's ``doc``; the store's ``unit`` is
    the CF ``units`` attribute (omitted when dimensionless).

    Coordinates:

    * ``t_s`` on the ``frame`` dimension (seconds): a node's own ``t_s`` where it has one
      (``labels``, ``decode``); otherwise the subject's frame clock, the labels' ``t_s`` or else
      the decode one, when its length is the node's frame count and ``frame`` is the first axis
      of every array that has it (a clip's ``frame`` axis counts frames within the clip: none).
    * ``window_start_s`` and ``window_stop_s`` on the first dimension of a ``window`` array
      (``[start, stop)`` frame indices: ``window``, ``clip`` or ``segment``): the frame clock at
      ``start`` and at ``stop``, the end of the window; a stop at the last frame's end is the
      last time plus the median frame interval.

    Parameters
    ----------
    cache : str or Path
        Store root.
    dataset : str
        Loader name.
    pipeline : str, optional
        Pipeline name; defaults to ``dataset``.

    Returns
    -------
    xarray.DataTree
        Root attributes ``dataset`` and ``pipeline``; ``/<subject>`` groups (attribute
        ``subject``) of ``/<subject>/<stage>`` groups, subjects whose build succeeded only, in
        the order of :func:`rppg_prep.manifest.open_build`.

    Raises
    ------
    ImportError
        If xarray is not installed.
    StoreError
        If the build or one of its nodes is missing.
    """
    try:
        import xarray as xr
    except ImportError:
        raise ImportError("open_datatree needs xarray: `pip install xarray` "
                          "(or `pip install 'rppg-prep[xarray]'`)") from None
    from rppg_prep.manifest import open_build, read_manifest

    pipeline = dataset if pipeline is None else pipeline
    man = read_manifest(cache, dataset, pipeline)
    build = open_build(cache, dataset, pipeline)
    tree: dict[str, Any] = {"/": xr.Dataset(attrs={"dataset": dataset, "pipeline": pipeline})}
    for sid, nodes in build.items():
        records = man["subjects"][sid]["nodes"]
        clock = _subject_clock(nodes)
        tree[f"/{sid}"] = xr.Dataset(attrs={"subject": sid})
        for stage, group in nodes.items():
            tree[f"/{sid}/{stage}"] = _node_dataset(xr, group, clock, path=records[stage]["path"])
    return xr.DataTree.from_dict(tree)


def _subject_clock(nodes: dict[str, zarr.Group]) -> zarr.Array | None:
    """The subject's frame clock: the ``t_s`` array of the first of :data:`_CLOCKS` that has one."""
    for stage in _CLOCKS:
        if stage in nodes and "t_s" in nodes[stage].array_keys():
            return nodes[stage]["t_s"]
    return None


def _dims(arr: zarr.Array, name: str) -> tuple[str, ...]:
    names = getattr(arr.metadata, "dimension_names", None)
    if names and len(names) == arr.ndim and all(names):
        return tuple(names)
    return tuple(f"{name}_dim_{i}" for i in range(arr.ndim))


def _attrs(arr: zarr.Array) -> dict[str, Any]:
    """The array's attributes with CF ``units`` (an older node's ``unit`` renamed; none when empty)."""
    attrs = dict(arr.attrs)
    attrs.pop("coordinates", None)  # CF's pointer to t_s, which the tree sets as a coordinate itself
    unit = attrs.pop("unit", None)  # nodes written before the store used CF's name
    if unit and "units" not in attrs:
        attrs["units"] = unit
    return attrs


def _node_dataset(xr: Any, group: zarr.Group, clock: zarr.Array | None, *, path: str) -> xarray.Dataset:
    import dask.array as da

    arrays = {name: group[name] for name in sorted(group.array_keys())}
    dims = {name: _dims(arr, name) for name, arr in arrays.items()}
    data_vars = {name: xr.Variable(dims[name], da.from_zarr(arr), attrs=_attrs(arr)) for name, arr in arrays.items()}
    coords: dict[str, Any] = {}
    # the frame clock: the node's own t_s, else the subject's when it fits this node's frame axis
    if "t_s" in arrays and dims["t_s"] == ("frame",):
        t_s, t_src = arrays["t_s"], None
        coords["t_s"] = data_vars.pop("t_s")
    else:
        t_s, t_src = clock, clock
        frame_axes = [d.index("frame") for d in dims.values() if "frame" in d]
        n_frames = {arrays[n].shape[d.index("frame")] for n, d in dims.items() if "frame" in d}
        if clock is not None and frame_axes and set(frame_axes) == {0} and n_frames == {clock.shape[0]}:
            coords["t_s"] = xr.Variable(("frame",), da.from_zarr(clock), attrs=_attrs(clock))
    # window start and stop times, on the window's own dimension
    win = arrays.get("window")
    if win is not None and t_s is not None and win.ndim == 2 and win.shape[1] == 2 and t_s.shape[0] > 0:
        idx = np.asarray(win[...], dtype=np.int64)
        t = np.asarray(t_s[...], dtype=np.float64)
        step = float(np.median(np.diff(t))) if t.size > 1 else 0.0
        t_ext = np.append(t, t[-1] + step)
        if idx.size == 0 or (idx.min() >= 0 and idx.max() <= t.size):
            units = _attrs(t_s).get("units", "s")
            how = "the frame clock" if t_src is None else "the subject's frame clock"
            coords["window_start_s"] = xr.Variable(dims["window"][:1], t_ext[idx[:, 0]],
                                                   attrs={"units": units, "doc": f"{how} at each window's start"})
            coords["window_stop_s"] = xr.Variable(dims["window"][:1], t_ext[idx[:, 1]],
                                                  attrs={"units": units,
                                                         "doc": f"{how} at each window's [start, stop) stop"})
    attrs = dict(group.attrs)
    attrs["path"] = path
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
