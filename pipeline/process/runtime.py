"""Process-wide settings that a command line (or a test session) owns; library imports never set them.

Call ``quiet_runtime()`` first thing in an entry point: ``OMP_WAIT_POLICY`` is read when torch loads
OpenMP, so it only takes effect before torch is imported.
"""

from __future__ import annotations

import os
import sys

from pipeline.process.heap import exit_without_collecting
from sae.quiet import silence_lightning

# OpenMP threads that spin while waiting made small layers 5-20x slower whenever the other core was busy.
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def quiet_runtime() -> None:
    """Set THREAD_ENV (unless already set), silence Lightning's routine notices and let the exit skip the garbage
    collector's walk over every object (``pipeline.process.heap``), for this whole process."""
    if "torch" not in sys.modules:  # too late otherwise: OpenMP has read its environment already
        for name, value in THREAD_ENV.items():
            os.environ.setdefault(name, value)
    silence_lightning()
    exit_without_collecting()
