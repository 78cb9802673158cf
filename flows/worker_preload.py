"""Dask worker preload: pay the pipeline's imports once, when a worker starts, not in its first task.

Great Expectations alone takes seconds to import and to build its context; without this, the
first ingest task on every worker waits for it, which is serial time a scale-out cannot remove.
The pipeline's local clusters load it (``flows.pipeline.dask_task_runner``); for your own cluster:

    dask worker tcp://scheduler:8786 --nthreads 1 --preload flows.worker_preload
"""

from __future__ import annotations

from typing import Any


def dask_setup(worker: Any) -> None:
    """Called by Dask when the worker starts."""
    import tasks.ingest  # noqa: F401  (rasterio, zarr, xarray and the Prefect task definitions)
    from tasks.validate import default_validator

    default_validator()  # the process-wide Great Expectations context
