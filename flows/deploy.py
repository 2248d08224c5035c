"""Schedules and work pools: serve the flow from this process, or deploy it to a process work pool.

Both need a real Prefect server (``make servers``, then ``export PREFECT_API_URL=...``): the temporary
server a plain flow call starts cannot run schedules. The config travels as the deployment's parameters,
so the Prefect UI shows it as a form and a run can change any field.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import WorkPoolCreate
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.workers.process import ProcessWorker

from flows.pretrain import pretrain_flow
from pipeline.config import PipelineConfig
from pipeline.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/pretrain.py:pretrain_flow"  # relative to the source a work pool's workers pull


def one_at_a_time() -> ConcurrencyLimitConfig:
    """A deployment runs once at a time; a run scheduled while one is going is cancelled, not queued."""
    return ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)


def _config(config: PipelineConfig | str | Path | dict[str, Any]) -> PipelineConfig:
    if isinstance(config, PipelineConfig):
        return config
    if isinstance(config, dict):
        return PipelineConfig.from_dict(config)
    return PipelineConfig.from_yaml(config)


def _schedule(cron: str | None, interval: float | None) -> dict[str, Any]:
    if cron is not None and interval is not None:
        raise InputError(f"schedule: both cron={cron!r} and interval={interval} given; choose one")
    if interval is not None and interval <= 0:
        raise InputError(f"interval={interval}: must be a positive number of seconds")
    return {"cron": cron, "interval": None if interval is None else datetime.timedelta(seconds=interval)}


def _require_server(what: str) -> str:
    url = PREFECT_API_URL.value()
    if not url:
        raise InputError(
            f"{what} needs a Prefect server, and PREFECT_API_URL is not set (the temporary server cannot run "
            "schedules); run `make servers` and export the PREFECT_API_URL it prints"
        )
    return str(url)


def description(config: PipelineConfig, what: str = "Trains") -> str:
    """What a deployment does, in the Prefect UI: the config, its data and stack, and where its results go."""
    widths = " → ".join(["inputs", *(str(layer.hidden) for layer in config.layers)])
    return (f"{what} sae-pipeline config `{config.name}` on data `{config.data.source}` ({widths}), then fine-tunes, "
            f"evaluates and registers it as `{config.model_name}` (MLflow experiment `{config.name}`). Each run's "
            "log and artifacts link its MLflow run.")


def deactivate_schedules(deployment_name: str) -> int:
    """Turn off the schedules of deployment ``<flow>/<name>``, as a stopped ``serve`` leaves the deployment
    paused: the switch and the schedules then agree (both off) until ``serve`` starts again. Returns how many."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            return 0
        schedules = [s for s in found.schedules if s.active]
        for schedule in schedules:
            client.update_deployment_schedule(found.id, schedule.id, active=False)
    return len(schedules)


def serve_until_stopped(deployment: Any) -> None:
    """Serve ``deployment`` from this process until Ctrl-C or SIGTERM; then pause it with its schedules off."""
    from prefect import serve as prefect_serve

    path, _, function = deployment.entrypoint.rpartition(":")  # Prefect made it relative to the working directory
    deployment.entrypoint = f"{Path(path).resolve()}:{function}"  # the same wherever `serve` was started
    try:
        prefect_serve(deployment)  # pauses the deployment on shutdown
    finally:
        deactivate_schedules(f"{deployment.flow_name}/{deployment.name}")


def parameters(config: PipelineConfig) -> dict[str, Any]:
    """The deployment parameters for ``config`` (JSON, validated against the flow's schema by the server)."""
    return {"config": config.model_dump(mode="json"), "refresh_cache": False}


def serve(
    config: PipelineConfig | str | Path | dict[str, Any],
    cron: str | None = None,
    interval: float | None = None,
    name: str | None = None,
) -> None:
    """Serve a deployment of the flow with ``config`` on a cron or interval schedule; blocks until stopped."""
    config = _config(config)
    schedule = _schedule(cron, interval)
    _require_server("serving a schedule")
    serve_until_stopped(pretrain_flow.to_deployment(
        name=name or config.name,
        parameters=parameters(config),
        description=description(config),
        tags=["sae-pipeline"],
        concurrency_limit=one_at_a_time(),
        **schedule,
    ))


def ensure_process_pool(pool: str) -> bool:
    """Create process work pool ``pool`` unless it exists; True when it was created."""
    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()))
            return True
    if found.type != "process":
        raise InputError(f"work pool {pool!r} has type {found.type!r}; this deploys to process pools: choose "
                         "another --pool name (it is created as a process pool)")
    return False


def deploy(
    config: PipelineConfig | str | Path | dict[str, Any],
    pool: str,
    cron: str | None = None,
    interval: float | None = None,
    name: str | None = None,
    *,
    source: str | Path = PROJECT_ROOT,
) -> UUID:
    """Deploy the flow with ``config`` to process work pool ``pool`` (created if missing); return its id.

    Workers started with ``prefect worker start --pool POOL`` on a machine with this project at ``source``
    (a local path; a git URL works the same) pick up its runs.
    """
    config = _config(config)
    schedule = _schedule(cron, interval)
    _require_server("deploying to a work pool")
    ensure_process_pool(pool)
    remote = pretrain_flow.from_source(source=str(source), entrypoint=ENTRYPOINT)
    return remote.deploy(
        name=name or config.name,
        work_pool_name=pool,
        parameters=parameters(config),
        description=description(config),
        tags=["sae-pipeline"],
        concurrency_limit=one_at_a_time(),
        print_next_steps=False,
        build=False,
        push=False,
        **schedule,
    )
