"""The operator's summary of one pipeline run: scenes, stages run or reused, figures, warnings,
links to the products (a markdown artifact in the Prefect UI)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE as NO_CACHE

from tasks.quicklook import artifact_key, percent

__all__ = ["pipeline_summary", "publish_pipeline_task"]


def _status(result: dict[str, Any], started: datetime) -> str:
    if "error" in result:
        return "FAILED"
    if "waiting" in result:
        return "waiting for data"
    created = result.get("created")
    if not created:
        return "ran"
    return "ran" if datetime.fromisoformat(created) >= started else "reused"


#: a stage result's headline figures, in words and units: (where, key, how)
FIGURES: tuple[tuple[str, str, Any], ...] = (
    ("outputs", "patches", lambda v: f"{v} patches"),
    ("stats", "valid_share", lambda v: f"{percent(v)} observed"),
    ("outputs", "filled_share", lambda v: f"{percent(v)} filled"),
    ("stats", "flagged", lambda v: f"{v} entries flagged"),
    ("stats", "unconverged_tiles", lambda v: f"{v} tile(s) at the iteration cap" if v else ""),
    ("stats", "bits_per_entry", lambda v: f"{v:.3f} bits/entry"),
    ("stats", "psnr_db", lambda v: f"PSNR {v:.1f} dB"),
    ("test", "accuracy", lambda v: f"test accuracy {v:.3f}"),
    ("test", "macro_f1", lambda v: f"macro-F1 {v:.3f}"),
    ("outputs", "labelled_pixels", lambda v: f"{v} labelled px"),
    ("outputs", "mapped_pixels", lambda v: f"{v} px mapped"),
    ("stats", "seconds", lambda v: f"{v:.1f} s"),
)


def _figures(result: dict[str, Any]) -> str:
    stats = result.get("stats") or {}
    test = stats.get("test")
    where: dict[str, dict[str, Any]] = {"stats": stats, "outputs": result.get("outputs") or {},
                                        "test": test if isinstance(test, dict) else {}}
    shown = [how(where[w][k]) for w, k, how in FIGURES
             if isinstance(where[w].get(k), int | float) and not isinstance(where[w].get(k), bool)]
    return ", ".join(t for t in shown if t) or "-"


def _link(path: str | None) -> str:
    return f"[`{Path(path).name}`]({Path(path).resolve().as_uri()})" if path else "-"


def pipeline_summary(products: dict[str, Any], started: datetime) -> dict[str, Any]:
    """Headline, markdown and per-stage status of a pipeline run's products."""
    ingest = products["ingest"]
    cube = products["cube"]
    stages = {name: _status(r, started) for name, r in products["stages"].items()}
    new = len(ingest["ingested"])
    if not ingest["time_steps"]:  # no scene found, or none taken: there is no cube to run stages on
        headline = (f"cube {cube}: no cube written: no scene was taken ({len(ingest['skipped'])} skipped, "
                    f"{len(ingest['quarantined'])} quarantined); check its sources' globs with "
                    "`fusioncube catalog check`")
    elif not new and all(s == "reused" for s in stages.values()):
        headline = (f"cube {cube}: nothing new; {ingest['time_steps']} time steps, "
                    f"all {len(stages)} stage artifact(s) reused")
    else:
        done = ", ".join(f"{n} {s}" for n, s in stages.items()) or "no stage"
        headline = (f"cube {cube}: {new} new scene(s) in {len(ingest['dates_added'])} new date(s), "
                    f"{ingest['time_steps']} time steps; {done}")
    if ingest.get("parts_reused"):
        headline += f" ({ingest['parts_reused']} ingest part(s) reused from an interrupted run)"
    if ingest.get("dates_replaced"):
        headline += f"; {len(ingest['dates_replaced'])} date(s) rebuilt from scenes changed on disk"
    if ingest.get("reordered"):
        headline += "; older dates arrived: the cube was rewritten in date order and its products recomputed"
    # a file that changed since it was ingested (a re-processed delivery) is not taken: said every
    # run until the cube is rebuilt, not only by the ingest that first met it; files quarantined
    # before are named once, when they were quarantined
    changed = [s for s in ingest["skipped"] if not str(s.get("reason", "")).startswith("quarantined before")]
    if changed:
        headline += f"; {len(changed)} scene(s) not taken (see warnings)"
    warnings = [f"quarantined `{q['scene']}`: {q['reason']}" for q in ingest["quarantined"]]
    warnings += [f"skipped `{s['scene']}`" + (f" ({s['date']})" if s.get("date") else "") + f": {s['reason']}"
                 for s in changed]
    warnings += [f"stage {n} failed: {r['error']}" for n, r in products["stages"].items() if "error" in r]
    warnings += [f"stage {n} waits for data: {r['waiting']}" for n, r in products["stages"].items()
                 if "waiting" in r]
    warnings += [f"stage {n}: {w}" for n, r in products["stages"].items() for w in r.get("warnings", [])]
    lines = [
        f"# Pipeline run: cube `{cube}`", "", f"**{headline}**", "",
        "## Scenes", "",
        f"- ingested: {new} scene(s), {len(ingest['dates_added'])} new date(s)"
        + (f" ({ingest['dates_added'][0]} .. {ingest['dates_added'][-1]})" if ingest["dates_added"] else "")
        + (f"; {len(ingest['dates_updated'])} date(s) already in the cube updated with late scenes"
           if ingest.get("dates_updated") else "")
        + (f"; {len(ingest['dates_replaced'])} date(s) rebuilt from scenes changed on disk"
           if ingest.get("dates_replaced") else ""),
        f"- skipped: {len(ingest['skipped'])}; quarantined: {len(ingest['quarantined'])}",
        f"- cube: {_link(products['path'])} ({ingest['time_steps']} time steps)",
        f"- quick-look (newest clear value per pixel over the last dates): {_link(ingest.get('quicklook'))}",
        "", "## Stages", "", "| stage | status | figures | product | quick-look |", "|---|---|---|---|---|",
    ]
    for name, r in products["stages"].items():
        lines.append(f"| {name} | {stages[name]} | {_figures(r)} | {_link(r.get('artifact'))} | "
                     f"{_link(r.get('quicklook'))} |")
    lines += ["", "## Warnings", ""] + ([f"- {w}" for w in warnings] or ["- none"])
    return {"headline": headline, "markdown": "\n".join(lines) + "\n", "stages": stages, "warnings": warnings}


@task(name="publish-pipeline-summary", cache_policy=NO_CACHE)
def publish_pipeline_task(products: dict[str, Any], started: str) -> dict[str, Any]:
    """Publish the run's summary as a markdown artifact; return it (headline, markdown, statuses)."""
    summary = pipeline_summary(products, datetime.fromisoformat(started))
    create_markdown_artifact(summary["markdown"], key=artifact_key(f"pipeline-{products['cube']}"),
                             description=summary["headline"])
    return summary
