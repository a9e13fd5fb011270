"""The core stages of a subject, one module each, and the registry the DAG is derived from.

Adding a stage means one new module here (its ``STAGE`` declaration) and one entry in
:data:`CORE`; the order of execution and the task dependencies follow from each stage's ``inputs``.
"""

from __future__ import annotations

from rppg_prep.stage import Stage

__all__ = ["CORE", "topological_order"]


def topological_order(stages: dict[str, Stage]) -> tuple[str, ...]:
    """Stage names with every stage after its ``inputs``; ties keep the registry's order.

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


def _core() -> dict[str, Stage]:
    from rppg_prep.stages import clips, decode, face, labels, landmarks, st_map

    return {m.STAGE.name: m.STAGE for m in (decode, landmarks, face, clips, st_map, labels)}


#: stage name -> declaration, for every core stage of a subject's build
CORE: dict[str, Stage] = _core()
