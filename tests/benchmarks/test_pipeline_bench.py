"""`fusioncube bench pipeline --size quick`: the demo chain twice and ingest on 1 and 2 Dask workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.pipeline import run


@pytest.mark.slow
def test_quick_pipeline_benchmark_writes_the_issue_keys(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.json"
    result = run(out, quick=True)
    summary = json.loads(out.read_text())["summary"]
    assert summary == result["summary"]
    for key in ("first_run_s", "rerun_s", "rerun_ratio", "dask_speedup_2_workers"):
        assert summary[key] > 0, key
    assert summary["rerun_ratio"] < 1, "the re-run with nothing new was not faster than the first run"
    runs = json.loads(out.read_text())["data"]["ingest"]
    assert runs["1"]["time_steps"] == runs["2"]["time_steps"] > 0 and runs["1"]["parts"] == runs["2"]["parts"]
    assert out.with_suffix(".md").read_text().startswith("# Pipeline benchmark")
