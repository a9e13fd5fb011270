"""rppg-prep: fast, incremental, reproducible preprocessing of rPPG datasets into zarr stores.

The public surface, imported on first use (``import rppg_prep`` stays cheap)::

    pipe = rppg_prep.load_pipeline("ubfc")                        # a shipped config, a YAML path, or defaults
    subjects = rppg_prep.get_loader(pipe.dataset).find_subjects(root)
    results = rppg_prep.run_build(pipe, subjects, "cache", root=root)
    nodes = rppg_prep.open_build("cache", pipe.dataset, pipe.name)  # subject -> stage -> zarr group
    tree = rppg_prep.open_datatree("cache", pipe.dataset)         # xarray.DataTree (needs xarray)

Training reads those stores through ``rppg_models.ClipDataset`` (the ``models/`` folder).
"""

from __future__ import annotations

import importlib
from typing import Any

from rppg_prep.errors import (ConfigError, DatasetLayoutError, FaceNotFoundError, GroundTruthError, RppgPrepError,
                              StoreError, VideoDecodeError)

__version__ = "0.1.0"

#: public name -> the module that owns it
_LAZY = {
    "load_pipeline": "rppg_prep.pipeline", "Pipeline": "rppg_prep.pipeline",
    "run_build": "rppg_prep.dag", "subject_status": "rppg_prep.maintenance", "gc": "rppg_prep.maintenance",
    "open_build": "rppg_prep.manifest", "read_manifest": "rppg_prep.manifest",
    "open_datatree": "rppg_prep.datatree",
    "Stage": "rppg_prep.stage", "ArraySpec": "rppg_prep.stage",
    "get_loader": "rppg_prep.datasets", "Subject": "rppg_prep.subject", "Truth": "rppg_prep.subject",
}

__all__ = ["__version__", *_LAZY, "RppgPrepError", "ConfigError", "DatasetLayoutError", "GroundTruthError",
           "VideoDecodeError", "FaceNotFoundError", "StoreError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rppg_prep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
