"""The quick label-recovery benchmark runs end to end and writes the summary keys of issue 6."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.labels import run, scores

KEYS = ("miou_lrtd_1pct", "miou_ce_only_1pct", "miou_rf_1pct", "miou_lrtd_coarse",
        "miou_nearest_coarse", "acc_ratio_1pct_vs_full")
EXTRA = ("miou_lrtd_1pct_per_seed", "miou_ce_only_1pct_per_seed", "miou_gain_1pct_per_seed",
         "miou_lrtd_coarse_unfused")


def test_scores_on_a_known_case() -> None:
    truth = np.array([1, 1, 1, 2, 2, 3])
    pred = np.array([1, 1, 2, 2, 2, 2])
    s = scores(pred, truth, (1, 2, 3, 4))
    assert s["oa"] == pytest.approx(4 / 6)
    # IoU: class 1 2/3, class 2 2/4, class 3 0 (present, never predicted); class 4 absent: not averaged
    assert s["miou"] == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    assert s["macro_f1"] == pytest.approx((0.8 + 2 / 3 + 0) / 3)
    assert set(s["iou"]) == {"1", "2", "3"}


@pytest.mark.slow
def test_quick_labels_benchmark_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "labels.json"
    result = run(out, quick=True)
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"]
    assert set(result["summary"]) == set(KEYS) | set(EXTRA)
    for key in KEYS[:-1]:
        assert 0.0 <= result["summary"][key] <= 1.0, key
    assert result["summary"]["acc_ratio_1pct_vs_full"] > 0
    settings = result["settings"]
    assert set(settings["1pct"]) == {"unet_lrtd", "unet_ce_only", "random_forest"}
    assert set(settings["coarse"]) >= {"unet_lrtd", "unet_lrtd_fused", "nearest"}
    # the coarse-prior fusion is chosen on validation blocks of ANOTHER area (the setting's 30 m
    # layer stays the only supervision here) from a grid that includes the coarse map itself
    fusion = result["coarse_fusion"]
    assert fusion["area_seed"] != result["config"]["seed"]
    assert fusion["val_patches"] > 0 and any(g["window"] == 1 for g in fusion["grid"])
    assert (fusion["window"], fusion["power"]) in {(g["window"], g["power"]) for g in fusion["grid"]}
    summary = result["summary"]
    assert summary["miou_lrtd_1pct"] == pytest.approx(float(np.mean(summary["miou_lrtd_1pct_per_seed"])))
    assert summary["miou_gain_1pct_per_seed"] == pytest.approx(
        np.subtract(summary["miou_lrtd_1pct_per_seed"], summary["miou_ce_only_1pct_per_seed"]), abs=1e-4)
    # the nearest-upsampled 30 m layer agrees with the 3 m truth on most pixels
    assert settings["coarse"]["nearest"]["oa"] > 0.6
    assert settings["1pct"]["random_forest"]["oa"] > 0.3
    assert set(result["targets"]) and out.with_suffix(".md").read_text().startswith("# Label-recovery benchmark")
