"""The patching stage: cube.zarr -> patches.zarr (fixed windows x all times x all bands).

``patches.zarr`` holds

- ``data(patch, time, band, py, px)`` float32 and ``valid(patch, time, py, px)`` bool, and every
  other cube variable ending in ``(y, x)`` cut the same way (``landcover(y, x)`` ->
  ``landcover(patch, py, px)``);
- coordinates ``patch`` (0..P-1), ``row0``/``col0`` (origin in cube pixels), ``y0``/``x0`` (projected
  centre of each patch's top-left pixel), ``split`` (``train``/``val``/``test``/``buffer``, see
  ``fusion_models.patching.block_split``), ``time``, ``band`` and the cube's ``spatial_ref``;
- attributes: ``patch_size``, ``patch_stride``, ``patch_block``, ``split_fractions``,
  ``split_seed``, ``cube_path``, ``cube_dims``/``cube_shape`` and the grid (``crs_wkt``,
  ``GeoTransform``), so ``unpatch`` can rebuild the cube.

It is chunked by ``batch`` patches along ``patch`` (all times, bands, the full patch) and written
batch by batch: only the window of the cube a batch needs is read.
"""

from __future__ import annotations

import logging
import time as _time
from collections.abc import Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
from affine import Affine
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from tqdm.auto import tqdm

from fusion_models.patching import (
    SPLITS,
    block_split,
    extract_patches,
    fold_patches,
    patch_origins,
)
from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    fingerprint,
    product_attrs,
    reuse_or_refuse,
    stage_key,
    write_manifest,
)
from tasks.cube import (
    DATA_DIMS,
    check_cube,
    cube_crs,
    cube_transform,
    grid_coords,
    open_cube,
    spatial_ref,
)
from tasks.errors import retry_on_io_error
from tasks.runlog import reports_warnings

__all__ = ["PATCH_ATTRS", "cut_layers", "make_patches", "patch_task", "unpatch"]

log = logging.getLogger(__name__)

STAGE = "patch"
CODE_MODULES = ("tasks.patch",)  # and every project module it imports (checkpoint.code_modules)
# Attributes make_patches adds on top of the cube's own (unpatch removes them again).
#: what ``x0`` / ``y0`` are (GIS users building a patch footprint from them need the half pixel)
ORIGIN_NOTE = "{} of the centre of the patch's top-left pixel (its footprint starts half a pixel west / north)"
#: what a patch's ``split`` says, for a reader of the store
SPLIT_ATTRS = {
    "long_name": "spatial-block split of the patch",
    "description": "train, val and test patches come from disjoint spatial blocks and share no pixel; buffer: "
                   "a held-out patch that overlapped another split's pixels, in no split (train and score on "
                   "none of them)",
}
PATCH_ATTRS = (
    "patch_size",
    "patch_stride",
    "patch_block",
    "split_fractions",
    "split_seed",
    "cube_path",
    "cube_dims",
    "cube_shape",
    "crs_wkt",
    "GeoTransform",
)
SPACE = ("y", "x")
PATCH_SPACE = ("py", "px")


# --- pure xarray-level helpers ------------------------------------------------------------------


def cut_layers(ds: xr.Dataset) -> list[str]:
    """Names of the variables cut into patches: ``data``, ``valid`` and every ``(..., y, x)`` one."""
    names = [str(n) for n in ds.data_vars if tuple(ds[n].dims[-2:]) == SPACE]
    return sorted(names, key=lambda n: (n not in ("data", "valid"), n))


def _patch_dims(dims: Sequence[Hashable]) -> tuple[Hashable, ...]:
    """``(time, band, y, x)`` -> ``(patch, time, band, py, px)``."""
    return ("patch", *dims[:-2], *PATCH_SPACE)


def _batches(n: int, batch: int) -> Iterator[slice]:
    for start in range(0, n, batch):
        yield slice(start, min(start + batch, n))


def _row_groups(origins: np.ndarray) -> list[np.ndarray]:
    """Indices of runs of patches sharing a row origin (row-major order keeps them contiguous)."""
    cuts = np.flatnonzero(np.diff(origins[:, 0])) + 1
    return np.split(np.arange(len(origins)), cuts)


def _template(
    ds: xr.Dataset,
    layers: list[str],
    origins: np.ndarray,
    split: np.ndarray,
    *,
    size: int,
    batch: int,
    attrs: dict[str, Any],
) -> xr.Dataset:
    """The patches store as a lazy Dataset: coordinates in memory, layers as unwritten dask zeros."""
    n = len(origins)
    data_vars: dict[str, xr.DataArray] = {}
    for name in layers:
        var = ds[name]
        lead = tuple(var.shape[:-2])
        dtype = np.dtype(np.float32) if name == "data" else var.dtype
        zeros = da.zeros((n, *lead, size, size), dtype=dtype, chunks=(batch, *lead, size, size))
        data_vars[name] = xr.DataArray(zeros, dims=_patch_dims(var.dims), attrs=dict(var.attrs))
    # variables with no spatial dimension (e.g. per-time scene ids) travel as they are
    for other in ds.data_vars:
        if other in layers:
            continue
        if set(ds[other].dims) & set(SPACE):
            log.warning(
                "patch: variable %r has dims %s, not (..., y, x); left out", other, ds[other].dims
            )
            continue
        data_vars[str(other)] = ds[other].load()
    y = ds["y"].values
    x = ds["x"].values
    coords: dict[str, Any] = {
        "patch": ("patch", np.arange(n, dtype=np.int64)),
        "row0": ("patch", origins[:, 0].astype(np.int64), {"long_name": "cube row of the patch's top-left pixel"}),
        "col0": ("patch", origins[:, 1].astype(np.int64), {"long_name": "cube column of the patch's top-left pixel"}),
        "y0": ("patch", y[origins[:, 0]], {**ds["y"].attrs, "description": ORIGIN_NOTE.format("y")}),
        "x0": ("patch", x[origins[:, 1]], {**ds["x"].attrs, "description": ORIGIN_NOTE.format("x")}),
        "split": ("patch", split.astype(object), SPLIT_ATTRS),  # variable-length strings: Zarr v3 "string"
    }
    for cname, coord in ds.coords.items():
        if cname in SPACE or set(coord.dims) & set(SPACE):
            continue
        coords[str(cname)] = coord.load()
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def _read_batch(
    ds: xr.Dataset, layers: list[str], origins: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """Cut one batch of patches: read only the windows its rows of patches span (one compute)."""
    groups = _row_groups(origins)
    windows = []
    for idx in groups:
        r0 = int(origins[idx[0], 0])
        c0, c1 = int(origins[idx, 1].min()), int(origins[idx, 1].max()) + size
        windows.append(ds[layers].isel(y=slice(r0, r0 + size), x=slice(c0, c1)))
    # computed as arrays, not datasets: dask's graph optimisation of a dataset whose ``valid`` is
    # derived from its ``data`` (a cube stored without it) loses the store reads (pydata/xarray#11329)
    values = iter(dask.compute(*[w[name].data for w in windows for name in layers]))
    loaded = [{name: next(values) for name in layers} for _ in windows]
    out: dict[str, np.ndarray] = {}
    for name in layers:
        parts = []
        for idx, window in zip(groups, loaded, strict=True):
            local = origins[idx] - [int(origins[idx[0], 0]), int(origins[idx, 1].min())]
            parts.append(extract_patches(np.asarray(window[name]), local, size))
        cut = np.concatenate(parts)  # (n, *lead, size, size)
        out[name] = cut.astype(np.float32, copy=False) if name == "data" else cut
    return out


def _write_batch(
    store: Path, region: slice, arrays: dict[str, np.ndarray], dims: dict[str, tuple[str, ...]]
) -> None:
    """Write one batch of patches into its region of the store (chunk-aligned)."""
    part = xr.Dataset({name: (dims[name], arr) for name, arr in arrays.items()})
    part.to_zarr(store, region={"patch": region}, mode="r+", consolidated=False)


# --- I/O ----------------------------------------------------------------------------------------


def _check_int(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}; got {name}={value!r}")


def patch_key(
    cube: str | Path,
    *,
    size: int,
    stride: int | None,
    block: int,
    fractions: Sequence[float],
    seed: int,
) -> tuple[str, dict[str, Any], dict[str, str]]:
    """The checkpoint key of patching ``cube`` with these parameters: (key, params, inputs)."""
    stride = size if stride is None else stride
    params = {"size": size, "stride": stride, "block": block, "fractions": [float(f) for f in fractions], "seed": seed}
    inputs = {"cube": fingerprint(cube)}
    return stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES)), params, inputs


#: the smallest patch side: the catalog's ``ge`` for every stage's patch size, and make_patches'
MIN_PATCH = 4


def fit_patch_size(cube: str | Path, size: int, stride: int | None) -> tuple[int, int | None]:
    """Shrink ``size`` (and ``stride``) to the cube's smaller side when the cube is smaller."""
    ds = open_cube(cube)
    side = min(ds.sizes["y"], ds.sizes["x"])
    if side < MIN_PATCH:
        raise ValueError(f"{cube}: {ds.sizes['y']} x {ds.sizes['x']} px; the stages need at least "
                         f"{MIN_PATCH} x {MIN_PATCH} px to cut a patch")
    if side >= size:
        return size, stride
    log.warning("cube %s is %d px on its smaller side; patches of %d px instead of %d", cube, side, side, size)
    return side, None if stride is None else min(stride, side)


def _empty_splits(split: np.ndarray, fractions: Sequence[float]) -> list[str]:
    """The splits with a positive fraction that got no patch."""
    return [n for n, f in zip(SPLITS, fractions, strict=True) if f > 0 and not (split == n).any()]


def _usable_split(origins: np.ndarray, *, size: int, block: int, fractions: Sequence[float], seed: int,
                  name: str) -> tuple[int, np.ndarray]:
    """The block split with ``block``, or, when that leaves a split with a positive fraction
    without patches (a cube of a few blocks), with the largest smaller block that fills every
    split: a small cube still gets held-out val/test patches (the stages' scores and model
    selection need them). Deterministic in the inputs, so the artifact key stays the request's."""
    split = block_split(origins, size=size, block=block, fractions=fractions, seed=seed)
    missing = _empty_splits(split, fractions)
    for smaller in range(block - 1, 0, -1):
        if not missing:
            break
        candidate = block_split(origins, size=size, block=smaller, fractions=fractions, seed=seed)
        if not _empty_splits(candidate, fractions):
            log.warning("patch %s: blocks of %d x %d px left %s without patches; using blocks of %d x %d px",
                        name, block * size, block * size, missing, smaller * size, smaller * size)
            return smaller, candidate
    return block, split


def patch_split(cube: str | Path, *, size: int = 32, stride: int | None = None, block: int = 4,
                fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(origins (P, 2), split (P,))``: the patches and split :func:`make_patches` gives ``cube``
    with these settings, without cutting or writing anything (e.g. to score a map on the test
    patches)."""
    cube = Path(cube)
    ds = open_cube(cube)
    origins = patch_origins(ds.sizes["y"], ds.sizes["x"], size=size, stride=size if stride is None else stride)
    _, split = _usable_split(origins, size=size, block=block, fractions=[float(f) for f in fractions],
                             seed=seed, name=cube.name)
    return origins, split


def default_patch_key(cube: str | Path, size: int) -> str:
    """The key :func:`make_patches` gives ``cube`` cut at ``size`` with its defaults otherwise (no
    overlap, blocks of 4, 70/15/15 %, seed 0): what a stage that patches the cube itself checks a
    patch store made elsewhere against (compress uses the pipeline's own when the keys agree)."""
    return patch_key(cube, size=size, stride=None, block=4, fractions=(0.7, 0.15, 0.15), seed=0)[0]


def make_patches(
    cube: str | Path,
    out: str | Path,
    *,
    size: int = 32,
    stride: int | None = None,
    block: int = 4,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    batch: int = 64,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Cut a cube into fixed spatial patches (all times, all bands) with a spatial-block split.

    Parameters
    ----------
    cube
        A schema-following cube store (``tasks.cube``).
    out
        Where ``patches.zarr`` goes; its manifest is written beside it.
    size
        Patch side in pixels.
    stride
        Step between patches in pixels (``None``: ``size``, no overlap); ``1 <= stride <= size``.
    block
        Split block side in patches (see ``fusion_models.patching.block_split``).
    fractions
        Train, val and test shares of the blocks, summing to 1.
    seed
        Seed of the split.
    batch
        Patches per chunk and per write; bounds memory to about one batch of patches plus the cube
        windows it spans. It does not change the content, so it is not part of the key.
    overwrite
        Replace an existing ``out`` made with another key (other cube, parameters or code).
        A finished ``out`` with this run's key is always reused.
    progress
        Show a progress bar over batches.

    Returns
    -------
    Manifest
        The manifest of ``out`` (reused or new); ``outputs`` holds the patches per split and the
        shape, ``stats`` the observed share and the elapsed time.

    Raises
    ------
    ValueError
        For bad parameters (``CubeSchemaError`` when ``cube`` is not a cube).
    FileExistsError
        When ``out`` exists with another key and ``overwrite`` is False.
    """
    stride = size if stride is None else stride
    _check_int("size", size, 1)
    if size < MIN_PATCH:
        raise ValueError(f"size must be >= {MIN_PATCH} pixels (a patch of {size} px has next to no spatial "
                         "context, and the stages would fit thousands of tiny patches); got size=" + str(size))
    _check_int("stride", stride, 1)
    _check_int("block", block, 1)
    _check_int("batch", batch, 1)
    cube, out = Path(cube), Path(out)
    key, params, inputs = patch_key(cube, size=size, stride=stride, block=block, fractions=fractions, seed=seed)
    fracs = params["fractions"]
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite, inputs=[cube])
    if found is not None:
        return found

    started = _time.perf_counter()
    ds = open_cube(cube)
    n_time, n_band, height, width = (ds.sizes[d] for d in DATA_DIMS)
    origins = patch_origins(height, width, size=size, stride=stride)
    block, split = _usable_split(origins, size=size, block=block, fractions=fracs, seed=seed, name=cube.name)
    layers = cut_layers(ds)
    crs = cube_crs(ds)
    attrs = product_attrs(
        STAGE, key, params, code=code_version(*CODE_MODULES), inherit=ds.attrs,
        patch_size=size,
        patch_stride=stride,
        patch_block=block,
        split_fractions=fracs,
        split_seed=seed,
        cube_path=str(cube.resolve()),
        cube_dims=list(DATA_DIMS),
        cube_shape=[n_time, n_band, height, width],
        crs_wkt=crs.to_wkt() if crs is not None else "",
        GeoTransform=" ".join(repr(float(v)) for v in cube_transform(ds).to_gdal()),
    )
    template = _template(ds, layers, origins, split, size=size, batch=batch, attrs=attrs)
    dims = {name: tuple(str(d) for d in template[name].dims) for name in layers}
    observed = 0
    with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
        template.to_zarr(tmp, mode="w", compute=False, zarr_format=3, consolidated=True)
        regions = list(_batches(len(origins), batch))
        # read batch i+1 while batch i is written: at most two batches in memory
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="patch-write") as writer:
            pending: Future[None] | None = None
            for region in tqdm(
                regions, desc=f"patch {cube.name}", unit="batch", disable=not progress
            ):
                arrays = _read_batch(ds, layers, origins[region], size)
                observed += int(arrays["valid"].sum())
                if pending is not None:
                    pending.result()
                pending = writer.submit(_write_batch, tmp, region, arrays, dims)
            if pending is not None:
                pending.result()

    per_split = {name: int((split == name).sum()) for name in (*SPLITS, "buffer")}
    empty = _empty_splits(split, fracs)
    if empty:
        log.warning(
            "patch: split(s) %s got no patches (%d patches, blocks of %d x %d pixels); %s",
            empty,
            len(origins),
            block * size,
            block * size,
            f"overlapping patches (stride {stride} < size {size}) next to another split's block are set "
            "aside as buffer: use --stride equal to --size, or a larger cube"
            if stride < size else "the cube is too small for this split (a smaller patch size, --patch or --size, "
            "gives more blocks)",
        )
    manifest = Manifest(
        stage=STAGE,
        key=key,
        params=params,
        inputs=inputs,
        code_version=code_version(*CODE_MODULES),
        outputs={
            "path": str(out),
            "cube": str(cube),
            "patches": per_split,
            "shape": {
                "patch": len(origins),
                "time": n_time,
                "band": n_band,
                "py": size,
                "px": size,
            },
        },
        stats={
            "valid_share": observed / max(len(origins) * n_time * size * size, 1),
            "seconds": round(_time.perf_counter() - started, 3),
            "batch": batch,
        },
    )
    write_manifest(out, manifest)
    log.info("patch: wrote %s (%d patches: %s)", out, len(origins), per_split)
    return manifest


def _restore(folded: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Folded float means back to a layer's dtype (bool by majority, integers rounded, 0 uncovered)."""
    if np.issubdtype(dtype, np.floating):
        return folded.astype(dtype, copy=False)
    if dtype.kind == "b":
        return folded >= 0.5
    return np.where(np.isnan(folded), 0, np.rint(folded)).astype(dtype)


def unpatch(
    patches: str | Path,
    out: str | Path | None = None,
    *,
    tile: int = 256,
    overwrite: bool = False,
) -> xr.Dataset:
    """The inverse of ``make_patches``: fold a patches store back into a cube, averaging overlaps.

    Works window by window (``tile x tile`` pixels, all times and bands): each window folds only the
    patches that touch it, so memory is bounded when ``out`` is given.

    Parameters
    ----------
    patches
        A store written by ``make_patches``.
    out
        Where to write the cube (Zarr v3, chunked ``tile x tile`` in space, with a manifest);
        ``None`` builds it in memory.
    tile
        Side of the windows (and of the written chunks) in pixels.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    xr.Dataset
        A cube-schema Dataset with the original ``x``/``y`` coordinates and ``spatial_ref``:
        lazily opened from ``out`` when given, else in memory. Pixels no patch covers are NaN in
        float layers, False in ``valid``, 0 in integer layers.
    """
    _check_int("tile", tile, 1)
    patches = Path(patches)
    pds = xr.open_zarr(patches, consolidated=None)
    missing = [a for a in ("patch_size", "cube_shape", "GeoTransform") if a not in pds.attrs]
    if missing:
        raise ValueError(
            f"{patches}: not a patches store written by make_patches (attributes {missing} "
            "are missing); run make_patches on the cube first"
        )
    size = int(pds.attrs["patch_size"])
    _, _, height, width = (int(n) for n in pds.attrs["cube_shape"])
    transform = Affine.from_gdal(*(float(v) for v in str(pds.attrs["GeoTransform"]).split()))
    y, x = grid_coords(transform, height, width)
    origins = np.stack([pds["row0"].values, pds["col0"].values], axis=1).astype(np.int64)
    layers = [
        str(n)
        for n in pds.data_vars
        if pds[n].ndim >= 3 and pds[n].dims[0] == "patch" and tuple(pds[n].dims[-2:]) == PATCH_SPACE
    ]
    lead = {n: tuple(pds[n].shape[1:-2]) for n in layers}
    cube_dims = {n: (*pds[n].dims[1:-2], *SPACE) for n in layers}

    coords: dict[str, Any] = {
        "y": ("y", y, {k: v for k, v in pds["y0"].attrs.items() if k != "description"}),
        "x": ("x", x, {k: v for k, v in pds["x0"].attrs.items() if k != "description"}),
    }
    for name, coord in pds.coords.items():
        if "patch" not in coord.dims:
            coords[str(name)] = coord.load()
    if "spatial_ref" not in coords and pds.attrs.get("crs_wkt"):
        from rasterio.crs import CRS

        coords["spatial_ref"] = spatial_ref(CRS.from_wkt(pds.attrs["crs_wkt"]), transform)
    inputs = {"patches": fingerprint(patches)}
    key = stage_key("unpatch", inputs=inputs, params={"tile": tile}, code=code_version(*CODE_MODULES))
    attrs = product_attrs("unpatch", key, {"tile": tile}, code=code_version(*CODE_MODULES),
                          inherit={k: v for k, v in pds.attrs.items() if k not in PATCH_ATTRS})
    others = {str(n): pds[n].load() for n in pds.data_vars if "patch" not in pds[n].dims}

    def windows() -> Iterator[tuple[slice, slice, dict[str, np.ndarray]]]:
        ends = origins + size
        for r0 in range(0, height, tile):
            for c0 in range(0, width, tile):
                r1, c1 = min(r0 + tile, height), min(c0 + tile, width)
                hit = np.flatnonzero(
                    (origins[:, 0] < r1)
                    & (ends[:, 0] > r0)
                    & (origins[:, 1] < c1)
                    & (ends[:, 1] > c0)
                )
                folded: dict[str, np.ndarray] = {}
                (sub,) = dask.compute(pds[layers].isel(patch=hit))
                # fold onto the bounding box of the window and the patches touching it
                top = min(int(origins[hit, 0].min(initial=r0)), r0)
                left = min(int(origins[hit, 1].min(initial=c0)), c0)
                bottom = max(int(ends[hit, 0].max(initial=r1)), r1)
                right = max(int(ends[hit, 1].max(initial=c1)), c1)
                local = origins[hit] - [top, left]
                for name in layers:
                    if len(hit) == 0:  # not from make_patches, whose patches cover every pixel
                        part = np.full((*lead[name], r1 - r0, c1 - c0), np.nan)
                        folded[name] = _restore(part, pds[name].dtype)
                        continue
                    canvas = fold_patches(
                        sub[name].values, local, (*lead[name], bottom - top, right - left)
                    )
                    part = canvas[..., r0 - top : r1 - top, c0 - left : c1 - left]
                    folded[name] = _restore(part, pds[name].dtype)
                yield slice(r0, r1), slice(c0, c1), folded

    if out is None:
        full = {n: np.empty((*lead[n], height, width), dtype=pds[n].dtype) for n in layers}
        for rows, cols, folded in windows():
            for name, arr in folded.items():
                full[name][..., rows, cols] = arr
        data_vars = {
            n: xr.DataArray(full[n], dims=cube_dims[n], attrs=dict(pds[n].attrs)) for n in layers
        }
        result = xr.Dataset({**data_vars, **others}, coords=coords, attrs=attrs)
        return check_cube(result, source=str(patches))

    out = Path(out)
    lazy = {
        n: xr.DataArray(
            da.zeros(
                (*lead[n], height, width),
                dtype=pds[n].dtype,
                chunks=(*lead[n], min(tile, height), min(tile, width)),
            ),
            dims=cube_dims[n],
            attrs=dict(pds[n].attrs),
        )
        for n in layers
    }
    template = xr.Dataset({**lazy, **others}, coords=coords, attrs=attrs)
    check_cube(template, source=str(patches))
    with atomic_artifact(out, overwrite=overwrite) as tmp:
        template.to_zarr(tmp, mode="w", compute=False, zarr_format=3, consolidated=True)
        for rows, cols, folded in windows():
            part = xr.Dataset({n: (cube_dims[n], arr) for n, arr in folded.items()})
            part.to_zarr(tmp, region={"y": rows, "x": cols}, mode="r+", consolidated=False)
    write_manifest(
        out,
        Manifest(
            stage="unpatch",
            key=key,
            params={"tile": tile},
            inputs=inputs,
            code_version=code_version(*CODE_MODULES),
            outputs={
                "path": str(out),
                "patches": str(patches),
                "shape": [int(n) for n in pds.attrs["cube_shape"]],
            },
        ),
    )
    return open_cube(out)


# --- Prefect task -------------------------------------------------------------------------------


@task(name="patch", retries=1, retry_delay_seconds=10, retry_condition_fn=retry_on_io_error, cache_policy=NONE)
@reports_warnings
def patch_task(
    cube: str,
    out: str,
    *,
    size: int = 32,
    stride: int | None = None,
    block: int = 4,
    fractions: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    batch: int = 64,
    overwrite: bool = False,
    shrink_to_fit: bool = True,
) -> dict[str, Any]:
    """Prefect task: ``make_patches`` on paths; returns the manifest as a dict plus ``artifact``.

    No Prefect result caching: the manifest beside ``out`` is the cache (a finished artifact with
    the same key is reused even against a fresh Prefect database). With ``shrink_to_fit`` a cube
    smaller than ``size`` along y or x is cut into patches of its smaller side instead of failing.
    """
    logger = get_run_logger()
    if shrink_to_fit:
        size, stride = fit_patch_size(cube, size, stride)
    manifest = make_patches(
        cube,
        out,
        size=size,
        stride=stride,
        block=block,
        fractions=fractions,
        seed=seed,
        batch=batch,
        overwrite=overwrite,
    )
    logger.info("patches %s: key %s, %s", out, manifest.key, manifest.outputs.get("patches", {}))
    return {"artifact": str(out), **asdict(manifest)}
