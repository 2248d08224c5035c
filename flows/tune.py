"""The tuning flow: a Prefect task per trial (keyed like the layer cache), then the best stack via the pretrain flow.

``pipeline.tune.search`` owns the greedy loop and the Optuna studies; this module only decides how a batch
of trials runs: as ``tune-trial`` tasks, ``parallel`` at a time on the thread pool. A trial's task is keyed
by its layer's cache key, so the same settings on the same codes are never trained twice, and a trial that
was pruned ends Cancelled and one that failed ends Failed, each with the reason. The best stack is then run by
``pretrain_flow`` as a sub-flow, exactly as ``sae-pipeline run best.yaml`` would (layers from the cache,
fine-tuning, evaluation, registration with the champion rules), unless an identical search already did that
(then a ``recall-best-stack`` task says so: same best config, data and code; see
``pipeline.tracking.tune_recall``). The MLflow search run shares the flow run's name and links it; the flow run
gets a link artifact to it and, at the end, the trial table; the best stack's run says which search chose it.
"""

# No `from __future__ import annotations`: Prefect builds the flow's parameter model from real annotations.
from dataclasses import replace
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed

from flows.artifacts import current_flow_run_tags, current_origin, publish_run_link, publish_search
from flows.pretrain import _as_config, pretrain_flow
from flows.session import current_session, use_session
from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from pipeline.tracking import describe
from pipeline.tracking.tune_recall import RecalledStack
from pipeline.tracking.tune_runs import TuneTracking, optuna_storage
from pipeline.tune.search import Runner, TuneHooks, TuneResult, tune_stack
from pipeline.tune.table import search_table
from pipeline.tune.trial import COMPLETE, PRUNED, TrialJob, TrialOutcome, run_trial


# Prefect persists nothing here (its result records name their own serializer, pickle included): a trial whose
# layer is already in the verified layer store is recalled from there by run_trial.
@task(name="tune-trial", cache_policy=NO_CACHE, persist_result=False)
def trial_task(job: TrialJob, outcomes: dict[int, TrialOutcome]) -> Any:
    """Train (or recall) one trial's layer and score it; a pruned trial ends Cancelled, a failed one Failed."""
    outcome = run_trial(job)
    outcomes[job.number] = outcome
    reason = (outcome.error or "").splitlines()[0] if outcome.error else ""
    if outcome.state == PRUNED:  # a returned state: no traceback in the log
        return Cancelled(message=f"pruned: {reason}")
    if outcome.state != COMPLETE:
        return Failed(message=f"failed: {reason}")
    return {"key": outcome.key, "value": outcome.value, "epochs": outcome.epochs}


@task(name="recall-best-stack", task_run_name="recall-best-stack", cache_policy=NO_CACHE, persist_result=False)
def recall_task(recalled: RecalledStack) -> RecalledStack:
    """The best stack as an identical earlier search fine-tuned, evaluated and registered it (shown only then)."""
    reg = recalled.tracked.registration
    get_run_logger().info("best stack recalled from MLflow run %s (%s %.4f%s): not fine-tuned, evaluated or "
                          "registered again", recalled.tracked.run_id, *recalled.headline()[:2],
                          f"; version {reg.model_version}" if reg else "")
    return recalled


class SearchLinks(TuneHooks):
    """The flow run's side of the links: an artifact and a log line pointing at the MLflow search run once it is
    open, and the trial table with the best stack's run at the end (after ``TuneTracking`` in the hooks)."""

    def __init__(self, tracking: TuneTracking) -> None:
        self.tracking = tracking
        self.config_name = ""

    def on_search_start(self, config: PipelineConfig, data: Any, objective: str) -> None:
        self.config_name = config.name
        t = self.tracking
        if t.run_id is not None:
            publish_run_link(config.name, t.uri, t.experiment_id, t.run_id, t.run_name or "", what="mlflow-search-run")

    def on_search_end(self, result: TuneResult) -> None:
        publish_search(self.config_name, search_table(result), self.tracking.best_run_text)


def prefect_runner(cache_dir: str) -> Runner:
    """Each trial a ``tune-trial-<layer>.<n>`` task, all of one batch submitted together (the batch is --parallel)."""
    def run(jobs: list[TrialJob]) -> list[TrialOutcome]:
        outcomes: dict[int, TrialOutcome] = {}
        futures = []
        for job in jobs:
            futures.append(trial_task.with_options(
                task_run_name=f"tune-trial-{job.settings.index + 1}.{job.number + 1}").submit(job, outcomes))
        for future in futures:
            future.wait()
        return [outcomes[job.number] for job in jobs]

    return run


def tune_run_name() -> str:
    """Flow run name: ``tune-<config name>-<time>``."""
    config = flow_run.parameters.get("config")
    name = config.name if isinstance(config, PipelineConfig) else (config or {}).get("name", "?")
    return describe.run_name(f"tune-{name}")


@flow(name="sae-tune", flow_run_name=tune_run_name, persist_result=False, validate_parameters=True)
def tune_flow(config: PipelineConfig, trials: int | None = None, parallel: int = 1, finish: bool = True) -> TuneResult:
    """Greedy per-layer search of ``config.search``; then train/assemble, evaluate and register the best stack."""
    config = _as_config(config)
    name = flow_run.get_name()  # the name tune_run_name gave this flow run: the MLflow search run shares it
    tracking = TuneTracking(run_name=name, run_tags=current_flow_run_tags(), origin=current_origin(name))

    def best_stack(best_config: PipelineConfig) -> Any:
        """Recalled when an identical search already ran it (same best config, data, code), else the pretrain flow
        (its MLflow run's description links this search)."""
        recalled = tracking.recall(best_config)
        if recalled is not None:
            return recall_task(recalled)
        with use_session(replace(current_session(), search=tracking.search_line())):
            return pretrain_flow(best_config)

    return tune_stack(config, optuna_storage(config), trials=trials, parallel=parallel,
                      hooks=[tracking, SearchLinks(tracking)], runner=prefect_runner(config.cache_dir),
                      finish=best_stack if finish else None, data=current_session().data_of(config))


def tune_parameters(config: PipelineConfig, trials: int | None = None, parallel: int = 1) -> dict[str, Any]:
    """The deployment parameters of a search of ``config`` (JSON, checked against the flow's schema by the server)."""
    return {"config": config.model_dump(mode="json"), "trials": trials, "parallel": parallel}


def tune_deployment(config: PipelineConfig, cron: str | None = None, interval: float | None = None,
                    name: str | None = None, trials: int | None = None, parallel: int = 1) -> Any:
    """A deployment of ``tune_flow`` searching ``config`` on a cron or interval schedule (a RunnerDeployment)."""
    from flows.deploy import _schedule, description, one_at_a_time  # server-only imports, on demand

    if config.search is None:
        raise InputError(f"config {config.name!r} has no search section: a tuning deployment needs one")
    return tune_flow.to_deployment(
        name=name or f"tune-{config.name}",
        parameters=tune_parameters(config, trials, parallel),
        description=description(config, "Searches the per-layer hyperparameters (the search section) of"),
        tags=["sae-pipeline", "tune"],
        concurrency_limit=one_at_a_time(),
        **_schedule(cron, interval),
    )


def serve_tune(config: PipelineConfig, cron: str | None = None, interval: float | None = None,
               name: str | None = None, trials: int | None = None, parallel: int = 1) -> None:
    """Serve ``tune_deployment(...)`` from this process (needs a Prefect server); blocks until stopped."""
    from flows.deploy import _require_server, serve_until_stopped

    deployment = tune_deployment(config, cron, interval, name, trials, parallel)
    _require_server("serving a tuning schedule")
    serve_until_stopped(deployment)
