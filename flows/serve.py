"""``fusioncube serve``: a Prefect server when none is configured, the deployments registered and served.

    fusioncube serve [--catalog data_catalog.yaml] [--host 127.0.0.1] [--port 4200] [--limit N]

When ``PREFECT_API_URL`` is not set (environment or Prefect profile), a local server is started as
a child process, ``prefect server start --host 127.0.0.1 --port N``, with its SQLite database under
``<storage root>/.prefect`` (``PREFECT_HOME``), and waited for until ``/api/health`` answers. The
deployments of ``deployments/pipeline.py`` are then registered with it and served from this
process (``prefect.serve``), so ``prefect deployment run 'fusioncube-pipeline/pipeline-planet'`` and
the UI's Run button both start runs here. Ctrl-C (or SIGTERM) stops serving, pauses the schedules
and stops the server this command started; a server it did not start is left alone.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "DEFAULT_PORT",
    "LocalServer",
    "add_cli",
    "configured_api_url",
    "free_port",
    "local_server",
    "serve",
    "start_local_server",
    "use_api",
    "wait_healthy",
]

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 4200


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((_client_host(host), port)) == 0


def _client_host(host: str) -> str:
    """The address a client on this machine uses to reach a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def wait_healthy(
    api_url: str, *, timeout: float = 120.0, process: subprocess.Popen[bytes] | None = None,
    log_path: Path | None = None,
) -> float:
    """Poll ``<api_url>/health`` until it answers 200; return the seconds waited.

    Raises
    ------
    RuntimeError
        When ``process`` (the server) exits first, or ``timeout`` passes; the message carries
        the end of the server's log.
    """
    t0 = time.monotonic()
    url = api_url.rstrip("/") + "/health"
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with code {process.returncode} before "
                               f"{url} answered{_log_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the Prefect server did not answer {url} within {timeout:.0f} s"
                               f"{_log_tail(log_path)}")
        time.sleep(0.25)


def _log_tail(log_path: Path | None, lines: int = 20) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; the end of its log ({log_path}):\n" + "\n".join(tail)


@dataclass
class LocalServer:
    """A ``prefect server start`` child process (its own session, so Ctrl-C reaches it only
    through :meth:`stop`)."""

    host: str
    port: int
    home: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    started_s: float = field(default=0.0)

    @property
    def api_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{_client_host(self.host)}:{self.port}"

    @property
    def database(self) -> Path:
        return self.home / "prefect.db"

    def stop(self, timeout: float = 20.0) -> int:
        """SIGINT (a Ctrl-C: the server shuts down cleanly), then SIGKILL after ``timeout``;
        returns the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("Prefect server %s did not stop in %.0f s; killing it", self.pid, timeout)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return int(self.process.returncode)

    @property
    def pid(self) -> int:
        return int(self.process.pid)


def start_local_server(
    home: str | Path,
    *,
    host: str = DEFAULT_HOST,
    port: int | None = None,
    timeout: float = 120.0,
) -> LocalServer:
    """Start ``prefect server start --host HOST --port PORT`` with ``PREFECT_HOME=home`` (its SQLite
    database is ``home/prefect.db``) and wait until its health endpoint answers.

    Parameters
    ----------
    home
        ``PREFECT_HOME`` of the server: database, log (``server.log``).
    host
        Address to bind; ``127.0.0.1`` keeps the UI and API to this machine.
    port
        Port (default: a free one). A port already in use is refused, not shared.
    timeout
        Seconds to wait for ``/api/health``.
    """
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    if port is None:
        port = free_port(_client_host(host))
    elif not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535; got {port}")
    elif _port_in_use(host, port):
        raise RuntimeError(f"port {port} on {host} is already in use; pick another with --port, "
                           f"or point PREFECT_API_URL at the server that listens there")
    api_url = f"http://{_client_host(host)}:{port}/api"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_API_KEY")}
    env.update({
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_API_HOST": host,
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_SERVER_ANALYTICS_ENABLED": env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    })
    if "PREFECT_UI_API_URL" not in env and "PREFECT_SERVER_UI_API_URL" not in env:
        # the UI is told where the API is; without this it would call the default port 4200
        env["PREFECT_SERVER_UI_API_URL"] = api_url
    log_path = home / "server.log"
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    log.info("starting %s (PREFECT_HOME=%s, log %s)", " ".join(cmd), home, log_path)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = LocalServer(host=host, port=port, home=home, process=process, log_path=log_path)
    try:
        server.started_s = wait_healthy(api_url, timeout=timeout, process=process, log_path=log_path)
    except BaseException:
        server.stop()
        raise
    log.info("Prefect server up at %s after %.1f s", server.ui_url, server.started_s)
    return server


@contextlib.contextmanager
def local_server(home: str | Path, **kwargs: object) -> Iterator[LocalServer]:
    """:func:`start_local_server` as a context manager: the server is stopped on exit."""
    server = start_local_server(home, **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


def configured_api_url() -> str | None:
    """``PREFECT_API_URL`` as Prefect sees it (environment, ``prefect.toml`` or the active profile);
    None when unset, i.e. when Prefect would use a throw-away in-process server."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url) if url else None


@contextlib.contextmanager
def use_api(api_url: str) -> Iterator[None]:
    """Point Prefect at ``api_url`` in this process and in the processes it starts (flow runs)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    before = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield
    finally:
        if before is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = before


def _ui_url(api_url: str) -> str:
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    return str(ui) if ui else api_url.rstrip("/").removesuffix("/api")


def serve(
    catalog_path: str | Path | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    prefect_home: str | Path | None = None,
    cron: str | None = None,
    limit: int | None = None,
    server_timeout: float = 120.0,
) -> int:
    """Register the pipeline and backfill deployments and serve them until interrupted.

    Starts a local Prefect server first when ``PREFECT_API_URL`` is not configured (see the
    module docstring). Returns the process exit code.
    """
    from deployments.pipeline import DEFAULT_CATALOG, all_deployments
    from tasks.catalog import load_catalog

    catalog_file = Path(catalog_path or DEFAULT_CATALOG).resolve()
    catalog = load_catalog(catalog_file)  # a bad catalog stops here, before a server starts
    server: LocalServer | None = None
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if in_main_thread else {}
    api_url = configured_api_url()
    try:
        # Ctrl-C / SIGINT and SIGTERM (systemd, docker stop, kill) stop serving alike, also when
        # started in the background by a script (where SIGINT is inherited as ignored)
        if in_main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        if api_url is None:
            home = Path(prefect_home).resolve() if prefect_home else catalog.root.resolve() / ".prefect"
            print(f"No PREFECT_API_URL configured: starting a local Prefect server on {host}:{port} "
                  f"(database {home / 'prefect.db'}, log {home / 'server.log'}) ...", flush=True)
            server = start_local_server(home, host=host, port=port, timeout=server_timeout)
            api_url = server.api_url
            print(f"Prefect server up after {server.started_s:.1f} s (pid {server.pid}).", flush=True)
        else:
            print(f"Using the Prefect server at {api_url} (PREFECT_API_URL) ...", flush=True)
            wait_healthy(api_url, timeout=min(server_timeout, 30.0))
        with use_api(api_url):
            deployments = all_deployments(catalog_file, cron=cron)
            print(f"Prefect UI: {_ui_url(api_url)}", flush=True)
            print(f"Serving {len(deployments)} deployments of {catalog_file}; Ctrl-C stops "
                  f"{'serving and the server' if server else 'serving'}.", flush=True)
            from prefect import serve as prefect_serve

            prefect_serve(*deployments, limit=limit)
    except KeyboardInterrupt:
        pass
    finally:
        for sig, handler in previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        if server is not None:
            code = server.stop()
            print(f"Prefect server stopped (exit code {code}).", flush=True)
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        return serve(args.catalog, host=args.host, port=args.port, prefect_home=args.prefect_home,
                     cron=args.cron, limit=args.limit, server_timeout=args.server_timeout)
    except RuntimeError as exc:  # no server: port taken, server failed to start or unreachable
        print(f"fusioncube serve: error: {exc}", file=sys.stderr)
        return 2


def add_cli(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``fusioncube serve``."""
    s = subparsers.add_parser(
        "serve", help="serve the pipeline and backfill deployments (starts a local Prefect server "
        "when PREFECT_API_URL is not set)",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[2],
    )
    s.add_argument("--catalog", default=None, help="catalog (default: the repository's data_catalog.yaml)")
    s.add_argument("--host", default=DEFAULT_HOST,
                   help="address the local server binds (default 127.0.0.1: this machine only; "
                   "0.0.0.0 also needs PREFECT_UI_API_URL=http://<this host>:<port>/api for remote browsers)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="port of the local server (default 4200)")
    s.add_argument("--prefect-home", default=None,
                   help="PREFECT_HOME of the local server (default: <catalog storage root>/.prefect)")
    s.add_argument("--cron", default=None,
                   help="schedule of every pipeline deployment (default: the catalog's "
                   "cubes.<cube>.schedule, else orchestration.schedule, else hourly '0 * * * *')")
    s.add_argument("--limit", type=int, default=None, help="most flow runs at once (default: no limit)")
    s.add_argument("--server-timeout", type=float, default=120.0,
                   help="seconds to wait for the local server to answer (default 120)")
    s.set_defaults(func=_cmd_serve)
