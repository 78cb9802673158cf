"""A catalog for a user's own files: ``fusioncube ingest PATH_OR_GLOB... --out cube.zarr``.

The bands, nodata and grid are read from the first file; the catalog is written beside the cube
(``cube.zarr.catalog.yaml``) so running the same command again appends only the new files.
"""

from __future__ import annotations

import glob as globmod
from pathlib import Path
from typing import Any

import rasterio
import yaml
from rasterio.errors import RasterioIOError

from tasks.catalog import catalog_from_dict
from tasks.errors import SceneError

__all__ = ["adhoc_catalog", "describe_bands"]


def describe_bands(path: str) -> list[dict[str, Any]]:
    """Band entries for a file: one per band, or one per variable of a multi-variable NetCDF."""
    try:
        with rasterio.open(path) as ds:
            if ds.subdatasets:
                names = [s.rsplit(":", 1)[-1] for s in ds.subdatasets]
                return [{"name": n, "index": i + 1} for i, n in enumerate(names)]
            names = [d or f"band{i + 1}" for i, d in enumerate(ds.descriptions)]
            if len(set(names)) != len(names):
                names = [f"band{i + 1}" for i in range(ds.count)]
            return [{"name": n, "index": i + 1} for i, n in enumerate(names)]
    except RasterioIOError as exc:
        raise SceneError(path, f"cannot be read by GDAL ({exc})") from exc


def adhoc_catalog(
    paths: list[str],
    out: Path,
    *,
    crs: str | None = None,
    resolution: float | None = None,
    chunks: int = 256,
    time_chunk: int = 1,
    date: dict[str, str] | None = None,
) -> Path:
    """Write (and validate) a one-source, one-cube catalog for ``paths``; return its path.

    ``date``: the source's date rule beside ``from: auto`` (``pattern``, ``format``, ``default``;
    see ``tasks.catalog.DateRule``).
    """
    patterns = [str(Path(p).resolve()) if not any(c in p for c in "*?[") else p for p in paths]
    files = sorted({f for p in patterns for f in globmod.glob(p, recursive=True) if Path(f).is_file()})
    if not files:
        raise FileNotFoundError(f"no file matches {paths}")
    out = Path(out).resolve()
    bands: list[dict[str, Any]] = []
    band_count: int | None = None
    for f in files:  # the first readable file describes the bands
        try:
            bands = describe_bands(f)
        except SceneError:
            continue
        with rasterio.open(f) as ds:  # files with another band count are quarantined, not misread
            band_count = None if ds.subdatasets else ds.count
        break
    if not bands:
        raise FileNotFoundError(f"none of the {len(files)} file(s) matching {paths} can be read by GDAL")
    grid: dict[str, Any] | None = None
    if crs or resolution:
        if not (crs and resolution):
            with rasterio.open(files[0]) as ds:
                crs = crs or (ds.crs.to_string() if ds.crs else None)
                resolution = resolution or abs(ds.transform.a)
        grid = {"crs": crs, "resolution": resolution}
    raw = {
        "sources": {
            "scenes": {
                "kind": "continuous",
                "glob": [str(Path(p).resolve()) if not Path(p).is_absolute() else p for p in patterns],
                "date": {"from": "auto", **(date or {})},
                **({"band_count": band_count} if band_count else {}),
                "bands": bands,
                "max_nodata_share": 1.0,
            }
        },
        "cubes": {
            "cube": {
                "sources": ["scenes"],
                "grid": grid,
                "chunks": {"time": time_chunk, "y": chunks, "x": chunks},
                "path": str(out),
            }
        },
        "storage": {"root": str(out.parent)},
    }
    path = out.with_name(out.name + ".catalog.yaml")
    catalog_from_dict(raw, path=path)  # validate before writing anything
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# written by `fusioncube ingest`; edit freely\n" + yaml.safe_dump(raw, sort_keys=False))
    return path
