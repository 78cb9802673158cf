"""Shared fixtures: the real product files, Prefect's test harness, offline settings."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

REPO = Path(__file__).resolve().parents[1]
REAL = Path(os.environ.get("FUSIONCUBE_REAL_FIXTURES", REPO.parent / "shared" / "fixtures" / "real"))


@pytest.fixture(scope="session")
def real_fixtures() -> Path:
    if not REAL.exists():
        reason = f"real fixtures not found at {REAL} (set FUSIONCUBE_REAL_FIXTURES)"
        if os.environ.get("FUSIONCUBE_REQUIRE_FIXTURES") == "1":
            pytest.fail(f"{reason}; FUSIONCUBE_REQUIRE_FIXTURES=1 (CI) requires the tests on real files to run")
        pytest.skip(reason)
    return REAL


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (flow tests only)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def logged():
    """``with logged("tasks.ingest") as messages:``: the messages of warnings (or the given level)
    that logger emits in the block, caught on the logger itself (Prefect's logging setup stops the
    project's loggers from propagating to pytest's handler once a flow has run in the process)."""
    import contextlib

    @contextlib.contextmanager
    def catch(name: str, level: int = logging.WARNING):
        messages: list[str] = []
        handler = logging.Handler(level)
        handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        try:
            yield messages
        finally:
            logger.removeHandler(handler)

    return catch


def pytest_unconfigure(config) -> None:
    """Prefect stops a temporary server it started for a flow run (outside the harness) at exit:
    its "Stopping temporary server" line would go to a console stream pytest has closed by then,
    printing "--- Logging error ---" and a traceback after the summary."""
    logging.getLogger("prefect").setLevel(logging.WARNING)
