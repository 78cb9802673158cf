"""Flows under a Prefect test server: the demo job, its no-op re-run, ingest artifacts, the CLI."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import xarray as xr
import yaml

from flows.cli import main
from flows.demo import demo_flow, demo_up_to_date
from tasks.checkpoint import read_manifest

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _manifests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.manifest.json"))}


def test_demo_runs_then_reruns_without_recomputing(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    products = demo_flow(str(out), "small", 1)
    first = time.perf_counter() - t0
    for cube in ("planet", "modis_lst"):
        ds = xr.open_zarr(products["cubes"][cube])
        assert ds["data"].dims == ("time", "band", "y", "x") and ds.sizes["time"] > 0
        assert Path(products["quicklooks"][cube]).stat().st_size > 1000
        patches = xr.open_zarr(products["patches"][cube]["path"])
        assert patches["data"].dims == ("patch", "time", "band", "py", "px")
    assert "landcover" in xr.open_zarr(products["cubes"]["planet"])
    before = _manifests(out)
    assert len(before) == 7  # sample area, two cubes, two patch stores, anomalies, gap-filled cube

    t0 = time.perf_counter()
    again = demo_flow(str(out), "small", 1)
    rerun = time.perf_counter() - t0
    assert again["sample"]["reused"]
    assert _manifests(out) == before, "a re-run rewrote a manifest"
    print(f"demo flow: first run {first:.1f} s, re-run {rerun:.1f} s")
    # reuse is asserted from the manifests (above) and the run's own report, not from timings:
    # the flow re-run pays Prefect's fixed per-run costs, which vary on a shared machine
    for cube in ("planet", "modis_lst"):
        assert again["summaries"][cube].startswith(f"cube {cube}: nothing new"), again["summaries"][cube]
    assert demo_up_to_date(str(out), "small", 1) is not None


def test_demo_cli_up_to_date_check_and_ingest_cli(tmp_path: Path, real_fixtures: Path, capsys) -> None:
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--size", "small", "--seed", "2"]) == 0
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert main(["demo", "--out", str(out), "--size", "small", "--seed", "2"]) == 0
    rerun = time.perf_counter() - t0
    printed = capsys.readouterr().out
    assert "Up to date" in printed and "cube planet" in printed
    assert rerun < first / 3, f"`fusioncube demo` re-run took {rerun:.1f} s against {first:.1f} s"

    cube = tmp_path / "ndvi.zarr"
    assert main(["ingest", str(real_fixtures / "modis_ndvi_sinop" / "*.jp2"), "--out", str(cube)]) == 0
    assert xr.open_zarr(cube).sizes["time"] == 12
    assert read_manifest(cube).outputs["time_steps"] == 12
    assert main(["stage", "patch", "--cube", str(cube), "--out", str(tmp_path / "p.zarr"), "--size", "32"]) == 0
    assert xr.open_zarr(tmp_path / "p.zarr").sizes["patch"] > 0


def test_cli_errors_name_the_problem(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("sources: {}\ncubes: {}\nstagez: {}\n")
    assert main(["catalog", "check", str(bad)]) == 2
    assert "stagez: unknown key (did you mean 'stages'?)" in capsys.readouterr().err
    assert main(["ingest", str(tmp_path / "nothing*.tif"), "--out", str(tmp_path / "x.zarr")]) == 2
    assert "no file matches" in capsys.readouterr().err
    # a reversed date range is refused (it used to say "nothing new" and take nothing)
    assert main(["backfill", "planet", "--start", "2021-06-30", "--end", "2021-06-01"]) == 2
    assert "--start 2021-06-30 is after --end 2021-06-01" in capsys.readouterr().err


def test_ingest_flow_publishes_operator_artifacts(tmp_path: Path, real_fixtures: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.ingest import ingest_flow
    from tasks.adhoc import adhoc_catalog

    src = tmp_path / "scenes"
    src.mkdir()
    for f in sorted((real_fixtures / "modis_ndvi_sinop").glob("*.jp2"))[:3]:
        (src / f.name).write_bytes(f.read_bytes())
    (src / "TERRA_MODIS_012010_NDVI_2014-09-30.jp2").write_bytes(b"not a raster")
    catalog = adhoc_catalog([str(src / "*.jp2")], tmp_path / "ndvi.zarr")
    report = ingest_flow(str(catalog), "ndvi")
    assert report["time_steps"] == 3 and len(report["quarantined"]) == 1
    table = Artifact.get("ingest-ndvi")  # keyed by the cube, named after its store
    assert table is not None and table.type == "table"
    assert "TERRA_MODIS_012010_NDVI_2014-09-30.jp2" in str(table.data) and "quarantined" in str(table.data)
    summary = Artifact.get("ingest-summary-ndvi")
    assert summary is not None and "cannot be read" in str(summary.data)
    image = Artifact.get("quicklook-ndvi")
    assert image is not None and str(image.data).startswith("data:image/png;base64,")
    assert Path(report["quicklook"]).exists()


def test_bad_input_fails_at_once_without_retries(tmp_path: Path) -> None:
    from flows.ingest import ingest_flow
    from tasks.errors import CatalogError

    bad = tmp_path / "c.yaml"
    bad.write_text("sources: {}\ncubes: {}\n")
    with pytest.raises(CatalogError, match="no cube 'planet'"):  # run alone, this starts Prefect's
        ingest_flow(str(bad), "planet")  # temporary server: not timed
    t0 = time.perf_counter()
    with pytest.raises(CatalogError, match="no cube 'planet'"):
        ingest_flow(str(bad), "planet")
    assert time.perf_counter() - t0 < 5  # no retry delays (5 s, 30 s) for a ValueError


def test_cli_run_reports_a_failed_stage_in_its_table_and_exits_1(tmp_path: Path, real_fixtures: Path,
                                                                  capfd, monkeypatch) -> None:
    """`fusioncube run` on a cube made by `fusioncube ingest` (its catalog has no stages): patching
    only, with a hint on how to ask for stages; a stage that fails (labels, on a cube without a
    label layer) is a row of the table and one error line, exit code 1, the other stages kept; no
    traceback on the terminal, from this process or from the Dask worker (which logs on its own)."""
    cube = tmp_path / "ndvi.zarr"
    files = [str(f) for f in sorted((real_fixtures / "modis_ndvi_sinop").glob("*.jp2"))[:4]]
    assert main(["ingest", *files, "--out", str(cube)]) == 0
    catalog = str(cube) + ".catalog.yaml"
    capfd.readouterr()
    assert main(["run", "ndvi", "--catalog", catalog, "--workers", "1"]) == 0
    assert "no stage after patching is configured for cube 'ndvi'" in capfd.readouterr().out
    assert main(["run", "ndvi", "--catalog", catalog, "--workers", "1", "--stages", "labels"]) == 1
    captured = capfd.readouterr()
    assert "labels     FAILED" in captured.out and "patch      reused" in captured.out
    assert (f"stage labels failed: {catalog}: stages.labels.labels: cube ndvi has no (y, x) layer 'landcover' "
            "to learn from (its layers: none)") in captured.out  # said before the stage started
    assert "fusioncube: error: stage(s) labels failed (above); the others finished" in captured.err
    assert "Traceback" not in captured.err  # neither from the flow nor from the Dask worker that ran the task

    # the stages and the cube's own parameters written into that catalog: kept when a new ingest
    # rewrites it, a points file named there found beside it, products in the cube's own folder
    raw = yaml.safe_load(Path(catalog).read_text())
    raw["cubes"]["ndvi"].update(stages=["labels"], params={"labels": {"labels": "points.csv", "epochs": 1}})
    Path(catalog).write_text(yaml.safe_dump(raw))
    shutil.copy(real_fixtures / "modis_ndvi_sinop" / "samples_sinop_crop.csv", tmp_path / "points.csv")
    assert main(["ingest", *files, "--out", str(cube)]) == 0
    assert yaml.safe_load(Path(catalog).read_text())["cubes"]["ndvi"]["params"] == raw["cubes"]["ndvi"]["params"]
    capfd.readouterr()
    assert main(["run", "ndvi", "--catalog", catalog, "--workers", "1"]) == 0
    assert "labels     ran" in capfd.readouterr().out
    assert (tmp_path / "artifacts" / "ndvi" / "labels.zarr").is_dir()

    # again with nothing new: answered from the manifests, without a flow run (the flow would fail here)
    import flows.pipeline

    def no_flow(*args, **kwargs):
        raise AssertionError("a run with nothing new started the flow")

    monkeypatch.setattr(flows.pipeline, "run_pipeline", no_flow)
    assert main(["run", "ndvi", "--catalog", catalog, "--workers", "1"]) == 0
    out = capfd.readouterr().out
    assert "cube ndvi: nothing new; 4 time steps, all 2 stage artifact(s) reused" in out
    assert "checked from the manifests, no flow run" in out and "labels     reused" in out
    with pytest.raises(AssertionError, match="started the flow"):  # --rerun always runs it
        main(["run", "ndvi", "--catalog", catalog, "--rerun"])


def test_the_command_line_imports_a_stage_only_for_its_own_command() -> None:
    """Each stage module imports torch and Prefect (seconds); `fusioncube --help`, `info` or
    `ingest` took 6-7 s to build their parser from all of them."""
    from flows.cli import STAGE_MODULES, build_parser, stage_modules

    assert stage_modules(["info", "c.zarr"]) == () and stage_modules(["-v", "ingest", "x"]) == ()
    assert stage_modules(["stage", "gapfill", "--cube", "c.zarr"]) == ("tasks.gapfill",)
    assert stage_modules(["-v", "stage", "decompress"]) == ("tasks.compress",)
    assert stage_modules(["stage"]) == stage_modules(["stage", "gapfil"]) == STAGE_MODULES  # to list them
    args = build_parser(stage_modules(["stage", "labels", "--cube", "c", "--labels", "l", "--out", "o"])).parse_args(
        ["stage", "labels", "--cube", "c", "--labels", "l", "--out", "o"])
    assert args.labels == "l" and callable(args.func)


UI_LOG_SCRIPT = '''
import asyncio, logging, time
from flows.cli import quiet_defaults
quiet_defaults()  # what every command does before Prefect is imported
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogWorker
from prefect.testing.utilities import prefect_test_harness

@task
def stage():
    logging.getLogger("tasks.patch").warning("patches of 10 px instead of 32")

@flow
def pipeline():
    stage()

logging.getLogger("tasks.ingest").warning("outside any run: console only")
with prefect_test_harness(server_startup_timeout=120):  # a fresh database: migrations, slow on a busy machine
    run = pipeline(return_state=True).state_details.flow_run_id
    APILogWorker.drain_all()
    time.sleep(0.5)
    async def logs():
        async with get_client() as client:
            return await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run])))
    for log in asyncio.run(logs()):
        print("API", log.name, log.level, log.message)
'''


def test_the_project_s_warnings_reach_the_run_s_logs_in_the_prefect_ui(tmp_path: Path) -> None:
    """A stage's warning, logged by its module's logger inside a task run, is in the run's logs that
    the Prefect UI shows, not only on the console of the process (a Dask worker) that ran it."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING")}
    done = subprocess.run([sys.executable, "-c", UI_LOG_SCRIPT], env={**env, "PREFECT_HOME": str(tmp_path)},
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "API tasks.patch 30 patches of 10 px instead of 32" in done.stdout, done.stdout
    assert "outside any run" in done.stderr and "attempted to send logs to the API" not in done.stderr


def test_a_run_that_waits_for_data_is_answered_from_the_manifests_too(tmp_path: Path, real_fixtures: Path,
                                                                      capfd, monkeypatch) -> None:
    """A two-date cube with anomaly detection enabled: the stage waits for a third date. A schedule's
    next run with nothing new said so after a whole flow run (Prefect and a Dask cluster, every hour)."""
    import flows.pipeline

    cube = tmp_path / "young.zarr"
    files = [str(f) for f in sorted((real_fixtures / "modis_ndvi_sinop").glob("*.jp2"))[:2]]
    assert main(["ingest", *files, "--out", str(cube)]) == 0
    catalog = Path(str(cube) + ".catalog.yaml")
    raw = yaml.safe_load(catalog.read_text())
    raw["cubes"]["young"]["stages"] = ["anomalies"]
    catalog.write_text(yaml.safe_dump(raw))
    assert main(["run", "young", "--catalog", str(catalog), "--workers", "1"]) == 0
    assert "anomalies  waiting for data" in capfd.readouterr().out

    def no_flow(*args, **kwargs):
        raise AssertionError("a run with nothing new started the flow")

    monkeypatch.setattr(flows.pipeline, "run_pipeline", no_flow)
    assert main(["run", "young", "--catalog", str(catalog)]) == 0
    out = capfd.readouterr().out
    assert "cube young: 0 new scene(s) in 0 new date(s), 2 time steps; patch reused, anomalies waiting for data" in out
    assert "checked from the manifests, no flow run" in out
    assert "warning: stage anomalies waits for data: " in out and "needs at least 3 dates; the cube has 2" in out


SIGTERM_SCRIPT = '''
import sys
from tasks import faults
faults.install()  # FUSIONCUBE_KILL_AT / FUSIONCUBE_KILL_SIGNAL from the environment
from flows.cli import main
sys.exit(main(sys.argv[1:]))
'''


def test_sigterm_mid_write_exits_cleanly_and_leaves_no_temporary(tmp_path: Path) -> None:
    """SIGTERM (a timeout, a service manager's stop) in the middle of writing a stage's output: the
    command exits 143 with the re-run hint, and no half-written `<out>.tmp-*` is left beside it
    (it was, until the next run of the same output removed it)."""
    import os
    import subprocess
    import sys

    import numpy as np

    cube = tmp_path / "c.zarr"
    rng = np.random.default_rng(0)
    xr.Dataset({"data": (("time", "band", "y", "x"), rng.random((4, 2, 64, 64), dtype=np.float32)),
                "valid": (("time", "y", "x"), np.ones((4, 64, 64), bool))},
               coords={"time": np.arange("2019-07-01", "2019-07-05", dtype="datetime64[D]").astype("datetime64[ns]"),
                       "band": ["a", "b"], "y": np.arange(64.0), "x": np.arange(64.0)}).to_zarr(cube, zarr_format=3)
    out = tmp_path / "p.zarr"
    env = {**os.environ, "FUSIONCUBE_KILL_AT": "6", "FUSIONCUBE_KILL_SIGNAL": "TERM"}
    done = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, "stage", "patch", "--cube", str(cube), "--out",
                           str(out), "--size", "16"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 143, done.stderr[-2000:]
    assert "fusioncube: stopped (SIGTERM); nothing finished is lost" in done.stderr
    assert not out.exists() and not list(tmp_path.glob("p.zarr*")), sorted(p.name for p in tmp_path.iterdir())
