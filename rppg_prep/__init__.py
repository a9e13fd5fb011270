"""rppg-prep: fast, incremental, reproducible preprocessing of rPPG datasets into zarr stores."""

__version__ = "0.1.0"

__all__ = ["__version__", "open_build"]


def open_build(cache, dataset, pipeline):
    """Open a finished build: subject -> stage -> read-only zarr group (see :func:`rppg_prep.manifest.open_build`)."""
    from rppg_prep.manifest import open_build as _open_build

    return _open_build(cache, dataset, pipeline)
