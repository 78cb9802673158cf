"""Deployments (Python and prefect.yaml) and `fusioncube serve` pieces that need no browser."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from deployments.pipeline import (
    DEFAULT_CRON,
    all_deployments,
    backfill_deployments,
    pipeline_deployments,
)
from flows.cli import main
from flows.serve import free_port, start_local_server, wait_healthy
from tasks.catalog import load_catalog
from tasks.errors import CatalogError

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "data_catalog.yaml"
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"


def _cron(deployment) -> str | None:
    return deployment.schedules[0].schedule.cron if deployment.schedules else None


def _catalog_with_schedules(tmp_path: Path, **crons: str) -> Path:
    """The repository's catalog with ``cubes.<cube>.schedule`` set (paths kept absolute)."""
    raw = yaml.safe_load(CATALOG.read_text())
    for cube, cron in crons.items():
        raw["cubes"][cube]["schedule"] = cron
    raw["storage"]["root"] = str(tmp_path / "data")
    out = tmp_path / "catalog.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def test_one_scheduled_pipeline_deployment_per_cube() -> None:
    cubes = sorted(load_catalog(CATALOG).cubes)
    deps = pipeline_deployments(CATALOG)
    assert sorted(d.name for d in deps) == [f"pipeline-{c}" for c in cubes]
    for d in deps:
        assert d.flow_name == "fusioncube-pipeline"
        assert d.entrypoint == "flows.pipeline.pipeline_flow"  # module path: any working directory
        assert d.parameters == {"catalog_path": str(CATALOG.resolve()), "cube": d.name.removeprefix("pipeline-")}
        assert _cron(d) == DEFAULT_CRON == "0 * * * *"
        assert d.concurrency_limit == 1
        # the run-time parameters the UI's Run form offers
        assert {"catalog_path", "cube", "start", "end", "stages"} <= set(d._parameter_openapi_schema.properties)


def test_cube_schedule_from_catalog_and_override(tmp_path: Path) -> None:
    catalog = _catalog_with_schedules(tmp_path, modis_lst="30 6 * * *")
    by_name = {d.name: d for d in pipeline_deployments(catalog)}
    assert _cron(by_name["pipeline-modis_lst"]) == "30 6 * * *"
    assert _cron(by_name["pipeline-planet"]) == "0 * * * *"
    assert {_cron(d) for d in pipeline_deployments(catalog, cron="*/15 * * * *")} == {"*/15 * * * *"}


def test_bad_cube_schedule_is_refused_with_the_rule(tmp_path: Path) -> None:
    catalog = _catalog_with_schedules(tmp_path, planet="every hour")
    with pytest.raises(CatalogError, match=r"schedule must be a 5-field cron string.*'every hour'"):
        load_catalog(catalog)


def test_backfill_deployments_take_a_date_range_and_have_no_schedule() -> None:
    deps = backfill_deployments(CATALOG)
    assert sorted(d.name for d in deps) == [f"backfill-{c}" for c in sorted(load_catalog(CATALOG).cubes)]
    for d in deps:
        assert d.flow_name == "fusioncube-backfill" and not d.schedules
        assert set(d.parameters) == {"catalog_path", "cube"}
        props = d._parameter_openapi_schema.properties
        assert {"start", "end", "concurrency"} <= set(props)
        assert "date" in str(props["start"])  # the UI offers a date field


def test_prefect_yaml_declares_the_same_deployments() -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.flows import load_flow_from_entrypoint

    model = PrefectYamlModel.model_validate(yaml.safe_load(PREFECT_YAML.read_text()))
    in_yaml = {(d.flow_name, d.name): d for d in model.deployments}
    python = {(d.flow_name, d.name): d for d in all_deployments(CATALOG)}
    assert set(in_yaml) == set(python), "deployments/prefect.yaml and deployments/pipeline.py disagree"
    for key, d in in_yaml.items():
        py = python[key]
        assert d.parameters == {**py.parameters, "catalog_path": "data_catalog.yaml"}
        assert [s.cron for s in d.schedules or []] == [_cron(py)] * bool(py.schedules)
        assert d.work_pool is not None and d.work_pool.name == "fusioncube"
        assert d.concurrency_limit == 1
        flow = load_flow_from_entrypoint(str(REPO / d.entrypoint))
        assert flow.name == d.flow_name


def test_serve_refuses_an_unreachable_configured_server(monkeypatch, capsys) -> None:
    port = free_port()
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{port}/api")
    assert main(["serve", "--server-timeout", "1"]) == 2
    err = capsys.readouterr().err
    assert f"did not answer http://127.0.0.1:{port}/api/health" in err


def test_local_server_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is already in use"):
            start_local_server(tmp_path / "prefect", port=port)
    with pytest.raises(ValueError, match="port must be in 1..65535; got 70000"):
        start_local_server(tmp_path / "prefect", port=70000)


def test_wait_healthy_reports_a_server_that_died(tmp_path: Path) -> None:
    import subprocess
    import sys

    log = tmp_path / "server.log"
    log.write_text("boom: database is locked\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(RuntimeError, match=r"exited with code 3(.|\n)*database is locked"):
        wait_healthy(f"http://127.0.0.1:{free_port()}/api", timeout=5, process=proc, log_path=log)
