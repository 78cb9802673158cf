"""A catalog for a user's own files: ``fusioncube ingest PATH_OR_GLOB... --out cube.zarr``.

The bands, nodata and grid are read from the first file; the catalog is written beside the cube
(``cube.zarr.catalog.yaml``) so running the same command again appends only the new files.
"""

from __future__ import annotations

import logging
import math
import os
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError

from tasks.aoi import aoi_bounds, looks_like_degrees
from tasks.catalog import GridSpec, catalog_from_dict
from tasks.discover import (
    ARCHIVE_SUFFIXES,
    RASTER_SUFFIXES,
    band_of,
    date_in_name,
    date_stack,
    expand_globs,
    file_name,
    is_archive,
    is_remote,
    netcdf_axes_error,
    netcdf_time_bands,
    redact_url,
    sidecar_of,
    stack_variables,
    unreadable,
    url_secrets,
)
from tasks.errors import CatalogError, SceneError

__all__ = ["BAND_TOKEN", "COMMON_BANDS", "KNOWN_LAYERS", "PRESETS", "LayerUnits", "Preset", "Sensor",
           "adhoc_catalog", "adhoc_cube_name", "build_adhoc_catalog", "describe_bands",
           "detect_band_files", "detect_layer_files", "known_layer"]

log = logging.getLogger(__name__)


def _band_entry(name: str, index: int, ds: rasterio.io.DatasetReader) -> dict[str, Any]:
    """A band entry with the file's own scale, offset and nodata when it declares them (e.g. a
    NetCDF's ``scale_factor``, a MODIS GeoTIFF's 0.02), so the cube holds physical units."""
    entry: dict[str, Any] = {"name": name, "index": index}
    scale, offset = ds.scales[index - 1], ds.offsets[index - 1]
    if scale in (None, 1.0) and offset in (None, 0.0):  # declared as metadata items instead
        scale, offset = _tag_scale(ds, index)
    if scale not in (None, 1.0) and math.isfinite(scale) and scale != 0:
        entry["scale"] = float(scale)
    if offset not in (None, 0.0) and math.isfinite(offset):
        entry["offset"] = float(offset)
    if ds.nodata is not None and math.isfinite(ds.nodata):
        entry["nodata"] = float(ds.nodata)
    lo, hi = _tag_valid_range(ds, index)
    # CF gives the range in packed units; a fractional bound on integer data is already physical
    physical = np.issubdtype(np.dtype(ds.dtypes[index - 1]), np.integer) and any(
        v is not None and not float(v).is_integer() for v in (lo, hi))
    sc, off = (1.0, 0.0) if physical else (entry.get("scale", 1.0), entry.get("offset", 0.0))
    bounds = sorted(v * sc + off for v in (lo, hi) if v is not None)  # packed -> physical (a scale < 0 flips)
    if lo is not None and hi is not None:
        entry["valid_min"], entry["valid_max"] = bounds
    elif lo is not None or hi is not None:
        entry["valid_min" if (lo is not None) == (sc > 0) else "valid_max"] = bounds[0]
    return entry


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def _tag_valid_range(ds: rasterio.io.DatasetReader, index: int) -> tuple[float | None, float | None]:
    """The CF ``valid_range`` (or ``valid_min`` / ``valid_max``) a band declares, in packed (raw)
    units as CF has them: a NetCDF variable's attributes are GDAL band metadata (``{-2000,10000}``)."""
    tags = {k.lower(): v for k, v in ds.tags(index).items()}
    if "valid_range" in tags:
        numbers = [float(v) for v in _NUMBER.findall(str(tags["valid_range"]))]
        if len(numbers) == 2 and all(math.isfinite(v) for v in numbers) and numbers[0] <= numbers[1]:
            return numbers[0], numbers[1]
        return None, None
    bounds = []
    for key in ("valid_min", "valid_max"):
        numbers = [float(v) for v in _NUMBER.findall(str(tags.get(key, "")))]
        bounds.append(numbers[0] if len(numbers) == 1 and math.isfinite(numbers[0]) else None)
    return bounds[0], bounds[1]


def _tag_scale(ds: rasterio.io.DatasetReader, index: int) -> tuple[float | None, float | None]:
    """A scale and offset declared as band or dataset metadata items (``scale_factor`` /
    ``add_offset``, as NASA's HLS COGs declare them) rather than as GDAL band scale / offset."""
    tags = {**{k.lower(): v for k, v in ds.tags().items()}, **{k.lower(): v for k, v in ds.tags(index).items()}}
    values = []
    for key in ("scale_factor", "add_offset"):
        try:
            values.append(float(tags[key]) if key in tags else None)
        except ValueError:
            values.append(None)
    return values[0], values[1]


_COLOUR_NAMES = {ColorInterp.red: "red", ColorInterp.green: "green", ColorInterp.blue: "blue"}


def describe_bands(path: str) -> list[dict[str, Any]]:
    """Band entries for a file: one per band (an alpha band is the mask, not a band), one per
    variable of a multi-variable NetCDF, or one per variable of a file whose bands are dates
    (:func:`tasks.discover.date_stack`; ``index`` is then the variable's place within a date)."""
    try:
        with rasterio.open(path) as ds:
            if ds.subdatasets:
                entries = []
                for i, sd in enumerate(ds.subdatasets):
                    with rasterio.open(sd) as sub:
                        entries.append(_band_entry(sd.rsplit(":", 1)[-1], 1, sub) | {"index": i + 1})
                return entries
            if ds.driver == "netCDF" and (axes := netcdf_axes_error(path, ds.tags())) is not None:
                raise axes
            if netcdf_time_bands(ds) is not None:  # one variable, its GDAL bands are its dates
                return [_band_entry(ds.tags(1).get("NETCDF_VARNAME") or "band1", 1, ds)]
            stack = date_stack(ds.descriptions)
            if stack is not None:  # bands are dates: one band per variable, its GDAL band per date
                names = stack_variables(ds.descriptions)
                return [_band_entry(n, gdal, ds) | {"index": k + 1}
                        for k, (n, gdal) in enumerate(zip(names, stack[0][1], strict=True))]
            keep = [i for i in range(ds.count) if ds.colorinterp[i] != ColorInterp.alpha] or list(range(ds.count))
            names = [ds.descriptions[i] or _COLOUR_NAMES.get(ds.colorinterp[i], f"band{i + 1}") for i in keep]
            if len(set(names)) != len(names):
                names = [f"band{i + 1}" for i in keep]
            return [_band_entry(n, i + 1, ds) for n, i in zip(names, keep, strict=True)]
    except RasterioIOError as exc:
        raise SceneError(path, unreadable(path, exc)) from exc


# A band named in a file name, for products stored one file per band: Landsat "_SR_B4.TIF",
# Sentinel-2 "_B8A_20m.jp2" (its resolution is part of the match, so 10 m and 20 m bands of one
# scene group together), HLS ".B04.tif", "_band3.tif".
BAND_TOKEN = r"(?:(?<=[_.\-])|^)(?P<band>(?:S[RT]_)?B\d{1,2}A?|[Bb]and_?\d{1,2})(?:_\d{2}m)?(?=[_.\-])"


def _natural(token: str) -> tuple[Any, ...]:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", token))


def detect_band_files(files: list[str], pattern: str = BAND_TOKEN) -> list[str] | None:
    """The band tokens, in natural order, when ``files`` are one file per band (two or more
    tokens among files whose names otherwise agree); None for one file per scene."""
    compiled = re.compile(pattern)
    scenes: dict[str, set[str]] = {}
    for f in files:
        found = band_of(f, compiled)
        if found is not None:
            scenes.setdefault(found[0], set()).add(found[1])
    if not scenes or max(len(t) for t in scenes.values()) < 2:
        return None
    first = scenes[min(scenes)]  # the bands of the first scene; a scene missing one is reported
    return sorted(first, key=_natural)


def detect_layer_files(files: list[str]) -> str | None:
    """A ``band_files`` regex for layers stored one file each under names without a band token,
    as NASA AppEEARS writes them (``MOD11A1.061_LST_Day_1km_doy2019182_aid0001.tif`` beside
    ``MOD11A1.061_QC_Day_doy2019182_aid0001.tif``): files of one date, on one footprint, whose
    names differ in one part. None otherwise (tiles or strips of one date cover other footprints)."""
    dateless: dict[str, str] = {}
    by_date: dict[Any, list[str]] = {}
    for f in files:
        name = file_name(f)
        found = date_in_name(name)
        if found is None:
            return None
        (a, b) = found[1]
        dateless[f] = name[:a] + "\0" + name[b:]
        by_date.setdefault(found[0], []).append(f)
    shared = [g for g in by_date.values() if len(g) > 1]
    names = list(dateless.values())
    if not shared or len(names) < 2:
        return None
    prefix, suffix = _cut_to_separators(names)  # NDVI / EVI differ in "NDVI" / "EVI", not "ND" / "E"
    if len(prefix) + len(suffix) > min(len(n) for n in names):
        return None
    layer_of = {f: n[len(prefix): len(n) - len(suffix)] for f, n in dateless.items()}
    tokens = set(layer_of.values())
    if len(tokens) < 2 or any(not t or "\0" in t for t in tokens):
        return None
    if max(len({layer_of[f] for f in g}) for g in shared) < len(tokens):
        # a name part that varies by scene besides the date (ASF's Sentinel-1 RTC granule code,
        # S1A_IW_20230612T100559_DVP_RTC30_G_gpuned_1A2B_VV.tif): the layers are what differs
        # within each date, the same set on every date
        return _layers_within_dates(shared)
    for group in shared[:3]:  # same layers, same footprint: layers, not tiles
        layers = [layer_of[f] for f in group]
        if len(set(layers)) != len(layers) or not _one_footprint(group):
            return None
    before, after = prefix.rsplit("\0", 1)[-1], suffix.split("\0", 1)[0]
    return _layer_regex(tokens, before, after, anchored=not prefix)


_SEPARATORS = "_.-"


def _cut_to_separators(names: list[str]) -> tuple[str, str]:
    """The common prefix and suffix of ``names``, each cut back to a separator (``_ . -``), so
    that ``..._VV.tif`` and ``..._VH.tif`` differ in ``VV`` / ``VH``, not ``V`` / ``H``."""
    prefix = os.path.commonprefix(names)
    suffix = os.path.commonprefix([n[::-1] for n in names])[::-1]
    cut = max(prefix.rfind(c) for c in _SEPARATORS)
    prefix = prefix[: cut + 1] if cut >= 0 else ""
    starts = [i for i in (suffix.find(c) for c in _SEPARATORS) if i >= 0]
    suffix = suffix[min(starts):] if starts else ""
    return prefix, suffix


def _layers_within_dates(shared: list[list[str]]) -> str | None:
    """The ``band_files`` regex of layers that differ within each date's files (each date's own
    prefix and suffix cut off), the same layers on every date with more than one file, each
    date's layers on one footprint; None otherwise."""
    layer_of: dict[str, str] = {}
    befores, afters = [], []
    for group in shared:
        names = [file_name(f) for f in group]
        prefix, suffix = _cut_to_separators(names)
        if len(prefix) + len(suffix) >= min(len(n) for n in names):
            return None
        layer_of.update({f: n[len(prefix): len(n) - len(suffix)] for f, n in zip(group, names, strict=True)})
        befores.append(prefix)
        afters.append(suffix)
    sets = [{layer_of[f] for f in g} for g in shared]
    tokens = sets[0]
    if (len(tokens) < 2 or any(s != tokens for s in sets) or any(len(g) != len(tokens) for g in shared)
            or any(not t or date_in_name(t) is not None for t in tokens)):
        return None
    if not all(_one_footprint(g) for g in shared[:3]):
        return None  # tiles of one date, not layers
    before = os.path.commonprefix([b[::-1] for b in befores])[::-1]
    after = os.path.commonprefix(afters)
    return _layer_regex(tokens, before, after, anchored=True)


def _layer_regex(tokens: set[str], before: str, after: str, *, anchored: bool) -> str:
    """``band_files`` regex of the layer ``tokens`` between ``before`` and ``after`` (lookarounds;
    the name's start or end where they are empty, the start only when ``anchored``)."""
    alternation = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True))
    left = f"(?<={re.escape(before)})" if before else ("^" if anchored else "")
    right = f"(?={re.escape(after)})" if after else "$"
    return f"{left}(?P<band>{alternation}){right}"


def _one_footprint(files: list[str]) -> bool:
    footprints = set()
    for f in files:
        try:
            with rasterio.open(f) as ds:
                footprints.add((str(ds.crs), tuple(ds.transform), ds.shape))
        except RasterioIOError:  # unreadable: quarantined when the scenes are read
            continue
    return len(footprints) <= 1


def _band_file_bands(
    files: list[str], pattern: str, *, explicit: bool, single_band: bool
) -> list[dict[str, Any]] | None:
    """Band entries (``file`` = the band's name token) for one-file-per-band products, else None."""
    tokens = detect_band_files(files, pattern) if explicit or single_band else None
    if tokens is None:
        if explicit:
            raise ValueError(f"--band-files {pattern!r} finds no scene with two or more band files among {len(files)} file(s)")
        return None
    compiled = re.compile(pattern)
    entries = []
    for token in tokens:
        first = next(f for f in files if (m := compiled.search(file_name(f))) and m["band"] == token)
        with rasterio.open(first) as ds:
            entries.append(_band_entry(token, 1, ds) | {"file": token})
        entries[-1] = _with_known_units(entries[-1], first, one_band=False)
    if len({str(e.get("nodata")) for e in entries}) > 1:  # each band its own file's nodata
        for e in entries:  # NaN: "none" for a file that declares none (a uint8 mask layer)
            e.setdefault("nodata", float("nan"))
    return entries


def _suffix(name: str) -> str:
    return name[-7:] if name.lower().endswith(".tar.gz") else Path(name).suffix


def _folder_globs(path: str) -> list[str]:
    """A folder -> one recursive glob per raster suffix found below it; anything else as given."""
    folder = Path(path)
    if is_remote(path) or any(c in path for c in "*?[") or not folder.is_dir():
        return [path]
    found = sorted({_suffix(f.name) for f in folder.rglob("*")
                    if f.is_file() and _suffix(f.name).lower() in RASTER_SUFFIXES + ARCHIVE_SUFFIXES})
    if not found:
        raise FileNotFoundError(f"{path}: a folder with no raster file ({', '.join(RASTER_SUFFIXES)}) or archive "
                                f"of them ({', '.join(ARCHIVE_SUFFIXES)}) in it or below")
    return [str(folder.resolve() / "**" / f"*{suffix}") for suffix in found]


#: the bands a time series over several sensors of one product keeps, by their STAC ``eo:common_name``
COMMON_BANDS = ("coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "cirrus", "lwir")


@dataclass(frozen=True)
class Sensor:
    """One sensor of a product whose sensors number their bands differently (Landsat TM / ETM+
    and OLI, HLS S30 and L30): which files are its, and its band of each common band name
    (:data:`COMMON_BANDS`). An archive holding more than one of them becomes one source per sensor,
    the bands matched by wavelength (:func:`build_adhoc_catalog`)."""

    key: str  # the source's name in the catalog
    name: str
    files: str  # regex on a file's name
    glob: str  # its scene files' names, as the preset's ``glob``
    bands: dict[str, str]  # common name -> its band file token


@dataclass(frozen=True)
class Preset:
    """A product `fusioncube ingest` recognises by its file names: its QA / UDM file becomes the
    mask sidecar, and its digital numbers are scaled to physical units where the files do not
    declare a scale themselves (``scales``: band-name prefix -> (scale, offset))."""

    name: str
    scene: str  # regex on a scene (or first band) file name
    mask: str  # its replacement: the mask file's name
    rule: dict[str, Any]
    #: band-name prefix -> (scale, offset), or (scale, offset, (raw valid min, raw valid max))
    scales: dict[str, tuple[float, float] | tuple[float, float, tuple[float, float]]]
    #: the scene files' names as a glob: a folder given to `fusioncube ingest` is searched for these
    #: only, so the product's other files (Sentinel-2's AOT / WVP / TCI, Landsat's QA_RADSAT and
    #: ST_QA, PlanetScope's metadata) are not taken for scenes
    glob: str = "*"
    #: per-scene radiometry from the product's metadata (``SourceSpec.radiometry``), used when
    #: every scene file's metadata is found (a SAFE's MTD_MSIL2A.xml, a STAC item beside the COGs,
    #: a Landsat scene's MTL)
    radiometry: str | None = None
    #: the product's own ``band_files`` regex, when its band names are not :data:`BAND_TOKEN`'s
    band_files: str | None = None
    #: scene files of the product that are not taken (regex on the file name)
    exclude: str | None = None
    #: the bands' fill value where the files declare none
    nodata: float | None = None
    #: its sensors, where they number their bands differently
    sensors: tuple[Sensor, ...] = ()


PRESETS = (
    # UDM2 band 1 = clear; surface reflectance scaled by 10 000
    Preset("PlanetScope surface reflectance", r"_AnalyticMS_SR(?:_8b)?(?:_harmonized)?(_clip)?\.tif$",
           r"_udm2\1.tif", {"band": 1, "clear_values": [1]}, {"": (1e-4, 0.0)}, "*_AnalyticMS_SR*.tif"),
    # QA_PIXEL bits 0-4: fill, dilated cloud, cirrus, cloud, cloud shadow (snow, water kept);
    # Collection 2 Level-2 scaling and valid ranges (SR 7273-43636, ST 293-61440); DN 0 is fill
    Preset("Landsat Collection 2 Level-2", r"_S[RT]_B\d+\.TIF$", "_QA_PIXEL.TIF",
           {"band": 1, "invalid_bits": [0, 1, 2, 3, 4]},
           {"SR_": (2.75e-5, -0.2, (7273.0, 43636.0)), "ST_": (0.00341802, 149.0, (293.0, 61440.0))},
           "*_S[RT]_B*.TIF", nodata=0.0, sensors=(
               Sensor("scenes_oli", "Landsat 8-9 OLI", r"^L[CO]0[89]_", "L[CO]0[89]_*_S[RT]_B*.TIF",
                      {"coastal": "SR_B1", "blue": "SR_B2", "green": "SR_B3", "red": "SR_B4", "nir08": "SR_B5",
                       "swir16": "SR_B6", "swir22": "SR_B7", "lwir": "ST_B10"}),
               Sensor("scenes_tm_etm", "Landsat 4-7 TM / ETM+", r"^L[TE]0[457]_", "L[TE]0[457]_*_S[RT]_B*.TIF",
                      {"blue": "SR_B1", "green": "SR_B2", "red": "SR_B3", "nir08": "SR_B4", "swir16": "SR_B5",
                       "swir22": "SR_B7", "lwir": "ST_B6"}))),
    # Scene classification: 0 no data, 1 saturated, 3 cloud shadow, 8-9 cloud, 10 cirrus; inside a
    # .SAFE reflectance per scene from its MTD_MSIL2A.xml (the offset changed with baseline 04.00),
    # digital numbers otherwise; digital number 0 is no data (the JP2s declare none)
    Preset("Sentinel-2 Level-2A", r"_B[0-9][0-9A]_\d{2}m\.jp2$", "_SCL_20m.jp2",
           {"band": 1, "invalid_values": [0, 1, 3, 8, 9, 10]}, {}, "*_B[0-9][0-9A]_[0-9][0-9]m.jp2",
           "sentinel2_l2a", nodata=0.0),
    # ... and its band files converted to GeoTIFF / COG under the same names (the SCL beside them too)
    Preset("Sentinel-2 Level-2A (GeoTIFF)", r"_B[0-9][0-9A]_\d{2}m(\.tiff?)$", r"_SCL_20m\1",
           {"band": 1, "invalid_values": [0, 1, 3, 8, 9, 10]}, {}, "*_B[0-9][0-9A]_[0-9][0-9]m.tif",
           "sentinel2_l2a", nodata=0.0),
    # Sentinel-2 Level-1C (band files in GRANULE/*/IMG_DATA, no resolution in their names): the
    # cloud mask MSK_CLASSI_B00.jp2 of QI_DATA (processing baseline 04.00 on; band 1 opaque cloud,
    # 2 cirrus, 3 snow), top-of-atmosphere reflectance per scene from its MTD_MSIL1C.xml
    Preset("Sentinel-2 Level-1C", r"^T\d{2}[A-Z]{3}_\d{8}T\d{6}_B[0-9][0-9A]\.jp2$", "MSK_CLASSI_B00.jp2",
           {"bands": [1, 2], "clear_values": [0]}, {}, "T*_B[0-9][0-9A].jp2", "sentinel2_l1c", nodata=0.0),
    # NASA HLS v2 (S30 / L30): Fmask bits 1 cloud, 2 adjacent to cloud or shadow, 3 cloud shadow;
    # the COGs declare their scale (1e-4, thermal 0.01) as scale_factor metadata
    Preset("Harmonized Landsat Sentinel-2 (HLS)", r"\.(?:B\d{2}|B8A)\.tif$", ".Fmask.tif",
           {"band": 1, "invalid_bits": [1, 2, 3]}, {}, "HLS.*.B[0-9][0-9A].tif", sensors=(
               Sensor("scenes_s30", "HLS S30 (Sentinel-2)", r"^HLS\.S30\.", "HLS.S30.*.B[0-9][0-9A].tif",
                      {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "nir08": "B8A",
                       "swir16": "B11", "swir22": "B12", "cirrus": "B10"}),
               Sensor("scenes_l30", "HLS L30 (Landsat 8-9)", r"^HLS\.L30\.", "HLS.L30.*.B[0-9][0-9A].tif",
                      {"coastal": "B01", "blue": "B02", "green": "B03", "red": "B04", "nir08": "B05",
                       "swir16": "B06", "swir22": "B07", "cirrus": "B09"}))),
    # ... and HLS v2 as NASA AppEEARS exports it (HLSS30.020_B04_doy2023182_aid0001.tif beside
    # HLSS30.020_Fmask_doy2023182_aid0001.tif): the same Fmask bits
    Preset("Harmonized Landsat Sentinel-2 (HLS, AppEEARS)", r"^(HLS[SL]30\.\d{3}_)(?:B\d{2}|B8A)(_doy\d+_aid\d+\.tif)$",
           r"\1Fmask\2", {"band": 1, "invalid_bits": [1, 2, 3]}, {"B": (1e-4, 0.0)}, "HLS[SL]30.*_B*_doy*_aid*.tif",
           nodata=-9999.0),
    # Landsat Collection 2 Level-1: the same QA_PIXEL bits (CFMask); per scene, top-of-atmosphere
    # reflectance from its MTL (sun elevation included), thermal bands as radiance; the 15 m
    # panchromatic band (B8 of Landsat 7-9) is not taken, it would put the 30 m bands on a 15 m grid
    Preset("Landsat Collection 2 Level-1", r"(?<!_S[RT])_B\d{1,2}(?:_VCID_\d)?\.TIF$", "_QA_PIXEL.TIF",
           {"band": 1, "invalid_bits": [0, 1, 2, 3, 4]}, {}, "L*_L1*_B[0-79]*.TIF", "landsat_c2_l1",
           band_files=r"_(?P<band>B\d{1,2}(?:_VCID_\d)?)\.TIF$", exclude=r"_B8\.TIF$", nodata=0.0, sensors=(
               Sensor("scenes_oli", "Landsat 8-9 OLI", r"^L[CO]0[89]_", "L[CO]0[89]_L1*_B[0-79]*.TIF",
                      {"coastal": "B1", "blue": "B2", "green": "B3", "red": "B4", "nir08": "B5", "swir16": "B6",
                       "swir22": "B7", "cirrus": "B9", "lwir": "B10"}),
               Sensor("scenes_etm", "Landsat 7 ETM+", r"^LE07_", "LE07_L1*_B[0-79]*.TIF",
                      {"blue": "B1", "green": "B2", "red": "B3", "nir08": "B4", "swir16": "B5", "swir22": "B7",
                       "lwir": "B6_VCID_1"}),
               Sensor("scenes_tm", "Landsat 4-5 TM", r"^LT0[45]_", "LT0[45]_L1*_B[0-79]*.TIF",
                      {"blue": "B1", "green": "B2", "red": "B3", "nir08": "B4", "swir16": "B5", "swir22": "B7",
                       "lwir": "B6"}))),
    # MODIS land surface temperature with its QC layer beside it (AppEEARS' MOD11A1.061_LST_Day_1km_
    # doy2019182_aid0001.tif + ..._QC_Day_..., or LP DAAC's ....061.LST_Day_1km.tif + .QC_Day.tif):
    # QC bits 0-1 = 2 or 3, LST not produced (cloud, other reasons)
    Preset("MODIS land surface temperature + QC", r"([._])LST_(Day|Night)_1km([._])", r"\1QC_\2\3",
           {"band": 1, "invalid_values": [2, 3], "bit_mask": 3}, {}),
    # MODIS vegetation indices with their pixel reliability beside them (AppEEARS' MOD13Q1.061__250m_
    # 16_days_NDVI_doy..., ..._pixel_reliability_...): 0 good, 1 marginal are clear; 2 snow / ice,
    # 3 cloudy and -1 fill are not (a cloudy composite keeps an NDVI value, the reliability says so)
    Preset("MODIS vegetation index + pixel reliability", r"([._])(?:NDVI|EVI2?)([._])", r"\1pixel_reliability\2",
           {"band": 1, "clear_values": [0, 1]}, {}),
    # the same as STAC item folders of COGs named by band (Earth Search: S2B_33UUP_20230612_0_L2A/B02.tif)
    Preset("Sentinel-2 Level-2A item COGs", r"^B[0-9][0-9A]\.tif$", "SCL.tif",
           {"band": 1, "invalid_values": [0, 1, 3, 8, 9, 10]}, {}, "B[0-9][0-9A].tif", "sentinel2_l2a",
           nodata=0.0),
)


@dataclass(frozen=True)
class LayerUnits:
    """The units of a science layer of a product whose files declare none (NASA's MODIS / VIIRS
    land products as JPEG 2000 or GeoTIFF cuts, AppEEARS exports, Earth Engine downloads keep the
    HDF's raw integers without its ``scale_factor``): taken from the product's user guide."""

    name: str
    layer: str  # regex on the layer's name token (a band file's token, or a one-band file's name)
    scale: float
    nodata: float  # the fill value (raw)
    valid: tuple[float, float]  # the valid range (raw)
    offset: float = 0.0


#: a file of a MODIS or VIIRS land product, by its short name (MOD13Q1, MYD11A2, MCD43A4, VNP13A1)
#: or by the instrument named in the file name (sits' ``TERRA_MODIS_012010_NDVI_2013-09-14.jp2``)
_MODIS_VIIRS = re.compile(r"(?:^|[^A-Za-z0-9])(?:(?:MOD|MYD|MCD|VNP|VJ1)\d{2}[A-Z0-9]{0,3}|MODIS|VIIRS)(?:[^A-Za-z]|$)",
                          re.IGNORECASE)


def _token(name: str) -> str:
    """A layer name as a whole token: not inside a longer word (NDVI is not in NDVI_Quality)."""
    return rf"(?:^|(?<=[^A-Za-z0-9]))(?:{name})(?=[^A-Za-z0-9]|$)"


# Collection 6.1 user guides (MOD13, MOD11, MOD09, MCD43, MOD15) and VIIRS VNP13
KNOWN_LAYERS = (
    LayerUnits("MODIS / VIIRS vegetation index", _token(r"NDVI|EVI2?"), 1e-4, -3000.0, (-2000.0, 10000.0)),
    LayerUnits("MODIS land surface temperature (K)", _token(r"LST_(?:Day|Night)(?:_1km)?"), 0.02, 0.0, (7500.0, 65535.0)),
    LayerUnits("MODIS surface reflectance", _token(r"sur_refl_b\d{2}"), 1e-4, -28672.0, (-100.0, 16000.0)),
    LayerUnits("MODIS nadir BRDF-adjusted reflectance", _token(r"Nadir_Reflectance_Band\d"), 1e-4, 32767.0, (0.0, 32766.0)),
    LayerUnits("MODIS leaf area index", _token(r"Lai(?:_500m)?"), 0.1, 255.0, (0.0, 100.0)),
    LayerUnits("MODIS FPAR", _token(r"Fpar(?:_500m)?"), 0.01, 255.0, (0.0, 100.0)),
)


def known_layer(file: str, layer: str) -> LayerUnits | None:
    """The units rule of ``layer`` (a band's name or file token, or a one-band file's name) in a
    file of a MODIS / VIIRS land product named ``file``, if it is one of :data:`KNOWN_LAYERS`."""
    if _MODIS_VIIRS.search(file) is None:
        return None
    return next((rule for rule in KNOWN_LAYERS if re.search(rule.layer, layer, re.IGNORECASE)), None)


def _with_known_units(band: dict[str, Any], path: str, *, one_band: bool) -> dict[str, Any]:
    """``band`` (of the file ``path``) with its product layer's units (:func:`known_layer`) when
    the file declares no scale and holds the product's raw integers (scale, fill, valid range:
    the fill and values outside the range are not observed). A one-band file's band named only
    by its number is named after the layer its file name gives (``NDVI``)."""
    name = file_name(path)
    numbered = re.fullmatch(r"band\d+", str(band["name"])) is not None
    # a band file's token is what tells it from its siblings (``Day`` of ``LST_Day_1km``): its
    # layer is in the file's whole name
    layer = name if (one_band and numbered) or "file" in band else str(band["name"])
    rule = known_layer(name, layer)
    if rule is None:
        return band
    out = dict(band)
    found = re.search(rule.layer, layer, re.IGNORECASE) if one_band and numbered else None
    if found is not None:
        out["name"] = found.group(0)
    with rasterio.open(path) as ds:
        raw = np.issubdtype(np.dtype(ds.dtypes[band["index"] - 1]), np.integer)
    if not raw or "scale" in band or "offset" in band:
        return out  # floats are physical already; a declared scale is the file's word
    lo, hi = sorted(v * rule.scale + rule.offset for v in rule.valid)
    out |= {"scale": rule.scale, **({"offset": rule.offset} if rule.offset else {})}
    if "valid_min" not in out and "valid_max" not in out:
        out["valid_min"], out["valid_max"] = lo, hi
    out.setdefault("nodata", rule.nodata)
    log.info("%s: band %s is %s: scale %g, fill %g, valid %g .. %g", name, out["name"], rule.name, rule.scale,
             out["nodata"], lo, hi)
    return out


def _preset(files: list[str]) -> tuple[Preset, set[str]] | None:
    """The product the files are, with its mask files, when a scene's mask file is there too."""
    present = set(files)
    for preset in PRESETS:
        masks = set()
        for f in files:
            mask = sidecar_of(f, preset.scene, preset.mask)
            if mask is not None and (mask in present or (not is_remote(mask) and Path(mask).is_file())):
                masks.add(mask)
        if masks:
            return preset, masks
    return None


def _layer_source(name: str, layer: str) -> dict[str, Any]:
    """The static, categorical source of a ``--layer NAME=FILE`` class map (its first band)."""
    if not name.isidentifier():
        raise ValueError(f"--layer {name}={layer}: the layer name must be an identifier (e.g. landcover)")
    pattern = layer if is_remote(layer) or any(c in layer for c in "*?[") else str(Path(layer).resolve())
    files = expand_globs([pattern])
    if not files:
        raise FileNotFoundError(f"--layer {name}={layer}: no such file")
    band = describe_bands(files[0])[0]
    return {"kind": "categorical", "static": True, "glob": [pattern],
            "bands": [{"name": name, "index": band["index"], **({"nodata": band["nodata"]} if "nodata" in band else {})}],
            "max_nodata_share": 1.0}


def _cube_sources(out: Path) -> dict[str, dict[str, Any]] | None:
    """The sources of the catalog beside the cube at ``out`` (``fusioncube ingest`` wrote it), each
    a dict; None for a new cube, or a catalog edited beyond recognition (then the files decide)."""
    beside = out.with_name(out.name + ".catalog.yaml")
    if not (out.with_name(out.name + ".manifest.json").exists() and beside.exists()):
        return None
    try:
        sources = yaml.safe_load(beside.read_text())["sources"]
    except (yaml.YAMLError, KeyError, TypeError):
        return None
    if not isinstance(sources, dict):
        return None
    return {str(k): v for k, v in sources.items() if isinstance(v, dict)}


def _keep_cube_rules(before: dict[str, dict[str, Any]] | None, name: str, sources: dict[str, _Source],
                     mask: dict[str, Any] | None) -> dict[str, Any] | None:
    """On an append to the cube at ``out`` without unit options: each band keeps the scale, offset,
    nodata and valid range, and the source its mask rule, that the catalog beside the cube gave
    them (a newer fusioncube may read a product's files otherwise: the cube's later dates stay in
    its units), with a warning naming what a new cube would take instead. ``before``: the sources
    of the catalog beside the cube named ``name`` (:func:`_cube_sources`). Returns the mask rule."""
    if before is None:
        return mask
    changed: list[str] = []
    for key, src in sources.items():
        old = before.get(key)
        if old is None:
            continue
        recorded = {b.get("name"): b for b in old.get("bands") or [] if isinstance(b, dict)}
        for i, band in enumerate(src.bands):
            was = recorded.get(band["name"])
            if was is None:
                continue
            kept = {**{k: v for k, v in band.items() if k not in _UNIT_KEYS}, **{k: was[k] for k in _UNIT_KEYS if k in was}}
            if kept != band:
                changed.append(f"band {band['name']}: " + ", ".join(
                    f"{k} {band.get(k):.6g}" if isinstance(band.get(k), float) else f"{k} {band.get(k)}"
                    for k in _UNIT_KEYS if band.get(k) != kept.get(k)))
            src.bands[i] = kept
        if mask is not None and isinstance(old.get("mask"), dict) and old["mask"] != mask:
            changed.append(f"mask {({k: v for k, v in mask.items() if k != 'sidecar'})}")
            mask = old["mask"]
    if changed:
        log.warning("%s keeps the rules it was built with; a new cube of these files would take %s (this "
                    "fusioncube reads the product so: write a new cube to have them)", name, "; ".join(changed))
    return mask


#: band-file tokens of quality / QA layers: bit fields and class codes, not values to interpolate
QUALITY_LAYER = re.compile(r"(^|[._])(QC|QA|VI_Quality|pixel_reliability|state_1km|Fmask|SCL|udm2?|QA_PIXEL|"
                           r"QA_RADSAT|cloud_mask|Quality)([._]|$)", re.IGNORECASE)


def _drop_quality_layers(src: _Source, *, keep: set[str]) -> None:
    """Leave a product's quality layers (MODIS VI_Quality, QC_Night, ...) out of its bands when
    other bands remain, unless the cube has them already (``keep``): warped as values, their bit
    fields would be averaged into codes that mean nothing. Their files are passed over
    (``unused_band_files``); ``--bands`` takes one anyway."""
    quality = [b for b in src.bands if QUALITY_LAYER.search(str(b.get("file", b["name"]))) and b["name"] not in keep]
    if quality and len(quality) < len(src.bands):
        src.bands = [b for b in src.bands if b not in quality]
        log.info("quality layers %s are not taken as bands (bit fields, not values); --bands %s takes them",
                 [b["name"] for b in quality], ",".join(b["name"] for b in quality))


def _kept_resampling(out: Path, key: str) -> str | None:
    """The resampling an append to the cube at ``out`` keeps for its source ``key``: the one its
    manifest records; bilinear for a cube made before it recorded one (fusioncube then warped
    values bilinearly onto coarser grids too); None (the default) for a new cube."""
    from tasks.checkpoint import read_manifest

    manifest = read_manifest(out) if out.with_name(out.name + ".manifest.json").exists() else None
    if manifest is None or not manifest.outputs.get("time_steps"):
        return None
    recorded = manifest.outputs.get("value_rules")
    if recorded is None:
        return "bilinear"
    return (recorded.get(key) or {}).get("resampling")


def _product_radiometry(before: dict[str, dict[str, Any]] | None, key: str, files: list[str], kind: str) -> bool:
    """Whether the source ``key`` reads physical units from the product's metadata (``kind``): on
    an append (``before``: the sources of the catalog beside the cube), as the cube was built (one
    new file without metadata is then quarantined, not a reason to read every later date in
    digital numbers beside the cube's reflectances); for a new cube, when every file's metadata
    gives them."""
    if before is not None and key in before:
        return bool(before[key].get("radiometry") == kind)
    return _radiometry_known(files, kind)


def _radiometry_known(files: list[str], kind: str) -> bool:
    """Whether every file's product metadata gives its radiometry (then the source reads physical
    units per scene; else every scene keeps digital numbers, none half-converted)."""
    from tasks.radiometry import scene_radiometry

    try:
        for f in files:
            scene_radiometry(kind, f)(file_name(f))
    except SceneError as exc:
        log.warning("%s: %s; every scene keeps its digital numbers", exc.path, exc.reason)
        return False
    return True


def _narrowed(pattern: str, preset: Preset) -> str:
    """A folder's recursive glob (``DIR/**/*.jp2``, from :func:`_folder_globs`) or an archive glob
    (``DIR/**/*.zip``) narrowed to the preset's scene files; any other pattern as given."""
    if is_remote(pattern):
        return pattern
    if is_archive(pattern):  # archives (a folder's, or named): their members that are scene files
        return f"{pattern}/{preset.glob}"
    path = Path(pattern)
    suffix = path.name[1:]
    if path.parent.name != "**" or not path.name.startswith("*") or not preset.glob.endswith(suffix):
        return pattern
    return str(path.parent / preset.glob)


def _selected(bands: list[dict[str, Any]], select: Sequence[str], described_by: str) -> list[dict[str, Any]]:
    """The bands named in ``select``, in that order; an unknown name is refused with the choices."""
    by_name = {str(b["name"]): b for b in bands}
    unknown = [n for n in select if n not in by_name]
    if unknown:
        raise ValueError(f"--bands {','.join(select)}: no band {unknown} in {file_name(described_by)}; its bands are "
                         f"{list(by_name)}")
    if len(set(select)) != len(select):
        raise ValueError(f"--bands {','.join(select)}: a band is named twice")
    return [by_name[n] for n in select]


def _warn_empty_bands(path: str, bands: list[dict[str, Any]], side: int = 256) -> list[str]:
    """Warn about the bands of ``path`` with no value at all (every pixel nodata or NaN, read at
    most ``side`` px a side) while another band has some: a pixel is valid only where every band is
    observed, so such a band leaves no pixel valid. Returns their names. Remote files are not read
    here (without overviews that would fetch the whole file)."""
    if is_remote(path):
        return []
    try:
        with rasterio.open(path) as ds:
            scale = max(1, -(-max(ds.height, ds.width) // side))
            shape = (max(1, ds.height // scale), max(1, ds.width // scale))
            a = ds.read([b["index"] for b in bands], out_shape=(len(bands), *shape), masked=True)  # one pass
            has = (~np.ma.getmaskarray(a) & np.isfinite(a.filled(0))).any(axis=(1, 2))
            seen = {str(b["name"]): bool(h) for b, h in zip(bands, has, strict=True)}
    except (rasterio.RasterioIOError, IndexError, ValueError):
        return []  # an unreadable file is reported where it is read
    empty = [n for n, v in seen.items() if not v]
    if empty and len(empty) < len(seen):
        kept = ",".join(n for n in seen if n not in empty)
        log.warning("%s: band(s) %s hold no value (every pixel is nodata): a pixel is valid only where every "
                    "band is observed, so no pixel of such a scene would be; leave them out with --bands %s",
                    file_name(path), empty, kept)
    return empty


def _scaled(band: dict[str, Any], preset: Preset) -> dict[str, Any]:
    """``band`` with the preset's scale when its file declared none."""
    if "scale" in band or "offset" in band:
        return band
    for prefix, (scale, offset, *valid) in preset.scales.items():
        if str(band.get("file", band["name"])).startswith(prefix):
            out = {**band, "scale": scale, **({"offset": offset} if offset else {})}
            if valid and "valid_min" not in band and "valid_max" not in band:
                out["valid_min"], out["valid_max"] = (v * scale + offset for v in valid[0])
            return out
    return band


@dataclass
class _Source:
    """One source of the catalog being built: its bands, globs and files, and every band file
    token its product has there (those it does not take become ``unused_band_files``)."""

    bands: list[dict[str, Any]]
    globs: list[str]
    files: list[str]
    tokens: list[str]

    def unused(self) -> list[str]:
        taken = {str(b.get("file")) for b in self.bands}
        return [t for t in self.tokens if t not in taken]


def _per_sensor(
    files: list[str], patterns: list[str], preset: Preset, pattern: str
) -> dict[str, _Source] | None:
    """One source per sensor when ``files`` hold more than one of ``preset``'s sensors (Landsat
    4-7 beside 8-9, HLS S30 beside L30: the same band file names mean other wavelengths), each
    with the bands every one of them has, under their common names (:data:`COMMON_BANDS`, the
    wavelengths matched as the product's user guide does); None for one sensor (its own band names).

    Each source's bands take their scale, offset and nodata from that sensor's own files. Files of
    no known sensor are left out, with a warning."""
    found = [(s, [f for f in files if re.search(s.files, file_name(f))]) for s in preset.sensors]
    found = [(s, mine) for s, mine in found if mine]
    if len(found) < 2:
        return None
    names = ", ".join(f"{s.name} ({len(mine)} files)" for s, mine in found)
    suffix = preset.glob
    if not all(p.endswith(suffix) for p in patterns):  # a glob of the user's: no sensor's files alone
        raise ValueError(f"{patterns}: the files are of {names}, which number their bands differently (the same "
                         "band file name is another wavelength). Give the folder (fusioncube ingest DIR), which "
                         "matches their bands by wavelength, or ingest each sensor into its own cube")
    taken = {f for _, mine in found for f in mine}
    if other := [file_name(f) for f in files if f not in taken]:
        log.warning("%d file(s) of no known sensor of %s are left out: %s", len(other), preset.name,
                    ", ".join(other[:3]) + (" ..." if len(other) > 3 else ""))
    tokens: dict[str, dict[str, dict[str, Any]]] = {}
    for s, mine in found:
        entries = _band_file_bands(mine, pattern, explicit=False, single_band=True) or []
        tokens[s.key] = {str(e["file"]): e for e in entries}
    common = [n for n in COMMON_BANDS if all(s.bands.get(n) in tokens[s.key] for s, _ in found)]
    if not common:
        have = "; ".join(f"{s.name}: {', '.join(sorted(tokens[s.key], key=_natural))}" for s, _ in found)
        raise ValueError(f"{names}: no band is in every sensor's files ({have}); ingest each sensor into its own cube")
    left = {s.name: [t for t in sorted(tokens[s.key], key=_natural) if t not in {s.bands[n] for n in common}]
            for s, _ in found}
    log.warning("%s in one archive: their bands are matched by wavelength and named by it (%s); left out, "
                "as not every sensor has them: %s", names,
                "; ".join(f"{n} = " + " / ".join(f"{s.name.split(' (')[0]} {s.bands[n]}" for s, _ in found) for n in common),
                "; ".join(f"{k}: {', '.join(v)}" for k, v in left.items() if v) or "none")
    return {s.key: _Source([{**tokens[s.key][s.bands[n]], "name": n} for n in common],
                           [p[: -len(suffix)] + s.glob for p in patterns], mine, list(tokens[s.key]))
            for s, mine in found}


def adhoc_cube_name(out: str | Path) -> str:
    """The cube's name in the catalog `fusioncube ingest` writes beside ``out``: the store's name
    without its suffix (``fields/ndvi.zarr`` -> ``ndvi``), other characters than letters, digits,
    ``-`` and ``_`` as ``-``. It names the pipeline's deployments (``pipeline-ndvi``), its artifacts
    folder (``artifacts/ndvi/``) and its tags, so cubes ingested side by side stay apart."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", Path(out).stem).strip("-") or "cube"


def adhoc_catalog(paths: list[str], out: Path, **options: Any) -> Path:
    """Write (and validate) a one-source, one-cube catalog for ``paths`` beside the cube ``out``;
    return its path. ``options``: those of :func:`build_adhoc_catalog`."""
    raw, path = build_adhoc_catalog(paths, out, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    cube = next(iter(raw["cubes"]))
    header = ("# written by `fusioncube ingest`; `fusioncube ingest` with the same --out adds new scenes and\n"
              f"# rewrites this file, keeping cubes.{cube}.stages / params / schedule and the stages and\n"
              f"# orchestration sections. `fusioncube run {cube} --catalog {path.name}` also runs the\n"
              f"# stages listed under cubes.{cube}.stages (e.g. [gapfill, anomalies]) with their parameters\n"
              f"# under cubes.{cube}.params (e.g. anomalies: {{bits: 6}}; see the repository's data_catalog.yaml)\n")
    signed = sorted({k for src in raw["sources"].values() for g in src["glob"] for k in url_secrets(g)})
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # replaced, never written through a link
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if signed else 0o644)
        with os.fdopen(fd, "w") as fh:
            fh.write(header + yaml.safe_dump(raw, sort_keys=False))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if signed:
        log.warning("%s holds URLs signed or authorised in their query (%s): readable by you only; signed URLs "
                    "expire, so a later run may no longer read them", path, ", ".join(signed))
    return path


def build_adhoc_catalog(
    paths: list[str],
    out: Path,
    *,
    crs: str | None = None,
    resolution: float | None = None,
    chunks: int = 256,
    time_chunk: int = 1,
    date: dict[str, str] | None = None,
    band_files: str | None = None,
    layers: dict[str, str] | None = None,
    bounds: tuple[float, float, float, float] | None = None,
    bounds_crs: str | None = None,
    aoi: str | None = None,
    units: dict[str, Any] | None = None,
    select: Sequence[str] | None = None,
    changed_scenes: str | None = None,
) -> tuple[dict[str, Any], Path]:
    """A validated one-source, one-cube catalog for ``paths`` (as a dict) and the path it is
    written to beside the cube; nothing is written.

    ``date``: the source's date rule beside ``from: auto`` (``pattern``, ``format``, ``default``;
    see ``tasks.catalog.DateRule``). ``band_files``: a regex with a group ``(?P<band>...)`` for
    products stored one file per band; by default such products are recognised by band names
    in the file names (:data:`BAND_TOKEN`: Landsat ``_SR_B4``, Sentinel-2 ``_B8A``, HLS ``.B04``).
    ``layers``: static class layers of the cube, name -> file (or glob) of a categorical raster
    such as a land cover map (its first band, warped onto the cube's grid by majority).
    ``bounds`` (``xmin, ymin, xmax, ymax`` in ``bounds_crs``, by default the grid's CRS) or ``aoi``
    (a GeoJSON or raster file, :func:`tasks.aoi.aoi_bounds`): the area the cube covers, instead of
    the scenes' union. ``units``: ``scale``, ``offset``, ``nodata`` and ``valid_range`` (min, max)
    for every band, overriding what the files declare and the product presets (:func:`_with_units`).
    ``changed_scenes``: ``keep`` or ``replace``, the cube's rule for scenes changed on disk since they
    were ingested (``tasks.catalog.CubeSpec.changed_scenes``); default: what the catalog beside the
    cube says, else keep.
    ``select``: the bands to take, by name (default: all); a band with no value in the first scene
    while the others have some is named in a warning, since a pixel is valid only where every band
    is observed. Appending to a cube whose catalog beside it has other band rules is refused
    (:func:`_check_band_rules`).
    """
    if bounds is not None and aoi is not None:
        raise ValueError("give the area as --bounds or as --aoi, not both")
    if bounds_crs is not None and bounds is None:
        raise ValueError(f"--bounds-crs {bounds_crs} without --bounds: it is the CRS the --bounds numbers are in")
    if date and "format" in date and "pattern" not in date:
        raise ValueError(f"--date-format {date['format']!r} without --date-pattern: the format parses the "
                         "pattern's (?P<date>...) group, e.g. --date-pattern '_(?P<date>\\d{8})_'")
    # (*bounds,): tuple(bounds), typed with its four numbers
    area = aoi_bounds(aoi) if aoi is not None else ((*bounds,), bounds_crs) if bounds is not None else None
    for p in paths:
        if "userinfo" in url_secrets(p):
            raise ValueError(f"{redact_url(p)}: the URL carries a user name and password (or a token before its @), "
                             "which would be written to "
                             "the catalog beside the cube and shown in messages; give them to GDAL instead "
                             "(GDAL_HTTP_USERPWD=user:password, or a ~/.netrc with GDAL_HTTP_NETRC=YES) and the URL "
                             "without them")
    shown_paths = [redact_url(p) for p in paths]
    patterns = [q for p in paths for q in _folder_globs(p)]
    patterns = [p if is_remote(p) or any(c in p for c in "*?[") else str(Path(p).resolve()) for p in patterns]
    files = sorted({f for p in patterns for f in expand_globs([p])})
    if not files:
        raise FileNotFoundError(f"no file matches {shown_paths}")
    out = Path(out).resolve()
    preset = _preset(files)
    if preset is not None:
        narrowed = [_narrowed(p, preset[0]) for p in patterns]
        if narrowed != patterns:  # a folder: its product's scene files only
            patterns = narrowed
            files = sorted({f for p in patterns for f in expand_globs([p])})
        files = [f for f in files if f not in preset[1]]  # its mask files are masks, not scenes
        if preset[0].exclude:
            files = [f for f in files if not re.search(preset[0].exclude, file_name(f))]
    bands: list[dict[str, Any]] = []
    band_count: int | None = None
    dtype: str | None = None
    described = False
    classes = False  # a class map (a palette band): warped by majority, never interpolated
    why: list[str] = []
    described_by = files[0]
    for f in files:  # the first readable file describes the bands
        try:
            bands, described_by = describe_bands(f), f
        except SceneError as exc:
            why.append(f"{file_name(f)}: {exc.reason}")
            continue
        with rasterio.open(f) as ds:  # files with another band count are quarantined, not misread
            band_count = (None if ds.subdatasets or date_stack(ds.descriptions) or netcdf_time_bands(ds)
                          else ds.count)
            dtype = None if ds.subdatasets else ds.dtypes[0]
            described = band_count is not None and any(ds.descriptions[b["index"] - 1] for b in bands) and all(
                ds.descriptions[b["index"] - 1] in (None, "", b["name"]) for b in bands)
            classes = not ds.subdatasets and ds.colorinterp[bands[0]["index"] - 1] == ColorInterp.palette
        break
    if not bands:
        shown = "; ".join(why[:3]) + (f"; and {len(why) - 3} more" if len(why) > 3 else "")
        raise FileNotFoundError(f"none of the {len(files)} file(s) matching {shown_paths} can be read as a scene: "
                                f"{shown}")
    explicit_pattern = bool(band_files)
    pattern = band_files or (preset[0].band_files if preset is not None else None) or BAND_TOKEN
    per_band = _band_file_bands(files, pattern, explicit=bool(band_files), single_band=band_count == 1)
    if per_band is None and not band_files and (layer_pattern := detect_layer_files(files)) is not None:
        pattern, per_band = layer_pattern, _band_file_bands(files, layer_pattern, explicit=True, single_band=True)
    if per_band is not None:
        band_files, bands, band_count = pattern, per_band, None
    elif band_count is not None:  # plain rasters: each file's own nodata (the first file's is no rule)
        bands = [{k: v for k, v in b.items() if k != "nodata"} for b in bands]
        bands = [_with_known_units(b, described_by, one_band=band_count == 1) for b in bands]
    # the catalog's sources: one, or one per sensor of a product whose sensors number their bands
    # differently (Landsat 7 beside Landsat 8, HLS S30 beside L30)
    sources = {"scenes": _Source(bands, patterns, files, [str(b["file"]) for b in bands] if per_band else [])}
    if preset is not None and per_band is not None and not explicit_pattern:
        sources = _per_sensor(files, patterns, preset[0], pattern) or sources
    before = _cube_sources(out)  # an append: the catalog the cube was built with
    if per_band is not None and not select:
        for src in sources.values():
            _drop_quality_layers(src, keep={str(b.get("name")) for old in (before or {}).values()
                                            for b in old.get("bands") or [] if isinstance(b, dict)})
    mask: dict[str, Any] | None = None
    radiometry: dict[str, str] = {}
    if preset is not None:
        product = preset[0]
        log.info("%s: %s files; masks from %s", shown_paths, product.name, product.mask)
        mask = {"sidecar": {"pattern": product.scene, "replacement": product.mask}, **product.rule}
        for key, src in sources.items():
            src.bands = [_scaled(b, product) for b in src.bands]
            if product.nodata is not None:  # DN 0 outside the swath (NaN: the file declares none)
                src.bands = [{**b, "nodata": product.nodata} if math.isnan(b.get("nodata", math.nan)) else b
                             for b in src.bands]
            if product.radiometry and _product_radiometry(before, key, src.files, product.radiometry):
                radiometry[key] = product.radiometry
                src.bands = [{k: v for k, v in b.items() if k not in ("scale", "offset")} for b in src.bands]
    for key, src in sources.items():
        if select:
            src.bands = _selected(src.bands, select, described_by)
        elif band_count is not None and len(src.bands) > 1:
            _warn_empty_bands(described_by, src.bands)
        if units:
            src.bands = [_with_units(b, units) for b in src.bands]
            if {"scale", "offset"} & set(units):
                radiometry.pop(key, None)  # the user's scale replaces the product's own radiometry
    if not units:
        mask = _keep_cube_rules(before, out.name, sources, mask)
    # what is not given comes from the first scene (tasks.ingest.cube_grid): its CRS, its finest
    # band's pixel size, or the size its pixels take in the given CRS
    grid: dict[str, Any] | None = {k: v for k, v in (("crs", crs), ("resolution", resolution))
                                   if v is not None} or None  # a resolution of 0 is refused, not dropped
    if area is not None:
        box, box_crs = area
        if box_crs is None:
            _refuse_degrees(box, crs or _crs_of(files))
        grid = {**(grid or {}), "bounds": list(box), **({"bounds_crs": box_crs} if box_crs else {})}
    raw: dict[str, Any] = {
        "sources": {
            key: {
                "kind": "continuous",
                "glob": [p if is_remote(p) or Path(p).is_absolute() else str(Path(p).resolve()) for p in src.globs],
                "date": {"from": "auto", **(date or {})},
                **({"band_files": band_files} if per_band is not None else {}),
                # the product's band files this source leaves out: passed over, not reported
                **({"unused_band_files": unused} if (unused := src.unused()) else {}),
                **({"band_count": band_count} if band_count else {}),
                # bands named by the first file's descriptions: a file with them in another order is refused
                **({"match_descriptions": True} if described and per_band is None else {}),
                # a scale turns digital numbers into units: a file of another type (reflectance as
                # floats among 16-bit numbers) is another product and is quarantined, not scaled
                **({"dtypes": [dtype]} if band_count and dtype and any("scale" in b or "offset" in b
                                                                       for b in src.bands) else {}),
                "bands": src.bands,
                **({"mask": mask} if mask else {}),
                **({"radiometry": radiometry[key]} if key in radiometry else {}),
                **({"resampling": "mode"} if classes else
                   {"resampling": kept} if (kept := _kept_resampling(out, key)) else {}),
                "max_nodata_share": 1.0,
            }
            for key, src in sources.items()
        },
        "cubes": {
            adhoc_cube_name(out): {
                "sources": list(sources),
                **({"static": {name: f"layer_{name}" for name in layers}} if layers else {}),
                "grid": grid,
                "chunks": {"time": time_chunk, "y": chunks, "x": chunks},
                "path": str(out),
            }
        },
        "storage": {"root": str(out.parent)},
    }
    for name, layer in (layers or {}).items():
        raw["sources"][f"layer_{name}"] = _layer_source(name, layer)
    path = out.with_name(out.name + ".catalog.yaml")
    _keep_pipeline_settings(raw, path, keep_grid=out.with_name(out.name + ".manifest.json").exists())
    if changed_scenes is not None:
        raw["cubes"][adhoc_cube_name(out)]["changed_scenes"] = changed_scenes
    if classes:
        log.warning("%s: a class map (its band has a colour table): its codes are warped by majority, never "
                    "interpolated; to add it to another cube as a label layer use --layer NAME=FILE",
                    file_name(described_by))
    try:
        catalog = catalog_from_dict(raw, path=path)  # validate before writing anything
    except CatalogError as exc:  # the user wrote no catalog: the options that set those keys
        raise ValueError(_as_options(str(exc))) from None
    if out.exists() and out.with_name(out.name + ".manifest.json").exists():  # appending: the same bands
        from tasks.checkpoint import read_manifest
        from tasks.ingest import check_cube_bands, check_cube_grid, value_rule_changes

        check_cube_bands(out, [b["name"] for b in next(iter(sources.values())).bands])
        if grid is not None:
            check_cube_grid(out, GridSpec(**grid))
        manifest = read_manifest(out)
        if manifest is not None and manifest.outputs.get("value_rules"):  # the rules the cube was built with
            if changes := value_rule_changes(catalog, adhoc_cube_name(out), manifest):
                raise ValueError(f"{out.name} was ingested under other rules than these options give "
                                 f"({'; '.join(changes[:6])}): appending would read new dates in other units "
                                 "or with another valid mask. Give the same --scale / --offset / --nodata / "
                                 "--valid-range as before, or write a new cube")
        else:  # a cube from before its manifest recorded them: the catalog written beside it then
            _check_band_rules(out, path, {key: src.bands for key, src in sources.items()})
    return raw, path


#: what a user adds to the catalog beside a cube for `fusioncube run` (and the rule for changed
#: scenes); a new ingest keeps it
PIPELINE_CUBE_KEYS = ("stages", "params", "schedule", "changed_scenes")
PIPELINE_KEYS = ("stages", "orchestration")


def _keep_pipeline_settings(raw: dict[str, Any], path: Path, *, keep_grid: bool = False) -> None:
    """Carry the pipeline settings of the catalog already at ``path`` (the cube's stages and own
    parameters, the shared stage parameters, orchestration) into ``raw``: the rest of that catalog
    is rebuilt from the command line at every ingest, these are the user's. ``keep_grid``: also its
    grid where ``raw`` has none (an append without the grid options: the cube keeps its grid, and
    the catalog keeps saying it was given)."""
    if not path.exists():
        return
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: the catalog beside the cube cannot be read ({exc}); fix it, or move it "
                           "away to have a new one written (its stages and parameters would be lost)") from exc
    if not isinstance(old, dict):
        return
    cube = next(iter(raw["cubes"]))
    cubes = old.get("cubes") or {}
    # its one cube, whatever it was called (catalogs before 2026-12 named it "cube")
    old_cube = next(iter(cubes.values()), None) if isinstance(cubes, dict) and len(cubes) == 1 else None
    if isinstance(old_cube, dict):
        raw["cubes"][cube].update({k: old_cube[k] for k in PIPELINE_CUBE_KEYS if k in old_cube})
        if keep_grid and raw["cubes"][cube].get("grid") is None and old_cube.get("grid"):
            raw["cubes"][cube]["grid"] = old_cube["grid"]
    raw.update({k: old[k] for k in PIPELINE_KEYS if k in old})


_UNIT_KEYS = ("scale", "offset", "nodata", "valid_min", "valid_max")


def _with_units(band: dict[str, Any], units: dict[str, Any]) -> dict[str, Any]:
    """``band`` with the user's ``scale`` / ``offset`` / ``nodata`` / ``valid_range``. A new scale
    without a valid range keeps the band's valid range on the same raw values (it was in the old
    physical units)."""
    out = dict(band)
    if "scale" in units or "offset" in units:  # both replace the file's pair: a scale alone means offset 0
        old = (float(band.get("scale", 1.0)), float(band.get("offset", 0.0)))
        out["scale"] = float(units.get("scale", 1.0))
        out.pop("offset", None)
        if units.get("offset"):
            out["offset"] = float(units["offset"])
        keys = [k for k in ("valid_min", "valid_max") if k in out]
        if "valid_range" not in units and keys and old[0] != 0:  # the same raw values, in the new units
            out.update(zip(keys, sorted((out[k] - old[1]) / old[0] * out["scale"] + out.get("offset", 0.0)
                                        for k in keys), strict=True))
    if "nodata" in units:
        out["nodata"] = float(units["nodata"])
    if "valid_range" in units:
        lo, hi = (float(v) for v in units["valid_range"])
        if not lo <= hi:
            raise ValueError(f"--valid-range MIN MAX needs MIN <= MAX; got {lo:g} {hi:g}")
        out["valid_min"], out["valid_max"] = lo, hi
    return out


def _check_band_rules(cube: Path, catalog_path: Path, sources: dict[str, list[dict[str, Any]]]) -> None:
    """Refuse to append with band rules (scale, offset, nodata, valid range) other than those the
    cube was built with, as its catalog beside it records (source by source): the new dates would
    be in other units."""
    if not catalog_path.exists():
        return
    try:
        before = {key: src["bands"] for key, src in yaml.safe_load(catalog_path.read_text())["sources"].items()
                  if key in sources}
    except (yaml.YAMLError, KeyError, TypeError, AttributeError):
        return  # edited by hand beyond recognition: nothing to compare with

    def rules(band: dict[str, Any]) -> dict[str, Any]:
        return {k: band.get(k, {"scale": 1.0, "offset": 0.0}.get(k)) for k in _UNIT_KEYS}

    for key, bands in sources.items():
        recorded = {b.get("name"): rules(b) for b in before.get(key) or [] if isinstance(b, dict)}
        for b in bands:
            was, now = recorded.get(b["name"]), rules(b)
            if was is not None and was != now:
                diff = ", ".join(f"{k} {was[k]} -> {now[k]}" for k in _UNIT_KEYS if was[k] != now[k])
                raise ValueError(f"{cube.name}: band {b['name']} was ingested with other "
                                 f"rules ({diff}; {catalog_path}); appending would mix units. Give the same --scale / "
                                 "--offset / --nodata / --valid-range as before, or write a new cube")


def _crs_of(files: list[str]) -> str | None:
    """The CRS of the first of ``files`` that has one (the grid a new cube takes by default)."""
    for f in files:
        try:
            with rasterio.open(f) as ds:
                if ds.crs:
                    return str(ds.crs.to_string())
        except RasterioIOError:
            continue
    return None


#: catalog keys of the one-cube catalog an ingest writes -> the command-line options that set them
OPTION_OF_KEY = {"grid.crs": "--crs", "grid.resolution": "--resolution", "grid.bounds_crs": "--bounds-crs",
                 "grid.bounds": "--bounds/--aoi", "chunks.time": "--time-chunk", "chunks.y": "--chunks",
                 "chunks.x": "--chunks", "date.pattern": "--date-pattern", "date.format": "--date-format",
                 "date.default": "--date", "band_files": "--band-files"}


def _as_options(message: str) -> str:
    """A validation error of the ingest's own catalog (``FILE: invalid catalog`` then ``  KEY: reason``
    lines) in the options' words: ``--crs: unknown CRS ...``. Lines of other keys stay as they are."""
    lines: list[str] = []
    for line in message.splitlines()[1:] or [message]:
        key, sep, reason = line.strip().partition(": ")
        option = next((o for k, o in OPTION_OF_KEY.items() if sep and (key.endswith("." + k) or key == k)), None)
        text = f"{option}: {reason}" if option else line.strip()
        if text not in lines:
            lines.append(text)
    return "invalid option" + ("s" if len(lines) > 1 else "") + ": " + "; ".join(lines)


def _refuse_degrees(box: tuple[float, float, float, float], crs: str | None) -> None:
    """Refuse bounds that look like longitude / latitude given for a grid in metres."""
    if crs and looks_like_degrees(box) and CRS.from_user_input(crs).is_projected:
        raise ValueError(
            f"--bounds {list(box)} look like longitude / latitude, but without --bounds-crs they are read in "
            f"the grid's CRS {crs}, whose units are metres; add --bounds-crs EPSG:4326"
        )
