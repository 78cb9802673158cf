"""Backfill: an archive's scenes over a date range, dates in parallel, resumable after a kill."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import dask_task_runner, pipeline_steps
from tasks.catalog import load_catalog

__all__ = ["backfill_flow"]


@flow(
    name="fusioncube-backfill",
    flow_run_name="backfill-{cube}",
    task_runner=dask_task_runner(),  # type: ignore[arg-type]  # prefect_dask typing: see dask_task_runner
    log_prints=False,
)
def backfill_flow(
    catalog_path: str = "data_catalog.yaml",
    cube: str = "planet",
    start: date | None = None,
    end: date | None = None,
    concurrency: int = 4,
    stages: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Backfill ``cube`` with an archive's scenes dated in [start, end]: parts of dates processed
    in parallel, at most ``concurrency`` at once, then the stages once over the result.

    Resumable: parts finished before a kill are kept on disk and reused, so starting the same
    backfill again runs only the unfinished dates.
    """
    load_catalog(catalog_path, env=env).cube(cube)
    products = pipeline_steps(catalog_path, cube, start, end, stages, env, concurrency=concurrency)
    get_run_logger().info("%s", products["summary"]["headline"])
    return products
