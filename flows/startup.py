"""What ``sae-pipeline run`` and ``tune`` do before their flow starts, in this order.

1. The preflight (``pipeline.app.preflight.check_run``): bad input exits 2 before anything heavy is imported.
2. SIGINT and SIGTERM become an interruption the run records (``pipeline.process.interrupts``; the CLI's ``main``
   restores the handlers when the command returns).
3. Prefect's temporary server, if one will serve the flow, gets its own session and a watchdog
   (``server_guard``), and starts on a thread at once: it takes ~7 s, during which this process imports the
   flow's code (Lightning, MLflow: ~3 s) instead of waiting.
4. MLflow's store is created, and model logging and plotting warmed, on another thread (after step 3's import
   of Prefect's server models, which that thread must find whole).
5. While a temporary server starts, the raw-input probe (it needs the data alone) is fitted on a third thread
   (``pipeline.evaluation.layer_probes.raw_probe_ahead``); with a lasting server it would compete with the first layer's
   training instead, so the run fits it at the end as usual.
6. The flow then uses the data the preflight read, and sends no heartbeats to a temporary server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flows.session import FlowSession
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData


@contextmanager
def flow_session(config: PipelineConfig, *, debug: bool = False, check: Callable[[LoadedData], None] | None = None,
                 raw_probe: bool = True) -> Iterator[FlowSession]:
    """Steps 1-6 above; yields the session (the checked data, the raw probe) flows started in the block use.
    ``check``: the command's own checks of the data, in step 1; ``raw_probe=False``: no raw probe ahead."""
    from pipeline.app.preflight import check_run, prepare_tracking_soon
    from pipeline.process import interrupts

    data = check_run(config)
    if check is not None:
        check(data)
    interrupts.install()
    from flows.server_guard import (
        guard_temporary_server,
        no_heartbeats_on_temporary_server,
        quiet_tracebacks,
        start_temporary_server_soon,
        stop_run_if_server_dies,
        temporary_server_expected,
        wait_for_temporary_server,
    )

    guard_temporary_server()
    temporary = temporary_server_expected()
    if temporary:
        start_temporary_server_soon()
    prepare_tracking_soon(config)
    from flows.session import FlowSession, data_key, use_session
    from pipeline.evaluation.layer_probes import raw_probe_ahead

    if not debug:
        quiet_tracebacks()
    with ExitStack() as stack:
        ahead = None
        if temporary and raw_probe:
            ahead = stack.enter_context(raw_probe_ahead(
                data, seed=config.seed, accelerator=config.trainer.accelerator,
                validate_from_per_class=config.finetune.validate_from_per_class))
        wait_for_temporary_server()
        session = stack.enter_context(use_session(FlowSession(data, data_key(config), raw_probe=ahead)))
        stack.enter_context(no_heartbeats_on_temporary_server())
        if temporary:
            stack.enter_context(stop_run_if_server_dies())
        yield session
