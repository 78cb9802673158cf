"""The command line every benchmark module shares: ``python -m benchmarks.NAME --out F.json``."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["bench_parser", "report", "torch_machine"]


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


def torch_machine() -> dict[str, Any]:
    """Where a torch benchmark ran: platform, CPU, Python, torch, numpy and torch's threads."""
    import platform

    import numpy as np
    import torch

    return {"platform": platform.platform(), "processor": platform.processor(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads()}
