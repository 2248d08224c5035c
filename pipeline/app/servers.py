"""A local Prefect server and MLflow server in the background (``make servers``), their data under one directory.

``start`` launches ``prefect server start`` and ``mlflow server`` bound to 127.0.0.1, each in its own process
group, and the warm runner (``flows.warm``: the flow's code imported once, a forked copy per command, on a
socket in the directory), writes ``<name>.pid`` and ``<name>.log`` into the directory, waits for their health
endpoints and prints the URLs and the environment variables that point the CLI at them. ``stop`` ends exactly
the process groups recorded in those pid files (after checking the pid still runs that server).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import InputError

HOST = "127.0.0.1"
NAMES = ("prefect", "mlflow", "runner")
RUNNER_MODULE = "flows.warm_runner"  # started as a command (``python -m``): pipeline/ imports nothing from flows/
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0
SOCKET_PATH_MAX = 100  # a socket path's room is 108 bytes; longer ones get an abstract name


@dataclass(frozen=True)
class Server:
    """One background server: its name, URL, health endpoint and the env var that points clients at it."""

    name: str
    url: str
    health: str
    env: dict[str, str]


def _executable(name: str) -> str:
    """The console script installed beside this interpreter (the project's venv)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.is_file() else name


def port_free(host: str, port: int) -> bool:
    """True when nothing accepts connections on ``host:port``."""
    with socket.socket() as sock:
        return sock.connect_ex((host, port)) != 0


def unix_address(name: str) -> str:
    """A socket name as ``bind``/``connect`` take it: ``@name`` is Linux's abstract namespace (no file)."""
    return "\0" + name[1:] if name.startswith("@") else name


def runner_socket(directory: Path) -> str:
    """The warm runner's socket: ``<directory>/runner.sock``, or an abstract name derived from the directory
    where that path is too long for a socket (108 bytes)."""
    path = str(directory / "runner.sock")
    if len(path.encode()) < SOCKET_PATH_MAX:
        return path
    return f"@sae-runner-{hashlib.sha256(str(directory).encode()).hexdigest()[:24]}"


def _healthy(url: str) -> bool:
    if url.startswith("unix:"):  # the runner: its socket accepts
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            return sock.connect_ex(unix_address(url.removeprefix("unix:"))) == 0
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int, marker: str) -> bool:
    """True when ``pid`` runs and its command line mentions ``marker`` (so a recycled pid is left alone)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc (macOS): trust the pid file
    return marker in cmdline


def _specs(directory: Path, host: str, prefect_port: int, mlflow_port: int) -> dict[str, tuple[Server, list[str],
                                                                                                  dict[str, str]]]:
    """name -> (server, command, extra environment)."""
    prefect_url, mlflow_url = f"http://{host}:{prefect_port}", f"http://{host}:{mlflow_port}"
    store, runner = directory / "mlflow", runner_socket(directory)
    return {
        "prefect": (
            Server("prefect", prefect_url, f"{prefect_url}/api/health", {"PREFECT_API_URL": f"{prefect_url}/api"}),
            [_executable("prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
            # The UI asks the server where its API is: without this it says port 4200 whatever port serves it.
            {"PREFECT_HOME": str(directory / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
             "PREFECT_UI_API_URL": f"{prefect_url}/api", "DO_NOT_TRACK": "1"},
        ),
        "mlflow": (
            Server("mlflow", mlflow_url, f"{mlflow_url}/health", {"MLFLOW_TRACKING_URI": mlflow_url}),
            [_executable("mlflow"), "server", "--backend-store-uri", f"sqlite:///{(store / 'mlflow.db').resolve()}",
             "--artifacts-destination", str((store / "artifacts").resolve()), "--serve-artifacts",
             "--host", host, "--port", str(mlflow_port), "--workers", "1"],
            {"MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"},
        ),
        "runner": (
            Server("runner", f"unix:{runner}", f"unix:{runner}", {"SAE_RUNNER": runner}),
            [sys.executable, "-m", RUNNER_MODULE, runner],
            {"PREFECT_API_URL": f"{prefect_url}/api", "MLFLOW_TRACKING_URI": mlflow_url},
        ),
    }


def start(
    directory: str | Path = ".servers",
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    *,
    host: str = HOST,
    timeout: float = START_TIMEOUT_S,
    quiet: bool = False,
    runner: bool = True,
) -> dict[str, str]:
    """Start the servers (unless already running from ``directory``): Prefect, MLflow and, unless not
    ``runner``, the warm runner; return the env vars that use them."""
    directory = Path(directory).resolve()
    (directory / "mlflow").mkdir(parents=True, exist_ok=True)
    specs = _specs(directory, host, prefect_port, mlflow_port)
    if not runner:
        del specs["runner"]
    started: list[str] = []
    for name, (server, command, extra_env) in specs.items():
        if _running(directory, name):
            continue
        port = int(server.url.rsplit(":", 1)[1]) if server.url.startswith("http") else None
        if port is not None and not port_free(host, port):
            stop(directory, only=started)
            raise InputError(f"{name} server: port {port} on {host} is already in use; stop what uses it or "
                             f"choose another port (sae-pipeline servers start uses {name}_port={port})")
        log = (directory / f"{name}.log").open("ab")
        process = subprocess.Popen(command, env={**os.environ, **extra_env}, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, cwd=directory)
        (directory / f"{name}.pid").write_text(json.dumps({"pid": process.pid, "url": server.url,
                                                           "health": server.health, "env": server.env}))
        started.append(name)
    deadline = time.monotonic() + timeout
    for name, (server, _, _) in specs.items():
        while not _healthy(server.health):
            if time.monotonic() > deadline or not _running(directory, name):
                tail = (directory / f"{name}.log").read_text(errors="replace")[-2000:]
                stop(directory, only=started)
                raise RuntimeError(f"{name} server did not become healthy at {server.health} within {timeout:.0f}s; "
                                   f"log {directory / (name + '.log')}:\n{tail}")
            time.sleep(0.5)
    env = {k: v for server, _, _ in specs.values() for k, v in server.env.items()}
    if not quiet:
        _print_summary(directory, [s for s, _, _ in specs.values()], env)
    return env


def _print_summary(directory: Path, servers: list[Server], env: dict[str, str]) -> None:
    for server in servers:
        print(f"{server.name:8s} {server.url}  (log {directory / (server.name + '.log')})")
    print("Point the CLI at them (schedules need the Prefect server):")
    for key, value in env.items():
        print(f"  export {key}={value}")
    print(f"Stop them with `make servers-stop` (sae-pipeline servers stop --dir {directory}).")


def _record(directory: Path, name: str) -> dict | None:
    path = directory / f"{name}.pid"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _running(directory: Path, name: str) -> bool:
    record = _record(directory, name)
    return record is not None and _alive(int(record["pid"]), name)


def stop(directory: str | Path = ".servers", *, only: list[str] | None = None) -> list[str]:
    """Stop the servers recorded in ``directory`` (their process groups); return the names stopped."""
    directory = Path(directory).resolve()
    stopped = []
    for name in only if only is not None else NAMES:
        record = _record(directory, name)
        if record is None:
            continue
        pid = int(record["pid"])
        if _alive(pid, name):
            _terminate(pid)
            stopped.append(name)
        (directory / f"{name}.pid").unlink(missing_ok=True)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return stopped


def _terminate(pid: int) -> None:
    """SIGTERM the process group led by ``pid``, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own child: reap it
                    return
            except ChildProcessError:
                try:
                    os.killpg(pid, 0)
                except ProcessLookupError:
                    return
            time.sleep(0.2)


def status(directory: str | Path = ".servers") -> dict[str, str]:
    """Print and return each server's state: ``up <url>``, ``starting``, or ``stopped``."""
    directory = Path(directory).resolve()
    out = {}
    for name in NAMES:
        record = _record(directory, name)
        if record is None or not _alive(int(record["pid"]), name):
            out[name] = "stopped"
        else:
            out[name] = f"up {record['url']}" if _healthy(record["health"]) else "starting"
        print(f"{name:8s} {out[name]}")
    return out
