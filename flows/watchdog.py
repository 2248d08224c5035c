"""A detached watchdog process that ends a server's session once the process that started it is gone."""

from __future__ import annotations

import subprocess
import sys

WATCHDOG = """
import os, signal, sys, time
parent, server = int(sys.argv[1]), int(sys.argv[2])

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False

while alive(server):
    if not alive(parent):
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            try:
                os.killpg(server, sig)
            except ProcessLookupError:
                break
            end = time.monotonic() + wait
            while time.monotonic() < end and alive(server):
                time.sleep(0.1)
        break
    time.sleep(0.5)
"""


def watch(parent: int, server: int) -> subprocess.Popen:
    """Start a detached watchdog that ends ``server``'s session once ``parent`` has exited."""
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(parent), str(server)], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            close_fds=True)
