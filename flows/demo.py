"""The main job: generate the built-in sample area, then run the pipeline on each of its cubes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.pipeline import pipeline_steps, pipeline_up_to_date
from tasks.catalog import load_catalog
from tasks.sample_area_task import discard_cube_task, sample_area_current, sample_area_task
from tasks.stages import STAGES

__all__ = ["demo_flow", "demo_up_to_date", "DEFAULT_CATALOG", "DEMO_CUBES"]

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "data_catalog.yaml"
DEMO_CUBES = ("planet", "modis_lst")


def demo_env(out_dir: Path) -> dict[str, str]:
    """The variables the sample-area catalog reads its folders from."""
    return {"FUSIONCUBE_SAMPLE": str(out_dir / "sample"), "FUSIONCUBE_DATA": str(out_dir)}


def _products(sample: dict[str, Any]) -> dict[str, Any]:
    return {"sample": sample, "cubes": {}, "patches": {}, "quicklooks": {}, "stages": {}, "summaries": {}}


@flow(name="fusioncube-demo", log_prints=False)
def demo_flow(
    out_dir: str = "fusioncube-demo",
    size: str = "demo",
    seed: int = 0,
    catalog_path: str | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Sample area -> for each cube (Planet with NLCD land cover, MODIS LST): the pipeline steps
    (ingest, patch, the stages its catalog entry enables) in this one flow run."""
    logger = get_run_logger()
    out = Path(out_dir).resolve()
    catalog_file = str(catalog_path or DEFAULT_CATALOG)
    env = demo_env(out)
    sample = sample_area_task(str(out / "sample"), size, seed, progress_bar=progress_bar)
    catalog = load_catalog(catalog_file, env=env)
    if not sample["reused"]:
        for cube in DEMO_CUBES:  # built from a sample area that is gone: start them afresh
            own = ["patches.zarr", *(STAGES[s].output for s in catalog.cube(cube).stages if s in STAGES)]
            discard_cube_task(str(catalog.cube_path(cube)), str(catalog.stage_dir(cube)), own)
    products = _products(sample)
    for cube in DEMO_CUBES:
        run = pipeline_steps(catalog_file, cube, env=env, progress_bar=progress_bar)
        products["cubes"][cube] = run["path"]
        products["quicklooks"][cube] = run["ingest"].get("quicklook")
        stages = dict(run["stages"])
        patch = stages.pop("patch", {})
        products["patches"][cube] = {"path": patch.get("artifact"), **patch.get("outputs", {})}
        products["stages"][cube] = {name: {"path": r.get("artifact"), "quicklook": r.get("quicklook"),
                                           **r.get("stats", {})} for name, r in stages.items()}
        products["summaries"][cube] = run["summary"]["headline"]
        logger.info("%s", run["summary"]["headline"])
    logger.info("demo products under %s", out)
    return products


def demo_up_to_date(
    out_dir: str, size: str = "demo", seed: int = 0, catalog_path: str | None = None
) -> dict[str, Any] | None:
    """The demo's products when every manifest is current and no scene is new, else None.

    Lets the command line answer a no-op re-run in seconds, without starting Prefect or Dask.
    """
    out = Path(out_dir).resolve()
    if not sample_area_current(out / "sample", size=size, seed=seed):
        return None
    catalog = load_catalog(str(catalog_path or DEFAULT_CATALOG), env=demo_env(out))
    products = _products({"path": str(out / "sample"), "reused": True})
    for cube in DEMO_CUBES:
        path = catalog.cube_path(cube)
        quicklook = path.with_name(path.stem + "_newest.png")
        run = pipeline_up_to_date(catalog, cube)
        if run is None or not quicklook.exists():
            return None
        stages = dict(run["stages"])
        patch = stages.pop("patch")
        products["stages"][cube] = {name: {"path": r["artifact"], **r.get("stats", {})} for name, r in stages.items()}
        products["cubes"][cube] = str(path)
        products["quicklooks"][cube] = str(quicklook)
        products["patches"][cube] = {"path": patch["artifact"], **patch["outputs"]}
    return products
