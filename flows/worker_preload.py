"""Dask worker preload: a worker uses the cores it was given, and pays the pipeline's imports once,
when it starts, not in its first task.

- Zarr encodes and decodes chunks on a thread pool of its own (as many threads as the machine
  has cores, plus four) and GDAL decodes blocks on every core (``GDAL_NUM_THREADS=ALL_CPUS``, right
  for an in-process ingest). Dask already counts a worker's threads (``--nthreads``) and starts one
  worker per core, so in a worker both would oversubscribe the cores: a single-threaded worker
  measured 1.3-1.4 cores busy on ingest. Both get the worker's thread count, as Dask does for
  OpenMP and BLAS (``OMP_NUM_THREADS=1`` in every worker).
- Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's
  mmap threshold at 128 KiB: every larger buffer (chunk encoding buffers, per-band temporaries)
  is a fresh ``mmap`` whose pages the kernel faults in and zeroes, then unmaps on free. Two
  workers doing that at once on the bench sample area's ingest took 20-24 s per 4 parts against
  14-18 s with glibc's defaults (plain processes, 2-core machine). The worker sets the thresholds
  back to where glibc's own adaptive rule takes them (32 MiB mmap threshold, 128 MiB trim),
  which Dask's setting had switched off: freed memory up to that size is reused, not unmapped.
- Great Expectations takes seconds to import and to build its context; without the preload the
  first ingest task on every worker waits for it, serial time a scale-out cannot remove.
- A closed worker leaves its process at once (:func:`exit_when_closed`). Python's own shutdown of
  a process holding torch, Prefect, Great Expectations, GDAL and xarray took 1-2.5 s after the
  last exit hook (module teardown), longer on a busy machine; the nanny waits 4 s for a closing
  worker and then kills it, so runs ended with "Worker process still alive after 4.0 seconds,
  killing" on stderr.
- A task's own arrays (a stage reading its cube with xarray and Dask) are computed in the task,
  on the worker's threads (Dask's threaded scheduler), not sent back to the cluster from inside
  the task. That nested route secedes the task's thread so that the worker starts its next task
  meanwhile, on the same cores; and there it left the Prefect task engines of the two tasks
  sharing one API client, which the first to finish closed: the other task's artifacts then failed
  with "Cannot send a request, as the client has been closed" (every stage after the patch task on
  a one-worker cluster; `fusioncube run --workers 1`).

The pipeline's local clusters load it (``flows.pipeline.dask_task_runner``); for your own cluster:

    dask worker tcp://scheduler:8786 --nthreads 1 --preload flows.worker_preload
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from typing import Any

from distributed import WorkerPlugin
from distributed.core import Status

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 * 2**20  # the ceiling of glibc's adaptive mmap threshold on 64-bit
TRIM_THRESHOLD = 4 * MMAP_THRESHOLD


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds in this process; False where malloc is not glibc's."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def exit_when_closed(worker: Any) -> None:
    """At interpreter exit, once every other exit hook has run (Prefect drains its logs and events
    before them, on threading's exit hooks), end the process of a worker that closed normally with
    ``os._exit(0)`` instead of Python's slow teardown of its modules. Logging handlers and the
    standard streams are flushed first. Nothing of a task is pending then: a task's files are
    written and closed in the task, and its result went back to the scheduler before the worker
    was closed. A worker ending any other way (failing to start, crashing) exits as Python does."""

    def _exit() -> None:
        if getattr(worker, "status", None) is not Status.closed:
            return
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)

    atexit.register(_exit)  # registered at start-up: runs after the hooks of what the tasks imported


def compute_in_task(threads: int) -> None:
    """Make ``.compute()`` / ``dask.compute`` inside a task run on this process's threads (see the
    module docstring); ``scheduler=`` given to one call still wins."""
    import dask

    dask.config.set({"scheduler": "threads", "num_workers": threads})


class ComputeInTask(WorkerPlugin):
    """A Dask worker plugin doing :func:`compute_in_task` on every worker of a cluster, now and on
    workers that join later, also where they were started without this preload
    (``flows.pipeline.compute_in_tasks`` registers it at the start of every pipeline run)."""

    name = "fusioncube-compute-in-task"

    def setup(self, worker: Any) -> None:
        compute_in_task(max(1, int(worker.state.nthreads)))


def dask_setup(worker: Any) -> None:
    """Called by Dask when the worker starts."""
    import zarr

    tuned = tune_malloc()
    exit_when_closed(worker)

    threads = max(1, int(worker.state.nthreads))
    zarr.config.set({"threading.max_workers": threads})  # before the pool exists: it is made on first use
    compute_in_task(threads)

    import tasks.ingest  # noqa: F401  (rasterio, xarray and the Prefect task definitions)
    from tasks.validate import default_validator
    from tasks.warp import set_threads

    set_threads(threads)  # GDAL's block decoding and the warper

    default_validator()  # the process-wide Great Expectations context
    if os.environ.get("FUSIONCUBE_QUIET_INPUT_ERRORS") == "1":  # started by a command without -v
        from flows.cli import quiet_input_errors

        quiet_input_errors()  # a task failing on bad input: one line from the command, no traceback here
    log.info("worker %s: zarr codec threads %d, malloc thresholds %s, imports done", worker.address, threads,
             "set" if tuned else "left (not glibc)")
