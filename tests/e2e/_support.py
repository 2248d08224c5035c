"""Shared by the end-to-end tests: free ports, real servers, subprocesses in their own groups, Prefect's REST API.

Nothing here imports prefect: the test process talks to the servers over HTTP, and the CLI, server and
worker run as subprocesses with their own PREFECT_HOME.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from pipeline.app import servers
from tests import ROOT

TERMINAL_BAD = {"FAILED", "CRASHED"}  # CANCELLED: a scheduled run skipped while another one ran


def answers(url: str) -> bool:
    """Whether GET ``url`` returns 200 within 2 seconds."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def serving(command: list[str], *, ready_url: str, log: Path, env: dict[str, str], cwd: Path, seconds: float,
            what: str) -> Iterator[subprocess.Popen]:
    """Start a server in its own process group, wait until ``ready_url`` answers (else fail with its log), yield
    its process; always SIGTERM the group, SIGKILL it if it lingers."""
    import pytest

    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + seconds
            while not answers(ready_url):
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"{what} did not answer {ready_url}:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
            yield process
        finally:
            stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM the process group of ``process`` (a server and its workers); SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_servers(directory: Path, runner: bool = True):
    """Prefect and MLflow servers on free loopback ports (and the warm runner, unless not ``runner``: runs that
    a Prefect worker or ``serve`` starts do not go through it); yields the env that points clients at them."""
    env = servers.start(directory, free_port(), free_port(), timeout=120, quiet=True, runner=runner)
    try:
        yield env
    finally:
        servers.stop(directory)


def server_pids(directory: Path) -> list[int]:
    """Pids recorded by ``pipeline.app.servers.start``."""
    return [json.loads(p.read_text())["pid"] for p in sorted(directory.glob("*.pid"))]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def client_env(tmp: Path, server_env: dict[str, str], **extra: str) -> dict[str, str]:
    """Environment for CLI / worker subprocesses: the servers, a private PREFECT_HOME, no telemetry."""
    return {**os.environ, **server_env, "PREFECT_HOME": str(tmp / "client-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false",
            "PYTHONPATH": str(ROOT), **extra}


def tiny_config(tmp: Path, name: str) -> Path:
    """A two-layer digits config (2 epochs, no fine-tuning) tracked to $MLFLOW_TRACKING_URI."""
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "cache_dir": str(tmp / "cache"),
        "data": {"source": "digits"},
        "defaults": {"epochs": 2, "batch_size": 128, "lr": 0.01},
        "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 16}, {"hidden": 8}],
        "finetune": {"epochs": 0},
    }))
    return path


@contextmanager
def background(command: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT, grace: float = 60):
    """Run ``command`` in its own process group; on exit SIGTERM the whole group, SIGKILL it after ``grace``
    seconds (a stopping ``serve`` lets a flow run it already started finish first: 10 s was too short on a
    busy machine, and the SIGKILL then skipped what it does after Prefect stops)."""
    with log.open("w") as out:
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield proc
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(timeout=grace)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> str:
    """``sae-pipeline ARGS`` in a subprocess; its stdout (fails the test with stderr on a non-zero exit)."""
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def api(env: dict[str, str], path: str, body: dict | None = None, tries: int = 5) -> object:
    """POST (or GET without body) to the Prefect REST API. A 503 (the server's sqlite database busy, as while a
    worker or a schedule writes) is retried after a second, as Prefect's own client does."""
    url = env["PREFECT_API_URL"].rstrip("/") + path
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(tries):
        request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"},
                                         method="GET" if body is None else "POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            if error.code != 503 or attempt == tries - 1:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def wait_for_completed_run(env: dict[str, str], timeout: float, log: Path, proc: subprocess.Popen) -> dict:
    """The first COMPLETED flow run; fails early on a failed run or a dead serve/worker process."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = api(env, "/flow_runs/filter", {"sort": "EXPECTED_START_TIME_ASC"})
        for run in runs:
            state = run.get("state") or {}
            if state.get("type") == "COMPLETED":
                return run
            assert state.get("type") not in TERMINAL_BAD, f"{run['name']}: {state}\n{log.read_text()[-4000:]}"
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()[-4000:]}"
        time.sleep(1)
    raise AssertionError(f"no flow run completed within {timeout:.0f}s:\n{log.read_text()[-4000:]}")
