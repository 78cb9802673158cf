"""The label-recovery stage: cube.zarr + sparse or coarse labels -> labels.zarr + a colour COG.

A UNet with a low-rank Tucker (LRTD) layer (``fusion_models.unet_lrtd``) is trained on the cube
itself, with cross-entropy on the labelled pixels only plus ``lambda/2 ||S - Shat||_F^2`` on every
pixel, and then predicts every pixel the cube observed on at least one date (valid with every band
finite; the ``seen`` map of :func:`tasks.cube.streamed_band_stats`, as gap filling decides what it
never saw): a pixel never observed (e.g. the empty edges left by warping a scene onto the grid) gets
no class (``NO_CLASS``) and NaN confidence, even where a label falls on it. Labels come from

- a label layer of the cube (e.g. ``landcover``, the 30 m NLCD nearest-resampled to the 3 m grid:
  the "coarse labels" setting; every pixel with a known class is a label), or
- a file of labelled points (:func:`read_points`): CSV with columns ``x, y`` in the cube's CRS
  or ``longitude, latitude`` in WGS 84, and ``class`` (or ``label``) holding codes or class
  names; or a GeoJSON FeatureCollection of Point features with a ``class`` property. Each point
  labels the pixel it falls in; points outside the grid are dropped and counted.

Input treatment: each band is standardised with the mean and standard deviation of its observed
values (valid and finite); pixels not observed become 0 and the per-date valid mask is an extra
channel (``fusion_models.unet_lrtd.stack_time``). The dates are stacked as channels.

``labels.zarr`` holds ``class(y, x)`` uint8 NLCD codes with ``flag_values``/``flag_meanings``
(255 = no class: pixels never observed), ``confidence(y, x)`` float32 (the winning class
probability, NaN where there is no class), the cube's
coordinates and ``spatial_ref``. Beside it: ``labels.zarr.tif`` (a Cloud-Optimized GeoTIFF with
the NLCD colour table), ``labels.zarr.unet.pt`` (the state dict; :func:`load_model` reads it with
``weights_only=True``) and the manifest.

Memory is bounded, not the cube's size: the band statistics are streamed (dask), the UNet trains
on at most ``TRAIN_PATCHES`` patches (those with labels first), and the prediction runs block by
block of rows (``BLOCK_BYTES`` of input); the label raster and the output maps ``(y, x)`` are held
whole.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time as _time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
import torch
import xarray as xr
from prefect import get_run_logger, task
from prefect.cache_policies import NONE
from tqdm.auto import tqdm

from fusion_models.device import DEVICE_HELP, resolve_device
from fusion_models.patching import blend_window, extract_patches, fold_patches, patch_origins
from fusion_models.unet_lrtd import IGNORE, UNetLRTD
from fusion_models.unet_lrtd_training import (
    class_weights,
    fit_unet_lrtd,
    fuse_prior,
    local_class_share,
    predict_proba,
)
from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    fingerprint,
    load_checkpoint,
    product_attrs,
    product_checkpoint,
    reuse_or_refuse,
    save_checkpoint,
    stage_key,
    write_manifest,
)
from tasks.class_maps import class_fill, class_resampling, raster_legend
from tasks.cube import (
    RASTER_SUFFIXES,
    band_stats,
    cube_crs,
    cube_transform,
    flag_meanings,
    observed_anywhere,
    observed_mask,
    open_cube,
    patches_by_rows,
    raster_window,
    read_rows,
    row_blocks,
    streamed_band_stats,
    training_mismatch,
    unobserved_reason,
)
from tasks.legends import NLCD_CLASSES
from tasks.quicklook import class_names, cog_path, colour_table
from tasks.runlog import reports_warnings

__all__ = [
    "NO_CLASS",
    "add_cli",
    "apply_model",
    "class_names",
    "check_byte_codes",
    "class_table",
    "codes_to_index",
    "cog_path",
    "colour_table",
    "labels_key",
    "labels_task",
    "load_model",
    "model_inputs",
    "patch_size_for",
    "points_in_crs",
    "points_to_raster",
    "quicklook_png",
    "raster_labels",
    "read_points",
    "recover_labels",
    "weights_path",
]

log = logging.getLogger(__name__)

STAGE = "labels"
CODE_MODULES = ("tasks.labels",)  # and every project module it imports (checkpoint.code_modules)
NO_CLASS = 255  # class(y, x) where there is no prediction (pixels never observed) / label raster nodata
CODES: tuple[int, ...] = tuple(NLCD_CLASSES)
TRAIN_PATCHES = 512  # patches held in memory for training (labelled ones first)
BLOCK_BYTES = 64 * 2**20  # input rows read at once to predict


def _training_patches(idx: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Origins ``(n, 2)`` of the non-overlapping patches to train on, in row-major order: every
    patch when there are at most ``TRAIN_PATCHES``, else the patches holding labels (a random
    draw of them when they are more) topped up with unlabelled ones (the low-rank term's pixels)."""
    origins = patch_origins(idx.shape[0], idx.shape[1], size=size, stride=size)
    if len(origins) <= TRAIN_PATCHES:
        return origins
    labelled = np.array([(idx[r:r + size, c:c + size] >= 0).any() for r, c in origins])
    rng = np.random.default_rng(seed)
    with_labels = rng.permutation(np.flatnonzero(labelled))[:TRAIN_PATCHES]
    rest = rng.permutation(np.flatnonzero(~labelled))[:TRAIN_PATCHES - len(with_labels)]
    log.info("labels: training on %d of %d patches (%d with labels)", len(with_labels) + len(rest),
             len(origins), int(labelled.sum()))
    return origins[np.sort(np.concatenate([with_labels, rest]))]


# --- pure helpers -------------------------------------------------------------------------------


def model_inputs(data: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T, C, H, W)`` cube values -> standardised values (NaN where not observed) and the
    ``(T, H, W)`` observed mask (valid and every band finite)."""
    observed = observed_mask(data, valid)
    if not observed.any():
        raise ValueError(f"the cube has no observed pixel, nothing to learn from: {unobserved_reason(data, valid)}")
    mean, std = band_stats(data, observed)
    x = np.where(observed[:, None], (data - mean) / std, np.nan).astype(np.float32)
    return x, observed


def codes_to_index(codes: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    """Class codes -> indices into ``classes``; codes not in ``classes`` -> ``IGNORE`` (-1)."""
    lut = np.full(256, IGNORE, dtype=np.int64)
    lut[list(classes)] = np.arange(len(classes))
    codes = np.asarray(codes)
    out = np.full(codes.shape, IGNORE, dtype=np.int64)
    ok = (codes >= 0) & (codes < 256)
    out[ok] = lut[codes[ok].astype(np.int64)]
    return out


def patch_size_for(height: int, width: int, patch: int, *, multiple: int = 4) -> int:
    """``patch`` shrunk to fit the cube, rounded down to a multiple of ``multiple`` (UNet pooling)."""
    size = min(patch, height, width) // multiple * multiple
    if size < multiple:
        raise ValueError(
            f"the cube ({height} x {width} px) is too small for the UNet: it needs at least "
            f"{multiple} x {multiple} px"
        )
    return size


X_COLUMNS = ("x", "lon", "longitude")  # first column found of each kind is used
Y_COLUMNS = ("y", "lat", "latitude")
CLASS_COLUMNS = ("class", "label", "class_name")
WGS84 = "EPSG:4326"


def _pick(columns: list[str], names: tuple[str, ...], what: str, path: Path) -> str:
    for name in names:
        if name in columns:
            return name
    raise ValueError(f"{path}: missing the {what} column, one of {list(names)} "
                     f"(columns present: {columns})")


def _name_key(name: str) -> str:
    """``"Barren Land (Rock/Sand/Clay)"``, ``"barren_land"`` -> ``"barren land"``: names compared
    case-, separator- and parenthesis-insensitively."""
    return " ".join(re.sub(r"\(.*?\)|[_\-/,]", " ", name).lower().split())


#: NLCD class names (and their short forms) -> codes, for labels files that name NLCD classes
NLCD_BY_NAME: dict[str, int] = {_name_key(n): c for c, n in NLCD_CLASSES.items()}


def _class_codes(values: pd.Series, path: Path) -> tuple[np.ndarray, dict[int, str]]:
    """Integer class codes as they are; class names (text) that are all NLCD class names -> their
    NLCD codes (the NLCD legend and colours follow); other names -> codes 1..K in sorted order."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().all():
        if not np.allclose(numeric, np.round(numeric)):
            raise ValueError(f"{path}: numeric class values must be integer codes; got "
                             f"{sorted(set(numeric[numeric != np.round(numeric)].tolist()))[:5]}")
        return numeric.to_numpy(np.int64), {}
    names = values.astype(str).str.strip()
    if (names == "").any() or values.isna().any():
        raise ValueError(f"{path}: {int((names == '').sum() + values.isna().sum())} point(s) have no class")
    unique = sorted(set(names))
    nlcd = {name: NLCD_BY_NAME.get(_name_key(name)) for name in unique}
    coded = sorted({n for n in unique if pd.notna(pd.to_numeric(n, errors="coerce"))})
    if coded:  # codes and names mixed: only NLCD names go with codes, read as NLCD codes
        named = [n for n in unique if n not in coded]
        unknown = [n for n in named if nlcd[n] is None]
        bad = [c for c in coded if float(c) not in NLCD_CLASSES]
        if unknown or bad:
            raise ValueError(f"{path}: the class column mixes codes ({coded[:3]}) and names ({named[:3]}); "
                             f"mixed, the codes must be NLCD codes and the names NLCD class names, but "
                             + (f"{unknown[:3]} are not NLCD names" if unknown else f"{bad[:3]} are not NLCD codes")
                             + "; use one kind for every point")
        nlcd.update({c: int(float(c)) for c in coded})
    if all(code is not None for code in nlcd.values()):
        return names.map(nlcd).to_numpy(np.int64), {}
    if len(unique) >= NO_CLASS:
        raise ValueError(f"{path}: at most {NO_CLASS - 1} class names are supported; got {len(unique)}")
    lut = {name: i + 1 for i, name in enumerate(unique)}
    return names.map(lut).to_numpy(np.int64), {code: name for name, code in lut.items()}


def read_points(path: str | Path) -> pd.DataFrame:
    """Labelled points as a DataFrame ``x, y, class`` (int codes).

    CSV, case-insensitive columns:

    - coordinates ``x, y`` in the cube's CRS, or ``lon``/``longitude`` and ``lat``/``latitude``
      in WGS 84 (as field-sample tables such as sits' ``samples_*.csv`` have them);
    - the class in ``class`` (or ``label``, ``class_name``): integer codes (NLCD codes, say) or
      class names (text): NLCD class names ("Deciduous Forest", "cultivated_crops", ...) become
      their NLCD codes; any other names are numbered 1..K in sorted order, the names kept for the
      legend. Codes and names mixed in one column must be NLCD codes and NLCD names.

    GeoJSON: a FeatureCollection of Point features with a ``class`` (or ``label``) property;
    coordinates in the CRS its legacy ``crs`` member names; without one in WGS 84 longitude /
    latitude as RFC 7946 has it (QGIS, geojson.io and geopandas write them so), unless some
    coordinate lies outside [-180, 180] x [-90, 90]: then they are the cube's CRS (older files
    written in a projected CRS without saying so).

    ``df.attrs`` records ``crs`` (the coordinates' CRS when it is not the cube's: ``EPSG:4326``
    for lon/lat) and ``class_names`` (``{code: name}`` for text classes).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such labels file")
    suffix = path.suffix.lower()
    crs: str | None = None
    if suffix in (".geojson", ".json"):
        doc = json.loads(path.read_text())
        crs = ((doc.get("crs") or {}).get("properties") or {}).get("name")
        rows = []
        for i, feat in enumerate(doc.get("features", [])):
            geom = feat.get("geometry") or {}
            props = feat.get("properties") or {}
            key = next((k for k in ("class", "label") if k in props), None)
            if geom.get("type") != "Point" or key is None:
                raise ValueError(
                    f"{path}: feature {i} must be a Point with a 'class' property; got geometry "
                    f"{geom.get('type')!r} and properties {sorted(props)}"
                )
            x, y = geom["coordinates"][:2]
            rows.append((float(x), float(y), props[key]))
        df = pd.DataFrame(rows, columns=["x", "y", "class"])
        if crs is None and len(df) and df["x"].abs().le(180).all() and df["y"].abs().le(90).all():
            crs = WGS84  # RFC 7946
    elif suffix == ".csv":
        df = pd.read_csv(path)
        df.columns = [str(c).strip().lower() for c in df.columns]
        columns = list(df.columns)
        xcol = _pick(columns, X_COLUMNS, "x / longitude", path)
        ycol = _pick(columns, Y_COLUMNS, "y / latitude", path)
        ccol = _pick(columns, CLASS_COLUMNS, "class", path)
        if (xcol == "x") != (ycol == "y"):
            raise ValueError(f"{path}: coordinates must be x, y (the cube's CRS) or longitude, "
                             f"latitude (WGS 84); got columns {xcol!r} and {ycol!r}")
        crs = None if xcol == "x" else WGS84
        df = df[[xcol, ycol, ccol]].set_axis(["x", "y", "class"], axis=1)
    else:
        raise ValueError(
            f"{path}: labels files must be .csv (x, y, class) or .geojson (Point features with a "
            f"'class' property); got {suffix!r}. For a GeoPackage, export it to GeoJSON first"
        )
    coords = df[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    if coords.isna().any().any():
        bad = int(coords.isna().any(axis=1).sum())
        raise ValueError(f"{path}: {bad} point(s) have a missing or non-numeric coordinate")
    codes, names = _class_codes(df["class"], path)
    out = pd.DataFrame({"x": coords["x"].astype(float), "y": coords["y"].astype(float), "class": codes})
    out.attrs = {"crs": crs, "class_names": names}
    return out


def points_in_crs(points: pd.DataFrame, crs: Any) -> pd.DataFrame:
    """``points`` with ``x, y`` moved from ``points.attrs['crs']`` (when set) into ``crs``."""
    src = points.attrs.get("crs")
    if not src:
        return points
    from rasterio.crs import CRS
    from rasterio.warp import transform

    if CRS.from_user_input(src) == CRS.from_user_input(crs):
        return points
    xs, ys = transform(CRS.from_user_input(src), CRS.from_user_input(crs),
                       points["x"].tolist(), points["y"].tolist())
    moved = points.assign(x=np.asarray(xs, dtype=float), y=np.asarray(ys, dtype=float))
    moved.attrs = {**points.attrs, "crs": None}
    return moved


def points_to_raster(points: pd.DataFrame, transform: Any, shape: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Burn points into a ``(H, W)`` uint8 code raster (``NO_CLASS`` elsewhere).

    Returns the raster and the number of points outside the grid (dropped). A later point in the
    same pixel wins.
    """
    inv = ~transform
    cols, rows = inv * (points["x"].to_numpy(), points["y"].to_numpy())
    rows = np.floor(rows).astype(np.int64)
    cols = np.floor(cols).astype(np.int64)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    codes = points["class"].to_numpy()
    bad = sorted(set(codes[(codes < 0) | (codes >= NO_CLASS)].tolist()))
    if bad:
        raise ValueError(f"class codes must be 0..254; got {bad[:5]}")
    out = np.full(shape, NO_CLASS, dtype=np.uint8)
    out[rows[inside], cols[inside]] = codes[inside]
    return out, int((~inside).sum())


def class_table(pred: np.ndarray, confidence: np.ndarray, labels: np.ndarray,
                names: dict[int, str]) -> list[dict[str, Any]]:
    """Per class: share of the map, mean confidence, labelled pixels and how many the map keeps,
    over the mapped pixels only (``pred != NO_CLASS``: a label on a pixel the map leaves without a
    class, one never observed, is not counted)."""
    rows = []
    mapped = pred != NO_CLASS
    labels = np.where(mapped, labels, NO_CLASS)
    total = max(int(mapped.sum()), 1)
    for code in sorted((set(np.unique(pred).tolist()) | set(np.unique(labels).tolist())) - {NO_CLASS}):
        mine = pred == code
        lab = labels == code
        rows.append({
            "code": int(code),
            "class": names.get(int(code), str(code)),
            "pixels": int(mine.sum()),
            "share": round(float(mine.sum() / total), 4),
            "mean_confidence": round(float(confidence[mine].mean()), 3) if mine.any() else None,
            "labelled_pixels": int(lab.sum()),
            "labels_kept": round(float((pred[lab] == code).mean()), 3) if lab.any() else None,
        })
    return rows


# --- I/O ----------------------------------------------------------------------------------------


def weights_path(out: str | Path) -> Path:
    """``labels.zarr`` -> ``labels.zarr.unet.pt`` (the state dict beside the artifact)."""
    out = Path(out)
    return out.with_name(out.name + ".unet.pt")


def _unet_from(config: dict[str, Any]) -> UNetLRTD:
    """The (untrained) network a saved ``config`` describes (``save_checkpoint(..., config=...)``)."""
    c = config
    return UNetLRTD(tuple(c["sample"]), int(c["classes"]), ranks=tuple(c["ranks"]), variant=c["variant"],
                    width=int(c["width"]), depth=int(c["depth"]))


def load_model(out: str | Path, *, device: torch.device | str | None = None) -> UNetLRTD:
    """The UNet + LRTD model a finished ``labels.zarr`` was made with (``weights_only=True``), from
    its weights file alone (``labels.zarr.unet.pt`` also holds the classes, bands and the band
    statistics the input is standardised with); weights saved before they did need the manifest."""
    state, meta, manifest = product_checkpoint(out, ".unet.pt", "unet_lrtd", made_by="recover_labels",
                                               map_location=device or "cpu")
    if manifest is None:
        net = _unet_from(meta["config"])
    else:
        o, p = manifest.outputs, manifest.params
        net = UNetLRTD(tuple(o["sample_shape"]), len(o["classes"]), ranks=tuple(o["ranks"]),
                       variant=p["variant"], width=p["width"], depth=p["depth"])
    net.load_state_dict(state)
    return net.eval()


def _label_raster(ds: xr.Dataset, labels: str | Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """(codes (H, W) uint8 with NO_CLASS where unlabelled, the layer's attrs, what the labels were)."""
    name = str(labels)
    if name in ds.data_vars:
        layer = ds[name]
        if tuple(layer.dims) != ("y", "x"):
            raise ValueError(f"label layer '{name}' must have dims (y, x); got {tuple(layer.dims)}")
        codes = np.asarray(layer.values)
        attrs: dict[str, Any] = dict(layer.attrs)
        unlabelled = ~np.isfinite(codes) if np.issubdtype(codes.dtype, np.floating) else np.zeros(codes.shape, bool)
        codes = np.where(unlabelled, NO_CLASS, codes)
        if "flag_values" in attrs:  # codes outside the legend (e.g. nodata 250) are not labels
            codes = np.where(np.isin(codes, list(attrs["flag_values"])), codes, NO_CLASS)
        if "nodata" in attrs:
            codes = np.where(codes == attrs["nodata"], NO_CLASS, codes)
        labelled = codes[codes != NO_CLASS]
        if labelled.size:
            check_byte_codes(labelled.min(), labelled.max(), f"label layer '{name}'")
        codes = codes.astype(np.uint8)
        return codes, attrs, {"kind": "layer", "layer": name}
    path = Path(labels)
    if path.exists() and path.suffix.lower() in RASTER_SUFFIXES:
        return raster_labels(ds, path)
    if not path.exists():
        layers = [v for v in ds.data_vars if tuple(ds[v].dims) == ("y", "x")]
        if path.suffix or len(path.parts) > 1:  # a file's name: the file is missing
            raise FileNotFoundError(f"{name}: no such labels file (labels are a file of points or a class "
                                    f"raster, or a (y, x) layer of the cube: {layers})")
        raise ValueError(
            f"labels must be a (y, x) layer of the cube (layers here: {layers}) or a file of labelled "
            f"points (.csv x, y, class or .geojson); got {name!r}, which is neither"
        )
    points = read_points(path)
    names = points.attrs.get("class_names") or {}
    points = points_in_crs(points, cube_crs(ds))
    codes, dropped = points_to_raster(points, cube_transform(ds), (ds.sizes["y"], ds.sizes["x"]))
    if dropped == len(points):
        from tasks.cube import crs_label

        t, (h, w) = cube_transform(ds), (ds.sizes["y"], ds.sizes["x"])
        xs, ys = points["x"].to_numpy(), points["y"].to_numpy()
        raise ValueError(
            f"{path}: none of its {len(points)} point(s) falls on the cube's grid: the points span x "
            f"{xs.min():.10g} .. {xs.max():.10g}, y {ys.min():.10g} .. {ys.max():.10g} in the cube's CRS "
            f"{crs_label(cube_crs(ds))}; the cube covers x {t.c:.10g} .. {t.c + w * t.a:.10g}, y "
            f"{t.f + h * t.e:.10g} .. {t.f:.10g}. Are the points for another area, or x and y swapped?")
    if dropped:
        log.warning("labels: %d of %d points fall outside the cube's grid and were dropped", dropped, len(points))
    attrs = {}
    if names:  # text classes: their names are the legend, colours from a qualitative palette
        from matplotlib import colormaps

        palette = colormaps["tab20"]
        order = sorted(names)
        attrs = {"flag_values": order,
                 "flag_meanings": flag_meanings(names[c] for c in order),
                 "flag_colors": ["#{:02x}{:02x}{:02x}".format(*(int(255 * v) for v in palette(i % 20)[:3]))
                                 for i in range(len(order))]}
    return codes, attrs, {"kind": "points", "file": str(path), "points": len(points), "dropped": dropped}


def check_byte_codes(low: float, high: float, what: str) -> None:
    """Refuse class codes a one-byte class map cannot hold (0..254; 255 is "no class")."""
    if low < 0 or high > NO_CLASS - 1:
        raise ValueError(f"{what} has class codes outside 0..{NO_CLASS - 1} ({low:g}..{high:g}); the class "
                         "map is one byte a pixel: recode it to 1..K (keep the legend in flag_values / "
                         "flag_meanings)")


def raster_labels(ds: xr.Dataset, path: Path) -> tuple[np.ndarray, dict[str, Any], dict[str, Any]]:
    """A class raster file (a land cover map in any CRS) warped onto the cube's grid by majority:
    (codes (H, W) uint8, NO_CLASS where the map has no class, its attrs, what the labels were)."""
    import rasterio
    from rasterio.transform import array_bounds
    from rasterio.warp import reproject

    shape, transform, crs = (ds.sizes["y"], ds.sizes["x"]), cube_transform(ds), cube_crs(ds)
    no_class = f"{path}: the label raster holds no class over the cube's area (does it cover the cube, in {crs}?)"
    with rasterio.open(path) as src:
        if src.crs is None:
            raise ValueError(f"{path}: the label raster has no CRS; it cannot be placed on the cube's grid")
        if src.dtypes[0] not in ("uint8", "uint16", "int8", "int16", "int32", "uint32"):
            raise ValueError(f"{path}: a label raster holds integer class codes; got {src.dtypes[0]}")
        legend = raster_legend(src)
        win = raster_window(src.transform, src.shape, src.crs, array_bounds(*shape, transform), crs, pad=2)
        if win is None:
            raise ValueError(no_class)
        source, src_transform = src.read(1, window=win), src.window_transform(win)  # only over the cube
        # its nodata, else a code it does not use: outside its footprint no class is made up
        nodata = class_fill(source, src.nodata)
        codes = np.full(shape, nodata, dtype=src.dtypes[0])
        reproject(source, codes, src_transform=src_transform, src_crs=src.crs, src_nodata=src.nodata,
                  dst_transform=transform, dst_crs=crs, dst_nodata=nodata,
                  resampling=class_resampling(None, src_transform, src.crs, transform, crs, shape))
    codes = np.where(codes == nodata, NO_CLASS, codes.astype(np.int64))
    labelled = codes[codes != NO_CLASS]
    if not labelled.size:
        raise ValueError(no_class)
    check_byte_codes(labelled.min(), labelled.max(), f"{path}: the label raster")
    attrs = {"nodata": NO_CLASS, **legend}
    return codes.astype(np.uint8), attrs, {"kind": "raster", "file": str(path), "labelled": int(labelled.size)}


def labels_key(cube: str | Path, labels: str | Path, params: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The checkpoint key of recovering labels on ``cube`` from ``labels``: (key, inputs)."""
    inputs = {"cube": fingerprint(cube)}
    if Path(labels).exists() and not Path(labels).is_dir():
        inputs["labels"] = fingerprint(labels)
    else:
        inputs["labels"] = f"layer:{labels}"
    return stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES)), inputs


def _write_cog(path: Path, codes: np.ndarray, ds: xr.Dataset, colours: dict[int, tuple[int, int, int, int]],
               names: dict[int, str]) -> None:
    from tasks.quicklook import write_class_cog

    write_class_cog(path, codes, transform=cube_transform(ds), crs=cube_crs(ds), colormap=colours,
                    nodata=NO_CLASS, names=names)


def _model_rows(ds: xr.Dataset, mean: np.ndarray, std: np.ndarray, y0: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``y0:y1`` of a cube as the network reads them: values standardised with ``mean`` /
    ``std`` (NaN where not observed) and the observed mask."""
    data, _, observed = read_rows(ds, y0, y1)
    return np.where(observed[:, None], (data - mean) / std, np.nan).astype(np.float32), observed


def _map_classes(ds: xr.Dataset, net: UNetLRTD, classes: Sequence[int], mean: np.ndarray, std: np.ndarray,
                 seen: np.ndarray, size: int, *, share: Callable[[int, int], np.ndarray] | None = None,
                 prior_power: float = 0.5, progress: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The class (``NO_CLASS`` where never observed) and its probability of every pixel.

    Predicted on half-overlapping patches, blending the probabilities where they overlap with
    weights that fade towards each patch's border (no seams along the patch grid); block by block
    of output rows, each with every patch that touches it (the same blend as one fold). ``share(a,
    b)``: the ``(K, b - a, W)`` local class shares of coarse labels to fuse the probabilities of
    rows ``a:b`` with (``fuse_prior``), or None."""
    height, width_px = ds.sizes["y"], ds.sizes["x"]
    n_time, n_band, k = ds.sizes["time"], ds.sizes["band"], len(classes)
    origins = patch_origins(height, width_px, size=size, stride=max(size // 2, 1))
    blend = blend_window(size)
    pred = np.empty((height, width_px), dtype=np.uint8)
    confidence = np.empty((height, width_px), dtype=np.float32)
    step = max(size, BLOCK_BYTES // max(1, 4 * n_time * n_band * width_px) // size * size)
    blocks = row_blocks(origins, size, height, step)
    with tqdm(total=sum(len(mine) for _, _, mine in blocks), desc=progress, unit="patch",
              disable=progress is None) as bar:
        for a, b, mine in blocks:
            r0, r1 = int(mine[:, 0].min()), int(mine[:, 0].max()) + size
            x, observed = _model_rows(ds, mean, std, r0, r1)
            local = mine - [r0, 0]
            prob_p = predict_proba(net, extract_patches(x, local, size), extract_patches(observed, local, size))
            prob = fold_patches(prob_p, local, (k, r1 - r0, width_px), weights=blend)[:, a - r0:b - r0]  # (K, b-a, W)
            if share is not None:
                prob = fuse_prior(prob, share(a, b), power=prior_power, axis=0)
            never = ~seen[a:b]  # never observed: no class, whatever the network or a label says
            pred[a:b] = np.where(never, NO_CLASS, np.asarray(classes, dtype=np.uint8)[prob.argmax(0)])
            confidence[a:b] = np.where(never, np.nan, prob.max(0))
            bar.update(len(mine))
    return pred, confidence


def _write_map(ds: xr.Dataset, out: Path, pred: np.ndarray, confidence: np.ndarray, classes: Sequence[int],
               names: dict[int, str], colours: dict[int, tuple[int, int, int, int]], attrs: dict[str, Any]) -> None:
    """``labels.zarr`` (``class``, ``confidence`` on the cube's grid) and its colour-mapped COG."""
    height, width_px = pred.shape
    gm = {"grid_mapping": "spatial_ref"}
    out_ds = xr.Dataset(
        {
            "class": (("y", "x"), pred, {
                "long_name": "recovered class (UNet + low-rank Tucker layer)",
                "flag_values": list(classes),
                "flag_meanings": flag_meanings(names[c] for c in classes),
                "flag_colors": ["#{:02x}{:02x}{:02x}".format(*colours[c][:3]) for c in classes],
                "nodata": NO_CLASS, **gm}),
            "confidence": (("y", "x"), confidence, {
                "long_name": "probability of the recovered class", "units": "1", **gm}),
        },
        coords={name: ds.coords[name].load() for name in ("y", "x", "spatial_ref") if name in ds.coords},  # with their CF attrs
        attrs=attrs,
    )
    chunks = (min(height, 512), min(width_px, 512))
    encoding = {"class": {"chunks": chunks}, "confidence": {"chunks": chunks}}
    with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
        out_ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=True, encoding=encoding)
    _write_cog(cog_path(out), pred, ds, colours, names)


def recover_labels(
    cube: str | Path,
    labels: str | Path,
    out: str | Path,
    *,
    lam: float = 10.0,
    variant: str = "hooi",
    epochs: int = 20,
    patch: int = 32,
    rank_k: int | None = None,
    rank_share: float = 0.25,
    class_power: float = 0.0,
    prior_window: int = 0,
    prior_power: float = 0.5,
    width: int = 16,
    depth: int = 2,
    lr: float = 1e-2,
    batch: int = 8,
    seed: int = 0,
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Manifest:
    """Dense class map of a cube from sparse or coarse labels with UNet + LRTD.

    Parameters
    ----------
    cube
        A schema-following cube store (``tasks.cube``).
    labels
        The name of a ``(y, x)`` label layer of the cube (e.g. ``landcover``) or a file of
        labelled points (:func:`read_points`).
    out
        Where ``labels.zarr`` goes; manifest, COG and weights beside it.
    lam
        Weight ``lambda`` of the low-rank term (0: cross-entropy only).
    variant
        LRTD layer: ``"hooi"`` (no parameters, per-batch Tucker) or ``"factors"`` (trainable
        factors, per-batch core).
    epochs, lr, batch
        Training passes over the patches, Adam's peak learning rate, patches per step.
    patch
        Patch side in pixels (shrunk to the cube, a multiple of ``2 ** depth``).
    rank_k, rank_share
        LRTD ranks: ``min(rank_k, K)`` in the class mode (default ``K``: a lower class rank
        suppresses the small classes of a patch), ``ceil(rank_share * patch)`` in space.
    prior_window, prior_power
        Coarse labels (a label layer of the cube, e.g. the 30 m NLCD on the 3 m grid): with
        ``prior_window`` > 0 (odd, e.g. 5), the network's probabilities are fused with the local
        class shares of the label layer in a ``prior_window`` px box,
        ``p_k ~ S_k^prior_power * q_k`` (``fusion_models.unet_lrtd_training.fuse_prior``), so each pixel
        keeps a class of its coarse neighbourhood and the network places the edges of the coarse
        cells (``benchmarks/labels.py`` chooses the pair on validation blocks). 0: off. Ignored
        for point labels.
    class_power
        Cross-entropy class weights ``n_k^-class_power`` from the labelled pixels
        (``fusion_models.unet_lrtd_training.class_weights``); 0: unweighted.
    width, depth
        UNet base width and levels.
    seed
        Seeds initialisation, shuffling and augmentation.
    device
        ``"cuda"``/``"cpu"``; default a GPU when present. Not part of the key.
    overwrite
        Replace an ``out`` made with another key. A finished ``out`` with this key is reused.
    progress
        Show progress bars (statistics, reading, training, mapping); the command line does.

    Returns
    -------
    Manifest
        ``outputs``: path, cog, weights, classes, ranks, labelled pixels; ``stats``: the loss
        history (total, CE, low-rank) per epoch and seconds.
    """
    if variant not in ("hooi", "factors"):
        raise ValueError(f"variant must be 'hooi' or 'factors'; got variant={variant!r}")
    if lam < 0 or not 0 < rank_share <= 1:
        raise ValueError(f"lam must be >= 0 and rank_share in (0, 1]; got lam={lam}, rank_share={rank_share}")
    for name, value in (("epochs", epochs), ("patch", patch), ("batch", batch),
                        ("rank_k", 1 if rank_k is None else rank_k), ("width", width), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {name}={value!r}")
    cube, out = Path(cube), Path(out)
    params = {"lam": lam, "variant": variant, "epochs": epochs, "patch": patch, "rank_k": rank_k,
              "rank_share": rank_share, "class_power": class_power, "width": width, "depth": depth, "lr": lr, "batch": batch,
              "seed": seed, "prior_window": prior_window, "prior_power": prior_power}
    if isinstance(prior_window, bool) or not isinstance(prior_window, int) or prior_window < 0 or (
            prior_window and prior_window % 2 == 0) or not prior_power > 0:
        raise ValueError(
            f"prior_window must be 0 (off) or an odd integer >= 1 and prior_power > 0; got "
            f"prior_window={prior_window!r}, prior_power={prior_power!r} (e.g. 5 and 0.5)"
        )
    key, inputs = labels_key(cube, labels, params)
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite,
                            inputs=[cube, *([labels] if Path(labels).exists() else [])])
    if found is not None and weights_path(out).exists() and cog_path(out).exists():
        return found

    started = _time.perf_counter()
    ds = open_cube(cube)
    codes, layer_attrs, source = _label_raster(ds, labels)
    n_time, n_band, height, width_px = (ds.sizes["time"], ds.sizes["band"], ds.sizes["y"], ds.sizes["x"])
    # seen: (y, x) observed on at least one date (valid, every band finite), the map gap filling
    # leaves its never-observed pixels NaN by; streamed over the cube's chunks
    title = f"labels {Path(str(cube)).name}"
    mean, std, seen, _ = streamed_band_stats(ds, progress=f"{title}: band statistics" if progress else None)
    if not seen.any():
        raise ValueError(f"{cube}: no observed pixel, nothing to learn from: {unobserved_reason(ds['data'], ds['valid'])}")
    # labels on pixels never observed are dropped, from training too: the network's input there is
    # nothing but "not observed", so they would teach it a class for missing data; those pixels get
    # no class in the map either way
    unobserved_labels = int(((codes != NO_CLASS) & ~seen).sum())
    if unobserved_labels:
        log.warning("labels: %d labelled pixel(s) fall on pixels the cube never observed; not used",
                    unobserved_labels)
        codes = np.where(seen, codes, NO_CLASS).astype(np.uint8)
    classes = tuple(int(c) for c in np.unique(codes) if c != NO_CLASS)
    if len(classes) < 2:
        where = f" on pixels the cube observed ({unobserved_labels} fall on pixels never observed)" if unobserved_labels else ""
        raise ValueError(f"{labels}: the labels hold {len(classes)} class(es) {classes}{where}; at least 2 are needed")
    size = patch_size_for(height, width_px, patch, multiple=2**depth)
    idx = codes_to_index(codes, classes).astype(np.int16)  # (H, W), -1 unlabelled
    k = len(classes)

    train_origins = _training_patches(idx, size, seed)
    xs, vs, ys = patches_by_rows(train_origins, size, lambda y0, y1: (*_model_rows(ds, mean, std, y0, y1), idx[y0:y1]),
                                 progress=f"{title}: read {len(train_origins)} labelled patches" if progress else None)
    ranks = (k if rank_k is None else min(rank_k, k), int(np.ceil(rank_share * size)), int(np.ceil(rank_share * size)))
    dev = resolve_device(device)
    weight = class_weights(idx, k, power=class_power) if class_power > 0 else None
    lrtd_variant = cast(Literal["hooi", "factors"], variant)  # checked at the top (mypy cannot narrow str)
    with tqdm(total=epochs * -(-len(xs) // batch), desc=f"{title}: train on {len(xs)} patches, {epochs} epoch(s)",
              unit="step", disable=not progress) as bar:
        fit = fit_unet_lrtd(
            xs, vs, ys.astype(np.int64), classes=k, lam=lam, variant=lrtd_variant,
            ranks=ranks, epochs=epochs, batch=batch, lr=lr, width=width, depth=depth, seed=seed, device=dev,
            class_weight=weight, on_step=bar.update)
    del xs, vs, ys
    share = None
    if prior_window and str(labels) in ds.data_vars:  # coarse labels: keep a class of the neighbourhood
        def share(a: int, b: int) -> np.ndarray:
            m = prior_window // 2
            c0, c1 = max(0, a - m), min(height, b + m)
            return local_class_share(idx[c0:c1].astype(np.int64), k, window=prior_window)[:, a - c0:b - c0]
    pred, confidence = _map_classes(ds, fit.net, classes, mean, std, seen, size, share=share, prior_power=prior_power,
                                    progress=f"{title}: map half-overlapping patches" if progress else None)

    names = class_names(classes, layer_attrs)
    colours = colour_table(classes, layer_attrs)
    _write_map(ds, out, pred, confidence, classes, names, colours,
               product_attrs(STAGE, key, params, code=code_version(*CODE_MODULES), title="fusioncube label recovery",
                             labels_key=key, cube=str(Path(cube).resolve()), labels=json.dumps(source)))
    wpath = save_checkpoint(  # the file alone rebuilds the model and says what it reads (QA9)
        weights_path(out), fit.net.state_dict(), kind="unet_lrtd",
        config={"sample": [n_time, n_band, size, size], "classes": k, "ranks": list(ranks), "variant": variant,
                "width": width, "depth": depth},
        classes=list(classes), class_names=[names[c] for c in classes],
        class_colours=[list(colours[c]) for c in classes], bands=[str(b) for b in ds["band"].values],
        dates=[str(d)[:10] for d in ds["time"].values], mean=np.ravel(mean).tolist(), std=np.ravel(std).tolist())

    labelled = idx >= 0
    manifest = Manifest(
        stage=STAGE, key=key, params=params, inputs=inputs, code_version=code_version(*CODE_MODULES),
        outputs={
            "path": str(out), "cube": str(cube), "cog": str(cog_path(out)), "weights": str(wpath),
            "labels": source, "classes": list(classes), "ranks": list(ranks),
            "sample_shape": [n_time, n_band, size, size], "labelled_pixels": int(labelled.sum()),
            "labels_unobserved": unobserved_labels,
            "mapped_pixels": int(seen.sum()),
            "training_patches": len(train_origins),
            "labels_kept": float((pred[labelled] == codes[labelled]).mean()),
        },
        stats={
            "loss_history": [[round(v, 6) for v in h] for h in fit.history],
            "fit_seconds": round(fit.seconds, 3),
            "seconds": round(_time.perf_counter() - started, 3),
            "device": str(dev),
        },
    )
    write_manifest(out, manifest)
    log.info("labels: wrote %s (%d classes from %d labelled pixels, %.1f s)", out, k,
             manifest.outputs["labelled_pixels"], manifest.stats["seconds"])
    return manifest


def apply_model(cube: str | Path, model: str | Path, out: str | Path, *, device: str | None = None,
                overwrite: bool = False, progress: bool = False) -> Manifest:
    """Map ``cube`` with a UNet + LRTD model trained by :func:`recover_labels` on another cube
    (its weights file, ``labels.zarr.unet.pt``): the same ``labels.zarr`` and COG, no labels
    needed. The cube must have the model's bands, in its order, and its number of dates; its
    values are standardised with the training cube's band statistics, and a cube whose values or
    season look unlike the training cube's is warned about (:func:`tasks.cube.training_mismatch`).
    """
    cube, out, model = Path(cube), Path(out), Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"{model}: no model file; train one with `fusioncube stage labels --labels ...` first")
    state, meta = load_checkpoint(model)
    if meta.get("kind") != "unet_lrtd" or "config" not in meta or "mean" not in meta:
        held = f"a {meta['kind']} model" if meta.get("kind") else "weights without their settings (saved before 2026-12-07)"
        raise ValueError(f"{model}: not a label-recovery model that describes itself ({held}); train one with "
                         "`fusioncube stage labels --labels ...`")
    ds = open_cube(cube)
    c = meta["config"]
    bands = [str(b) for b in ds["band"].values]
    if list(meta["bands"]) != bands or int(c["sample"][0]) != ds.sizes["time"]:
        raise ValueError(
            f"{model}: the model was trained on {c['sample'][0]} dates x bands {list(meta['bands'])}; the cube {cube} "
            f"has {ds.sizes['time']} dates x {bands}. Give it a cube with those (e.g. ds.sel(band=...)), or train a "
            "model on this cube (--labels)")
    size = int(c["sample"][-1])
    if min(ds.sizes["y"], ds.sizes["x"]) < size:
        raise ValueError(f"{cube}: {ds.sizes['y']} x {ds.sizes['x']} px, smaller than the model's {size} px patches")
    params = {"model": model.name}
    inputs = {"cube": fingerprint(cube), "model": fingerprint(model)}
    key = stage_key(STAGE, inputs=inputs, params=params, code=code_version(*CODE_MODULES))
    found = reuse_or_refuse(out, key, stage=STAGE, overwrite=overwrite, inputs=[cube, model])
    if found is not None and cog_path(out).exists():
        return found

    started = _time.perf_counter()
    mean = np.asarray(meta["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(meta["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    for problem in training_mismatch(ds, mean, std, meta.get("dates") or []):
        log.warning("%s: the cube %s may not suit this model: %s. Its map may be wrong however confident it looks; "
                    "train a model on this cube (--labels)", model, cube, problem)
    dev = resolve_device(device)
    net = _unet_from(c)
    net.load_state_dict(state)
    net = net.to(dev).eval()
    title = f"labels {cube.name}"
    seen = observed_anywhere(ds)
    classes = tuple(int(v) for v in meta["classes"])
    pred, confidence = _map_classes(ds, net, classes, mean, std, seen, size,
                                    progress=f"{title}: map half-overlapping patches" if progress else None)
    names = dict(zip(classes, map(str, meta["class_names"]), strict=True)) if meta.get("class_names") \
        else class_names(classes, {})
    colours = {cl: cast(tuple[int, int, int, int], tuple(int(v) for v in rgba))
               for cl, rgba in zip(classes, meta["class_colours"], strict=True)} if meta.get("class_colours") \
        else colour_table(classes, {})
    _write_map(ds, out, pred, confidence, classes, names, colours,
               product_attrs(STAGE, key, params, code=code_version(*CODE_MODULES), title="fusioncube label recovery",
                             labels_key=key, cube=str(cube.resolve()), model=str(model.resolve())))
    manifest = Manifest(
        stage=STAGE, key=key, params=params, inputs=inputs, code_version=code_version(*CODE_MODULES),
        outputs={"path": str(out), "cube": str(cube), "cog": str(cog_path(out)), "model": str(model),
                 "classes": list(classes), "mapped_pixels": int(seen.sum()), "trained": False},
        stats={"seconds": round(_time.perf_counter() - started, 3), "device": str(dev)},
    )
    write_manifest(out, manifest)
    return manifest


def quicklook_png(out: str | Path, out_png: str | Path, *, var: str = "class") -> Path:
    """PNG of a finished ``labels.zarr`` (or of classify's ``classes.zarr``, ``var="classes"``):
    the class map in its colours beside the confidence."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap, to_rgb
    from matplotlib.patches import Patch

    from tasks.quicklook import percent, save_figure

    ds = xr.open_zarr(out, consolidated=None)
    step = max(1, int(np.ceil(max(ds.sizes["y"], ds.sizes["x"]) / 1024)))
    sub = ds.isel(y=slice(None, None, step), x=slice(None, None, step)).load()
    attrs = sub[var].attrs
    classes = tuple(int(c) for c in attrs["flag_values"])
    colours = [to_rgb(h) for h in attrs["flag_colors"]]
    index = codes_to_index(sub[var].values, classes)
    nothing = (0.85, 0.85, 0.85)  # not observed: no class (light grey, not the page's white)
    cmap = ListedColormap(colours).with_extremes(bad=nothing)
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6), dpi=100, layout="constrained")
    axes[0].imshow(np.ma.masked_less(index, 0), cmap=cmap, vmin=-0.5, vmax=len(classes) - 0.5,
                   interpolation="nearest")
    what = "classified (4D-CNN)" if var == "classes" else "recovered classes (UNet + LRTD)"
    axes[0].set_title(f"{Path(out).name}: {what}", fontsize=9)
    names = str(attrs["flag_meanings"]).split()
    counts = np.bincount(index[index >= 0].ravel(), minlength=len(classes))
    handles = [Patch(color=c, label=f"{code} {n.replace('_', ' ')} ({percent(k / index.size)})")
               for code, c, n, k in zip(classes, colours, names, counts, strict=False) if k]  # the classes present
    if (index < 0).any():
        handles.append(Patch(color=nothing, label=f"no class: never observed ({percent((index < 0).mean())})"))
    axes[0].legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    cmap_conf = matplotlib.colormaps["viridis"].with_extremes(bad=nothing)
    im = axes[1].imshow(np.ma.masked_invalid(sub["confidence"].values), cmap=cmap_conf, vmin=0, vmax=1,
                        interpolation="nearest")
    axes[1].set_title("confidence (probability of the class shown)", fontsize=9)
    fig.colorbar(im, ax=axes[1], shrink=0.8, label="probability")
    for ax in axes:
        ax.set_axis_off()
    out_png = Path(out_png)
    return save_figure(fig, out_png)


# --- CLI ----------------------------------------------------------------------------------------


def _cmd_labels(args: argparse.Namespace) -> int:
    import sys

    if (args.labels is None) == (args.model is None):
        raise ValueError("give --labels to train a model on this cube, or --model M.unet.pt to apply one trained "
                         "on another (not both)")
    if args.model is not None:
        manifest = apply_model(args.cube, args.model, args.out, device=args.device, overwrite=args.overwrite,
                               progress=True)
        done = f"  mapped with {args.model}; map: {manifest.outputs['cog']}"
    else:
        manifest = recover_labels(args.cube, args.labels, args.out, lam=args.lam, variant=args.variant,
                                  epochs=args.epochs, patch=args.patch, seed=args.seed,
                                  prior_window=args.prior_window, device=args.device,
                                  overwrite=args.overwrite, progress=True)
        o = manifest.outputs
        done = (f"  trained on {o['labelled_pixels']} labelled pixels in {o['training_patches']} patches; "
                f"map: {o['cog']}; model: {weights_path(args.out)}")
    from tasks.info import describe

    sys.stdout.write("\n".join([
        *describe(args.out),
        done,
        f"quick-look: {quicklook_png(args.out, Path(str(args.out) + '.quicklook.png'))}",
    ]) + "\n")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``stage labels --cube IN.zarr --labels LABELS --out OUT.zarr``."""
    p = subparsers.add_parser(
        "labels", help="dense class map from sparse or coarse labels (UNet + low-rank Tucker layer)")
    p.add_argument("--cube", required=True, help="a schema-following cube (.zarr)")
    p.add_argument("--labels", default=None,
                   help="a (y, x) label layer of the cube (e.g. landcover), a class raster in any CRS "
                        "(.tif, warped onto the cube by majority), or a points file "
                        "(.csv with x, y in the cube's CRS or longitude, latitude in WGS 84, and "
                        "class or label as codes or names; or .geojson Point features)")
    p.add_argument("--out", required=True, help="labels.zarr to write (COG and weights beside it)")
    p.add_argument("--model", default=None, metavar="M.unet.pt",
                   help="instead of --labels: map the cube with a model trained on another cube (the "
                        "labels.zarr.unet.pt beside its map; the same bands and number of dates)")
    p.add_argument("--lam", type=float, default=10.0, help="weight of the low-rank term (default 10)")
    p.add_argument("--variant", choices=("hooi", "factors"), default="hooi",
                   help="LRTD layer: per-batch Tucker (hooi) or trainable factors (default hooi)")
    p.add_argument("--epochs", type=int, default=20, help="training passes (default 20)")
    p.add_argument("--patch", type=int, default=32, help="patch side in pixels (default 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, metavar="DEV", help=DEVICE_HELP)
    p.add_argument("--prior-window", type=int, default=0,
                   help="coarse label layer: fuse the prediction with the layer's class shares in "
                        "this odd box (px), e.g. 5; 0 = off (default)")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_labels)
    return p


# --- Prefect task -------------------------------------------------------------------------------


@task(name="labels", retries=1, retry_delay_seconds=10, cache_policy=NONE)
@reports_warnings
def labels_task(
    cube: str,
    out: str,
    *,
    labels: str = "landcover",
    lam: float = 10.0,
    variant: str = "hooi",
    epochs: int = 20,
    patch: int = 32,
    seed: int = 0,
    overwrite: bool = False,
    quicklook: bool = True,
) -> dict[str, Any]:
    """Prefect task: :func:`recover_labels` on paths, plus a per-class table artifact and a map
    quick-look image artifact. No Prefect result caching: the manifest beside ``out`` is the cache.
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
    manifest = recover_labels(cube, labels, out, lam=lam, variant=variant, epochs=epochs, patch=patch,
                              seed=seed, overwrite=overwrite)
    result = {"artifact": str(out), **asdict(manifest)}
    ds = xr.open_zarr(out, consolidated=None)
    pred = ds["class"].values
    lab_codes, _, _ = _label_raster(open_cube(cube), labels)
    names = class_names(tuple(manifest.outputs["classes"]), ds["class"].attrs)
    rows = class_table(pred, ds["confidence"].values, lab_codes, names)
    create_table_artifact(table=rows, key=product_key("labels-classes", cube, out),
                          description=f"label recovery on {cube} from {labels}: per-class table")
    result["classes_table"] = rows
    if quicklook:
        png = quicklook_path(out)
        if not is_current(png, out):
            quicklook_png(out, png)
        publish_image(png, key=product_key("labels-map", cube, out),
                      description=f"recovered classes and confidence, {out}", fresh=made_in_task_run(manifest),
                      max_pixels=720)
        result["quicklook"] = str(png)
    logger.info("labels %s: key %s, %d classes, %.1f %% of labelled pixels kept",
                out, manifest.key, len(manifest.outputs["classes"]), 100 * manifest.outputs["labels_kept"])
    return result
