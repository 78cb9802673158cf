"""One writer per cube: an advisory lock file beside the store, ``<cube>.zarr.lock``.

Two runs against the same cube at once (a scheduled run and a manual backfill, two operators)
would plan the same new scenes and attach them twice. :func:`cube_lock` serialises them: the
second run waits for the first (up to ``timeout`` seconds), then plans from the cube the first
one left, so it finds nothing new to ingest rather than ingesting it twice.

The lock is ``fcntl.flock`` on the lock file. The kernel releases it when the holding process
exits for any reason, SIGKILL and power-cut-free crashes included, so a crashed run never leaves
a stale lock behind and no stale-lock rule (pid checks, ages) is needed. The file itself stays
(deleting it would race with a waiter); it holds the current holder's pid, host and start time,
only to name the holder in the message of a run that gave up waiting.

Scope and limits: one host, or a shared file system whose ``flock`` is honoured across hosts
(local disks, NFSv4 with lock support, Lustre with ``flock`` mounts). The lock is re-entrant
within a thread (a flow that holds it may call ``ingest_cube``, which takes it again); two threads
of one process exclude each other like two processes do.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["CubeLockedError", "cube_lock", "lock_path"]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
DEFAULT_TIMEOUT = 3600.0

_held: dict[tuple[str, int], tuple[int, int]] = {}  # (lock path, thread) -> (fd, depth)
_held_guard = threading.RLock()


class CubeLockedError(TimeoutError):
    """Another run held the cube's lock for longer than this run was willing to wait."""


def lock_path(cube: str | Path) -> Path:
    """``.../planet.zarr`` -> ``.../planet.zarr.lock`` (beside the store, not inside it)."""
    cube = Path(cube)
    return cube.with_name(cube.name + LOCK_SUFFIX)


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "unknown holder"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('since', '?')}"


@contextlib.contextmanager
def cube_lock(cube: str | Path, *, timeout: float = DEFAULT_TIMEOUT, poll: float = 0.2) -> Iterator[Path]:
    """Hold the exclusive lock of ``cube`` for the block; wait up to ``timeout`` seconds for it.

    Parameters
    ----------
    cube
        The cube store's path (it need not exist yet; its folder is created).
    timeout
        Seconds to wait for another run to finish; 0 tries once.
    poll
        Seconds between attempts while waiting.

    Raises
    ------
    ValueError
        For a negative ``timeout`` or a non-positive ``poll``.
    CubeLockedError
        When the lock is still held by another process after ``timeout`` seconds; the message
        names the holder (pid, host, start time).
    """
    if timeout < 0 or poll <= 0:
        raise ValueError(f"timeout must be >= 0 and poll > 0; got timeout={timeout}, poll={poll}")
    path = lock_path(cube)
    key = (str(path.absolute()), threading.get_ident())
    with _held_guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentrant = True
        else:
            reentrant = False
    if reentrant:
        try:
            yield path
        finally:
            with _held_guard:
                fd, depth = _held[key]
                _held[key] = (fd, depth - 1)
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # never through a symbolic link: truncating it would empty whatever file it points at
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise CubeLockedError(f"{cube}: its lock file {path} is a symbolic link; remove it (fusioncube "
                                  "creates the lock file itself)") from None
        raise exc
    deadline = time.monotonic() + timeout
    waited = False
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited:
                    log.warning("cube %s is locked by another run (%s); waiting up to %.0f s",
                                cube, _holder(path), timeout)
                    waited = True
                if time.monotonic() >= deadline:
                    raise CubeLockedError(
                        f"{cube}: another run holds {path.name} ({_holder(path)}) and did not finish "
                        f"within {timeout:.0f} s; this run changed nothing. Run again when it is done, "
                        "or wait longer (lock timeout)"
                    ) from None
                time.sleep(poll)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": datetime.now(UTC).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        if waited:
            log.info("cube %s: lock acquired after waiting", cube)
        with _held_guard:
            _held[key] = (fd, 1)
        try:
            yield path
        finally:
            with _held_guard:
                _held.pop(key, None)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
