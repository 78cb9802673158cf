from __future__ import annotations

from pathlib import Path

from deployments.ingest import ingest_deployments

REPO = Path(__file__).resolve().parents[2]


def test_one_hourly_deployment_per_cube() -> None:
    deps = ingest_deployments(REPO / "data_catalog.yaml")
    assert sorted(d.name for d in deps) == ["ingest-modis_lst", "ingest-planet"]
    for d in deps:
        assert d.parameters["cube"] in ("planet", "modis_lst")
        assert Path(d.parameters["catalog_path"]).is_absolute()
        assert d.schedules and d.schedules[0].schedule.cron == "0 * * * *"
