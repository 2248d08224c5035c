"""What the warm runner learns from its copies: the modules a command imported only while it ran.

Importing the flow's code is not all a run imports: MLflow's model logging, Prefect's engine and API models,
matplotlib's backend, git for MLflow's tags and more are imported on first use (~1,100 modules, ~2-3 s here).
Each copy writes, as it ends, the modules (and their files) it imported beyond the runner's, from the runner's
own import path (``write_new``); the runner imports them itself between commands, a few at a time
(``Warming``), when they resolve to the same files there, so the next copies find them loaded. An import that
starts a thread would make forking unsafe: warming then stops and the runner starts again without it
(``SAE_RUNNER_LEARN=0``); signal handlers an import sets are put back.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque

SWITCH = "SAE_RUNNER_LEARN"  # "0": the runner imports nothing its copies learned
SLICE_S = 0.05  # imports per turn of the runner's loop: it keeps answering callers meanwhile
NEVER = ("__main__", "__mp_main__", "code_model_", "sae_encoder_pyfunc")  # a logged model's own code
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)


def report_file() -> str:
    """A new file a copy writes its new modules to (``write_new``), read once by ``Warming.learn``."""
    handle, path = tempfile.mkstemp(prefix="sae-runner-", suffix=".json")
    os.close(handle)
    return path


def write_new(path: str, known: set[str], roots: list[str]) -> None:
    """In a copy, as it ends: the modules imported since the fork, in import order, with their files; only those
    from the runner's own import path ``roots`` (never the caller's folder: the runner would import its own
    file of that name, and copies for other folders would get it)."""
    roots = [os.path.abspath(root) for root in roots if root and os.path.isdir(root)]
    new = []
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        top = name.split(".")[0]  # found as <root>/<top>.py, <root>/<top>/..., <root>/<top>.<abi>.so
        if name not in known and (where is None or os.path.abspath(where).startswith(
                tuple(os.path.join(root, top) for root in roots))):
            new.append([name, where])
    with contextlib.suppress(OSError), open(path, "w") as out:
        json.dump(new, out)


class Warming:
    """Modules copies imported, imported by the runner a slice at a time (``step``)."""

    def __init__(self) -> None:
        self.on = os.environ.get(SWITCH, "1") != "0"
        self.pending: deque[tuple[str, str | None]] = deque()  # (module, its file in the copy)
        self.failed: set[str] = set()
        self.handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}

    def learn(self, path: str) -> int:
        """Queue the modules a copy reported in ``path`` (then removed) that the runner lacks; how many."""
        try:
            with open(path) as report:
                names = json.load(report)
        except (OSError, ValueError):
            names = []
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        new = [(n, where) for n, where in names if not n.startswith(NEVER) and n not in sys.modules
               and n not in self.failed]
        if self.on:
            self.pending.extend(new)
        return len(new)

    def step(self) -> str | None:
        """Import pending modules for up to SLICE_S; why warming must stop (a thread started), else None."""
        deadline = time.monotonic() + SLICE_S
        while self.pending and time.monotonic() < deadline:
            name, where = self.pending.popleft()
            if name in sys.modules:
                continue
            try:
                spec = importlib.util.find_spec(name)
                if spec is None or (where is not None and spec.origin != where):  # not the copy's file: leave it
                    self.failed.add(name)
                    continue
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - an import that fails here is simply not warmed
                self.failed.add(name)
            for sig, handler in self.handlers.items():
                if signal.getsignal(sig) is not handler:
                    signal.signal(sig, handler)
            if threading.active_count() != 1:
                self.on = False
                self.pending.clear()
                return f"importing {name} started a thread"
        return None
