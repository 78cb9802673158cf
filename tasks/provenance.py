"""The software and machine a product was made with, beside its key.

A stage's key covers its input, parameters and fusioncube's own code (``tasks.checkpoint``), not
the libraries under it: a torch or GDAL upgrade does not make a product stale, but the numbers of a
rerun may differ in their last digits (and the torch stages' also with the number of CPU threads).
So every manifest records :func:`environment` when it is written, the stages' Zarr products carry it
as ``fusioncube_environment``, and ``fusioncube info`` shows it with what differs on this machine
now (:func:`environment_changes`). The benchmarks put it in their JSON.
"""

from __future__ import annotations

import contextlib
import platform
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = ["LIBRARIES", "describe_environment", "environment", "environment_changes"]

#: the distributions whose versions a product records (those that compute or read its numbers)
LIBRARIES = ("numpy", "scipy", "pandas", "xarray", "zarr", "dask", "torch", "tensorly", "scikit-learn", "rasterio",
             "pyproj", "prefect")
_ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True, timeout=10,
                              check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


@cache
def _fixed() -> dict[str, Any]:
    """What does not change while the process runs (looked up once)."""
    try:
        package = version("fusioncube")
    except PackageNotFoundError:
        package = "unknown"
    libraries: dict[str, str] = {}
    for name in LIBRARIES:
        with contextlib.suppress(PackageNotFoundError):
            libraries[name] = version(name)
    with contextlib.suppress(ImportError):
        import rasterio

        libraries["GDAL"] = rasterio.__gdal_version__
    with contextlib.suppress(ImportError):
        import pyproj

        libraries["PROJ"] = pyproj.proj_version_str
    commit = _git("rev-parse", "HEAD") if (_ROOT / ".git").exists() else None
    source: dict[str, Any] = {}
    if commit:
        source = {"git_commit": commit, "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no"))}
    return {"fusioncube": package, **source, "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine(), "cpus": _cpus(),
            "libraries": libraries}


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def environment() -> dict[str, Any]:
    """The software and machine of this process: fusioncube's version (and git commit, with
    ``git_dirty`` when the checkout has local changes), Python, the platform, the CPUs it may use,
    the versions of :data:`LIBRARIES` with GDAL and PROJ, and torch's CPU threads when torch is in
    use, at the time of the call (when: the manifest's and the product's ``created``)."""
    env = dict(_fixed())
    if "torch" in sys.modules:
        env["torch_threads"] = sys.modules["torch"].get_num_threads()
    return env


def environment_changes(recorded: dict[str, Any]) -> list[str]:
    """What differs between a ``recorded`` :func:`environment` and this process's: ``torch
    2.12.0 -> 2.13.0``, ``fusioncube commit 1a2b3c4 -> 5d6e7f8``, ``python 3.11.9 -> 3.12.1``,
    ``cpus 8 -> 2`` (torch's default thread count follows them)."""
    now = _fixed()
    changes = []
    if recorded.get("git_commit") and now.get("git_commit") and recorded["git_commit"] != now["git_commit"]:
        changes.append(f"fusioncube commit {recorded['git_commit'][:10]} -> {now['git_commit'][:10]}")
    for key in ("python", "machine", "cpus"):  # the CPUs set torch's default thread count
        if recorded.get(key) and recorded[key] != now[key]:
            changes.append(f"{key} {recorded[key]} -> {now[key]}")
    was, has = recorded.get("libraries") or {}, now["libraries"]
    changes += [f"{name} {was[name]} -> {has.get(name, 'none')}" for name in sorted(was) if was[name] != has.get(name)]
    return changes


def describe_environment(recorded: dict[str, Any]) -> list[str]:
    """``fusioncube info``'s lines on a recorded :func:`environment` (empty for a product made
    before it was recorded)."""
    if not recorded:
        return []
    libs = recorded.get("libraries") or {}
    source = ""
    if recorded.get("git_commit"):
        source = f" (git {recorded['git_commit'][:10]}{', with local changes' if recorded.get('git_dirty') else ''})"
    threads = f", torch {libs['torch']} on {recorded['torch_threads']} CPU thread(s)" if (
        "torch_threads" in recorded and "torch" in libs) else ""
    shown = ", ".join(f"{k} {libs[k]}" for k in ("numpy", "xarray", "zarr", "GDAL", "PROJ") if k in libs)
    lines = [f"  made with: fusioncube {recorded.get('fusioncube', '?')}{source}, Python {recorded.get('python', '?')}"
             f"{threads}; {shown}; {recorded.get('platform', '?')}, {recorded.get('cpus', '?')} CPU(s)"]
    if changes := environment_changes(recorded):
        lines.append(f"  this machine differs: {'; '.join(changes)} (a rerun may differ in its last digits; the "
                     "product is still current: libraries are not part of its key)")
    return lines
