"""Reading a scene onto a cube's grid: window read, scale to physical units, warp, mask.

Two steps so a batch of scenes is validated in one Great Expectations call between them:
``read_scene`` reads the window of a scene that covers the grid and profiles it;
``warp_scene`` puts the read window onto the grid (GDAL warp, or a plain copy when the scene is
already on the grid's lattice) and turns the mask rule into a boolean ``valid``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.warp import reproject
from rasterio.windows import Window

from tasks.catalog import MaskRule, SourceSpec
from tasks.class_maps import class_fill, class_resampling, target_pixel_scale
from tasks.cube import raster_window
from tasks.discover import SceneRef, date_stack, is_remote
from tasks.errors import SceneError
from tasks.validate import SceneProfile, profile_array

__all__ = ["Grid", "RawScene", "read_scene", "warp_scene", "mask_to_clear", "no_crs_reason", "scene_crs", "set_threads"]

log = logging.getLogger(__name__)

WARP_THREADS = 2
# A scene is read only over the cube's grid; a window larger than this is refused unread.
MAX_READ_BYTES = 4 * 2**30
# GDAL is told to keep its block cache small: memory must not grow with the archive.
GDAL_CACHEMAX_MB = 256
# Threads of one read (GDAL's block decoding) and one warp: None = every core (GDAL) and
# WARP_THREADS, for an in-process ingest; a Dask worker sets its own thread count.
_threads: int | None = None



def read_error(exc: BaseException) -> str:
    """A read failure in words: rasterio's "Read failed. See previous exception for details." with
    that previous exception (GDAL's, e.g. "IReadBlock failed ... opj_get_decoded_tile() failed" for
    a truncated JPEG 2000), which the message points to and the quarantine record would lose."""
    text = str(exc)
    cause = exc.__cause__ or exc.__context__
    if cause is not None and "previous exception" in text:
        return f"{text.replace('. See previous exception for details.', ':')} {cause}".strip()
    return text


def set_threads(n: int | None) -> None:
    """Cap the threads GDAL decodes and warps with in this process (None: every core). A Dask
    worker with ``--nthreads N`` sets N (``flows.worker_preload``): Dask starts one worker per
    core, so a worker whose reads spread over every core would oversubscribe them."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"threads must be a positive integer or None; got {n!r}")
    global _threads
    _threads = n


def _gdal_env() -> dict[str, int | str]:
    return {"GDAL_CACHEMAX": GDAL_CACHEMAX_MB, "GDAL_NUM_THREADS": str(_threads) if _threads else "ALL_CPUS"}


def _warp_threads() -> int:
    return _threads or WARP_THREADS


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform (top-left corner) and size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @classmethod
    def from_bounds(
        cls,
        crs: CRS | str,
        bounds: tuple[float, float, float, float],
        resolution: tuple[float, float],
        *,
        anchor: tuple[float, float] = (0.0, 0.0),
    ) -> Grid:
        """Grid covering ``bounds``, snapped outward to the pixel lattice through ``anchor``
        (a pixel corner; default the CRS origin, so pixel edges fall on multiples of the
        resolution)."""
        rx, ry = resolution
        ax, ay = anchor
        xmin = ax + math.floor((bounds[0] - ax) / rx + 1e-6) * rx
        ymin = ay + math.floor((bounds[1] - ay) / ry + 1e-6) * ry
        xmax = ax + math.ceil((bounds[2] - ax) / rx - 1e-6) * rx
        ymax = ay + math.ceil((bounds[3] - ay) / ry - 1e-6) * ry
        width, height = round((xmax - xmin) / rx), round((ymax - ymin) / ry)
        if width < 1 or height < 1:
            raise ValueError(f"grid bounds {bounds} hold no pixel at resolution {resolution}")
        crs = CRS.from_user_input(crs)
        return cls(crs, Affine(rx, 0.0, xmin, 0.0, -ry, ymax), width, height)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        t = self.transform
        return (t.c, t.f + t.e * self.height, t.c + t.a * self.width, t.f)

    @property
    def resolution(self) -> tuple[float, float]:
        return (self.transform.a, -self.transform.e)


@dataclass
class RawScene:
    """A scene's window over the grid, raw values, before scaling and warping."""

    ref: SceneRef
    data: np.ndarray  # (bands, rows, cols) raw values as stored in the file
    clear: np.ndarray | None  # (rows, cols) bool from the mask rule, None without one
    transform: Affine
    crs: CRS
    profile: SceneProfile
    nodata: float | None = None
    raw_nbytes: int = 0  # decoded size of what was read, at the file's dtype (masks included)


def _lookup(mask: np.ndarray, values: list[int], *, masked_by: int | None = None) -> np.ndarray:
    """``isin(mask [& masked_by], values)`` through a lookup table for 8/16-bit masks (one pass)."""
    if mask.dtype in (np.uint8, np.uint16):
        lut = np.zeros(np.iinfo(mask.dtype).max + 1, dtype=bool)
        codes = np.arange(lut.size)
        lut[np.isin(codes & masked_by if masked_by is not None else codes, values)] = True
        return lut[mask]
    m = mask.astype(np.int64) & masked_by if masked_by is not None else mask
    return np.isin(m, values)


def mask_to_clear(mask: np.ndarray, rule: MaskRule) -> np.ndarray:
    """Boolean "clear" from a QA / UDM band according to the catalog's mask rule."""
    clear = np.ones(mask.shape, dtype=bool)
    if rule.clear_values is not None:
        clear &= _lookup(mask, rule.clear_values)
    if rule.invalid_bits is not None:
        bits = sum(1 << b for b in rule.invalid_bits)
        clear &= (mask.astype(np.int64, copy=False) & bits) == 0
    if rule.invalid_values is not None:
        clear &= ~_lookup(mask, rule.invalid_values, masked_by=rule.bit_mask)
    return clear


def _window_over(ds: rasterio.io.DatasetReader, grid: Grid, crs: CRS) -> Window:
    """The window of ``ds`` (whose CRS is ``crs``) that covers the grid (rounded outward, clipped
    to the file)."""
    win = raster_window(ds.transform, ds.shape, crs, grid.bounds, grid.crs)
    if win is None:
        raise SceneError(ds.name, "lies outside the cube's bounds (no overlap with its grid)")
    return win


def _refuse_oversized(ref: SceneRef, ds: rasterio.io.DatasetReader, win: Window, bands: int) -> None:
    """Refuse, before any read, a scene whose window over the grid would take more than
    :data:`MAX_READ_BYTES` in memory (a corrupt or hostile header declaring an enormous size)."""
    itemsize = max(np.dtype(dt).itemsize for dt in ds.dtypes)
    declared = int(win.width) * int(win.height) * max(bands, 1) * itemsize
    if declared > MAX_READ_BYTES:
        raise SceneError(
            ref.path,
            f"declares {ds.width} x {ds.height} px x {ds.count} band(s) of {ds.dtypes[0]}; its window over "
            f"the cube's grid alone is {int(win.width)} x {int(win.height)} px = {declared / 2**30:.1f} GiB, "
            f"over the read limit of {MAX_READ_BYTES / 2**30:.1f} GiB (tasks.warp.MAX_READ_BYTES); not read",
        )


def scene_spec(spec: SourceSpec, ref: SceneRef) -> SourceSpec:
    """``spec`` with this scene's own scale and offset per band where the source's ``radiometry``
    reads them from the product's metadata (``tasks.radiometry``); ``spec`` itself otherwise."""
    if spec.radiometry is None:
        return spec
    from tasks.radiometry import scene_radiometry

    scale_offset = scene_radiometry(spec.radiometry, ref.path)  # the scene's metadata, read once
    bands = []
    for b in spec.bands:
        scale, offset = scale_offset(b.file or b.name)
        bands.append(b.model_copy(update={"scale": scale, "offset": offset}))
    return spec.model_copy(update={"bands": bands})


def _check_descriptions(ref: SceneRef, spec: SourceSpec, ds: rasterio.io.DatasetReader) -> None:
    """Refuse a file whose band descriptions name other bands at the source's indexes."""
    for b in spec.bands:
        described = ds.descriptions[b.index - 1] if b.index <= ds.count else None
        if described and described != b.name:
            found = {d: i + 1 for i, d in enumerate(ds.descriptions) if d}
            where = f"; '{b.name}' is its band {found[b.name]}" if b.name in found else ""
            raise SceneError(ref.path, f"its band {b.index} is described {described!r}, the source's band "
                                       f"{b.index} is {b.name!r}{where}: the bands are in another order")


def _read_grid_dataset(ref: SceneRef, grid: Grid) -> str:
    """The band file a one-file-per-band scene is read on, for the cube's ``grid``: the coarsest
    whose pixels are no larger than the grid's (Sentinel-2 onto a 20 m grid: its 20 m bands, its
    10 m ones averaged onto them, its 20 m mask as it is), else the finest (``ref.grid_dataset``).
    Read on the 10 m bands, a 20 m grid would take 20 m bands and mask blurred through 10 m twice."""
    if not ref.band_files:
        return ref.grid_dataset
    shape = (grid.height, grid.width)
    best: tuple[float, str] | None = None
    for dataset in dict.fromkeys(ref.datasets):
        try:
            with rasterio.open(dataset) as ds:
                scale = target_pixel_scale(ds.transform, ds.crs, grid.transform, grid.crs, shape) if ds.crs else None
        except RasterioIOError:
            return ref.grid_dataset  # its read names the file
        if scale is not None and scale >= 1 - 1e-6 and (best is None or scale < best[0]):
            best = (scale, dataset)
    return best[1] if best is not None else ref.grid_dataset


def read_scene(ref: SceneRef, spec: SourceSpec, grid: Grid) -> RawScene:
    """Read the part of a scene over ``grid`` and profile it. Raises ``SceneError`` on bad input."""
    spec = scene_spec(spec, ref)
    first = _read_grid_dataset(ref, grid)
    try:
        with rasterio.Env(**_gdal_env()), rasterio.open(first) as ds:
            crs = scene_crs(ds)
            if crs is None:
                raise SceneError(ref.path, f"{no_crs_reason(ds)}; cannot place it on the grid")
            file_count, file_dtype = ds.count, ds.dtypes[0]
            win = _window_over(ds, grid, crs)
            _refuse_oversized(ref, ds, win, len(spec.bands))
            transform = ds.window_transform(win)
            unobserved = None  # pixels of resampled band files not to count as observed
            if spec.band_files is not None:  # one file per band, maybe at other resolutions
                raw, nodata, unobserved = _read_band_files(ref, spec, ds, win)
            elif len(ref.datasets) > 1:  # NetCDF: one subdataset per band, GDAL bands are times
                arrays, nodatas = [], []
                for b in spec.bands:
                    if b.index > len(ref.datasets):
                        raise SceneError(
                            ref.path,
                            f"band {b.name} wants variable {b.index}; the file has {len(ref.datasets)}",
                        )
                    with rasterio.open(ref.datasets[b.index - 1]) as sub:
                        arrays.append(sub.read((ref.time_index or 0) + 1, window=win))
                        nodatas.append(sub.nodata)
                raw = np.stack(arrays)
                file_count, nodata = len(ref.datasets), nodatas[0]
            else:
                if spec.match_descriptions:
                    _check_descriptions(ref, spec, ds)
                indexes = [b.index for b in spec.bands if b.index <= ds.count]
                if ref.time_index is not None:  # bands are dates: this date's band of each variable
                    stack = date_stack(ds.descriptions)
                    if stack is None:
                        indexes = [ref.time_index + 1]
                    else:
                        per_date = stack[ref.time_index][1]
                        indexes = [per_date[b.index - 1] for b in spec.bands if b.index <= len(per_date)]
                raw = ds.read(indexes, window=win) if indexes else np.zeros((0, 1, 1), ds.dtypes[0])
                nodata = ds.nodata
            if spec.mask is not None and raw.shape[0] >= len(spec.bands):
                clear, mask_nbytes = _read_mask(ref, spec, win, transform)
            elif spec.mask is None and len(ref.datasets) <= 1 and spec.bands[0].index <= ds.count and _internal_mask(ds):
                # an alpha band or a GDAL mask band (e.g. a JPEG-compressed COG): 0 = not observed
                clear = ds.read_masks(spec.bands[0].index, window=win) > 0
                mask_nbytes = clear.nbytes
            else:
                clear, mask_nbytes = None, 0
            if unobserved is not None:
                clear = ~unobserved if clear is None else clear & ~unobserved
    except RasterioIOError as exc:
        raise SceneError(ref.path, f"cannot be read ({read_error(exc)})") from exc
    band = spec.bands[0]
    nodata = band.nodata if band.nodata is not None else nodata
    profile = profile_array(
        ref.id,
        raw,
        nodata=nodata,
        scale=band.scale,
        offset=band.offset,
        crs=crs.to_string(),
        categorical=spec.kind == "categorical",
    )
    profile = replace(profile, band_count=file_count, dtype=str(file_dtype))
    if raw.shape[0] < len(spec.bands):  # fails validation (band count); never warped
        return RawScene(ref, raw, None, transform, crs, profile, nodata, raw.nbytes)
    return RawScene(ref, raw, clear, transform, crs, profile, nodata, raw.nbytes + mask_nbytes)


_DEGREES_EAST = re.compile(r"^degrees?_?e(ast)?$")
_DEGREES_NORTH = re.compile(r"^degrees?_?n(orth)?$")


def scene_crs(ds: rasterio.io.DatasetReader) -> CRS | None:
    """The scene's CRS. A NetCDF / HDF5 variable on longitude / latitude axes in degrees (CF
    ``units`` ``degrees_east`` / ``degrees_north``) without a grid mapping, as xarray and many
    climate and EO tools write them, is WGS 84 longitude / latitude (EPSG:4326)."""
    if ds.crs is not None:
        return ds.crs
    if ds.transform.is_identity:
        return None
    units = {str(v).strip().lower() for k, v in ds.tags().items() if k.endswith("#units")}
    if any(_DEGREES_EAST.match(u) for u in units) and any(_DEGREES_NORTH.match(u) for u in units):
        log.debug("%s: lon/lat axes in degrees and no grid mapping: EPSG:4326", ds.name)
        return CRS.from_epsg(4326)
    return None


def no_crs_reason(ds: rasterio.io.DatasetReader) -> str:
    """Why a raster without a CRS cannot be placed, with the way out when it is georeferenced
    another way (ground control points or RPCs, as raw Sentinel-1 GRD and L1 products are)."""
    gcps, gcp_crs = ds.gcps
    if gcps:
        return (f"is georeferenced by {len(gcps)} ground control points only (no geotransform); warp it onto "
                f"a map grid first, e.g. `gdalwarp -t_srs {gcp_crs or 'EPSG:4326'} -r bilinear IN OUT.tif`")
    if ds.rpcs:
        return ("is georeferenced by RPCs only (no geotransform); orthorectify it first, e.g. "
                "`gdalwarp -rpc -to RPC_DEM=dem.tif -t_srs EPSG:XXXX IN OUT.tif`")
    return "no CRS (not georeferenced)"


def _internal_mask(ds: rasterio.io.DatasetReader) -> bool:
    """The file carries its own validity mask: an alpha band or a per-dataset mask band."""
    flags = ds.mask_flag_enums[0] if ds.count else []
    return MaskFlags.per_dataset in flags or MaskFlags.alpha in flags


def _read_band_files(
    ref: SceneRef, spec: SourceSpec, first: rasterio.io.DatasetReader, win: Window
) -> tuple[np.ndarray, float | None, np.ndarray | None]:
    """The bands of a one-file-per-band scene over the window ``win`` of ``first``, the scene's
    finest band file (``SceneRef.grid_dataset``): (bands, nodata, the window's pixels not to count
    as observed, or None: those whose resampled values take part of a pixel the mask flags, and
    those outside a resampled band file that declares no nodata).

    A band file on another pixel grid (Sentinel-2's 20 m bands beside its 10 m ones) is resampled
    onto that window with the source's resampling; its nodata stays nodata. Bilinear (or cubic,
    average) blends a 20 m cloud into the 10 m pixels at its rim that the mask, brought over by
    nearest, calls clear: those are returned, to be taken out of the clear mask.
    """
    transform = first.window_transform(win)
    shape = (int(win.height), int(win.width))
    arrays, nodatas = [], []
    unobserved: np.ndarray | None = None
    seen: set[tuple[Any, ...]] = set()
    for b, path in zip(spec.bands, ref.datasets, strict=True):
        try:
            with rasterio.open(path) as ds:
                if b.index > ds.count:
                    raise SceneError(path, f"band {b.name} wants band {b.index}; the file has {ds.count}")
                if ds.crs is None:
                    raise SceneError(path, f"{no_crs_reason(ds)}; cannot place it beside the scene's other bands")
                nodata = b.nodata if b.nodata is not None else ds.nodata
                if ds.crs == first.crs and ds.transform == first.transform and ds.shape == first.shape:
                    arrays.append(ds.read(b.index, window=win))
                else:
                    fill = nodata if nodata is not None else 0
                    out = np.full(shape, fill, dtype=ds.dtypes[b.index - 1])
                    resampling = value_resampling(spec, ds.transform, ds.crs, transform, first.crs, shape)
                    reproject(
                        rasterio.band(ds, b.index), out, src_nodata=nodata, dst_nodata=fill,
                        dst_transform=transform, dst_crs=first.crs,
                        resampling=resampling, num_threads=_warp_threads(),
                    )
                    arrays.append(out)
                    key = (ds.crs.to_string(), tuple(ds.transform), ds.shape, nodata is None)
                    if key not in seen:  # once per band grid (Sentinel-2: its 20 m and 60 m bands)
                        seen.add(key)
                        lost = _resampled_unobserved(ref, spec, ds, nodata is None, transform, shape, first.crs,
                                                     resampling)
                        if lost is not None:
                            unobserved = lost if unobserved is None else unobserved | lost
                nodatas.append(nodata)
        except RasterioIOError as exc:
            raise SceneError(path, f"cannot be read ({read_error(exc)})") from exc
    if len({str(n) for n in nodatas}) > 1 and any(b.nodata is None for b in spec.bands):
        raise SceneError(ref.path, f"its band files declare different nodata values {nodatas}; "
                         "give each band's nodata in the catalog")
    return np.stack(arrays), nodatas[0], unobserved


def _resampled_unobserved(ref: SceneRef, spec: SourceSpec, band: rasterio.io.DatasetReader, no_nodata: bool,
                          transform: Affine, shape: tuple[int, int], crs: CRS,
                          resampling: Resampling) -> np.ndarray | None:
    """The pixels of the grid ``(transform, shape, crs)`` that a band file on its own grid,
    resampled onto it with ``resampling``, leaves unobserved: outside its footprint when it
    declares no nodata (``no_nodata``), and where its resampled value takes part of a pixel the
    mask flags. Read over the part of the band's grid under the target window only."""
    from rasterio.transform import array_bounds

    win = raster_window(band.transform, band.shape, band.crs, array_bounds(*shape, transform), crs, pad=2)
    if win is None:  # the band file does not reach the window: nothing there is observed
        return np.ones(shape, dtype=bool) if no_nodata else None
    own = band.window_transform(win)
    own_shape = (int(win.height), int(win.width))
    geo = {"src_transform": own, "src_crs": band.crs, "dst_transform": transform, "dst_crs": crs}
    lost = np.zeros(shape, dtype=bool)
    if no_nodata:  # nothing marks where the file ends: its footprint does
        covered = np.zeros(shape, dtype=np.uint8)
        reproject(np.ones(own_shape, np.uint8), covered, resampling=Resampling.nearest, **geo)
        lost |= covered == 0
    if spec.mask is not None:  # bilinear (cubic, average) blends a 20 m cloud into 10 m rims
        clear, _ = _read_mask(ref, spec, win, own)
        lost |= ~clear_after_warp(clear, shape, resampling=resampling, **geo)
    return lost



def _to_physical(
    raw: np.ndarray, spec: SourceSpec, nodata: float | None, *, out: np.ndarray | None = None
) -> np.ndarray:
    """Raw values -> float32 physical units (``raw * scale + offset``), NaN where nodata or
    outside the band's ``valid_min`` .. ``valid_max`` (before any warp, so a fill value is never
    blended into its neighbours); written into ``out`` (e.g. a window of the grid-sized result)
    when given."""
    out = np.empty(raw.shape, dtype=np.float32) if out is None else out
    for i, b in enumerate(spec.bands):
        band = raw[i]
        nd = b.nodata if b.nodata is not None else nodata
        np.multiply(band, np.float32(b.scale), out=out[i], dtype=np.float32, casting="unsafe")
        if b.offset:
            out[i] += np.float32(b.offset)
        if nd is not None and not (isinstance(nd, float) and math.isnan(nd)):
            np.copyto(out[i], np.float32(np.nan), where=band == nd)
        if b.valid_min is not None:
            np.copyto(out[i], np.float32(np.nan), where=out[i] < np.float32(b.valid_min))
        if b.valid_max is not None:
            np.copyto(out[i], np.float32(np.nan), where=out[i] > np.float32(b.valid_max))
    return out


def _read_mask(ref: SceneRef, spec: SourceSpec, win: Window, transform: Affine) -> tuple[np.ndarray, int]:
    """The "clear" mask over the window ``win`` (whose transform is ``transform``) of the scene's
    grid or of a band file's grid, and the bytes decoded to get it. A mask file on another grid is
    brought over by nearest."""
    if spec.mask is None:
        raise ValueError(f"source of {ref.path} has no mask rule")
    path = ref.mask_path or ref.path
    if ref.mask_path is not None and not is_remote(ref.mask_path) and not Path(ref.mask_path).exists():
        raise SceneError(ref.path, f"its mask file {Path(ref.mask_path).name} is missing")
    shape = (int(win.height), int(win.width))
    clear, nbytes = np.ones(shape, dtype=bool), 0
    try:
        with rasterio.open(path) as ds:
            for band in spec.mask.bands or [spec.mask.band]:
                if band > ds.count:
                    raise SceneError(path, f"mask band {band} requested; the file has {ds.count}")
                if ds.transform == transform @ Affine.translation(-win.col_off, -win.row_off):
                    mask = ds.read(band, window=win)
                else:  # mask on its own grid: bring it onto this one
                    mask = np.zeros(shape, dtype=ds.dtypes[band - 1])
                    reproject(
                        rasterio.band(ds, band), mask, dst_transform=transform,
                        dst_crs=ds.crs, resampling=Resampling.nearest,
                    )
                clear &= mask_to_clear(mask, spec.mask)
                nbytes += mask.nbytes
    except RasterioIOError as exc:
        raise SceneError(path, f"mask cannot be read ({exc})") from exc
    return clear, nbytes


def clear_after_warp(clear: np.ndarray, shape: tuple[int, int], *, resampling: Resampling,
                     **geo: Any) -> np.ndarray:
    """Where a warp with ``resampling`` of values on the source pixels takes nothing from a pixel
    that is not ``clear``: the not-clear indicator warped with the same kernel is 0 there.

    Nearest picks one source pixel, so this is the plain nearest warp of ``clear``; bilinear,
    cubic or average blend several, and a target pixel at a cloud's rim whose nearest source pixel
    is clear still takes part of its value from the cloud: such a pixel is not clear. ``geo``:
    ``src_transform``, ``src_crs``, ``dst_transform``, ``dst_crs`` as for ``reproject``."""
    cloudy = np.zeros(shape, dtype=np.float32)
    reproject((~clear).astype(np.float32), cloudy, resampling=resampling, num_threads=_warp_threads(), **geo)
    return np.abs(cloudy) <= 1e-6


def _lattice_offset(raw: RawScene, grid: Grid) -> tuple[int, int] | None:
    """(row, col) offset of the scene window in the grid when both share a pixel lattice."""
    if raw.crs != grid.crs:
        return None
    t, g = raw.transform, grid.transform
    if not (math.isclose(t.a, g.a, rel_tol=1e-9) and math.isclose(t.e, g.e, rel_tol=1e-9)):
        return None
    if t.b != 0 or t.d != 0:
        return None
    col = (t.c - g.c) / g.a
    row = (t.f - g.f) / g.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


def _overlap(
    src_shape: tuple[int, int], dst_shape: tuple[int, int], row: int, col: int
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """(source, destination) slices where a source placed at (row, col) overlaps the destination."""
    h, w = src_shape
    H, W = dst_shape
    r0, c0 = max(row, 0), max(col, 0)
    r1, c1 = min(row + h, H), min(col + w, W)
    if r1 <= r0 or c1 <= c0:
        return None
    return (slice(r0 - row, r1 - row), slice(c0 - col, c1 - col)), (slice(r0, r1), slice(c0, c1))


def _paste(src: np.ndarray, dst: np.ndarray, row: int, col: int) -> None:
    """Copy ``src`` (..., h, w) into ``dst`` (..., H, W) at (row, col), clipping at the edges."""
    ov = _overlap(src.shape[-2:], dst.shape[-2:], row, col)
    if ov is not None:
        (sr, sc), (dr, dc) = ov
        dst[..., dr, dc] = src[..., sr, sc]


#: A target pixel spanning this many source pixels or more (along its wider side) takes their
#: area average by default, not a bilinear sample of the four nearest.
AVERAGE_FROM_SCALE = 1.5


def value_resampling(spec: SourceSpec, src_transform: Affine, src_crs: CRS, dst_transform: Affine,
                     dst_crs: CRS, shape: tuple[int, int]) -> Resampling:
    """Resampling of a continuous source's values onto the grid ``(dst_transform, shape,
    dst_crs)``: the catalog's ``resampling`` when given; else bilinear, or the area average where
    a target pixel spans :data:`AVERAGE_FROM_SCALE` source pixels or more. Bilinear reads the four
    source pixels nearest a target pixel's centre whatever its size: a 3 m scene on a 30 m grid
    would keep 4 of its 100 pixels per cell and alias the rest away."""
    if spec.resampling:
        return Resampling[spec.resampling]
    scale = target_pixel_scale(src_transform, src_crs, dst_transform, dst_crs, shape)
    return Resampling.average if scale is not None and scale >= AVERAGE_FROM_SCALE else Resampling.bilinear


def warp_scene(
    raw: RawScene, spec: SourceSpec, grid: Grid, *, out: np.ndarray | None = None, fill: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Put a read scene onto the grid, into ``out`` (a C-contiguous ``(bands, H, W)`` float32
    array, e.g. one date of a part's array) when given. A categorical source's codes are warped
    with :func:`class_resampling`, ``fill`` (default :func:`class_fill`) where the map has none.

    Returns
    -------
    data : (bands, H, W) float32 physical values, NaN outside the footprint
        (categorical sources: (H, W) of the raw codes, the band's nodata outside).
    valid : (H, W) bool, observed, finite and clear.
    """
    spec = scene_spec(spec, raw.ref)
    shape = (grid.height, grid.width)
    offset = _lattice_offset(raw, grid)
    if spec.kind == "categorical" and out is not None:
        raise ValueError(f"{raw.ref.path}: a categorical source is warped into its own code array; out is "
                         "for float data")
    if spec.kind == "categorical":
        nodata = class_fill(raw.data, raw.nodata) if fill is None else fill
        codes = np.full(shape, nodata, dtype=raw.data.dtype)
        if offset is not None:
            _paste(raw.data[0], codes, *offset)
        else:
            reproject(
                raw.data[0], codes, src_transform=raw.transform, src_crs=raw.crs, src_nodata=raw.nodata,
                dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=nodata,
                resampling=class_resampling(spec.resampling, raw.transform, raw.crs, grid.transform, grid.crs, shape),
                num_threads=_warp_threads(),
            )
        return codes, codes != nodata
    nbands = raw.data.shape[0]
    if out is not None and (out.shape != (nbands, *shape) or out.dtype != np.float32 or not out.flags.c_contiguous):
        raise ValueError(f"out must be a C-contiguous float32 array of shape {(nbands, *shape)}; "
                         f"got {out.dtype} {out.shape}")
    data = np.empty((nbands, *shape), np.float32) if out is None else out
    clear = np.zeros(shape, dtype=bool)
    if offset is not None:  # on the grid's lattice: scale straight into place, no warp
        if not (offset == (0, 0) and raw.data.shape[1:] == shape):
            data.fill(np.nan)
        ov = _overlap(raw.data.shape[1:], shape, *offset)
        if ov is not None:
            (sr, sc), (dr, dc) = ov
            _to_physical(raw.data[:, sr, sc], spec, raw.nodata, out=data[:, dr, dc])
            if raw.clear is not None:
                clear[dr, dc] = raw.clear[sr, sc]
    else:
        data.fill(np.nan)
        resampling = value_resampling(spec, raw.transform, raw.crs, grid.transform, grid.crs, shape)
        if resampling == Resampling.mode:  # class codes in a scene (a palette band): see class_resampling
            resampling = class_resampling(spec.resampling, raw.transform, raw.crs, grid.transform, grid.crs, shape)
        reproject(
            _to_physical(raw.data, spec, raw.nodata), data, src_transform=raw.transform, src_crs=raw.crs,
            src_nodata=np.nan, dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
            resampling=resampling, num_threads=_warp_threads(),
        )
        if raw.clear is not None:
            clear = clear_after_warp(raw.clear, shape, resampling=resampling, src_transform=raw.transform,
                                     src_crs=raw.crs, dst_transform=grid.transform, dst_crs=grid.crs)
    observed = np.isfinite(data[0])  # band by band: no (bands, H, W) temporary
    for band in data[1:]:
        observed &= np.isfinite(band)
    valid = observed & clear if raw.clear is not None else observed
    return data, valid
