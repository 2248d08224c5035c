"""Prefect's temporary server, started before Prefect is even imported, and named to Prefect as its API.

A run with no Prefect server waits for the temporary one Prefect starts (7-16 s here). Prefect can only start
it once its server module is imported (2.4-2.6 s of the run's process) and the CLI used to read the data first
(torch, ~2 s): the server then became the last thing the run waited for. Started here first thing instead,
with exactly the command Prefect runs (``SubprocessASGIServer._run_uvicorn_command``, prefect 3.9), it starts
on the other core while the run imports its code. ``export`` then names it in ``PREFECT_API_URL`` (and no UI,
as for Prefect's own temporary server), so Prefect talks to it as to any server and its server module is never
imported; the run still treats it as temporary (``server_guard.temporary_server_expected``: no heartbeats,
fewer retries, the run stops if it dies), and ``stop`` ends it at exit as Prefect's ``stop`` would, with the
same log lines. Should it never answer, ``unexport`` gives the start back to Prefect. When
the run stops early (bad input) or Prefect's settings name a server after all, ``drop`` ends it; the watchdog
(``flows.watchdog``) ends it in any case once the run's process is gone.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PORTS = range(8000, 9000)  # Prefect's choice for its temporary server
SERVER_ENV = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
# Unless set: a server that lives for one run sends no usage telemetry (offline, its failure was an ERROR line
# in the run's output; `make` and `servers start` turn it off too).
SERVER_DEFAULTS = {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
PORT_IN_USE = 3  # uvicorn's exit status when the port was taken between choosing and binding it
POLL_S = 0.05
STOP_WAIT_S = 5  # as Prefect's stop: SIGTERM, then SIGKILL after this long
_exported: list[EarlyServer] = []  # the server ``export`` named, while it is named


def server_configured(environ: dict[str, str] | None = None, cwd: Path | None = None) -> bool:
    """True when Prefect's settings may name a server (so no temporary one should start early): the variable
    ``PREFECT_API_URL``, or a settings file that mentions one (profiles, ``.env``, ``prefect.toml``,
    ``pyproject.toml``'s ``[tool.prefect]``). Read without importing Prefect; a wrong "no" costs only the
    early start, which ``drop`` ends once Prefect's own settings say otherwise."""
    environ = os.environ if environ is None else environ
    cwd = Path.cwd() if cwd is None else cwd
    if environ.get("PREFECT_API_URL"):
        return True
    home = Path(environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    mentions = {Path(environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml").expanduser(): "API_URL",
                cwd / ".env": "API_URL", cwd / "prefect.toml": "api", cwd / "pyproject.toml": "tool.prefect"}
    for path, word in mentions.items():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if word in path.read_text():
                return True
    return False


def _free_port() -> int:
    for _ in range(20):
        port = random.choice(PORTS)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for Prefect's temporary server")


class EarlyServer:
    """A temporary Prefect server process started by ``spawn``."""

    def __init__(self) -> None:
        self.exported: list[str] = []  # the variables ``export`` set
        self.port = _free_port()
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        from flows.watchdog import watch

        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None, "prefect is a dependency"
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "error", "--lifespan", "on"]
        environ = {name: value for name, value in os.environ.items() if name not in self.exported}
        process = subprocess.Popen(command, env={**SERVER_DEFAULTS, **environ, **SERVER_ENV}, start_new_session=True)
        watch(os.getpid(), process.pid)
        return process

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.address}/api"

    def export(self) -> None:
        """Name this server as Prefect's API (``PREFECT_API_URL``; ``PREFECT_UI_URL`` empty: a temporary server
        serves no UI, unless it is set) in the environment and in Prefect's settings, before any client
        exists."""
        self.exported = ["PREFECT_API_URL"] + [name for name in ("PREFECT_UI_URL",) if name not in os.environ]
        os.environ.update({"PREFECT_API_URL": self.api_url} | dict.fromkeys(self.exported[1:], ""))
        _exported[:] = [self]
        _refresh_prefect_settings()

    def announce(self) -> None:
        """Log the start as Prefect does for its own temporary server (once Prefect's logging is set up)."""
        _prefect_logger().info(f"Starting temporary server on {self.address}\nSee https://www.prefect.io/docs/v3/"
                               "concepts/server#how-to-guides for more information on running a dedicated Prefect "
                               "server.")

    def unexport(self) -> None:
        """Undo ``export`` (the server never answered): Prefect then starts its own and reports what fails."""
        for name in self.exported:
            os.environ.pop(name, None)
        self.exported = []
        _exported.clear()
        _refresh_prefect_settings()

    def stop(self) -> None:
        """End the server as Prefect's ``stop`` does (at exit, after Prefect's own exit handlers sent their last
        logs and events): SIGTERM, then SIGKILL after STOP_WAIT_S."""
        if self.process.poll() is not None:
            return
        _prefect_logger().info(f"Stopping temporary server on {self.address}")
        self.drop()
        try:
            self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def wait_until_healthy(self, timeout: float) -> bool:
        """Poll the health check (a taken port starts it again on another, exported again); False if it never
        answered (it is then ended)."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() == PORT_IN_USE:
                    self.port = _free_port()
                    self.process = self._start()
                    if self.exported:
                        os.environ["PREFECT_API_URL"] = self.api_url
                        _refresh_prefect_settings()
                elif self.process.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return True
                time.sleep(POLL_S)
        self.drop()
        return False

    def drop(self) -> None:
        """End the server's session now, without waiting (nothing has talked to it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)


def exported_url() -> str | None:
    """The API URL ``EarlyServer.export`` named (a temporary server), else None."""
    return _exported[0].api_url if _exported else None


def _refresh_prefect_settings() -> None:
    """Prefect's settings read the environment again (they were read when Prefect was imported)."""
    from prefect.context import refresh_global_settings_context

    refresh_global_settings_context()


def _prefect_logger() -> Any:
    from prefect.logging import get_logger

    return get_logger()  # the logger Prefect's temporary server start and stop write to


def spawn() -> EarlyServer | None:
    """Start Prefect's temporary server now if one will serve this process's flows, else None.

    Only before Prefect is imported: once it is, its settings decide and its own start runs as before."""
    if "prefect" in sys.modules or server_configured():
        return None
    return EarlyServer()
