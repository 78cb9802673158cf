"""The pipeline: one flow run per cube, on Dask.

    ingest new scenes (plan -> parts on Dask workers -> validate with Great Expectations -> warp
    -> attach in date order) -> patch -> the stages the catalog enables -> operator summary

Patching and the stages read the cube, not each other, so they run concurrently. Every step is a
checkpointed task: a finished artifact whose manifest matches its inputs, parameters and code is
reused, so a run with nothing new finishes in seconds and says so.

The task runner is a local Dask cluster by default; a scheduler address in the environment
(``FUSIONCUBE_DASK_ADDRESS``) or the catalog (``orchestration.dask_address``) sends the tasks to an
existing cluster instead. Nothing assumes the tasks run in this process: they get paths and small
dicts, and write to the storage root that every worker sees.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect_dask import DaskTaskRunner

from flows.ingest import ingest_steps
from tasks.catalog import Catalog, load_catalog
from tasks.checkpoint import read_manifest, reusable
from tasks.errors import CatalogError, StagesFailed, did_you_mean
from tasks.ingest import missing_static_layers, plan_ingest
from tasks.locks import cube_lock
from tasks.patch import fit_patch_size, patch_key, patch_task
from tasks.pipeline_report import pipeline_summary, publish_pipeline_task
from tasks.stages import STAGES, stage_current

__all__ = ["PipelineDaskTaskRunner", "compute_in_tasks", "dask_task_runner", "local_cluster_kwargs", "one_prefect_api", "pipeline_flow", "pipeline_steps",
           "pipeline_up_to_date", "run_pipeline"]

DASK_ADDRESS_ENV = "FUSIONCUBE_DASK_ADDRESS"


PRELOAD = "flows.worker_preload"  # imports paid at worker start-up, not in the first task


def dask_task_runner(
    catalog: Catalog | None = None, *, address: str | None = None, workers: int | None = None
) -> PipelineDaskTaskRunner:
    """Prefect's Dask task runner (:class:`PipelineDaskTaskRunner`): an existing cluster when an address is given (argument, then
    ``FUSIONCUBE_DASK_ADDRESS``, then the catalog's ``orchestration.dask_address``), else a local
    cluster of ``workers`` single-threaded processes (default: the catalog's, else the cores) that
    import the pipeline's libraries when they start (:mod:`flows.worker_preload`).

    Passing it to ``@flow`` or ``Flow.with_options`` takes a ``# type: ignore[arg-type]``:
    prefect_dask subclasses the bare ``TaskRunner`` (``TaskRunner[PrefectConcurrentFuture]``),
    which Prefect's invariant parameter type ``TaskRunner[PrefectFuture[Any]]`` does not accept;
    at run time it is a task runner like any other."""
    orch = catalog.orchestration if catalog is not None else None
    address = address or os.environ.get(DASK_ADDRESS_ENV) or (orch.dask_address if orch else None)
    if address:
        return PipelineDaskTaskRunner(address=address)
    n = workers or (orch.workers if orch else None) or os.cpu_count() or 1
    return PipelineDaskTaskRunner(cluster_kwargs=local_cluster_kwargs(n))


def refuse_while_a_worker_imports_main() -> None:
    """Refuse, with the fix, to start a cluster from a process that is still importing its parent's
    script: a script calling :func:`run_pipeline` (or ``pipeline_flow``) outside
    ``if __name__ == "__main__":`` runs again in every worker process the local cluster spawns,
    and there multiprocessing's own error says only "An attempt has been made to start a new
    process before the current process has finished its bootstrapping phase"."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):  # multiprocessing's own test
        raise RuntimeError(
            "the pipeline was started while a Dask worker process was importing your script: a script "
            "that runs the pipeline on a local cluster must do it under `if __name__ == \"__main__\":` "
            "(worker processes import the script again)")


class PipelineDaskTaskRunner(DaskTaskRunner):  # type: ignore[misc]  # prefect_dask is untyped here
    """Prefect's Dask task runner, safe for a flow called directly (``pipeline_flow(...)`` in a
    script or notebook, not through :func:`run_pipeline`):

    - with no Prefect API configured, its local cluster's workers use the temporary server of the
      flow's own process (:func:`one_prefect_api`); each used to start one of its own when it
      first ran a task (seconds each, a timed-out connection under load, and a server left
      running when the worker was killed);
    - ``FUSIONCUBE_DASK_ADDRESS`` is read when the flow starts, not only when :mod:`flows.pipeline`
      was imported."""

    def __enter__(self) -> PipelineDaskTaskRunner:
        refuse_while_a_worker_imports_main()
        super().__enter__()
        if self.address is None and self._cluster is None and os.environ.get(DASK_ADDRESS_ENV):
            self.address = os.environ[DASK_ADDRESS_ENV]
        self._exit_stack.enter_context(one_prefect_api())  # left after the cluster is closed
        return self

    @property
    def client(self) -> Any:
        """The Dask client, the local cluster started on first use. When its workers fail to start
        and this process runs a script, say the likely cause in the last line too: the workers'
        own refusal (:func:`refuse_while_a_worker_imports_main`) is above, among their logs."""
        try:
            return super().client
        except OSError as exc:  # distributed's connect timeout (30 s) on an address nobody answers
            if self.address is None:
                raise
            raise ValueError(
                f"cannot reach the Dask scheduler at {self.address} ({exc}); start it, or correct the address "
                f"(--dask-address, {DASK_ADDRESS_ENV}, or the catalog's orchestration.dask_address)") from exc
        except RuntimeError as exc:
            script = getattr(sys.modules.get("__main__"), "__file__", None)
            if "failed to start" not in str(exc) or not script:
                raise
            raise RuntimeError(
                f"the local Dask cluster's workers failed to start ({exc}); if {script} runs the pipeline at its "
                "top level, put the call under `if __name__ == \"__main__\":` (each worker imports the script "
                "again)") from exc


def local_cluster_kwargs(workers: int) -> dict[str, Any]:
    """``distributed.LocalCluster`` arguments of the pipeline's local clusters: ``workers``
    single-threaded worker processes that load :mod:`flows.worker_preload`, and no dashboard.

    The scheduler serves its HTTP routes (health, metrics) even without a dashboard, by default on
    port 8787 of every interface: with another cluster on the machine holding it, every run warned
    "Port 8787 is already in use". Here they take any free port, on 127.0.0.1 only."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
            "scheduler_kwargs": {"dashboard_address": "127.0.0.1:0"}, "preload": [PRELOAD]}


@contextlib.contextmanager
def one_prefect_api() -> Iterator[str | None]:
    """Run flows on Dask workers against one Prefect API. Yields its URL.

    With no ``PREFECT_API_URL`` configured, Prefect starts a temporary server in each process that
    needs one: every Dask worker process would start its own (seconds of start-up in its first
    task and a busy server process per worker). Here the temporary server starts once, in this
    process, and this process and the ones it starts (the workers) are pointed at it. With an API
    configured, nothing changes.
    """
    from flows.serve import configured_api_url, use_api

    url = configured_api_url()
    if url:
        yield url
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the process-wide one Prefect's own client would start
    server.start()
    with use_api(server.api_url):
        yield server.api_url


def compute_in_tasks() -> None:
    """On a Dask task runner, make every worker of its cluster compute a task's own arrays in the
    task (:class:`flows.worker_preload.ComputeInTask`), also on a cluster started elsewhere without
    the preload: the local and remote runs, deployments and backfills all pass here."""
    from prefect.context import FlowRunContext

    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if isinstance(runner, DaskTaskRunner):
        from flows.worker_preload import ComputeInTask

        if runner.address is not None:  # a cluster of the user's: its workers' setup is theirs
            check_workers(runner.client)
            watch_workers(runner.client)
        runner.client.register_plugin(ComputeInTask())


def watch_workers(client: Any, *, every: float = 10.0, after: float = 30.0) -> threading.Thread:
    """Warn once an external cluster has had no worker for ``after`` seconds (checked every
    ``every``): the run's tasks wait for one, and it used to wait in silence until interrupted.
    A daemon thread, ending with the client."""
    log = logging.getLogger(__name__)

    def watch() -> None:
        empty_since: float | None = None
        warned = False
        while client.status not in ("closing", "closed"):
            try:
                workers = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            except Exception:  # the scheduler is gone: the run fails on its own, saying so
                return
            now = time.monotonic()
            if workers:
                empty_since, warned = None, False
            elif empty_since is None:
                empty_since = now
            elif not warned and now - empty_since >= after:
                log.warning("no Dask worker has been connected to %s for %.0f s: the run's tasks wait for one; "
                            "start workers (`dask worker %s`) or stop the run (Ctrl-C)",
                            client.scheduler.address, now - empty_since, client.scheduler.address)
                warned = True
            time.sleep(every)

    watcher = threading.Thread(target=watch, name="watch-workers", daemon=True)
    watcher.start()
    return watcher


#: how long the workers of an external cluster get to answer the pre-flight probe (:func:`check_workers`)
WORKER_PROBE_SECONDS = 60.0


def check_workers(client: Any) -> None:
    """Refuse an external cluster whose workers cannot import the project (each task would fail
    with a worker traceback ending in ``No module named 'flows'``), and warn when they report to
    another Prefect API than the flow (or to none): their task runs would be missing from the run
    in the UI, their logs pointing at task runs that do not exist."""
    from prefect.settings import PREFECT_API_URL

    def probe() -> dict[str, Any]:  # sent by value: the workers need not have this module
        import importlib.util
        import os

        try:  # the worker's own setting: its environment, else its Prefect profile
            from prefect.settings import PREFECT_API_URL as url

            api = url.value()
        except ImportError:
            api = os.environ.get("PREFECT_API_URL")
        return {"missing": [p for p in ("flows", "tasks", "fusion_models") if importlib.util.find_spec(p) is None],
                "api": api}

    answer: dict[str, Any] = {}

    def ask() -> None:
        try:
            answer["found"] = client.run(probe)
        except BaseException as exc:  # handed to the caller
            answer["error"] = exc

    # a worker stuck starting or closing holds a broadcast up until the scheduler drops it (minutes):
    # asked on a daemon thread, which neither this wait nor the interpreter's exit waits for
    asking = threading.Thread(target=ask, name="probe-workers", daemon=True)
    asking.start()
    asking.join(WORKER_PROBE_SECONDS)
    if asking.is_alive():
        raise ValueError(
            f"the Dask workers at {client.scheduler.address} did not all answer within {WORKER_PROBE_SECONDS:.0f} s: "
            "one may be stuck starting or closing (e.g. a worker whose Python cannot import fusioncube); "
            "see the workers' logs and stop that worker")
    if "error" in answer:
        raise answer["error"]
    found = answer["found"]
    if not found:
        return
    bad = {w: r["missing"] for w, r in found.items() if r["missing"]}
    if bad:
        worker, missing = next(iter(bad.items()))
        raise ValueError(
            f"{len(bad)} of the {len(found)} Dask worker(s) at {client.scheduler.address} cannot import "
            f"{', '.join(missing)} (e.g. {worker}): install fusioncube in the workers' Python environment "
            "(`pip install /path/to/fusioncube`) and start them again")
    api = PREFECT_API_URL.value()
    other = {w: r["api"] for w, r in found.items() if r["api"] != api}
    if api and other:
        worker, theirs = next(iter(other.items()))
        logging.getLogger(__name__).warning(  # "flows" is an extra Prefect logger: in the run's logs too
            "%d of the %d Dask worker(s) report to %s, not to this flow's Prefect API %s (e.g. %s): their task "
            "runs will be missing from this run in the UI; start them with PREFECT_API_URL=%s",
            len(other), len(found), theirs or "no Prefect API (PREFECT_API_URL unset)", api, worker, api)


def pipeline_steps(
    catalog_path: str,
    cube: str,
    start: date | None = None,
    end: date | None = None,
    stages: list[str] | None = None,
    env: dict[str, str] | None = None,
    *,
    concurrency: int | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """The pipeline's tasks for one cube, for use inside any flow. Returns the products.

    ``catalog_path`` goes to the tasks as an absolute path: the workers of an external Dask
    cluster have working directories of their own."""
    compute_in_tasks()
    catalog_path = str(Path(catalog_path).resolve())
    catalog = load_catalog(catalog_path, env=env)
    spec = catalog.cube(cube)
    chosen: list[str] = list(spec.stages) if stages is None else list(stages)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ValueError(f"stages {unknown} are not pipeline stages{did_you_mean(unknown[0], STAGES)}; "
                         f"choose from {sorted(STAGES)}")
    if start is not None and end is not None and start > end:
        raise ValueError(f"start {start} is after end {end}: no date is in that range")
    if (problem := catalog.stage_dir_problem(cube)) is not None:  # before a second cube is built
        raise CatalogError(problem)
    inflight = concurrency or catalog.orchestration.concurrency
    # the whole run holds the cube's lock (ingest takes it again, re-entrant in this thread): a run
    # or backfill started meanwhile waits, then finds the stages' outputs fresh, instead of writing
    # the same outputs at the same time
    with cube_lock(catalog.cube_path(cube)):
        # from here: a run that waited for the lock while another made the products reuses them
        started = datetime.now(UTC)
        products = _ingest_and_stages(catalog, catalog_path, cube, start, end, chosen, env,
                                      concurrency=inflight, progress_bar=progress_bar)
    products["summary"] = publish_pipeline_task(products, started.isoformat())
    failed = [n for n, r in products["stages"].items() if "error" in r]
    if failed:
        raise StagesFailed(f"cube {cube}: stage(s) {failed} failed; the others finished (see the summary)", products)
    return products


def _ingest_and_stages(catalog: Catalog, catalog_path: str, cube: str, start: date | None, end: date | None,
                       chosen: list[str], env: dict[str, str] | None, *, concurrency: int,
                       progress_bar: bool) -> dict[str, Any]:
    report = ingest_steps(catalog_path, cube, start, end, env, concurrency=concurrency, progress_bar=progress_bar)
    products: dict[str, Any] = {"cube": cube, "path": report["path"], "ingest": report, "stages": {}}
    if report["time_steps"]:
        folder = catalog.stage_dir(cube)
        futures: dict[str, PrefectFuture[dict[str, Any]]] = {
            "patch": patch_task.submit(report["path"], str(folder / "patches.zarr"),
                                       **catalog.patch_params(cube).model_dump(), overwrite=True),
        }
        for name in chosen:
            problem = catalog.stage_input_problem(cube, name)
            if problem is not None:  # a labels file or layer that is not there: not started, said at once
                get_run_logger().warning("stage %s cannot run: %s", name, problem)
                products["stages"][name] = {"error": problem}
                continue
            stage = STAGES[name]
            shared: dict[str, Any] = {}
            if stage.uses_patches:  # after the patch task: its store, when it holds the stage's patches
                shared = {"patches": str(folder / "patches.zarr"), "wait_for": [futures["patch"]]}
            futures[name] = stage.task.submit(report["path"], str(folder / stage.output),
                                              **catalog.stage_params(cube, name), overwrite=True, **shared)
        for name, fut in futures.items():
            state = fut.wait() or fut.state
            if state.is_completed():
                products["stages"][name] = fut.result()
            else:
                products["stages"][name] = {"error": str(state.message or state.name)}
        products["stages"] = {name: products["stages"][name] for name in ["patch", *chosen]}
    return products


def pipeline_up_to_date(catalog: Catalog, cube: str, start: date | None = None, end: date | None = None,
                        stages: list[str] | None = None) -> dict[str, Any] | None:
    """The products of a run of ``cube`` that would do nothing, else None: the cube is made, no scene
    is new or newly refused, and the patches and every chosen stage's artifact are current (or the
    stage waits for data the cube does not have yet, as anomaly detection for a third date).

    The same checks the tasks make, without Prefect or Dask: the command line answers a no-op run
    (a schedule's usual case) in seconds instead of starting a server and a cluster to say it."""
    path = catalog.cube_path(cube)
    cube_manifest = read_manifest(path)
    chosen = list(catalog.cube(cube).stages) if stages is None else list(stages)
    if cube_manifest is None or not cube_manifest.outputs.get("time_steps") or any(s not in STAGES for s in chosen):
        return None  # nothing made yet, or an unknown stage the flow names
    if missing_static_layers(catalog, cube):  # listed after the cube was made: ingest adds them
        return None
    plan = plan_ingest(catalog, cube, start=start, end=end)
    if plan.new or plan.quarantined or plan.replace:  # a date to rebuild (changed_scenes: replace) is work too
        return None
    p = catalog.patch_params(cube)
    size, stride = fit_patch_size(path, p.size, p.stride)
    patches = catalog.stage_dir(cube) / "patches.zarr"
    key = patch_key(path, size=size, stride=stride, block=p.block, fractions=p.fractions, seed=p.seed)[0]
    current = {"patch": (patches, reusable(patches, key))}
    for name in chosen:
        current[name] = (catalog.stage_dir(cube) / STAGES[name].output, stage_current(catalog, cube, name))
    results: dict[str, dict[str, Any]] = {}
    for name, (out, manifest) in current.items():
        if manifest is not None:
            results[name] = {"artifact": str(out), **asdict(manifest)}
            continue
        waits = STAGES[name].waiting if name in STAGES else None
        why = waits(str(path)) if waits is not None else None
        if why is None:
            return None
        results[name] = {"artifact": None, "waiting": why}  # as its task says on a young cube
    report = {"path": str(path), "ingested": [], "dates_added": [], "skipped": plan.skipped, "quarantined": [],
              "time_steps": int(cube_manifest.outputs["time_steps"])}
    products: dict[str, Any] = {"cube": cube, "path": str(path), "ingest": report, "stages": results}
    products["summary"] = pipeline_summary(products, datetime.now(UTC))
    return products


@flow(
    name="fusioncube-pipeline",
    flow_run_name="pipeline-{cube}",  # the run list says which cube each run was for
    task_runner=dask_task_runner(),  # type: ignore[arg-type]  # prefect_dask typing: see dask_task_runner
    log_prints=False,
)
def pipeline_flow(
    catalog_path: str = "data_catalog.yaml",
    cube: str = "planet",
    start: date | None = None,
    end: date | None = None,
    stages: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """New scenes of ``cube`` -> cube -> patches -> the enabled stages (default: the catalog's
    ``cubes.<cube>.stages``), each a checkpointed task, stages running concurrently on Dask."""
    load_catalog(catalog_path, env=env).cube(cube)  # a malformed catalog stops here, before any task
    products = pipeline_steps(catalog_path, cube, start, end, stages, env)
    get_run_logger().info("%s", products["summary"]["headline"])
    return products


def run_pipeline(
    catalog_path: str | Path,
    cube: str,
    *,
    start: date | None = None,
    end: date | None = None,
    stages: list[str] | None = None,
    env: dict[str, str] | None = None,
    dask_address: str | None = None,
    workers: int | None = None,
    backfill: bool = False,
    concurrency: int = 4,
) -> dict[str, Any]:
    """Run the pipeline (or backfill) flow for one cube on the Dask cluster the arguments, the
    environment or the catalog name (see :func:`dask_task_runner`), with one Prefect API for the
    flow and its workers (:func:`one_prefect_api`). A script calling it must do so under
    ``if __name__ == "__main__":``: the local cluster's worker processes import the script."""
    refuse_while_a_worker_imports_main()
    catalog = load_catalog(catalog_path, env=env)
    runner = dask_task_runner(catalog, address=dask_address, workers=workers)
    with one_prefect_api():
        if backfill:
            from flows.backfill import backfill_flow

            return backfill_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]  # prefect_dask typing
                str(catalog_path), cube, start, end, concurrency, stages, env)
        return pipeline_flow.with_options(task_runner=runner)(  # type: ignore[arg-type]  # prefect_dask typing
            str(catalog_path), cube, start, end, stages, env)
