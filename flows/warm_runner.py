"""The warm runner's side (``python -m flows.warm_runner SOCKET``, started by ``sae-pipeline servers start``):
import the flow's code once, then per command on the socket check that a copy would run it as the caller's own
process would (``refusal``), fork, and in the copy take over the caller's streams, folder and environment and
run ``flows.cli.main``. The caller's side, and why, is ``flows.warm``."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flows import warm
from flows.warm import CONNECT_S, STREAMS
from flows.warm_imports import SWITCH, Warming, report_file, write_new
from pipeline.app.servers import unix_address
from pipeline.process import heap

# Variables read when the interpreter starts or the libraries load (the runner's were read): these must match.
# (PYTHONPATH need not: the copy takes the caller's sys.path; MLflow and Prefect read theirs per call.)
LOAD_TIME = ("OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "NUMEXPR_", "CUDA_", "LD_", "TORCH", "PYTORCH_",
             "PYTHONHASHSEED", "PYTHONWARNINGS", "PYTHONOPTIMIZE", "PYTHONDEVMODE", "PYTHONMALLOC", "VIRTUAL_ENV")
GPU_DEVICES = ("/dev/nvidiactl", "/dev/kfd")  # a forked copy cannot use CUDA/ROCm set up before the fork
REQUEST_MAX = 4 << 20
_start_env: dict[str, str] = {}  # the runner's environment before it imported anything (main)
_reports: dict[int, str] = {}  # copy pid -> the file it writes its new modules to (flows.warm_imports)


def fingerprint() -> tuple[int, int, int]:
    """What changes when the code does: the project's ``.py`` files (count, newest change, total size) and the
    environment's installs (the newest change of a site-packages folder's entries)."""
    home = Path(warm.code_home())
    files = [path.stat() for package in ("flows", "pipeline", "sae") for path in (home / package).rglob("*.py")]
    sites = [os.stat(entry).st_mtime_ns for entry in sys.path if entry.endswith("-packages") and os.path.isdir(entry)]
    newest = max([f.st_mtime_ns for f in files] + sites, default=0)
    return len(files), newest, sum(f.st_size for f in files)


def refusal(request: dict[str, Any], started: tuple[int, int, int]) -> str | None:
    """Why the runner cannot run ``request`` as the caller's own process would, or None."""
    if not sys.platform.startswith("linux") or any(os.path.exists(device) for device in GPU_DEVICES):
        return "it runs on Linux machines without a GPU only (a forked copy cannot use a GPU)"
    if request.get("executable") != sys.executable:
        return f"it runs {sys.executable}, this command {request.get('executable')}"
    if request.get("code") != warm.code_home():
        return f"it runs the code in {warm.code_home()}, this command {request.get('code')}"
    env: dict[str, str] = request.get("env", {})
    own = _start_env or dict(os.environ)  # as the caller's: before the libraries load (they may set some)
    for name in sorted(n for n in {*env, *own} if n.startswith(LOAD_TIME)):
        if env.get(name) != own.get(name):
            return (f"{name} is {env.get(name)!r} here and {own.get(name)!r} in the runner (read while the "
                    "libraries load)")
    if not env.get("PREFECT_API_URL"):
        return "no PREFECT_API_URL (a temporary Prefect server is started by the command's own process)"
    if fingerprint() != started:
        return "the code changed since it started (it restarts on the new code)"
    if threading.active_count() != 1:
        return "it runs threads, and a copy would not be safe"
    return None


def _receive(conn: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """The caller's request (None if it sent none) and the stream descriptors that came with it."""
    data, fds, _, _ = socket.recv_fds(conn, REQUEST_MAX, len(STREAMS))
    return (warm.read_line(conn, data, REQUEST_MAX) if data else None), list(fds)


def serve(path: str) -> None:
    """Import the flow's code, listen on the socket ``path`` and fork a copy per accepted command."""
    with heap.start_up():  # no collections while importing; then frozen: a copy's collections skip it all
        from flows.cli import main as cli_main  # noqa: F401 - what every command imports, loaded once here
        from flows.curve import curve_flow  # noqa: F401
        from flows.pretrain import pretrain_flow  # noqa: F401
        from flows.tune import tune_flow  # noqa: F401

    started = fingerprint()
    abstract = path.startswith("@")  # no file: only the caller's uid check guards it
    if not abstract:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(unix_address(path))
    listener.listen(16)
    if not abstract:
        os.chmod(path, 0o600)  # the user's own commands only (and _accept checks the caller's uid)
    children: dict[int, socket.socket] = {}
    hung_up: set[int] = set()
    warming = Warming()
    restart = False
    _log(f"ready on {path} (pid {os.getpid()})")
    while not (restart and not children):
        watched = [conn for pid, conn in children.items() if pid not in hung_up]
        ready, _, _ = select.select([listener, *watched], [], [], 0 if warming.pending else 0.2)
        for pid, conn in list(children.items()):
            if conn in ready and not conn.recv(1, socket.MSG_PEEK):  # the caller went away: end its copy
                hung_up.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        _reap(children, warming)
        hung_up &= set(children)
        if listener in ready and not restart:
            conn, _ = listener.accept()
            restart = _accept(conn, listener, children, started)
        elif warming.pending:
            with heap.start_up():  # what it imports is frozen too, as the imports above
                why = warming.step()
            if why is not None:
                _log(f"{why}: it starts again and learns no imports from its copies ({SWITCH}=0)")
                os.environ[SWITCH] = "0"
                restart = True
    listener.close()
    os.execv(sys.executable, [sys.executable, "-m", "flows.warm_runner", path])


def _log(text: str) -> None:
    """One line of the runner's log (``<servers dir>/runner.log``)."""
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} warm runner: {text}", flush=True)


def _reap(children: dict[int, socket.socket], warming: Warming) -> None:
    while children:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        learned = warming.learn(_reports.pop(pid, ""))
        conn = children.pop(pid, None)
        code = os.waitstatus_to_exitcode(status)
        _log(f"copy {pid} ended: exit status {code}; it imported {learned} modules the runner had not")
        if conn is not None:
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps({"status": code}).encode() + b"\n")
            conn.close()


def _accept(conn: socket.socket, listener: socket.socket, children: dict[int, socket.socket],
            started: tuple[int, int, int]) -> bool:
    """Fork a copy for the command on ``conn``; True when the runner is to start again on new code."""
    fds: list[int] = []
    try:
        conn.settimeout(CONNECT_S)
        request, fds = _receive(conn)
        if request is None:  # a health check (`servers status`), or a caller that went away
            conn.close()
            return False
        why = refusal(request, started) if len(fds) == len(STREAMS) else "the standard streams did not arrive"
        caller_pid, caller_uid = _caller(conn)
        if caller_uid not in (None, os.getuid()):
            why = "it runs commands of its own user only"
        if caller_pid is not None and _parent_of(caller_pid) == os.getpid():
            why = "the command comes from one of its own copies"  # never a chain of copies
        if why is not None:
            _log(f"refused {' '.join(request.get('argv', []))}: {why}")
            conn.sendall(json.dumps({"refused": why}).encode() + b"\n")
            conn.close()
            return why.startswith("the code changed")
        sys.stdout.flush()  # nothing of the runner's log may reach the caller's streams
        sys.stderr.flush()
        report = report_file()
        pid = os.fork()
        if pid == 0:
            _child(request, fds, [listener, *children.values()], conn, report)
        _reports[pid] = report
        _log(f"copy {pid} runs: sae-pipeline {' '.join(request['argv'])} (in {request['cwd']})")
        conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        conn.settimeout(None)
        children[pid] = conn
    except (OSError, ValueError):
        conn.close()
    finally:
        for fd in fds:
            os.close(fd)
    return False


def _caller(conn: socket.socket) -> tuple[int | None, int | None]:
    """The connected caller's pid and uid (Linux), else Nones."""
    if not hasattr(socket, "SO_PEERCRED"):
        return None, None
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return pid, uid


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _child(request: dict[str, Any], fds: list[int], others: list[socket.socket], conn: socket.socket,
           report: str) -> None:
    """In the fork: become the caller's own process (streams, directory, environment, signals) and run its
    command, then write the modules it imported to ``report``; never returns."""
    code = 1
    known, roots = set(sys.modules), [root for root in sys.path if root not in ("", os.getcwd())]
    warm._copy.append(True)
    try:
        for sock in [*others, conn]:
            sock.close()
        for target, fd in zip(STREAMS, fds, strict=True):
            os.dup2(fd, target)
            os.close(fd)
        fds.clear()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:] = request["path"]
        _reopen_streams()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _settings_from_environment()
        sys.argv = ["sae-pipeline", *request["argv"]]
        from flows.cli import main

        code = main(request["argv"])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:  # noqa: BLE001 - as an uncaught exception ends a process: traceback, status 1
        import traceback

        traceback.print_exc()
    finally:
        import atexit

        atexit._run_exitfuncs()  # Prefect's last logs and events, as at a process's exit
        write_new(report, known, roots)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


def _reopen_streams() -> None:
    """sys.stdin/stdout/stderr anew over fds 0-2 (now the caller's): line-buffered where they are terminals."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        with contextlib.suppress(OSError):
            tty = os.isatty(fd)
            stream = open(fd, mode, buffering=1 if tty and mode == "w" else -1, closefd=False,  # noqa: SIM115
                          encoding=getattr(sys, name).encoding, errors=getattr(sys, name).errors)
            if name == "stderr" and not tty:
                stream.reconfigure(line_buffering=True)
            setattr(sys, name, stream)


def _settings_from_environment() -> None:
    """Prefect's settings and logging read the (caller's) environment again, as at its import."""
    from prefect.context import refresh_global_settings_context
    from prefect.logging.configuration import setup_logging

    refresh_global_settings_context()
    setup_logging(incremental=False)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flows.warm_runner SOCKET``: the runner (``sae-pipeline servers start`` starts it)."""
    from pipeline.process.runtime import quiet_runtime

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m flows.warm_runner SOCKET", file=sys.stderr)
        return 2
    quiet_runtime()  # as the caller's main does before it hands a command over
    _start_env.update(os.environ)
    serve(args[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
