"""The gap-filling stage: cube.zarr (or patches.zarr) -> filled.zarr with LRTC-Net, fitted on the input.

Any schema-following cube works (``data(time, band, y, x)`` float with NaN where missing,
``valid(time, y, x)``): the stage has no ground truth, so it trains self-supervised. It cuts the
cube into patches (all dates and bands x ``patch x patch`` pixels), hides a share of the observed
pixels under cloud-shaped masks, trains LRTC-Net (``fusion_models.lrtcnet``) to restore them, then
fills the real gaps, i.e. every ``(time, y, x)`` that is not valid or has a NaN band. A
``patches.zarr`` written by ``tasks.patch.make_patches`` is accepted too: the stage trains on and
fills the store's own patches and folds them back into the cube grid (``tasks.patch.unpatch``),
averaging overlaps.

The net is the deck's LRTC-Net plus our additions (``OURS``): the start from per-pixel linear
temporal interpolation, factors from the HOSVD of that start, learned per-layer steps, a
residual refiner that spreads each date's low-rank misfit into its gaps (this is what fills the
end of a series, where interpolation can only hold the last value) and a stacking head that adds
temporal and spatial spreads of that misfit with weights solved by least squares on hidden
observed entries, per cloud-cover class of a date image.

``filled.zarr`` has the cube's schema: ``data`` filled, ``valid`` unchanged, every other variable
copied, plus ``filled(time, y, x)`` bool marking what was filled. Filled values stay inside each
band's observed range over the cube (:func:`within`): the net extrapolated NDVI above 1 on the real
MODIS fixture, a value no date ever showed. Pixels observed on no date at
all (outside every scene's footprint) stay NaN unless ``fill_unseen``. The trained weights are a
``torch.save`` state dict beside it (``filled.zarr.lrtcnet.pt``; :func:`load_model` reads it with
``weights_only=True``), and its manifest carries the key (input fingerprint + parameters + code).

Memory is bounded, not the cube's size: the band statistics are streamed (dask), the net is
trained on at most ``TRAIN_PATCHES`` patches (and ``TRAIN_BYTES``) drawn evenly over the cube
(every patch when they fit), and the cube is filled and written block by block of rows (all
dates, bands and columns; a quarter of ``BLOCK_BYTES`` of input rows, whose half-overlapping
patches are blended with weights that fade to their borders, so the patch grid leaves no seams).
A ``patches.zarr`` input is held in memory whole.
"""

from __future__ import annotations

import argparse
import functools
import logging
import time as _time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from fusion_models.device import DEVICE_HELP, resolve_device
from fusion_models.lrtcnet import LRTCNet
from fusion_models.lrtcnet_training import OURS, STACK_DRAWS, complete, fit_lrtcnet
from fusion_models.patching import blend_window, extract_patches, fold_patches, patch_origins
from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    fingerprint,
    product_attrs,
    product_checkpoint,
    reuse_or_refuse,
    save_checkpoint,
    stage_key,
    write_manifest,
)
from tasks.cube import (
    band_extent,
    band_stats,
    observed_mask,
    open_cube,
    patches_by_rows,
    read_rows,
    row_blocks,
    streamed_band_stats,
    unobserved_reason,
)
from tasks.patch import unpatch
from tasks.runlog import reports_warnings

__all__ = [
    "add_cli",
    "default_ranks",
    "gapfill_cube",
    "gapfill_key",
    "gapfill_task",
    "load_model",
    "quicklook_png",
    "weights_path",
    "within",
]

#: the product's attributes given its source's: ``checkpoint.product_attrs`` with the run's key and parameters
Stamp = Callable[..., dict[str, Any]]

log = logging.getLogger(__name__)

STAGE = "gapfill"
TRAIN_BYTES = 256 * 2**20  # training patches held in memory (float32 values) ...
TRAIN_PATCHES = 256  # ... and at most this many: the factors are shared, a sample teaches them
BLOCK_BYTES = 64 * 2**20  # input rows read, filled and written at once (peak memory is a few times this)
#: training activations allowed per step: measured about 1.2 kB per patch entry (20 layers, the
#: heads; a 300-date x 2-band cube of 32 px patches peaked at 1.96 / 3.43 GB with batches of 2 / 4),
#: so long series train with fewer patches a step instead of running out of memory
TRAIN_STEP_BYTES = 3 * 2**30
ACTIVATION_BYTES_PER_ENTRY = 1250
CODE_MODULES = ("tasks.gapfill",)  # and every project module it imports (checkpoint.code_modules)


# --- pure helpers -------------------------------------------------------------------------------


def default_ranks(shape: tuple[int, int, int, int], *, time_share: float = 0.1) -> tuple[int, ...]:
    """Ranks for ``(T, C, P, P)`` patches: ``time_share`` of the dates (at least 2, at most
    ``T``), all bands, full spatial rank (the temporal and spectral subspaces carry what is shared
    across patches)."""
    t, c, h, w = shape
    return (min(t, max(2, int(np.ceil(time_share * t)))), c, h, w)


def is_patches_store(path: str | Path) -> bool:
    """Whether ``path`` is a ``patches.zarr`` written by ``tasks.patch.make_patches``."""
    try:
        attrs = xr.open_zarr(path, consolidated=None).attrs
    except (OSError, ValueError, KeyError):
        return False
    return all(a in attrs for a in ("patch_size", "cube_shape", "GeoTransform"))


def weights_path(out: str | Path) -> Path:
    """``filled.zarr`` -> ``filled.zarr.lrtcnet.pt`` (the state dict beside the artifact)."""
    out = Path(out)
    return out.with_name(out.name + ".lrtcnet.pt")


def load_model(out: str | Path, *, device: torch.device | str | None = None) -> LRTCNet:
    """The LRTC-Net a finished ``filled.zarr`` was made with (``weights_only=True``), from its
    weights file alone; weights saved before it held the settings need the manifest."""
    state, meta, manifest = product_checkpoint(out, ".lrtcnet.pt", "lrtcnet", made_by="gapfill_cube",
                                               map_location=device or "cpu")
    if manifest is None:
        c = dict(meta["config"])
        net = LRTCNet(tuple(c.pop("sample")), ranks=tuple(c.pop("ranks")), layers=int(c.pop("layers")), **c)
    else:
        arch = dict(manifest.outputs.get("architecture", {}))
        net = LRTCNet(tuple(manifest.outputs["sample_shape"]), ranks=tuple(manifest.outputs["ranks"]),
                      layers=int(manifest.params["layers"]), **arch)
    net.load_state_dict(state)
    return net.eval()


# --- I/O ----------------------------------------------------------------------------------------


def gapfill_key(cube: str | Path, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The checkpoint key of gap-filling ``cube`` with ``params``: (key, inputs)."""
    inputs = {"cube": fingerprint(cube)}
    return stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES)), inputs


def acquisition_times(ds: xr.Dataset) -> np.ndarray | None:
    """The cube's dates for the net's interpolated start (weighted by acquisition time), or None
    (equally spaced) when the time coordinate is not a strictly increasing series of dates."""
    t = ds["time"].values if "time" in ds.coords else None
    if t is None or t.dtype.kind != "M" or not np.all(np.diff(t) > np.timedelta64(0, "s")):
        return None
    return t


def _fit(xp: np.ndarray, op: np.ndarray, shape: tuple[int, int, int, int], kw: dict[str, Any],
         progress: bool = False) -> tuple[Any, tuple[int, ...]]:
    """Fit LRTC-Net (ours) self-supervised on patches ``xp (P, T, C, s, s)``, ``op (P, T, s, s)``,
    with a progress bar over the epochs when ``progress``."""
    from tqdm.auto import tqdm

    kw = dict(kw)
    ranks = default_ranks(shape, time_share=kw.pop("time_share"))
    fits = max(1, TRAIN_STEP_BYTES // (int(np.prod(shape)) * ACTIVATION_BYTES_PER_ENTRY))
    if fits < kw["batch"]:
        log.info("gapfill: patches of %s entries; training %d a step instead of %d (memory)", shape, fits, kw["batch"])
        kw["batch"] = fits
    batches = -(-len(xp) // kw["batch"])
    steps = kw["epochs"] * batches * kw.get("steps_per_epoch", 1)
    draws = kw.get("stack_draws", STACK_DRAWS)
    bars = [tqdm(total=steps, desc=f"gapfill: train on {len(xp)} patches, {kw['epochs']} epoch(s)", unit="step",
                 disable=not progress)]

    def stack_batch() -> None:  # the stacking head's fit follows the epochs: its own bar
        if len(bars) == 1:
            bars[0].close()
            bars.append(tqdm(total=draws * batches, unit="batch", disable=not progress,
                             desc=f"gapfill: fit the stacking head, {draws} draws of hidden masks"))
        bars[-1].update()

    try:
        fit = fit_lrtcnet(xp, op, ranks=ranks, hide_kind="cloud", on_step=bars[0].update,
                          on_stack_batch=stack_batch, **kw, **OURS)
    finally:
        for bar in bars:
            bar.close()
    return fit, ranks


def _write_filled(ds: xr.Dataset, result: np.ndarray, filled: np.ndarray, tmp: Path, stamp: Stamp) -> None:
    """``filled.zarr`` from an in-memory result: the cube's variables, ``data`` replaced."""
    n_time, n_band, height, width = result.shape
    out_ds = xr.Dataset(
        {
            "data": (ds["data"].dims, result, filled_data_attrs(ds)),
            "valid": (ds["valid"].dims, ds["valid"].values.astype(bool), dict(ds["valid"].attrs)),
            "filled": (("time", "y", "x"), filled, FILLED_ATTRS),
        },
        coords={name: coord.load() for name, coord in ds.coords.items()},
        attrs=stamp(inherit=ds.attrs),
    )
    for name in ds.data_vars:
        if name not in out_ds:
            out_ds[name] = ds[name].load()
    out_ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True,
                   encoding=_encoding(ds, n_time, n_band, min(height, 256), min(width, 256)))


FILLED_ATTRS = {"long_name": "gap filled by LRTC-Net", "grid_mapping": "spatial_ref"}


def filled_data_attrs(ds: xr.Dataset) -> dict[str, Any]:
    """``data``'s attributes in ``filled.zarr``: the cube's, saying that gaps hold filled values."""
    return {**ds["data"].attrs, "long_name": "observed values, gaps filled by LRTC-Net (where 'filled' is true)"}


def _encoding(ds: xr.Dataset, n_time: int, n_band: int, chunk_y: int, chunk_x: int) -> dict[str, Any]:
    chunks = {"time": min(n_time, 16), "band": n_band, "y": chunk_y, "x": chunk_x}
    return {
        "data": {"chunks": tuple(chunks[str(d)] for d in ds["data"].dims)},
        "valid": {"chunks": (chunks["time"], chunks["y"], chunks["x"])},
        "filled": {"chunks": (chunks["time"], chunks["y"], chunks["x"])},
    }


def within(values: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Filled ``(T, C, H, W)`` values kept inside each band's observed range ``extent (2, C)``: a
    value no date of the cube ever showed (NDVI above 1, a negative reflectance) is the network's
    extrapolation, not a measurement. A band never observed is left as it is."""
    lo, hi = extent.reshape(2, 1, -1, 1, 1)
    return np.clip(values, np.where(np.isnan(lo), -np.inf, lo), np.where(np.isnan(hi), np.inf, hi))


def _fill_patches_store(cube: Path, out: Path, stamp: Stamp, kw: dict[str, Any], fill_unseen: bool,
                        progress: bool = False) -> tuple[Any, tuple[int, ...], tuple[int, ...], int, dict[str, int]]:
    """Train on and fill a ``patches.zarr``'s own patches, fold them back (in memory)."""
    ds = unpatch(cube)
    data = ds["data"].values.astype(np.float32)  # (T, C, H, W)
    observed = observed_mask(data, ds["valid"].values.astype(bool))
    if not observed.any():
        raise ValueError(f"{cube}: no observed pixel, nothing to learn from: {unobserved_reason(ds['data'], ds['valid'])}")
    mean, std = band_stats(data, observed)
    extent = band_extent(data, observed)
    pds = xr.open_zarr(cube, consolidated=None)
    size = int(pds.attrs["patch_size"])
    origins = np.stack([pds["row0"].values, pds["col0"].values], axis=1).astype(np.int64)
    raw = pds["data"].values.astype(np.float32)  # (P, T, C, size, size)
    op = observed_mask(raw.reshape(-1, *raw.shape[2:]), pds["valid"].values.reshape(-1, size, size))
    op = op.reshape(raw.shape[0], raw.shape[1], size, size)
    xp = np.where(op[:, :, None], (raw - mean) / std, 0.0).astype(np.float32)
    shape = (data.shape[0], data.shape[1], size, size)
    kw = {**kw, "times": acquisition_times(ds)}
    fit, ranks = _fit(xp, op, shape, kw, progress)
    filled_p = complete(fit.net, xp, op, batch=kw["batch"], init=OURS["init"], times=kw["times"])
    folded = within(fold_patches(filled_p, origins, data.shape) * std + mean, extent)  # (T, C, H, W)
    # cast: numpy types any(axis=...) as bool | array; over the dates of (T, H, W) it is (H, W)
    unseen = cast(np.ndarray, ~observed.any(axis=0))
    filled = ~observed if fill_unseen else ~observed & ~unseen[None]
    result = np.where(observed[:, None], data, np.where(filled[:, None], folded, np.nan)).astype(np.float32)
    with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
        _write_filled(ds, result, filled, tmp, stamp)
    counts = {"filled": int(filled.sum()), "entries": int(filled.size), "unseen": int(unseen.sum()),
              "training_patches": len(origins)}
    return fit, ranks, shape, len(origins), counts


def _fill_cube(cube: Path, out: Path, stamp: Stamp, kw: dict[str, Any], fill_unseen: bool, patch: int,
               progress: bool = False) -> tuple[Any, tuple[int, ...], tuple[int, ...], int, dict[str, int]]:
    """Fill a cube with bounded memory: streamed statistics, a training sample of patches, and
    filling and writing block by block (rows of patches, all columns; see the module doc)."""
    import dask.array as dsa
    from tqdm.auto import tqdm

    ds = open_cube(cube)
    n_time, n_band, height, width = (ds.sizes["time"], ds.sizes["band"], ds.sizes["y"], ds.sizes["x"])
    title = f"gapfill {Path(cube).name}"
    mean, std, seen, extent = streamed_band_stats(ds, progress=f"{title}: band statistics" if progress else None)
    if not seen.any():
        raise ValueError(f"{cube}: no observed pixel, nothing to learn from: {unobserved_reason(ds['data'], ds['valid'])}")
    size = min(patch, height, width)
    if size < patch:
        log.warning("gapfill: cube is %d x %d px; patches of %d px instead of %d", height, width, size, patch)
    origins = patch_origins(height, width, size=size, stride=size)
    shape = (n_time, n_band, size, size)

    def standardised(data: np.ndarray, observed: np.ndarray) -> np.ndarray:
        return np.where(observed[:, None], (data - mean) / std, 0.0).astype(np.float32)

    # training sample: every patch when they fit in TRAIN_BYTES, else an even random draw
    per_patch = 4 * n_time * n_band * size * size
    n_train = min(len(origins), TRAIN_PATCHES, max(1, TRAIN_BYTES // per_patch))
    rng = np.random.default_rng(kw["seed"])
    pick = np.sort(rng.choice(len(origins), n_train, replace=False)) if n_train < len(origins) else np.arange(len(origins))
    def training_rows(y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
        data, _, observed = read_rows(ds, y0, y1)
        return standardised(data, observed), observed

    xp, op = patches_by_rows(origins[pick], size, training_rows,
                             progress=f"{title}: read {n_train} of {len(origins)} patches to train on" if progress else None)
    kw = {**kw, "times": acquisition_times(ds)}
    fit, ranks = _fit(xp, op, shape, kw, progress)
    del xp, op

    # fill and write block by block of output rows: every half-overlapping patch that touches a
    # block is completed and the patches are blended with weights that fade to their borders
    # (blend_window), so the patch grid does not show as seams in the filled values
    fill_origins = patch_origins(height, width, size=size, stride=max(size // 2, 1))
    blend = blend_window(size)
    per_row = 4 * n_time * n_band * size * width  # one row of patches, read once
    step = size * max(1, BLOCK_BYTES // (4 * per_row))  # output rows a block; its patches overlap 4-fold
    chunk_y = min(height, step)
    template = xr.Dataset(
        {
            "data": (ds["data"].dims, dsa.zeros(ds["data"].shape, dtype=np.float32, chunks=-1),
                     filled_data_attrs(ds)),
            "valid": (ds["valid"].dims, dsa.zeros(ds["valid"].shape, dtype=bool, chunks=-1),
                      dict(ds["valid"].attrs)),
            "filled": (("time", "y", "x"), dsa.zeros((n_time, height, width), dtype=bool, chunks=-1),
                       FILLED_ATTRS),
        },
        coords={name: coord.load() for name, coord in ds.coords.items()},
        attrs=stamp(inherit=ds.attrs),
    )
    static = [n for n in ds.data_vars if n not in template]
    for name in static:  # other layers: copied block by block too when they have y, else at once
        var = ds[name]
        template[name] = var.copy(data=dsa.zeros(var.shape, dtype=var.dtype, chunks=-1)) if "y" in var.dims else var.load()
    counts = {"filled": 0, "entries": n_time * height * width, "unseen": int((~seen).sum()),
              "training_patches": int(n_train)}
    with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
        template.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, compute=False,
                         encoding=_encoding(ds, n_time, n_band, chunk_y, min(width, 256)))
        blocks = row_blocks(fill_origins, size, height, step)
        with tqdm(total=sum(len(mine) for _, _, mine in blocks), desc=f"{title}: fill half-overlapping patches",
                  unit="patch", disable=not progress) as bar:
            for a, b, mine in blocks:
                r0, r1 = int(mine[:, 0].min()), int(mine[:, 0].max()) + size
                data, valid, observed = read_rows(ds, r0, r1)
                local = mine - [r0, 0]
                xb = extract_patches(standardised(data, observed), local, size)
                ob = extract_patches(observed, local, size)
                filled_p = complete(fit.net, xb, ob, batch=kw["batch"], init=OURS["init"], times=kw["times"],
                                    on_batch=bar.update)
                del xb, ob
                folded = within(fold_patches(filled_p, local, data.shape, weights=blend) * std + mean, extent)
                rows = slice(a - r0, b - r0)
                data, valid, observed, folded = data[..., rows, :], valid[:, rows], observed[:, rows], folded[..., rows, :]
                filled = ~observed if fill_unseen else ~observed & seen[a:b][None]  # never seen: left NaN
                result = np.where(observed[:, None], data, np.where(filled[:, None], folded, np.nan))
                block = xr.Dataset(
                    {"data": (ds["data"].dims, result.astype(np.float32)),
                     "valid": (ds["valid"].dims, valid),
                     "filled": (("time", "y", "x"), filled)},
                )
                for name in static:
                    if "y" in ds[name].dims:
                        block[name] = ds[name].isel(y=slice(a, b)).load().variable
                _write_region(block, tmp, a, b)
                counts["filled"] += int(filled.sum())
    return fit, ranks, shape, len(origins), counts


def _write_region(block: xr.Dataset, store: Path, y0: int, y1: int) -> None:
    """Write ``block`` (variables over rows ``y0:y1``) into the rows ``y0:y1`` of ``store``."""
    region = {str(d): (slice(y0, y1) if d == "y" else slice(None)) for d in block.dims}
    block.to_zarr(store, region=region, zarr_format=3, consolidated=False)


def gapfill_cube(
    cube: str | Path,
    out: str | Path,
    *,
    epochs: int = 15,
    layers: int = 20,
    patch: int = 32,
    time_share: float = 0.1,
    hide_share: float = 0.3,
    lr: float = 3e-3,
    batch: int = 8,
    seed: int = 0,
    device: str | None = None,
    fill_unseen: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Fill a cube's gaps with LRTC-Net trained self-supervised on the cube itself.

    Parameters
    ----------
    cube
        A schema-following cube store (``tasks.cube``) or a ``patches.zarr`` (``tasks.patch``).
    out
        Where ``filled.zarr`` goes; manifest and weights beside it.
    epochs, layers, lr, batch
        Training passes over the patches, LRTC-Net layers, Adam's learning rate, patches per step.
    patch
        Patch side in pixels (shrunk to the cube's smaller side when larger).
    time_share
        Temporal rank as a share of the dates (see :func:`default_ranks`).
    hide_share
        Mean share of observed pixels hidden per date while training.
    seed
        Seeds the masks, batches and initial factors.
    device
        ``"cuda"``/``"cpu"``; default: a GPU when present. Not part of the key.
    fill_unseen
        Also fill the pixels observed on no date at all (outside every scene's footprint: the
        network can only guess them from their neighbours); default False: they stay NaN, not
        ``filled``, and are counted in the manifest (``unseen_pixels``).
    overwrite
        Replace an ``out`` made with another key. A finished ``out`` with this key is reused.
    progress
        Show progress bars (statistics, reading, training, filling); the command line does.

    Returns
    -------
    Manifest
        ``outputs``: path, weights, ranks, filled share, unseen pixels; ``stats``: the self-supervised loss
        history (hidden-entry MSE, standardised units) and seconds.

    Raises
    ------
    ValueError
        For bad parameters (``CubeSchemaError`` when ``cube`` is not a cube).
    FileExistsError
        When ``out`` exists with another key and ``overwrite`` is False.
    """
    for name, value in (("epochs", epochs), ("layers", layers), ("patch", patch), ("batch", batch)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r} (pass e.g. 10)")
    if not 0 < hide_share < 1 or not 0 < time_share <= 1:
        raise ValueError(
            f"hide_share must be in (0, 1) and time_share in (0, 1]; got hide_share={hide_share}, "
            f"time_share={time_share} (defaults 0.3 and 0.1)"
        )
    cube, out = Path(cube), Path(out)
    params = {"epochs": epochs, "layers": layers, "patch": patch, "time_share": time_share,
              "hide_share": hide_share, "lr": lr, "batch": batch, "seed": seed}
    if fill_unseen:  # only then, so that existing artifacts keep their keys
        params["fill_unseen"] = True
    key, inputs = gapfill_key(cube, params)
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite, inputs=[cube])
    if found is not None and weights_path(out).exists():
        return found

    started = _time.perf_counter()
    from_patches = is_patches_store(cube)
    dev = resolve_device(device)
    fit_kw = {"layers": layers, "epochs": epochs, "batch": batch, "lr": lr, "hide_share": hide_share,
              "seed": seed, "device": dev, "time_share": time_share}
    stamp = functools.partial(product_attrs, STAGE, key, params, code=code_version(*CODE_MODULES),
                              gapfill_method="LRTC-Net (self-supervised)", gapfill_key=key)
    if from_patches:
        fit, ranks, shape, n_patches, counts = _fill_patches_store(cube, out, stamp, fit_kw, fill_unseen, progress)
    else:
        fit, ranks, shape, n_patches, counts = _fill_cube(cube, out, stamp, fit_kw, fill_unseen, patch, progress)
    architecture = {k: OURS[k] for k in ("step_sizes", "refine", "stack")}
    wpath = save_checkpoint(weights_path(out), fit.net.state_dict(), kind="lrtcnet",  # rebuilt from the file alone
                            config={"sample": list(shape), "ranks": list(ranks), "layers": layers, **architecture})

    manifest = Manifest(
        stage=STAGE,
        key=key,
        params=params,
        inputs=inputs,
        code_version=code_version(*CODE_MODULES),
        outputs={
            "path": str(out),
            "cube": str(cube),
            "weights": str(wpath),
            "ranks": list(ranks),
            "architecture": architecture,
            "input_kind": "patches" if from_patches else "cube",
            "sample_shape": list(shape),
            "patches": n_patches,
            "filled_share": counts["filled"] / counts["entries"],
            "unseen_pixels": counts["unseen"],
            "training_patches": counts["training_patches"],
        },
        stats={
            "loss_history": [round(v, 6) for v in fit.history],
            "fit_seconds": round(fit.seconds, 3),
            "seconds": round(_time.perf_counter() - started, 3),
            "device": str(dev),
        },
    )
    write_manifest(out, manifest)
    log.info("gapfill: wrote %s (%.1f %% of pixels filled, %.1f s)", out,
             100 * manifest.outputs["filled_share"], manifest.stats["seconds"])
    return manifest


GAP_COLOUR = (1.0, 0.0, 1.0)  # magenta: in no true-colour scene and in no viridis shade


def quicklook_png(cube: str | Path, filled: str | Path, out_png: str | Path, *, dates: int = 4) -> Path:
    """Before / after PNG for the ``dates`` dates with the most gaps: true colour when the cube has
    red, green and blue bands, else its first band in viridis with a colour bar naming it. Gaps are
    magenta in the "before" row; the "after" row says how much of each date was filled. Only the
    chosen dates are read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tasks.quicklook import percent, rgb_bands, save_figure

    after = xr.open_zarr(filled, consolidated=None)
    # from a patches store the product holds what "before" shows (its valid layer is the input's,
    # the gaps are drawn as holes): no second fold of the store
    before = after if is_patches_store(cube) else open_cube(cube)
    filled_share = after["filled"].mean(("y", "x")).values
    picks = np.sort(np.argsort(-filled_share)[: min(dates, filled_share.size)])
    gaps = ~before["valid"].isel(time=picks).values
    bands = [str(b) for b in before["band"].values]
    rgb = rgb_bands(bands)
    shown = rgb or bands[:1]
    rows = {"before": before["data"].isel(time=picks).sel(band=shown).values,
            "after": after["data"].isel(time=picks).sel(band=shown).values}
    finite = rows["after"][np.isfinite(rows["after"])]
    lo, hi = (float(v) for v in np.percentile(finite, [2, 98])) if finite.size else (0.0, 1.0)
    height, width = gaps.shape[1:]
    panel = 2.6
    aspect = float(np.clip(height / max(width, 1), 0.25, 1.6))
    fig, axes = plt.subplots(2, len(picks), figsize=(panel * len(picks) + (0.0 if rgb else 0.9),
                                                     2 * panel * aspect + 1.1), squeeze=False)
    image = None
    for j, t in enumerate(picks):
        day = str(before["time"].values[t])[:10]
        for i, name in enumerate(("before", "after")):
            values = rows[name][j]
            hole = gaps[j] if name == "before" else ~np.isfinite(values).all(0)
            ax = axes[i, j]
            if rgb:
                img = np.clip((np.moveaxis(values, 0, -1) - lo) / max(hi - lo, 1e-12), 0, 1)
                img[hole] = GAP_COLOUR
                ax.imshow(img)
            else:
                cmap = matplotlib.colormaps["viridis"].with_extremes(bad=GAP_COLOUR)
                image = ax.imshow(np.ma.masked_where(hole, values[0]), cmap=cmap, vmin=lo, vmax=hi)
            title = f"{percent(gaps[j].mean())} gaps" if name == "before" else f"{percent(filled_share[t])} filled"
            ax.set_title(f"{name} {day}\n{title}", fontsize=8)
            ax.axis("off")
    what = "true colour (" + ", ".join(shown) + ")" if rgb else f"band {shown[0]}"
    fig.suptitle(f"gap filling of {Path(str(cube)).name}: {what}; magenta = not observed", fontsize=9)
    fig.tight_layout()
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=shown[0])
    out_png = Path(out_png)
    return save_figure(fig, out_png, dpi=100)


# --- CLI ----------------------------------------------------------------------------------------


def _cmd_gapfill(args: argparse.Namespace) -> int:
    import sys

    from tasks.info import describe

    manifest = gapfill_cube(args.cube, args.out, epochs=args.epochs, layers=args.layers,
                            patch=args.patch, batch=args.batch, seed=args.seed, fill_unseen=args.fill_unseen,
                            device=args.device, overwrite=args.overwrite, progress=True)
    o = manifest.outputs
    sys.stdout.write("\n".join([
        *describe(args.out),
        f"  LRTC-Net: ranks {o['ranks']}, fitted self-supervised on {o['training_patches']} patches; weights {o['weights']}",
        f"quick-look (before / after): {quicklook_png(args.cube, args.out, Path(str(args.out) + '.quicklook.png'))}",
    ]) + "\n")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stage gapfill --cube IN.zarr --out OUT.zarr [--epochs N] [--layers L]``."""
    p = subparsers.add_parser("gapfill", help="fill cloud gaps with LRTC-Net fitted on the cube itself")
    p.add_argument("--cube", required=True, help="a schema-following cube or a patches.zarr")
    p.add_argument("--out", required=True, help="filled.zarr to write")
    p.add_argument("--epochs", type=int, default=15, help="training passes (default 15)")
    p.add_argument("--layers", type=int, default=20, help="LRTC-Net layers (default 20)")
    p.add_argument("--patch", type=int, default=32, help="patch side in pixels (default 32)")
    p.add_argument("--batch", type=int, default=8,
                   help="training patches a step (default 8; fewer for long series, to fit in memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, metavar="DEV", help=DEVICE_HELP)
    p.add_argument("--fill-unseen", action="store_true",
                   help="also fill pixels observed on no date (outside every footprint; default: NaN)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_gapfill)
    return p


# --- Prefect task -------------------------------------------------------------------------------


@task(name="gapfill", retries=1, retry_delay_seconds=10, cache_policy=NONE)
@reports_warnings
def gapfill_task(
    cube: str,
    out: str,
    *,
    epochs: int = 15,
    layers: int = 20,
    patch: int = 32,
    batch: int = 8,
    seed: int = 0,
    overwrite: bool = False,
    quicklook: bool = True,
) -> dict[str, Any]:
    """Prefect task: ``gapfill_cube`` on paths, plus a before/after quick-look image artifact.

    No Prefect result caching: the manifest beside ``out`` is the cache.
    """
    from tasks.quicklook import (
        is_current,
        made_in_task_run,
        product_key,
        publish_image,
        quicklook_path,
    )

    logger = get_run_logger()
    manifest = gapfill_cube(cube, out, epochs=epochs, layers=layers, patch=patch, batch=batch, seed=seed,
                            overwrite=overwrite)
    result = {"artifact": str(out), **asdict(manifest)}
    if quicklook:
        png = quicklook_path(out)
        if not is_current(png, out):
            quicklook_png(cube, out, png)
        key = product_key("gapfill", cube, out)
        publish_image(png, key=key, description=f"gap filling of {cube}: before (top) / after (bottom)",
                      fresh=made_in_task_run(manifest))
        result["quicklook"] = str(png)
    logger.info("gapfill %s: key %s, %.1f %% filled", out, manifest.key,
                100 * manifest.outputs["filled_share"])
    return result
