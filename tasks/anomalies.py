"""The anomaly stage: cube.zarr -> anomalies.zarr by quantized tensor robust PCA (Q-TRPCA).

One band of a schema-following cube (default: the first) is quantized with a uniform ``bits``-bit
quantizer over the band's observed range, then split tile by tile (``tile x tile`` pixels, all
times; tiles overlap by a quarter and are blended where they do, so the tile grid leaves no
seams) into a low-rank background ``L`` and a sparse part ``S`` by ``fusion_models.qtrpca.qtrpca``
(A. Aidini, G. Tsagkatakis and P. Tsakalides, "Quantized Tensor Robust Principal Component
Analysis", ICASSP 2020). ``anomalies.zarr`` holds

- ``score(time, y, x)`` float32, in the band's units (kelvin for LST), NaN where the band was
  not observed (``valid`` false or no value: "not seen", which a 0 would read as "no anomaly"); the
  residual of the observation (the bin centre) about ``L``, pooled with its 3 x 3 x 3
  neighbourhood (``fusion_models.qtrpca.cluster_score``: the maximum-likelihood shift common to the
  entry and its neighbours; anomalies cover a few pixels over one to three days);
- ``flag(time, y, x)`` bool (false where unobserved), ``score > max(k * sigma, step)`` with ``sigma`` the tile's robust
  (1.4826 median) size of the score (``fusion_models.qtrpca.robust_threshold``; ``k = FLAG_K`` by
  default) and ``step`` the quantizer's bin width (nothing smaller than one bin can be told from
  quantization);
- ``background(time, y, x)`` float32, ``L`` (defined under clouds too);
- the cube's ``time``, ``y``, ``x`` coordinates and ``spatial_ref``.

A scene-sized cube takes many minutes (a 2000 x 2000 px, 27-date cube is about 1800 tiles), so
the stage records its progress after each row of tiles (``tasks.checkpoint.resumable_artifact``):
a stopped or killed run is resumed by the next run with the same key, from its last finished row.
"""

from __future__ import annotations

import argparse
import logging
import os
import time as _time
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from fusion_models.patching import axis_starts, blend_ramp
from fusion_models.qtrpca import cluster_score, dequantize, qtrpca, quantize, robust_threshold
from tasks.checkpoint import (
    Manifest,
    code_version,
    fingerprint,
    product_attrs,
    read_manifest,
    resumable_artifact,
    reuse_or_refuse,
    stage_key,
    write_manifest,
)
from tasks.cube import open_cube, zarr_array
from tasks.errors import NotEnoughData
from tasks.runlog import reports_warnings

__all__ = [
    "add_cli",
    "anomalies_png",
    "anomalies_task",
    "detect_anomalies",
    "detect_tile",
    "observed_band",
    "strongest_anomalies",
    "tile_workers",
    "waits_for_data",
]

log = logging.getLogger(__name__)

STAGE = "anomalies"
CODE_MODULES = ("tasks.anomalies",)  # and every project module it imports (checkpoint.code_modules)
FLAG_K = 6.0  # chosen on the demo sample area with seed 1 (the benchmark scores seed 0)
VARS = ("score", "flag", "background")
#: ``score``'s ``unobserved`` attribute: NaN where the band was not observed (products made before
#: 2026-12 have no such attribute and hold 0 there)
UNOBSERVED = "NaN"
MIN_DATES = 3  # fewer dates leave no time series to separate a background from
#: in the work store of an unfinished run: how far it got, and the blending sums it carries over
PROGRESS_FILE = ".progress.npz"


# --- pure xarray-level helpers ------------------------------------------------------------------


def detect_tile(
    values: xr.DataArray,
    valid: xr.DataArray,
    *,
    bits: int,
    lo: float,
    hi: float,
    lam: float | None = None,
    k: float = FLAG_K,
) -> tuple[xr.Dataset, dict[str, Any]]:
    """Q-TRPCA on one in-memory ``(time, y, x)`` window; returns score, flag, background and stats.

    Parameters
    ----------
    values
        ``(time, y, x)`` float, NaN where unobserved.
    valid
        ``(time, y, x)`` bool, true where observed and clear.
    bits, lo, hi
        The quantizer (``fusion_models.qtrpca.quantize``): the same for every tile of a cube.
    lam
        Sparsity weight (default: ``1/sqrt(max(ny, nx) * nt)`` of the window).
    k
        Flag threshold in robust deviations of the scores (``robust_threshold``).
    """
    dims = ("time", "y", "x")
    if tuple(values.dims) != dims or tuple(valid.dims) != dims:
        raise ValueError(
            f"detect_tile needs (time, y, x) arrays; got {tuple(values.dims)} and {tuple(valid.dims)}"
        )
    y = np.moveaxis(np.asarray(values.values, dtype=np.float64), 0, -1)  # (y, x, time)
    omega = np.moveaxis(np.asarray(valid.values, dtype=bool), 0, -1) & np.isfinite(y)
    shape = values.shape
    stats: dict[str, Any] = {"observed": int(omega.sum()), "iterations": 0, "converged": True}
    if not omega.any():
        score = np.zeros(shape, np.float32)
        background = np.full(shape, np.nan, np.float32)
        flag = np.zeros(shape, bool)
    else:
        codes, edges = quantize(y, bits, lo, hi)
        res = qtrpca(codes, edges, omega, lam=lam)
        pooled = cluster_score(np.where(omega, dequantize(codes, edges) - res.L, 0.0), omega)
        threshold = robust_threshold(pooled, omega, k=k, floor=float(edges[1] - edges[0]))
        score = np.moveaxis(pooled, -1, 0).astype(np.float32)
        background = np.moveaxis(res.L, -1, 0).astype(np.float32)
        flag = score > threshold
        stats.update(iterations=res.iterations, converged=res.converged, threshold=threshold,
                     rank=res.rank)
    coords = {d: values[d].values for d in dims if d in values.coords}
    out = xr.Dataset(
        {
            "score": (dims, score),
            "flag": (dims, flag),
            "background": (dims, background),
        },
        coords=coords,
    )
    return out, stats


def strongest_anomalies(ds: xr.Dataset, n: int = 20, observed: xr.DataArray | None = None) -> list[dict[str, Any]]:
    """The ``n`` flagged entries with the largest score: date, x, y, magnitude and score.

    The magnitude is the entry's departure from the background, ``observed - background`` in the
    band's units (signed: a hot spot is positive), when ``observed`` (the cube's band, dims
    ``(time, y, x)``) is given; otherwise the score. The score is the shift common to the entry
    and its 3 x 3 x 3 neighbourhood (``cluster_score``): about half the entry's own departure for
    a 2 x 2 pixel one-day spot, all of it for an event that fills the neighbourhood.
    """
    # ranked slab by slab (dask keeps the top n of each block of whole rows), never loaded whole
    flagged = da.asarray(xr.where(ds["flag"], ds["score"], 0.0).data)
    shape = flagged.shape
    top = da.argtopk(flagged.reshape(-1), min(n, flagged.size)).compute() if flagged.size and n > 0 else []
    ts, ys, xs = np.unravel_index(np.asarray(top, dtype=np.int64), shape)
    # one vectorised read of the entries (each chunk decoded once), not a read per entry
    at = {"time": xr.DataArray(ts), "y": xr.DataArray(ys), "x": xr.DataArray(xs)}
    score = np.where(ds["flag"].isel(at).values, ds["score"].isel(at).values, 0.0).astype(float)
    keep = score > 0
    ts, ys, xs, score = ts[keep], ys[keep], xs[keep], score[keep]
    at = {"time": xr.DataArray(ts), "y": xr.DataArray(ys), "x": xr.DataArray(xs)}
    magnitudes = score
    if observed is not None and len(ts):
        magnitudes = observed.isel(at).values.astype(float) - ds["background"].isel(at).values.astype(float)
    # coordinates to a tenth of a pixel, and at most to the centimetre (metres) or its like
    step = float(np.abs(np.diff(ds["x"].values[:2])).max(initial=0.0)) or 1.0
    decimals = max(2, int(np.ceil(-np.log10(step))) + 1)
    rows = []
    for t, i, j, magnitude, value in zip(ts, ys, xs, magnitudes, score, strict=True):
        rows.append({
            "date": str(np.datetime_as_string(ds["time"].values[t], unit="D")),
            "x": round(float(ds["x"].values[j]), decimals),
            "y": round(float(ds["y"].values[i]), decimals),
            "magnitude": float(f"{float(magnitude):.4g}"),  # 4 significant digits, in the band's units
            "score": float(f"{float(value):.4g}"),
        })
    return rows


# --- I/O ----------------------------------------------------------------------------------------


def tile_workers() -> int:
    """Tiles solved at once by default: the threads Dask gives a task (its ``num_workers``: one in
    the pipeline's single-threaded workers, see ``flows.worker_preload``), else this process's
    cores."""
    n = dask.config.get("num_workers", None)
    if n:
        return max(1, int(n))
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low
    if not bad and high is not None and value > high:
        bad = True
    if bad:
        span = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be an integer {span}; got {name}={value!r}")


def _template(ds: xr.Dataset, tile: int, *, cube: Path, band: str, bits: int, key: str,
              params: dict[str, Any]) -> xr.Dataset:
    nt, ny, nx = ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]
    chunks = (nt, min(tile, ny), min(tile, nx))
    dims = ("time", "y", "x")
    units = {"units": ds["data"].attrs["units"]} if ds["data"].attrs.get("units") else {}  # none: not ''
    data_vars = {
        "score": xr.DataArray(da.zeros((nt, ny, nx), dtype=np.float32, chunks=chunks), dims=dims,
                              attrs={**units, "unobserved": UNOBSERVED,
                                     "long_name": "anomaly score: residual shift pooled with its neighbourhood"}),
        "flag": xr.DataArray(da.zeros((nt, ny, nx), dtype=bool, chunks=chunks), dims=dims,
                             attrs={"long_name": "anomaly flag"}),
        "background": xr.DataArray(da.zeros((nt, ny, nx), dtype=np.float32, chunks=chunks), dims=dims,
                                   attrs={**units, "long_name": "low-rank background L"}),
    }
    coords: dict[str, Any] = {d: ds[d].load() for d in dims}
    if "spatial_ref" in ds.variables:
        coords["spatial_ref"] = ds["spatial_ref"].load()
        for var in data_vars.values():
            var.attrs["grid_mapping"] = "spatial_ref"
    attrs = product_attrs(
        STAGE, key, params, code=code_version(*CODE_MODULES), title=f"anomalies of band {band} of {cube.name}",
        Conventions="CF-1.8", source=str(cube.resolve()), band=band,
        method=f"quantized tensor robust PCA ({bits}-bit quantizer; Aidini, Tsagkatakis and Tsakalides, ICASSP 2020), "
               "tiles blended")
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)


def anomalies_key(
    cube: str | Path,
    *,
    bits: int = 8,
    band: str | None = None,
    lam: float | None = None,
    tile: int = 64,
    k: float = FLAG_K,
    ds: xr.Dataset | None = None,
) -> tuple[str, str]:
    """The checkpoint key of ``detect_anomalies`` with these arguments, and the band it uses."""
    ds = open_cube(cube) if ds is None else ds
    bands = [str(b) for b in ds["band"].values]
    if not bands:
        raise ValueError(f"{cube}: the cube has no band")
    band = bands[0] if band is None else band
    if band not in bands:
        from tasks.errors import did_you_mean

        raise ValueError(f"band {band!r} is not in {cube} (bands: {bands}){did_you_mean(band, bands)}")
    params = {"bits": bits, "band": band, "lam": lam, "tile": tile, "k": float(k)}
    inputs = {"cube": fingerprint(cube)}
    return stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES)), band


def waits_for_data(cube: str | Path, ds: xr.Dataset | None = None) -> str | None:
    """Why the stage cannot run on ``cube`` yet (too few dates), else None."""
    steps = (open_cube(cube) if ds is None else ds).sizes["time"]
    if steps >= MIN_DATES:
        return None
    return (f"{cube}: anomaly detection separates each pixel's time series into a low-rank background and "
            f"sparse departures, so it needs at least {MIN_DATES} dates; the cube has {steps}. "
            "Ingest more dates into it first")


def _save_progress(work: Path, **state: Any) -> None:
    """Record an unfinished run's progress in its work store, atomically (after the rows it covers)."""
    tmp = work / f"{PROGRESS_FILE}.tmp"
    with open(tmp, "wb") as fh:
        np.savez(fh, **state)
    os.replace(tmp, work / PROGRESS_FILE)


def _load_progress(work: Path, key: str) -> dict[str, np.ndarray] | None:
    """The progress an interrupted run with this ``key`` recorded in ``work``, else None."""
    path = work / PROGRESS_FILE
    if not path.exists():
        return None
    try:
        with np.load(path) as saved:
            state = {name: saved[name] for name in saved.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        log.warning("anomalies: %s is unreadable (%s); starting over", path, exc)
        return None
    return state if str(state.get("key")) == key else None


def detect_anomalies(
    cube: str | Path,
    out: str | Path,
    *,
    bits: int = 8,
    band: str | None = None,
    lam: float | None = None,
    tile: int = 64,
    k: float = FLAG_K,
    overwrite: bool = False,
    progress: bool = False,
    workers: int | None = None,
) -> Manifest:
    """Run Q-TRPCA anomaly detection over one band of a cube, tile by tile, into ``anomalies.zarr``.

    Parameters
    ----------
    cube
        A schema-following cube store (``tasks.cube``).
    out
        Where ``anomalies.zarr`` goes; its manifest is written beside it.
    bits
        Quantizer bits (1..16) over the band's observed ``[min, max]``.
    band
        Band name (default: the cube's first band).
    lam
        Sparsity weight (default per tile: ``1/sqrt(max(tile_y, n_time) * tile_x)``, the TRPCA
        default for the ``(y, time, x)`` tensor the solver works on).
    tile
        Tile side in pixels; each tile is one Q-TRPCA problem of ``tile x tile x n_time``.
    k
        Flag threshold in robust standard deviations of the score (see the module docstring).
    overwrite
        Replace an ``out`` made with another key. A finished ``out`` with this key is reused.
        An unfinished one (the run was stopped or killed) is resumed: the tile rows it finished
        are kept, in ``<out>.resume-<key>`` until the product is complete, and the product equals
        a run never stopped (``stats.resumed_tiles`` counts the tiles taken over).
    progress
        Show a progress bar over tiles.
    workers
        Tiles solved at once, on threads (numpy releases the GIL for part of a tile's work: 9
        tiles of 32 px ran 1.2x faster on 2 threads than on one, 2-core machine). BLAS runs one
        thread per tile whatever ``workers`` is, so the result does not depend on it (a threaded
        BLAS rounds differently). Default :func:`tile_workers`.

    Returns
    -------
    Manifest
        ``outputs`` holds the path, band and shape; ``stats`` the flagged count, iterations and time.

    Raises
    ------
    ValueError
        For bad parameters (``CubeSchemaError`` when ``cube`` is not a cube, or the band is unknown).
    FileExistsError
        When ``out`` exists with another key and ``overwrite`` is False.
    """
    _check_int("bits", bits, 1, 16)
    _check_int("tile", tile, 2)
    workers = tile_workers() if workers is None else workers
    _check_int("workers", workers, 1)
    if lam is not None and not (np.isfinite(lam) and lam > 0):
        raise ValueError(f"lam must be finite and > 0 (or None for the default); got lam={lam!r}")
    if not (np.isfinite(k) and k > 0):
        raise ValueError(f"k must be finite and > 0; got k={k!r}")
    cube, out = Path(cube), Path(out)
    ds = open_cube(cube)
    if (why := waits_for_data(cube, ds)) is not None:
        raise NotEnoughData(why)
    key, band = anomalies_key(cube, bits=bits, band=band, lam=lam, tile=tile, k=k, ds=ds)
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite, inputs=[cube])
    if found is not None:
        return found

    started = _time.perf_counter()
    values = ds["data"].sel(band=band)  # (time, y, x)
    valid = ds["valid"]
    observed = values.where(valid)
    lo, hi = (float(v) for v in da.compute(observed.min().data, observed.max().data))
    if not np.isfinite(lo):
        raise ValueError(f"{cube}: band {band!r} has no observed value; nothing to detect")
    if hi <= lo:
        hi = lo + 1.0
    params = {"bits": bits, "band": band, "lam": lam, "tile": tile, "k": float(k)}
    template = _template(ds, tile, cube=cube, band=band, bits=bits, key=key, params=params)
    ny, nx = ds.sizes["y"], ds.sizes["x"]
    # a whole-date offset d over a tile (regional weather) costs sqrt(n_y) |d| as L (rank one in
    # the (y, time, x) t-SVD the solver uses) but lam n_y n_x |d| as S: it stays in L for any tile.
    # Tiles overlap by a quarter and are blended with weights that ramp over the overlap
    # (blend_ramp): each tile's background, score and threshold fade into its neighbour's, so the
    # tile grid leaves no seams. A cube smaller than a tile is one tile.
    th, tw = min(tile, ny), min(tile, nx)
    margin = tile // 4
    starts_y = axis_starts(ny, th, max(1, th - margin))
    starts_x = axis_starts(nx, tw, max(1, tw - margin))
    weight = np.outer(blend_ramp(th, margin), blend_ramp(tw, margin))  # (th, tw)
    nt = ds.sizes["time"]
    flagged, iterations, unconverged, tiles = 0, 0, 0, 0
    # weighted sums over one row of tiles: scores and backgrounds per date, the rest per pixel
    score_sum, bg_sum = np.zeros((nt, th, nx), np.float32), np.zeros((nt, th, nx), np.float32)
    w_sum, bg_w, thr_sum, thr_w = (np.zeros((th, nx)) for _ in range(4))
    with resumable_artifact(out, key) as work:
        # an interrupted run left its finished tile rows in ``work`` and, beside them, the
        # blending sums of the rows its next tile row still overlaps: go on from there
        saved = _load_progress(work, key)
        first = 0
        if saved is None:
            template.to_zarr(work, mode="w", compute=False, zarr_format=3, consolidated=True)
        else:
            first = int(saved["next_row"])
            flagged, iterations = int(saved["flagged"]), int(saved["iterations"])
            unconverged, tiles = int(saved["unconverged"]), int(saved["tiles"])
            pending = int(saved["pending"])
            for name, arr in (("score_sum", score_sum), ("bg_sum", bg_sum)):
                arr[:, :pending] = saved[name]
            for name, acc in (("w_sum", w_sum), ("bg_w", bg_w), ("thr_sum", thr_sum), ("thr_w", thr_w)):
                acc[:pending] = saved[name]
            log.info("anomalies: %s resumes after %d of %d tiles", out.name, tiles, len(starts_y) * len(starts_x))
        resumed = tiles
        group = zarr.open_group(str(work), mode="r+")
        bar = tqdm(total=len(starts_y) * len(starts_x), initial=tiles, desc=f"anomalies {cube.name}", unit="tile",
                   disable=not progress)
        columns = [slice(int(c0), int(c0) + tw) for c0 in starts_x]

        def solve(r0: int) -> tuple[xr.DataArray, xr.DataArray, list[Future[Any]]]:
            """Read one row of tiles and queue its tiles on the pool."""
            rows = slice(int(r0), int(r0) + th)
            vals, ok = values.isel(y=rows).load(), valid.isel(y=rows).load()
            return vals, ok, [pool.submit(detect_tile, vals.isel(x=cols), ok.isel(x=cols), bits=bits, lo=lo,
                                          hi=hi, lam=lam, k=k) for cols in columns]

        # the next row is read and queued while this one is solved: with one tile a row (a narrow
        # cube) the workers still have a tile each; blending keeps the tiles' order
        pool = ThreadPoolExecutor(workers, thread_name_prefix="anomaly-tile")
        try:
            with threadpool_limits(limits=1):  # per tile, whatever the workers: the same rounding
                ahead = solve(starts_y[first]) if first < len(starts_y) else None
                for i in range(first, len(starts_y)):
                    r0 = starts_y[i]
                    assert ahead is not None  # queued for row i by the row before (or above)
                    vals, ok, solving = ahead
                    if i + 1 < len(starts_y):
                        ahead = solve(starts_y[i + 1])
                    for cols, future in zip(columns, solving, strict=True):
                        part, stats = future.result()
                        bg = part["background"].values
                        has_bg = np.isfinite(bg).all(axis=0)  # a tile with no observation has none
                        score_sum[:, :, cols] += part["score"].values * weight
                        bg_sum[:, :, cols] += np.where(has_bg, bg, 0.0) * weight
                        bg_w[:, cols] += has_bg * weight
                        w_sum[:, cols] += weight
                        if "threshold" in stats:
                            thr_sum[:, cols] += stats["threshold"] * weight
                            thr_w[:, cols] += weight
                        iterations = max(iterations, stats["iterations"])
                        unconverged += not stats["converged"]
                        tiles += 1
                        bar.update()
                    # rows no later tile touches are final: written, and the rest moved up for the next row
                    done = (int(starts_y[i + 1]) if i + 1 < len(starts_y) else ny) - int(r0)
                    seen = ok.values[:, :done] & np.isfinite(vals.values[:, :done])  # (time, done, x)
                    with np.errstate(invalid="ignore", divide="ignore"):
                        score = np.where(seen, score_sum[:, :done] / w_sum[:done], np.nan)
                        background = np.where(bg_w[:done] > 0, bg_sum[:, :done] / bg_w[:done], np.nan)
                        threshold = np.where(thr_w[:done] > 0, thr_sum[:done] / thr_w[:done], np.inf)
                        flag = score > threshold  # false where not seen (NaN)
                    out_rows = slice(int(r0), int(r0) + done)
                    zarr_array(group, "score")[:, out_rows] = score.astype(np.float32)
                    zarr_array(group, "flag")[:, out_rows] = flag
                    zarr_array(group, "background")[:, out_rows] = background.astype(np.float32)
                    flagged += int(flag.sum())
                    for arr in (score_sum, bg_sum):
                        arr[:, :th - done] = arr[:, done:]
                        arr[:, th - done:] = 0
                    for acc in (w_sum, bg_w, thr_sum, thr_w):
                        acc[:th - done] = acc[done:]
                        acc[th - done:] = 0
                    pending = th - done
                    _save_progress(work, key=key, next_row=i + 1, flagged=flagged, iterations=iterations,
                                   unconverged=unconverged, tiles=tiles, pending=pending,
                                   score_sum=score_sum[:, :pending], bg_sum=bg_sum[:, :pending],
                                   w_sum=w_sum[:pending], bg_w=bg_w[:pending], thr_sum=thr_sum[:pending],
                                   thr_w=thr_w[:pending])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
        (work / PROGRESS_FILE).unlink()
    manifest = Manifest(
        stage=STAGE,
        key=key,
        params=params,
        inputs={"cube": fingerprint(cube)},
        code_version=code_version(*CODE_MODULES),
        outputs={
            "path": str(out),
            "cube": str(cube),
            "band": band,
            "shape": {"time": ds.sizes["time"], "y": ny, "x": nx},
            "quantizer": {"bits": bits, "lo": lo, "hi": hi},
        },
        stats={
            "flagged": flagged,
            "tiles": tiles,
            "max_iterations": iterations,
            "unconverged_tiles": unconverged,
            "resumed_tiles": resumed,
            "seconds": round(_time.perf_counter() - started, 3),
        },
    )
    write_manifest(out, manifest)
    log.info("anomalies: wrote %s (%d flagged, %d tiles)", out, flagged, tiles)
    return manifest


def anomalies_png(anomalies: str | Path, out_png: str | Path) -> Path:
    """Quick-look: where and when. Left, the largest score per pixel over time with the pixels
    flagged on any date outlined in cyan (an outline, not a tint: with many flags a tint hid the
    scores); right, the flags per date beside the share of pixels observed (a date standing out is
    often a bad scene, e.g. cloud left in a composite, rather than events)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.quicklook import percent, save_figure

    ds = xr.open_zarr(anomalies, consolidated=None)
    score, flagged, per_date, observed = (np.asarray(a) for a in dask.compute(  # one read of the store
        ds["score"].max("time"), ds["flag"].any("time"), ds["flag"].sum(["y", "x"]),
        ds["score"].notnull().sum(["y", "x"])))  # the score is NaN where unobserved
    share = np.where(observed > 0, per_date / np.maximum(observed, 1), 0.0)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), dpi=100, layout="constrained",
                                 gridspec_kw={"width_ratios": [1.1, 1]})
    im = ax.imshow(score, cmap="magma", interpolation="nearest")
    if flagged.any() and min(flagged.shape) > 1:
        ax.contour(flagged.astype(float), levels=[0.5], colors="cyan", linewidths=0.7)
    units = ds["score"].attrs.get("units", "")
    fig.colorbar(im, ax=ax, shrink=0.8, label="largest |S|" + (f" ({units})" if units else " (the band's units)"))
    ax.set_title(f"largest |S| per pixel; cyan outline: flagged on some date ({percent(flagged.mean())})", fontsize=9)
    ax.set_axis_off()
    dates = [str(t)[:10] for t in ds["time"].values]
    bx.bar(range(len(dates)), per_date, color="tab:cyan", label="flags")
    step = max(1, len(dates) // 12)
    bx.set_xticks(range(0, len(dates), step), dates[::step], rotation=60, ha="right", fontsize=7)
    bx.set_ylabel("flagged pixels")
    cx = bx.twinx()  # a date with few flags may have had few pixels to flag
    cx.plot(range(len(dates)), 100 * observed / max(score.size, 1), color="0.4", lw=1, marker=".", label="observed")
    cx.set_ylim(0, 105)
    cx.set_ylabel("observed, % of pixels", color="0.4")
    top = int(np.argmax(per_date))
    bx.set_title(f"{int(per_date.sum())} flags over {len(dates)} dates; most on {dates[top]} ({int(per_date[top])}, "
                 f"{percent(share[top])} of its observed pixels)" if per_date.any() else "no flags", fontsize=9)
    manifest = read_manifest(anomalies)
    made = manifest.outputs if manifest is not None else {}
    source = f" of {Path(str(made['cube'])).name}, band {made.get('band')}" if made.get("cube") else ""
    fig.suptitle(f"anomalies{source} ({Path(anomalies).name})", fontsize=10)
    out_png = Path(out_png)
    return save_figure(fig, out_png)


# --- Prefect task -------------------------------------------------------------------------------


@task(name="anomalies", retries=1, retry_delay_seconds=10, cache_policy=NONE)
@reports_warnings
def anomalies_task(
    cube: str,
    out: str,
    *,
    bits: int = 8,
    band: str | None = None,
    lam: float | None = None,
    tile: int = 64,
    k: float = FLAG_K,
    overwrite: bool = False,
    top: int = 20,
) -> dict[str, Any]:
    """Prefect task: ``detect_anomalies`` on paths, then a table artifact of the ``top`` strongest
    anomalies (date, x, y, magnitude) and a quick-look PNG (beside ``out``) as an image artifact.

    The manifest beside ``out`` is the cache (no Prefect result caching).
    """
    from prefect.artifacts import create_table_artifact

    from tasks.quicklook import (
        is_current,
        made_in_task_run,
        product_key,
        publish_image,
        quicklook_path,
    )

    logger = get_run_logger()
    try:
        manifest = detect_anomalies(cube, out, bits=bits, band=band, lam=lam, tile=tile, k=k,
                                    overwrite=overwrite)
    except NotEnoughData as exc:  # a young cube: the pipeline goes on and the stage runs later
        logger.warning("anomalies %s: waiting for data: %s", out, exc)
        return {"artifact": None, "waiting": str(exc)}
    ds = xr.open_zarr(out, consolidated=None)
    rows = strongest_anomalies(ds, top, observed_band(cube, manifest.outputs["band"])) or [
        {"date": "-", "x": "", "y": "", "magnitude": 0.0, "score": 0.0}]
    create_table_artifact(
        table=rows, key=product_key("anomalies", cube, out),
        description=f"strongest anomalies in {out}: magnitude = observed - background, in the units of "
                    f"band {manifest.outputs['band']} of {cube}; score = the shift pooled with the 3 x 3 x 3 neighbourhood",
    )
    png = quicklook_path(out)
    if not is_current(png, out):
        anomalies_png(out, png)
    publish_image(png, key=product_key("anomalies-png", cube, out), description=f"largest anomaly score per pixel ({png})",
                  fresh=made_in_task_run(manifest))
    logger.info("anomalies %s: key %s, %s flagged", out, manifest.key, manifest.stats.get("flagged"))
    return {"artifact": str(out), "quicklook": str(png), **asdict(manifest)}


def observed_band(cube: str | Path, band: str) -> xr.DataArray:
    """The cube's ``band`` as ``(time, y, x)`` (lazy: the table reads a few entries)."""
    return open_cube(cube)["data"].sel(band=band)


# --- CLI ----------------------------------------------------------------------------------------


def _cmd(args: argparse.Namespace) -> int:
    from tasks.info import describe
    from tasks.quicklook import quicklook_path

    manifest = detect_anomalies(args.cube, args.out, bits=args.bits, band=args.band, lam=args.lam,
                                tile=args.tile, k=args.k, overwrite=args.overwrite, progress=True,
                                workers=args.workers)
    png = anomalies_png(args.out, quicklook_path(args.out))
    s, q = manifest.stats, manifest.outputs["quantizer"]
    capped = (f"; {s['unconverged_tiles']} of the {s['tiles']} tiles stopped at the iteration cap (their "
              "background is the last iterate)" if s.get("unconverged_tiles") else "")
    taken = s.get("resumed_tiles", 0)
    solved = f"{s['tiles'] - taken} of {s['tiles']} tiles (the rest from a stopped run)" if taken else f"{s['tiles']} tiles"
    print("\n".join(describe(args.out)))
    print(f"  run: {q['bits']}-bit quantizer over {q['lo']:.6g} .. {q['hi']:.6g}; "
          f"{solved} in {s['seconds']:.1f} s{capped}")
    print(f"quick-look: {png}")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``anomalies`` on the ``fusioncube stage`` sub-parsers:
    ``fusioncube stage anomalies --cube IN.zarr --out OUT.zarr --bits B``."""
    p = subparsers.add_parser("anomalies", help="cube -> anomalies.zarr by quantized tensor robust PCA")
    p.add_argument("--cube", required=True, help="a schema-following cube (.zarr)")
    p.add_argument("--out", required=True, help="anomalies store to write (.zarr)")
    p.add_argument("--bits", type=int, default=8, help="quantizer bits (default 8)")
    p.add_argument("--band", default=None, help="band name (default: the first)")
    p.add_argument("--lam", type=float, default=None, help="sparsity weight (default 1/sqrt(max(n1,n2) n3))")
    p.add_argument("--tile", type=int, default=64, help="tile side in pixels (default 64)")
    p.add_argument("--k", type=float, default=FLAG_K,
                   help=f"flag threshold in robust standard deviations of the score (default {FLAG_K:g}, chosen on "
                        "the synthetic LST of the sample area; raise it where too much is flagged)")
    p.add_argument("--workers", type=int, default=None,
                   help="tiles solved at once (default: the cores this process may use)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd)
    return p
