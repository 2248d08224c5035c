"""The collector skips what a run imported: nothing is collected during start-up, and the exit walks nothing."""

import gc
import os
import subprocess
import sys

from pipeline.process import heap
from tests import ROOT

EXIT_FREEZES = """
import atexit, gc
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))  # runs after quiet_runtime's
from pipeline.process.runtime import quiet_runtime
quiet_runtime()
quiet_runtime()  # a second call registers nothing twice
import json  # something alive to freeze
"""


def test_start_up_collects_nothing_inside_and_freezes_what_exists_at_its_end():
    before_frozen = gc.get_freeze_count()
    with heap.start_up():
        inside = gc.isenabled()
        made = [[] for _ in range(1000)]  # objects alive at the end of the block
    assert inside is False and gc.isenabled()
    assert gc.get_freeze_count() >= before_frozen + len(made)


def test_start_up_leaves_a_disabled_collector_disabled():
    gc.disable()
    try:
        with heap.start_up():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_exit_freezes_every_object_after_the_other_exit_handlers():
    done = subprocess.run([sys.executable, "-c", EXIT_FREEZES], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["frozen at exit: True"]
