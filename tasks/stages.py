"""The stages a catalog can enable on a cube, in one table (``cubes.<name>.stages``).

Each entry names the stage's Prefect task, the artifact it writes in the cube's stage folder and
how to tell whether that artifact is current for the cube and the catalog's parameters. Adding a
stage takes an entry here, its name and parameters in ``tasks/catalog.py`` and its command in
``flows/cli.py`` (README, "Developing": adding a stage; a test checks that the lists agree).

Every stage task is called as ``task(cube_path, out_path, **params, overwrite=True)`` and returns a
dict holding its manifest fields (``key``, ``created``, ``stats``, ``outputs``) and ``artifact``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.anomalies import anomalies_key, anomalies_task, waits_for_data
from tasks.catalog import Catalog
from tasks.checkpoint import Manifest, fingerprint, read_manifest, reusable
from tasks.classify import classify_key, classify_task
from tasks.compress import compress_task, default_ranks
from tasks.gapfill import gapfill_key, gapfill_task
from tasks.labels import labels_key, labels_task
from tasks.patch import fit_patch_size

__all__ = ["STAGES", "Stage", "stage_current"]


def _anomalies_current(cube: str, out: str, params: dict[str, Any]) -> Manifest | None:
    key, _ = anomalies_key(cube, **params)
    return reusable(out, key)


def _subset_current(key_of: Callable[[str, dict[str, Any]], str]) -> Callable[[str, str, dict[str, Any]], Manifest | None]:
    """Up-to-date check of a stage whose manifest also holds parameters it derives or defaults
    (ranks, batch size): the key is recomputed from the manifest's parameters, and the catalog's
    parameters must be a subset of them."""

    def current(cube: str, out: str, params: dict[str, Any]) -> Manifest | None:
        m = read_manifest(out)
        if m is None or not Path(out).exists() or m.key != key_of(cube, m.params):
            return None
        return m if all(m.params.get(k) == v for k, v in params.items() if k in m.params) else None

    return current


def _compress_current(cube: str, out: str, params: dict[str, Any]) -> Manifest | None:
    # the stage codes patches of the cube (its own out/patches.zarr, or the pipeline's patch store
    # when that holds the same patches: the coded store's manifest names which) into out/compressed
    coded = read_manifest(Path(out) / "compressed")
    if coded is None or not isinstance(coded.outputs.get("patches"), str) or not (Path(out) / "decoded.zarr").exists():
        return None
    patches = read_manifest(coded.outputs["patches"])
    if patches is None:
        return None
    if patches.inputs.get("cube") != fingerprint(cube) or coded.inputs.get("patches") != patches.key:
        return None
    if patches.params.get("size") != fit_patch_size(cube, params.get("patch", 32), None)[0]:
        return None  # another patch size asked for
    wanted = {k: v for k, v in params.items() if k in ("step", "bits", "psnr", "iters")}
    if params.get("ranks"):
        wanted["ranks"] = list(params["ranks"])
    else:  # the default ranks of the patches' shape (their manifest has it), as compress_patches takes them
        shape = patches.outputs.get("shape", {})
        wanted["ranks"] = list(default_ranks(tuple(int(shape.get(d, 0)) for d in ("time", "band", "py", "px"))))
    return coded if all(coded.params.get(k) == v for k, v in wanted.items()) else None


def _labels_current(cube: str, out: str, params: dict[str, Any]) -> Manifest | None:
    labels = params.get("labels", "landcover")
    return _subset_current(lambda c, p: labels_key(c, labels, p)[0])(cube, out, params)


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline: its task, its artifact's file name, its up-to-date check."""

    name: str
    output: str
    task: Any  # a prefect Task: task(cube_path, out_path, **params, overwrite=True) -> dict
    current: Callable[[str, str, dict[str, Any]], Manifest | None]
    #: why the stage cannot run on a cube yet (its task then reports "waiting"), else None
    waiting: Callable[[str], str | None] | None = None
    #: the stage codes patches: the pipeline runs it after its patch task and passes that store
    #: (``patches=``), used when it holds the patches the stage would cut
    uses_patches: bool = False


STAGES: dict[str, Stage] = {
    "anomalies": Stage("anomalies", "anomalies.zarr", anomalies_task, _anomalies_current, waits_for_data),
    "gapfill": Stage("gapfill", "filled.zarr", gapfill_task,
                     _subset_current(lambda cube, p: gapfill_key(cube, p)[0])),
    "compress": Stage("compress", "compress", compress_task, _compress_current, uses_patches=True),
    "classify": Stage("classify", "classes.zarr", classify_task,
                      _subset_current(lambda cube, p: classify_key(cube, p, None)[0])),
    "labels": Stage("labels", "labels.zarr", labels_task, _labels_current),
}


def stage_current(catalog: Catalog, cube: str, name: str) -> Manifest | None:
    """The manifest of stage ``name``'s artifact on ``cube`` when it is current, else None."""
    stage = STAGES[name]
    out = catalog.stage_dir(cube) / stage.output
    return stage.current(str(catalog.cube_path(cube)), str(out), catalog.stage_params(cube, name))
