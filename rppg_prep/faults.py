"""The one fault-injection hook, for the tests and ``benchmarks/faults.py``.

``RPPG_PREP_FAULT=<kind>:<where>:<subject>`` makes the named point of a build fail, in any process
the build runs in (a dask.distributed worker too, which is why it is an environment variable):

* ``kill:<task>:<subject>``: the process running that build task dies (SIGKILL) as the task starts;
* ``enospc:<stage>:<subject>``: creating an array of that node fails as a full disk would;
* ``crash-replace:<stage>:<subject>``: the process dies in the middle of replacing that node
  (:meth:`rppg_prep.store.NodeWriter.commit`).

Unset (the normal case) every point is a string comparison and nothing else.
"""

from __future__ import annotations

import errno
import os
import signal

__all__ = ["fault_point", "KINDS"]

#: the fault kinds and what each does at its point
KINDS = {"kill": "SIGKILL", "crash-replace": "SIGKILL", "enospc": "OSError(ENOSPC)"}


def fault_point(kind: str, where: str, subject: str) -> None:
    """Fail here when ``RPPG_PREP_FAULT`` names this point.

    Parameters
    ----------
    kind : str
        One of :data:`KINDS`.
    where : str
        The task or stage of the point.
    subject : str
        The subject id.

    Raises
    ------
    OSError
        ``enospc`` (errno ENOSPC). The ``kill`` kinds do not return.
    """
    if os.environ.get("RPPG_PREP_FAULT", "") != f"{kind}:{where}:{subject}":
        return
    if KINDS[kind] == "SIGKILL":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
