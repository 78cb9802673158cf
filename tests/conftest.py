"""Shared fixtures: the real product files, Prefect's test harness, offline settings."""

from __future__ import annotations

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
        pytest.skip(f"real fixtures not found at {REAL} (set FUSIONCUBE_REAL_FIXTURES)")
    return REAL


@pytest.fixture(scope="session")
def prefect_harness():
    """One Prefect test server for the whole session (flow tests only)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
