"""The command line every benchmark module shares: ``python -m benchmarks.NAME --out F.json``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["MODIS", "bench_parser", "modis_ndvi_cube", "report", "torch_machine", "write_result"]

#: the real MODIS NDVI fixture (Sinop, 12 JPEG 2000 dates), beside the clone
MODIS = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "real" / "modis_ndvi_sinop"


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """``--out``, ``--quick`` and ``--sample`` (keep / reuse the generated sample area there)."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="CI size (under a minute)")
    parser.add_argument("--sample", type=Path, default=None, help="keep/reuse the sample area here")
    return parser


def report(run: Callable[..., dict[str, Any]], args: argparse.Namespace, **extra: Any) -> int:
    """Run the benchmark with INFO logging and print its summary and targets."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    result = run(args.out, quick=args.quick, sample=args.sample, **extra)
    print(json.dumps(result["summary"], indent=2))
    print(json.dumps(result.get("targets", {}), indent=2))
    return 0


def write_result(out: Path, result: dict[str, Any], **dumps: Any) -> None:
    """Write a benchmark's ``result`` as JSON to ``out``, with the software and machine it ran on
    (``environment``: fusioncube's version and git commit, Python, the libraries with GDAL and
    PROJ, the CPUs, torch's threads and when: :func:`tasks.provenance.environment`)."""
    from tasks.provenance import environment

    result.setdefault("environment", environment())
    out.write_text(json.dumps(result, **dumps))


def torch_machine() -> dict[str, Any]:
    """Where a torch benchmark ran: platform, CPU, Python, torch, numpy and torch's threads."""
    import platform

    import numpy as np
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads()}


def modis_ndvi_cube(out: Path) -> Path:
    """Ingest the real MODIS NDVI fixture into a cube at ``out`` (through the real ingest) and
    return its path. int16 NDVI x 1e-4; MOD13Q1's fill (-3000, altered by the lossy JPEG 2000) and
    values outside its valid range (-2000 .. 10000) are not NDVI: NaN, not observed, never scored."""
    from tasks.adhoc import adhoc_catalog
    from tasks.catalog import load_catalog
    from tasks.ingest import ingest_cube

    if not sorted(MODIS.glob("*.jp2")):
        raise FileNotFoundError(f"{MODIS}: no *.jp2 (the real MODIS NDVI fixture); the benchmark "
                                "reads it from ../shared/fixtures/real beside the clone")
    catalog = load_catalog(adhoc_catalog([str(MODIS / "*.jp2")], Path(out),
                                         units={"scale": 1e-4, "valid_range": (-0.2, 1.0)}))
    (name,) = catalog.cubes  # the ad hoc catalog's one cube, named after ``out``
    return Path(ingest_cube(catalog, name, workers=2).path)
