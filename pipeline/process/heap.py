"""Python's cyclic garbage collector in a process that imports torch, Lightning, Prefect and MLflow.

Those imports leave some 750,000 objects that live as long as the process. The collector walks them while
they are imported (~1,900 collections) and again, generation by generation, while
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


def exit_without_collecting() -> None:
    """At exit, after the other exit handlers, freeze every object: teardown frees them without walking them."""
    atexit.unregister(gc.freeze)  # registered once, however often this is called
    atexit.register(gc.freeze)


@contextmanager
def start_up() -> Iterator[None]:
    """For a block that imports a run's code and prepares it: no collection inside, and at its end every object
    alive, the imported code above all, is frozen and collections resume.

    Importing what a run needs made ~1,900 collections (1.5-2 CPU s here under load, more than torch's own
    import); left uncollected, its garbage was 21,000 of 780,000 objects: frozen with the rest, for good."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
