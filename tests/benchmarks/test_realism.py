"""The realism benchmark runs quickly and writes its summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.realism import real_fixture_dir, run

KEYS = ("sample_top10_energy", "real_top10_energy", "sample_spatial_ac", "real_spatial_ac",
        "sample_temporal_ac", "real_temporal_ac")


def test_quick_run_writes_summary(tmp_path: Path) -> None:
    if not any(real_fixture_dir().glob("*.jp2")):
        pytest.skip(f"real MODIS NDVI fixture not found in {real_fixture_dir()}")
    out = tmp_path / "r.json"
    result = run(out, quick=True)
    written = json.loads(out.read_text())
    assert written["summary"] == result["summary"]
    for key in KEYS:
        assert 0.0 < written["summary"][key] <= 1.0, key
    assert written["data"]["tensor_shape"][0] == 12
    assert {"platform", "cpu_count"} <= set(written["machine"])
    assert out.with_suffix(".md").read_text().startswith("# Realism")
