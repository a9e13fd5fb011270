"""Exception types of rppg-prep.

Every error a user can cause names the subject and the file involved and says what to do next.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "RppgPrepError",
    "DatasetLayoutError",
    "GroundTruthError",
    "VideoDecodeError",
    "FaceNotFoundError",
    "StoreError",
    "ManifestError",
    "CacheBusyError",
    "ConfigError",
]


class RppgPrepError(Exception):
    """Base class of every error raised on purpose by rppg-prep.

    Parameters
    ----------
    message : str
        What went wrong and what to do next.
    subject : str, optional
        Subject id the error belongs to.
    path : str or Path, optional
        The file that caused it.
    """

    def __init__(self, message: str, *, subject: str | None = None, path: str | Path | None = None):
        self.subject = subject
        self.path = str(path) if path is not None else None
        parts = []
        if subject is not None:
            parts.append(f"subject {subject}")
        if self.path is not None:
            parts.append(f"file {self.path}")
        prefix = (", ".join(parts) + ": ") if parts else ""
        super().__init__(prefix + message)
        self.message = message


class DatasetLayoutError(RppgPrepError, FileNotFoundError):
    """The dataset root does not look like the expected layout (no subjects, missing files)."""


class GroundTruthError(RppgPrepError, ValueError):
    """A ground-truth file is missing, short, non-numeric or inconsistent with the video."""


class VideoDecodeError(RppgPrepError, ValueError):
    """A video cannot be opened, has no frames, or is truncated."""


class FaceNotFoundError(RppgPrepError, ValueError):
    """No face could be tracked for long enough to produce usable crops."""


class StoreError(RppgPrepError, OSError):
    """The zarr store is missing a node, or a node is incomplete."""


class ManifestError(StoreError):
    """A build manifest cannot be read or does not validate (not JSON, wrong shape, a node path that is
    not the node's own place in the cache); the message names the manifest, the subject and the stage."""


class CacheBusyError(StoreError):
    """The cache is in use: ``gc`` found a build running (it removes nothing then)."""


class ConfigError(RppgPrepError, ValueError):
    """A pipeline config or a stage parameter is invalid."""
