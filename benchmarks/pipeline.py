"""Pipeline benchmark: the demo chain's first run and no-op re-run, and the speed-up of two Dask
workers over one on ingest.

One run (default; ``--quick`` uses the ``small`` sample area for everything):

- the demo chain (sample area -> both cubes -> patches -> every enabled stage, one Prefect flow
  run) on the ``demo`` sample area: wall time of the first run and of a re-run with nothing new;
- ingest of the Planet cube of the ``bench`` sample area through the pipeline's ingest steps
  (parts on Dask workers, attached in date order) on a local Dask cluster of one single-threaded
  worker process, then of two, into fresh stores; the time from plan to finished manifest, so
  the cluster's start-up is not counted (the cluster is started and its workers are up before
  the flow starts). Both cut the archive into the same parts. The machine is shared and noisy,
  so the default size runs each cluster size twice, in the order 1, 2, 2, 1, and keeps the faster
  run of each (all times are in the JSON).

    fusioncube bench pipeline --out pipeline.json [--size quick]
    python -m benchmarks.pipeline --out pipeline.json --sample DIR   # keeps the bench sample area
"""

from __future__ import annotations

import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._cli import write_result

REPO = Path(__file__).resolve().parents[1]
CATALOG = REPO / "data_catalog.yaml"


def _demo_chain(root: Path, size: str) -> dict[str, float]:
    from flows.demo import demo_flow

    t0 = time.perf_counter()
    demo_flow(str(root), size, 0)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = demo_flow(str(root), size, 0)
    rerun = time.perf_counter() - t0
    if not again["sample"]["reused"]:
        raise RuntimeError("the re-run regenerated the sample area; the benchmark is not measuring a no-op run")
    return {"first_run_s": first, "rerun_s": rerun}


def _ingest_on_dask(sample: Path, data: Path, workers: int, concurrency: int) -> dict[str, Any]:
    from distributed import LocalCluster

    from flows.ingest import ingest_flow
    from flows.pipeline import dask_task_runner, local_cluster_kwargs, one_prefect_api

    env = {"FUSIONCUBE_SAMPLE": str(sample), "FUSIONCUBE_DATA": str(data)}
    # the pipeline's own local cluster, started and its workers up before the flow's clock starts
    with LocalCluster(**local_cluster_kwargs(workers)) as cluster, one_prefect_api():
        cluster.wait_for_workers(workers, timeout=300)
        runner = dask_task_runner(address=cluster.scheduler_address)
        report = ingest_flow.with_options(task_runner=runner)(str(CATALOG), "planet", env=env,
                                                              concurrency=concurrency)
    return {"seconds": report["seconds"], "time_steps": report["time_steps"], "parts": report["parts"],
            "mb_decoded": report["bytes_decoded"] / 1e6}


def run(out: Path, *, quick: bool = False, sample: Path | None = None) -> dict[str, Any]:
    """The benchmark; ``sample``: keep the ingest runs' sample area there and reuse it next time
    (generating the ``bench`` one takes minutes)."""
    from tasks.sample_area import generate_sample_area

    demo_size, ingest_size = ("small", "small") if quick else ("demo", "bench")
    work = Path(tempfile.mkdtemp(prefix="fusioncube-bench-pipeline-"))
    try:
        chain = _demo_chain(work / "demo", demo_size)
        sample = sample or work / "ingest-sample"
        generate_sample_area(sample, size=ingest_size, seed=0, progress=True)
        concurrency = 4
        # the machine is shared and noisy: in the default size each cluster size runs twice, in
        # the order 1, 2, 2, 1 (neither size always goes first), and its faster run is kept
        trials: dict[int, list[dict[str, Any]]] = {}
        for i, n in enumerate((1, 2) if quick else (1, 2, 2, 1)):
            trials.setdefault(n, []).append(_ingest_on_dask(sample, work / f"ingest-{i}", n, concurrency))
            shutil.rmtree(work / f"ingest-{i}", ignore_errors=True)
        runs = {n: {**min(ts, key=lambda r: r["seconds"]), "all_seconds": [round(r["seconds"], 2) for r in ts]}
                for n, ts in trials.items()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if runs[1]["parts"] != runs[2]["parts"] or runs[1]["time_steps"] != runs[2]["time_steps"]:
        raise RuntimeError(f"the two ingest runs differ: {runs}")
    summary = {
        "first_run_s": round(chain["first_run_s"], 2),
        "rerun_s": round(chain["rerun_s"], 2),
        "rerun_ratio": round(chain["rerun_s"] / chain["first_run_s"], 4),
        "dask_speedup_2_workers": round(runs[1]["seconds"] / runs[2]["seconds"], 3),
        "ingest_mb_s_1_worker": round(runs[1]["mb_decoded"] / runs[1]["seconds"], 1),
        "ingest_mb_s_2_workers": round(runs[2]["mb_decoded"] / runs[2]["seconds"], 1),
    }
    result = {
        "benchmark": "pipeline",
        "summary": summary,
        "targets": {"rerun_ratio": "<= 0.2", "dask_speedup_2_workers": ">= 1.5"},
        "data": {"demo_chain_sample": demo_size, "ingest_sample": ingest_size, "ingest": runs,
                 "parts_in_flight": concurrency},
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_result(out, result, indent=2)
    md = [
        "# Pipeline benchmark", "",
        f"Demo chain on the `{demo_size}` sample area; ingest speed-up on the `{ingest_size}` sample area's "
        f"Planet cube ({runs[1]['time_steps']} dates, {runs[1]['mb_decoded']:.0f} MB decoded, "
        f"{runs[1]['parts']} parts, {concurrency} in flight). Machine: {os.cpu_count()} cores.", "",
        "| figure | value | target |", "|---|---|---|",
        f"| demo chain, first run | {summary['first_run_s']} s | |",
        f"| demo chain, re-run with nothing new | {summary['rerun_s']} s | |",
        f"| re-run / first run | {summary['rerun_ratio']} | <= 0.2 |",
        f"| ingest, 1 Dask worker (runs: {runs[1]['all_seconds']} s) | {runs[1]['seconds']:.1f} s "
        f"({summary['ingest_mb_s_1_worker']} MB/s) | |",
        f"| ingest, 2 Dask workers (runs: {runs[2]['all_seconds']} s) | {runs[2]['seconds']:.1f} s "
        f"({summary['ingest_mb_s_2_workers']} MB/s) | |",
        f"| speed-up of 2 workers over 1 | {summary['dask_speedup_2_workers']} | >= 1.5 |",
    ]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    from benchmarks._cli import bench_parser, report

    return report(run, bench_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
