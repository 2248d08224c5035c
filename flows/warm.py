"""The warm runner, the caller's side: hand a command to a process that imported the flow's code once.

Every ``sae-pipeline run`` spent ~7 s of its own importing torch, Lightning, Prefect and MLflow before it
did anything (``benchmarks/run_floor.py``): more than a small run's whole work. ``sae-pipeline servers start``
now also starts this runner beside the servers (``SAE_RUNNER`` names its socket, exported with the servers'
URLs). ``run``, ``tune`` and ``curve`` then hand their command line, working directory, environment and
standard streams to it (``delegate``); it forks, and the copy runs the command exactly as the command's own
process would have (``flows.cli.main``), writing to the caller's terminal; the caller forwards Ctrl-C and
SIGTERM to it and exits with its status.

It runs the caller's command only when the copy would behave as the caller's own process: same interpreter,
same code (a changed ``.py`` file under flows/, pipeline/ or sae/, or an install in the environment, makes the
runner refuse and start itself again on the new code), the same variables read while the libraries load
(threads, PYTHON*, CUDA, MLflow's; Prefect's settings are read again in the copy), and a Prefect server named
(``PREFECT_API_URL``): the temporary server path stays the command's own. Otherwise, or when nothing answers
on the socket, the command runs in its own process as before, after one line on stderr saying why. The
runner's side is ``flows.warm_runner``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.app.servers import unix_address

ENV_VAR = "SAE_RUNNER"
COMMANDS = frozenset({"run", "tune", "curve"})
CONNECT_S = 2.0  # a runner that does not answer its socket this fast is left alone
STREAMS = (0, 1, 2)
EXIT_SIGNAL_BASE = 128
_copy: list[bool] = []  # set in a forked copy (flows.warm_runner): its command runs there, never handed over again


# -- the caller ---------------------------------------------------------------------------------------------

def delegate(argv: Sequence[str]) -> int | None:
    """Run ``argv`` (a ``sae-pipeline`` command line) in the warm runner ``SAE_RUNNER`` names: its exit
    status, or None when it is to run in this process (no runner, another command, or the runner refused)."""
    path = os.environ.get(ENV_VAR)
    if not path or _copy or not argv or argv[0] not in COMMANDS or any(a in ("-h", "--help") for a in argv):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_S)
        sock.connect(unix_address(path))
        request = {"argv": list(argv), "cwd": os.getcwd(), "env": dict(os.environ), "executable": sys.executable,
                   "code": code_home(), "path": sys.path}
        socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], list(STREAMS))
        reply = read_line(sock)
    except OSError as error:
        sock.close()
        _note(f"the warm runner at {path} did not answer ({error.strerror or error}); running in this process")
        return None
    if reply is None or "refused" in reply:
        sock.close()
        why = "it closed the connection" if reply is None else reply["refused"]
        _note(f"the warm runner did not take this command: {why}; running in this process")
        return None
    return _follow(sock, int(reply["pid"]))


def _follow(sock: socket.socket, pid: int) -> int:
    """Forward Ctrl-C, SIGTERM and SIGHUP to the runner's copy ``pid`` until it ends; its exit status."""
    def forward(signum: int, frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        sock.settimeout(None)
        reply = read_line(sock)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    if reply is None:
        _note("the warm runner ended during the command (`sae-pipeline servers status`)")
        return 1
    status = int(reply["status"])
    return status if status >= 0 else EXIT_SIGNAL_BASE - status


def read_line(sock: socket.socket, data: bytes = b"", limit: int | None = None) -> dict[str, Any] | None:
    """One JSON line from ``sock`` (``data``: what was already received); None if it closed first or the line
    passed ``limit`` bytes."""
    while not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk or (limit is not None and len(data) + len(chunk) > limit):
            return None
        data += chunk
    return json.loads(data)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr, flush=True)


def code_home() -> str:
    return str(Path(__file__).resolve().parents[1])


