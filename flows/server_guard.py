"""Prefect's temporary API server, started so that it never outlives the run that started it.

Prefect starts it as a child in our process group: Ctrl-C reaches it too (the run then hangs reporting to a
dead server), and a SIGKILLed run leaves it listening forever. Here it gets its own session, and a small
watchdog process (``flows.watchdog``) ends that session as soon as the run's process is gone, however it ended.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from flows.watchdog import watch

if TYPE_CHECKING:
    from flows.early_server import EarlyServer


class _OwnSession:
    """``subprocess`` for Prefect's server module, starting its children in a new session."""

    def __getattr__(self, name: str) -> Any:
        return getattr(subprocess, name)

    @staticmethod
    def Popen(*args: Any, **kwargs: Any) -> subprocess.Popen:  # noqa: N802 - stands in for subprocess.Popen
        process = subprocess.Popen(*args, start_new_session=True, **kwargs)
        watch(os.getpid(), process.pid)
        _servers.append(process)
        return process


_servers: list[subprocess.Popen] = []  # the temporary servers this process started
_lost: list[str] = []  # how the temporary server ended while a run used it (stop_run_if_server_dies)
WATCH_SECONDS = 0.5  # how often a run checks that its temporary server still runs
TEMPORARY_SERVER_RETRIES = 3  # API retries against the temporary server (Prefect's default: 5, 62 s of back-off)


@contextmanager
def stop_run_if_server_dies() -> Iterator[None]:
    """While the block runs, a thread checks every WATCH_SECONDS that the temporary Prefect server this process
    started still runs; if it ended, the run is stopped at once (``interrupts.interrupt``): it could not record
    its flow run any more, and it must not go on to register a model. Prefect's own stop at exit comes after."""
    from pipeline.process import interrupts

    done = threading.Event()

    def check() -> None:
        while not done.wait(WATCH_SECONDS):
            ended = [(server, server.poll()) for server in list(_servers)]
            if ended and all(code is not None for _, code in ended):  # a second start that found the port taken
                server, code = ended[0]                                  # ends at once: only all of them count
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                _lost.append(f"Prefect's temporary server (pid {server.pid}) stopped during the run ({how})")
                interrupts.interrupt(_lost[0])
                return

    thread = threading.Thread(target=check, name="sae-server-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def server_lost() -> str | None:
    """How the temporary server ended during a run of this process (``stop_run_if_server_dies``), else None."""
    return _lost[0] if _lost else None


def guard_temporary_server() -> None:
    """Make every temporary Prefect server this process starts watched and signal-isolated (idempotent)."""
    from prefect.server.api import server as server_module

    if not isinstance(server_module.subprocess, _OwnSession):
        server_module.subprocess = _OwnSession()  # type: ignore[assignment]


class _NoTraceback(logging.Filter):
    """Drop the traceback from a record (the CLI prints the error in one line; --debug shows it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def quiet_tracebacks() -> None:
    """Prefect's console handlers print task and flow errors without their tracebacks (the API keeps them)."""
    for handler in [*logging.getLogger().handlers, *logging.getLogger("prefect").handlers]:
        if isinstance(handler, logging.StreamHandler) and not any(isinstance(f, _NoTraceback) for f in handler.filters):
            handler.addFilter(_NoTraceback())


@contextmanager
def no_heartbeats_on_temporary_server() -> Iterator[None]:
    """Flow runs started in the block send no heartbeats, and retry API calls fewer times, when they report to
    Prefect's temporary server.

    Heartbeats let a lasting server mark a run whose process died as crashed; the temporary server ends with
    this process, so nothing could ever read them. And each flow run's end waited for its heartbeat thread's
    one-second sleep (0.6 s of a 19 s run, measured). With a Prefect server (``PREFECT_API_URL``) they stay on,
    and the flow run's end does not wait for them.
    """
    from prefect.settings import temporary_settings

    if not temporary_server_expected():
        with _heartbeats_not_waited_for():
            yield
        return
    # Its API calls retry TEMPORARY_SERVER_RETRIES times (2 + 4 + 8 s), not Prefect's 5 (62 s): the server is this
    # process's own, on loopback; once it is gone, each call of the crashed run's shutdown waited out all five.
    with temporary_settings(updates={"flows.heartbeat_frequency": None, "client.max_retries": TEMPORARY_SERVER_RETRIES}):
        yield


@contextmanager
def _heartbeats_not_waited_for() -> Iterator[None]:
    """With a lasting server, flow runs in the block keep their heartbeats, but their end no longer joins the
    heartbeat thread, which sleeps in one-second steps (up to 1 s a flow run); it sees the end and stops by
    itself, as it does for Prefect's async flows (``_send_heartbeats(..., join_on_exit=False)``; private,
    prefect is pinned)."""
    from prefect import flow_engine

    heartbeats = flow_engine._send_heartbeats
    flow_engine._send_heartbeats = functools.partial(heartbeats, join_on_exit=False)
    try:
        yield
    finally:
        flow_engine._send_heartbeats = heartbeats


def temporary_server_expected() -> bool:
    """True when flows here will report to a temporary Prefect server (no ``PREFECT_API_URL``, or the one
    ``flows.early_server`` exported): the first one then waits seconds for it to start, with a core idle."""
    from prefect.settings import get_current_settings

    from flows.early_server import exported_url

    url = get_current_settings().api.url
    return not url or url == exported_url()


_starting: list[threading.Thread] = []  # temporary server starts under way (start_temporary_server_soon)
_announce: list[EarlyServer] = []  # early servers whose start is logged once Prefect's logging is set up


def start_temporary_server_soon(early: EarlyServer | None = None) -> None:
    """Start Prefect's temporary server on a thread now, or name ``early`` (``flows.early_server``, started
    before Prefect was imported) as Prefect's API and wait for it there, and ask it once for its version:
    ``start`` returns once it answers its health check, but its first real answer takes another ~0.3 s of
    set-up. The caller goes on importing and preparing meanwhile (the server takes ~7 s here), then calls
    ``wait_for_temporary_server``. A failed start is left to Prefect, which starts it again in the flow and
    reports what went wrong. Called before any Prefect client exists."""
    import atexit

    import httpx
    from prefect.settings import get_current_settings

    timeout = get_current_settings().server.ephemeral.startup_timeout_seconds
    if early is not None:
        early.export()
        _announce.append(early)
        atexit.register(early.stop)  # before Prefect's own exit handlers register: they run first
    else:
        guard_temporary_server()

    def start() -> None:
        try:
            if early is not None and early.wait_until_healthy(timeout):
                _servers.append(early.process)  # watched by stop_run_if_server_dies as one Prefect started
                url = early.api_url
            else:
                if early is not None:
                    early.unexport()
                url = _prefect_start()
            httpx.get(f"{url}/admin/version", timeout=30)
        except Exception:  # noqa: BLE001, S110 - Prefect's own start in the flow reports it
            pass

    thread = threading.Thread(target=start, name="sae-prefect-server", daemon=True)
    _starting.append(thread)
    thread.start()


def _prefect_start() -> str:
    """Prefect's own temporary server start (in its own session, watched); its API URL."""
    from prefect.server.api.server import SubprocessASGIServer

    guard_temporary_server()
    server = SubprocessASGIServer()
    server.start()
    return server.api_url


def wait_for_temporary_server() -> None:
    """Wait until the server ``start_temporary_server_soon`` started answers (or its start failed)."""
    while _announce:
        early = _announce.pop()
        if early.exported:  # not given back to Prefect's own start, which logs its own
            early.announce()
    while _starting:
        _starting.pop().join()
