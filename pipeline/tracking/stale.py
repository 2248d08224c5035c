"""Runs left RUNNING by a process that is gone (SIGKILL, power loss): found by their pid/host tags, closed FAILED."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from mlflow.entities import RunStatus, RunTag

from pipeline.process.pids import pid_alive

log = logging.getLogger(__name__)
PID_TAG, HOST_TAG = "sae.pid", "sae.host"
REASON = "process ended without closing the run (killed?)"
FAILED = RunStatus.to_string(RunStatus.FAILED)


def process_tags() -> dict[str, str]:
    """Tags naming the process that owns a run: its pid and host."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def close_stale_runs(client: Any, experiment_id: str) -> list[str]:
    """Mark FAILED the RUNNING runs of the experiment whose owning process on this host is gone, children too.

    Returns the closed parent run ids. Runs of other hosts are left alone: their pids mean nothing here.
    """
    host = socket.gethostname()
    running = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'",
                                 max_results=1000)
    closed = []
    for run in running:
        pid = run.data.tags.get(PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        children = client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and "
                                      f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=1000)
        for stale in [*children, run]:
            client.log_batch(stale.info.run_id, tags=[RunTag("error", REASON)])
            client.set_terminated(stale.info.run_id, FAILED)
        closed.append(run.info.run_id)
        log.warning("MLflow run %s (pid %s on %s) was left RUNNING: marked FAILED, %s", run.info.run_id, pid,
                    host, REASON)
    return closed
