"""Stage ``split``: ST2S good/bad labels of ST images by the MAE rule.

Kateri et al., ST2S-rPPG (PMLR 259, 2025), ``binary_class_generation.py``: an ST image whose
stage-1 HR prediction misses its label by more than ``threshold_bpm`` is "bad" (1), otherwise
"good" (0). The reference's default threshold (0.5, in whatever unit its labels had) was never
set in its config; here it is a pipeline parameter in bpm. The node's key includes the stage-1
checkpoint's key, so retraining re-runs this stage and nothing upstream.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rppg_prep.errors import ConfigError
from rppg_prep.stage import ArraySpec, Stage

__all__ = ["SplitParams", "STAGE", "PRED_STAGE", "good_bad"]


@dataclass(frozen=True, kw_only=True)
class SplitParams:
    """Split settings.

    Attributes
    ----------
    threshold_bpm : float
        Largest |stage-1 prediction - label HR| of a "good" ST image, bpm.
    hr_label : {"beats", "welch"}
        The segment's label HR: median of the contact PPG's beats, or its Welch peak.
    """

    threshold_bpm: float = 5.0
    hr_label: str = "beats"

    def __post_init__(self) -> None:
        if not self.threshold_bpm > 0:
            raise ConfigError(f"split.threshold_bpm must be > 0 bpm, got {self.threshold_bpm}")
        if self.hr_label not in ("beats", "welch"):
            raise ConfigError(f"split.hr_label must be 'beats' or 'welch', got {self.hr_label!r}")


@dataclass(frozen=True, kw_only=True)
class PredParams:
    """Stage-1 prediction node: no settings of its own; the checkpoint key enters its key."""


STAGE = Stage(
    name="split",
    version="1",
    params=SplitParams,
    inputs=("st2s_pred", "labels"),
    outputs=(ArraySpec("bad", "int8", ("segment", "strip"), "", "1 = bad (error > threshold), 0 = good"),
             ArraySpec("abs_error_bpm", "float32", ("segment", "strip"), "bpm", "|prediction - label HR|")),
)

PRED_STAGE = Stage(
    name="st2s_pred",
    version="1",
    params=PredParams,
    inputs=("st_map", "labels"),
    outputs=(ArraySpec("hr_bpm", "float32", ("segment", "strip"), "bpm", "stage-1 CNN HR per ST image"),),
)


def good_bad(pred_bpm: np.ndarray, label_bpm: np.ndarray, threshold_bpm: float) -> tuple[np.ndarray, np.ndarray]:
    """The MAE rule per ST image.

    Parameters
    ----------
    pred_bpm : ndarray of float, shape (S, R)
        Stage-1 HR per ST image, bpm.
    label_bpm : ndarray of float, shape (S,)
        Label HR per segment, bpm (broadcast over the R strips).
    threshold_bpm : float

    Returns
    -------
    bad : ndarray of int8, shape (S, R)
        1 when |pred - label| > threshold (a NaN label is bad), else 0; exactly at the threshold is good.
    abs_error_bpm : ndarray of float32, shape (S, R)

    Examples
    --------
    >>> good_bad(np.array([[95.0, 105.0, 105.01]]), np.array([100.0]), 5.0)[0].tolist()
    [[0, 0, 1]]
    """
    err = np.abs(np.asarray(pred_bpm, np.float64) - np.asarray(label_bpm, np.float64)[:, None])
    bad = ~(err <= threshold_bpm)
    return bad.astype(np.int8), err.astype(np.float32)
