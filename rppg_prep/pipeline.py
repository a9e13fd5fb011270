"""Pipeline configs: which dataset a build reads and every core stage's params.

A pipeline is resolved from a YAML file, from the name of a config shipped with the package
(``rppg_prep.pipelines``, the repository's ``pipelines/`` folder, found through
:mod:`importlib.resources` so that a non-editable install has them too), or from a dataset name with
no shipped config (the stage defaults). A config that exists but does not validate is an error,
never a silent fallback to the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

from rppg_prep.errors import ConfigError
from rppg_prep.stage import canonical_json, params_from_dict
from rppg_prep.stages import ORDER, STAGES
from rppg_prep.store import check_name

__all__ = ["Pipeline", "load_pipeline", "pipeline_file", "pipeline_names", "STAGES", "ORDER"]

PIPELINES_PACKAGE = "rppg_prep.pipelines"


@dataclass(frozen=True)
class Pipeline:
    """A resolved pipeline config.

    Parameters
    ----------
    name : str
        Pipeline name (the manifest is ``<dataset>.builds/<name>.json``).
    dataset : str
        Loader name (:data:`rppg_prep.datasets.LOADERS`). Both are checked by
        :func:`rppg_prep.store.check_name` (``[A-Za-z0-9._-]+``, not ``.`` or ``..``): a
        :class:`ConfigError` naming the file and the key.
    params : dict of str to dataclass
        Stage name -> that stage's frozen params.
    source : str
        Where the config came from: the YAML file's path, or ``"defaults"`` (provenance only, in
        no key: two files with the same settings give the same nodes).
    """

    name: str
    dataset: str
    params: dict[str, Any]
    source: str = "defaults"

    def __post_init__(self) -> None:
        # both become parts of paths under the cache (the manifest, the store): one path component each
        path = None if self.source == "defaults" else self.source
        for key in ("name", "dataset"):
            try:
                check_name(getattr(self, key), f"key {key!r}")
            except ConfigError as exc:
                raise ConfigError(exc.message, path=path) from None

    def config(self) -> dict[str, Any]:
        """Plain-JSON view of every stage's params (stage -> param -> value)."""
        return {s: json.loads(canonical_json(self.params[s])) for s in ORDER}


def pipeline_names() -> list[str]:
    """Names of the pipeline configs shipped with the package.

    Returns
    -------
    list of str
        Sorted, e.g. ``["cohface", ..., "ubfc", ...]``.
    """
    return sorted(p.name[:-5] for p in files(PIPELINES_PACKAGE).iterdir() if p.name.endswith(".yaml"))


def pipeline_file(name: str) -> Path | None:
    """The shipped config of pipeline ``name``.

    Parameters
    ----------
    name : str
        A pipeline name, e.g. ``"ubfc"``.

    Returns
    -------
    Path or None
        ``<package>/pipelines/<name>.yaml``; None when none is shipped.
    """
    res = files(PIPELINES_PACKAGE) / f"{name}.yaml"
    return Path(str(res)) if res.is_file() else None


def _is_path(spec: str | Path) -> bool:
    return isinstance(spec, Path) or bool(Path(spec).suffix) or "/" in spec or "\\" in spec


def load_pipeline(spec: str | Path | None = None, *, dataset: str = "ubfc") -> Pipeline:
    """Resolve a pipeline.

    The YAML holds ``name``, ``dataset`` and ``stages: {stage: {param: value}}``; parameters left
    out take the stage's defaults.

    Parameters
    ----------
    spec : str or Path, optional
        A YAML file (anything with a suffix or a path separator), the name of a shipped config
        (:func:`pipeline_names`), or a dataset name without a shipped config (the stage defaults).
        None: the stage defaults for ``dataset``.
    dataset : str
        Dataset of a ``spec=None`` pipeline.

    Returns
    -------
    Pipeline

    Raises
    ------
    ConfigError
        Unknown name, unreadable YAML, a top-level key other than ``name``, ``dataset`` and ``stages``
        (e.g. a stage section outside ``stages:``), a ``name`` or ``dataset`` that is not a plain name
        (:func:`rppg_prep.store.check_name`), unknown stage or parameter, or a bad value (a wrong
        type, a non-finite number); the message names the file and the key.
    """
    from rppg_prep.datasets import LOADERS

    raw: dict[str, Any] = {"name": dataset, "dataset": dataset, "stages": {}}
    path: Path | None = None
    if spec is not None:
        if _is_path(spec):
            path = Path(spec)
        else:
            path = pipeline_file(str(spec))
            if path is None:
                if spec not in LOADERS:
                    raise ConfigError(f"no pipeline named {spec!r}: shipped configs are {pipeline_names()} and "
                                      f"datasets {sorted(LOADERS)} (a YAML file is given by its path)")
                raw.update(name=str(spec), dataset=str(spec))
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read pipeline config: {exc}", path=path) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError("a pipeline config is a mapping with name, dataset and stages", path=path)
        raw.update(loaded or {})
    if path is not None:
        _check_top_level(loaded or {}, path)
    stages_cfg = raw.get("stages") or {}
    if not isinstance(stages_cfg, dict):
        raise ConfigError(f"key 'stages' must be a mapping of stage: {{param: value}}, got {stages_cfg!r}",
                          path=path)
    for name, section in stages_cfg.items():
        if section is not None and not isinstance(section, dict):
            raise ConfigError(f"stages.{name} must be a mapping of param: value, got {section!r}", path=path)
    unknown = sorted(set(stages_cfg) - set(ORDER), key=str)
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown} in pipeline {raw['name']!r}; stages: {list(ORDER)}", path=path)
    params = {}
    for name in ORDER:
        try:
            params[name] = params_from_dict(STAGES[name].params, stages_cfg.get(name))
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"stage {name}: {exc}", path=path) from None
    return Pipeline(name=raw["name"], dataset=raw["dataset"], params=params,
                    source=str(path) if path is not None else "defaults")


#: the keys of a pipeline config's top level
TOP_LEVEL = ("name", "dataset", "stages")


def _check_top_level(loaded: dict[str, Any], path: Path) -> None:
    """Refuse a top-level key that is not one of :data:`TOP_LEVEL` (a misplaced stage, a typo)."""
    import difflib

    for key in loaded:
        if key in TOP_LEVEL:
            continue
        if key in STAGES:
            hint = f"{key!r} is a stage: its section goes under 'stages:'"
        else:
            close = difflib.get_close_matches(str(key), TOP_LEVEL, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"the top level holds only {list(TOP_LEVEL)}"
        raise ConfigError(f"unknown top-level key {key!r}: {hint}", path=path)
