"""Cube -> Cloud-Optimized GeoTIFFs, one per date: the cube's dates for GIS tools that read no Zarr.
A stage's product of ``(time, y, x)`` layers (``anomalies.zarr``) exports the same way, its layers
as bands.

Any schema-following cube exports (``ingest``'s, ``gapfill``'s ``filled.zarr``, one made by
another tool): each date becomes ``DIR/<cube>_<date>.tif``, its bands the file's bands (float32,
described by their names), NaN as nodata where the cube has no value or ``valid`` is false.

A cube's static layers (``landcover(y, x)`` and the like) go beside them once, as
``DIR/<cube>_<layer>.tif``: a class layer (integer codes with a ``flag_values`` legend, or byte
codes) with its colour table and class names, any other as float32.

Memory stays bounded whatever the scene size: the dates of one stored time chunk are read together
(one decode of each chunk, also for a cube that stores all its dates in one chunk, as gapfill's
does), window by window along the cube's spatial chunks (at most :data:`READ_BYTES` at once), into
one tiled GeoTIFF per date, which GDAL's COG driver then copies with overviews. Each file
is written under a temporary name and renamed into place, so an interrupted export leaves no half
file under a final name.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
import rasterio.shutil
import xarray as xr
from rasterio.windows import Window
from tqdm.auto import tqdm

from tasks.checkpoint import read_manifest
from tasks.cube import cube_crs, cube_transform, open_cube, patches_store_error
from tasks.errors import CubeSchemaError

__all__ = ["export_cube", "export_static_layer", "static_layers"]

log = logging.getLogger(__name__)

#: rows x columns written per step when the cube's chunks are larger than this (bounded memory)
MAX_WINDOW = 2048
#: windows are not halved below this side (a read of many dates stays a few large reads)
MIN_WINDOW = 256
#: largest read at once: the dates of one stored time chunk x bands x a window, float32
READ_BYTES = 256 * 2**20


def _labels(times: np.ndarray) -> list[str]:
    """File-name date labels: the day, or the date-time where two dates share a day."""
    days = [str(np.datetime_as_string(t, unit="D")) for t in times]
    if len(set(days)) == len(days):
        return days
    return [str(np.datetime_as_string(t, unit="s")).replace(":", "") for t in times]


def _select(times: pd.DatetimeIndex, dates: Sequence[str] | None, start: str | None,
            end: str | None, cube: Path) -> np.ndarray:
    """Positions of the dates to export: ``dates`` (each a day of the cube) within ``start..end``."""
    for flag, values in (("--date", dates or []), ("--start", [start] if start else []), ("--end", [end] if end else [])):
        for value in values:
            try:
                pd.Timestamp(value)
            except ValueError as exc:
                raise ValueError(f"{flag} {value}: not a date, YYYY-MM-DD ({exc})") from None
    if start and end and pd.Timestamp(start) > pd.Timestamp(end):
        raise ValueError(f"--start {start} is after --end {end}")
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


def _windows(height: int, width: int, chunks: tuple[int, int], *, dates: int, bands: int) -> list[Window]:
    """Windows over the grid along the cube's spatial chunks, halved until a read of ``dates``
    dates x ``bands`` bands of float32 fits :data:`READ_BYTES`."""
    ch, cw = (min(max(c, 1), MAX_WINDOW) for c in chunks)
    while dates * bands * ch * cw * 4 > READ_BYTES and max(ch, cw) > MIN_WINDOW:
        ch, cw = (max(ch // 2, 1), cw) if ch >= cw else (ch, max(cw // 2, 1))
    return [Window(c0, r0, min(cw, width - c0), min(ch, height - r0))
            for r0 in range(0, height, ch) for c0 in range(0, width, cw)]


def _by_time_chunk(picked: np.ndarray, time_chunks: tuple[int, ...]) -> list[list[int]]:
    """The picked date positions grouped by the stored time chunk they are in: each group is read
    with one decode of its chunks (a gap-filled cube stores all its dates in one chunk)."""
    ends = np.cumsum(time_chunks)
    groups: dict[int, list[int]] = {}
    for i in picked:
        groups.setdefault(int(np.searchsorted(ends, i, side="right")), []).append(int(i))
    return list(groups.values())


def _open_layers(path: Path) -> xr.Dataset:
    """A cube as it is, or a stage's product of ``(time, y, x)`` layers (``anomalies.zarr``'s
    score, flag and background) as a cube of them: one band per layer, flags as 0 / 1."""
    try:
        return open_cube(path)
    except CubeSchemaError as not_a_cube:
        try:
            ds = xr.open_zarr(path, chunks={}, consolidated=None)
        except Exception:
            raise not_a_cube from None  # not even a Zarr store: the cube reader's message says so
        if "patch" in ds.dims:  # stage patch's store: windows cut out of a cube, on no map grid
            raise patches_store_error(path, ds, use="export") from None
        found = [str(v) for v in ds.data_vars if tuple(ds[v].dims) == ("time", "y", "x")]
        layers = [v for v in ("score", "flag", "background") if v in found] + [
            v for v in found if v not in ("score", "flag", "background")]
        if "data" in ds or not layers or not {"time", "y", "x"} <= set(ds.coords):
            raise
        data = xr.concat([ds[v].astype(np.float32) for v in layers], dim="band", coords="minimal")
        data = data.assign_coords(band=layers).transpose("time", "band", "y", "x")
        valid = xr.ones_like(ds[layers[0]], dtype=bool)
        if "score" in layers:  # the anomalies product: no data where its band was not observed
            from tasks.anomalies import UNOBSERVED

            if ds["score"].attrs.get("unobserved") == UNOBSERVED:  # the product says where itself
                valid = ds["score"].notnull()
            else:  # made before 2026-12: score 0 there; the cube it was made from tells, while it exists
                seen = _observed_in_source(path, ds)
                valid = valid if seen is None else seen
        log.info("%s: not a cube; exporting its layers %s as bands", path, layers)
        return xr.Dataset({"data": data, "valid": valid}, coords=ds.coords)


def _observed_in_source(path: Path, ds: xr.Dataset) -> xr.DataArray | None:
    """Where the anomaly stage's band was observed in the cube it read (its manifest names both).
    A product made before 2026-12 holds score 0, not NaN, where nothing was observed, so for it this
    is what tells "no anomaly" from "not seen". None when that cube is gone or no longer on the
    product's grid."""
    manifest = read_manifest(path)
    source = Path(manifest.outputs.get("cube", "")) if manifest is not None else None
    band = manifest.outputs.get("band") if manifest is not None else None
    if source is None or band is None or not source.exists():
        return None
    try:
        cube = open_cube(source)
        seen = cube["valid"] & cube["data"].sel(band=band).notnull()
    except (CubeSchemaError, KeyError):
        return None
    try:  # the product's dates and grid, exactly (the cube may have grown since)
        seen, _ = xr.align(seen, ds["score"], join="exact")
    except ValueError:
        return None
    log.info("%s: not observed in %s (band %s): exported as no data", path, source, band)
    return seen.drop_vars([c for c in seen.coords if c not in ("time", "y", "x")])


def static_layers(ds: xr.Dataset) -> list[str]:
    """The cube's static layers: its ``(y, x)`` data variables."""
    return [str(v) for v in ds.data_vars if tuple(ds[v].dims) == ("y", "x")]


def export_static_layer(ds: xr.Dataset, name: str, path: Path) -> Path:
    """Write the static layer ``name`` of the cube ``ds`` as a Cloud-Optimized GeoTIFF at ``path``.

    A class layer (integer codes 0..255 with a ``flag_values`` legend, or of a byte type) keeps its
    codes, with a colour table and class names from its legend (NLCD's where its codes are
    NLCD's), its ``nodata`` as the file's; any other layer is float32, NaN as nodata.
    """
    from tasks.legends import NLCD_CLASSES
    from tasks.quicklook import class_names, colour_table, write_class_cog

    layer = ds[name]
    attrs = dict(layer.attrs)
    values = np.asarray(layer.values)
    crs, transform = cube_crs(ds), cube_transform(ds)
    is_int = np.issubdtype(values.dtype, np.integer)
    codes = [int(c) for c in np.atleast_1d(attrs.get("flag_values", []))]
    nodata = attrs.get("nodata")
    fits = is_int and (values.size == 0 or (int(values.min()) >= 0 and int(values.max()) <= 255))
    if fits and (codes or values.dtype.itemsize == 1):
        classes = tuple(sorted((set(codes) if codes else {int(c) for c in np.unique(values)}) - {nodata}))
        if nodata is None:  # a code the layer does not use marks "no class" in the file
            from tasks.class_maps import class_fill

            nodata = class_fill(values.astype(np.uint8), None)
        return write_class_cog(path, values.astype(np.uint8), transform=transform, crs=crs,
                               colormap=colour_table(classes, attrs), nodata=int(nodata),
                               names=class_names(classes, attrs, nlcd=set(classes) <= set(NLCD_CLASSES)))
    data = values.astype(np.float32)
    if nodata is not None:
        data[values == nodata] = np.nan
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    profile = dict(driver="COG", height=data.shape[0], width=data.shape[1], count=1, dtype="float32",
                   crs=crs, transform=transform, nodata=float("nan"), compress="deflate", predictor="3",
                   blocksize=256, overview_resampling="average", BIGTIFF="IF_SAFER")
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(data, 1)
            dst.descriptions = (name,)
            if attrs.get("units"):
                dst.update_tags(1, units=str(attrs["units"]))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def export_cube(
    cube: str | Path,
    out: str | Path,
    *,
    dates: Sequence[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    bands: Sequence[str] | None = None,
    keep_invalid: bool = False,
    static: bool = True,
    progress: bool = True,
) -> list[Path]:
    """Write one Cloud-Optimized GeoTIFF per date of ``cube`` into the folder ``out``.

    ``cube`` is a schema-following cube, or a stage's product of ``(time, y, x)`` layers such as
    ``anomalies.zarr``: its layers are then the bands (``score``, ``flag`` as 0 / 1,
    ``background``), no data where the cube it was made from did not observe its band (where
    ``score`` is NaN; for a product made before 2026-12, which held 0 there, from that cube while it
    is still there).

    ``dates`` (days, ``YYYY-MM-DD``) and ``start`` / ``end`` choose dates (default: all);
    ``bands`` chooses bands by name (default: all, in the cube's order). Pixels where ``valid`` is
    false are NaN unless ``keep_invalid`` (the values the cube holds there, e.g. under a cloud mask
    that is too wide), or unless the cube is a gap-filling product and its ``filled`` layer marks
    them: ``filled.zarr`` keeps the cube's ``valid`` and exports its estimates there. With
    ``static`` (the default) the cube's static layers are written too
    (:func:`export_static_layer`). Returns the files written: the dates in date order, then the
    static layers.
    """
    cube = Path(cube)
    ds = _open_layers(cube)
    filled = "filled" in ds and tuple(ds["filled"].dims) == ("time", "y", "x")  # gapfill's estimates
    if filled:
        log.info("%s: a gap-filled cube; its filled pixels are exported with the observed ones", cube)
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
        twice = sorted({b for b in bands if list(bands).count(b) > 1})
        if twice:
            raise ValueError(f"{cube}: band(s) {twice} asked for more than once; give each band once")
        ds = ds.sel(band=list(bands))
        names = list(bands)
    times = pd.DatetimeIndex(ds["time"].values)
    picked = _select(times, dates, start, end, cube)
    labels = _labels(ds["time"].values)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    height, width = ds.sizes["y"], ds.sizes["x"]
    chunks = ds["data"].chunks or ((1,) * ds.sizes["time"], (len(names),), (MAX_WINDOW,), (MAX_WINDOW,))
    profile = dict(driver="GTiff", height=height, width=width, count=len(names), dtype="float32", crs=crs,
                   transform=transform, nodata=float("nan"), tiled=True, blockxsize=256, blockysize=256,
                   compress="deflate", predictor=3, BIGTIFF="IF_SAFER")
    written = []
    bar = tqdm(total=len(picked), desc=f"export {cube.name}", unit="date", disable=not progress)
    for group in _by_time_chunk(picked, chunks[0]):
        paths = [out / f"{cube.stem}_{labels[i]}.tif" for i in group]
        token = uuid.uuid4().hex[:8]
        plain = [p.with_name(f".{p.name}.{token}.tiled") for p in paths]
        tmp = [p.with_name(f".{p.name}.{token}.tmp") for p in paths]
        try:
            with ExitStack() as stack:
                dsts = [stack.enter_context(rasterio.open(f, "w", **profile)) for f in plain]
                for dst, i in zip(dsts, group, strict=True):
                    dst.descriptions = tuple(names)
                    dst.update_tags(DATE=labels[i], SOURCE_CUBE=str(cube),  # the acquisition time, UTC
                                    DATETIME=str(np.datetime_as_string(ds["time"].values[i], unit="s")) + "Z")
                for w in _windows(height, width, (chunks[2][0], chunks[3][0]), dates=len(group), bands=len(names)):
                    rows = slice(int(w.row_off), int(w.row_off + w.height))
                    cols = slice(int(w.col_off), int(w.col_off + w.width))
                    block = ds.isel(time=group, y=rows, x=cols)  # one read for the group's dates
                    data = block["data"].values.astype(np.float32)
                    if not keep_invalid:
                        keep = block["valid"].values.astype(bool)
                        if filled:
                            keep |= block["filled"].values.astype(bool)
                        data = np.where(keep[:, None], data, np.nan)
                    for dst, date in zip(dsts, data, strict=True):
                        dst.write(date, window=w)
            for src, cog, path in zip(plain, tmp, paths, strict=True):
                rasterio.shutil.copy(src, cog, driver="COG", compress="deflate", predictor="3",
                                     overview_resampling="average", blocksize=256, BIGTIFF="IF_SAFER")
                os.replace(cog, path)
                written.append(path)
                bar.update()
        finally:
            for f in plain + tmp:
                if f.exists():
                    f.unlink()
    bar.close()
    log.info("%s: %d date(s) exported to %s", cube, len(written), out)
    for name in static_layers(ds) if static else []:
        written.append(export_static_layer(ds, name, out / f"{cube.stem}_{name}.tif"))
        log.info("%s: static layer %s exported to %s", cube, name, written[-1])
    return written
