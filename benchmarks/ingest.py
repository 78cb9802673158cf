"""Ingest benchmark: throughput against the raw bound, and peak memory against archive length.

One run, on the ``bench`` sample area (``--quick``: ``small``):

- ingest throughput: MB/s of decoded input (the scenes' and their masks' pixels at their stored
  dtype) through the whole ingest (discover, read, Great Expectations validation, warp, mosaic,
  Zarr append, manifests);
- the raw bound on the same scenes: plain rasterio read of the same bands and masks + Zarr write
  of the same bytes with the same chunking and the same number of threads, no warp, no validation;
- peak resident memory of ingest for a short archive and one 4x longer, each in a fresh process;
- a backfill's date-order rewrite (the archive's two oldest dates ingested last): the chunk
  folders hard-linked in their new order (the default one step per time chunk) against every step
  decoded and re-encoded (what a cube chunked several steps deep gets), on copies of one cube.

    python -m benchmarks.ingest --out ingest.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._cli import write_result

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2


def _catalog(sample: Path, data: Path):
    from tasks.catalog import load_catalog

    return load_catalog(REPO / "data_catalog.yaml", env={"FUSIONCUBE_SAMPLE": str(sample), "FUSIONCUBE_DATA": str(data)})


def _scene_files(sample: Path) -> list[tuple[Path, Path]]:
    scenes = sorted((sample / "planet").glob("*_AnalyticMS_SR.tif"))
    return [(s, s.with_name(s.name.replace("_AnalyticMS_SR.tif", "_udm2.tif"))) for s in scenes]


def _first_dates(sample: Path, out: Path, n: int) -> Path:
    """The short archive: links to the first ``n`` dates of a sample area (same scenes, same
    land cover), so the two archive lengths differ only in length."""
    (out / "planet").mkdir(parents=True)
    dates = sorted({p.name.split("_")[1] for p in (sample / "planet").glob("*_AnalyticMS_SR.tif")})[:n]
    for f in (sample / "planet").iterdir():
        if any(f"_{d}_" in f.name for d in dates):
            (out / "planet" / f.name).symlink_to(f)
    (out / "nlcd").symlink_to(sample / "nlcd", target_is_directory=True)
    return out


def decoded_mb(sample: Path) -> float:
    """Decoded size of the inputs ingest reads: all scene bands + the mask band used."""
    import rasterio

    total = 0
    for scene, mask in _scene_files(sample):
        with rasterio.open(scene) as ds:
            total += ds.width * ds.height * ds.count * _itemsize(ds.dtypes[0])
        with rasterio.open(mask) as ds:
            total += ds.width * ds.height * _itemsize(ds.dtypes[0])
    return total / 1e6


def _itemsize(dtype: str) -> int:
    import numpy as np

    return np.dtype(dtype).itemsize


def run_ingest(sample: Path, data: Path) -> dict[str, Any]:
    """Ingest the sample's Planet cube; returns seconds and the report's size figures."""
    from tasks.ingest import ingest_cube
    from tasks.validate import default_validator

    catalog = _catalog(sample, data)
    default_validator()  # import Great Expectations before the clock starts: once per process
    t0 = time.perf_counter()
    report = ingest_cube(catalog, "planet", workers=WORKERS)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "scenes": len(report.ingested), "time_steps": report.time_steps,
            "quarantined": len(report.quarantined)}


def run_raw_bound(sample: Path, out: Path) -> dict[str, Any]:
    """Plain rasterio read + Zarr write of the same bytes, same chunks and threads, no warp."""
    import rasterio
    import zarr

    files = _scene_files(sample)
    group = zarr.open_group(str(out), mode="w", zarr_format=3)

    def one(i: int) -> None:
        """One scene and its mask, each into an array of its own size (scenes have partial
        footprints), chunked like the cube."""
        scene, udm = files[i]
        with rasterio.open(scene) as ds:
            data = ds.read()
        group.create_array(f"scene{i}", shape=data.shape, chunks=(data.shape[0], 256, 256), dtype=data.dtype)[:] = data
        with rasterio.open(udm) as ds:
            mask = ds.read(1)
        group.create_array(f"mask{i}", shape=mask.shape, chunks=(256, 256), dtype=mask.dtype)[:] = mask

    t0 = time.perf_counter()
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(one, range(len(files))))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "files": len(files)}


def run_backfill_sort(sample: Path, work: Path) -> dict[str, Any]:
    """Ingest all but the two oldest dates, then those two (a backfill) with the date-order rewrite
    held back; then time that rewrite on two copies of the unsorted cube, linked and re-encoded."""
    from unittest import mock

    import numpy as np
    import xarray as xr

    import tasks.ingest as ing
    from tasks import cube_store

    dates = sorted({p.name.split("_")[1] for p in (sample / "planet").glob("*_AnalyticMS_SR.tif")})
    third = datetime.strptime(dates[2], "%Y%m%d").date()
    data = work / "backfill"
    ing.ingest_cube(_catalog(sample, data), "planet", workers=WORKERS, start=third)
    with mock.patch.object(ing, "sort_time_axis", lambda state: False):
        ing.ingest_cube(_catalog(sample, data), "planet", workers=WORKERS)
    seconds, cubes = {}, {}
    for way in ("linked", "rewritten"):
        copy = work / f"backfill-{way}"
        shutil.copytree(data, copy)
        catalog = _catalog(sample, copy)
        state = ing._CubeState(catalog, "planet", ing.grid_of_cube(catalog.cube_path("planet")))
        with mock.patch.object(cube_store, "one_step_chunk_folders", lambda arr, way=way: way == "linked"):
            t0 = time.perf_counter()
            assert ing.sort_time_axis(state)
            seconds[way] = time.perf_counter() - t0
        cubes[way] = catalog.cube_path("planet")
    a, b = (xr.open_zarr(cubes[w]) for w in ("linked", "rewritten"))
    same = bool((a["time"].values == b["time"].values).all() and np.array_equal(
        a["data"][[0, -1]].values, b["data"][[0, -1]].values, equal_nan=True))
    steps = a.sizes["time"]
    mb = a["data"].nbytes / 1e6 + a["valid"].nbytes / 1e6
    for w in ("linked", "rewritten"):
        shutil.rmtree(work / f"backfill-{w}")
    shutil.rmtree(data)
    return {"steps": steps, "cube_mb": mb, "seconds": seconds, "same_cube": same}


def _worker(sample: Path, data: Path) -> None:
    """Child process: ingest and print the result with this process's peak RSS."""
    result = run_ingest(sample, data)
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result), flush=True)


def _in_child(sample: Path, data: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "--worker", str(sample), str(data)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"ingest worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def run(out: Path, *, quick: bool = False, seed: int = 0, sample: Path | None = None) -> dict[str, Any]:
    """Run the benchmark and write ``out`` (JSON) and ``out.with_suffix('.md')``.

    ``sample``: keep the generated sample area there and reuse it on the next run (generating the
    ``bench`` size takes minutes); default: a temporary folder, removed afterwards.
    """
    from tasks.sample_area import generate_sample_area

    size = "small" if quick else "bench"
    long_dates = 8 if quick else 16
    short_dates = long_dates // 4
    work = Path(tempfile.mkdtemp(prefix="fusioncube-bench-ingest-"))
    try:
        t0 = time.perf_counter()
        long_root = generate_sample_area(
            sample or work / "long", size=size, seed=seed, n_dates=long_dates, progress=True
        ).root
        gen_seconds = time.perf_counter() - t0
        short_root = _first_dates(long_root, work / "short", short_dates)
        mb_long = decoded_mb(long_root)
        mb_short = decoded_mb(short_root)
        raw = run_raw_bound(long_root, work / "raw.zarr")
        shutil.rmtree(work / "raw.zarr")
        long_run = _in_child(long_root, work / "data-long")
        short_run = _in_child(short_root, work / "data-short")
        shutil.rmtree(work / "data-long", ignore_errors=True)
        backfill = run_backfill_sort(long_root, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    throughput = mb_long / long_run["seconds"]
    raw_bound = mb_long / raw["seconds"]
    summary = {
        "throughput_mb_s": round(throughput, 2),
        "raw_bound_mb_s": round(raw_bound, 2),
        "ratio_vs_raw": round(throughput / raw_bound, 3),
        "peak_rss_mb_short": round(short_run["peak_rss_mb"], 1),
        "peak_rss_mb_long": round(long_run["peak_rss_mb"], 1),
        "rss_ratio_long_vs_short": round(long_run["peak_rss_mb"] / short_run["peak_rss_mb"], 3),
        "backfill_sort_mb_s": round(backfill["cube_mb"] / backfill["seconds"]["linked"], 1),
        "backfill_sort_speedup_vs_reencode": round(backfill["seconds"]["rewritten"] / backfill["seconds"]["linked"], 1),
    }
    result = {
        "benchmark": "ingest",
        "summary": summary,
        "targets": {"ratio_vs_raw": ">= 0.6", "rss_ratio_long_vs_short": "<= 1.3"},
        "data": {
            "sample_size": size, "seed": seed,
            "long": {"dates": long_dates, "scenes": long_run["scenes"], "decoded_mb": round(mb_long, 1),
                     "time_steps": long_run["time_steps"], "quarantined": long_run["quarantined"]},
            "short": {"dates": short_dates, "scenes": short_run["scenes"], "decoded_mb": round(mb_short, 1)},
            "generation_seconds": round(gen_seconds, 1),
            "backfill": {"time_steps": backfill["steps"], "cube_mb_decoded": round(backfill["cube_mb"], 1),
                         "same_cube_both_ways": backfill["same_cube"]},
        },
        "seconds": {"ingest_long": round(long_run["seconds"], 2), "raw_bound": round(raw["seconds"], 2),
                    "ingest_short": round(short_run["seconds"], 2),
                    "backfill_sort_linked": round(backfill["seconds"]["linked"], 3),
                    "backfill_sort_reencoded": round(backfill["seconds"]["rewritten"], 3)},
        "threads": WORKERS,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "versions": _versions(),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result, indent=2)
    out.with_suffix(".md").write_text(_markdown(result))
    return result


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("fusioncube", "rasterio", "zarr", "xarray", "dask", "great_expectations", "numpy")}


def _markdown(r: dict[str, Any]) -> str:
    s = r["summary"]
    d = r["data"]
    return (
        f"# Ingest benchmark ({d['sample_size']} sample, {d['long']['scenes']} scenes, "
        f"{d['long']['decoded_mb']} MB decoded)\n\n"
        "| figure | value | target |\n|---|---|---|\n"
        f"| ingest throughput | {s['throughput_mb_s']} MB/s | |\n"
        f"| raw bound (read + Zarr write, no warp) | {s['raw_bound_mb_s']} MB/s | |\n"
        f"| ratio vs raw | {s['ratio_vs_raw']} | >= 0.6 |\n"
        f"| peak RSS, {d['short']['dates']} dates | {s['peak_rss_mb_short']} MB | |\n"
        f"| peak RSS, {d['long']['dates']} dates | {s['peak_rss_mb_long']} MB | |\n"
        f"| long / short | {s['rss_ratio_long_vs_short']} | <= 1.3 |\n"
        f"| backfill date-order rewrite, {d['backfill']['time_steps']} steps ({d['backfill']['cube_mb_decoded']} MB "
        f"decoded), linked | {s['backfill_sort_mb_s']} MB/s, {s['backfill_sort_speedup_vs_reencode']}x re-encoding "
        f"({r['seconds']['backfill_sort_linked']} s vs {r['seconds']['backfill_sort_reencoded']} s) | |\n\n"
        f"Machine: {r['machine']['platform']}, {r['machine']['cpus']} CPUs; {r['threads']} threads.\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-out/ingest.json"))
    p.add_argument("--quick", action="store_true")
    p.add_argument("--sample", type=Path, default=None, help="keep / reuse the sample area here")
    p.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return 0
    print(json.dumps(run(args.out, quick=args.quick, sample=args.sample)["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
