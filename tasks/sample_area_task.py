"""The sample area as a checkpointed artifact: generated once per (size, seed, code version)."""

from __future__ import annotations

import filecmp
import glob
import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
    read_manifest,
    reusable,
    stage_key,
    write_manifest,
)

__all__ = ["discard_cube_task", "ensure_sample_area", "sample_area_current", "sample_area_task"]

log = logging.getLogger(__name__)

_MODULES = ("tasks.sample_area",)


def _key(size: str, seed: int) -> tuple[str, dict[str, Any], str]:
    params = {"size": size, "seed": seed}
    code = code_version(*_MODULES)
    return stage_key("sample-area", inputs={}, params=params, code=code), params, code


def sample_area_current(out: str | Path, *, size: str = "demo", seed: int = 0) -> bool:
    """True when ``out`` holds the sample area of this size, seed and generator version."""
    return reusable(Path(out), _key(size, seed)[0]) is not None


def ensure_sample_area(out: str | Path, *, size: str = "demo", seed: int = 0, progress: bool = False) -> dict[str, Any]:
    """Generate the sample area into ``out`` unless the same one is already there."""
    from tasks.sample_area import generate_sample_area

    out = Path(out)
    key, params, code = _key(size, seed)
    done = reusable(out, key)
    if done is not None:
        log.info("sample area %s reused (%s)", out, key)
        return {"path": str(out), "reused": True, **done.outputs}
    earlier = read_manifest(out) if out.exists() else None
    same = False
    try:
        with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
            area = generate_sample_area(tmp, size=size, seed=seed, progress=progress)
            outputs = {
                "planet_dates": [d.isoformat() for d in area.planet_dates],
                "modis_dates": [d.isoformat() for d in area.modis_dates],
            }
            if earlier is not None and earlier.params == params and _same_files(tmp, out):
                raise _SameFiles  # made by other code, to the same bytes: the new copy goes, the files stay
    except _SameFiles:
        same = True
    manifest = Manifest(stage="sample-area", key=key, params=params, inputs={}, code_version=code, outputs=outputs)
    write_manifest(out, manifest)
    if same:
        log.info("sample area %s: the same files as before (other generator code); kept", out)
    return {"path": str(out), "reused": same, **outputs}


class _SameFiles(Exception):
    """The sample area came out as the one already there (atomic_artifact then leaves it as it is)."""


def _same_files(a: Path, b: Path) -> bool:
    """The folders ``a`` and ``b`` hold the same files with the same bytes."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if files != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all(filecmp.cmp(a / f, b / f, shallow=False) for f in files)


@task(name="sample-area", cache_policy=NO_CACHE)
def sample_area_task(out: str, size: str = "demo", seed: int = 0, progress_bar: bool = False) -> dict[str, Any]:
    """Generate (or reuse) the built-in sample area."""
    result = ensure_sample_area(out, size=size, seed=seed, progress=progress_bar)
    get_run_logger().info("sample area %s: %s", "reused" if result["reused"] else "generated", out)
    return result


@task(name="discard-derived", cache_policy=NO_CACHE)
def discard_cube_task(cube: str, artifacts: str, products: list[str] | None = None) -> list[str]:
    """Remove a demo cube made from a sample area that was regenerated with other content, and the
    demo's own products of it: ``products``, names in ``artifacts`` (its patches and the outputs of
    the stages its catalog lists), each with the files named after it (its quick-look, map,
    model). Only what has a fusioncube manifest; products of your own beside them are left (``info``
    shows them out of date). Returns what was removed; each is logged as a warning."""
    from tasks.checkpoint import manifest_path, remove_artifact

    made = [Path(cube)] if manifest_path(cube).exists() else []
    made += [Path(artifacts) / name for name in products or [] if manifest_path(Path(artifacts) / name).exists()]
    for path in made:
        log.warning("removing %s: made from an earlier sample area, whose files changed", path)
        remove_artifact(path)
        for beside in path.parent.glob(f"{glob.escape(path.name)}.*"):  # OUT.zarr.quicklook.png, .tif, .pt
            remove_artifact(beside)
    if made and made[0] == Path(cube):
        Path(cube).with_name(Path(cube).stem + "_newest.png").unlink(missing_ok=True)
    return [str(p) for p in made]
