"""The warnings a stage logs while it runs, kept with its result for the operator's summary.

A stage's caveats (a patch size cut to a small cube, a split left without patches) are logged by
its module's logger, on the console of whatever process ran it: a Dask worker's, in a pipeline run.
``reports_warnings`` keeps them in the dict the task returns, so the run's summary (and the Prefect
artifact it becomes) lists them with the quarantined scenes and failed stages.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec

__all__ = ["captured_warnings", "reports_warnings"]

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


def reports_warnings(fn: Callable[P, dict[str, Any]]) -> Callable[P, dict[str, Any]]:
    """Decorate a stage function returning a dict: the warnings it logged go in its ``warnings``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        with captured_warnings() as found:
            result = fn(*args, **kwargs)
        return {**result, "warnings": found} if found else result

    return wrapper
