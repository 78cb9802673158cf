"""Deployments of the pipeline: a scheduled new-scene run per catalog cube, and a backfill per cube.

    fusioncube serve [--catalog data_catalog.yaml]     # starts a local Prefect server if none is set
    python -m deployments.pipeline [--catalog ...]      # serves against PREFECT_API_URL as it is

- ``fusioncube-pipeline/pipeline-<cube>``: the whole chain (ingest new scenes -> validate -> patch
  -> the stages the catalog enables -> products) on a cron: the catalog's ``cubes.<cube>.schedule``,
  else its ``orchestration.schedule``, else hourly (``0 * * * *``). A run with nothing new finishes
  fast.
- ``fusioncube-backfill/backfill-<cube>``: no schedule; run it with a date range,
  ``prefect deployment run 'fusioncube-backfill/backfill-planet' -p start=2019-06-01 -p end=2019-06-30``.

Each deployment allows one run at a time (further runs wait in the queue), so two runs never write
the same cube at once. ``deployments/prefect.yaml`` declares the same deployments for
``prefect deploy`` against a work pool (tests/flows/test_deployments.py keeps the two in step).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

from prefect.deployments.runner import EntrypointType, RunnerDeployment

from tasks.catalog import load_catalog

__all__ = [
    "DEFAULT_CATALOG",
    "DEFAULT_CRON",
    "all_deployments",
    "backfill_deployments",
    "pipeline_deployments",
]

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "data_catalog.yaml"
#: Schedule of the new-scene run of a cube whose catalog entry sets no ``schedule``: hourly.
DEFAULT_CRON = "0 * * * *"
#: Concurrent runs allowed per deployment (more wait in the queue: one writer per cube).
CONCURRENCY_LIMIT = 1


def pipeline_deployments(
    catalog_path: str | Path = DEFAULT_CATALOG,
    *,
    cron: str | None = None,
    env: dict[str, str] | None = None,
) -> list[RunnerDeployment]:
    """One scheduled ``fusioncube-pipeline`` deployment per catalog cube.

    Parameters
    ----------
    catalog_path
        The catalog; stored absolute in each deployment's parameters so a run finds it from
        any working directory.
    cron
        Overrides every cube's schedule (default: the catalog's ``cubes.<cube>.schedule``, else
        its ``orchestration.schedule``, else :data:`DEFAULT_CRON`, hourly).
    env
        Variables the catalog's ``${VAR}`` read when the deployments are built (the runs read
        their own process environment).
    """
    from flows.pipeline import pipeline_flow

    path = Path(catalog_path).resolve()
    catalog = load_catalog(path, env=env)
    deployments: list[RunnerDeployment] = []
    for cube, spec in catalog.cubes.items():
        schedule = cron or spec.schedule or catalog.orchestration.schedule or DEFAULT_CRON
        deployments.append(
            # cast: Prefect's async_dispatch types to_deployment as RunnerDeployment | Coroutine;
            # called from sync code it is the RunnerDeployment
            cast(RunnerDeployment, pipeline_flow.to_deployment(
                name=f"pipeline-{cube}",
                cron=schedule,
                parameters={"catalog_path": str(path), "cube": cube},
                description=(
                    f"New scenes of cube {cube} ({', '.join(spec.sources)}) -> ingest -> validate "
                    f"-> patch -> {', '.join(spec.stages) or 'no further stages'}; schedule {schedule}"
                ),
                tags=["fusioncube", cube, "scheduled"],
                concurrency_limit=CONCURRENCY_LIMIT,
                entrypoint_type=EntrypointType.MODULE_PATH,
            ))
        )
    return deployments


def backfill_deployments(
    catalog_path: str | Path = DEFAULT_CATALOG, *, env: dict[str, str] | None = None
) -> list[RunnerDeployment]:
    """One unscheduled ``fusioncube-backfill`` deployment per catalog cube; runs pass
    ``start``/``end`` (ISO dates) and optionally ``concurrency``."""
    from flows.backfill import backfill_flow

    path = Path(catalog_path).resolve()
    catalog = load_catalog(path, env=env)
    return [
        cast(RunnerDeployment, backfill_flow.to_deployment(  # cast: as in pipeline_deployments
            name=f"backfill-{cube}",
            parameters={"catalog_path": str(path), "cube": cube},
            description=(
                f"Backfill cube {cube} over a date range, dates in parallel, resumable: "
                f"prefect deployment run 'fusioncube-backfill/backfill-{cube}' "
                "-p start=YYYY-MM-DD -p end=YYYY-MM-DD"
            ),
            tags=["fusioncube", cube, "backfill"],
            concurrency_limit=CONCURRENCY_LIMIT,
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
        for cube in catalog.cubes
    ]


def all_deployments(
    catalog_path: str | Path = DEFAULT_CATALOG,
    *,
    cron: str | None = None,
    env: dict[str, str] | None = None,
) -> list[RunnerDeployment]:
    """The scheduled pipeline deployments, then the backfill deployments."""
    return [*pipeline_deployments(catalog_path, cron=cron, env=env),
            *backfill_deployments(catalog_path, env=env)]


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    p.add_argument("--cron", default=None, help="schedule of every pipeline deployment "
                   "(default: the catalog's cubes.<cube>.schedule, else orchestration.schedule, else hourly)")
    p.add_argument("--limit", type=int, default=None, help="most flow runs at once")
    args = p.parse_args(argv)
    serve(*all_deployments(args.catalog, cron=args.cron), limit=args.limit)


if __name__ == "__main__":
    main()
