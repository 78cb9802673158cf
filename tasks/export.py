"""Cube -> Cloud-Optimized GeoTIFFs, one per date: the cube's dates for GIS tools that read no Zarr.

Any schema-following cube exports (``ingest``'s, ``gapfill``'s ``filled.zarr``, one made by
another tool): each date becomes ``DIR/<cube>_<date>.tif``, its bands the file's bands (float32,
described by their names), NaN as nodata where the cube has no value or ``valid`` is false.

Memory stays bounded whatever the scene size: each date is written window by window (the cube's
spatial chunks) into a tiled GeoTIFF, which GDAL's COG driver then copies with overviews. Each file
is written under a temporary name and renamed into place, so an interrupted export leaves no half
file under a final name.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
from rasterio.windows import Window
from tqdm.auto import tqdm

from tasks.cube import cube_crs, cube_transform, open_cube
from tasks.errors import CubeSchemaError

__all__ = ["export_cube"]

log = logging.getLogger(__name__)

#: rows x columns written per step when the cube's chunks are larger than this (bounded memory)
MAX_WINDOW = 2048


def _labels(times: np.ndarray) -> list[str]:
    """File-name date labels: the day, or the date-time where two dates share a day."""
    days = [str(np.datetime_as_string(t, unit="D")) for t in times]
    if len(set(days)) == len(days):
        return days
    return [str(np.datetime_as_string(t, unit="s")).replace(":", "") for t in times]


def _select(times: pd.DatetimeIndex, dates: Sequence[str] | None, start: str | None,
            end: str | None, cube: Path) -> np.ndarray:
    """Positions of the dates to export: ``dates`` (each a day of the cube) within ``start..end``."""
    keep = np.ones(len(times), dtype=bool)
    days = times.normalize()
    if dates:
        wanted = pd.DatetimeIndex([pd.Timestamp(d) for d in dates]).normalize()
        missing = [d.date().isoformat() for d in wanted if d not in set(days)]
        if missing:
            have = ", ".join(t.date().isoformat() for t in days[:8]) + (" ..." if len(days) > 8 else "")
            raise ValueError(f"{cube}: no date {missing} in the cube (it holds {have})")
        keep &= days.isin(wanted)
    if start:
        keep &= days >= pd.Timestamp(start)
    if end:
        keep &= days <= pd.Timestamp(end)
    if not keep.any():
        raise ValueError(f"{cube}: no date of the cube ({days[0].date()} .. {days[-1].date()}) is within "
                         f"{start or '...'} .. {end or '...'}")
    return np.flatnonzero(keep)


def _windows(height: int, width: int, chunks: tuple[int, int]) -> list[Window]:
    ch, cw = (min(max(c, 1), MAX_WINDOW) for c in chunks)
    return [Window(c0, r0, min(cw, width - c0), min(ch, height - r0))
            for r0 in range(0, height, ch) for c0 in range(0, width, cw)]


def export_cube(
    cube: str | Path,
    out: str | Path,
    *,
    dates: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    bands: Sequence[str] | None = None,
    keep_invalid: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Write one Cloud-Optimized GeoTIFF per date of ``cube`` into the folder ``out``.

    ``dates`` (days, ``YYYY-MM-DD``) and ``start`` / ``end`` choose dates (default: all);
    ``bands`` chooses bands by name (default: all, in the cube's order). Pixels where ``valid`` is
    false are NaN unless ``keep_invalid`` (the values the cube holds there, e.g. under a cloud mask
    that is too wide). Returns the files written, in date order.
    """
    cube = Path(cube)
    ds = open_cube(cube)
    crs = cube_crs(ds)
    if crs is None:
        raise CubeSchemaError(f"{cube}: the cube has no CRS (no grid mapping with crs_wkt), so a GeoTIFF of it "
                              "would be nowhere; write one with spatial_ref attrs crs_wkt")
    transform = cube_transform(ds)
    names = [str(b) for b in ds["band"].values]
    if bands:
        unknown = [b for b in bands if b not in names]
        if unknown:
            raise ValueError(f"{cube}: no band {unknown}; the cube's bands are {names}")
        ds = ds.sel(band=list(bands))
        names = list(bands)
    times = pd.DatetimeIndex(ds["time"].values)
    picked = _select(times, dates, start, end, cube)
    labels = _labels(ds["time"].values)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    height, width = ds.sizes["y"], ds.sizes["x"]
    chunks = ds["data"].chunks
    windows = _windows(height, width, (chunks[2][0], chunks[3][0]) if chunks else (MAX_WINDOW, MAX_WINDOW))
    profile = dict(driver="GTiff", height=height, width=width, count=len(names), dtype="float32", crs=crs,
                   transform=transform, nodata=float("nan"), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=3, BIGTIFF="IF_SAFER")
    written = []
    for i in tqdm(picked, desc=f"export {cube.name}", unit="date", disable=not progress):
        path = out / f"{cube.stem}_{labels[i]}.tif"
        token = uuid.uuid4().hex[:8]
        plain, tmp = path.with_name(f".{path.name}.{token}.tiled"), path.with_name(f".{path.name}.{token}.tmp")
        try:
            with rasterio.open(plain, "w", **profile) as dst:
                dst.descriptions = tuple(names)
                dst.update_tags(DATE=labels[i], SOURCE_CUBE=str(cube))
                for w in windows:
                    rows = slice(int(w.row_off), int(w.row_off + w.height))
                    cols = slice(int(w.col_off), int(w.col_off + w.width))
                    block = ds.isel(time=int(i), y=rows, x=cols)
                    data = block["data"].values.astype(np.float32)
                    if not keep_invalid:
                        data = np.where(block["valid"].values.astype(bool)[None], data, np.nan)
                    dst.write(data, window=w)
            rasterio.shutil.copy(plain, tmp, driver="COG", compress="deflate", predictor="3",
                                 overview_resampling="average", blocksize=256, BIGTIFF="IF_SAFER")
            os.replace(tmp, path)
        finally:
            for f in (plain, tmp):
                if f.exists():
                    f.unlink()
        written.append(path)
    log.info("%s: %d date(s) exported to %s", cube, len(written), out)
    return written
