"""The quick classification benchmark runs end to end and writes the summary keys of issue 7."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.classify import BASELINES, run


@pytest.mark.slow
def test_quick_classify_benchmark_writes_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "classify.json"
    result = run(out, quick=True)
    saved = json.loads(out.read_text())
    assert saved["summary"] == result["summary"]
    summary = result["summary"]
    for key in ("acc_4dcnn", "f1_4dcnn", "acc_best_baseline", "f1_best_baseline"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["patches_per_s_cpu"] > 0
    methods = result["methods"]
    assert set(methods) == {"cnn4d", *BASELINES}
    assert summary["acc_best_baseline"] == round(max(methods[b]["accuracy"] for b in BASELINES), 4)
    # every method is scored on the same held-out pixels of the same test blocks
    assert result["data"]["patches"]["test"] > 0 and result["data"]["test_pixels_labelled"] > 0
    assert all(m["accuracy"] > 0.2 for m in methods.values())  # better than guessing among 15
    assert out.with_suffix(".md").read_text().startswith("# Land-cover classification benchmark")
