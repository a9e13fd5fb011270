"""The core stages of a subject, one module each, and the registry the DAG is derived from.

Adding a stage means one new module here (its ``STAGE`` declaration) and one entry in
:data:`CORE`; the order of execution and the task dependencies follow from each stage's ``inputs``,
the raw files it hashes from its ``raw_inputs``. This module is the one owner of the stage names and
their order: other modules import :data:`ORDER` and :data:`STAGES`, or look a stage up by its role
(:data:`STREAMING`, :func:`video_stage`, :func:`clock_stage`) instead of writing its name.
"""

from __future__ import annotations

import importlib

from rppg_prep.stage import Stage

__all__ = ["MODULES", "CORE", "STAGES", "ORDER", "STREAMING", "topological_order", "video_stage", "clock_stage"]


def topological_order(stages: dict[str, Stage]) -> tuple[str, ...]:
    """Stage names with every stage after its ``inputs``; ties keep the registry's order.

    Parameters
    ----------
    stages : dict of str to Stage
        Name -> declaration.

    Returns
    -------
    tuple of str

    Raises
    ------
    ValueError
        A stage reads a stage that is not declared, or the inputs form a cycle.
    """
    order: list[str] = []
    left = dict(stages)
    while left:
        ready = [n for n, st in left.items() if all(u in order for u in st.inputs)]
        if not ready:
            missing = sorted({u for st in left.values() for u in st.inputs if u not in stages})
            raise ValueError(f"stage inputs {missing} are not declared" if missing
                             else f"stage inputs form a cycle among {sorted(left)}")
        order.append(ready[0])
        del left[ready[0]]
    return tuple(order)


#: the registry: one line per stage module of this package (ties in the order follow it)
MODULES = (
    "decode",
    "landmarks",
    "face",
    "clips",
    "st_map",
    "labels",
)


def _core() -> dict[str, Stage]:
    stages = [importlib.import_module(f"rppg_prep.stages.{m}").STAGE for m in MODULES]
    return {st.name: st for st in stages}


#: stage name -> declaration, for every core stage of a subject's build
CORE: dict[str, Stage] = _core()
#: the registry under the name the rest of the package uses (the same dict)
STAGES = CORE
#: every core stage, each after its inputs: the one order of execution, display and records
ORDER: tuple[str, ...] = topological_order(CORE)
#: the stages fed by the one streaming pass over the frames, in order (decode, landmarks, face)
STREAMING: tuple[str, ...] = tuple(s for s in ORDER if CORE[s].streams)


def video_stage() -> str:
    """The last streaming stage: the one whose node holds the face crops every later stage reads.

    Returns
    -------
    str
        ``"face"`` in the core registry.
    """
    return STREAMING[-1]


def clock_stage() -> str:
    """The stage that reads the video file itself: the first of the pass, it writes the frame clock.

    Returns
    -------
    str
        ``"decode"`` in the core registry.
    """
    return next(s for s in STREAMING if "video" in CORE[s].raw_inputs)
