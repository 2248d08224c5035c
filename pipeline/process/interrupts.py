"""SIGINT and SIGTERM as a KeyboardInterrupt the run can record, and the exit status the CLI returns for them.

Lightning turns a KeyboardInterrupt inside ``fit`` into ``SystemExit(1)``; ``received()`` still tells which
signal started it, so the run is closed KILLED (SIGINT) or FAILED (SIGTERM) and the CLI exits 130 or 143.
``deferred`` holds them back while a write to the tracking store runs: a KeyboardInterrupt inside one of
SQLAlchemy's sqlite transactions left the database locked for the rest of the process, so the run could not
even be marked FAILED (each later write waited 20 s, then failed).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

HELD = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []
_previous: dict[int, object] = {}
_reasons: list[str] = []  # why something other than a signal interrupted the main thread (``interrupt``)


def install() -> None:
    """Route SIGINT and SIGTERM through ``_interrupt`` (main thread only)."""
    _received.clear()
    for signum in (signal.SIGINT, signal.SIGTERM):
        _previous.setdefault(signum, signal.getsignal(signum))
        signal.signal(signum, _interrupt)


def uninstall() -> None:
    """Restore the handlers ``install`` replaced and forget received signals (for in-process callers, tests)."""
    for signum, handler in _previous.items():
        signal.signal(signum, handler)  # type: ignore[arg-type]
    _previous.clear()
    _received.clear()
    _reasons.clear()


def interrupt(reason: str) -> None:
    """From another thread: stop the main thread's work now (a KeyboardInterrupt there), recording ``reason``,
    which the run's failure record and the CLI's one line then give instead of a signal's name."""
    import _thread

    if not _reasons:
        _reasons.append(reason)
        _thread.interrupt_main()


def reason() -> str | None:
    """What ``interrupt`` recorded since ``install``, else None."""
    return _reasons[0] if _reasons else None


def _interrupt(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    # A second signal while the run records its failure gets the default action (a second Ctrl-C quits now).
    signal.signal(signum, signal.SIG_DFL)
    raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")


def received() -> int | None:
    """The first SIGINT/SIGTERM received since ``install``, else None."""
    return _received[0] if _received else None


def signal_of(error: BaseException | None) -> int | None:
    """The signal that ended the run: ours, or the one an orchestrator's exception carries (Prefect's
    TerminationSignal replaces our SIGTERM handler while a flow runs), looking through the exception chain."""
    if received() is not None:
        return received()
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        signum = getattr(error, "signal", None)
        if isinstance(signum, int) and signum in (signal.SIGINT, signal.SIGTERM):
            return signum
        error = error.__cause__ or error.__context__
    return None


def exit_status(signum: int) -> int:
    """The shell's convention: 128 + signal number (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signum)


@contextmanager
def deferred() -> Iterator[None]:
    """On the main thread, a SIGINT or SIGTERM (or ``interrupt``, which arrives as SIGINT) that comes while the
    block runs is handed to its handler when the block ends, so the block is never torn; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, FrameType | None]] = []
    previous = {signum: signal.getsignal(signum) for signum in HELD}
    for signum in HELD:
        signal.signal(signum, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        if caught:
            _deliver(*caught[0], previous[caught[0][0]])


def _deliver(signum: int, frame: FrameType | None, handler: Any) -> None:
    """What ``handler`` (as ``signal.getsignal`` gave it) does with the held signal."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    # SIG_IGN, or None (a handler not set from Python): nothing to do


def shield_methods(*names: str) -> Callable[[type], type]:
    """Class decorator: the named methods run under ``deferred`` (a fresh one per call: ``deferred()`` is a
    ``contextlib`` decorator too)."""
    def decorate(cls: type) -> type:
        for name in names:
            setattr(cls, name, deferred()(getattr(cls, name)))
        return cls

    return decorate
