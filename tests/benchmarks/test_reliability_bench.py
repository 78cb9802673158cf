from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import reliability


def test_reliability_benchmark_reports_the_issue_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the full harness runs in tests/reliability; here the benchmark's plumbing with a 2-point campaign
    real = reliability.kill_harness
    monkeypatch.setattr(reliability, "kill_harness", lambda *a, **k: real(*a, **{**k, "points": 2}))
    out = tmp_path / "reliability.json"
    result = reliability.run(out, quick=True)
    summary = json.loads(out.read_text())["summary"]
    assert summary == result["summary"]
    for key in ("kill_points", "kill_points_recovered", "bad_inputs", "bad_inputs_clear_error",
                "bytes_changed_in_existing_stores", "concurrent_runs_ok"):
        assert key in summary, key
    assert summary["kill_points"] == summary["kill_points_recovered"] >= 2  # + the cube-creation point
    assert summary["bad_inputs"] == summary["bad_inputs_clear_error"] >= 25
    assert summary["bytes_changed_in_existing_stores"] == 0
    assert summary["concurrent_runs_ok"] is True
    assert out.with_suffix(".md").read_text().startswith("# Reliability benchmark")
