"""Changes to a cube's Zarr store in place, each safe to run again after a kill: appending a
part's time steps (chunk folders moved in), mosaicking or replacing date slices, cutting steps
past the manifest, and the date-order rewrite with its crash-safe swap. :mod:`tasks.ingest`
decides what to change and keeps the manifest; this module changes the store.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from tasks.checkpoint import Manifest, manifest_path
from tasks.cube import zarr_array
from tasks.errors import CubeSchemaError

__all__ = [
    "SORTING",
    "UNSORTED",
    "attach_store",
    "finish_interrupted_sort",
    "link_time_steps",
    "merge_store",
    "mosaic",
    "no_consolidation_warning",
    "one_step_chunk_folders",
    "replace_slices",
    "sort_paths",
    "swap_sorted",
    "time_encoding",
    "truncate_to_manifest",
    "write_sorted_copy",
    "write_times",
]

log = logging.getLogger(__name__)


def time_encoding(path: Path, units: Any) -> tuple[pd.Timedelta, pd.Timestamp]:
    """(step, reference) of CF time units such as ``seconds since 1970-01-01``."""
    steps = {"microseconds": "1us", "milliseconds": "1ms", "seconds": "1s", "second": "1s", "minutes": "1min", "hours": "1h", "days": "1D", "day": "1D"}
    try:
        unit, _, since = str(units).partition(" since ")
        return pd.Timedelta(steps[unit.strip().lower()]), pd.Timestamp(since.strip())
    except (KeyError, ValueError) as exc:
        raise CubeSchemaError(f"{path}: time units {units!r} are not '<unit> since <date>'") from exc


@contextlib.contextmanager
def no_consolidation_warning() -> Iterator[None]:
    """Consolidated metadata lets ``xr.open_zarr(path)`` open the cube without a warning or a
    listing of the store; zarr notes that v3 does not standardise it yet. We know."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def mosaic(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Mosaic scenes of one date: clear pixels win, then any observed pixel, first scene first."""
    data, valid = parts[0]  # freshly made by warp_scene: ours to update in place
    for d, v in parts[1:]:
        fill = np.isnan(data[0]) & ~np.isnan(d[0])
        take = (~valid & v) | fill
        np.copyto(data, d, where=take)  # broadcast over bands: no boolean gather/scatter copies
        valid |= v
    return data, valid


def _layout(arr: zarr.Array) -> str:
    meta = arr.metadata.to_dict()
    for k in ("shape", "attributes"):
        meta.pop(k, None)
    return json.dumps(meta, sort_keys=True, default=str)


def write_times(path: Path, time: zarr.Array, n: int, dates: Sequence[datetime]) -> None:
    step, ref = time_encoding(path, time.attrs.get("units"))
    offsets = [(pd.Timestamp(d) - ref) / step for d in dates]
    if np.issubdtype(time.dtype, np.integer) and any(o != int(o) for o in offsets):
        raise CubeSchemaError(f"{path}: dates {list(dates)} do not fit the time units {time.attrs.get('units')!r}")
    time[n:] = np.array(offsets).astype(time.dtype)


def attach_store(path: Path, part: Path, dates: Sequence[datetime], *, copy: bool = False) -> bool:
    """Append the part store's time steps to the cube. Returns True when its chunk folders were
    moved in (copied with ``copy``; the part starts on a time-chunk boundary and has the cube's
    layout), False when its values had to be written (and re-encoded) instead."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    src = zarr.open_group(str(part), mode="r")
    n, k = zarr_array(group, "data").shape[0], len(dates)
    moved = (
        n % zarr_array(group, "data").chunks[0] == 0
        and all(_layout(zarr_array(group, v)) == _layout(zarr_array(src, v)) for v in ("data", "valid"))
        and (path / "data" / "zarr.json").exists()
    )
    for name in ("data", "valid", "time"):
        arr = zarr_array(group, name)
        arr.resize((n + k, *arr.shape[1:]))
    if moved:
        for name in ("data", "valid"):
            tc = zarr_array(group, name).chunks[0]
            source, target = part / name / "c", path / name / "c"
            if not source.exists():
                continue  # every chunk of the part is empty (all missing): nothing stored
            target.mkdir(parents=True, exist_ok=True)
            for chunk_dir in sorted(source.iterdir(), key=lambda p: int(p.name)):
                dest = target / str(int(chunk_dir.name) + n // tc)
                if dest.exists():  # left by a killed run beyond the manifest
                    shutil.rmtree(dest)
                if copy:
                    shutil.copytree(chunk_dir, dest)
                else:
                    os.replace(chunk_dir, dest)
    else:
        zarr_array(group, "data")[n:] = zarr_array(src, "data")[:]
        zarr_array(group, "valid")[n:] = zarr_array(src, "valid")[:]
    write_times(path, zarr_array(group, "time"), n, dates)
    with no_consolidation_warning():
        zarr.consolidate_metadata(str(path))
    return moved


def merge_store(path: Path, part: Path, steps: Sequence[int]) -> None:
    """Mosaic the part store's dates into the cube's slices ``steps`` (one per part date), after
    what the slices hold (:func:`mosaic`: the slice's clear pixels win, then the new scene's
    clear pixels, then any observed pixel). Writing a slice again gives the same bytes."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    src = zarr.open_group(str(part), mode="r")
    data, valid = zarr_array(group, "data"), zarr_array(group, "valid")
    new_data, new_valid = zarr_array(src, "data"), zarr_array(src, "valid")
    for i, t in enumerate(steps):
        merged, clear = mosaic([(np.asarray(data[t]), np.asarray(valid[t])),
                                 (np.asarray(new_data[i]), np.asarray(new_valid[i]))])
        data[t] = merged
        valid[t] = clear


def replace_slices(path: Path, part: Path, rows: Sequence[int], steps: Sequence[int]) -> None:
    """Write the part store's dates ``rows`` over the cube's slices ``steps``: dates rebuilt from
    all their scenes as they are now. Writing a slice again gives the same bytes."""
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    src = zarr.open_group(str(part), mode="r")
    for name in ("data", "valid"):
        target, source = zarr_array(group, name), zarr_array(src, name)
        for i, t in zip(rows, steps, strict=True):
            target[t] = source[i]


def truncate_to_manifest(path: Path, manifest: Manifest) -> int:
    """Cut time steps a killed run appended after the manifest was last written. Returns how many."""
    n = int(manifest.outputs.get("time_steps", 0))
    group = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    extra = 0
    for name in ("data", "valid", "time"):
        arr = zarr_array(group, name)
        if arr.shape[0] > n:
            extra = max(extra, arr.shape[0] - n)
            arr.resize((n, *arr.shape[1:]))
    if extra:
        with no_consolidation_warning():
            zarr.consolidate_metadata(str(path))
        log.warning("%s: removed %d time step(s) left by an interrupted run", path, extra)
    return extra


# -- date order: a backfill appends older dates after the newest; the cube is then rewritten ------
# Appending stays cheap and kill-safe (chunk folders moved in after the newest date). At the end of
# a run that appended a date older than the newest, the cube is rewritten in date order once: a
# sorted copy is built beside it (``<cube>.sorting``), its manifest written (``<cube>.sorting.
# manifest.json``: the copy is complete), then the old cube is moved aside (``<cube>.unsorted``),
# the copy and its manifest moved in, the old cube deleted. Every state a kill can leave is
# completed or undone by the next run (:func:`finish_interrupted_sort`), before it plans.
SORTING, UNSORTED = ".sorting", ".unsorted"


def sort_paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + SORTING), path.with_name(path.name + UNSORTED)


def _without_time_chunks(src: str, names: list[str]) -> list[str]:
    """``shutil.copytree`` ignore rule: the chunk folders of data / valid / time (rewritten)."""
    return ["c"] if Path(src).name in ("data", "valid", "time") and "c" in names else []


def one_step_chunk_folders(arr: zarr.Array) -> bool:
    """Whether each time step of ``arr`` is a folder of its own, ``c/<t>/...`` (one step per chunk,
    no sharding, the default ``/`` chunk keys): the layout whose steps are reordered by renaming."""
    from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding

    keys = getattr(arr.metadata, "chunk_key_encoding", None)  # a v2 array has none: not this layout
    return (arr.chunks[0] == 1 and arr.shards is None and isinstance(keys, DefaultChunkKeyEncoding)
            and keys.separator == "/")


def link_time_steps(src: Path, dst: Path, order: np.ndarray) -> None:
    """``dst/<i>`` = ``src/<order[i]>``, chunk files hard-linked (copied where the file system has no
    hard links): a date-order rewrite without decoding or encoding a byte. The source stays whole
    until the swap, as with a copy; nothing writes to a chunk file in place while both exist."""
    dst.mkdir(parents=True, exist_ok=True)
    for i, j in enumerate(order):
        if not (src / str(int(j))).exists():
            continue  # a step whose chunks are all fill: nothing stored
        try:
            shutil.copytree(src / str(int(j)), dst / str(i), copy_function=os.link)
        except OSError:
            shutil.rmtree(dst / str(i), ignore_errors=True)
            shutil.copytree(src / str(int(j)), dst / str(i))


def write_sorted_copy(path: Path, cube: str) -> np.ndarray | None:
    """Build the cube at ``path`` in increasing date order beside it (``<cube>.sorting``), static
    layers and attributes as they are; with one time step per chunk (the default) the steps'
    chunk folders are hard-linked in their new order. Returns the order (new position -> old
    step), or None when the cube is in date order already (nothing written). The caller writes
    the copy's manifest, then :func:`swap_sorted`."""
    group = zarr.open_group(str(path), mode="r", use_consolidated=False)
    times = np.asarray(zarr_array(group, "time")[:])
    order = np.argsort(times, kind="stable")
    if (order == np.arange(order.size)).all():
        return None
    tmp, _ = sort_paths(path)
    manifest_path(tmp).unlink(missing_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("cube %s: rewriting %d time steps in date order (dates older than the newest were appended)",
             cube, order.size)
    shutil.copytree(path, tmp, ignore=_without_time_chunks)
    dst = zarr.open_group(str(tmp), mode="r+", use_consolidated=False)
    for name in ("data", "valid"):
        src_arr, dst_arr = zarr_array(group, name), zarr_array(dst, name)
        if one_step_chunk_folders(src_arr):
            link_time_steps(path / name / "c", tmp / name / "c", order)
            continue
        step = src_arr.chunks[0]
        for start in range(0, order.size, step):  # one time chunk in memory at a time
            picks = order[start:start + step]  # each source chunk they lie in read once, not once a date
            dst_arr[start:start + picks.size] = np.asarray(src_arr.get_orthogonal_selection((picks,)))
    zarr_array(dst, "time")[:] = times[order]
    with no_consolidation_warning():
        zarr.consolidate_metadata(str(tmp))
    return order


def swap_sorted(path: Path) -> None:
    """Put the sorted copy :func:`write_sorted_copy` built, and its manifest, in the cube's place."""
    tmp, old = sort_paths(path)
    os.replace(path, old)
    os.replace(tmp, path)
    os.replace(manifest_path(tmp), manifest_path(path))
    shutil.rmtree(old)


def finish_interrupted_sort(path: Path) -> None:
    """Complete or undo a date-order rewrite (:func:`sort_time_axis`) a killed run left, so the
    cube and its manifest agree again. Call it under the cube's lock, before reading the manifest."""
    tmp, old = sort_paths(path)
    if manifest_path(tmp).exists():  # the sorted copy was complete
        if path.exists() and tmp.exists():  # not swapped yet: the old cube still matches its manifest
            manifest_path(tmp).unlink()
            shutil.rmtree(tmp)
            log.warning("%s: dropped the date-order rewrite an interrupted run left unfinished; "
                        "it is done again at the end of this run", path)
        else:
            if not path.exists() and tmp.exists():
                os.replace(tmp, path)
            if path.exists():
                os.replace(manifest_path(tmp), manifest_path(path))
                log.warning("%s: finished the date-order rewrite an interrupted run left", path)
    elif tmp.exists():  # killed while the copy was written
        shutil.rmtree(tmp)
    if old.exists() and path.exists() and not manifest_path(tmp).exists():
        shutil.rmtree(old)
