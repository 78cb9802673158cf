from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks.gapfill import DECK_NRMSE, run

KEYS = ("nrmse_lrtcnet_random20", "nrmse_lrtcnet_cloud", "nrmse_best_baseline_cloud",
        "nrmse_best_baseline_random20", "nrmse_real_lrtcnet", "nrmse_real_linear")


def test_quick_gapfill_benchmark_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "gapfill.json"
    result = run(out, quick=True)
    written = json.loads(out.read_text())
    assert written["summary"] == result["summary"] and set(KEYS) <= set(result["summary"])
    for key in KEYS:
        assert math.isfinite(result["summary"][key]) and 0 < result["summary"][key] < 1, key
    assert written["deck_anchor_nrmse_random20"] == DECK_NRMSE
    for setting in ("random20", "cloud"):  # the ablation and every baseline are scored
        assert {"linear", "lrtcnet_deck", "lrtcnet", "tucker", "halrtc"} <= set(result["settings"][setting])
    assert out.with_suffix(".md").read_text().startswith("# Gap-filling benchmark")
    assert out.with_suffix(".png").stat().st_size > 1000
