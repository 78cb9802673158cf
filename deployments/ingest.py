"""Deployments of the ingest flow: one scheduled new-scene run per catalog cube.

    python -m deployments.ingest [--catalog data_catalog.yaml] [--cron "0 * * * *"]

serves them from this process against the Prefect API configured in the environment
(``PREFECT_API_URL``; start a local one with ``prefect server start --host 127.0.0.1``), so they
show in the UI with their schedules and can be run from it or with
``prefect deployment run 'ingest-cube/ingest-planet'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect.deployments.runner import RunnerDeployment

from flows.ingest import ingest_flow
from tasks.catalog import load_catalog

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "data_catalog.yaml"


def ingest_deployments(catalog_path: str | Path = DEFAULT_CATALOG, *, cron: str = "0 * * * *") -> list[RunnerDeployment]:
    """One deployment per cube of the catalog, on a cron schedule (default hourly)."""
    catalog = load_catalog(catalog_path)
    return [
        ingest_flow.to_deployment(
            name=f"ingest-{cube}",
            cron=cron,
            parameters={"catalog_path": str(Path(catalog_path).resolve()), "cube": cube},
            description=f"Ingest new scenes of cube {cube} ({', '.join(catalog.cubes[cube].sources)})",
            tags=["fusioncube", cube],
        )
        for cube in catalog.cubes
    ]


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--catalog", default=str(DEFAULT_CATALOG))
    p.add_argument("--cron", default="0 * * * *", help="schedule (default: hourly)")
    args = p.parse_args(argv)
    serve(*ingest_deployments(args.catalog, cron=args.cron))


if __name__ == "__main__":
    main()
