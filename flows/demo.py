"""The main job: generate the built-in sample area, ingest it, patch it, run every stage so far."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.ingest import ingest_steps
from tasks.anomalies import anomalies_key, anomalies_task
from tasks.catalog import load_catalog
from tasks.checkpoint import read_manifest, reusable
from tasks.gapfill import gapfill_key, gapfill_task
from tasks.ingest import plan_ingest
from tasks.patch import fit_patch_size, patch_key, patch_task
from tasks.sample_area_task import discard_cube_task, sample_area_current, sample_area_task

__all__ = ["demo_flow", "demo_up_to_date", "DEFAULT_CATALOG", "DEMO_CUBES"]

DEFAULT_CATALOG = Path(__file__).resolve().parents[1] / "data_catalog.yaml"
DEMO_CUBES = ("planet", "modis_lst")


def demo_env(out_dir: Path) -> dict[str, str]:
    """The variables the sample-area catalog reads its folders from."""
    return {"FUSIONCUBE_SAMPLE": str(out_dir / "sample"), "FUSIONCUBE_DATA": str(out_dir)}


@flow(name="fusioncube-demo", log_prints=False)
def demo_flow(
    out_dir: str = "fusioncube-demo",
    size: str = "demo",
    seed: int = 0,
    catalog_path: str | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Sample area -> Planet cube (with NLCD land cover) and MODIS LST cube -> patches."""
    logger = get_run_logger()
    out = Path(out_dir).resolve()
    catalog_file = str(catalog_path or DEFAULT_CATALOG)
    env = demo_env(out)
    sample = sample_area_task(str(out / "sample"), size, seed, progress_bar=progress_bar)
    catalog = load_catalog(catalog_file, env=env)
    if not sample["reused"]:
        for cube in DEMO_CUBES:  # built from a sample area that is gone: start them afresh
            discard_cube_task(str(catalog.cube_path(cube)), str(catalog.stage_dir(cube)))
    products: dict[str, Any] = {"sample": sample, "cubes": {}, "patches": {}, "quicklooks": {}, "anomalies": {}, "filled": {}}
    for cube in DEMO_CUBES:
        report = ingest_steps(catalog_file, cube, env=env, progress_bar=progress_bar)
        products["cubes"][cube] = report["path"]
        products["quicklooks"][cube] = report.get("quicklook")
        patches = catalog.stage_dir(cube) / "patches.zarr"
        params = catalog.patch_params(cube).model_dump()
        manifest = patch_task(report["path"], str(patches), **params, overwrite=True)
        products["patches"][cube] = {"path": str(patches), **manifest.get("outputs", {})}
        if "anomalies" in catalog.cube(cube).stages:
            out_anom = catalog.stage_dir(cube) / "anomalies.zarr"
            found = anomalies_task(report["path"], str(out_anom), **catalog.stages.anomalies.model_dump(),
                                   overwrite=True)
            products["anomalies"][cube] = {"path": str(out_anom), **found.get("stats", {})}
        if "gapfill" in catalog.cube(cube).stages:
            out_fill = catalog.stage_dir(cube) / "filled.zarr"
            done = gapfill_task(report["path"], str(out_fill), **catalog.stages.gapfill.model_dump(), overwrite=True)
            products["filled"][cube] = {"path": str(out_fill), "quicklook": done.get("quicklook")}
    logger.info("demo products under %s", out)
    return products


def demo_up_to_date(
    out_dir: str, size: str = "demo", seed: int = 0, catalog_path: str | None = None
) -> dict[str, Any] | None:
    """The demo's products when every manifest is current and no scene is new, else None.

    Lets the command line answer a no-op re-run in about a second, without starting Prefect.
    """
    out = Path(out_dir).resolve()
    if not sample_area_current(out / "sample", size=size, seed=seed):
        return None
    catalog = load_catalog(str(catalog_path or DEFAULT_CATALOG), env=demo_env(out))
    products: dict[str, Any] = {"sample": {"path": str(out / "sample"), "reused": True},
                                "cubes": {}, "patches": {}, "quicklooks": {}, "anomalies": {}, "filled": {}}
    for cube in DEMO_CUBES:
        path = catalog.cube_path(cube)
        quicklook = path.with_name(path.stem + "_newest.png")
        if read_manifest(path) is None or not quicklook.exists():
            return None
        plan = plan_ingest(catalog, cube)
        if plan.new or plan.quarantined:
            return None
        patches = catalog.stage_dir(cube) / "patches.zarr"
        p = catalog.patch_params(cube)
        size_, stride = fit_patch_size(path, p.size, p.stride)
        key, _, _ = patch_key(path, size=size_, stride=stride, block=p.block, fractions=p.fractions, seed=p.seed)
        manifest = reusable(patches, key)
        if manifest is None:
            return None
        if "anomalies" in catalog.cube(cube).stages:
            out_anom = catalog.stage_dir(cube) / "anomalies.zarr"
            a = catalog.stages.anomalies
            key, _ = anomalies_key(path, bits=a.bits, band=a.band, lam=a.lam, tile=a.tile, k=a.k)
            found = reusable(out_anom, key)
            if found is None:
                return None
            products["anomalies"][cube] = {"path": str(out_anom), **found.stats}
        if "gapfill" in catalog.cube(cube).stages:
            out_fill = catalog.stage_dir(cube) / "filled.zarr"
            m = read_manifest(out_fill)
            wanted = catalog.stages.gapfill.model_dump()
            if m is None or m.key != gapfill_key(path, m.params)[0] or any(m.params.get(k) != v for k, v in wanted.items()):
                return None
            products["filled"][cube] = {"path": str(out_fill)}
        products["cubes"][cube] = str(path)
        products["quicklooks"][cube] = str(quicklook)
        products["patches"][cube] = {"path": str(patches), **manifest.outputs}
    return products
