"""The pipeline flow on Dask: full chain, no-op re-run, incremental new scenes, a backfill killed
with SIGKILL and resumed, and an external Dask cluster passed by address."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from flows.pipeline import pipeline_up_to_date, run_pipeline
from tasks.catalog import load_catalog
from tasks.checkpoint import read_manifest
from tasks.ingest import ingest_cube, parts_dir
from tasks.sample_area import generate_sample_area

pytestmark = pytest.mark.usefixtures("prefect_harness")

REPO = Path(__file__).resolve().parents[2]
CATALOG = REPO / "data_catalog.yaml"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pipeline-sample") / "sample"
    generate_sample_area(root, size="small", seed=5)
    return root


def _scenes(sample: Path, dest: Path, planet_dates: slice = slice(None)) -> list[Path]:
    """Copy the sample area to ``dest`` with only some Planet dates; returns the Planet scenes left out."""
    for sub in ("modis", "nlcd"):
        shutil.copytree(sample / sub, dest / sub, dirs_exist_ok=True)
    scenes = sorted((sample / "planet").glob("*_AnalyticMS_SR.tif"))
    (dest / "planet").mkdir(parents=True, exist_ok=True)
    for tif in scenes[planet_dates]:
        for f in (tif, tif.with_name(tif.name.replace("_AnalyticMS_SR.tif", "_udm2.tif"))):
            shutil.copy2(f, dest / "planet" / f.name)
    return [s for s in scenes if not (dest / "planet" / s.name).exists()]


def _env(scenes: Path, data: Path) -> dict[str, str]:
    return {"FUSIONCUBE_SAMPLE": str(scenes), "FUSIONCUBE_DATA": str(data)}


def _image_versions(*names: str) -> dict[str, int]:
    """How many versions of each keyed image artifact the Prefect API holds."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from tasks.quicklook import artifact_key

    keys = {name: artifact_key(name) for name in names}
    with get_client(sync_client=True) as client:
        return {name: len(client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))))
                for name, key in keys.items()}


def _manifests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.manifest.json"))}


def _chunks(cube: Path, steps: int) -> dict[str, str]:
    """Digest of every data/valid chunk file of the first ``steps`` time steps (time chunk 1)."""
    out = {}
    for var in ("data", "valid"):
        for t in range(steps):
            for f in sorted((cube / var / "c" / str(t)).rglob("*")):
                if f.is_file():
                    out[str(f.relative_to(cube))] = hashlib.md5(f.read_bytes()).hexdigest()
    return out


def test_pipeline_reuses_everything_then_recomputes_only_what_new_scenes_change(sample: Path, tmp_path: Path) -> None:
    scenes, data = tmp_path / "scenes", tmp_path / "data"
    later = _scenes(sample, scenes, slice(0, 4))
    env = _env(scenes, data)
    catalog = load_catalog(CATALOG, env=env)
    cube = catalog.cube_path("planet")

    # one worker: the stage runs after the patch task in the same worker process, where its
    # artifacts once failed on a Prefect client the patch task's engine had closed
    first = run_pipeline(CATALOG, "planet", stages=["anomalies"], env=env, workers=1)
    assert first["summary"]["stages"] == {"patch": "ran", "anomalies": "ran"}
    steps = read_manifest(cube).outputs["time_steps"]
    assert steps == len(first["ingest"]["dates_added"]) > 0
    assert xr.open_zarr(first["stages"]["anomalies"]["artifact"])["score"].sizes["time"] == steps
    before, old_chunks = _manifests(data), _chunks(cube, steps)
    images = _image_versions(f"anomalies-png-{cube.stem}-{Path(first['stages']['anomalies']['artifact']).stem}",
                             f"quicklook-{cube.stem}")
    assert all(images.values()), images

    again = run_pipeline(CATALOG, "planet", stages=["anomalies"], env=env, workers=2)
    assert "nothing new" in again["summary"]["headline"]
    assert again["summary"]["stages"] == {"patch": "reused", "anomalies": "reused"}
    assert _manifests(data) == before, "a run with nothing new rewrote a manifest"
    # a served deployment's hourly no-op: its quick-looks, base64 in Prefect's database, not stored again
    assert _image_versions(*images) == images
    # the command line's answer to the same no-op run, from the manifests alone (no Prefect, no Dask)
    checked = pipeline_up_to_date(catalog, "planet", stages=["anomalies"])
    assert checked is not None and checked["summary"]["headline"] == again["summary"]["headline"]
    assert checked["summary"]["stages"] == again["summary"]["stages"]
    assert pipeline_up_to_date(catalog, "planet", stages=["anomalies", "gapfill"]) is None  # gapfill never ran
    more_layers = yaml.safe_load(CATALOG.read_text())
    more_layers["cubes"]["planet"]["static"]["landcover_2019"] = "nlcd"  # listed after the cube was made
    (tmp_path / "layers.yaml").write_text(yaml.safe_dump(more_layers))
    assert pipeline_up_to_date(load_catalog(tmp_path / "layers.yaml", env=env), "planet", stages=["anomalies"]) is None

    # the cube's own stage parameters (cubes.planet.params) replace the shared ones: anomalies reruns
    raw = yaml.safe_load(CATALOG.read_text())
    raw["cubes"]["planet"]["params"] = {"anomalies": {"k": 5.0}}
    own = tmp_path / "own.yaml"
    own.write_text(yaml.safe_dump(raw))
    assert pipeline_up_to_date(load_catalog(own, env=env), "planet", stages=["anomalies"]) is None
    tuned = run_pipeline(own, "planet", stages=["anomalies"], env=env, workers=2)
    assert tuned["summary"]["stages"] == {"patch": "reused", "anomalies": "ran"}
    remade = _image_versions(*images)  # a product made again is published again; the cube's quick-look is not
    assert remade == {**images, next(iter(images)): images[next(iter(images))] + 1}, (remade, images)
    manifest = read_manifest(tuned["stages"]["anomalies"]["artifact"])
    assert (manifest.params["k"], manifest.params["bits"]) == (5.0, load_catalog(CATALOG, env=env).stages.anomalies.bits)

    _scenes(sample, scenes)  # the rest of the Planet scenes arrive
    assert pipeline_up_to_date(catalog, "planet", stages=["anomalies"]) is None
    more = run_pipeline(CATALOG, "planet", stages=["anomalies"], env=env, workers=2)
    assert sorted(r["scene"] for r in more["ingest"]["ingested"]) == sorted(s.name for s in later)
    after = _manifests(data)
    grown = read_manifest(cube).outputs["time_steps"]
    assert grown > steps
    assert _chunks(cube, steps) == old_chunks, "appending new dates rewrote chunks of old dates"
    for artifact in ("planet.zarr.manifest.json", "planet/patches.zarr.manifest.json",
                     "planet/anomalies.zarr.manifest.json"):
        key = next(k for k in after if k.endswith(artifact))
        assert after[key] != before[key], f"{artifact} was not recomputed after new scenes"
    assert more["summary"]["stages"] == {"patch": "ran", "anomalies": "ran"}
    assert not parts_dir(cube).exists(), "attached parts were left behind"


def _backfill(env: dict[str, str], home: Path) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "flows.cli", "backfill", "planet", "--catalog", str(CATALOG), "--stages", "",
           "--concurrency", "1", "--workers", "1"]
    from prefect.settings import get_current_settings

    # the session's test server: a SIGKILL of the run's process group leaves it serving
    full_env = {**os.environ, **env, "PREFECT_HOME": str(home),
                "PREFECT_API_URL": str(get_current_settings().api.url)}
    return subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_backfill_killed_part_way_resumes_and_equals_an_uninterrupted_run(sample: Path, tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    _scenes(sample, scenes)
    env = _env(scenes, tmp_path / "data")
    catalog = load_catalog(CATALOG, env=env)
    cube = catalog.cube_path("planet")
    proc = _backfill(env, tmp_path / "prefect")
    deadline = time.monotonic() + 240
    # the first part is finished (not only the new cube's template)
    while not [m for m in parts_dir(cube).glob("*.zarr.manifest.json") if not m.name.startswith("template-")]:
        assert proc.poll() is None, f"backfill ended before any part was finished:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no part finished in 240 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, its Dask workers and its Prefect server
    proc.wait()
    manifest = read_manifest(cube)
    steps_at_kill = manifest.outputs["time_steps"] if manifest else 0
    total = len(list((scenes / "planet").glob("*_AnalyticMS_SR.tif")))
    assert steps_at_kill < total, "the kill came after the backfill had finished"

    proc = _backfill(env, tmp_path / "prefect")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "reused from an interrupted run" in out, out

    reference = load_catalog(CATALOG, env=_env(scenes, tmp_path / "reference"))
    ingest_cube(reference, "planet")
    got, want = xr.open_zarr(cube).load(), xr.open_zarr(reference.cube_path("planet")).load()
    for var in ("data", "valid", "landcover"):
        np.testing.assert_array_equal(got[var].values, want[var].values, err_msg=var)
    np.testing.assert_array_equal(got["time"].values, want["time"].values)
    assert read_manifest(cube).outputs["scenes"].keys() == read_manifest(reference.cube_path("planet")).outputs["scenes"].keys()


def test_pipeline_runs_on_a_separately_started_dask_cluster(sample: Path, tmp_path: Path) -> None:
    from distributed import Client, LocalCluster

    scenes = tmp_path / "scenes"
    _scenes(sample, scenes)
    env = _env(scenes, tmp_path / "data")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = set(client.scheduler_info()["workers"])
        products = run_pipeline(CATALOG, "modis_lst", stages=[], env=env, dask_address=cluster.scheduler_address)
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
        worker_pids = set(client.run(os.getpid).values())
        import dask

        # a task's own arrays are computed in the task (flows.worker_preload.ComputeInTask)
        assert set(client.run(lambda: dask.config.get("scheduler", None)).values()) == {"threads"}
    assert len(workers) == 2 and os.getpid() not in worker_pids
    assert "write_part_task" in prefixes, prefixes
    assert "patch_task" in prefixes, prefixes
    ds = xr.open_zarr(products["path"])
    assert ds.sizes["time"] == products["ingest"]["time_steps"] > 0


def test_the_whole_run_holds_the_cube_lock(tmp_path: Path, monkeypatch) -> None:
    """Ingest and the stages both run under the cube's lock: a run or backfill started meanwhile
    waits for the whole run, not only its ingest (it used to re-run the stages into the same outputs
    at the same time)."""
    import threading

    import flows.pipeline as pipeline
    from tasks.locks import CubeLockedError, cube_lock

    env = _env(tmp_path / "scenes", tmp_path / "data")
    cube_path = load_catalog(CATALOG, env=env).cube_path("modis_lst")
    seen: list[str] = []

    def stages_running(*args, **kwargs):
        def other_run() -> None:  # another process's run: another thread here, the lock is per thread
            try:
                with cube_lock(cube_path, timeout=0):
                    seen.append("taken")
            except CubeLockedError:
                seen.append("held")
        t = threading.Thread(target=other_run)
        t.start()
        t.join()
        return {"cube": "modis_lst", "path": str(cube_path), "ingest": {}, "stages": {}}

    monkeypatch.setattr(pipeline, "_ingest_and_stages", stages_running)
    monkeypatch.setattr(pipeline, "publish_pipeline_task", lambda products, started: {"headline": ""})
    pipeline.pipeline_steps(str(CATALOG), "modis_lst", env=env)
    assert seen == ["held"]
    with cube_lock(cube_path, timeout=0):  # released after the run
        pass


_CLUSTER_CLOSE = """
import socket, time
from distributed import Client, LocalCluster
from flows.pipeline import local_cluster_kwargs

if __name__ == "__main__":
    held = socket.socket()
    try:
        held.bind(("127.0.0.1", 8787)); held.listen()  # Dask's default HTTP port, taken
    except OSError:
        pass  # already taken by something else: the same test
    with LocalCluster(**local_cluster_kwargs(1)) as cluster, Client(cluster) as client:
        assert client.submit(sum, [1, 2]).result() == 3
        print("http on", cluster.scheduler.http_server.address)
        t = time.perf_counter()
    print(f"closed in {time.perf_counter() - t:.2f} s")
"""


def test_the_pipelines_local_cluster_starts_and_closes_without_warnings(tmp_path: Path) -> None:
    """Port 8787 held by another program: no "Port 8787 is already in use" (the scheduler's HTTP
    routes take any free port, on the loopback interface only). A closed worker leaves at once (``flows.worker_preload``), not
    after the nanny's 4 s wait and kill ("Worker process still alive after 4.0 seconds, killing";
    Python's own teardown of the preloaded libraries took 2.8 s here, 4.4 s with a busy machine)."""
    script = tmp_path / "cluster_close.py"
    script.write_text(_CLUSTER_CLOSE)
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "already in use" not in done.stderr, done.stderr[-3000:]
    assert "still alive" not in done.stderr, done.stderr[-3000:]
    assert "http on 127.0.0.1" in done.stdout, done.stdout
    seconds = float(done.stdout.split("closed in ")[1].split()[0])
    assert seconds < 2.0, done.stdout


_FLOW_CALLED_DIRECTLY = """
import json, sys
from flows.pipeline import pipeline_flow

if __name__ == "__main__":
    products = pipeline_flow(sys.argv[1], "modis_lst", stages=[], env=json.loads(sys.argv[2]))
    print("time steps", products["ingest"]["time_steps"])
"""


def test_the_pipeline_flow_called_directly_starts_one_prefect_server(sample: Path, tmp_path: Path) -> None:
    """``pipeline_flow(...)`` called as a function with no Prefect API configured (a script or a
    notebook, not ``run_pipeline``): its Dask workers use the flow's temporary server; each worker
    used to start one of its own (timeouts under load, servers left running)."""
    import json

    scenes = tmp_path / "scenes"
    _scenes(sample, scenes)
    script = tmp_path / "direct.py"
    script.write_text(_FLOW_CALLED_DIRECTLY)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")  # a fresh database: as the commands allow it
    done = subprocess.run([sys.executable, str(script), str(CATALOG), json.dumps(_env(scenes, tmp_path / "data"))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "time steps" in done.stdout, out[-4000:]
    assert out.count("Starting temporary server") == 1, out[-4000:]


_UNGUARDED = """
import multiprocessing
from flows.pipeline import refuse_while_a_worker_imports_main

refuse_while_a_worker_imports_main()  # what run_pipeline does first, at a script's top level
child = multiprocessing.get_context("spawn").Process(target=print)  # as Dask's nanny starts a worker
child.start()
child.join()
print("child exit code", child.exitcode)
"""


def test_the_unguarded_scripts_own_process_ends_with_the_fix_too(monkeypatch) -> None:
    """Its last line was Dask's "Nanny failed to start", after the workers' tracebacks (the real
    case takes a minute of worker start-up attempts; here the cluster's failure is simulated)."""
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import PipelineDaskTaskRunner

    def fails(self):
        raise RuntimeError("Nanny failed to start.")

    monkeypatch.setattr(DaskTaskRunner, "client", property(fails))
    monkeypatch.setattr(sys.modules["__main__"], "__file__", "/home/me/run.py", raising=False)
    with pytest.raises(RuntimeError, match=r"workers failed to start \(Nanny failed to start.\); if /home/me/run.py "
                                           "runs the pipeline at its top level, put the call under"):
        _ = PipelineDaskTaskRunner(cluster_kwargs={}).client
    monkeypatch.delattr(sys.modules["__main__"], "__file__")  # not a script (a notebook): as it was
    with pytest.raises(RuntimeError, match=r"^Nanny failed to start.$"):
        _ = PipelineDaskTaskRunner(cluster_kwargs={}).client


def test_a_script_running_the_pipeline_without_a_main_guard_is_told_the_fix(tmp_path: Path) -> None:
    """The spawned process imports the unguarded script again; there the pipeline refuses to start
    with the fix instead of multiprocessing's "bootstrapping phase" error."""
    script = tmp_path / "unguarded.py"
    script.write_text(_UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "child exit code 1" in done.stdout, done.stdout + done.stderr[-3000:]
    assert 'under `if __name__ == "__main__":`' in done.stderr, done.stderr[-3000:]
    assert "bootstrapping phase" not in done.stderr


def test_compression_in_the_pipeline_codes_the_patch_tasks_store(sample: Path, tmp_path: Path) -> None:
    """Compression runs after the patch task and codes its patches.zarr (the same patches): it used
    to cut them again into compress/patches.zarr, twice the work and the storage."""
    raw = yaml.safe_load(CATALOG.read_text())
    raw["stages"]["compress"]["iters"] = 2
    catalog_path = tmp_path / "catalog.yaml"
    catalog_path.write_text(yaml.safe_dump(raw))
    scenes = tmp_path / "scenes"
    _scenes(sample, scenes, slice(0, 3))
    env = _env(scenes, tmp_path / "data")
    products = run_pipeline(catalog_path, "planet", stages=["compress"], env=env, workers=2)
    assert products["summary"]["stages"] == {"patch": "ran", "compress": "ran"}, products["summary"]
    folder = load_catalog(catalog_path, env=env).stage_dir("planet")
    assert read_manifest(folder / "compress" / "compressed").outputs["patches"] == str(folder / "patches.zarr")
    assert not (folder / "compress" / "patches.zarr").exists()
    again = pipeline_up_to_date(load_catalog(catalog_path, env=env), "planet", stages=["compress"])
    assert again is not None and again["summary"]["stages"] == {"patch": "reused", "compress": "reused"}


def test_workers_of_an_external_cluster_without_the_project_are_refused_in_one_line() -> None:
    """Each task used to fail on the workers with two tracebacks ending in "No module named 'flows'"
    and no line saying what to do. The probe itself runs on real workers (it is sent by value)."""
    from types import SimpleNamespace

    from distributed import Client, LocalCluster

    from flows.pipeline import check_workers

    class Workers:
        scheduler = SimpleNamespace(address="tcp://10.0.0.5:8786")

        def run(self, probe):
            return {"tcp://10.0.0.7:40000": {"missing": ["flows", "tasks", "fusion_models"], "api": None},
                    "tcp://10.0.0.8:40000": {"missing": [], "api": None}}

    with pytest.raises(ValueError, match=r"1 of the 2 Dask worker\(s\) at tcp://10.0.0.5:8786 cannot import flows, "
                                         r"tasks, fusion_models .* install fusioncube in the workers'"):
        check_workers(Workers())
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        check_workers(client)  # the project is importable there: no error


def test_workers_that_never_answer_the_probe_are_one_line_not_a_hang(monkeypatch) -> None:
    """A worker stuck starting (it could not import the project) and kept as "closing" held the
    probe's broadcast for 9.5 minutes, then the run ended on "Stream is closed"."""
    import time
    from types import SimpleNamespace

    import flows.pipeline

    class Stuck:
        scheduler = SimpleNamespace(address="tcp://10.0.0.5:8786")

        def run(self, probe):
            time.sleep(30)

    monkeypatch.setattr(flows.pipeline, "WORKER_PROBE_SECONDS", 0.5)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"did not all answer within 0 s: one may be stuck starting or closing"):
        flows.pipeline.check_workers(Stuck())
    assert time.perf_counter() - t0 < 5


def test_an_unreachable_scheduler_is_one_line_naming_the_address(prefect_harness) -> None:
    import dask

    from flows.pipeline import PipelineDaskTaskRunner

    runner = PipelineDaskTaskRunner(address="tcp://127.0.0.1:1")
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), runner, \
            pytest.raises(ValueError, match=r"cannot reach the Dask scheduler at tcp://127.0.0.1:1 .*--dask-address"):
        runner.client  # noqa: B018  (the property connects)


def test_a_cluster_left_without_workers_is_said_not_waited_on_in_silence(caplog) -> None:
    """Losing every worker of an external cluster left the run silent until interrupted."""
    import time
    from types import SimpleNamespace

    from flows.pipeline import watch_workers

    class Empty:
        scheduler = SimpleNamespace(address="tcp://10.0.0.5:8786")
        status = "running"

        def scheduler_info(self, n_workers=-1):
            return {"workers": {}}

    client = Empty()
    with caplog.at_level("WARNING", logger="flows.pipeline"):
        watcher = watch_workers(client, every=0.05, after=0.2)
        time.sleep(0.6)
        client.status = "closed"
        watcher.join(2)
    assert not watcher.is_alive()
    said = [r.getMessage() for r in caplog.records if "no Dask worker" in r.getMessage()]
    assert len(said) == 1 and "connected to tcp://10.0.0.5:8786 for" in said[0] and "Ctrl-C" in said[0]
