"""Crash-resume: SIGKILL the chain ingest -> patch -> gapfill at >= 20 I/O events drawn by the
harness, re-run, compare with an uninterrupted run (``benchmarks.reliability.kill_harness``)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reliability import Zygote, kill_harness


def test_every_kill_point_recovers_to_the_uninterrupted_result(small_sample: Path, zyg: Zygote, tmp_path: Path) -> None:
    result = kill_harness(small_sample, tmp_path, points=20, seed=0, z=zyg)
    assert result["kill_points"] >= 20
    failed = [p for p in result["points"] if not p["recovered"]]
    assert not failed, "\n".join(f"event {p['kill_at']} ({p['stage']} {p['kind']} {p['path']}): {p['problems']}"
                                 for p in failed)
    # the strata the issue names: chunk writes (during: zarr-put, after: rename), manifest writes,
    # artifact renames, part attachment, model checkpoint saves
    # (the part writer and the attaching thread interleave, so a drawn event number can land on a
    # neighbouring event: check stages and kinds, not every pair)
    covered = set(result["covered"])
    assert {c.split(":")[0] for c in covered} == {"ingest-part", "ingest-cube", "patch", "gapfill"}, covered
    assert {c.split(":")[1] for c in covered} == {"zarr-put", "rename", "fsync", "torch-save"}, covered
    assert any(p["parts_reused"] for p in result["points"]), "no kill left a finished part to reuse"
