"""The ingest flow: new scenes of a catalog cube -> validated, warped, appended to its Zarr cube."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from prefect import flow

from tasks.catalog import load_catalog
from tasks.ingest import ingest_task, publish_ingest_task, quicklook_task

__all__ = ["ingest_flow", "ingest_steps"]


@flow(name="ingest-cube", log_prints=False)
def ingest_flow(
    catalog_path: str = "data_catalog.yaml",
    cube: str = "planet",
    start: date | None = None,
    end: date | None = None,
    env: dict[str, str] | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Discover new scenes -> validate (Great Expectations) -> warp -> append; then publish the
    scene table and a quick-look of the newest composite as Prefect artifacts."""
    load_catalog(catalog_path, env=env).cube(cube)  # a malformed catalog stops here, before any task
    return ingest_steps(catalog_path, cube, start, end, env, progress_bar=progress_bar)


def ingest_steps(
    catalog_path: str,
    cube: str,
    start: date | None = None,
    end: date | None = None,
    env: dict[str, str] | None = None,
    *,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """The ingest tasks in order, for use inside any flow (one flow run, not a subflow each)."""
    report = ingest_task(catalog_path, cube, start, end, env, progress_bar=progress_bar)
    quicklook = None
    if report["time_steps"] and (report["dates_added"] or not _quicklook_path(report).exists()):
        quicklook = quicklook_task(report["path"], str(_quicklook_path(report)))
    elif report["time_steps"]:
        quicklook = str(_quicklook_path(report))
    publish_ingest_task(report, quicklook)
    report["quicklook"] = quicklook
    return report


def _quicklook_path(report: dict[str, Any]) -> Path:
    cube = Path(report["path"])
    return cube.with_name(cube.stem + "_newest.png")
