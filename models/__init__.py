"""The training layer (imported as ``rppg_models``): datasets over rppg-prep stores, five model families,
training and evaluation.

The public surface, imported on first use (torch loads only then)::

    ds = rppg_models.ClipDataset("cache", "ubfc", "ubfc", norm="temporal")
    res = rppg_models.fit("stgnet", "cache", "ubfc", "ubfc", rppg_models.TrainConfig(steps=1500), out="cache/models")
    scores, metrics = rppg_models.evaluate_checkpoint(res["checkpoint"], "cache", "ubfc", "ubfc")
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that owns it
_LAZY = {
    "ClipDataset": "rppg_models.data", "subject_folds": "rppg_models.data",
    "fit": "rppg_models.train", "fit_cnn3d": "rppg_models.train", "TrainConfig": "rppg_models.train",
    "FAMILIES": "rppg_models.train", "pick_device": "rppg_models.train",
    "evaluate_checkpoint": "rppg_models.evaluate", "load_checkpoint": "rppg_models.evaluate",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rppg_models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
