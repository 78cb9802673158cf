"""The area of interest of a new cube: ``--bounds`` in any CRS, or the extent of an ``--aoi`` file.

A cube made from whole scenes covers their union (a Sentinel-2 tile is 110 km a side, a Landsat
scene 185 km); a study area is usually a small part of that. The bounds become the cube grid's
``bounds`` (``tasks.catalog.GridSpec``): the grid is snapped outward to the scenes' pixel lattice,
each scene is read only over its window on the grid, and scenes that do not reach the area are
skipped (``tasks.ingest.scenes_within``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rasterio
from rasterio.crs import CRS
from rasterio.errors import CRSError, RasterioIOError
from rasterio.warp import transform_bounds

__all__ = ["aoi_bounds", "bounds_in_crs", "looks_like_degrees"]

Bounds = tuple[float, float, float, float]

#: GeoJSON (RFC 7946) coordinates are longitude / latitude on WGS 84
GEOJSON_CRS = "EPSG:4326"


def _positions(coords: Any) -> Iterator[tuple[float, float]]:
    """Every (x, y) position of a GeoJSON ``coordinates`` array, at any nesting depth."""
    if isinstance(coords, list | tuple) and coords and isinstance(coords[0], int | float):
        yield float(coords[0]), float(coords[1])
    elif isinstance(coords, list | tuple):
        for c in coords:
            yield from _positions(c)


def _geometries(obj: Any) -> Iterator[dict[str, Any]]:
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "FeatureCollection":
        for f in obj.get("features") or []:
            yield from _geometries(f)
    elif kind == "Feature":
        if obj.get("geometry"):
            yield from _geometries(obj["geometry"])
    elif kind == "GeometryCollection":
        for g in obj.get("geometries") or []:
            yield from _geometries(g)
    elif isinstance(kind, str):
        yield obj


def _geojson_bounds(path: Path) -> tuple[Bounds, str]:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"--aoi {path}: not a readable GeoJSON file ({exc})") from exc
    points = [p for g in _geometries(doc) for p in _positions(g.get("coordinates"))]
    if not points:
        raise ValueError(f"--aoi {path}: holds no geometry with coordinates (a GeoJSON Feature, "
                         "FeatureCollection or geometry is expected)")
    xs, ys = zip(*points, strict=True)
    # RFC 7946 GeoJSON is lon/lat; the 2008 spec's "crs" member may name another CRS
    named = ((doc.get("crs") or {}).get("properties") or {}).get("name") if isinstance(doc, dict) else None
    crs = GEOJSON_CRS
    if named:
        try:
            crs = CRS.from_user_input(named).to_string()
        except CRSError as exc:
            raise ValueError(f"--aoi {path}: its crs {named!r} is not a CRS GDAL knows ({exc})") from exc
    return (min(xs), min(ys), max(xs), max(ys)), crs


def aoi_bounds(path: str | Path) -> tuple[Bounds, str]:
    """``(xmin, ymin, xmax, ymax)`` and the CRS they are in, of an area-of-interest file: a
    GeoJSON file (``.geojson`` / ``.json``: the extent of all its geometries; lon/lat unless it
    names a ``crs``), or any raster GDAL reads (its extent, in its CRS)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--aoi {path}: no such file")
    if p.suffix.lower() in (".geojson", ".json"):
        return _geojson_bounds(p)
    try:
        with rasterio.open(p) as ds:
            if ds.crs is None:
                raise ValueError(f"--aoi {path}: the raster has no CRS, so its extent is nowhere")
            left, bottom, right, top = ds.bounds
            return (min(left, right), min(bottom, top), max(left, right), max(bottom, top)), ds.crs.to_string()
    except RasterioIOError as exc:
        raise ValueError(
            f"--aoi {path}: neither GeoJSON (.geojson, .json) nor a raster GDAL reads ({exc}); "
            "convert a shapefile or GeoPackage with: ogr2ogr -f GeoJSON aoi.geojson IN"
        ) from exc


def bounds_in_crs(bounds: Bounds, src: str, dst: str) -> Bounds:
    """``bounds`` (in ``src``) as the smallest box in ``dst`` holding them (edges densified)."""
    if bounds[0] >= bounds[2] or bounds[1] >= bounds[3]:
        raise ValueError(f"bounds must be XMIN YMIN XMAX YMAX with min < max; got {list(bounds)}")
    src_crs, dst_crs = CRS.from_user_input(src), CRS.from_user_input(dst)
    if src_crs == dst_crs:
        return bounds
    left, bottom, right, top = transform_bounds(src_crs, dst_crs, *bounds, densify_pts=21)
    return float(left), float(bottom), float(right), float(top)


def looks_like_degrees(bounds: Bounds) -> bool:
    """Bounds that fit in [-180, 180] x [-90, 90]: longitude / latitude, not metres."""
    xmin, ymin, xmax, ymax = bounds
    return xmin >= -180 and xmax <= 180 and ymin >= -90 and ymax <= 90
