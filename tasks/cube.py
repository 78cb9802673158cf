"""The cube schema: the contract between stages (DESIGN.md, "Cube schema").

A cube is an xarray Dataset stored as Zarr v3 with

- ``data(time, band, y, x)`` float32 in physical units, NaN where not observed;
- ``valid(time, y, x)`` bool, true where observed and clear;
- optional static layers ``name(y, x)`` (e.g. ``landcover`` uint8 with ``flag_values``);
- coordinates ``time``, ``band``, ``y``, ``x`` (pixel centres) and a ``spatial_ref`` grid mapping.
"""

from __future__ import annotations

import contextlib
import logging
import re
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import xarray as xr
from affine import Affine
from rasterio.crs import CRS

from tasks.errors import CubeSchemaError

if TYPE_CHECKING:
    import zarr
    from rasterio.windows import Window

__all__ = [
    "cube_dataset",
    "DATA_DIMS",
    "RASTER_SUFFIXES",
    "SPATIAL_DIM_NAMES",
    "VALID_DIMS",
    "band_extent",
    "band_stats",
    "check_cube",
    "class_counts",
    "crs_label",
    "cube_crs",
    "describe_cube",
    "cube_transform",
    "raster_window",
    "flag_meaning",
    "flag_meanings",
    "grid_coords",
    "observed_mask",
    "open_cube",
    "patches_by_rows",
    "row_blocks",
    "read_rows",
    "spatial_ref",
    "streamed_band_stats",
    "training_mismatch",
    "unobserved_reason",
    "TIME_ATTRS",
    "xy_attrs",
    "zarr_array",
]

log = logging.getLogger(__name__)

# Raster files GDAL reads, by suffix: a folder given to `fusioncube ingest` and the inside of an
# archive are searched for these.
RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".j2k", ".nc", ".nc4", ".vrt", ".img", ".h5", ".hdf5", ".he5", ".hdf",
                   ".grib", ".grib2", ".grb", ".grb2", ".bil", ".hgt")

DATA_DIMS = ("time", "band", "y", "x")
VALID_DIMS = ("time", "y", "x")

# zarr warns on every open of a v3 store with consolidated metadata; it is our choice, not news.
warnings.filterwarnings("ignore", message=".*Consolidated metadata.*", category=UserWarning)
# ... and xarray on every open of a store written without it (by another tool), which reads fine
warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated metadata",
                        category=RuntimeWarning)


def grid_coords(transform: Affine, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre ``y`` and ``x`` coordinates of a north-up grid."""
    if transform.b != 0 or transform.d != 0:
        raise ValueError(f"only north-up grids are supported; got a rotated transform {transform}")
    x = transform.c + (np.arange(width) + 0.5) * transform.a
    y = transform.f + (np.arange(height) + 0.5) * transform.e
    return y, x


def spatial_ref(crs: CRS, transform: Affine) -> xr.DataArray:
    """The CF grid-mapping variable (``crs_wkt`` and ``spatial_ref``), as rioxarray writes it."""
    wkt = crs.to_wkt()
    attrs = {
        "crs_wkt": wkt,
        "spatial_ref": wkt,
        "GeoTransform": " ".join(str(v) for v in transform.to_gdal()),
    }
    try:
        from pyproj import CRS as ProjCRS

        attrs.update(ProjCRS.from_wkt(wkt).to_cf())
        attrs["crs_wkt"] = wkt
    except Exception as exc:  # pyproj cannot express some CRSs in CF terms; WKT is enough
        log.debug("no CF grid-mapping attributes for %s: %s", crs, exc)
    return xr.DataArray(np.int32(0), attrs=attrs)


#: CF attributes of the ``time`` coordinate (its units and calendar are xarray's encoding)
TIME_ATTRS = {"standard_name": "time", "axis": "T", "long_name": "acquisition time"}


def xy_attrs(crs: CRS) -> dict[str, dict[str, str]]:
    """CF attributes of the ``x`` and ``y`` coordinates in ``crs`` (pyproj's ``cs_to_cf``): longitude
    / latitude in degrees for a geographic grid, easting / northing in the CRS's unit otherwise."""
    try:
        from pyproj import CRS as ProjCRS

        axes = {a.get("axis"): a for a in ProjCRS.from_wkt(crs.to_wkt()).cs_to_cf()}
        if "X" in axes and "Y" in axes:
            return {"x": axes["X"], "y": axes["Y"]}
    except Exception as exc:  # as in spatial_ref: some CRSs have no CF terms
        log.debug("no CF axis attributes for %s: %s", crs, exc)
    return {"x": {"standard_name": "projection_x_coordinate", "axis": "X"},
            "y": {"standard_name": "projection_y_coordinate", "axis": "Y"}}


def cube_dataset(
    data: np.ndarray,
    *,
    times: Sequence[Any],
    bands: Sequence[str],
    transform: Affine,
    crs: CRS | str | int,
    valid: np.ndarray | None = None,
    layers: Mapping[str, np.ndarray | tuple[np.ndarray, Mapping[str, Any]]] | None = None,
    units: str | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """A schema-following cube from arrays, for the stages to read once written (``ds.to_zarr(path,
    zarr_format=3, consolidated=True)``).

    ``data (time, band, y, x)`` in physical units (NaN: not observed) on the north-up grid
    ``transform`` in ``crs`` (anything ``CRS.from_user_input`` takes: ``32615``, ``"EPSG:4326"``,
    WKT); ``times`` its dates, ``bands`` its band names; ``valid (time, y, x)`` the clear mask
    (default: every band finite); ``layers`` other ``(y, x)`` variables, such as a land-cover layer,
    each an array or ``(array, attributes)`` (e.g. ``flag_values`` / ``flag_meanings``); ``units``
    of ``data`` when all bands share them; ``attrs`` the cube's global attributes."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim != 4:
        raise ValueError(f"data must be (time, band, y, x); got shape {data.shape}")
    n_time, n_band, height, width = data.shape
    if len(times) != n_time or len(bands) != n_band:
        raise ValueError(f"data is {n_time} dates x {n_band} bands; got {len(times)} times and {len(bands)} bands")
    valid = np.isfinite(data).all(axis=1) if valid is None else np.asarray(valid).astype(bool)
    if valid.shape != (n_time, height, width):
        raise ValueError(f"valid must be (time, y, x) = {(n_time, height, width)}; got {valid.shape}")
    crs = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    gm = {"grid_mapping": "spatial_ref"}
    variables: dict[str, Any] = {"data": (DATA_DIMS, data, {**gm, **({"units": units} if units else {})}),
                                 "valid": (VALID_DIMS, valid, gm)}
    for name, layer in (layers or {}).items():
        values, layer_attrs = layer if isinstance(layer, tuple) else (layer, {})
        if np.shape(values) != (height, width):
            raise ValueError(f"layer {name!r} must be (y, x) = {(height, width)}; got {np.shape(values)}")
        variables[name] = (("y", "x"), np.asarray(values), {**layer_attrs, **gm})
    y, x = grid_coords(transform, height, width)
    axes = xy_attrs(crs)
    coords = {"time": ("time", pd.DatetimeIndex(list(times)).values.astype("datetime64[ns]"), TIME_ATTRS),
              "band": np.array([str(b) for b in bands], dtype=object),
              "y": ("y", y, axes["y"]), "x": ("x", x, axes["x"]), "spatial_ref": spatial_ref(crs, transform)}
    return check_cube(xr.Dataset(variables, coords=coords, attrs=dict(attrs or {})), source="cube_dataset")


#: dimension names other tools use for the schema's (stackstac, odc-stac, NetCDF conventions)
_DIM_ALIASES = {"lat": "y", "latitude": "y", "northing": "y", "lon": "x", "long": "x", "longitude": "x",
                "easting": "x", "bands": "band", "variable": "band", "t": "time", "date": "time",
                "dates": "time"}
#: lower-cased names of the spatial dimensions, the schema's and other tools', -> ``y`` or ``x``
SPATIAL_DIM_NAMES = {"y": "y", "x": "x", **{k: v for k, v in _DIM_ALIASES.items() if v in ("y", "x")}}


def patches_store_error(source: str | Path, ds: xr.Dataset, *, use: str) -> CubeSchemaError:
    """The error for a patches store (stage patch) given where a cube is read: ``use`` the cube
    the patches were cut from (named by the store's ``cube_path``) instead."""
    made_from = ds.attrs.get("cube_path")
    return CubeSchemaError(
        f"{source}: a patches store (stage patch): windows cut out of a cube, not on a map grid; {use} "
        f"the cube they were cut from{f' ({made_from})' if made_from else ''}"
        + (" (stage gapfill also takes a patches store)" if use == "give this stage" else "")
    )


def check_cube(ds: xr.Dataset, *, source: str = "cube") -> xr.Dataset:
    """Raise ``CubeSchemaError`` naming what is missing or wrong; return ``ds`` unchanged."""
    maps = [str(v) for v in ("classes", "class") if v in ds and tuple(ds[v].dims) == ("y", "x")]
    if "data" not in ds and maps:
        raise CubeSchemaError(
            f"{source}: a class map ('{maps[0]}(y, x)', stage classify or labels), not a cube of observations; "
            "its colour-mapped GeoTIFF is written beside it (.tif)"
        )
    if "data" not in ds:
        raise CubeSchemaError(
            f"{source}: no variable 'data'; a cube needs data(time, band, y, x) float "
            f"(variables present: {sorted(ds.data_vars, key=str)})"
        )
    if "patch" in ds["data"].dims:
        raise patches_store_error(source, ds, use="give this stage")
    if tuple(ds["data"].dims) != DATA_DIMS:
        dims = tuple(str(d) for d in ds["data"].dims)
        renames = {d: _DIM_ALIASES[d.lower()] for d in dims if d.lower() in _DIM_ALIASES}
        hint = (f"rename its dimensions, e.g. ds.rename({renames}), and transpose to {DATA_DIMS}"
                if renames else "transpose it, e.g. ds['data'].transpose('time', 'band', 'y', 'x')")
        raise CubeSchemaError(f"{source}: 'data' must have dims {DATA_DIMS}; got {dims} ({hint})")
    if not np.issubdtype(ds["data"].dtype, np.floating):
        raise CubeSchemaError(
            f"{source}: 'data' must be floating point with NaN where missing; got {ds['data'].dtype}"
        )
    if "valid" in ds:
        if tuple(ds["valid"].dims) != VALID_DIMS:
            raise CubeSchemaError(
                f"{source}: 'valid' must have dims {VALID_DIMS}; got {tuple(ds['valid'].dims)}"
            )
        if ds["valid"].dtype != bool and not np.issubdtype(ds["valid"].dtype, np.integer):
            raise CubeSchemaError(f"{source}: 'valid' must be bool (or 0/1 integers); got {ds['valid'].dtype}")
    for dim in DATA_DIMS:
        if dim not in ds.coords:
            raise CubeSchemaError(f"{source}: coordinate '{dim}' is missing")
    if not np.issubdtype(ds["time"].dtype, np.datetime64):
        raise CubeSchemaError(f"{source}: coordinate 'time' must be datetime64; got {ds['time'].dtype}")
    return ds


def open_cube(path: str | Path, *, chunks: dict | Literal["auto"] | None = "auto") -> xr.Dataset:
    """Open a cube lazily and check its schema. A cube without ``valid`` gets one from ``data``;
    a south-up cube (``y`` ascending) is read north-up.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    CubeSchemaError
        When it is not a schema-following cube.
    """
    ds, notes = _read_cube(Path(path), chunks)
    for note in notes:
        log.info("%s: %s", path, note)
    return ds


def compressed_store(path: str | Path) -> Path | None:
    """The compressed store at ``path``, or in the compress stage's ``--out`` folder ``path``
    (here, not in ``tasks.compress``: telling one takes no torch)."""
    path = Path(path)
    for store in (path, path / "compressed"):
        if (store / "cores.bin").exists():
            return store
    return None


def _read_cube(path: Path, chunks: dict | Literal["auto"] | None) -> tuple[xr.Dataset, list[str]]:
    """:func:`open_cube`, and what it reads differently from how the cube is stored (notes for
    a person: the stages' log, ``fusioncube info``)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such cube")
    try:
        ds = xr.open_zarr(path, chunks={} if chunks == "auto" else chunks, consolidated=None)
    except Exception as exc:
        store = compressed_store(path)
        if store is not None:
            raise CubeSchemaError(f"{path}: a compressed store (stage compress), not a Zarr cube: decode it "
                                  f"first (fusioncube stage decompress --store {store} --out cube.zarr)") from exc
        raise CubeSchemaError(f"{path}: cannot be opened as a Zarr store ({exc})") from exc
    notes: list[str] = []
    ds = _as_cube(ds, notes)
    check_cube(ds, source=str(path))
    ds = _normalised(ds, path, notes)
    if "valid" not in ds:
        notes.append("no 'valid': a pixel-date is observed where every band is finite")
        ds["valid"] = ds["data"].notnull().all("band")
    ds = _time_ordered(ds, source=str(path), notes=notes)
    ds = _float32_grid(ds, notes)
    _check_regular(ds, source=str(path))
    return _matching_geotransform(_north_up(ds, notes), notes), notes


def _as_cube(ds: xr.Dataset, notes: list[str]) -> xr.Dataset:
    """Layouts other tools write, read as the schema's (lazily); anything else is left for
    :func:`check_cube` to refuse with its reason:

    - dimensions named as other tools name them (``lat`` / ``lon``, ``bands``, ``date``, ...);
    - ``data`` under another name: the one variable over time, band, y and x, in any order;
    - one variable per band over ``(time, y, x)``, as odc-stac loads a collection (``red``,
      ``nir``, ...) or a one-variable time series (``lst``): stacked as the bands, in the order the
      store lists them (Zarr lists them by name);
    - integer values (odc-stac keeps digital numbers): as float32, the ``nodata`` value as NaN.
    """
    renames = {d: _DIM_ALIASES[str(d).lower()] for d in ds.dims
               if str(d).lower() in _DIM_ALIASES and _DIM_ALIASES[str(d).lower()] not in ds.dims}
    if renames and set(renames.values()) | set(ds.dims) >= {"time", "y", "x"}:
        notes.append(f"dimensions {list(renames)} read as {list(renames.values())}")
        ds = ds.rename(renames)
    if "data" not in ds:
        four = [v for v in ds.data_vars if set(ds[v].dims) == set(DATA_DIMS)]
        per_band = [v for v in ds.data_vars if set(ds[v].dims) == set(VALID_DIMS) and v != "valid"]
        if len(four) == 1:
            notes.append(f"variable {four[0]!r} read as 'data'")
            ds = ds.rename({four[0]: "data"})
        elif (not four and per_band and "time" in ds.coords
              and all(ds[v].dtype.kind in "fiu" for v in per_band)):  # a bool layer: a product (anomalies' flag)
            notes.append(f"variables {[str(v) for v in per_band]} (time, y, x) read as the bands of 'data'")
            layers = [_as_float(ds[v].transpose(*VALID_DIMS)) for v in per_band]
            data = xr.concat(layers, dim="band", coords="minimal", compat="override", join="exact")
            data.encoding = {}  # the layers' storage, not the stack's
            ds = ds.drop_vars(per_band).assign(data=data.assign_coords(
                band=("band", np.array([str(v) for v in per_band], dtype=object))))
    if "data" in ds and tuple(ds["data"].dims) != DATA_DIMS and set(ds["data"].dims) == set(DATA_DIMS):
        notes.append(f"'data' stored as {tuple(str(d) for d in ds['data'].dims)}: read as {DATA_DIMS}")
        ds["data"] = ds["data"].transpose(*DATA_DIMS)
        ds["data"].encoding = {}  # its stored chunks are in the stored order
    if "data" in ds and ds["data"].dtype.kind in "iu":
        notes.append(f"'data' stored as {ds['data'].dtype}: read as float32"
                     + (f", {ds['data'].attrs['nodata']:g} as missing" if "nodata" in ds["data"].attrs else ""))
        ds["data"] = _as_float(ds["data"])
    return ds


def _as_float(da: xr.DataArray) -> xr.DataArray:
    """Integers as float32 with their ``nodata`` attribute (odc-stac, rioxarray) as NaN; floats as they are."""
    if da.dtype.kind not in "iu":
        return da
    nodata = da.attrs.get("nodata", da.attrs.get("_FillValue"))
    out = da.astype(np.float32)
    return (out if nodata is None else out.where(da != nodata)).assign_attrs(da.attrs)


def _time_ordered(ds: xr.Dataset, *, source: str, notes: list[str]) -> xr.Dataset:
    """Dates in increasing order (a lazy reordering when a tool appended them out of order);
    a date twice is refused, naming it."""
    t = ds["time"].values
    if t.size < 2 or bool((np.diff(t) > np.timedelta64(0)).all()):
        return ds
    values, counts = np.unique(t, return_counts=True)
    if (counts > 1).any():
        twice = [str(v)[:19] for v in values[counts > 1]][:5]
        raise CubeSchemaError(f"{source}: time has duplicate dates {twice}; a cube holds one slice per "
                              "date (merge them first, e.g. ds.groupby('time').first())")
    notes.append("dates not in increasing order: read sorted")
    return ds.isel(time=np.argsort(t, kind="stable"))


def _float32_grid(ds: xr.Dataset, notes: list[str]) -> xr.Dataset:
    """``x`` / ``y`` stored as float32 (as some exporters write them) are rounded by up to half a
    metre at UTM or MODIS magnitudes, so their steps look uneven: read them as the regular grid
    they round, the stored ``GeoTransform``'s when they agree with it, else a straight-line fit;
    coordinates further off than float32's rounding are left for :func:`_check_regular`."""
    stored = _stored_transform(ds)
    exact: dict[str, np.ndarray] = {}
    for dim in ("x", "y"):
        v = ds[dim].values
        if v.dtype != np.float32 or v.size < 2:
            continue
        v = v.astype(np.float64)
        i = np.arange(v.size) + 0.5
        tol = 2 * float(np.finfo(np.float32).eps) * float(np.abs(v).max())
        candidates = []
        if stored is not None and stored.b == stored.d == 0:
            candidates.append(stored.c + stored.a * i if dim == "x" else stored.f + stored.e * i)
        candidates.append(np.polyval(np.polyfit(i, v, 1), i))
        for c in candidates:
            if float(np.abs(c - v).max()) <= tol:
                exact[dim] = c
                break
    if not exact:
        return ds
    notes.append(f"{' and '.join(exact)} stored as float32 (rounded by up to "
                 f"{max(float(np.abs(ds[d].values.astype(np.float64) - c).max()) for d, c in exact.items()):.3g}): "
                 "read as the regular grid they round")
    return ds.assign_coords({d: (d, c, ds[d].attrs) for d, c in exact.items()})


def _check_regular(ds: xr.Dataset, *, source: str) -> None:
    """``x`` and ``y`` evenly spaced (an affine grid), ``x`` increasing."""
    for dim in ("x", "y"):
        v = np.asarray(ds[dim].values, dtype=np.float64)
        if v.size < 3:
            continue
        steps = np.diff(v)
        if not np.allclose(steps, steps[0], rtol=1e-3, atol=0.0):
            raise CubeSchemaError(
                f"{source}: coordinate '{dim}' is not evenly spaced (steps {steps.min():.6g} .. "
                f"{steps.max():.6g}); the stages need a regular grid: regrid the cube first (e.g. "
                "rioxarray's ds.rio.reproject to a fixed resolution)")
    if ds["x"].size >= 2 and float(ds["x"][1] - ds["x"][0]) < 0:
        raise CubeSchemaError(f"{source}: coordinate 'x' decreases (east to west); write it west to east, "
                              "e.g. ds.isel(x=slice(None, None, -1))")


#: encodings of a Zarr v2 store that a Zarr v3 output cannot take (numcodecs compressors, filters)
_V2_CODEC_KEYS = ("compressor", "compressors", "filters", "serializer", "object_codec")


def _normalised(ds: xr.Dataset, path: Path, notes: list[str]) -> xr.Dataset:
    """What cubes written by other tools differ in, made the schema's way (lazily):

    - the grid mapping as a coordinate: ``rioxarray``'s ``write_crs`` + ``to_zarr`` stores
      ``spatial_ref`` as a data variable, which patching and decoding would treat as a layer;
    - band names as strings (``band = [1, 2, 3]`` from GDAL-minded tools), so ``--band 2`` and
      every stage's band lists mean the same;
    - ``valid`` as bool when stored as 0/1 integers;
    - the codecs of a Zarr v2 store dropped from the variables' encodings: the stages write Zarr
      v3, which cannot take numcodecs' v2 compressors (``Expected a BytesBytesCodec``).
    """
    gm = ds["data"].attrs.get("grid_mapping", ds["data"].encoding.get("grid_mapping", "spatial_ref"))
    if gm in ds.data_vars and ds[gm].ndim == 0:
        notes.append(f"grid mapping '{gm}' stored as a data variable: read as the coordinate")
        ds = ds.set_coords(gm)
    labels = ds["band"].values.tolist()
    if ds["band"].dtype.kind not in "OT" or any(not isinstance(b, str) for b in labels):
        # fixed-length unicode (xarray's default for a list of str) is fine to read, but has no Zarr
        # v3 spec to write it with: kept as names without a note, like any other string type
        if ds["band"].dtype.kind != "U":
            notes.append(f"band labels {labels} read as names")
        names = np.array([str(b) for b in ds["band"].values.tolist()], dtype=object)  # written as v3 strings
        ds = ds.assign_coords(band=("band", names, ds["band"].attrs))
    if "valid" in ds and ds["valid"].dtype != bool:
        notes.append(f"'valid' stored as {ds['valid'].dtype}: read as bool (non-zero = observed)")
        ds["valid"] = (ds["valid"] != 0).assign_attrs(ds["valid"].attrs)
    if _zarr_format(path) == 2:
        notes.append("Zarr v2 store: read as it is; the stages write Zarr v3")
        for var in ds.variables.values():
            for key in _V2_CODEC_KEYS:
                var.encoding.pop(key, None)
    return ds


def _zarr_format(path: Path) -> int | None:
    """2 or 3 for a Zarr group at ``path``, None when it cannot be told."""
    if (path / "zarr.json").exists():
        return 3
    if (path / ".zgroup").exists() or (path / ".zattrs").exists():
        return 2
    return None


def zarr_array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of an open Zarr group (``group[name]`` typed as an array).

    Raises
    ------
    KeyError
        When the group has no member ``name``.
    ValueError
        When that member is a group, not an array.
    """
    import zarr

    node = group[name]
    if not isinstance(node, zarr.Array):
        raise ValueError(f"{node.store_path}: a Zarr group where the array {name!r} was expected")
    return node


def _north_up(ds: xr.Dataset, notes: list[str]) -> xr.Dataset:
    """A south-up cube (``y`` ascending, as latitude-ordered tools often write it) as a lazy
    north-up view, so every stage's patches, maps and quick-looks are north-up; the grid mapping's
    GeoTransform is rewritten to match."""
    y = ds["y"].values
    if y.size < 2 or y[1] < y[0]:
        return ds
    notes.append("y ascends (south-up): read north-up")
    return ds.isel(y=slice(None, None, -1))  # its GeoTransform: see _matching_geotransform


def _matching_geotransform(ds: xr.Dataset, notes: list[str]) -> xr.Dataset:
    """The grid mapping's ``GeoTransform`` rewritten from the coordinates where it does not match
    them (a south-up cube read north-up; a subset of a cube, which keeps its parent's origin), so
    the stages' products, which copy it, do not carry a transform that GDAL would misplace them by."""
    stored, actual = _stored_transform(ds), cube_transform(ds)
    if stored is None or stored == actual:
        return ds
    if not any("south-up" in n for n in notes):  # a south-up cube's note says it already
        notes.append("its GeoTransform did not match its coordinates (a subset of another cube?): taken from them")
    name = _grid_mapping_name(ds)
    ds[name] = ds[name].copy()
    ds[name].attrs = {**ds[name].attrs, "GeoTransform": " ".join(str(v) for v in actual.to_gdal())}
    return ds


def cube_crs(ds: xr.Dataset) -> CRS | None:
    """The CRS of a cube (or of a stage's product on its grid: a class map, anomalies) from its grid
    mapping (``spatial_ref`` or the variables' ``grid_mapping``)."""
    var = ds["data"] if "data" in ds else next(iter(ds.data_vars.values()), None)
    name = "spatial_ref" if var is None else var.attrs.get("grid_mapping", var.encoding.get("grid_mapping", "spatial_ref"))
    if name not in ds.variables:
        return None
    attrs = ds[name].attrs
    wkt = attrs.get("crs_wkt") or attrs.get("spatial_ref")
    return CRS.from_wkt(wkt) if wkt else None


def _grid_mapping_name(ds: xr.Dataset) -> str:
    return str(ds["data"].attrs.get("grid_mapping", "spatial_ref")) if "data" in ds else "spatial_ref"


def _stored_transform(ds: xr.Dataset) -> Affine | None:
    """The ``GeoTransform`` the cube's grid mapping stores, or None."""
    name = _grid_mapping_name(ds)
    gt = ds[name].attrs.get("GeoTransform") if name in ds.variables else None
    return Affine.from_gdal(*map(float, str(gt).split())) if gt else None


def raster_window(transform: Affine, shape: tuple[int, int], crs: CRS, bounds: tuple[float, float, float, float],
                  bounds_crs: CRS, *, pad: int = 1) -> Window | None:
    """The window of a raster (its ``transform``, ``(height, width)``, ``crs``) under ``bounds``
    (left, bottom, right, top in ``bounds_crs``: a cube's grid), rounded outward by ``pad``
    pixels and clipped to the raster; None where they do not meet. From the four corners' pixel
    coordinates: right for north-up, south-up (bottom-up rows, as NetCDF-derived GeoTIFFs often
    are) and rotated rasters alike."""
    import math

    from rasterio.warp import transform_bounds
    from rasterio.windows import Window

    left, bottom, right, top = transform_bounds(bounds_crs, crs, *bounds, densify_pts=21)
    inv = ~transform
    cols, rows = zip(*(inv * (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    col0, row0 = max(math.floor(min(cols)) - pad, 0), max(math.floor(min(rows)) - pad, 0)
    col1, row1 = min(math.ceil(max(cols)) + pad, shape[1]), min(math.ceil(max(rows)) + pad, shape[0])
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def cube_transform(ds: xr.Dataset) -> Affine:
    """The affine transform of the cube's grid, from its pixel-centre coordinates; the exact one
    its grid mapping stores (``GeoTransform``) when that agrees with them (the coordinates'
    differences are off in the last digits: exported rasters' pixels came out 4e-10 m non-square)."""
    x = ds["x"].values
    y = ds["y"].values
    stored = _stored_transform(ds)
    if x.size < 2 or y.size < 2:
        if stored is not None:
            return stored
        raise CubeSchemaError("a cube needs at least 2 pixels along x and y to derive its grid")
    dx = float(x[-1] - x[0]) / (x.size - 1)
    dy = float(y[-1] - y[0]) / (y.size - 1)
    derived = Affine(dx, 0.0, float(x[0]) - dx / 2, 0.0, dy, float(y[0]) - dy / 2)
    if stored is not None and stored.b == stored.d == 0:  # a sliced cube keeps its parent's: compared
        tol = 1e-6 * min(abs(dx), abs(dy))
        if all(abs(a - b) <= tol for a, b in zip(stored[:6], derived[:6], strict=True)):
            return stored
    return derived


# --- reading a cube in bounded pieces (the stages that train on patches and predict by rows) ---


def flag_meaning(name: str) -> str:
    """One class name as a CF flag meaning: letters, digits and ``_ - . + @`` (CF 1.8, 3.5), accents
    dropped: ``Barren Land (Rock/Sand/Clay)`` -> ``Barren_Land_Rock_Sand_Clay``; ``""`` when
    nothing is left (a name in another script)."""
    ascii_name = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.+@-]+", "_", ascii_name.strip()).strip("_")


def flag_meanings(names: Iterable[str]) -> str:
    """CF ``flag_meanings`` of class names (:func:`flag_meaning`), one distinct word each: a name
    with nothing left becomes ``class_<i>`` (its place), a repeated word gets ``_2``, ``_3``..."""
    words: list[str] = []
    for i, name in enumerate(names, 1):
        word = flag_meaning(name) or f"class_{i}"
        base, n = word, 1
        while word in words:
            n += 1
            word = f"{base}_{n}"
        words.append(word)
    return " ".join(words)


def observed_mask(data: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(time, y, x)``: valid and every band finite, for ``data (time, band, y, x)``."""
    return valid & np.isfinite(data).all(axis=1)


def unobserved_reason(data: np.ndarray | xr.DataArray, valid: np.ndarray | xr.DataArray,
                      bands: list[str] | None = None) -> str:
    """Why no pixel-date is observed (:func:`observed_mask` false everywhere), for an error message:
    ``valid`` false everywhere, bands with no finite value where valid (a pixel-date counts only
    when every band is finite, so one empty band empties the cube), or bands observed apart."""
    if isinstance(data, xr.DataArray):
        valid_any = bool(valid.any())
        per_band = np.asarray((data.notnull() & valid.astype(bool)).any(("time", "y", "x")).values)
        bands = bands or [str(b) for b in data["band"].values]
    else:
        valid = np.asarray(valid, dtype=bool)
        valid_any = bool(valid.any())
        per_band = (np.isfinite(data) & valid[:, None]).any(axis=(0, 2, 3))
    bands = bands or [str(i) for i in range(len(per_band))]
    if not valid_any:
        return "'valid' is false on every pixel and date"
    empty = [b for b, seen in zip(bands, per_band, strict=True) if not seen]
    if empty:
        return (f"band(s) {empty} hold no finite value where 'valid' is true, and a pixel-date counts "
                f"as observed only when every band is finite: drop them, e.g. ds.drop_sel(band={empty})")
    return "no pixel-date has every band finite where 'valid' is true (the bands are observed apart)"


def band_extent(data: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Each band's observed range of an in-memory ``(time, band, y, x)`` array: ``(2, C)``
    (min, max; NaN for a band never observed)."""
    vals = np.where(np.broadcast_to(observed[:, None], data.shape), data, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a band never observed: all-NaN slice
        return np.stack([np.nanmin(vals, axis=(0, 2, 3)), np.nanmax(vals, axis=(0, 2, 3))]).astype(np.float32)


def band_stats(data: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation of the observed values of an in-memory
    ``(time, band, y, x)`` array, ``(1, C, 1, 1)`` each (0 and 1 where a band has none)."""
    mask = np.broadcast_to(observed[:, None], data.shape)
    vals = np.where(mask, data, np.nan)
    mean = np.nanmean(vals, axis=(0, 2, 3), keepdims=True)
    std = np.nanstd(vals, axis=(0, 2, 3), keepdims=True)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return mean.astype(np.float32), std.astype(np.float32)


#: a cube whose band mean lies this many of the training cube's standard deviations from its mean,
#: or whose spread is this many times larger or smaller, holds other units or another scaling
UNITS_SIGMAS, UNITS_SPREAD = 5.0, 10.0
#: dates this many days of the year (median) from the training cube's: another season
SEASON_DAYS = 30
#: what is read to compare a cube's band statistics with a model's: up to this many dates, evenly
#: spread, in a 3 x 3 grid of windows of this side (a few chunks a window, not the whole cube)
_CHECK_DATES, _CHECK_WINDOW = 8, 128


def training_mismatch(ds: xr.Dataset, mean: np.ndarray, std: np.ndarray, dates: Sequence[str]) -> list[str]:
    """Why a model trained on a cube with per-band ``mean`` / ``std`` and ``dates`` (ISO days) may
    read ``ds`` wrongly although its dates and bands match in number and name, as sentences: band
    values far from the training cube's (other units or scaling: digital numbers against
    reflectance) and dates of another season (a network reads the dates' order as the season's
    course). Read from a sample of windows of the cube (:data:`_CHECK_WINDOW`)."""
    height, width = ds.sizes["y"], ds.sizes["x"]
    steps = np.unique(np.linspace(0, ds.sizes["time"] - 1, min(ds.sizes["time"], _CHECK_DATES)).astype(int))
    side_y, side_x = min(_CHECK_WINDOW, height), min(_CHECK_WINDOW, width)
    parts = []
    for fy in (1, 3, 5):
        for fx in (1, 3, 5):
            y0, x0 = min(height * fy // 6, height - side_y), min(width * fx // 6, width - side_x)
            window = {"time": steps, "y": slice(y0, y0 + side_y), "x": slice(x0, x0 + side_x)}
            parts.append((np.asarray(ds["data"].isel(window).values, dtype=np.float64),
                          np.asarray(ds["valid"].isel(window).values, dtype=bool)))
    data = np.concatenate([d for d, _ in parts])  # windows stacked as dates: per-band statistics alike
    seen = observed_mask(data, np.concatenate([v for _, v in parts]))
    problems = []
    if seen.any():
        here_mean, here_std = (a.ravel() for a in band_stats(data, seen))
        t_mean, t_std = (np.ravel(np.asarray(a, dtype=np.float64)) for a in (mean, std))
        for b, band in enumerate(str(v) for v in ds["band"].values):
            far, spread = abs(here_mean[b] - t_mean[b]) / t_std[b], here_std[b] / t_std[b]
            if far > UNITS_SIGMAS or not 1 / UNITS_SPREAD <= spread <= UNITS_SPREAD:
                problems.append(f"band {band!r} has mean {here_mean[b]:.4g} and spread {here_std[b]:.4g} here, against "
                                f"{t_mean[b]:.4g} and {t_std[b]:.4g} in the training cube: other units or scaling?")
    trained = list(dates)
    if len(trained) == ds.sizes["time"]:
        here = pd.DatetimeIndex(ds["time"].values).dayofyear.to_numpy()
        then = pd.DatetimeIndex(trained).dayofyear.to_numpy()
        shift = int(np.median((here - then + 182) % 365 - 182))
        if abs(shift) > SEASON_DAYS:
            problems.append(f"its dates lie {abs(shift)} days of the year {'after' if shift > 0 else 'before'} the "
                            f"training cube's ({trained[0]} .. {trained[-1]}): another season")
    return problems


def observed_anywhere(ds: xr.Dataset) -> np.ndarray:
    """The ``(y, x)`` map of pixels observed on at least one date (valid, every band finite), in
    one pass of dask reductions over the cube's chunks."""
    return np.asarray(_observed_lazy(ds).any("time").values, dtype=bool)


def _observed_lazy(ds: xr.Dataset) -> xr.DataArray:
    """``(time, y, x)``: valid with every band finite, as a lazy (dask) array."""
    return ds["valid"].astype(bool) & ds["data"].notnull().all("band")


def streamed_band_stats(ds: xr.Dataset, *, progress: str | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`band_stats` of a (lazy) cube in one pass of dask reductions over its chunks, the
    ``(y, x)`` map of pixels observed on at least one date, and each band's observed range
    ``(2, C)`` (min, max; NaN for a band never observed). ``progress``: a bar with this title over
    the pass's chunk tasks (a large cube's pass takes minutes)."""
    import dask
    from tqdm.dask import TqdmCallback

    observed = _observed_lazy(ds)
    vals = ds["data"].where(observed)
    bar = TqdmCallback(desc=progress, unit="task") if progress else contextlib.nullcontext()
    dims = ("time", "y", "x")
    with bar:
        mean, std, seen, lo, hi = dask.compute(vals.mean(dims), vals.std(dims), observed.any("time"),
                                               vals.min(dims), vals.max(dims))
    mean = np.where(np.isfinite(mean.values), mean.values, 0.0).reshape(1, -1, 1, 1)
    std = np.where(np.isfinite(std.values) & (std.values > 0), std.values, 1.0).reshape(1, -1, 1, 1)
    extent = np.stack([lo.values, hi.values]).astype(np.float32)
    return mean.astype(np.float32), std.astype(np.float32), np.asarray(seen.values, dtype=bool), extent


def read_rows(ds: xr.Dataset, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``y0:y1`` of a cube, all dates, bands and columns, in one read: ``data (T, C, h, W)``
    float32, ``valid (T, h, W)`` and the observed mask (:func:`observed_mask`)."""
    block = ds[["data", "valid"]].isel(y=slice(y0, y1)).load()
    data = block["data"].values.astype(np.float32)
    valid = block["valid"].values.astype(bool)
    return data, valid, observed_mask(data, valid)


def row_blocks(origins: np.ndarray, size: int, height: int, step: int) -> list[tuple[int, int, np.ndarray]]:
    """Rows ``0:height`` cut into blocks of ``step`` rows, each with the patch ``origins (P, 2)`` of
    side ``size`` that touch it: ``(y0, y1, origins)``. A stage that maps overlapping patches writes
    block by block and blends every patch that reaches into the block."""
    blocks = []
    for a in range(0, height, step):
        b = min(height, a + step)
        blocks.append((a, b, origins[(origins[:, 0] < b) & (origins[:, 0] + size > a)]))
    return blocks


def patches_by_rows(origins: np.ndarray, size: int,
                    read: Callable[[int, int], tuple[np.ndarray, ...]], *,
                    progress: str | None = None) -> list[np.ndarray]:
    """Patches at row-major ``origins (P, 2)`` cut from arrays ``(..., h, W)`` that
    ``read(y0, y1)`` returns for a band of rows: one read per row of patches, whatever the cube's
    height. Returns one ``(P, ..., size, size)`` array per array ``read`` returns, in ``origins``
    order. ``progress``: a bar with this title over the rows read."""
    from tqdm.auto import tqdm

    from fusion_models.patching import extract_patches

    parts: list[list[np.ndarray]] = []
    for row in tqdm(np.unique(origins[:, 0]), desc=progress, unit="row", disable=not progress):
        local = origins[origins[:, 0] == row] - [int(row), 0]
        arrays = read(int(row), int(row) + size)
        if not parts:
            parts = [[] for _ in arrays]
        for store, arr in zip(parts, arrays, strict=True):
            store.append(extract_patches(arr, local, size))
    return [np.concatenate(p) for p in parts]


def class_counts(layer: xr.DataArray) -> tuple[np.ndarray, np.ndarray]:
    """The codes of an integer class layer and how many pixels hold each, counted chunk by chunk
    (a class map is not loaded whole)."""
    import dask
    import dask.array as da

    values, counts = dask.compute(*da.unique(da.asarray(layer.data).ravel(), return_counts=True))
    return np.asarray(values), np.asarray(counts)


def crs_label(crs: CRS | None) -> str:
    """A CRS for people: ``EPSG:32633 (WGS 84 / UTM zone 33N)``, or its name and projection when it
    has no code (MODIS sinusoidal: ``Sinusoidal (no EPSG code)``) instead of a page of WKT."""
    if crs is None:
        return "no CRS"
    from pyproj import CRS as ProjCRS
    from pyproj.exceptions import CRSError

    try:
        proj = ProjCRS.from_wkt(crs.to_wkt())
    except CRSError:
        return crs.to_string()
    code = proj.to_epsg()
    if code is not None:
        return f"EPSG:{code} ({proj.name})"
    method = proj.coordinate_operation.method_name if proj.coordinate_operation else None
    name = proj.name if proj.name and proj.name.lower() not in ("unnamed", "unknown") else None
    label = " / ".join(dict.fromkeys(v for v in (name, method) if v)) or proj.type_name
    return f"{label} (no EPSG code)"


def describe_cube(path: str | Path) -> list[str]:
    """What a cube holds and how the stages read it, as lines for a person (``fusioncube info``):
    dates, bands, grid, chunks, observed share, static layers, and what ``open_cube`` normalises
    (a Zarr v2 store, the grid mapping as a data variable, band numbers, 0/1 or absent ``valid``,
    dates out of order, south-up). Raises ``CubeSchemaError`` for a cube the stages cannot read."""
    path = Path(path)
    ds, notes = _read_cube(path, "auto")

    times = ds["time"].values
    step = ""
    if times.size > 1:
        days = np.diff(times).astype("timedelta64[h]").astype(float) / 24
        step = f", median step {np.median(days):g} days"
    crs = cube_crs(ds)
    transform = cube_transform(ds)
    height, width = ds.sizes["y"], ds.sizes["x"]
    share = ds["valid"].mean(("y", "x")).values
    chunks = (ds["data"].encoding.get("chunks") or ds["data"].encoding.get("preferred_chunks")
              or getattr(ds["data"].data, "chunksize", None))
    lines = [
        f"{path}: a schema-following cube",
        f"  dates: {times.size}, {str(times[0])[:10]} .. {str(times[-1])[:10]}{step}",
        f"  bands: {ds.sizes['band']}: {', '.join(str(b) for b in ds['band'].values)}",
        f"  grid: {crs_label(crs)}, pixel {abs(transform.a):g} x {abs(transform.e):g}, "
        f"{width} x {height} px, bounds x {transform.c:.10g} .. {transform.c + width * transform.a:.10g}, "
        f"y {transform.f + height * transform.e:.10g} .. {transform.f:.10g}",
        f"  chunks of data: {tuple(chunks) if chunks else 'not chunked'}",
        f"  observed: {float(share.mean()):.1%} of pixel-dates (per date {float(share.min()):.1%} .. "
        f"{float(share.max()):.1%})",
    ]
    if "filled" in ds.data_vars and tuple(ds["filled"].dims) == ("time", "y", "x"):  # gapfill's mark
        mark = ds["filled"].astype(bool)
        shares = xr.Dataset({"filled": mark, "missing": ~ds["valid"] & ~mark}).mean().compute()  # one pass
        filled, missing = float(shares["filled"]), float(shares["missing"])
        # (a pixel-date can be both: valid, with one band's value missing and filled)
        lines.append(f"  filled: {filled:.1%} of pixel-dates (gap filling's estimates, where 'filled' is true); "
                     f"{missing:.1%} still missing")
    for name in ds.data_vars:
        var = ds[name]
        if tuple(var.dims) == ("y", "x"):
            if np.issubdtype(var.dtype, np.integer):
                codes = sorted(set(class_counts(var)[0].tolist()) - {var.attrs.get("nodata")})
                shown = ", ".join(map(str, codes[:16])) + (", ..." if len(codes) > 16 else "")
                legend = ", with a legend (flag_values)" if "flag_values" in var.attrs else ""
                lines.append(f"  layer {name}: {len(codes)} class codes ({shown}){legend}")
            else:
                lines.append(f"  layer {name}: {var.dtype}")
    lines += [f"  note: {n}" for n in notes]
    return lines
