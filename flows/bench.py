"""A benchmark as a Prefect flow run: ``fusioncube bench NAME --out F.json --flow``.

The benchmark (``benchmarks/NAME.py``, its ``run(out, *, quick)``) writes ``F.json``, ``F.md`` and,
where it draws one, ``F.png`` as always; run as a flow, its report and figure are also published
as Prefect artifacts, so a benchmark run sits in the UI beside the pipeline's runs:

- ``bench-NAME`` (markdown): the benchmark's markdown report (tables, summary, targets);
- ``bench-NAME-png`` (image): its figure (the rate-distortion curves of ``compress``, the
  before / after / truth quick-look of ``gapfill``, ...), as a data URI.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

__all__ = ["benchmark_flow", "publish_benchmark"]


def publish_benchmark(name: str, out: Path, result: dict[str, Any]) -> dict[str, str]:
    """Publish the report (``out.md``, else the summary and targets) and the figure (``out.png``)
    of a finished benchmark as artifacts of the current flow run; returns their keys."""
    from prefect.artifacts import create_image_artifact, create_markdown_artifact

    from tasks.quicklook import artifact_key, thumbnail_data_uri

    md = out.with_suffix(".md")
    text = md.read_text() if md.exists() else (
        f"# {name}\n\nSummary: `{json.dumps(result.get('summary', {}))}`\n\n"
        f"Targets: `{json.dumps(result.get('targets', {}))}`\n")
    keys = {"report": artifact_key(f"bench-{name}")}
    create_markdown_artifact(markdown=text, key=keys["report"], description=f"benchmark {name}: {out}")
    png = out.with_suffix(".png")
    if png.exists():
        keys["figure"] = artifact_key(f"bench-{name}-png")
        create_image_artifact(image_url=thumbnail_data_uri(png, max_pixels=1200), key=keys["figure"],
                              description=f"benchmark {name}: {png.name}")
    return keys


@flow(name="benchmark")
def benchmark_flow(name: str, out: str, quick: bool = False) -> dict[str, Any]:
    """Run ``benchmarks.<name>`` and publish its report and figure; returns its summary."""
    logger = get_run_logger()
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.run(Path(out), quick=quick)
    keys = publish_benchmark(name, Path(out), result)
    logger.info("benchmark %s: %s; artifacts %s", name, json.dumps(result.get("summary", {})), keys)
    return {"summary": result.get("summary", {}), "targets": result.get("targets", {}), "artifacts": keys}
