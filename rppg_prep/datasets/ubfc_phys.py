"""UBFC-Phys loader.

Source: R. Meziati Sabour, Y. Benezeth, P. De Oliveira, J. Chappé, F. Yang, "UBFC-Phys: A multimodal
database for psychophysiological studies of social stress", IEEE Trans. Affective Computing 14(1),
2023; format from the dataset's site and ``design/models.md`` §6.5 / ``prior-art.md`` §1.6.

Layout: ``<root>/s<N>/vid_s<N>_T<k>.avi`` with ``bvp_s<N>_T<k>.csv`` beside it (N = 1..56, tasks
T1 rest, T2 speech, T3 arithmetic). The BVP file is one value per line, no header, recorded by an
Empatica E4 at 64 Hz and started with the video (35 fps); sample i is at ``i / 64`` s. EDA files
(``eda_*.csv``) are ignored. ``root`` may also be one ``s<N>`` folder.

Unlike rPPG-Toolbox, which stretches the BVP to the frame count by index, the samples keep their
own 64-Hz clock and are interpolated at the frame times.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rppg_prep.datasets import Subject, Truth, scan_subjects
from rppg_prep.errors import GroundTruthError

NAME = "ubfc-phys"
VERSION = "1"
BVP_FS_HZ = 64.0  #: Empatica E4 BVP rate
LAYOUT = (
    "UBFC-Phys. ROOT/s<N>/vid_s<N>_T<k>.avi + bvp_s<N>_T<k>.csv (one BVP value per line, no header, "
    f"Empatica E4 at {BVP_FS_HZ:g} Hz, started with the video; video 35 fps). ROOT may be one s<N> folder."
)
_VIDEO = re.compile(r"^vid_(s\d+)_(T\d+)\.(avi|mp4|mkv)$", re.IGNORECASE)


def _subjects_in(folder: Path) -> list[Subject]:
    out = []
    for f in folder.iterdir():
        m = _VIDEO.match(f.name)
        if m and f.is_file():
            s, task = m.group(1), m.group(2)
            out.append(Subject(NAME, f"{s}_{task}", f, (folder / f"bvp_{s}_{task}.csv",), task))
    return out


def find_subjects(root: str | Path) -> list[Subject]:
    """List the recordings (one per subject and task) under ``root``, in natural order.

    Parameters
    ----------
    root : str or Path
        The UBFC-Phys folder holding ``s<N>`` folders, or one ``s<N>`` folder.

    Returns
    -------
    list of Subject
        Ids ``s<N>_T<k>``; ``fmt`` is the task (``"T1"``...). A video without its BVP file is still
        listed; building it raises an error naming the missing file.

    Raises
    ------
    DatasetLayoutError
        If ``root`` is not a folder or holds no ``vid_s<N>_T<k>`` video.
    """
    return scan_subjects(root, what="UBFC-Phys videos", layout=LAYOUT, recordings=_subjects_in, root_alone=False)


def read_truth(subject: Subject) -> Truth:
    """Read the 64-Hz BVP of one recording.

    Returns
    -------
    Truth
        ``ppg`` (a.u., float64, shape (n,)), ``t_s = i / 64`` (s, 0 = first frame), no device HR.

    Raises
    ------
    GroundTruthError
        Missing or unreadable file, a non-numeric line, or fewer than 2 samples; the message names
        the subject and file.
    """
    path = subject.truth[0]
    if not path.exists():
        raise GroundTruthError("BVP file is missing; every vid_s<N>_T<k>.avi needs bvp_s<N>_T<k>.csv beside it",
                               subject=subject.id, path=path)
    try:
        ppg = np.loadtxt(path, delimiter=",", usecols=0, dtype=np.float64, ndmin=1)
    except (ValueError, OSError) as exc:
        raise GroundTruthError(f"not a one-column numeric CSV ({exc})", subject=subject.id, path=path) from None
    if ppg.size < 2:  # non-finite samples: rppg_prep.datasets.check_truth, the rule of every loader
        raise GroundTruthError(f"too few ({ppg.size}) BVP samples", subject=subject.id, path=path)
    return Truth(ppg=ppg, t_s=np.arange(ppg.size) / BVP_FS_HZ)
