"""tasks.pipeline_report: what the operator's run summary says about scenes not taken and a cube
rewritten in date order."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.pipeline_report import pipeline_summary


def _products(**ingest) -> dict:
    base = {"ingested": [], "dates_added": [], "skipped": [], "quarantined": [], "time_steps": 5, "path": "c.zarr"}
    started = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    return {"cube": "c", "path": "c.zarr", "ingest": {**base, **ingest},
            "stages": {"patch": {"artifact": "p.zarr", "created": "2025-12-01T00:00:00+00:00"}}}, started


def test_a_changed_scene_is_named_on_every_run_not_only_by_ingest() -> None:
    """A re-delivered file (another size than when it was ingested) is not taken; a scheduled run
    used to say only "nothing new"."""
    changed = {"scene": "A_2014-03-22.jp2", "date": "2014-03-22",
               "reason": "changed on disk since it was ingested (another size); rebuild the cube to take the new file"}
    old = {"scene": "bad.jp2", "date": "", "reason": "quarantined before: cannot be read"}
    products, started = _products(skipped=[changed, old])
    summary = pipeline_summary(products, datetime.fromisoformat(started))
    assert summary["headline"].startswith("cube c: nothing new; 5 time steps")
    assert summary["headline"].endswith("; 1 scene(s) not taken (see warnings)")
    assert summary["warnings"] == ["skipped `A_2014-03-22.jp2` (2014-03-22): changed on disk since it was ingested "
                                   "(another size); rebuild the cube to take the new file"]
    assert "bad.jp2" not in summary["markdown"].split("## Warnings")[1]  # named once, when it was quarantined

    products, started = _products()
    assert "not taken" not in pipeline_summary(products, datetime.fromisoformat(started))["headline"]


def test_a_backfill_that_rewrote_the_cube_says_so() -> None:
    products, started = _products(ingested=[{"scene": "old.tif", "date": "2014-01-17"}], dates_added=["2014-01-17"],
                                  reordered=True)
    headline = pipeline_summary(products, datetime.fromisoformat(started))["headline"]
    assert headline.startswith("cube c: 1 new scene(s) in 1 new date(s)")
    assert "cube was rewritten in date order" in headline
