"""SIGINT and SIGTERM as a KeyboardInterrupt the run can record, and the exit status the CLI returns for them.

Lightning turns a KeyboardInterrupt inside ``fit`` into ``SystemExit(1)``; ``received()`` still tells which
signal started it, so the run is closed KILLED (SIGINT) or FAILED (SIGTERM) and the CLI exits 130 or 143.
"""

from __future__ import annotations

import signal
from types import FrameType

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
