"""The ingest flow: new scenes of a catalog cube -> validated, warped, appended to its Zarr cube."""

from __future__ import annotations

import time
from collections import deque
from datetime import date
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture

from tasks.catalog import load_catalog
from tasks.ingest import (
    attach_part_task,
    finish_ingest_task,
    plan_ingest_task,
    publish_ingest_task,
    quicklook_task,
    write_part_task,
    write_template_task,
)
from tasks.locks import cube_lock
from tasks.quicklook import artifact_key

__all__ = ["ingest_flow", "ingest_steps"]


@flow(name="ingest-cube", flow_run_name="ingest-{cube}", log_prints=False)
def ingest_flow(
    catalog_path: str = "data_catalog.yaml",
    cube: str = "planet",
    start: date | None = None,
    end: date | None = None,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Discover new scenes -> validate (Great Expectations) -> warp -> append; then publish the
    scene table and a quick-look of the newest composite as Prefect artifacts."""
    load_catalog(catalog_path, env=env).cube(cube)  # a malformed catalog stops here, before any task
    return ingest_steps(catalog_path, cube, start, end, env, concurrency=concurrency, progress_bar=progress_bar)


def ingest_steps(
    catalog_path: str,
    cube: str,
    start: date | None = None,
    end: date | None = None,
    env: dict[str, str] | None = None,
    *,
    concurrency: int = 2,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """The ingest tasks, for use inside any flow: plan -> parts (at most ``concurrency`` in flight,
    on whatever workers the flow's task runner has) -> attach in date order -> report, quick-look.

    A killed run leaves finished parts on disk; the next run's plan has the same parts and reuses them.
    """
    # one writer per cube: a second run waits here (another process, a scheduled run overlapping a
    # backfill); the kernel releases the lock if this process dies
    with cube_lock(load_catalog(catalog_path, env=env).cube_path(cube)):
        report = _ingest_parts(catalog_path, cube, start, end, env, concurrency=concurrency, progress_bar=progress_bar)
    quicklook = None
    if report["time_steps"] and (report["dates_added"] or report["dates_updated"] or report["dates_replaced"]
                                 or not _quicklook_path(report).exists()):
        quicklook = quicklook_task(report["path"], str(_quicklook_path(report)))
    elif report["time_steps"]:
        quicklook = str(_quicklook_path(report))
    publish_ingest_task(report, quicklook)
    report["quicklook"] = quicklook
    return report


def _ingest_parts(
    catalog_path: str,
    cube: str,
    start: date | None,
    end: date | None,
    env: dict[str, str] | None,
    *,
    concurrency: int,
    progress_bar: bool,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    plan = plan_ingest_task(catalog_path, cube, start, end, env, concurrency=concurrency)
    parts, grid = plan["parts"], plan["grid"]
    # cast: Prefect's async_dispatch types it UUID | Coroutine; called in this sync flow it is the UUID
    progress = cast(UUID, create_progress_artifact(0.0, key=artifact_key(f"ingest-progress-{cube}"),
                                                   description=f"ingest of cube {cube}: parts attached"))
    bar = None
    if progress_bar and parts:
        from tqdm import tqdm

        bar = tqdm(total=len(parts), unit="part", desc=f"ingest {cube}")
    # a new cube's template (static layers read and warped) is made on a worker beside the parts
    template = write_template_task.submit(catalog_path, cube, grid, env) if plan["creates"] else None
    in_flight: deque[PrefectFuture[dict[str, Any]]] = deque()
    for part in parts[:concurrency]:
        in_flight.append(write_part_task.submit(catalog_path, cube, part, grid, env))
    reports = []
    for i, part in enumerate(parts):
        done = in_flight.popleft().result()
        if i + concurrency < len(parts):
            in_flight.append(write_part_task.submit(catalog_path, cube, parts[i + concurrency], grid, env))
        reports.append(attach_part_task(catalog_path, cube, part, done, grid, env,
                                        template.result() if template is not None else None))
        update_progress_artifact(progress, 100.0 * (i + 1) / len(parts))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    update_progress_artifact(progress, 100.0)
    return finish_ingest_task(catalog_path, cube, plan, reports, time.perf_counter() - t0, env)


def _quicklook_path(report: dict[str, Any]) -> Path:
    cube = Path(report["path"])
    return cube.with_name(cube.stem + "_newest.png")
