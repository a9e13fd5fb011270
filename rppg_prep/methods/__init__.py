"""Classic unsupervised rPPG methods: RGB traces -> blood volume pulse (BVP).

Every method is a pure, deterministic function ``fn(rgb, fs_hz) -> bvp``:

* ``rgb``: float (T, 3), per-frame spatial mean of the skin pixels, channels R, G, B (0-255),
  finite and > 0, at least ``max(16, 1.6 s * fs_hz)`` frames; ``fs_hz``: frame rate, > 7 Hz.
* ``bvp``: float64 (T,), zero-mean, band-limited to 0.7-3.5 Hz (42-210 bpm), with one sign
  convention for all methods: it **rises with blood volume**, i.e. correlates positively with a
  contact PPG. (The raw camera green *falls* when blood volume rises, so GREEN is negated.)

Bad input raises ValueError. Methods: ``green`` [Verkruysse 2008], ``chrom`` [de Haan & Jeanne
2013], ``pos`` [Wang et al. 2017], ``ica`` [Poh et al. 2011], ``lgi`` [Pilz et al. 2018],
``pbv`` [de Haan & van Leest 2014]; see each function's docstring.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rppg_prep.methods.chrom import chrom
from rppg_prep.methods.green import green
from rppg_prep.methods.ica import ica
from rppg_prep.methods.lgi import lgi
from rppg_prep.methods.pbv import pbv
from rppg_prep.methods.pos import pos

__all__ = ["METHODS", "get_method", "green", "chrom", "pos", "ica", "lgi", "pbv"]

#: name -> method
METHODS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "green": green, "chrom": chrom, "pos": pos, "ica": ica, "lgi": lgi, "pbv": pbv,
}


def get_method(name: str) -> Callable[[np.ndarray, float], np.ndarray]:
    """The method called ``name`` (one of :data:`METHODS`).

    Raises
    ------
    KeyError
        Unknown name; the message lists the known ones.
    """
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise KeyError(f"unknown rPPG method {name!r}; known: {', '.join(sorted(METHODS))}") from None
