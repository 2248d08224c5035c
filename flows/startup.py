"""What ``sae-pipeline run`` and ``tune`` do before their flow starts, in this order.

0. When no Prefect server is configured, Prefect's temporary server process starts first of all
   (``flows.early_server``: before Prefect, torch or the data are loaded): it takes ~7 s, on the other core,
   while this process reads the data and imports the flow's code. Bad input found later ends it unseen.
1. The preflight (``pipeline.app.preflight.check_run``): bad input exits 2 before anything heavy is imported.
2. SIGINT and SIGTERM become an interruption the run records (``pipeline.process.interrupts``; the CLI's ``main``
   restores the handlers when the command returns).
3. Prefect's temporary server, if one will serve the flow, gets its own session and a watchdog
   (``server_guard``): the one started in step 0 is named to Prefect as its API (``PREFECT_API_URL``, so Prefect
   never imports its server module), or Prefect starts one on a thread now.
4. MLflow's store is created, and model logging and plotting warmed, on another thread.
5. While a temporary server starts, the raw-input probe (it needs the data alone) is fitted on a third thread
   (``pipeline.evaluation.layer_probes.raw_probe_ahead``); with a lasting server it would compete with the first layer's
   training instead, so the run fits it at the end as usual.
6. The flow's code (Lightning, MLflow, Prefect's engine: the run's largest imports) is imported, and what
   exists then is frozen for the garbage collector (``pipeline.process.heap.start_up``); then the temporary
   server is waited for.
7. The flow then uses the data the preflight read, sends no heartbeats to a temporary server, and stops at once
   if that server ends (``server_guard.stop_run_if_server_dies``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from concurrent.futures import Future

    from flows.early_server import EarlyServer
    from flows.session import FlowSession
    from pipeline.config import PipelineConfig
    from pipeline.data.loading import LoadedData

FLOW_CODE = "flows.pretrain"  # what run and tune both run (tune's best stack is a pretrain sub-flow)


@contextmanager
def flow_session(config: PipelineConfig, *, debug: bool = False, check: Callable[[LoadedData], None] | None = None,
                 raw_probe: bool = True) -> Iterator[FlowSession]:
    """Steps 0-7 above; yields the session (the checked data, the raw probe) flows started in the block use.
    ``check``: the command's own checks of the data, in step 1; ``raw_probe=False``: no raw probe ahead."""
    from flows import early_server
    from pipeline.app.preflight import check_run
    from pipeline.process import heap, interrupts

    early = early_server.spawn()
    with ExitStack() as stack:
        try:
            with heap.start_up():
                data = check_run(config)
                if check is not None:
                    check(data)
                interrupts.install()
                ahead = _start_services(config, data, early, stack, raw_probe=raw_probe)
                importlib.import_module(FLOW_CODE)
        except BaseException:
            if early is not None:
                early.drop()
            raise
        from flows.server_guard import (
            no_heartbeats_on_temporary_server,
            quiet_tracebacks,
            stop_run_if_server_dies,
            temporary_server_expected,
            wait_for_temporary_server,
        )
        from flows.session import FlowSession, data_key, use_session

        if not debug:
            quiet_tracebacks()
        wait_for_temporary_server()
        session = stack.enter_context(use_session(FlowSession(data, data_key(config), raw_probe=ahead)))
        stack.enter_context(no_heartbeats_on_temporary_server())
        if temporary_server_expected():
            stack.enter_context(stop_run_if_server_dies())
        yield session


def _start_services(config: PipelineConfig, data: LoadedData, early: EarlyServer | None, stack: ExitStack, *,
                    raw_probe: bool) -> Future[float] | None:
    """Steps 3-5: the temporary server (``early`` or Prefect's), the store thread, the raw probe (returned)."""
    from flows.server_guard import start_temporary_server_soon, temporary_server_expected
    from pipeline.app.preflight import prepare_tracking_soon
    from pipeline.evaluation.layer_probes import raw_probe_ahead

    temporary = temporary_server_expected()
    if temporary:
        start_temporary_server_soon(early)
    elif early is not None:  # Prefect's settings name a server after all
        early.drop()
    prepare_tracking_soon(config)
    if not (temporary and raw_probe):
        return None
    return stack.enter_context(raw_probe_ahead(
        data, seed=config.seed, accelerator=config.trainer.accelerator,
        validate_from_per_class=config.finetune.validate_from_per_class))
