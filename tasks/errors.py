"""Project exceptions. Each subclasses a built-in so callers can catch either."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "CatalogError",
    "CubeSchemaError",
    "SceneError",
    "CheckpointError",
    "NotEnoughData",
    "StagesFailed",
    "did_you_mean",
    "retry_on_io_error",
]


class CatalogError(ValueError):
    """The data catalog is malformed: names the file, the key and the reason."""


class CubeSchemaError(ValueError):
    """A store does not follow the cube schema (``data(time, band, y, x)``, ``valid(time, y, x)``)."""


class SceneError(ValueError):
    """A scene cannot be read or fails validation; the scene is quarantined, the run goes on."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class NotEnoughData(ValueError):
    """A stage's input follows the schema but holds too little for the stage yet (e.g. too few
    dates for a time-series method); a pipeline run reports the stage as waiting, not failed."""


class CheckpointError(RuntimeError):
    """A stage artifact or manifest is inconsistent with its recorded contents."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class StagesFailed(RuntimeError):
    """Some stages of a pipeline run failed; ``products`` holds every stage's result or error
    and the run's summary (the flow run is marked failed; the command line prints the table)."""

    def __init__(self, message: str, products: dict[str, Any]) -> None:
        super().__init__(message)
        self.products = products


def retry_on_io_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only I/O failures (a flaky disk or network store); bad input fails at once."""
    try:
        state.result()
    except OSError:
        return True
    except Exception:
        return False
    return False
