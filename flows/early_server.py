"""Prefect's temporary server, started before Prefect is even imported, and handed to Prefect once it is.

A run with no Prefect server waits for the temporary one Prefect starts (7-16 s here). Prefect can only start
it once its server module is imported (~2 s of the run's process) and the CLI used to read the data first
(torch, ~2 s): the server then became the last thing the run waited for. Started here first thing instead,
with exactly the command Prefect runs (``SubprocessASGIServer._run_uvicorn_command``, prefect 3.9), it starts
on the other core while the run imports its code; ``hand_to`` then registers it as Prefect's own temporary
server (``SubprocessASGIServer``: Prefect talks to it, logs its start and stops it at exit as usual) and
``wait_until_healthy`` does what Prefect's ``start`` does. When the run stops early (bad input) or Prefect's
settings name a server after all, ``drop`` ends it; the watchdog (``flows.watchdog``) ends it in any
case once the run's process is gone.
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
PORT_IN_USE = 3  # uvicorn's exit status when the port was taken between choosing and binding it
POLL_S = 0.05


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
    """A temporary Prefect server process started by ``spawn``, until Prefect owns it (``hand_to``)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.process = self._start()

    def _start(self) -> subprocess.Popen:
        from flows.watchdog import watch

        spec = importlib.util.find_spec("prefect")
        assert spec is not None and spec.origin is not None, "prefect is a dependency"
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(Path(spec.origin).parent.parent), "--factory",
                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--log-level", "error", "--lifespan", "on"]
        process = subprocess.Popen(command, env={**os.environ, **SERVER_ENV}, start_new_session=True)
        watch(os.getpid(), process.pid)
        return process

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def hand_to(self, server: Any) -> None:
        """Make this process Prefect's temporary ``SubprocessASGIServer`` ``server`` (as its ``start`` would)."""
        import atexit

        from prefect.server.api.server import subprocess_server_logger

        server.port, server.server_process, server.running = self.port, self.process, True
        subprocess_server_logger.info(
            f"Starting temporary server on {server.address}\nSee https://www.prefect.io/docs/v3/concepts/server"
            "#how-to-guides for more information on running a dedicated Prefect server.")
        atexit.register(server.stop)

    def wait_until_healthy(self, server: Any, timeout: float) -> bool:
        """Poll the health check (a taken port starts it again on another); False if it never answered, and
        then ``server`` is Prefect's to start again (it reports what goes wrong)."""
        import httpx

        deadline = time.monotonic() + timeout
        with httpx.Client() as client:
            while time.monotonic() < deadline:
                if self.process.poll() == PORT_IN_USE:
                    self.port = _free_port()
                    self.process = self._start()
                    server.port, server.server_process = self.port, self.process
                elif self.process.poll() is not None:
                    break
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{self.api_url}/health").status_code == 200:
                        return True
                time.sleep(POLL_S)
        self.drop()
        server.port, server.server_process, server.running = None, None, False
        return False

    def drop(self) -> None:
        """End the server's session now, without waiting (nothing has talked to it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGTERM)


def spawn() -> EarlyServer | None:
    """Start Prefect's temporary server now if one will serve this process's flows, else None.

    Only before Prefect is imported: once it is, its settings decide and its own start runs as before."""
    if "prefect" in sys.modules or server_configured():
        return None
    return EarlyServer()
