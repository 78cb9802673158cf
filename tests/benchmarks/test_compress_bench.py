"""The compression benchmark end to end on tiny stand-ins for its two data sets (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import benchmarks.compress as bench


def _scene(seed: int, bands: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:2 * size] / size
    t = np.arange(4)[:, None, None, None]
    b = np.arange(1, bands + 1)[None, :, None, None]
    data = 0.3 + 0.1 * np.sin(4 * yy + t) * np.cos(3 * xx) * b + 0.01 * rng.standard_normal((4, bands, size, 2 * size))
    data = data.astype(np.float32)
    data[1, :, :5, :7] = np.nan
    return data


def _tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = dict(bench.QUICK, factor_steps=[1 / 64], iters=1,
               sample={"patch": 8, "ranks": [(2, 2, 4, 4), (4, 3, 8, 8)], "hosvd_ranks": [(2, 2, 4, 4)],
                       "steps": [0.2, 1.0]},
               real={"patch": 8, "ranks": [(2, 1, 4, 4)], "hosvd_ranks": [(2, 1, 4, 4)], "steps": [0.2, 1.0]})
    monkeypatch.setattr(bench, "QUICK", cfg)
    monkeypatch.setattr(bench, "_sample_cube", lambda work, size: _scene(0, 3, 16))
    monkeypatch.setattr(bench, "_modis", lambda work: _scene(1, 1, 16))
    monkeypatch.setattr(bench, "JP2_RATES", (0.5, 2.0))


def test_quick_benchmark_writes_summary_plot_and_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny(monkeypatch)
    out = tmp_path / "c.json"
    result = bench.run(out, quick=True, sample=tmp_path / "s")
    keys = {"psnr_gain_vs_jpeg2000_db_min", "psnr_gain_vs_hosvd_db_min", "real_gain_vs_jpeg2000_db_0p25",
            "real_gain_vs_jpeg2000_db_0p5", "encode_mb_s", "decode_mb_s", "jpeg2000_encode_mb_s"}
    assert keys <= set(result["summary"])
    assert json.loads(out.read_text())["summary"] == json.loads(json.dumps(result["summary"]))
    assert out.with_suffix(".png").stat().st_size > 0 and out.with_suffix(".md").exists()
    s = result["datasets"]["sample"]
    for method in bench.METHODS:
        pts = [p for p in s["points"] if p["method"] == method]
        assert pts and all(p["bpe"] > s["mask_bpe"] and np.isfinite(p["psnr"]) for p in pts)
    assert result["summary"]["encode_mb_s"] > 0 and result["summary"]["jpeg2000_encode_mb_s"] > 0
    # each minimum gain says the rates it was taken over
    by_rate = result["gains_db_by_rate"]["sample_vs_jpeg2000"]
    assert by_rate and min(by_rate.values()) == pytest.approx(result["summary"]["psnr_gain_vs_jpeg2000_db_min"])
    # the context coder never loses to the static per-position model by more than its header
    for res in result["datasets"].values():
        pairs = {(tuple(p["ranks"]), p["step"]): p["bpe"] for p in res["points"] if p["method"] == "tdl_static"}
        for p in (p for p in res["points"] if p["method"] == "tdl"):
            assert p["bpe"] <= pairs[(tuple(p["ranks"]), p["step"])] + 8 * 100 / res["entries"]


def test_pareto_and_interpolation() -> None:
    pts = [{"bpe": 0.1, "psnr": 20.0}, {"bpe": 0.2, "psnr": 19.0}, {"bpe": 0.4, "psnr": 24.0}]
    front = bench.pareto(pts)
    assert [p["bpe"] for p in front] == [0.1, 0.4]
    curve = bench.at_rates(front, (0.05, 0.25, 0.4))
    assert curve["0.05"] is None and curve["0.25"] == pytest.approx(22.0) and curve["0.4"] == 24.0


def test_component_klt_is_orthonormal_and_ordered() -> None:
    from benchmarks import compress as bench

    rng = np.random.default_rng(3)
    mix = rng.normal(size=(6, 2))  # 3 dates x 2 bands driven by 2 sources + a little noise
    src = rng.normal(size=(40, 2, 8, 8))
    patches = (np.einsum("kj,pjyx->pkyx", mix, src) + 0.01 * rng.normal(size=(40, 6, 8, 8)) + 5.0)
    mean, vecs = bench.component_klt(patches.reshape(40, 3, 2, 8, 8))
    assert vecs.shape == (6, 6) and mean.shape == (6,)
    np.testing.assert_allclose(vecs.T @ vecs, np.eye(6), atol=1e-5)
    flat = np.moveaxis(patches, 1, 0).reshape(6, -1)
    np.testing.assert_allclose(mean, flat.mean(axis=1), rtol=1e-5)
    comps = vecs.T @ (flat - mean[:, None])
    var = comps.var(axis=1)
    assert np.all(np.diff(var) <= 1e-9) and var[2:].sum() < 1e-3 * var.sum()  # two sources: rank 2


@pytest.mark.slow
def test_run_as_a_flow_publishes_the_report_and_the_rate_distortion_plot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness) -> None:
    """``fusioncube bench compress --flow``: the markdown report and the RD plot are artifacts."""
    from prefect.artifacts import Artifact

    from flows.bench import benchmark_flow

    _tiny(monkeypatch)
    result = benchmark_flow("compress", str(tmp_path / "c.json"), quick=True)
    assert result["artifacts"] == {"report": "bench-compress", "figure": "bench-compress-png"}
    assert "psnr_gain_vs_jpeg2000_db_min" in result["summary"]
    report = Artifact.get("bench-compress")
    assert report is not None and report.type == "markdown" and "jpeg2000_klt" in str(report.data)
    figure = Artifact.get("bench-compress-png")
    assert figure is not None and str(figure.data).startswith("data:image/png;base64,")
