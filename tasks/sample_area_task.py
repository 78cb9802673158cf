"""The sample area as a checkpointed artifact: generated once per (size, seed, code version)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NONE as NO_CACHE

from tasks.checkpoint import (
    Manifest,
    atomic_artifact,
    code_version,
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
    with atomic_artifact(out, overwrite=True) as tmp:  # reuse or refusal decided above
        area = generate_sample_area(tmp, size=size, seed=seed, progress=progress)
        outputs = {
            "planet_dates": [d.isoformat() for d in area.planet_dates],
            "modis_dates": [d.isoformat() for d in area.modis_dates],
        }
    write_manifest(out, Manifest(stage="sample-area", key=key, params=params, inputs={}, code_version=code, outputs=outputs))
    return {"path": str(out), "reused": False, **outputs}


@task(name="sample-area", cache_policy=NO_CACHE)
def sample_area_task(out: str, size: str = "demo", seed: int = 0, progress_bar: bool = False) -> dict[str, Any]:
    """Generate (or reuse) the built-in sample area."""
    result = ensure_sample_area(out, size=size, seed=seed, progress=progress_bar)
    get_run_logger().info("sample area %s: %s", "reused" if result["reused"] else "generated", out)
    return result


@task(name="discard-derived", cache_policy=NO_CACHE)
def discard_cube_task(cube: str, artifacts: str) -> None:
    """Remove a cube and its stage artifacts made from a sample area that was regenerated: what has
    a fusioncube manifest (a folder of the user's own at those paths is left alone)."""
    from tasks.checkpoint import MANIFEST_SUFFIX, manifest_path, remove_artifact

    made = [Path(cube)] if manifest_path(cube).exists() else []
    if Path(artifacts).is_dir():
        made += [m.with_name(m.name.removesuffix(MANIFEST_SUFFIX))
                 for m in sorted(Path(artifacts).glob(f"*{MANIFEST_SUFFIX}"))]
    for path in made:
        get_run_logger().info("removing %s: made from a previous sample area", path)
        remove_artifact(path)
    if made and made[0] == Path(cube):
        Path(cube).with_name(Path(cube).stem + "_newest.png").unlink(missing_ok=True)
