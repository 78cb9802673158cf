"""``fusioncube info PATH``: what a cube or a stage's product holds, as lines for a person.

A cube is described by :func:`tasks.cube.describe_cube`. A stage's product (a class map from
``classify`` / ``labels``, ``anomalies.zarr``, ``patches.zarr``, the ``compress`` stage's store) is
described from its contents and from the manifest beside it: which stage made it, when, from what
and with which parameters, and its headline figures.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from tasks.checkpoint import RESUME_MARK, Manifest, fingerprint, read_manifest
from tasks.cube import (
    class_counts,
    compressed_store,
    crs_label,
    cube_crs,
    cube_transform,
    describe_cube,
    open_cube,
)
from tasks.errors import CubeSchemaError
from tasks.provenance import describe_environment

__all__ = ["describe", "describe_catalog"]


def _grid(ds: xr.Dataset) -> str:
    crs = cube_crs(ds)
    where = crs_label(crs)
    if ds.sizes.get("x", 0) > 1 and ds.sizes.get("y", 0) > 1:
        t = cube_transform(ds)
        where += f", pixel {abs(t.a):g} x {abs(t.e):g}, {ds.sizes['x']} x {ds.sizes['y']} px"
    return f"  grid: {where}"


def _unfinished(path: Path) -> str | None:
    """The product ``path`` is the work of, when it is a stopped run's (``resumable_artifact``)."""
    final, mark, _ = path.name.partition(RESUME_MARK)
    return final if mark else None


#: the inputs a stage's manifest names with their paths in its outputs (a cube, a patch store, a
#: compressed store): what :func:`stale_input` compares with the input as it is now
TRACKED_INPUTS = ("cube", "patches", "compressed")


def stale_input(manifest: Manifest, depth: int = 3, *, known: dict[Path, str] | None = None) -> str | None:
    """Why a product no longer matches its input, else None: the input named in its manifest
    (``inputs.cube`` with ``outputs.cube`` ...) changed since (new dates, a rebuild) or is gone.
    An input that is itself a product (compress's own patch store) is checked the same way, so a
    product of a stage the pipeline stopped running is seen as behind its cube. ``known``: input
    fingerprints already taken (a folder listing takes a cube's once, not once a product)."""

    outputs = manifest.outputs if isinstance(manifest.outputs, dict) else {}
    for name in TRACKED_INPUTS:
        if name not in manifest.inputs or not isinstance(outputs.get(name), str):
            continue
        source = Path(outputs[name])
        if not source.exists():
            return f"its input {source} is gone"
        try:
            now = known[source] if known is not None and source in known else fingerprint(source)
        except OSError:
            continue
        if known is not None:
            known[source] = now
        if now != manifest.inputs[name]:
            return f"made from an earlier state of {source}, which has changed since (new dates, or remade)"
        upstream = read_manifest(source)
        if depth > 1 and upstream is not None and upstream.stage != "ingest" and (
                why := stale_input(upstream, depth - 1, known=known)):
            return f"made from {source}, which is out of date itself: {why}"
    return None


def _made_by(manifest: Manifest | None, path: Path, attrs: Mapping[str, Any] | None = None) -> list[str]:
    if manifest is None and (final := _unfinished(path)) is not None:
        return [f"  unfinished: the work of a stopped run towards {final}; the same command finishes it"]
    if manifest is None and attrs and attrs.get("fusioncube_stage"):  # a product copied without its manifest
        when = str(attrs.get("created", ""))[:19].replace("T", " ")
        lines = [f"  made by: stage {attrs['fusioncube_stage']}, {when} UTC (its attributes; no manifest beside it, "
                 "so a pipeline run does not take it as finished)"]
        try:
            given = {k: v for k, v in json.loads(str(attrs.get("fusioncube_params", "{}"))).items() if v is not None}
        except ValueError:
            given = {}
        if given:
            lines.append(f"  parameters: {', '.join(f'{k}={v}' for k, v in sorted(given.items()))}")
        with contextlib.suppress(ValueError):
            lines += describe_environment(json.loads(str(attrs.get("fusioncube_environment", "{}"))))
        return lines
    if manifest is None:
        return ["  manifest: none beside it (not made by fusioncube, or a run did not finish)"]
    outputs = manifest.outputs if isinstance(manifest.outputs, dict) else {}
    if manifest.stage == "ingest":
        source = f"{len(outputs.get('scenes', {}))} scene(s), {len(outputs.get('quarantine', {}))} quarantined"
    else:
        source = (outputs.get("cube") or outputs.get("patches") or outputs.get("compressed")
                  or ", ".join(manifest.inputs))
    params = ", ".join(f"{k}={v}" for k, v in sorted(manifest.params.items()) if v is not None)
    lines = [f"  made by: stage {manifest.stage}, {manifest.created[:19].replace('T', ' ')} UTC, from {source}"]
    if params:
        lines.append(f"  parameters: {params}")
    lines += describe_environment(manifest.environment) or [
        "  made with: not recorded (made by a fusioncube from before 2026-12-08)"]
    if manifest.stage != "ingest" and (why := stale_input(manifest)):
        lines.append(f"  OUT OF DATE: {why}; run its stage again (`fusioncube run` with the stage listed, "
                     "or the same `fusioncube stage` command)")
    return lines


#: the class variable of a class map: ``labels.zarr``'s and ``classes.zarr``'s
CLASS_VARS = ("class", "classes")


def class_var(ds: xr.Dataset) -> str | None:
    """The name of ``ds``'s ``(y, x)`` class variable when it is a class map, else None."""
    return next((v for v in CLASS_VARS if v in ds and tuple(ds[v].dims) == ("y", "x")), None)


def _class_map(ds: xr.Dataset, name: str) -> list[str]:
    import dask

    from tasks.quicklook import class_names, percent

    var = ds[name]
    fill = var.attrs.get("nodata", var.encoding.get("_FillValue", var.attrs.get("_FillValue", 0)))
    values, counts = class_counts(var)
    mapped = values != fill
    values, counts = values[mapped], counts[mapped]
    legend = tuple(int(v) for v in var.attrs.get("flag_values", values))
    names = class_names(tuple(int(v) for v in values), dict(var.attrs),
                        nlcd=not legend or set(legend) <= set(_nlcd_codes()))
    total = max(int(counts.sum()), 1)
    lines = [f"  classes: {len(values)} mapped over {percent(total / max(var.size, 1))} of the pixels (fill {fill})"]
    order = np.argsort(counts)[::-1]
    lines += [f"    {int(values[i]):>3} {names[int(values[i])]:<32} {percent(counts[i] / total):>8}" for i in order[:20]]
    if len(values) > 20:
        lines.append(f"    ... and {len(values) - 20} more")
    if "confidence" in ds:
        conf = ds["confidence"].where(var != fill)  # lazy: reduced chunk by chunk
        mean, low = dask.compute(conf.mean(), (conf < 0.5).where(conf.notnull()).mean())
        lines.append(f"  confidence: mean {float(mean):.2f} (share of pixels below 0.5: {percent(float(low))})")
    return lines


def _nlcd_codes() -> tuple[int, ...]:
    from tasks.legends import NLCD_CLASSES

    return tuple(NLCD_CLASSES)


def _anomalies(ds: xr.Dataset, manifest: Manifest | None) -> list[str]:
    from tasks.anomalies import observed_band, strongest_anomalies
    from tasks.quicklook import percent

    times = ds["time"].values
    flagged = int(ds["flag"].sum().values)
    lines = [f"  dates: {times.size}, {str(times[0])[:10]} .. {str(times[-1])[:10]}",
             f"  flagged: {flagged} pixel-dates ({percent(flagged / max(ds['flag'].size, 1))} of all)"]
    outputs = manifest.outputs if manifest is not None else {}
    cube, band = outputs.get("cube"), outputs.get("band")
    observed = None
    if cube and band and Path(cube).exists():  # the change in the band's units, from the cube
        with contextlib.suppress(OSError, ValueError, KeyError):
            observed = observed_band(cube, band)
    top = strongest_anomalies(ds, n=5, observed=observed)
    if top:
        if observed is not None:
            lines.append(f"  strongest (date, x, y, change in {band}'s units, score):")
            lines += [f"    {r['date']}  x={r['x']:.10g} y={r['y']:.10g}  {r['magnitude']:+.6g} "
                      f"(score {r['score']:.6g})" for r in top]
        else:
            lines.append("  strongest (date, x, y, score):")
            lines += [f"    {r['date']}  x={r['x']:.10g} y={r['y']:.10g}  {r['score']:g}" for r in top]
    return lines


def _patches(ds: xr.Dataset) -> list[str]:
    split = [str(s) for s in ds["split"].values] if "split" in ds.coords or "split" in ds else []
    counts = {s: split.count(s) for s in dict.fromkeys(split)}
    shape = " x ".join(f"{ds.sizes[d]} {d}" for d in ("time", "band", "py", "px") if d in ds.sizes)
    block, size = ds.attrs.get("patch_block"), ds.attrs.get("patch_size")
    blocks = f", blocks of {block} x {block} patches ({block * size} px)" if block and size else ""
    return [f"  patches: {ds.sizes['patch']} of {shape}; split {counts}{blocks}"]


def _compressed(path: Path, manifest: Manifest | None) -> list[str]:
    stats = manifest.stats if manifest is not None else {}
    lines = []
    if "bits_per_entry" in stats:
        coded = f" over {stats['coded_entries']:,} patch entries" if "coded_entries" in stats else ""
        lines.append(f"  rate: {stats['bits_per_entry']:.4g} bits per entry (the codec's cores, masks and tables{coded})")
    if "bits_per_cube_entry" in stats:
        lines.append(f"  stored: {stats['stored_bytes'] / 1e3:.1f} kB, {stats['bits_per_cube_entry']:.4g} bits per value "
                     "of the source cube (the index and coordinates included)")
    for key, label in (("psnr_db", "PSNR (dB)"), ("nrmse", "NRMSE")):
        if key in stats:
            lines.append(f"  {label}: {stats[key]:.4g}")
    static = (manifest.outputs.get("static_layers") if manifest is not None else None) or {}
    if static:
        lines.append("  static layers, lossless, beside the rate: "
                     + ", ".join(f"{name} ({size / 1e3:.1f} kB)" for name, size in static.items()))
    segments = path / "segments.json"
    if segments.exists():
        table = json.loads(segments.read_text())
        lines.append(f"  segments: {len(table.get('segments', []) if isinstance(table, dict) else table)}")
    return lines


def _product(path: Path, cube_error: CubeSchemaError) -> tuple[xr.Dataset, str]:
    """A stage's product that is not a cube: ``(its dataset, its kind)``, kind one of
    :data:`CLASS_VARS` (a class map, by its variable), ``"anomalies"`` or ``"patches"``; raises
    ``cube_error`` (why it is no cube) for anything else."""
    try:
        ds = xr.open_zarr(path, consolidated=None)
    except Exception:  # not a Zarr store at all: the cube's reason says what a cube needs
        raise cube_error from None
    if (name := class_var(ds)) is not None:
        return ds, name
    if {"score", "flag"} <= set(ds.data_vars):
        return ds, "anomalies"
    if "patch" in ds.dims:
        return ds, "patches"
    raise cube_error


def _geotiff(path: Path) -> list[str]:
    """A GeoTIFF (a stage's class-map COG, an exported date): its raster in brief, and the store
    it was made from when it lies beside it (``X.zarr.tif``, or an older ``X.tif``, beside ``X.zarr``)."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            classes = ds.tags().get("CLASSES")
            lines = [f"{path}: a GeoTIFF, {ds.count} band(s) of {ds.dtypes[0]}",
                     f"  grid: {crs_label(ds.crs)}, pixel {abs(ds.transform.a):g} x {abs(ds.transform.e):g}, "
                     f"{ds.width} x {ds.height} px"]
    except rasterio.RasterioIOError as exc:
        raise CubeSchemaError(f"{path}: not a readable GeoTIFF ({exc})") from exc
    if classes:
        lines.append(f"  classes: {classes}")
    name = path.name[: -len(path.suffix)]
    stores = [path.with_name(n) for n in dict.fromkeys((name, f"{name}.zarr"))]
    if beside := next((st for st in stores if st.is_dir()), None):
        lines.append(f"  made beside {beside}: `fusioncube info {beside}` says more")
    return lines


def describe(path: str | Path) -> list[str]:
    """What ``path`` holds: a cube (:func:`tasks.cube.describe_cube`) or a stage's product.

    Raises ``FileNotFoundError`` for a missing path (as :func:`tasks.cube.open_cube`) and
    ``CubeSchemaError`` (the cube's reason) for a store that is neither a cube nor a product
    fusioncube knows."""
    path = Path(path)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        return describe_catalog(path)
    if path.is_file() and path.suffix.lower() in (".tif", ".tiff"):
        return _geotiff(path)
    if path.is_file() and path.suffix == ".pt":
        return describe_model(path)
    store = compressed_store(path)
    if store is None and _plain_folder(path):
        return _folder(path)
    if store is not None and store != path:
        return [f"{path}: {_compress_folder(path)}", *describe(store)]
    manifest = read_manifest(path)
    if store is not None:  # the compress stage's store
        return [f"{path}: {TITLES['compressed']}", *_made_by(manifest, path), *_compressed(path, manifest),
                f"  decode it: fusioncube stage decompress --store {path} --out CUBE.zarr"]
    try:
        lines = describe_cube(path)
        if manifest is None:  # another tool's cube: no line; a stage's cube copied alone: its attributes
            attrs = dict(xr.open_zarr(path, consolidated=None).attrs)
            return lines + (_made_by(None, path, attrs) if attrs.get("fusioncube_stage") else [])
        # a stage's cube (filled.zarr, decoded.zarr) with its parameters; an ingested cube's are its
        # catalog entry, which its catalog file says better
        made = _made_by(manifest, path)
        if manifest.stage == "ingest":  # its "made by" and "made with" lines, not its parameters
            made = [line for line in made if line.startswith(("  made by:", "  made with:", "  this machine differs:"))]
        return lines + made
    except CubeSchemaError as exc:
        ds, kind = _product(path, exc)
    if kind in CLASS_VARS:
        body = [_grid(ds), *_class_map(ds, kind)]
    elif kind == "anomalies":
        body = [_grid(ds), *_anomalies(ds, manifest)]
    else:
        body = _patches(ds)
    return [f"{path}: {TITLES[kind]}", *_made_by(manifest, path, ds.attrs), *body]


#: what :func:`describe` calls each kind of store, after its path
TITLES = {"cube": "a schema-following cube", "compressed": "a compressed cube (TDL, stage compress)",
          "class": "a class map (stage labels)", "classes": "a class map (stage classify)",
          "anomalies": "anomalies (stage anomalies)", "patches": "patches (stage patch)"}


def _compress_folder(path: Path) -> str:
    held = [p for p in ("compressed", "decoded.zarr", "patches.zarr", "compress.png") if (path / p).exists()]
    return f"the output folder of stage compress ({', '.join(held)})"


def _title(path: Path) -> str:
    """:func:`describe`'s first line without the path, from the store's layout and manifest alone
    (no data read: a folder's listing must not read every cube in it)."""
    store = compressed_store(path)
    if store is not None:
        return _compress_folder(path) if store != path else TITLES["compressed"]
    try:
        open_cube(path)  # lazy: the layout, not the data
        made = read_manifest(path)
        return TITLES["cube"] + (f" (stage {made.stage})" if made is not None else "")
    except CubeSchemaError as exc:
        title = TITLES[_product(path, exc)[1]]
        return title + (", unfinished (a stopped run's work)" if _unfinished(path) is not None else "")


#: what a model file's kind is
MODEL_KINDS = {"cnn4d": "a 4D-CNN land-cover classifier (stage classify)", "cnn3d": "a 3D-CNN classifier",
               "cnn2d": "a 2D-CNN classifier", "unet_lrtd": "a UNet + LRTD label-recovery model (stage labels)",
               "lrtcnet": "an LRTC-Net gap-filling model (stage gapfill)"}


def describe_model(path: str | Path) -> list[str]:
    """A model file a stage saved beside its product (``*.pt``): what it is and what it reads
    (``torch.load(weights_only=True)``; ``CheckpointError`` naming the file otherwise)."""
    from tasks.checkpoint import load_checkpoint

    state, meta = load_checkpoint(path)
    weights = sum(int(v.numel()) for v in state.values())
    kind = str(meta.get("kind", ""))
    lines = [f"{path}: {MODEL_KINDS.get(kind, 'model weights')}, {weights:,} weights in {len(state)} tensors"]
    if not meta:
        return lines + ["  saved without its settings: the manifest beside its product rebuilds it"]
    if meta.get("classes"):
        names = meta.get("class_names") or [str(c) for c in meta["classes"]]
        lines.append(f"  classes ({len(meta['classes'])}): "
                     + ", ".join(f"{c} {n}" for c, n in zip(meta["classes"], names, strict=False)))
    if meta.get("bands"):
        lines.append(f"  bands: {', '.join(map(str, meta['bands']))}")
    if meta.get("dates"):
        lines.append(f"  trained on {len(meta['dates'])} date(s): {meta['dates'][0]} .. {meta['dates'][-1]}")
    mean = state.get("mean") if "mean" not in meta else meta["mean"]
    std = state.get("std") if "std" not in meta else meta["std"]
    if mean is not None and std is not None:  # the input statistics it standardises with
        pairs = zip(np.ravel(np.asarray(mean, dtype=float)), np.ravel(np.asarray(std, dtype=float)), strict=False)
        lines.append("  band mean / spread it standardises with: " + ", ".join(f"{m:.4g} / {s:.4g}" for m, s in pairs))
    if meta.get("config"):
        lines.append("  settings: " + ", ".join(f"{k}={v}" for k, v in meta["config"].items()
                                                  if k not in ("mean", "std")))
    return lines


def describe_catalog(path: str | Path) -> list[str]:
    """A catalog, validated (``CatalogError`` naming the key otherwise): its sources, and each cube
    with its path, the stages it runs and its own stage parameters."""
    from tasks.catalog import load_catalog
    from tasks.discover import expand_globs, is_remote

    cat = load_catalog(path)
    lines = [f"{path}: valid catalog. sources: {', '.join(cat.sources)}"]
    for name, source in cat.sources.items():  # the commonest catalog mistake: a glob matching nothing
        files = expand_globs(source.glob, cat)
        if not files:
            where = ", ".join(str(cat.resolve(g)) for g in source.glob)
            lines.append(f"  WARNING source {name}: no file matches {where}; its cubes get no scene from it "
                         "(check the path and the environment variables it uses)")
        elif not all(is_remote(g) for g in source.glob):
            lines.append(f"  source {name}: {len(files)} file(s) match")
    for name, spec in cat.cubes.items():
        own = [f"{stage}.{k}={v!r}" for stage, given in spec.params.model_dump(exclude_unset=True).items()
               for k, v in given.items()]
        made = "" if cat.cube_path(name).exists() else " (not made yet)"
        lines.append(f"  cube {name} -> {cat.cube_path(name)}{made}; stages: {', '.join(spec.stages) or 'none'}"
                     + (f"; own parameters: {', '.join(own)}" if own else ""))
        for stage in spec.stages:
            if (problem := cat.stage_input_problem(name, stage)) is not None:
                lines.append(f"  WARNING cube {name}: stage {stage} cannot run: {problem}")
        if (problem := cat.stage_dir_problem(name)) is not None:
            lines.append(f"  WARNING cube {name}: a run is refused: {problem}")
    return lines


def _plain_folder(path: Path) -> bool:
    """A folder that is not itself a Zarr store (a stage folder such as ``artifacts/<cube>/``)."""
    return path.is_dir() and not any((path / f).exists() for f in ("zarr.json", ".zgroup", ".zattrs"))


FOLDER_DEPTH = 3  # the demo's --out: cubes/planet.zarr, artifacts/planet/filled.zarr, sample/truth/*.zarr
FOLDER_LINES = 60


def _stores_under(path: Path, depth: int) -> list[Path]:
    """Stores and stage products in ``path`` and its plain sub-folders, ``depth`` levels down
    (a store is listed, not entered)."""
    found: list[Path] = []
    for p in sorted(path.iterdir()):
        if not p.is_dir():
            continue
        if not _plain_folder(p) or compressed_store(p) is not None:
            found.append(p)
        elif depth > 1:
            found += _stores_under(p, depth - 1)
    return found


def _folder(path: Path) -> list[str]:
    """A folder of stores (the pipeline's ``artifacts/<cube>/``, the demo's ``--out``): one line for
    each store in it or in its sub-folders (:data:`FOLDER_DEPTH` levels)."""
    stores = _stores_under(path, FOLDER_DEPTH)
    if not stores:
        raise CubeSchemaError(f"{path}: a folder holding no Zarr store or stage product; give a cube (.zarr), "
                              "a stage's product or a folder of them")
    lines = [f"{path}: a folder of {len(stores)} store(s); `fusioncube info` on one of them says more"]
    known: dict[Path, str] = {}  # the inputs' fingerprints, taken once for the listing
    for store in stores[:FOLDER_LINES]:
        try:
            first = _title(store)
            manifest = read_manifest(store)
            if manifest is not None and manifest.stage != "ingest" and stale_input(manifest, known=known):
                first += " (OUT OF DATE: its input changed since)"
        except (CubeSchemaError, ValueError, OSError) as exc:
            first = f"not readable ({exc})"
        lines.append(f"  {store.relative_to(path)}: {first}")
    if len(stores) > FOLDER_LINES:
        lines.append(f"  ... and {len(stores) - FOLDER_LINES} more")
    return lines


def _zarr_store(path: Path) -> bool:
    """A Zarr v3 or v2 group or array at ``path``."""
    return any((path / name).exists() for name in ("zarr.json", ".zgroup", ".zarray"))


def quicklook(path: str | Path, out_png: str | Path) -> Path:
    """A PNG of what ``path`` holds: a cube's newest clear value per pixel, a class map beside its
    confidence, or the anomalies' strongest dates. Raises ``ValueError`` for a product with no
    picture (patches, a compressed store: decode it and look at the cube)."""
    from tasks.quicklook import composite_png

    path = Path(path)
    if path.is_dir() and not _zarr_store(path):  # a folder of stores, a compressed store
        store = compressed_store(path)
        shown = [] if store == path else [p.name for p in sorted(path.iterdir()) if _zarr_store(p)][:5]
        png = store.parent / "compress.png" if store is not None else None
        hint = f"; the compression's quick-look is {png}" if png is not None and png.exists() else ""
        raise ValueError(f"{path}: no quick-look for a folder that is not a Zarr store; give one of its stores"
                         + (f" ({', '.join(shown)})" if shown else "") + hint)
    try:
        return composite_png(path, out_png)
    except CubeSchemaError as exc:
        _, kind = _product(path, exc)
    if kind in CLASS_VARS:
        from tasks.labels import quicklook_png

        return quicklook_png(path, out_png, var=kind)
    if kind == "anomalies":
        from tasks.anomalies import anomalies_png

        return anomalies_png(path, out_png)
    raise ValueError(f"{path}: no quick-look for this product (a cube, a class map or anomalies have one)")
