from __future__ import annotations

import json
from pathlib import Path

from benchmarks.ingest import run


def test_quick_ingest_benchmark_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    result = run(out, quick=True)
    summary = json.loads(out.read_text())["summary"]
    assert summary == result["summary"]
    for key in ("throughput_mb_s", "raw_bound_mb_s", "ratio_vs_raw", "peak_rss_mb_short", "peak_rss_mb_long"):
        assert summary[key] > 0, key
    assert result["data"]["long"]["time_steps"] == result["data"]["long"]["dates"]
    assert result["data"]["long"]["quarantined"] == 0
    assert summary["backfill_sort_mb_s"] > 0 and result["data"]["backfill"]["same_cube_both_ways"]
    assert out.with_suffix(".md").read_text().startswith("# Ingest benchmark")
