"""Python's cyclic garbage collector in a process that imports torch, Lightning, Prefect and MLflow.

Those imports leave millions of objects that live as long as the process. The collector walks every one of
them at each full collection (several while they are imported) and again, generation by generation, while
the interpreter tears down at exit: after ``import pytorch_lightning`` alone the exit took 3.4 s instead of
0.3 s here, and a trivial run spent a fifth of its wall time collecting (``benchmarks/run_floor.py`` times both).
``gc.freeze()`` moves every object alive into a permanent generation that collections skip. Objects are still
freed by reference counting; only cycles among frozen objects are never collected, so freezing is for what
lives to the end anyway: the imported code, and everything at exit.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

RARE_FULL_COLLECTIONS = 1_000  # young collections per full one while starting up (Python's default: 10)


def exit_without_collecting() -> None:
    """At exit, after the other exit handlers, freeze every object: teardown frees them without walking them."""
    atexit.unregister(gc.freeze)  # registered once, however often this is called
    atexit.register(gc.freeze)


@contextmanager
def start_up() -> Iterator[None]:
    """For a block that imports a run's code and prepares it: no full collection inside (young objects are
    still collected), and at its end every object alive, the imported code above all, is frozen."""
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], RARE_FULL_COLLECTIONS)
    try:
        yield
    finally:
        gc.freeze()
        gc.set_threshold(*thresholds)
