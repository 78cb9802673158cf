"""The bad-input corpus (``make_bad_inputs.py``): clear messages, quarantine, untouched stores."""

from __future__ import annotations

from pathlib import Path

from benchmarks.reliability import bad_input_corpus


def test_bad_input_corpus_gives_clear_errors_and_changes_no_stored_byte(small_sample: Path, tmp_path: Path) -> None:
    result = bad_input_corpus(small_sample, tmp_path)
    unclear = [f"{c['case']}: {c['message'][:300]}" for c in result["cases"] if not c["clear"]]
    assert not unclear, "\n".join(unclear)
    assert result["bad_inputs"] >= 25
    assert {c["level"] for c in result["cases"]} == {"scene", "static", "catalog", "checkpoint"}
    assert result["bytes_changed_in_existing_stores"] == 0
    assert result["good_scene_ingested_beside_bad_ones"]
    assert result["catalog_errors_wrote_nothing"]
