"""Dask worker preload: a worker uses the cores it was given, and pays the pipeline's imports once,
when it starts, not in its first task.

- Zarr encodes and decodes chunks on a thread pool of its own (as many threads as the machine
  has cores, plus four) and GDAL decodes blocks on every core (``GDAL_NUM_THREADS=ALL_CPUS``, right
  for an in-process ingest). Dask already counts a worker's threads (``--nthreads``) and starts one
  worker per core, so in a worker both would oversubscribe the cores: a single-threaded worker
  measured 1.3-1.4 cores busy on ingest. Both get the worker's thread count, as Dask does for
  OpenMP and BLAS (``OMP_NUM_THREADS=1`` in every worker).
- Great Expectations takes seconds to import and to build its context; without the preload the
  first ingest task on every worker waits for it, serial time a scale-out cannot remove.

The pipeline's local clusters load it (``flows.pipeline.dask_task_runner``); for your own cluster:

    dask worker tcp://scheduler:8786 --nthreads 1 --preload flows.worker_preload
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def dask_setup(worker: Any) -> None:
    """Called by Dask when the worker starts."""
    import zarr

    threads = max(1, int(worker.state.nthreads))
    zarr.config.set({"threading.max_workers": threads})  # before the pool exists: it is made on first use

    import tasks.ingest  # noqa: F401  (rasterio, xarray and the Prefect task definitions)
    from tasks.validate import default_validator
    from tasks.warp import set_threads

    set_threads(threads)  # GDAL's block decoding and the warper

    default_validator()  # the process-wide Great Expectations context
    log.info("worker %s: zarr codec threads %d, imports done", worker.address, threads)
