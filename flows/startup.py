"""What ``sae-pipeline run`` and ``tune`` do before their flow starts, in this order.

1. The preflight (``pipeline.preflight.check_run``): bad input exits 2 before anything heavy is imported.
2. SIGINT and SIGTERM become an interruption the run records (``pipeline.interrupts``; the CLI's ``main``
   restores the handlers when the command returns).
3. Prefect's temporary server, if one starts, gets its own session and a watchdog (``server_guard``).
4. MLflow's store is created, and model logging and plotting warmed, on a thread while that server starts
   (after step 3: it imports Prefect's server models, which that thread must find whole).
5. With a temporary server to wait for, the raw-input probe (it needs the data alone) is fitted meanwhile on
   another thread (``pipeline.evaluate.raw_probe_ahead``); with a lasting server it would compete with the
   first layer's training instead, so the run fits it at the end as usual.
6. The flow then uses the data the preflight read, and sends no heartbeats to a temporary server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData


@contextmanager
def flow_session(config: PipelineConfig, *, debug: bool = False) -> Iterator[LoadedData]:
    """Steps 1-6 above; yields the checked data. Flows started in the block use it instead of reading again."""
    from pipeline import interrupts
    from pipeline.preflight import check_run, prepare_tracking_soon

    data = check_run(config)
    interrupts.install()
    from flows.pretrain import preloaded
    from flows.server_guard import (
        guard_temporary_server,
        no_heartbeats_on_temporary_server,
        quiet_tracebacks,
        temporary_server_expected,
    )
    from pipeline.evaluate import raw_probe_ahead

    guard_temporary_server()
    if not debug:
        quiet_tracebacks()
    prepare_tracking_soon(config)
    with ExitStack() as stack:
        if temporary_server_expected():
            stack.enter_context(raw_probe_ahead(data, seed=config.seed, accelerator=config.trainer.accelerator))
        stack.enter_context(preloaded(config, data))
        stack.enter_context(no_heartbeats_on_temporary_server())
        yield data
