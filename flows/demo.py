"""The main job: generate the built-in sample area, ingest it, patch it, run every stage so far."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.ingest import ingest_flow
from tasks.catalog import load_catalog
from tasks.patch import patch_task
from tasks.sample_area_task import sample_area_task

__all__ = ["demo_flow", "DEFAULT_CATALOG", "DEMO_CUBES"]

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
    sample = sample_area_task(str(out / "sample"), size, seed)
    catalog = load_catalog(catalog_file, env=env)
    params = catalog.stages.patch.model_dump()
    products: dict[str, Any] = {"sample": sample, "cubes": {}, "patches": {}, "quicklooks": {}}
    for cube in DEMO_CUBES:
        report = ingest_flow(catalog_file, cube, env=env, progress_bar=progress_bar)
        products["cubes"][cube] = report["path"]
        products["quicklooks"][cube] = report.get("quicklook")
        patches = catalog.stage_dir(cube) / "patches.zarr"
        manifest = patch_task(report["path"], str(patches), **params)
        products["patches"][cube] = {"path": str(patches), **manifest.get("outputs", {})}
    logger.info("demo products under %s", out)
    return products
