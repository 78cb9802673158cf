"""Ingest: new scenes of a catalog source -> validated, warped, appended time steps of a cube.

The new dates are cut into parts (``plan_parts``). Each part is read, profiled and validated with
Great Expectations, warped onto the cube's grid, mosaicked per date and written as a small Zarr
store with the cube's layout (``write_part``); parts are independent, so threads or Dask workers
write several at once. They are attached to the cube in date order (``attach_part``): chunk
folders are moved in when the part starts on a time-chunk boundary, values written otherwise.
Memory is bounded by the parts in flight, whatever the length of the archive.

The cube's manifest (``<cube>.manifest.json``) is the source of truth: it lists the scenes in the
cube with their size and mtime, the scenes quarantined and why, and the number of time steps.
It is rewritten atomically after every attached part. A run killed between an attach and the
manifest update leaves time steps the manifest does not list; the next plan cuts them off. A
killed run's finished parts stay in ``<cube>.zarr.parts/`` and are reused by the next run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time as timer
import uuid
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pandas as pd
import rasterio
import xarray as xr
import zarr
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform, transform_bounds
from zarr.codecs import BloscCodec

from tasks import cube_store
from tasks.catalog import Catalog, CubeSpec, GridSpec, SourceSpec
from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    manifest_path,
    read_manifest,
    stage_key,
    write_manifest,
)
from tasks.class_maps import class_fill, raster_legend
from tasks.cube import (
    DATA_DIMS,
    TIME_ATTRS,
    VALID_DIMS,
    cube_crs,
    cube_transform,
    flag_meanings,
    grid_coords,
    spatial_ref,
    xy_attrs,
    zarr_array,
)
from tasks.discover import (
    SceneRef,
    archive_of,
    discover,
    file_name,
    file_stamp,
    is_remote,
    redact_url,
    unmatched_rasters,
)
from tasks.errors import CatalogError, CubeSchemaError, SceneError, retry_on_io_error
from tasks.locks import DEFAULT_TIMEOUT as DEFAULT_LOCK_TIMEOUT
from tasks.locks import cube_lock
from tasks.provenance import environment
from tasks.validate import ValidationRules, validate_profiles
from tasks.warp import Grid, RawScene, no_crs_reason, read_scene, scene_crs, warp_scene

__all__ = [
    "IngestPlan", "IngestReport", "ScenePlan", "attach_part", "check_cube_bands", "cube_grid", "finish_ingest", "ingest_cube", "missing_static_layers", "warn_future_dates",
    "plan_ingest", "plan_parts", "write_part",
]

log = logging.getLogger(__name__)

INGEST_MODULES = ("tasks.ingest",)  # and every project module it imports (checkpoint.code_modules)
DATA_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


@dataclass
class IngestReport:
    """What an ingest run did, for logs, artifacts and the CLI."""

    cube: str
    path: str
    created: bool = False
    dates_added: list[str] = field(default_factory=list)
    #: dates already in the cube whose slice took newly arrived scenes (mosaicked after its own)
    dates_updated: list[str] = field(default_factory=list)
    #: dates already in the cube rebuilt from their scenes, some changed on disk (``changed_scenes: replace``)
    dates_replaced: list[str] = field(default_factory=list)
    ingested: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    time_steps: int = 0
    seconds: float = 0.0
    bytes_decoded: int = 0
    parts: int = 0
    parts_reused: int = 0  # finished by an earlier, interrupted run and not redone
    #: the cube was rewritten in date order (dates older than its newest were appended)
    reordered: bool = False

    def rows(self) -> list[dict[str, Any]]:
        """One row per scene: status, date, reason: the operator's table."""
        out = [{"scene": r["scene"], "status": "ingested", "date": r["date"], "reason": ""} for r in self.ingested]
        out += [{"scene": r["scene"], "status": "skipped", "date": r.get("date", ""), "reason": r["reason"]} for r in self.skipped]
        out += [{"scene": r["scene"], "status": "quarantined", "date": r.get("date", ""), "reason": r["reason"]} for r in self.quarantined]
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScenePlan:
    """New scenes to ingest, grouped by date, and what was skipped or failed at discovery.
    ``replace``: dates the cube holds whose scenes changed on disk, each with all its scenes as they
    are now (the cube's ``changed_scenes: replace``)."""

    new: list[list[SceneRef]]
    skipped: list[dict[str, Any]]
    quarantined: list[dict[str, Any]]
    replace: list[list[SceneRef]] = field(default_factory=list)


# -- rules -------------------------------------------------------------------------------------
def validation_rules(spec: SourceSpec) -> ValidationRules:
    """The Great Expectations rules a source's scenes must meet, from its catalog entry."""
    return ValidationRules(
        band_count=spec.band_count,
        dtypes=tuple(spec.dtypes) if spec.dtypes else None,
        max_nodata_share=spec.max_nodata_share,
        value_range=spec.valid_range,
        class_codes=tuple(spec.classes) if spec.classes else None,
        require_crs=True,
    )


def _as_date(d: datetime | None) -> str:
    return d.isoformat() if d is not None else ""


# -- the grid ----------------------------------------------------------------------------------
def _scene_bounds(ref: SceneRef, crs: CRS, *, quiet: bool = False) -> tuple[float, float, float, float] | None:
    try:
        with rasterio.open(ref.grid_dataset) as ds:
            src_crs = scene_crs(ds)
            if src_crs is None:
                return None
            return transform_bounds(src_crs, crs, *_footprint(ds), densify_pts=21)
    except Exception as exc:  # unreadable, or a CRS with no transformation to the grid's
        if not quiet:
            log.warning("%s: left out of the new cube's bounds (%s: %s)", ref.path, type(exc).__name__, exc)
        return None


def _footprint(ds: rasterio.io.DatasetReader) -> tuple[float, float, float, float]:
    """A raster's bounds as ``(left, bottom, right, top)`` with left < right and bottom < top
    (``ds.bounds`` has bottom > top for a south-up, bottom-up file)."""
    left, bottom, right, top = ds.bounds
    return min(left, right), min(bottom, top), max(left, right), max(bottom, top)


@dataclass(frozen=True)
class _FirstScene:
    """The grid of the first readable, georeferenced scene: what a new cube's grid defaults to."""

    crs: CRS
    res: tuple[float, float]
    anchor: tuple[float, float]  # a pixel corner: the lattice
    shape: tuple[int, int]  # width, height
    bounds: tuple[float, float, float, float]

    def pixel_in(self, crs: CRS) -> tuple[float, float]:
        """The size this scene's pixels take in ``crs`` (GDAL's suggested warp output: as many
        pixels across its footprint), square."""
        t, _, _ = calculate_default_transform(self.crs, crs, *self.shape, *self.bounds)
        size = float(min(abs(t.a), abs(t.e)))
        return size, size


def _first_scene_grid(refs: Sequence[SceneRef]) -> _FirstScene:
    """CRS, resolution, pixel-corner anchor and footprint of the first readable, georeferenced scene."""
    why: list[str] = []
    for ref in refs:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
                with rasterio.open(ref.grid_dataset) as ds:
                    crs = scene_crs(ds)
                    if crs is None:
                        why.append(f"{ref.path}: {no_crs_reason(ds)}")
                        continue
                    return _FirstScene(crs, (abs(ds.transform.a), abs(ds.transform.e)),
                                       (ds.transform.c, ds.transform.f), (ds.width, ds.height), _footprint(ds))
        except rasterio.errors.RasterioIOError as exc:
            why.append(f"{ref.path}: unreadable ({exc})")
            continue
    shown = "; ".join(why[:5]) + (f"; and {len(why) - 5} more" if len(why) > 5 else "")
    raise CubeSchemaError(
        f"none of the {len(refs)} scene(s) is a readable, georeferenced raster to take the grid from "
        f"({shown}); scenes are placed on the grid by their own georeferencing (GeoTIFF / COG tags, "
        "GeoJP2 / GMLJP2, a NetCDF grid mapping, ...)"
    )


def cube_grid(spec: CubeSpec, plan: ScenePlan, *, name: str) -> tuple[Grid, ScenePlan]:
    """The grid a new cube is created on (the catalog's, completed from the plan's new scenes), and
    the plan it is for.

    A scene whose footprint alone, at the grid's resolution, is over :data:`MAX_GRID_PIXELS` (a
    corrupt or hostile header declaring an enormous size) is quarantined and left out of the grid,
    so it does not stop the other scenes. When every scene is, the grid is refused instead: the
    resolution is then the likelier mistake, and the message names it."""
    refs = [r for g in plan.new for r in g]
    if not refs:
        raise CubeSchemaError(f"cube {name}: no scenes to create it from and no existing cube")
    first = _first_scene_grid(refs)
    crs, res, anchor, bounds = first.crs, first.res, first.anchor, None
    if spec.grid is not None:
        if spec.grid.crs is not None:
            crs = CRS.from_user_input(spec.grid.crs)
        given = spec.grid.xy_resolution
        if given is not None:
            res = given
        elif crs != first.crs:  # the first scene's pixels as they come out in the new CRS
            res = first.pixel_in(crs)
        same_lattice = crs == first.crs and np.allclose(res, first.res, rtol=1e-9)
        anchor = first.anchor if same_lattice else (0.0, 0.0)
        bounds = spec.grid.bounds_in(crs)
    if bounds is None:
        found = [(r, b) for r in refs if (b := _scene_bounds(r, crs)) is not None]
        if not found:
            raise CubeSchemaError(f"cube {name}: no readable, georeferenced scene to take bounds from")
        sides = {id(r): ((b[2] - b[0]) / res[0], (b[3] - b[1]) / res[1]) for r, b in found}
        huge = {i for i, (w, h) in sides.items() if w * h > MAX_GRID_PIXELS}
        if huge and len(huge) < len(found):
            rows = [{"scene": r.id, "path": r.path, "date": _as_date(r.date), "reason": (
                f"its footprint alone is {sides[id(r)][0]:,.0f} x {sides[id(r)][1]:,.0f} px at the cube's "
                f"resolution, over the grid limit of {MAX_GRID_PIXELS:,} px (tasks.ingest.MAX_GRID_PIXELS): "
                "a corrupt header declaring an enormous size, or georeferencing in other units; not read")}
                for r, _ in found if id(r) in huge]
            kept = [[r for r in g if id(r) not in huge] for g in plan.new]
            plan = ScenePlan([g for g in kept if g], plan.skipped, plan.quarantined + rows)
            found = [(r, b) for r, b in found if id(r) not in huge]
        if crs.is_geographic:
            _refuse_antimeridian(found, name=name)
        arr = np.array([b for _, b in found])
        bounds = (arr[:, 0].min(), arr[:, 1].min(), arr[:, 2].max(), arr[:, 3].max())
    return _sane_grid(Grid.from_bounds(crs, bounds, res, anchor=anchor), bounds, name=name), plan


def _refuse_antimeridian(found: list[tuple[SceneRef, tuple[float, float, float, float]]], *, name: str) -> None:
    """A longitude / latitude grid runs from -180 to 180: refuse scenes at the antimeridian with
    a message that says so, instead of a misleading "no pixel" error for a scene across it (GDAL's
    bounds then have left > right) or a grid around the whole globe for tiles either side of it."""
    advice = ("a longitude / latitude cube cannot hold it in one piece: give --crs a projected CRS "
              "that covers the area (e.g. the scenes' UTM zone, EPSG:32660 or EPSG:32601), or ingest "
              "each side into its own cube")
    for ref, (left, _, right, _) in found:
        if left > right:
            raise CubeSchemaError(f"cube {name}: {ref.path} crosses the antimeridian (180 degrees); {advice}")
    spans = sorted((b[0], b[2]) for _, b in found)
    covered, end = 0.0, -np.inf
    for left, right in spans:  # the longitudes the scenes cover, overlaps counted once
        covered += max(0.0, right - max(left, end))
        end = max(end, right)
    if spans[-1][1] - spans[0][0] - covered > 180:
        raise CubeSchemaError(f"cube {name}: the scenes lie on both sides of the antimeridian (180 degrees; "
                              f"longitudes {spans[0][0]:.4g} .. {spans[-1][1]:.4g} with a gap of over 180 "
                              f"degrees between them); {advice}")


#: the most pixels a cube's grid may have: ingest holds a date's (band, y, x) slice in memory
MAX_GRID_PIXELS = 2**30
#: a grid whose pixel is this many times the area's width or height is refused as a units mistake
AREA_PIXELS = 4


def _sane_grid(grid: Grid, area: tuple[float, float, float, float], *, name: str) -> Grid:
    """Refuse a grid whose pixel is over :data:`AREA_PIXELS` times the size of the area it covers
    (a resolution in metres given for a CRS in degrees) or too large to hold a date of in memory (a
    resolution typo), before anything is read or written."""
    rx, ry = grid.resolution
    width, height = area[2] - area[0], area[3] - area[1]
    units = "degrees" if grid.crs.is_geographic else (grid.crs.linear_units or "units")
    hint = (f"; the CRS's units are degrees (10 m is about {10 / 111_320:.1g} degrees)"
            if grid.crs.is_geographic and max(rx, ry) >= 1 else "")
    # a pixel a bit larger than a small area (a field's MODIS pixels) is meant; a point's area is one pixel
    if rx > AREA_PIXELS * width > 0 or ry > AREA_PIXELS * height > 0:
        raise ValueError(
            f"cube {name}: a pixel of {rx:g} x {ry:g} {units} is over {AREA_PIXELS} times the size of the area it covers "
            f"({width:.4g} x {height:.4g} {units}): the grid would be {grid.width} x {grid.height} px; "
            f"give a finer --resolution (grid.resolution){hint}")
    if grid.width * grid.height > MAX_GRID_PIXELS:
        raise ValueError(
            f"cube {name}: a grid of {grid.width} x {grid.height} px at {rx:g} x {ry:g} {units} is over the "
            f"limit of {MAX_GRID_PIXELS:,} px (tasks.ingest.MAX_GRID_PIXELS; a date of one band alone is "
            f"{grid.width * grid.height * 4 / 2**30:.1f} GiB in memory): check --resolution (grid.resolution), "
            "or cover less with --bounds / --aoi")
    return grid


def grid_of_cube(path: Path) -> Grid:
    """The grid of an existing cube store."""
    ds = xr.open_zarr(path)
    crs = cube_crs(ds)
    if crs is None:
        raise CubeSchemaError(f"{path}: the cube has no CRS (spatial_ref)")
    return Grid(crs, cube_transform(ds), ds.sizes["x"], ds.sizes["y"])


def check_cube_bands(path: Path, bands: Sequence[str]) -> None:
    """Refuse to append ``bands`` to an existing cube holding other bands (another product, or a
    catalog edited since): the dates would mix them under one set of names."""
    have = [str(b) for b in xr.open_zarr(path)["band"].values]
    if have != list(bands):
        raise CubeSchemaError(
            f"{path}: the cube holds bands {have}; these scenes give {list(bands)}. Appending would mix "
            "them under one set of names: ingest into another cube (--out), or move this one away to rebuild it"
        )


def check_cube_grid(path: Path, grid: GridSpec) -> None:
    """Refuse a grid (``--crs``, ``--resolution``, ``--bounds``, ``--aoi``) other than the one an
    existing cube was made on: its dates would not line up; appending keeps the cube's grid."""
    have = grid_of_cube(path)
    pixel = (abs(have.transform.a), abs(have.transform.e))
    res = grid.xy_resolution
    differs = []
    if grid.crs is not None and CRS.from_user_input(grid.crs) != have.crs:
        differs.append(f"CRS {grid.crs} (the cube's: {have.crs.to_string()})")
    elif res is not None and not np.allclose(res, pixel, rtol=1e-9):
        differs.append(f"resolution {res[0]:g} x {res[1]:g} (the cube's: {pixel[0]:g} x {pixel[1]:g})")
    elif (box := grid.bounds_in(have.crs)) is not None and any(
            abs(a - b) > r for a, b, r in zip(box, have.bounds, (*pixel, *pixel), strict=True)):
        differs.append(f"bounds {[round(v, 6) for v in box]} (the cube's: {[round(v, 6) for v in have.bounds]})")
    if differs:
        raise CubeSchemaError(
            f"{path}: the cube exists on another grid than the one asked for: {'; '.join(differs)}. Appending "
            "keeps the cube's grid: leave out --crs / --resolution / --bounds / --aoi, or ingest into another "
            "cube (--out)"
        )


#: the share of a scene's footprint outside a grid the scenes fixed above which ingest warns
CUT_WARN_SHARE = 0.05


def scenes_within(plan: ScenePlan, grid: Grid, *, grid_from_scenes: bool = False) -> ScenePlan:
    """``plan`` less the new scenes whose footprint misses the grid (a tile beside the cube's area
    of interest): skipped, with the reason, not quarantined; dates left with no scene are dropped.
    A scene whose footprint cannot be read is kept: reading it quarantines it, naming why.

    ``grid_from_scenes``: the grid is the union of the first ingest's scenes (no bounds given), so a
    later scene reaching beyond it (a neighbouring tile) loses that part unasked: it is warned
    about, with the share cut and how to keep it."""
    box = grid.bounds
    new: list[list[SceneRef]] = []
    skipped = list(plan.skipped)
    for group in plan.new:
        inside = []
        for ref in group:
            b = _scene_bounds(ref, grid.crs, quiet=True)
            if b is None or (b[0] < box[2] and b[2] > box[0] and b[1] < box[3] and b[3] > box[1]):
                inside.append(ref)
                area = (b[2] - b[0]) * (b[3] - b[1]) if b is not None else 0.0
                if grid_from_scenes and b is not None and area > 0:
                    kept = (min(b[2], box[2]) - max(b[0], box[0])) * (min(b[3], box[3]) - max(b[1], box[1]))
                    if 1 - kept / area > CUT_WARN_SHARE:
                        log.warning(
                            "%s: %.0f%% of its footprint lies outside the cube's grid, which the scenes of its "
                            "first ingest fixed; that part is left out. To keep it, ingest into a new cube "
                            "with --bounds or --aoi (the catalog's grid.bounds) covering every scene",
                            ref.path, 100 * (1 - kept / area))
            else:
                skipped.append({"scene": ref.id, "date": _as_date(ref.date),
                                "reason": "outside the cube's bounds" + _lon360_hint(b, grid.crs)})
        if inside:
            new.append(inside)
    return ScenePlan(new, skipped, plan.quarantined, plan.replace)


def _lon360_hint(bounds: tuple[float, float, float, float] | None, crs: CRS) -> str:
    """Why a file may miss a longitude / latitude grid though it covers the area: its ``bounds``
    there run past 180 degrees, a 0..360 grid (ERA5 and many climate grids), which fusioncube does
    not wrap; how to shift it."""
    if bounds is None or not crs.is_geographic or bounds[2] <= 180 + 1e-6:
        return ""
    return (f" (its longitudes run to {bounds[2]:.6g} degrees: a 0..360 grid, which is not wrapped to "
            "-180..180; shift it first, e.g. gdalwarp -t_srs EPSG:4326 --config CENTER_LONG 0, or in "
            "xarray assign_coords(lon=(lon + 180) % 360 - 180).sortby('lon'))")


# -- planning ----------------------------------------------------------------------------------
def _in_range(d: datetime | None, start: date | None, end: date | None) -> bool:
    if d is None:
        return True
    return (start is None or d.date() >= start) and (end is None or d.date() <= end)


def plan_ingest(
    catalog: Catalog,
    cube: str,
    *,
    start: date | None = None,
    end: date | None = None,
) -> ScenePlan:
    """Which scenes are new for ``cube`` (by id, size and mtime), grouped by date. A new scene of a
    date already in the cube (a neighbouring tile delivered later) is new too: ``plan_parts`` puts
    it in a part that is mosaicked into that date's slice.

    A file quarantined before is tried again when it changed on disk, or when the cube's ingest
    settings changed since (a date pattern, a band's scale, a mask rule: what was refused under
    the old rule may pass the new one)."""
    spec = catalog.cube(cube)
    manifest = read_manifest(catalog.cube_path(cube))
    check_value_rules(catalog, cube, manifest)
    done: dict[str, Any] = manifest.outputs.get("scenes", {}) if manifest else {}
    same_rules = manifest is not None and manifest.outputs.get("rules") == ingest_rules(catalog, cube)
    bad: dict[str, Any] = manifest.outputs.get("quarantine", {}) if manifest and same_rules else {}
    if spec.time_range is not None:
        start = max(filter(None, [start, spec.time_range[0]]), default=None)
        end = min(filter(None, [end, spec.time_range[1]]), default=None)
    refs: list[SceneRef] = []
    skipped: list[dict[str, Any]] = []
    quarantined: list[dict[str, Any]] = []
    def unchanged(path: str) -> bool:  # a single-date file already in the cube: not reopened
        name = file_name(path)
        return (name in done and done[name].get("stamp") == file_stamp(path)
                and not _mask_changed(done[name], path))

    for source in spec.sources:
        found, failed = discover(catalog, source, skip=unchanged)
        for p, reason in failed:
            name = file_name(p)
            if name in bad and bad[name].get("stamp") == file_stamp(p):
                skipped.append({"scene": name, "date": "", "reason": f"quarantined before: {bad[name]['reason']}"})
            else:
                quarantined.append({"scene": name, "path": p, "reason": reason})
        refs += found
    globs = [g for s in [*spec.sources, *spec.static.values()] for g in catalog.source(s).glob]
    for s in unmatched_rasters(globs, catalog):
        more = f" and {len(s.names) - 1} more {s.suffix} file(s)" if len(s.names) > 1 else ""
        skipped.append({"scene": s.names[0] + more, "date": "", "reason": (
            f"{s.suffix} files in {s.root}, where the sources of cube {cube} take only {', '.join(s.taken)} files; "
            f"add a glob such as {s.root}/**/*{s.suffix} to the source in the catalog (`fusioncube ingest "
            f"{s.root} --out CUBE` writes one for each kind of file it finds)")})
    new: list[SceneRef] = []
    changed: list[SceneRef] = []
    for ref in refs:
        stamp = ref.file_stamp()
        row = {"scene": ref.id, "date": _as_date(ref.date)}
        if ref.id in done and done[ref.id].get("stamp") == stamp and not _mask_changed(done[ref.id], ref.path):
            continue  # already in the cube: a no-op, not news
        if ref.id in bad and bad[ref.id].get("stamp") == stamp:
            skipped.append({**row, "reason": f"quarantined before: {bad[ref.id]['reason']}"})
        elif not _in_range(ref.date, start, end):
            continue
        elif ref.id in done and spec.changed_scenes == "replace" and done[ref.id].get("date") == row["date"]:
            changed.append(ref)
        elif ref.id in done:
            skipped.append({**row, "reason": _changed_reason(done[ref.id], stamp, row["date"], cube)})
        else:
            new.append(ref)
    replace = _replace_groups(catalog, spec, done, changed, new, skipped, bad) if changed else []
    new.sort(key=lambda r: (r.date or datetime.min, r.path, r.time_index or 0))
    grouped = [_one_step_per_file(list(g), skipped)
               for _, g in groupby(new, key=lambda r: r.date.date() if r.date else None)]
    return ScenePlan(grouped, skipped, quarantined, replace)


def _mask_record(ref: SceneRef) -> dict[str, Any]:
    """The scene's mask file (a UDM2, QA_PIXEL, SCL or QC sidecar), as a path from the scene's
    folder (an archive moved with its masks stays the same), and its stamp, for the cube's
    manifest: a re-delivered mask changes the scene. Remote masks are not stamped (an object
    store's objects do not change; a HEAD per scene per run would cost more than it tells)."""
    if ref.mask_path is None or is_remote(ref.mask_path) and not archive_of(ref.mask_path):
        return {}
    try:
        stamp = file_stamp(ref.mask_path)
    except OSError:  # gone since the scene was read: nothing to compare with next time
        return {}
    return {"mask": {"file": os.path.relpath(ref.mask_path, os.path.dirname(ref.path)), "stamp": stamp}}


def _mask_changed(record: dict[str, Any], scene_path: str) -> bool:
    """The mask file that a scene of the cube (now at ``scene_path``) was read with has changed on
    disk since, or is gone."""
    mask = record.get("mask")
    if not mask:
        return False
    try:
        return bool(file_stamp(os.path.normpath(os.path.join(os.path.dirname(scene_path), mask["file"])))
                    != mask["stamp"])
    except OSError:
        return True


def _changed_reason(was: dict[str, Any], stamp: dict[str, int], date: str, cube: str) -> str:
    """Why a scene that changed on disk since it was ingested is not taken (``changed_scenes: keep``,
    or its date changed), and how to take it."""
    if was.get("date") != date:
        return (f"changed on disk since it was ingested, and its date with it ({was.get('date')} -> {date}); "
                "the cube keeps what it ingested: rebuild the cube to take the new file")
    how = (f"set `changed_scenes: replace` on cube {cube} in the catalog (or run `fusioncube ingest` with "
           "--changed-scenes replace) to rebuild its date from the new file")
    if was.get("stamp") == stamp:  # the scene is as it was: its mask file is not
        return (f"its mask file {file_name(was['mask']['file'])} changed on disk (or is gone) since the scene was "
                f"ingested; the cube keeps the mask it read: {how}")
    if was.get("stamp", {}).get("size") == stamp.get("size"):
        return ("its modification time changed since it was ingested, not its size (rewritten in place, or "
                "copied without keeping times: `cp -p`, `rsync -t` keep them); the cube keeps what it "
                f"ingested: {how}")
    return f"changed on disk since it was ingested (another size); the cube keeps what it ingested: {how}"


def _replace_groups(
    catalog: Catalog, spec: CubeSpec, done: dict[str, Any], changed: list[SceneRef], new: list[SceneRef],
    skipped: list[dict[str, Any]], bad: dict[str, Any],
) -> list[list[SceneRef]]:
    """The dates to rebuild for ``changed`` scenes, each with every scene of that date as it is now:
    the changed ones, the unchanged ones (opened again: discovery left them closed) and new ones of
    the date (taken out of ``new``). A date is kept as it is, its changed scenes skipped with the
    reason, while one of its scenes is gone from the sources or was quarantined in its new state:
    a truncated re-delivery must not cost the slice what the old file gave it."""
    days = {_as_date(r.date)[:10] for r in changed}  # YYYY-MM-DD of datetimes
    wanted = {sid.split("#t")[0] for sid, rec in done.items() if rec.get("date", "")[:10] in days}
    now: dict[str, SceneRef] = {}
    unreadable: set[str] = set()
    for source in spec.sources:
        found, failed = discover(catalog, source, skip=lambda p: file_name(p) not in wanted)
        now.update({r.id: r for r in found})
        unreadable |= {file_name(p) for p, _ in failed}
    groups: list[list[SceneRef]] = []
    for day in sorted(days):
        theirs = [sid for sid, rec in done.items() if rec.get("date", "")[:10] == day]
        blocked = [sid for sid in theirs if sid.split("#t")[0] in unreadable or (
            sid in now and sid in bad and bad[sid].get("stamp") == now[sid].file_stamp())]
        gone = [sid for sid in theirs if sid not in now and sid not in blocked]
        mine = [r for r in changed if _as_date(r.date)[:10] == day]
        if gone or blocked:
            why = (f"{blocked[0]} of this date cannot be taken in its new state (quarantined)" if blocked else
                   f"{gone[0]}, ingested into this date, is gone from the sources")
            skipped += [{"scene": r.id, "date": _as_date(r.date), "reason": f"changed on disk, but its date's "
                         f"slice is kept: {why}"} for r in mine]
            continue
        late = [r for r in new if _as_date(r.date)[:10] == day]
        new[:] = [r for r in new if _as_date(r.date)[:10] != day]
        group = sorted([now[sid] for sid in theirs] + late, key=lambda r: (r.path, r.time_index or 0))
        groups.append(group)
    return groups


def _one_step_per_file(group: list[SceneRef], skipped: list[dict[str, Any]]) -> list[SceneRef]:
    """Of a date's scenes, each file's first time step: a sub-daily series in one file (hourly
    ERA5) would otherwise be mosaicked into its date's slice, mixing the hours. The later steps
    are reported as skipped, with the way to take them."""
    kept: list[SceneRef] = []
    seen: set[str] = set()
    for ref in group:
        if ref.time_index is not None and ref.path in seen:
            skipped.append({"scene": ref.id, "date": _as_date(ref.date), "reason": (
                f"another time step of {file_name(ref.path)} on this date ({ref.date:%H:%M}); the cube holds one "
                "slice per date and its first step is taken: resample sub-daily data to daily first "
                "(e.g. xarray's ds.resample(time='1D').mean())")})
            continue
        seen.add(ref.path)
        kept.append(ref)
    times = sorted(r.date for r in kept if r.date is not None)
    if times and times[-1] - times[0] > SAME_PASS:
        log.warning("%s: %d scenes acquired from %s to %s UTC (%.1f h apart) go into one slice, the clear pixels "
                    "of the earliest winning where they overlap; for a sub-daily series (or two satellites' "
                    "passes) give one cube per time of day, or resample to daily first", times[0].date(), len(kept),
                    f"{times[0]:%H:%M}", f"{times[-1]:%H:%M}", (times[-1] - times[0]).total_seconds() / 3600)
    return kept


#: scenes of one date acquired within this of each other are taken for one pass (adjacent tiles)
SAME_PASS = timedelta(hours=1)


# -- reading, validating and warping one group of dates ------------------------------------------
@dataclass
class DateResult:
    """One date of the cube: the mosaic of its scenes on the grid."""

    date: datetime
    data: np.ndarray  # (band, y, x) float32
    valid: np.ndarray  # (y, x) bool
    scenes: list[SceneRef]


def _safe(fn: Callable[..., Any], ref: SceneRef, *args: Any) -> Any:
    """Run ``fn`` and turn any failure into a ``SceneError`` naming the scene: one bad file never
    stops the batch."""
    try:
        return fn(*args)
    except SceneError as exc:
        return exc
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # GDAL and numpy failures on corrupt data come in many types
        return SceneError(ref.path, f"{type(exc).__name__}: {exc}")


def _parallel(fn: Callable[..., Any], items: Sequence[Any], workers: int) -> list[Any]:
    if not items:
        return []
    delayed = [dask.delayed(fn, pure=False)(*it) for it in items]
    return list(dask.compute(*delayed, scheduler="threads", num_workers=workers))


def read_and_validate(
    refs: Sequence[SceneRef], specs: dict[str, SourceSpec], grid: Grid, *, workers: int = 2
) -> tuple[list[RawScene], list[dict[str, Any]]]:
    """Read scenes in parallel and validate their profiles with Great Expectations in one call.

    Returns the scenes that passed and quarantine rows ``{scene, path, date, reason}``.
    """
    read = _parallel(lambda r: _safe(read_scene, r, r, specs[r.source], grid), [(r,) for r in refs], workers)
    quarantined: list[dict[str, Any]] = []
    ok: list[RawScene] = []
    for ref, res in zip(refs, read, strict=True):
        if isinstance(res, SceneError):
            quarantined.append({"scene": ref.id, "path": ref.path, "date": _as_date(ref.date), "reason": res.reason})
        else:
            ok.append(res)
    passed: list[RawScene] = []
    for source in sorted({r.ref.source for r in ok}):
        batch = [r for r in ok if r.ref.source == source]
        failures = validate_profiles([r.profile for r in batch], validation_rules(specs[source]))
        for raw in batch:
            reasons = failures.get(raw.profile.scene, [])
            if reasons:
                quarantined.append({
                    "scene": raw.ref.id, "path": raw.ref.path, "date": _as_date(raw.ref.date),
                    "reason": "failed validation: " + "; ".join(reasons),
                })
            else:
                passed.append(raw)
    return passed, quarantined


def process_dates(
    groups: Sequence[Sequence[SceneRef]], specs: dict[str, SourceSpec], grid: Grid, *, workers: int = 2
) -> tuple[list[DateResult], list[dict[str, Any]], int]:
    """Read, validate, warp and mosaic several dates. Returns (dates, quarantined, bytes decoded).

    The dates' data are consecutive slices of one ``(dates, bands, H, W)`` array, and each
    date's first scene is warped straight into its slice: no per-scene array to stack and copy
    afterwards (:func:`_stacked`), which saves a pass over, and a fresh allocation of, the
    part's whole size.
    """
    refs = [r for g in groups for r in g]
    passed, quarantined = read_and_validate(refs, specs, grid, workers=workers)
    nbytes = sum(r.raw_nbytes for r in passed)
    days = sorted({raw.ref.date.date() for raw in passed if raw.ref.date is not None})
    nbands = {raw.data.shape[0] for raw in passed}
    block = None
    if days and len(nbands) == 1 and all(specs[raw.ref.source].kind != "categorical" for raw in passed):
        block = np.empty((len(days), nbands.pop(), grid.height, grid.width), np.float32)
    index = {day: t for t, day in enumerate(days)}
    lead: dict[int, int] = {}  # date -> its first scene (index in passed), warped into its slice
    for i, raw in enumerate(passed):
        assert raw.ref.date is not None
        lead.setdefault(index[raw.ref.date.date()], i)
    slot = {i: block[t] for t, i in lead.items()} if block is not None else {}
    warped = _parallel(
        lambda i, raw: _safe(partial(warp_scene, out=slot.get(i)), raw.ref, raw, specs[raw.ref.source], grid),
        list(enumerate(passed)), workers,
    )
    by_date: dict[date, list[tuple[RawScene, Any]]] = {}
    for raw, res in zip(passed, warped, strict=True):
        if isinstance(res, SceneError):
            quarantined.append({"scene": raw.ref.id, "path": raw.ref.path, "date": _as_date(raw.ref.date), "reason": res.reason})
            continue
        assert raw.ref.date is not None
        by_date.setdefault(raw.ref.date.date(), []).append((raw, res))
    results = []
    for day in sorted(by_date):
        items = by_date[day]
        if block is not None:
            target, (data, valid) = block[index[day]], items[0][1]
            if not np.shares_memory(data, target):  # the date's first scene failed to warp; the next leads
                np.copyto(target, data)
                items[0] = (items[0][0], (target, valid))
        data, valid = cube_store.mosaic([res for _, res in items])
        first = min(r.ref.date for r, _ in items if r.ref.date is not None)  # all dated (asserted above)
        results.append(DateResult(first, data, valid, [r.ref for r, _ in items]))
    return results, quarantined, nbytes


def _stacked(views: Sequence[np.ndarray]) -> np.ndarray:
    """``np.stack(views)``, without a copy when the views are already the consecutive slices of
    one array (as :func:`process_dates` makes them)."""
    base = views[0].base if views else None
    if (
        isinstance(base, np.ndarray) and base.ndim == views[0].ndim + 1 and base.shape[0] == len(views)
        and all(v.base is base and v.shape == base.shape[1:] and v.ctypes.data == base[i].ctypes.data
                for i, v in enumerate(views))
    ):
        return base
    return np.stack(views)


# -- static layers -----------------------------------------------------------------------------
def _discover_static(catalog: Catalog, spec: CubeSpec) -> dict[str, tuple[list[SceneRef], list[tuple[str, str]]]]:
    """``discover`` of each static layer's source, by layer name."""
    return {var: discover(catalog, source) for var, source in spec.static.items()}


def static_layers(
    catalog: Catalog, spec: CubeSpec, grid: Grid,
    found: dict[str, tuple[list[SceneRef], list[tuple[str, str]]]] | None = None,
) -> tuple[dict[str, xr.DataArray], list[dict[str, Any]]]:
    """Categorical / static layers (e.g. NLCD land cover) on the cube's grid (``found``: their
    sources already discovered, ``_discover_static``)."""
    layers: dict[str, xr.DataArray] = {}
    quarantined: list[dict[str, Any]] = []
    y, x = grid_coords(grid.transform, grid.height, grid.width)
    found = found if found is not None else _discover_static(catalog, spec)
    for var, source in spec.static.items():
        src = catalog.source(source)
        refs, failed = found[var]
        quarantined += [{"scene": file_name(p), "path": p, "reason": r} for p, r in failed]
        passed, bad = read_and_validate(refs, {source: src}, grid)
        quarantined += bad
        if not passed:
            log.warning("static layer %s: no usable file from source %s; the cube has no %s", var, source, var)
            continue
        # the declared nodata, else a code no file uses (class 0 stays a class)
        nodata = class_fill([r.data for r in passed], passed[0].nodata)
        if passed[0].nodata is None:
            log.info("static layer %s: %s declares no nodata; code %d marks where it has no class",
                     var, file_name(passed[0].ref.path), nodata)
        codes = None
        for raw in passed:
            c, v = warp_scene(raw, src, grid, fill=nodata)
            codes = c if codes is None else np.where(codes == nodata, c, codes)
        attrs: dict[str, Any] = {"long_name": var, "source": source, "nodata": nodata, "grid_mapping": "spatial_ref"}
        if src.classes:
            attrs["flag_values"] = list(src.classes)
            attrs["flag_meanings"] = flag_meanings(src.classes.values())
            colors = _colormap(passed[0].ref)
            if colors:
                attrs["flag_colors"] = [colors.get(k, "#000000") for k in src.classes]
        elif codes is not None:  # no classes in the catalog (`--layer NAME=FILE`): the file's own legend, if it has one
            attrs.update(_file_legend(passed[0].ref, codes, nodata))
        layers[var] = xr.DataArray(codes, dims=("y", "x"), coords={"y": y, "x": x}, attrs=attrs)
    return layers, quarantined


def missing_static_layers(catalog: Catalog, cube: str) -> dict[str, str]:
    """The static layers of the cube's catalog entry (name -> source) that the existing cube lacks."""
    static = catalog.cube(cube).static
    if not static:
        return {}
    with xr.open_zarr(catalog.cube_path(cube), consolidated=None) as ds:
        return {v: s for v, s in static.items() if v not in ds.variables}


def add_static_layers(catalog: Catalog, cube: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Add the static layers of the cube's catalog entry that an existing cube lacks (e.g. a land
    cover map given to ``fusioncube ingest --layer`` after the cube was made), read onto its grid.

    Each layer is written beside the cube's arrays under a temporary name and renamed into place,
    then the metadata is consolidated: a killed run leaves no half layer that looks finished.
    Returns (the layers added, the quarantined files).
    """
    path = catalog.cube_path(cube)
    spec = catalog.cube(cube)
    missing = missing_static_layers(catalog, cube)
    if not missing:
        return [], []
    with xr.open_zarr(path, consolidated=None) as ds:
        chunks = ds["data"].encoding.get("chunks", (1, 1, 256, 256))[-2:]
    layers, quarantined = static_layers(catalog, spec.model_copy(update={"static": missing}), grid_of_cube(path))
    for var, layer in layers.items():
        tmp = f".tmp-{var}-{uuid.uuid4().hex[:8]}"
        layer.drop_vars(["y", "x"]).to_dataset(name=tmp).to_zarr(
            path, mode="a", zarr_format=3, consolidated=False, encoding={tmp: {"chunks": tuple(chunks)}})
        os.replace(path / tmp, path / var)
        zarr.consolidate_metadata(str(path))
        log.info("%s: added static layer %s", path, var)
    return list(layers), quarantined


def _file_legend(ref: SceneRef, codes: np.ndarray, nodata: int) -> dict[str, Any]:
    """The legend of a class map's file for the ``codes`` it has on the grid (less ``nodata``):
    :func:`tasks.class_maps.raster_legend`; ``{}`` when the file has none or cannot be opened."""
    try:
        with rasterio.open(ref.path) as ds:
            return raster_legend(ds, np.setdiff1d(np.unique(codes), [nodata]))
    except rasterio.errors.RasterioIOError:
        return {}


def _colormap(ref: SceneRef) -> dict[int, str]:
    try:
        with rasterio.open(ref.path) as ds:
            cmap = ds.colormap(1)
    except ValueError:  # no colour table
        return {}
    return {k: "#{:02x}{:02x}{:02x}".format(*v[:3]) for k, v in cmap.items()}


# -- writing -----------------------------------------------------------------------------------
def _dates_dataset(results: Sequence[DateResult], grid: Grid, bands: Sequence[str]) -> xr.Dataset:
    """Time steps (none for a template) of a cube as a Dataset."""
    y, x = grid_coords(grid.transform, grid.height, grid.width)
    times = pd.DatetimeIndex([r.date for r in results]).as_unit("ns")
    shape = (len(results), grid.height, grid.width)
    data = _stacked([r.data for r in results]) if results else np.zeros((0, len(bands), *shape[1:]), np.float32)
    valid = np.stack([r.valid for r in results]) if results else np.zeros(shape, bool)
    return xr.Dataset(
        {
            "data": (DATA_DIMS, data),
            "valid": (VALID_DIMS, valid),
        },
        coords={"time": times, "band": np.array(list(bands), dtype=object), "y": y, "x": x},
    )


def _create_cube(
    path: Path, ds: xr.Dataset, grid: Grid, layers: dict[str, xr.DataArray], spec: CubeSpec, attrs: dict[str, Any]
) -> None:
    ds = ds.assign_coords(spatial_ref=spatial_ref(grid.crs, grid.transform))
    for v in layers:
        ds[v] = layers[v]
    ds["data"].attrs.update(long_name="observed values in physical units", grid_mapping="spatial_ref")
    ds["valid"].attrs.update(long_name="observed and clear", grid_mapping="spatial_ref")
    for axis, attrs_ in xy_attrs(grid.crs).items():
        ds[axis].attrs.update(attrs_)
    ds["time"].attrs.update(TIME_ATTRS)
    ds.attrs.update(attrs)
    encoding = _encoding(spec, grid, ds.sizes["band"], list(layers))
    with atomic_artifact(path, overwrite=False) as tmp, cube_store.no_consolidation_warning():
        ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=True, encoding=encoding)


TIME_UNITS = "microseconds since 1970-01-01T00:00:00"  # scene times keep their sub-second part


def ingest_rules(catalog: Catalog, cube: str) -> str:
    """A digest of how ``cube``'s scenes are read: its catalog entry's ingest settings and its
    sources' (globs, dates, bands, masks, units). Quarantine verdicts hold while it is unchanged."""
    spec = catalog.cube(cube)
    text = json.dumps([spec.ingest_json(), *(catalog.source(s).model_dump_json() for s in spec.sources)])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


#: per band, what turns its raw values into the cube's
_BAND_VALUE_KEYS = ("index", "scale", "offset", "nodata", "valid_min", "valid_max")
#: per source, what else sets the cube's values and its valid mask
_SOURCE_VALUE_KEYS = ("valid_range", "radiometry", "resampling")


def value_rules(catalog: Catalog, cube: str) -> dict[str, Any]:
    """What sets the values and the valid mask of ``cube``'s time steps, source by source: each
    band's index, scale, offset, nodata and valid range, the source's valid range, radiometry,
    resampling and mask rule (less where its file is found). Recorded in the cube's manifest: dates
    read under other rules would be in other units than the cube's (:func:`check_value_rules`)."""
    rules: dict[str, Any] = {}
    for name in catalog.cube(cube).sources:
        src = catalog.source(name)
        dumped = src.model_dump(mode="json")
        rules[name] = {
            "bands": {b["name"]: {k: b.get(k) for k in _BAND_VALUE_KEYS} for b in dumped["bands"]},
            **{k: dumped.get(k) for k in _SOURCE_VALUE_KEYS},
            "mask": {k: v for k, v in dumped["mask"].items() if k != "sidecar"} if dumped.get("mask") else None,
        }
    return rules


def source_globs(catalog: Catalog, cube: str) -> dict[str, list[str]]:
    """Where ``cube``'s scenes are looked for, source by source, as the catalog gave them with its
    ``${VARIABLES}`` filled in (credentials in URLs redacted): the cube's manifest records it,
    since the catalog alone does not say what those variables were."""
    return {name: [redact_url(g) for g in catalog.source(name).glob] for name in catalog.cube(cube).sources}


def _rule_changes(was: dict[str, Any], now: dict[str, Any], where: str = "") -> list[str]:
    """``key old -> new`` for each leaf that differs between two nested rule dicts (keys of one only
    are left out: a band or source added or dropped is refused elsewhere)."""
    changes: list[str] = []
    for key in was.keys() & now.keys():
        a, b = was[key], now[key]
        name = f"{where}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            changes += _rule_changes(a, b, f"{name}.")
        elif a != b and not (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)):
            changes.append(f"{name} {a} -> {b}")
    return sorted(changes)


def _coarser_than_scenes(catalog: Catalog, source: str, manifest: Manifest) -> bool:
    """Whether the cube's grid (as its manifest records it) is coarse enough against a scene of
    ``source`` (the first its globs find) for values to take the area average there by default."""
    from affine import Affine

    from tasks.class_maps import target_pixel_scale
    from tasks.discover import expand_globs
    from tasks.warp import AVERAGE_FROM_SCALE

    grid = manifest.outputs.get("grid") or {}
    files = expand_globs(catalog.source(source).glob[:1])
    if not files or not grid.get("transform"):
        return False
    try:
        with rasterio.open(files[0]) as ds:
            if ds.crs is None:
                return False
            scale = target_pixel_scale(ds.transform, ds.crs, Affine(*grid["transform"]), CRS.from_user_input(grid["crs"]),
                                       (int(grid["height"]), int(grid["width"])))
    except (rasterio.errors.RasterioIOError, ValueError, KeyError):
        return False
    return scale is not None and scale >= AVERAGE_FROM_SCALE


def value_rule_changes(catalog: Catalog, cube: str, manifest: Manifest | None) -> list[str]:
    """How the catalog's :func:`value_rules` of ``cube`` differ from those its ``manifest``
    records (``planet.bands.blue.scale 0.0001 -> 0.00011``); none for a cube made before they were
    recorded. A source's ``resampling`` is left out: it changes how values are interpolated onto
    the grid, not their units (:func:`check_value_rules` warns of it)."""
    was = manifest.outputs.get("value_rules") if manifest is not None else None
    return [c for c in _rule_changes(was, value_rules(catalog, cube)) if ".resampling " not in c] if was else []


def check_value_rules(catalog: Catalog, cube: str, manifest: Manifest | None) -> None:
    """Refuse to add to ``cube`` under other value rules than the ones it was built with (a band's
    scale edited in the catalog): the new dates would silently be in other units. Warn of a changed
    resampling, and of a cube made before the rules were recorded, whose values fusioncube warped
    onto a coarser grid bilinearly where it now takes the area average (:func:`tasks.warp.value_resampling`)."""
    was = manifest.outputs.get("value_rules") if manifest is not None else None
    now = value_rules(catalog, cube)
    if was:
        for change in _rule_changes(was, now):
            if ".resampling " in change:
                log.warning("cube %s: %s since it was built; later dates are warped so (on a grid as fine as "
                            "the scenes bilinear and the default agree)", cube,
                            change.replace(".resampling", "'s resampling").replace("None", "default"))
    elif manifest is not None and manifest.outputs.get("time_steps"):
        loose = [name for name, rules in now.items() if rules["resampling"] is None
                 and catalog.source(name).kind == "continuous" and _coarser_than_scenes(catalog, name, manifest)]
        if loose:
            log.warning("cube %s was made by a fusioncube that warped values onto a grid coarser than the scenes "
                        "by bilinear interpolation; this one takes the area average there: to append as before, set "
                        "`resampling: bilinear` on source(s) %s in %s", cube, ", ".join(loose), catalog.path or "the catalog")
    changes = value_rule_changes(catalog, cube, manifest)
    if changes:
        where = f" ({catalog.path})" if catalog.path else ""
        raise CatalogError(
            f"cube {cube}: the catalog's rules for its values changed since it was built{where}: "
            f"{'; '.join(changes[:6])}{' ...' if len(changes) > 6 else ''}. New dates would be read under other "
            f"rules (other units, or another valid mask) than the cube's "
            f"{manifest.outputs.get('time_steps', 0) if manifest else 0} time steps: put the old "
            f"values back, or move the cube away ({catalog.cube_path(cube)}) to build it again under the new rules")


def _cube_manifest(
    name: str, spec: CubeSpec, scenes: dict[str, Any], quarantine: dict[str, Any], dates: list[str], steps: int,
    grid: Grid, rules: str, values: dict[str, Any], globs: dict[str, list[str]],
) -> Manifest:
    scene_digest = hashlib.sha256(json.dumps(scenes, sort_keys=True).encode()).hexdigest()[:20]
    params = json.loads(spec.ingest_json())
    code = code_version(*INGEST_MODULES)
    return Manifest(
        stage="ingest",
        key=stage_key("ingest", inputs={"scenes": scene_digest}, params=params, code=code),
        params=params,
        inputs={"scenes": scene_digest},
        code_version=code,
        outputs={
            "cube": name, "scenes": scenes, "quarantine": quarantine, "rules": rules, "value_rules": values,
            "globs": globs,
            "dates": dates, "time_steps": steps,
            "grid": {"crs": grid.crs.to_string(), "transform": list(grid.transform)[:6], "width": grid.width, "height": grid.height},
        },
    )


def _record_quarantine(quarantine: dict[str, Any], rows: Sequence[dict[str, Any]]) -> None:
    """Remember quarantined files with their size and mtime: unchanged, they are not re-read."""
    for q in rows:
        try:
            stamp = file_stamp(q["path"])
        except OSError:  # gone since
            stamp = {}
        quarantine[q["scene"]] = {"reason": q["reason"], "stamp": stamp}


# -- parts: groups of dates processed independently, attached to the cube in date order ---------
# A part is a small Zarr store with the cube's exact array layout holding a few consecutive new
# dates. Parts are independent, so any number are read, validated, warped and written at once
# (threads here, Dask workers in the pipeline flow). Attaching a part renames its chunk folders
# into the cube (no data copied) when it starts on a time-chunk boundary, else writes its values.
# A finished part has a manifest; a killed run's finished parts are reused when it starts again.
PART_STAGE = "ingest-part"
TEMPLATE_STAGE = "ingest-template"


def parts_dir(path: str | Path) -> Path:
    """Where the parts of a cube wait to be attached: ``<cube>.zarr.parts/`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".parts")


def grid_to_dict(grid: Grid) -> dict[str, Any]:
    return {"crs": grid.crs.to_wkt(), "transform": list(grid.transform)[:6], "width": grid.width, "height": grid.height}


def grid_from_dict(d: dict[str, Any]) -> Grid:
    from affine import Affine

    return Grid(CRS.from_user_input(d["crs"]), Affine(*d["transform"]), int(d["width"]), int(d["height"]))


def _ref_to_dict(ref: SceneRef) -> dict[str, Any]:
    return {**asdict(ref), "date": ref.date.isoformat() if ref.date else None, "datasets": list(ref.datasets)}


def _ref_from_dict(d: dict[str, Any]) -> SceneRef:
    return SceneRef(**{**d, "date": datetime.fromisoformat(d["date"]) if d["date"] else None,
                       "datasets": tuple(d["datasets"])})


@dataclass
class IngestPlan:
    """What an ingest run will do: the new dates cut into parts, on the cube's grid.

    Plain data (``to_dict`` / ``from_dict``), so it travels to Dask workers and into Prefect.
    """

    cube: str
    path: str
    grid: Grid | None
    parts: list[dict[str, Any]]  # {"id": str, "scenes": [[SceneRef dict, ...] per date]}
    skipped: list[dict[str, Any]]
    quarantined: list[dict[str, Any]]
    time_steps: int
    creates: bool = False  # the cube is not there yet: its template is written beside the parts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "grid": grid_to_dict(self.grid) if self.grid else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IngestPlan:
        return cls(**{**d, "grid": grid_from_dict(d["grid"]) if d["grid"] else None})

    @property
    def scenes(self) -> int:
        return sum(len(g) for p in self.parts for g in p["scenes"])


def _interrupted_creation(path: Path, cube: str) -> bool:
    """Whether ``path`` is a cube this ingest created but a kill stopped before its first manifest
    (renamed into place, manifest not yet written): its title is ours, nothing records it, and the
    finished part it was made from is still waiting (a part is deleted only after the manifest)."""
    if not any(parts_dir(path).glob("*.zarr.manifest.json")):
        return False
    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("attributes", {}).get("title") == f"fusioncube cube {cube}"


def _check_store(path: Path, manifest: Manifest | None, cube: str) -> Manifest | None:
    """Check the store against its manifest before planning; returns the manifest to plan with.

    A manifest whose cube is gone (the cube was moved or deleted, its ``.manifest.json`` left
    behind) is set aside as ``<name>.manifest.json.orphaned-<time>``, not trusted: its scenes are
    in no cube, so they are ingested again into a new one.
    """
    if manifest is not None and not path.exists():
        stale = manifest_path(path)
        aside = stale.with_name(f"{stale.name}.orphaned-{datetime.now(UTC):%Y%m%dT%H%M%S}")
        os.replace(stale, aside)
        log.warning("%s: the cube is gone but its manifest was left behind; it was moved to %s and the "
                    "cube is built anew from its scenes", path, aside.name)
        return None
    if path.exists() and manifest is None and _interrupted_creation(path, cube):
        # its scenes are in no manifest and the part it was made from is still there: rebuilt
        log.warning("%s: removing a cube whose creation was interrupted before its manifest was "
                    "written; it is rebuilt from its scenes", path)
        aside = path.with_name(f"{path.name}.tmp-interrupted-{os.getpid()}")
        os.replace(path, aside)
        shutil.rmtree(aside)
        return None
    if path.exists() and manifest is None:
        raise CubeSchemaError(
            f"{path}: a store is there but no {path.name}.manifest.json: it was not made by "
            "fusioncube ingest, or a run was killed while creating it; move it away or set cubes."
            f"{cube}.path to another location"
        )
    return manifest


PART_BYTES = 512 * 2**20  # a part in memory: at most this many bytes of float32 (or one date)


def plan_parts(
    catalog: Catalog,
    cube: str,
    *,
    start: date | None = None,
    end: date | None = None,
    dates_per_part: int | None = None,
    concurrency: int = 2,
) -> IngestPlan:
    """Plan an ingest: the new scenes grouped by date, cut into parts of ``dates_per_part`` dates,
    the first one cut short so the rest start on time-chunk boundaries. New scenes of dates the
    cube holds already (``"merge": True`` parts, planned first) are mosaicked into those dates'
    slices when attached, after the scenes already there (:func:`attach_part`).

    By default a part holds about a ``2 * concurrency``-th of the new dates (few parts: each is a
    task run), at most :data:`PART_BYTES` of data, rounded to whole time chunks.

    Dates whose scenes changed on disk (``changed_scenes: replace``) come first, as ``"replace": True``
    parts holding all of each date's scenes: their slices are written anew when attached.

    Cuts time steps a killed run left beyond the manifest, so the plan starts from a consistent cube.
    Part ids hash their scenes (name, size, mtime), the grid and the ingest code: the same new
    scenes give the same parts, which is what lets a killed run resume.
    """
    spec = catalog.cube(cube)
    path = catalog.cube_path(cube)
    cube_store.finish_interrupted_sort(path)
    manifest = _check_store(path, read_manifest(path), cube)
    steps = cube_store.truncate_to_manifest(path, manifest) if manifest is not None else 0
    scene_plan = plan_ingest(catalog, cube, start=start, end=end)
    warn_future_dates(scene_plan)
    grid = grid_of_cube(path) if manifest is not None else None
    if manifest is not None:
        check_cube_bands(path, [b.name for b in catalog.source(spec.sources[0]).bands])
    if grid is None and scene_plan.new:
        grid, scene_plan = cube_grid(spec, scene_plan, name=cube)
    given = spec.grid is not None and spec.grid.bounds is not None
    if grid is not None and (manifest is not None or given):
        scene_plan = scenes_within(scene_plan, grid, grid_from_scenes=not given)
    in_cube = set(manifest.outputs.get("dates", [])) if manifest is not None else set()
    late = [g for g in scene_plan.new if _day(g) in in_cube]
    fresh = [g for g in scene_plan.new if _day(g) not in in_cube]
    tc = spec.chunks.time
    size = dates_per_part or _part_size(len(fresh), grid, catalog, spec, concurrency)
    code = code_version(*INGEST_MODULES)

    def part(groups: list[list[SceneRef]], merge: bool, replace: bool = False) -> dict[str, Any]:
        stamps = [[(r.id, r.file_stamp(), _mask_record(r)) for r in g] for g in groups]
        digest = hashlib.sha256(json.dumps(
            [stamps, grid_to_dict(grid) if grid else None, code, spec.ingest_json(), merge, replace],
            sort_keys=True, default=str,
        ).encode()).hexdigest()[:16]
        scenes = [[_ref_to_dict(r) for r in g] for g in groups]
        kind = "replace-" if replace else "merge-" if merge else ""
        return {"id": f"{kind}{_day(groups[0]) or 'undated'}-{digest}", "scenes": scenes, "merge": merge,
                "replace": replace}

    # dates already in the cube first: rebuilt (changed scenes) or merged into their slices, they
    # leave the time axis as it is
    rebuilt = scene_plan.replace
    parts = [part(rebuilt[i : i + size], True, replace=True) for i in range(0, len(rebuilt), size)]
    parts += [part(late[i : i + size], True) for i in range(0, len(late), size)]
    i, first, appended = 0, (tc - steps % tc) % tc or size, 0
    while i < len(fresh):
        n = first if not appended else size
        parts.append(part(fresh[i : i + n], False))
        i, appended = i + n, appended + 1
    return IngestPlan(cube, str(path), grid, parts, scene_plan.skipped, scene_plan.quarantined, steps,
                      creates=bool(parts) and not path.exists())


def warn_future_dates(plan: ScenePlan) -> None:
    """A date after today is nearly always a misread one: taken, but said (once, where the ingest
    is planned, not at every look for new scenes)."""
    today = datetime.now(UTC).date()
    for ref in (r for g in plan.new for r in g):
        if ref.date is not None and ref.date.date() > today:
            log.warning("%s: dated %s, after today (%s); if the date is misread, give its rule "
                        "(--date-pattern / --date-format, the source's date: in the catalog)",
                        ref.path, ref.date.date(), today)


def _day(group: Sequence[SceneRef]) -> str | None:
    """A date group's day (``YYYY-MM-DD``, as the cube's manifest lists its dates), None when undated."""
    d = group[0].date
    return d.date().isoformat() if d is not None else None


def _part_size(dates: int, grid: Grid | None, catalog: Catalog, spec: CubeSpec, concurrency: int) -> int:
    tc = spec.chunks.time
    if grid is None or dates == 0:
        return tc
    bands = len(catalog.source(spec.sources[0]).bands)
    cap = max(1, PART_BYTES // (bands * grid.width * grid.height * 4))
    size = max(1, min(-(-dates // (2 * max(concurrency, 1))), cap))
    return max(tc, -(-size // tc) * tc)


def _encoding(spec: CubeSpec, grid: Grid, bands: int, layers: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Zarr encoding of a cube (and of its parts, which must match it chunk for chunk)."""
    ch = spec.chunks
    cy, cx = min(ch.y, grid.height), min(ch.x, grid.width)
    encoding: dict[str, dict[str, Any]] = {
        # blosc lz4 + bitshuffle: 3x faster than zarr's default zstd on float32 reflectance for
        # about 20% more bytes (measured on the bench sample area)
        "data": {"chunks": (ch.time, bands, cy, cx), "compressors": DATA_CODEC},
        "valid": {"chunks": (ch.time, cy, cx)},
        "time": {"units": TIME_UNITS, "calendar": "proleptic_gregorian", "dtype": "int64"},
    }
    for v in layers:
        encoding[v] = {"chunks": (cy, cx)}
    return encoding


def write_part(catalog: Catalog, cube: str, part: dict[str, Any], grid: Grid, *, workers: int = 1) -> dict[str, Any]:
    """Read, validate, warp and mosaic one part's dates and write them as a part store.

    Returns ``{path, dates, scenes, quarantined, bytes_decoded, reused}``. A part already
    finished (its manifest is there) is not redone.
    """
    spec = catalog.cube(cube)
    out = parts_dir(catalog.cube_path(cube)) / f"{part['id']}.zarr"
    done = read_manifest(out)
    if done is not None and done.key == part["id"] and (out.exists() or not done.outputs["dates"]):
        return {**done.outputs, "path": str(out), "reused": True}
    specs = {s: catalog.source(s) for s in spec.sources}
    groups = [[_ref_from_dict(r) for r in g] for g in part["scenes"]]
    results, bad, nbytes = process_dates(groups, specs, grid, workers=workers)
    if results:
        bands = [b.name for b in catalog.source(spec.sources[0]).bands]
        ds = _dates_dataset(results, grid, bands)
        with atomic_artifact(out, overwrite=True) as tmp, cube_store.no_consolidation_warning():  # a part again
            ds.to_zarr(tmp, mode="w-", zarr_format=3, consolidated=False,
                       encoding=_encoding(spec, grid, len(bands)))
    outputs = {
        "dates": [r.date.isoformat() for r in results],
        "scenes": [[ref.id for ref in r.scenes] for r in results],
        "quarantined": bad,
        "bytes_decoded": nbytes,
    }
    code = code_version(*INGEST_MODULES)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_manifest(out, Manifest(stage=PART_STAGE, key=part["id"], params={}, inputs={}, code_version=code,
                                 outputs=outputs))
    return {**outputs, "path": str(out), "reused": False}


def _append(path: Path, results: Sequence[DateResult]) -> None:
    """Append in-memory time steps with zarr directly (tests use it to mimic a killed run)."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    n, k = zarr_array(group, "data").shape[0], len(results)
    for name in ("data", "valid", "time"):
        arr = zarr_array(group, name)
        arr.resize((n + k, *arr.shape[1:]))
    for i, r in enumerate(results):
        zarr_array(group, "data")[n + i] = r.data
        zarr_array(group, "valid")[n + i] = r.valid
    cube_store.write_times(path, zarr_array(group, "time"), n, [r.date for r in results])
    with cube_store.no_consolidation_warning():
        zarr.consolidate_metadata(str(path))


class _CubeState:
    """The cube's manifest as mutable bookkeeping: read, updated by one part, written back."""

    def __init__(self, catalog: Catalog, cube: str, grid: Grid | None) -> None:
        self.catalog, self.cube = catalog, cube
        self.spec = catalog.cube(cube)
        self.path = catalog.cube_path(cube)
        manifest = read_manifest(self.path)
        outputs = manifest.outputs if manifest else {}
        self.scenes: dict[str, Any] = dict(outputs.get("scenes", {}))
        self.quarantine: dict[str, Any] = dict(outputs.get("quarantine", {}))
        self.dates: list[str] = list(outputs.get("dates", []))
        self.steps = int(outputs.get("time_steps", 0))
        self.grid = grid

    def record(self, refs: Sequence[SceneRef], step: int, report: IngestReport) -> None:
        """``refs`` are in the cube at time step ``step`` now, as they are on disk."""
        for ref in refs:
            self.scenes[ref.id] = {"stamp": ref.file_stamp(), **_mask_record(ref), "date": _as_date(ref.date),
                                   "time_index": step}
            self.quarantine.pop(ref.id, None)
            report.ingested.append({"scene": ref.id, "date": _as_date(ref.date), "path": ref.path})

    def save(self) -> None:
        assert self.grid is not None
        write_manifest(self.path, _cube_manifest(
            self.cube, self.spec, self.scenes, self.quarantine, self.dates, self.steps, self.grid,
            ingest_rules(self.catalog, self.cube), value_rules(self.catalog, self.cube),
            source_globs(self.catalog, self.cube)))

    def create(self, template: Path, part: Path, dates: Sequence[datetime]) -> None:
        """The cube from its template (schema, coordinates, static layers; no time steps) and its
        first part, built under a temporary name and renamed into place. The part's chunk files
        are copied, not re-encoded, and the part stays whole until the cube's manifest is written."""
        with atomic_artifact(self.path, overwrite=False) as tmp:
            shutil.copytree(template, tmp)
            cube_store.attach_store(tmp, part, dates, copy=True)


def template_path(
    catalog: Catalog, cube: str, grid: Grid,
    found: dict[str, tuple[list[SceneRef], list[tuple[str, str]]]] | None = None,
) -> Path:
    """Where a new cube's template store is written: beside its parts, keyed by everything that
    shapes it (grid, catalog entry, static files, ingest code), so a killed run reuses it."""
    spec = catalog.cube(cube)
    found = found if found is not None else _discover_static(catalog, spec)
    static = [(r.id, r.file_stamp()) for refs, _ in found.values() for r in refs]
    digest = hashlib.sha256(json.dumps(
        [grid_to_dict(grid), spec.ingest_json(), static, code_version(*INGEST_MODULES)], sort_keys=True, default=str,
    ).encode()).hexdigest()[:16]
    return parts_dir(catalog.cube_path(cube)) / f"template-{digest}.zarr"


def write_template(catalog: Catalog, cube: str, grid: Grid) -> dict[str, Any]:
    """Write a new cube's template: every variable, coordinate, static layer (read, validated and
    warped here) and attribute of the cube, with no time steps yet; ``attach_part`` turns it and
    the first part into the cube. Runs on any worker, beside the parts.

    Returns ``{path, quarantined, reused}``; a finished template (manifest there) is reused.
    """
    spec = catalog.cube(cube)
    found = _discover_static(catalog, spec)  # once: for the template's key and its layers
    out = template_path(catalog, cube, grid, found)
    done = read_manifest(out)
    if done is not None and out.exists():
        return {**done.outputs, "path": str(out), "reused": True}
    if out.exists():  # renamed into place by a killed run before its manifest: redone
        shutil.rmtree(out)
    layers, bad_static = static_layers(catalog, spec, grid, found)
    attrs = {
        "title": f"fusioncube cube {cube}",
        "Conventions": "CF-1.8",
        "sources": ", ".join(spec.sources),
        "static_sources": ", ".join(f"{k}: {v}" for k, v in spec.static.items()),
        "software": f"fusioncube {code_version(*INGEST_MODULES)}",
        "fusioncube_environment": json.dumps(environment(), sort_keys=True),
        "catalog_entry": spec.ingest_json(),
        "catalog": str(catalog.path) if catalog.path else "",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    bands = [b.name for b in catalog.source(spec.sources[0]).bands]
    _create_cube(out, _dates_dataset([], grid, bands), grid, layers, spec, attrs)
    outputs = {"quarantined": bad_static}
    write_manifest(out, Manifest(stage=TEMPLATE_STAGE, key=out.stem, params={}, inputs={},
                                 code_version=code_version(*INGEST_MODULES), outputs=outputs))
    return {**outputs, "path": str(out), "reused": False}


def attach_part(
    catalog: Catalog, cube: str, part: dict[str, Any], done: dict[str, Any], *, grid: Grid | None,
    template: dict[str, Any] | None = None,
) -> IngestReport:
    """Attach one written part to the cube (creating the cube from ``template``, the output of
    :func:`write_template`, and the first part; the template is written here when not given),
    record its scenes and quarantined files in the manifest, then delete the part.

    Parts must be attached in plan order. Crash-safe: the time steps are written first, the
    manifest after (a kill in between leaves steps that the next plan cuts), the part last. A
    ``merge`` part (dates the cube holds already) is mosaicked into those dates' slices instead.
    """
    state = _CubeState(catalog, cube, grid)
    report = IngestReport(cube=cube, path=str(state.path))
    by_id = {ref.id: ref for ref in (_ref_from_dict(r) for g in part["scenes"] for r in g)}
    _record_quarantine(state.quarantine, done["quarantined"])
    report.quarantined += done["quarantined"]
    report.bytes_decoded += int(done.get("bytes_decoded", 0))
    report.parts, report.parts_reused = 1, int(bool(done.get("reused")))
    dates = [datetime.fromisoformat(d) for d in done["dates"]]
    scenes = [[by_id[i] for i in ids] for ids in done["scenes"]]
    store = Path(done["path"])
    if dates and part.get("replace"):
        # a date whose rebuild lost a scene (the changed file is quarantined now) keeps its slice:
        # the scene is in the report's quarantined rows, the slice stays what the old file gave it
        wanted = {_day(g): {r.id for r in g} for g in ([_ref_from_dict(r) for r in g] for g in part["scenes"])}
        whole = [i for i, (d, refs) in enumerate(zip(dates, scenes, strict=True))
                 if {r.id for r in refs} == wanted.get(d.date().isoformat())]
        steps = [state.dates.index(dates[i].date().isoformat()) for i in whole]
        cube_store.replace_slices(state.path, store, whole, steps)
        scenes = [scenes[i] for i in whole]
        for t, refs_of_day in zip(steps, scenes, strict=True):
            report.dates_replaced.append(state.dates[t])
            state.record(refs_of_day, t, report)
    elif dates and part.get("merge"):
        # the part stays whole until the manifest lists its scenes: merging is idempotent (a
        # slice's clear pixels win over a later scene's), so a killed run merges it again
        steps = [state.dates.index(d.date().isoformat()) for d in dates]
        cube_store.merge_store(state.path, store, steps)
        for t, refs_of_day in zip(steps, scenes, strict=True):
            report.dates_updated.append(state.dates[t])
            state.record(refs_of_day, t, report)
    elif dates:
        if not state.path.exists():
            assert grid is not None
            template = template or write_template(catalog, cube, grid)
            report.quarantined += template["quarantined"]
            state.create(Path(template["path"]), store, dates)
            report.created = True
        else:
            # from the first chunk folder moved out, the part is no longer complete: its manifest
            # goes first, so a run killed mid-move rewrites the part instead of reusing a husk
            manifest_path(store).unlink(missing_ok=True)
            cube_store.attach_store(state.path, store, dates)
        for d, refs_of_day in zip(dates, scenes, strict=True):
            day = d.date().isoformat()
            state.dates.append(day)
            report.dates_added.append(day)
            state.record(refs_of_day, state.steps, report)
            state.steps += 1
    if state.path.exists():
        state.save()
    report.time_steps = state.steps
    _remove_part(store)
    if report.created and template is not None:
        _remove_part(Path(template["path"]))
    return report


def _remove_part(store: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        manifest_path(store).unlink()  # manifest first: never a manifest without its store
    shutil.rmtree(store, ignore_errors=True)




def sort_time_axis(state: _CubeState) -> bool:
    """Rewrite the cube at ``state.path`` in increasing date order when it is not
    (:func:`tasks.cube_store.write_sorted_copy`), and its manifest with it (``dates`` and each
    scene's ``time_index`` follow their slices). Returns whether it was rewritten."""
    order = cube_store.write_sorted_copy(state.path, state.cube)
    if order is None:
        return False
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    state.dates = [state.dates[int(i)] for i in order]
    for row in state.scenes.values():
        row["time_index"] = int(position[int(row["time_index"])])
    assert state.grid is not None
    tmp, _ = cube_store.sort_paths(state.path)
    write_manifest(tmp, _cube_manifest(state.cube, state.spec, state.scenes, state.quarantine, state.dates,
                                       state.steps, state.grid, ingest_rules(state.catalog, state.cube),
                                       value_rules(state.catalog, state.cube), source_globs(state.catalog, state.cube)))
    cube_store.swap_sorted(state.path)
    return True


def finish_ingest(catalog: Catalog, cube: str, plan: IngestPlan, reports: Sequence[IngestReport],
                  seconds: float = 0.0) -> IngestReport:
    """Merge the parts' reports; record what discovery quarantined; drop parts a killed run left
    whose scenes are all in the cube now."""
    state = _CubeState(catalog, cube, plan.grid)
    report = IngestReport(cube=cube, path=plan.path, skipped=list(plan.skipped))
    _record_quarantine(state.quarantine, plan.quarantined)
    report.quarantined += plan.quarantined
    if plan.quarantined and state.path.exists() and state.grid is not None:
        state.save()
    for r in reports:
        report.created |= r.created
        report.dates_added += r.dates_added
        report.dates_updated += r.dates_updated
        report.dates_replaced += r.dates_replaced
        report.ingested += r.ingested
        report.quarantined += r.quarantined
        report.bytes_decoded += r.bytes_decoded
        report.parts += r.parts
        report.parts_reused += r.parts_reused
    if state.path.exists() and state.dates != sorted(state.dates):  # a backfill (or an older version's)
        state.grid = state.grid or grid_of_cube(state.path)
        report.reordered = sort_time_axis(state)
    report.time_steps = state.steps
    report.seconds = seconds
    live = {p["id"] for p in plan.parts}
    folder = parts_dir(plan.path)
    if folder.exists():
        for leftover in folder.glob("*.zarr.manifest.json"):
            part_id = leftover.name.removesuffix(".zarr.manifest.json")
            if part_id in live:
                continue
            m = read_manifest(folder / f"{part_id}.zarr")
            if m is not None and all(s in state.scenes for ids in m.outputs.get("scenes", []) for s in ids):
                _remove_part(folder / f"{part_id}.zarr")
        for orphan in folder.glob("*.zarr*"):  # no manifest: a part attached or written by a killed run
            part_id = orphan.name.split(".zarr")[0]
            if part_id not in live and not manifest_path(folder / f"{part_id}.zarr").exists():
                shutil.rmtree(orphan, ignore_errors=True) if orphan.is_dir() else orphan.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            folder.rmdir()  # only when empty
    for q in report.quarantined:
        log.warning("quarantined %s: %s", q["scene"], q["reason"])
    log.info(
        "cube %s: %d scene(s) ingested into %d new date(s)%s, %d skipped, %d quarantined; %d time steps",
        cube, len(report.ingested), len(report.dates_added),
        f" and {len(report.dates_updated)} date(s) already there" if report.dates_updated else "",
        len(report.skipped), len(report.quarantined), report.time_steps,
    )
    return report


def ingest_cube(
    catalog: Catalog,
    cube: str,
    *,
    start: date | None = None,
    end: date | None = None,
    workers: int = 2,
    dates_per_part: int | None = None,
    on_group: Callable[[int, int], None] | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> IngestReport:
    """Ingest the new scenes of ``cube``'s sources in this process: create the cube or append.

    ``workers`` parts are read, validated, warped and written at once on threads and attached in
    date order as they finish, so at most ``workers`` parts are in memory. (The pipeline flow
    runs the same steps as tasks on Dask workers.)

    Parameters
    ----------
    catalog, cube
        The validated catalog and the cube's name in it.
    start, end
        Only scenes dated within [start, end] (inclusive), e.g. for a backfill.
    workers
        Parts processed at once.
    dates_per_part
        Dates per part (default: the cube's time chunk).
    on_group
        Called as ``on_group(scenes_done, scenes_total)`` after each part is attached (progress).
    lock_timeout
        Seconds to wait while another run holds the cube's lock (``tasks.locks.cube_lock``);
        then ``CubeLockedError`` with nothing changed.
    """
    with cube_lock(catalog.cube_path(cube), timeout=lock_timeout):
        return _ingest_cube_locked(catalog, cube, start=start, end=end, workers=workers,
                                   dates_per_part=dates_per_part, on_group=on_group)


def _ingest_cube_locked(
    catalog: Catalog, cube: str, *, start: date | None, end: date | None, workers: int,
    dates_per_part: int | None, on_group: Callable[[int, int], None] | None,
) -> IngestReport:
    t0 = timer.perf_counter()
    plan = plan_parts(catalog, cube, start=start, end=end, dates_per_part=dates_per_part, concurrency=workers)
    reports: list[IngestReport] = []
    total, done = plan.scenes, 0
    grid = plan.grid
    if grid is None:  # no new scenes: no part to write, no template (a plan with parts has a grid)
        assert not plan.parts and not plan.creates
        return finish_ingest(catalog, cube, plan, reports, timer.perf_counter() - t0)
    with ThreadPoolExecutor(max(workers, 1), thread_name_prefix="ingest-part") as pool:
        template = pool.submit(write_template, catalog, cube, grid) if plan.creates else None
        futures = [pool.submit(write_part, catalog, cube, p, grid, workers=1) for p in plan.parts]
        try:
            for part, fut in zip(plan.parts, futures, strict=True):
                done_part = fut.result()
                reports.append(attach_part(catalog, cube, part, done_part, grid=grid,
                                           template=template.result() if template is not None else None))
                done += sum(len(g) for g in part["scenes"])
                if on_group is not None:
                    on_group(done, total)
        except BaseException:
            for f in [*futures, *([template] if template is not None else [])]:
                f.cancel()
            raise
    return finish_ingest(catalog, cube, plan, reports, timer.perf_counter() - t0)


# -- Prefect tasks (thin wrappers: paths and small dicts in, small dicts out) -------------------
# No task tags: a tagged task run asks the API for tag concurrency slots each time (about a
# second per task on a test server); tag a task when it gets a concurrency limit.
from prefect import get_run_logger, task  # noqa: E402
from prefect.artifacts import (  # noqa: E402
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NONE as NO_CACHE  # noqa: E402

from tasks.catalog import load_catalog  # noqa: E402
from tasks.quicklook import artifact_key  # noqa: E402


@task(name="plan-ingest", cache_policy=NO_CACHE)
def plan_ingest_task(
    catalog_path: str,
    cube: str,
    start: date | None = None,
    end: date | None = None,
    env: dict[str, str] | None = None,
    dates_per_part: int | None = None,
    concurrency: int = 2,
) -> dict[str, Any]:
    """The new scenes of one cube cut into parts (``IngestPlan.to_dict()``)."""
    plan = plan_parts(load_catalog(catalog_path, env=env), cube, start=start, end=end,
                      dates_per_part=dates_per_part, concurrency=concurrency)
    get_run_logger().info("cube %s: %d new scene(s) in %d part(s), %d skipped, %d quarantined at discovery",
                          cube, plan.scenes, len(plan.parts), len(plan.skipped), len(plan.quarantined))
    return plan.to_dict()


@task(name="ingest-part", task_run_name="ingest-part-{part[id]}", retries=2, retry_delay_seconds=[5, 30],
      retry_condition_fn=retry_on_io_error, cache_policy=NO_CACHE)
def write_part_task(
    catalog_path: str, cube: str, part: dict[str, Any], grid: dict[str, Any], env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Read, validate, warp and write one part (runs on any Dask worker)."""
    return write_part(load_catalog(catalog_path, env=env), cube, part, grid_from_dict(grid))


@task(name="ingest-template", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=retry_on_io_error,
      cache_policy=NO_CACHE)
def write_template_task(
    catalog_path: str, cube: str, grid: dict[str, Any], env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Write a new cube's template with its static layers (runs on any Dask worker)."""
    return write_template(load_catalog(catalog_path, env=env), cube, grid_from_dict(grid))


@task(name="attach-part", task_run_name="attach-part-{part[id]}", cache_policy=NO_CACHE)
def attach_part_task(
    catalog_path: str, cube: str, part: dict[str, Any], done: dict[str, Any], grid: dict[str, Any] | None,
    env: dict[str, str] | None = None, template: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Attach one written part to the cube, in date order (the first creates it from ``template``)."""
    catalog = load_catalog(catalog_path, env=env)
    return attach_part(catalog, cube, part, done, grid=grid_from_dict(grid) if grid else None,
                       template=template).to_dict()


@task(name="finish-ingest", cache_policy=NO_CACHE)
def finish_ingest_task(
    catalog_path: str, cube: str, plan: dict[str, Any], reports: list[dict[str, Any]], seconds: float,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge the parts' reports into the run's ingest report."""
    report = finish_ingest(load_catalog(catalog_path, env=env), cube, IngestPlan.from_dict(plan),
                           [IngestReport(**r) for r in reports], seconds)  # logs each quarantined scene
    return report.to_dict()


@task(name="quick-look", cache_policy=NO_CACHE)
def quicklook_task(cube_path: str, out_png: str) -> str:
    """PNG of the cube's newest composite (per pixel the newest clear value of its last dates)."""
    from tasks.quicklook import composite_png

    return str(composite_png(cube_path, out_png))


@task(name="publish-ingest-report", cache_policy=NO_CACHE)
def publish_ingest_task(report: dict[str, Any], quicklook: str | None = None) -> None:
    """Prefect artifacts for operators: the scene table and the quick-look."""
    cube = report["cube"]
    rows = IngestReport(**report).rows() or [{"scene": "-", "status": "nothing new", "date": "", "reason": ""}]
    create_table_artifact(
        table=rows, key=artifact_key(f"ingest-{cube}"),
        description=f"Scenes of cube {cube}: ingested / skipped / quarantined with reasons",
    )
    quarantine_lines = "\n".join(f"| {q['scene']} | {q['reason']} |" for q in report["quarantined"]) or "| - | none |"
    md = (
        f"# Ingest of cube `{cube}`\n\n"
        f"- store: `{report['path']}`\n- time steps: {report['time_steps']}"
        f" ({len(report['dates_added'])} added this run)\n"
        f"- scenes: {len(report['ingested'])} ingested, {len(report['skipped'])} skipped, "
        f"{len(report['quarantined'])} quarantined\n- {report['seconds']:.1f} s, "
        f"{report['bytes_decoded'] / 1e6:.1f} MB decoded\n\n## Quarantine\n\n| scene | reason |\n|---|---|\n"
        f"{quarantine_lines}\n"
    )
    if quicklook:
        md += f"\nQuick-look (newest clear value per pixel over the last dates): `{quicklook}`\n"
    create_markdown_artifact(md, key=artifact_key(f"ingest-summary-{cube}"), description=f"ingest summary of {cube}")
    if quicklook:
        from tasks.quicklook import publish_image

        publish_image(quicklook, key=artifact_key(f"quicklook-{cube}"), fresh=bool(report["ingested"]),
                      description=f"newest composite of cube {cube} ({quicklook})")
