"""The warnings a stage logs while it runs, kept with its result for the operator's summary.

A stage's caveats (a patch size cut to a small cube, a split left without patches) are logged by
its module's logger, on the console of whatever process ran it: a Dask worker's, in a pipeline run.
``reports_warnings`` keeps them in the dict the task returns, so the run's summary (and the Prefect
artifact it becomes) lists them with the quarantined scenes and failed stages.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import glob
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ParamSpec

__all__ = ["captured_warnings", "no_space_message", "reports_warnings"]

_LOGGERS = ("tasks", "flows", "fusion_models")
MAX_WARNINGS = 20  # per stage: a warning per date of a long series is no list to read

P = ParamSpec("P")


class _Keep(logging.Handler):
    def __init__(self, thread: int, found: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.thread, self.found = thread, found

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:  # another task running in the same worker process
            return
        message = record.getMessage()
        if message not in self.found and len(self.found) < MAX_WARNINGS:
            self.found.append(message)


@contextlib.contextmanager
def captured_warnings() -> Iterator[list[str]]:
    """The distinct warning (or worse) messages this thread logs through the project's loggers
    while inside, in order, at most ``MAX_WARNINGS``; they are still logged as before."""
    found: list[str] = []
    handler = _Keep(threading.get_ident(), found)
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield found
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def no_space_message(out: str | Path) -> str:
    """What to tell an operator when writing ``out`` ran out of disk: where, and how much is left.
    Zarr's and numpy's own ``[Errno 28] No space left on device`` name no path."""
    place = Path(out).absolute()
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free / 1e6
    kept = sorted(Path(out).parent.glob(f"{glob.escape(Path(out).name)}.resume-*")) if Path(out).parent.is_dir() else []
    work = "".join(f"; the stopped run's work is kept in {w} (the next run goes on from it; delete it to free "
                   f"{sum(f.stat().st_size for f in w.rglob('*') if f.is_file()) / 1e6:.1f} MB and start over)"
                   for w in kept if w.is_dir())
    return (f"no space left on the device holding {out} ({free:.1f} MB free there); free space and run again: "
            f"finished products are kept{work}")


def reports_warnings(fn: Callable[P, dict[str, Any]]) -> Callable[P, dict[str, Any]]:
    """Decorate a stage task ``fn(cube, out, ...)`` returning a dict: the warnings it logged go in
    its ``warnings``, and a full disk is reported naming ``out`` (:func:`no_space_message`)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        try:
            with captured_warnings() as found:
                result = fn(*args, **kwargs)
        except OSError as exc:
            out = args[1] if len(args) > 1 else kwargs.get("out", kwargs.get("out_dir"))
            if exc.errno != errno.ENOSPC or not isinstance(out, str | Path):
                raise
            raise OSError(errno.ENOSPC, no_space_message(out)) from exc
        return {**result, "warnings": found} if found else result

    return wrapper
