"""The anomaly benchmark's quick size runs end to end and writes the summary keys of issue 4."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.anomalies import METHODS, run

KEYS = ("auprc_qtrpca", "auprc_best_baseline", "auprc_qtrpca_4bit", "auprc_best_baseline_4bit",
        "rmse_k_qtrpca_4bit", "rmse_k_trpca_4bit", "auprc_qtrpca_abs_s", "auprc_best_baseline_abs_s",
        "auprc_qtrpca_4bit_abs_s", "auprc_best_baseline_4bit_abs_s")


def test_quick_run_writes_summary(tmp_path: Path) -> None:
    out = tmp_path / "anomalies.json"
    result = run(out, quick=True)
    written = json.loads(out.read_text())
    assert written["summary"] == result["summary"]
    assert set(KEYS) <= set(written["summary"])
    for key in KEYS:
        value = written["summary"][key]
        assert 0.0 <= value <= (1.0 if key.startswith("auprc") else 10.0), key
    assert {(r["bits"], r["missing"]) for r in written["runs"]} >= {(8, 0.3), (4, 0.3), (6, 0.3), (8, 0.5)}
    for run_ in written["runs"]:
        assert set(METHODS) <= set(run_)
    # quantization matters at 4 bits: the background is closer to the clean truth at 8 bits
    r8 = next(r for r in written["runs"] if r["bits"] == 8 and r["missing"] == 0.3)
    r4 = next(r for r in written["runs"] if r["bits"] == 4 and r["missing"] == 0.3)
    assert r8["qtrpca"]["rmse_k"] < r4["qtrpca"]["rmse_k"]
    assert out.with_suffix(".md").read_text().startswith("# Anomaly benchmark")
    stage = written["stage"]  # the stage timed one tile at a time and on all cores, same product
    assert stage["same_product"] is True and stage["workers"] >= 2 and stage["tiles"] >= 1
    assert stage["tiles_per_s_1"] > 0 and stage["tiles_per_s_n"] > 0 and stage["speedup"] > 0
    assert "## The stage's speed" in out.with_suffix(".md").read_text()
