"""Fault injection at the I/O boundaries, for the reliability harness (``benchmarks/reliability.py``).

Nothing here runs in a normal process: :func:`install` wraps a few functions **only when one of
the environment variables below is set** (the harness sets them in the processes it starts and
kills), so the production code path carries no hook, no branch and no cost.

The I/O boundaries counted as *events*, in the order they happen:

``zarr-put``
    Zarr is about to write one object (a chunk or a ``zarr.json``); zarr writes it to
    ``<key>.<uuid>.partial`` and renames it, so the ``rename`` event that follows sits *during*
    the chunk write (the bytes are on disk, the chunk is not).
``fsync``
    A manifest's temporary file is written and about to be flushed (``write_manifest``).
``rename``
    Any ``os.replace``: a chunk file, an artifact swapped into place (``atomic_artifact``), a
    manifest renamed over the old one, a part's chunk folder moved into the cube, torch weights.
``torch-save``
    Half of a model checkpoint's bytes are written to the target file, the rest not yet.

Environment variables
---------------------
``FUSIONCUBE_FAULT_LOG=PATH``
    Append one line per event, ``<n>\\t<kind>\\t<path>``, to ``PATH`` (flushed at once, so the
    line of the event a process was killed at is there).
``FUSIONCUBE_KILL_AT=N``
    ``SIGKILL`` this process at the ``N``-th event (1-based): no ``finally``, no ``atexit``,
    exactly what a power cut or the OOM killer does.
``FUSIONCUBE_KILL_SIGNAL=TERM``
    Send this signal at ``FUSIONCUBE_KILL_AT`` instead of ``KILL``: ``TERM`` is what a timeout, a
    service manager's stop or a plain ``kill`` sends, and the command line turns it into a clean exit.
``FUSIONCUBE_FAIL_AT=N:ERRNO``
    Raise ``OSError(ERRNO)`` at the ``N``-th event and at every later one (a disk that is full or
    read-only stays so), e.g. ``FUSIONCUBE_FAIL_AT=1:28`` for ``ENOSPC``, ``1:30`` for ``EROFS``.
"""

from __future__ import annotations

import errno as errno_mod
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ENV_FAIL", "ENV_KILL", "ENV_LOG", "ENV_SIGNAL", "active", "install", "parse_log"]

ENV_KILL = "FUSIONCUBE_KILL_AT"
ENV_FAIL = "FUSIONCUBE_FAIL_AT"
ENV_LOG = "FUSIONCUBE_FAULT_LOG"
ENV_SIGNAL = "FUSIONCUBE_KILL_SIGNAL"

_lock = threading.Lock()
_count = 0
_installed = False


def active(env: dict[str, str] | None = None) -> bool:
    """Whether any fault variable is set (in ``env``, default ``os.environ``)."""
    env = dict(os.environ) if env is None else env
    return any(env.get(k) for k in (ENV_KILL, ENV_FAIL, ENV_LOG))


def _settings() -> tuple[int | None, tuple[int, int] | None, str | None]:
    kill = os.environ.get(ENV_KILL)
    fail = os.environ.get(ENV_FAIL)
    fail_at: tuple[int, int] | None = None
    if fail:
        n, _, code = fail.partition(":")
        try:
            fail_at = (int(n), int(code or errno_mod.ENOSPC))
        except ValueError as exc:
            raise ValueError(f"{ENV_FAIL} must be N:ERRNO such as 1:28; got {fail!r}") from exc
    try:
        kill_at = int(kill) if kill else None
    except ValueError as exc:
        raise ValueError(f"{ENV_KILL} must be a positive integer; got {kill!r}") from exc
    return kill_at, fail_at, os.environ.get(ENV_LOG) or None


def _event(kind: str, path: Any) -> None:
    """Count one I/O event; log it, kill the process or raise as configured."""
    global _count
    kill_at, fail_at, log = _SETTINGS
    with _lock:
        _count += 1
        n = _count
        if log:
            with open(log, "a") as fh:
                fh.write(f"{n}\t{kind}\t{path}\n")
                fh.flush()
    if kill_at is not None and n == kill_at:
        os.kill(os.getpid(), getattr(signal, f"SIG{os.environ.get(ENV_SIGNAL) or 'KILL'}"))
    if fail_at is not None and n >= fail_at[0]:
        code = fail_at[1]
        raise OSError(code, f"{os.strerror(code)} (injected by {ENV_FAIL})", str(path))


_SETTINGS: tuple[int | None, tuple[int, int] | None, str | None] = (None, None, None)


def install() -> bool:
    """Wrap the I/O boundaries when a fault variable is set. Returns whether it did.

    Call it once at the start of a process the harness controls (it is idempotent). Wrapped:
    ``os.replace``, ``os.fsync``, zarr's local-store ``_put`` and ``torch.save``.
    """
    global _installed, _SETTINGS, _count
    if not active():
        return False
    _SETTINGS = _settings()
    _count = 0
    if _installed:
        return True
    _installed = True

    real_replace: Callable[..., None] = os.replace
    real_fsync: Callable[[int], None] = os.fsync

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        _event("rename", dst)
        real_replace(src, dst, *args, **kwargs)

    def fsync(fd: int) -> None:
        _event("fsync", _fd_path(fd))
        real_fsync(fd)

    os.replace = replace  # type: ignore[assignment]
    os.fsync = fsync  # type: ignore[assignment]

    import zarr.storage._local as zlocal

    real_put = zlocal._put

    def put(path: Path, value: Any, exclusive: bool = False) -> int:
        _event("zarr-put", path)
        return real_put(path, value, exclusive=exclusive)

    zlocal._put = put  # type: ignore[assignment]

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return True
    real_save = torch.save

    def save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        if not isinstance(f, str | os.PathLike):
            real_save(obj, f, *args, **kwargs)
            return
        import io

        buf = io.BytesIO()
        real_save(obj, buf, *args, **kwargs)
        blob = buf.getvalue()
        with open(f, "wb") as fh:
            fh.write(blob[: len(blob) // 2])
            fh.flush()
            _event("torch-save", f)
            fh.write(blob[len(blob) // 2 :])

    torch.save = save  # type: ignore[assignment]
    return True


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"fd:{fd}"


def parse_log(path: str | Path) -> list[tuple[int, str, str]]:
    """The events of a fault log as ``(n, kind, path)``."""
    out: list[tuple[int, str, str]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        parts = line.split("\t", 2)
        if len(parts) == 3 and parts[0].isdigit():
            out.append((int(parts[0]), parts[1], parts[2]))
    return out
