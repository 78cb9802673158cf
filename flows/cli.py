"""fusioncube: satellite scenes -> analysis-ready Zarr cubes -> tensor and deep-learning stages.

    fusioncube demo [--out DIR] [--size small|demo|bench]
    fusioncube ingest PATH_OR_GLOB_OR_FOLDER... --out cube.zarr [--crs CRS] [--resolution R]
    fusioncube info cube.zarr
    fusioncube export cube.zarr --out tifs/ [--start D] [--end D] [--date D ...] [--bands a,b]
    fusioncube run planet [--catalog data_catalog.yaml] [--dask-address tcp://host:8786]
    fusioncube backfill planet --start 2019-01-01 --end 2019-12-31 [--concurrency 4]
    fusioncube stage patch --cube IN.zarr --out OUT.zarr [--size 32] [--stride S]
    fusioncube catalog check [data_catalog.yaml]
    fusioncube bench realism|ingest|compress|... --out FILE.json [--quick] [--flow]
    fusioncube serve [--catalog data_catalog.yaml] [--port 4200]
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from tasks.errors import CatalogError, CheckpointError, CubeSchemaError, StagesFailed

__all__ = ["STAGE_COMMANDS", "STAGE_MODULES", "build_parser", "main", "quiet_defaults", "stage_modules"]

#: the module of ``tasks/`` behind each ``fusioncube stage NAME`` sub-command (its ``add_cli`` adds it)
STAGE_COMMANDS = {"anomalies": "tasks.anomalies", "gapfill": "tasks.gapfill", "classify": "tasks.classify",
                  "compress": "tasks.compress", "decompress": "tasks.compress", "labels": "tasks.labels"}
#: those modules, each once
STAGE_MODULES = tuple(dict.fromkeys(STAGE_COMMANDS.values()))


def stage_modules(argv: Sequence[str]) -> tuple[str, ...]:
    """The stage modules a command line needs parsed: the named stage's for ``stage NAME ...``,
    all of them for ``stage`` alone or an unknown name (to list them), none for other commands.
    Each imports torch and Prefect (seconds): ``fusioncube --help``, ``info`` or ``ingest`` need
    neither for their arguments."""
    words = [a for a in argv if a not in ("-v", "--verbose")]
    if not words or words[0] != "stage":
        return ()
    module = STAGE_COMMANDS.get(words[1]) if len(words) > 1 else None
    return (module,) if module is not None else STAGE_MODULES

log = logging.getLogger("fusioncube")


def quiet_defaults() -> None:
    """The command line's offline-friendly, quiet defaults for Prefect, Great Expectations and
    Dask, as environment defaults (the user's own settings win). For a script or notebook using
    the flows from Python: call it before importing Prefect (``flows.pipeline``, ``flows.demo``),
    as every command does; this module imports neither."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # the temporary server of a run without PREFECT_API_URL: its first start migrates a database,
    # which takes longer than Prefect's 20 s on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's cluster chatter (-v shows it)
    # the project's own warnings (a scene quarantined, a grid cut, a patch size cut to the cube) go
    # to the run's logs in the Prefect UI too, from the Dask workers as well (they inherit this);
    # outside a run (`fusioncube ingest` without a flow) they stay on the console only
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "tasks,flows,fusion_models")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")


def _cmd_demo(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()  # before the imports (Prefect, torch: seconds), which "Done in" counts
    from flows.demo import demo_flow, demo_up_to_date

    out = Path(args.out).resolve()
    print(f"fusioncube demo: sample area '{args.size}' (seed {args.seed}) -> {out}", flush=True)
    products = None if args.rerun else demo_up_to_date(str(out), args.size, args.seed, args.catalog)
    if products is not None:
        print("Up to date: no new scene, every stage's manifest matches; nothing to run "
              "(--rerun runs the Prefect flow anyway).")
    else:
        products = demo_flow(str(out), args.size, args.seed, args.catalog, progress_bar=True)
    seconds = time.perf_counter() - t0
    print(f"\nDone in {seconds:.1f} s. Products:")
    print(f"  sample area scenes   {products['sample']['path']}"
          f"{'  (reused)' if products['sample'].get('reused') else ''}")
    for cube, path in products["cubes"].items():
        print(f"  cube {cube:<15} {path}")
        if products["quicklooks"].get(cube):
            print(f"    quick-look         {products['quicklooks'][cube]}")
    for cube, info in products["patches"].items():
        print(f"  patches {cube:<12} {info['path']}  {info.get('patches', '')}")
    for cube, stages in products.get("stages", {}).items():
        for name, info in stages.items():
            extra = f"  ({info['flagged']} flagged)" if "flagged" in info else ""
            print(f"  {name} {cube:<{19 - len(name)}} {info['path']}{extra}")
            if info.get("quicklook"):
                print(f"    quick-look         {info['quicklook']}")
    print("Open a cube with: python -c \"import xarray as xr; print(xr.open_zarr('"
          f"{next(iter(products['cubes'].values()))}'))\"")
    return 0


def _cmd_ingest(args: argparse.Namespace) -> int:
    from flows.ingest import ingest_flow
    from tasks.adhoc import adhoc_catalog, adhoc_cube_name, build_adhoc_catalog

    options = dict(
        crs=args.crs, resolution=args.resolution, chunks=args.chunks, time_chunk=args.time_chunk,
        bounds=tuple(args.bounds) if args.bounds else None, bounds_crs=args.bounds_crs, aoi=args.aoi,
        date={k: v for k, v in (("pattern", args.date_pattern), ("format", args.date_format),
                                ("default", args.date)) if v is not None},
        band_files=args.band_files,
        select=[b.strip() for b in args.bands.split(",") if b.strip()] if args.bands else None,
        layers=_layers(args.layer), changed_scenes=args.changed_scenes,
        units={k: v for k, v in (("scale", args.scale), ("offset", args.offset), ("nodata", args.nodata),
                                 ("valid_range", args.valid_range)) if v is not None},
    )
    if args.dry_run:
        return _ingest_dry_run(*build_adhoc_catalog(args.paths, Path(args.out), **options))
    catalog_path = adhoc_catalog(args.paths, Path(args.out), **options)
    cube = adhoc_cube_name(args.out)
    report = ingest_flow(str(catalog_path), cube, progress_bar=True)
    _print_report(report)
    if options["layers"] and report["time_steps"]:  # a cube made before: add the layers it lacks
        from tasks.catalog import load_catalog
        from tasks.ingest import add_static_layers

        added, bad = add_static_layers(load_catalog(catalog_path), cube)
        for name in added:
            print(f"layer {name} added to {args.out}")
        for q in bad:
            print(f"  quarantined {q['scene']}: {q['reason']}")
    import shlex

    if not report["time_steps"]:  # no cube: the quarantine reasons above say what to change
        print(f"catalog written beside where the cube goes ({catalog_path}); run the command again with what "
              "the reasons above ask for")
        return 1
    print(f"catalog written beside the cube (run again to add new files; `fusioncube run {shlex.quote(cube)} "
          f"--catalog {shlex.quote(str(catalog_path))}` also runs the stages it lists)")
    return 0


def _layers(specs: list[str] | None) -> dict[str, str]:
    """``["landcover=nlcd.tif"]`` -> ``{"landcover": "nlcd.tif"}``."""
    layers = {}
    for spec in specs or []:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--layer {spec!r}: expected NAME=FILE, e.g. --layer landcover=nlcd_2019.tif")
        layers[name.strip()] = path.strip()
    return layers


def _ingest_dry_run(raw: dict[str, Any], path: Path) -> int:
    """What `fusioncube ingest` would do with these files: bands, mask, scenes, grid; nothing written."""
    from tasks.catalog import catalog_from_dict
    from tasks.cube import crs_label
    from tasks.ingest import cube_grid, grid_of_cube, plan_ingest, scenes_within, warn_future_dates

    catalog = catalog_from_dict(raw, path=path)
    cube = next(iter(catalog.cubes))
    plan = plan_ingest(catalog, cube)
    warn_future_dates(plan)
    existing = catalog.cube_path(cube).exists()
    g = None
    if plan.new:
        if existing:
            g = grid_of_cube(catalog.cube_path(cube))
        else:
            g, plan = cube_grid(catalog.cube(cube), plan, name=cube)
        plan = scenes_within(plan, g)
    refs = [r for group in plan.new for r in group]
    print("dry run: nothing is written")
    sources = catalog.cube(cube).sources
    for name in sources:  # one, or one per sensor of a mixed archive (tasks.adhoc.Sensor)
        source = catalog.source(name)
        indent = "  "
        if len(sources) > 1:
            print(f"  source {name}: {', '.join(source.glob)}")
            indent = "    "
        for b in source.bands:
            extra = "".join(f", {k} {v:g}" for k, v in (("scale", b.scale), ("offset", b.offset)) if v != (k == "scale"))
            nodata = f", nodata {b.nodata:g}" if b.nodata is not None else ", nodata: each file's own"
            bounds = "".join(f", valid {k} {v:g}" for k, v in (("min", b.valid_min), ("max", b.valid_max))
                             if v is not None)
            print(f"{indent}band {b.name}: {f'file {b.file!r}' if b.file else f'band {b.index}'}{extra}{nodata}{bounds}")
        if source.radiometry:
            print(f"{indent}units: per scene, from each scene's product metadata ({source.radiometry})")
        if source.band_files:
            print(f"{indent}one file per band, grouped by {source.band_files!r}")
        if source.mask is not None:
            rule = source.mask.model_dump(exclude_none=True, exclude={"sidecar"})
            side = source.mask.sidecar
            print(f"{indent}mask: {f'{side.pattern!r} -> {side.replacement!r}, ' if side else ''}{rule}")
    for name, layer_source in catalog.cube(cube).static.items():
        print(f"  layer {name}: {catalog.source(layer_source).glob[0]} (class map, warped by majority)")
    if refs and g is not None:
        dates = sorted({r.date.date() for r in refs if r.date})
        span = f" on {len(dates)} date(s), {dates[0]} .. {dates[-1]}" if dates else ""
        where = "the cube's" if existing else "given" if catalog.cube(cube).grid else "the first scene's"
        print(f"  {len(refs)} new scene(s){span}; grid ({where}): {crs_label(g.crs)}, "
              f"{abs(g.transform.a):g} x {abs(g.transform.e):g}, {g.width} x {g.height} px, bounds "
              f"{[round(v, 6) for v in g.bounds]}")
    if not refs:
        print("  no new scene" + (" (the cube has every matching scene)" if existing else ""))
    for row in plan.skipped:
        print(f"  would skip {row['scene']}: {row['reason']}")
    for row in plan.quarantined:
        print(f"  would quarantine {row['scene']}: {row['reason']}")
    print(f"the catalog would be written to {path}")
    return 0 if refs else 1


REPORT_ROWS = 20  # quarantined / skipped scenes printed one per line, each


def _print_report(report: dict[str, Any]) -> None:
    counts = (f"{len(report['ingested'])} scenes ingested, {len(report['skipped'])} skipped, "
              f"{len(report['quarantined'])} quarantined")
    if not report["time_steps"] and not Path(report["path"]).exists():  # nothing taken: no cube made
        print(f"no cube written at {report['path']}: no scene was taken ({counts}; the reasons below)")
    else:
        updated, rebuilt = len(report.get("dates_updated", [])), len(report.get("dates_replaced", []))
        print(f"cube {report['path']}: {report['time_steps']} time steps ({len(report['dates_added'])} new"
              f"{f', {updated} updated with late scenes' if updated else ''}"
              f"{f', {rebuilt} rebuilt from changed scenes' if rebuilt else ''}), {counts}"
              f"{'; rewritten in date order (older dates were added)' if report.get('reordered') else ''}")
    for kind in ("quarantined", "skipped"):  # the first of each; a year of hourly steps is no list to read
        rows = report[kind]
        for row in rows[:REPORT_ROWS]:
            print(f"  {kind} {row['scene']}: {row['reason']}")
        if len(rows) > REPORT_ROWS:
            print(f"  ... and {len(rows) - REPORT_ROWS} more {kind}")
    if report.get("quicklook"):
        print(f"quick-look: {report['quicklook']}")


def _dates(args: argparse.Namespace) -> tuple[date | None, date | None]:
    try:
        start, end = (date.fromisoformat(args.start) if args.start else None,
                      date.fromisoformat(args.end) if args.end else None)
    except ValueError as exc:
        raise CatalogError(f"--start/--end must be dates like 2019-07-01: {exc}") from exc
    if start is not None and end is not None and start > end:
        raise CatalogError(f"--start {start} is after --end {end}: no date is in that range")
    return start, end


def _warn_unmatched_sources(catalog: Any, cube: str) -> None:
    """A source of ``cube`` (a static layer's too) whose globs match no file, said before the run:
    a moved archive or a typo in a layer's path otherwise reads as "nothing new"."""
    from tasks.discover import expand_globs

    spec = catalog.cube(cube)
    for name in dict.fromkeys([*spec.sources, *spec.static.values()]):
        source = catalog.source(name)
        if not expand_globs(source.glob, catalog):
            where = ", ".join(str(catalog.resolve(g)) for g in source.glob)
            print(f"warning: source {name} of cube {cube}: no file matches {where} (check the path and the "
                  "environment variables it uses)", file=sys.stderr)


def _cmd_run(args: argparse.Namespace) -> int:
    from flows.pipeline import pipeline_up_to_date, run_pipeline
    from tasks.catalog import load_catalog

    start, end = _dates(args)
    stages = None if args.stages is None else [s for s in args.stages.split(",") if s]
    catalog = load_catalog(args.catalog)
    if (problem := catalog.stage_dir_problem(args.cube)) is not None:  # before Prefect and Dask start
        raise CatalogError(problem)
    _warn_unmatched_sources(catalog, args.cube)
    # a run with nothing to do (a schedule's usual case) is answered from the manifests, in seconds
    products = None if args.rerun else pipeline_up_to_date(catalog, args.cube, start, end, stages)
    checked_only = products is not None
    if products is None:
        try:
            products = run_pipeline(args.catalog, args.cube, start=start, end=end, stages=stages,
                                    dask_address=args.dask_address, workers=args.workers,
                                    backfill=args.command == "backfill", concurrency=args.concurrency)
        except StagesFailed as exc:
            products = exc.products
    print(products["summary"]["headline"])
    if checked_only:
        print("  (checked from the manifests, no flow run: no new scene, every stage's artifact current or "
              "waiting for data; --rerun runs the Prefect flow anyway)")
    for w in products["summary"]["warnings"]:
        print(f"  warning: {w}")
    for name, r in products["stages"].items():
        print(f"  {name:<10} {products['summary']['stages'][name]:<7} {r.get('artifact') or ''}")
    failed = [name for name, r in products["stages"].items() if "error" in r]
    if failed:
        rest = "the others finished" if len(failed) < len(products["stages"]) else "no stage finished"
        print(f"fusioncube: error: stage(s) {', '.join(failed)} failed (above); {rest}", file=sys.stderr)
        return 1
    if not products["ingest"]["time_steps"]:
        print(f"fusioncube: error: no cube {args.cube!r} to run stages on (above)", file=sys.stderr)
        return 1
    if stages is None and set(products["stages"]) <= {"patch"}:
        print(f"  (no stage after patching is configured for cube {args.cube!r}: pass --stages gapfill,anomalies,... "
              f"or list them under cubes.{args.cube}.stages in {args.catalog})")
    return 0


def _cmd_stage_patch(args: argparse.Namespace) -> int:
    from tasks.info import describe
    from tasks.patch import fit_patch_size, make_patches

    size, stride = (args.size, args.stride) if args.size is not None else fit_patch_size(args.cube, 32, args.stride)
    make_patches(
        args.cube, args.out, size=size, stride=stride, block=args.block,
        seed=args.seed, overwrite=args.overwrite, progress=True,
    )
    print("\n".join(describe(args.out)))
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from tasks.info import describe

    print("\n".join(describe(args.cube)))
    if args.png:
        from tasks.info import quicklook

        print(f"quick-look: {quicklook(args.cube, args.png)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from tasks.export import export_cube

    files = export_cube(args.cube, args.out, dates=args.date, start=args.start, end=args.end,
                        bands=args.bands.split(",") if args.bands else None, keep_invalid=args.keep_invalid,
                        static=not args.no_static)
    print(f"{len(files)} Cloud-Optimized GeoTIFF(s) in {args.out}: {files[0].name}"
          + (f" .. {files[-1].name}" if len(files) > 1 else ""))
    return 0


def _cmd_catalog_check(args: argparse.Namespace) -> int:
    from tasks.info import describe_catalog

    print("\n".join(describe_catalog(args.path)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    quick = args.quick or args.size == "quick"
    if args.flow:  # a Prefect flow run: report and figure published as artifacts (flows.bench)
        from flows.bench import benchmark_flow

        result = benchmark_flow(args.which, str(args.out), quick=quick)
        print(json.dumps(result["summary"], indent=2))
        print(f"artifacts: {', '.join(result['artifacts'].values())}")
    else:
        module = importlib.import_module(f"benchmarks.{args.which}")
        result = module.run(Path(args.out), quick=quick)
        print(json.dumps(result.get("summary", result), indent=2))
    print(f"written: {args.out} and {Path(args.out).with_suffix('.md')}")
    return 0


def _benchmarks() -> list[str]:
    """The modules of ``benchmarks/`` (each has ``run(out, *, quick)``)."""
    import pkgutil

    import benchmarks

    return sorted(m.name for m in pkgutil.iter_modules(benchmarks.__path__) if not m.name.startswith("_"))


def build_parser(stages: Sequence[str] = STAGE_MODULES) -> argparse.ArgumentParser:
    """The command line's parser, with the ``stage`` sub-commands of the modules ``stages``
    (default: every stage; :func:`main` takes those its arguments name, :func:`stage_modules`)."""
    p = argparse.ArgumentParser(
        prog="fusioncube",
        description=__doc__.split("\n\n")[0],
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO (Prefect logs included)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="run the main job on the built-in sample area")
    d.add_argument("--out", default="fusioncube-demo", help="folder for everything (default: ./fusioncube-demo)")
    d.add_argument("--size", default="demo", choices=["small", "demo", "bench"])
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--catalog", default=None, help="catalog to use (default: the repository's data_catalog.yaml)")
    d.add_argument("--rerun", action="store_true", help="run the flow even when everything is up to date")
    d.set_defaults(func=_cmd_demo)

    i = sub.add_parser("ingest", help="build a cube from your own GDAL-readable rasters")
    i.add_argument("paths", nargs="+", help="files, globs or folders (GeoTIFF, COG, JPEG 2000, NetCDF, ...)")
    i.add_argument("--out", required=True, help="the cube to create or append to (.zarr)")
    i.add_argument("--crs", default=None, help="target CRS (default: the first scene's)")
    i.add_argument("--resolution", type=float, default=None, help="target pixel size in CRS units")
    i.add_argument("--bounds", type=float, nargs=4, default=None, metavar=("XMIN", "YMIN", "XMAX", "YMAX"),
                   help="the area the cube covers (default: the scenes' union), in the grid's CRS "
                        "unless --bounds-crs names another; scenes outside it are skipped")
    i.add_argument("--bounds-crs", default=None, help="CRS of --bounds, e.g. EPSG:4326 for lon / lat")
    i.add_argument("--aoi", default=None, metavar="FILE",
                   help="the area the cube covers: the extent of a GeoJSON file (lon / lat) or of a raster")
    i.add_argument("--chunks", type=int, default=256, help="spatial chunk size (default 256)")
    i.add_argument("--time-chunk", type=int, default=1, help="time steps per chunk (default 1)")
    i.add_argument("--date-pattern", default=None,
                   help="regex on the file name with a named group (?P<date>...) when dates are "
                        "written another way (default: ISO 8601 dates, YYYYDDD, metadata)")
    i.add_argument("--date-format", default=None, help="strptime format of the --date-pattern group")
    i.add_argument("--date", default=None, metavar="YYYY-MM-DD",
                   help="date of the files whose name and metadata carry none (e.g. one undated scene)")
    i.add_argument("--band-files", default=None, metavar="REGEX",
                   help="products stored one file per band: regex on the file name with a group "
                        "(?P<band>...); files differing only there are one scene (default: band names "
                        "such as Landsat _SR_B4, Sentinel-2 _B8A, HLS .B04 are recognised)")
    i.add_argument("--bands", default=None, metavar="NAMES",
                   help="comma-separated bands to take, by name as --dry-run lists them (default: all)")
    i.add_argument("--layer", action="append", metavar="NAME=FILE",
                   help="a class map (e.g. land cover) to add as the static layer NAME, warped onto the "
                        "cube's grid by majority; repeatable (stage classify / labels train on it)")
    i.add_argument("--changed-scenes", choices=["keep", "replace"], default=None,
                   help="a file that changed since it was ingested (a re-processed delivery): keep what the "
                        "cube holds and say so (keep), or rebuild its date from the files as they are now "
                        "(replace); stored in the catalog beside the cube for later runs (default: what it "
                        "says there, else keep)")
    i.add_argument("--scale", type=float, default=None,
                   help="physical value = raw x SCALE + OFFSET for every band, overriding what the files "
                        "declare (e.g. 0.0001 for MODIS NDVI or reflectance stored as integers)")
    i.add_argument("--offset", type=float, default=None, help="see --scale (default 0)")
    i.add_argument("--nodata", type=float, default=None,
                   help="raw value that marks no data in every band, overriding the files' own (e.g. -3000)")
    i.add_argument("--valid-range", type=float, nargs=2, default=None, metavar=("MIN", "MAX"),
                   help="physical values outside MIN .. MAX are not observed (fill and out-of-range "
                        "values, e.g. -0.2 1 for NDVI), masked before any warp")
    i.add_argument("--dry-run", action="store_true",
                   help="show the bands, mask, scenes and grid it would use; write nothing")
    i.set_defaults(func=_cmd_ingest)

    s = sub.add_parser("stage", help="run one stage on any schema-following cube")
    ss = s.add_subparsers(dest="stage", required=True)
    sp = ss.add_parser("patch", help="cube -> patches.zarr with a spatial-block train/val/test split")
    sp.add_argument("--cube", required=True)
    sp.add_argument("--out", required=True)
    sp.add_argument("--size", type=int, default=None,
                    help="patch side in px (default 32, or the cube's smaller side when it is smaller)")
    sp.add_argument("--stride", type=int, default=None,
                    help="step between patches in px (default: the size, no overlap)")
    sp.add_argument("--block", type=int, default=4,
                    help="side of the split's spatial blocks, in patches (default 4; smaller when the cube "
                         "is too small for every split to get a block)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the blocks' train/val/test draw")
    sp.add_argument("--overwrite", action="store_true")
    sp.set_defaults(func=_cmd_stage_patch)
    for module in stages:
        importlib.import_module(module).add_cli(ss)

    for name, help_ in (("run", "the pipeline for one cube: new scenes -> cube -> patches -> its stages (Dask)"),
                        ("backfill", "ingest an archive's date range in parallel (resumable), then the stages")):
        r = sub.add_parser(name, help=help_)
        r.add_argument("cube", help="cube name in the catalog")
        r.add_argument("--catalog", default="data_catalog.yaml")
        r.add_argument("--start", default=None, help="first date (YYYY-MM-DD) of scenes to take")
        r.add_argument("--end", default=None, help="last date (YYYY-MM-DD) of scenes to take")
        r.add_argument("--stages", default=None, help="comma-separated stages (default: the catalog's for the cube)")
        r.add_argument("--dask-address", default=None, help="existing Dask scheduler (default: a local cluster)")
        r.add_argument("--workers", type=int, default=None, help="local Dask workers (default: cores)")
        r.add_argument("--concurrency", type=int, default=4, help="ingest parts in flight at once (default 4)")
        r.add_argument("--rerun", action="store_true",
                       help="run the Prefect flow even when nothing is new (by default such a run is answered "
                            "from the manifests, without starting Prefect or Dask)")
        r.set_defaults(func=_cmd_run)

    inf = sub.add_parser("info", help="what a cube or a stage's product holds (and whether the stages can read a cube)")
    inf.add_argument("cube", help="a cube (.zarr, made by fusioncube or any other tool) or a stage's product")
    inf.add_argument("--png", default=None, metavar="OUT.png",
                     help="also write a quick-look: a cube's newest clear value per pixel (true colour when "
                          "it can; a gap-filled cube's newest date with filled pixels, those veiled), a class map "
                          "beside its confidence, or the anomalies' strongest dates")
    inf.set_defaults(func=_cmd_info)

    ex = sub.add_parser("export", help="a cube's dates as Cloud-Optimized GeoTIFFs (one per date)")
    ex.add_argument("cube", help="any schema-following cube (ingest's, gapfill's filled.zarr, ...), or "
                                 "anomalies.zarr (bands score, flag, background)")
    ex.add_argument("--out", required=True, help="folder for CUBE_YYYY-MM-DD.tif")
    ex.add_argument("--date", action="append", metavar="YYYY-MM-DD", help="a date to export; repeatable")
    ex.add_argument("--start", default=None, metavar="YYYY-MM-DD", help="first date to export")
    ex.add_argument("--end", default=None, metavar="YYYY-MM-DD", help="last date to export")
    ex.add_argument("--bands", default=None, help="comma-separated band names (default: all)")
    ex.add_argument("--keep-invalid", action="store_true",
                    help="keep the values where 'valid' is false (default: NaN, the nodata; a gap-filled "
                         "cube's filled pixels are always kept)")
    ex.add_argument("--no-static", action="store_true",
                    help="leave out the cube's static layers (default: each as CUBE_LAYER.tif, a class "
                         "layer with its colour table and class names)")
    ex.set_defaults(func=_cmd_export)

    c = sub.add_parser("catalog", help="catalog tools")
    cs = c.add_subparsers(dest="catalog_command", required=True)
    cc = cs.add_parser("check", help="validate a catalog and say what it defines")
    cc.add_argument("path", nargs="?", default="data_catalog.yaml")
    cc.set_defaults(func=_cmd_catalog_check)

    b = sub.add_parser("bench", help="benchmarks (JSON + markdown)")
    b.add_argument("which", choices=_benchmarks())
    b.add_argument("--out", required=True, help="JSON file to write")
    b.add_argument("--quick", action="store_true", help="CI-sized run (seconds); same as --size quick")
    b.add_argument("--size", choices=["quick", "default"], default="default",
                   help="benchmark size: 'default' (minutes) or 'quick' (CI-sized)")
    b.add_argument("--flow", action="store_true",
                   help="run as a Prefect flow: the report and figure (e.g. the rate-distortion "
                        "plot) become artifacts in the UI")
    b.set_defaults(func=_cmd_bench)

    importlib.import_module("flows.serve").add_cli(sub)  # fusioncube serve
    return p


#: The project's packages: their loggers log at INFO under -v.
PROJECT_LOGGERS = ("fusioncube", "flows", "tasks", "fusion_models", "benchmarks")

#: What a user gets as one line ("fusioncube: error: ..."): bad arguments, catalogs, files, cubes.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, CheckpointError)


class _InputErrorConsoleFilter(logging.Filter):
    """Without ``-v``, keep Prefect's report of a flow or task that failed on bad input (its
    traceback, then its "Finished in state Failed(...)" lines) off the terminal: the command prints
    the error as one line that names the file or key. The run's logs in the Prefect UI keep it all
    (the filter sits on the console handler only)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR or not record.name.startswith(("prefect.task_runs", "prefect.flow_runs")):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (*USER_ERRORS, StagesFailed)):  # the command prints these itself
            self.messages.add(str(exc))
            return False
        text = record.getMessage()
        return not any(m and m in text for m in self.messages)


class _OnceFilter(logging.Filter):
    """Pass each distinct message once: GDAL repeats a warning about a file (e.g. "The definition
    of geographic CRS EPSG:4326 got from GeoTIFF keys is not the same as the one from the EPSG
    registry") at every open of it, and a command opens a file several times."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


#: set while a command runs without ``-v``: Dask workers it starts quiet their consoles the same way
QUIET_ENV = "FUSIONCUBE_QUIET_INPUT_ERRORS"


def quiet_input_errors() -> None:
    """Put :class:`_InputErrorConsoleFilter` on the console handlers Prefect installs on the root
    (also called by ``flows.worker_preload`` in the Dask workers of a quiet command)."""
    # Prefect's logging config puts its console handler on the root; `import prefect` alone may not
    # have run it yet (Prefect 3 imports lazily), and a later run would then add an unfiltered one
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _InputErrorConsoleFilter) for f in handler.filters):
            handler.addFilter(_InputErrorConsoleFilter())


def probe_writable(out: str | Path) -> None:
    """Raise ``OSError`` naming ``out`` when nothing can be written where it goes (its nearest
    existing folder: a read-only mount, no permission): before the work, not after it."""
    if "://" in str(out):  # a remote store: its own client reports
        return
    import tempfile

    where = Path(out).absolute()
    while not where.is_dir() and where != where.parent:
        where = where.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=".fusioncube-probe-", dir=where)
    except OSError as exc:
        raise OSError(exc.errno, f"{out}: cannot write there: {exc.strerror}"
                      + ("" if where == Path(out).absolute() else f" ({where})")) from None
    os.close(fd)
    os.unlink(probe)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, `kill`, a service manager's stop), raised where the command is: its
    temporaries are removed on the way out, as for Ctrl-C, instead of left beside the outputs."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated


def main(argv: list[str] | None = None) -> int:
    quiet_defaults()  # before any import reads the settings (Prefect's, Dask's config)
    previous = None
    if threading.current_thread() is threading.main_thread():  # main() is a library call too
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = build_parser(stage_modules(sys.argv[1:] if argv is None else argv)).parse_args(argv)
    if args.verbose:
        os.environ["PREFECT_LOGGING_LEVEL"] = "INFO"
        os.environ["DASK_LOGGING__DISTRIBUTED"] = "info"
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Prefect's logging setup leaves the root at WARNING (basicConfig is then a no-op): with -v the
    # project's own loggers get INFO themselves, for this command only (main() is also a library
    # call: tests, notebooks)
    before = {name: logging.getLogger(name).level for name in PROJECT_LOGGERS}
    gdal_log, once = logging.getLogger("rasterio._env"), _OnceFilter()
    gdal_log.addFilter(once)
    if args.verbose:
        for name in PROJECT_LOGGERS:
            logging.getLogger(name).setLevel(logging.INFO)
    else:
        quiet_input_errors()
        os.environ[QUIET_ENV] = "1"  # local Dask workers inherit it (flows.worker_preload)
        # a scene without georeferencing is refused with its name and reason (quarantine, or the
        # grid error); rasterio's warning at each open of it says the same, less clearly
        import warnings

        from rasterio.errors import NotGeoreferencedWarning

        warnings.filterwarnings("ignore", category=NotGeoreferencedWarning)
    try:
        if getattr(args, "out", None) and not getattr(args, "dry_run", False):
            probe_writable(args.out)  # before minutes of work whose result could not be written
        return int(args.func(args) or 0)
    except (CatalogError, CubeSchemaError, CheckpointError, FileNotFoundError, FileExistsError) as exc:
        print(f"fusioncube: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        stopped = "stopped (SIGTERM)" if isinstance(exc, _Terminated) else "interrupted"
        print(f"\nfusioncube: {stopped}; nothing finished is lost: run the same command again to go on "
              "(finished parts, stage outputs and anomaly detection's finished tile rows are reused)", file=sys.stderr)
        return 143 if isinstance(exc, _Terminated) else 130
    except OSError as exc:  # read-only or full storage, a vanished mount: the OS's reason, with the path
        if args.verbose:
            raise
        text = f"{exc.filename}: {exc.strerror}" if exc.filename and exc.strerror else exc.strerror or str(exc)
        print(f"fusioncube: error: {text}\n(the outputs already written are unchanged; fusioncube -v ... "
              "shows the traceback)", file=sys.stderr)
        return 1
    except ValueError as exc:  # a bad argument or input file: its message names it
        if args.verbose:
            raise
        print(f"fusioncube: error: {exc}\n(fusioncube -v ... shows the traceback)", file=sys.stderr)
        return 2
    finally:
        os.environ.pop(QUIET_ENV, None)
        gdal_log.removeFilter(once)
        for name, old_level in before.items():
            logging.getLogger(name).setLevel(old_level)


if __name__ == "__main__":
    sys.exit(main())
