"""The greedy search: layer 1's trials, then layer 2's on the best layer 1's codes, and so on.

Each layer has its own Optuna study in persistent storage, named from the config, the layer and the layer
below (``space.study_name``), so a killed search resumes: finished trials stay finished and only the
missing ones run. Trials train into the layer cache (``pipeline.run.layer_store``), so the best layer is
loaded, never retrained, and a trial proposing settings already trained is recalled. How a batch of
trials runs is pluggable (``Runner``): plain calls or threads here, Prefect tasks in ``flows.tune``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.config import PipelineConfig
from pipeline.config.layer import ResolvedLayer
from pipeline.data.loading import LoadedData, Splits, load_data
from pipeline.errors import InputError
from pipeline.run import layer_store
from pipeline.run.greedy import inputs_for, layer_seed, layer_trainer
from pipeline.run.results import LayerResult
from pipeline.tune.objective import direction
from pipeline.tune.result import STATES, LayerSearch, TuneResult
from pipeline.tune.space import study_name, suggest, with_layer_params
from pipeline.tune.study import finished_count, open_study
from pipeline.tune.trial import COMPLETE, FAILED, PRUNED, TrialJob, TrialOutcome, run_trial

Runner = Callable[[list[TrialJob]], list[TrialOutcome]]
_TELL = {COMPLETE: TrialState.COMPLETE, PRUNED: TrialState.PRUNED, FAILED: TrialState.FAIL}


class TuneHooks:
    """No-op base for search observers (MLflow tracking, progress, tests)."""

    def on_search_start(self, config: PipelineConfig, data: LoadedData, objective: str) -> None:
        """Before layer 1's first trial."""

    def on_layer_start(self, index: int, study_name: str) -> None:
        """Before layer ``index``'s trials."""

    def on_trial_end(self, index: int, outcome: TrialOutcome) -> None:
        """After each trial run in this call (recalled, trained, pruned or failed)."""

    def on_layer_end(self, layer: LayerSearch, study: optuna.Study) -> None:
        """After layer ``layer.index``'s trials, its best layer chosen."""

    def on_search_end(self, result: TuneResult) -> None:
        """After the best stack ran (when a finish step was given)."""

    def on_search_failed(self, error: BaseException) -> None:
        """The search raised; ``error`` is re-raised after this returns."""


def plain_runner(parallel: int = 1) -> Runner:
    """Trials one after another, or ``parallel`` at a time in threads."""

    def run(jobs: list[TrialJob]) -> list[TrialOutcome]:
        if parallel <= 1 or len(jobs) == 1:
            return [run_trial(job) for job in jobs]
        with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trial") as pool:
            return list(pool.map(run_trial, jobs))

    return run


def _twins_after(jobs: list[TrialJob]) -> list[list[TrialJob]]:
    """The batch, then the trials proposing a layer already in it (same cache key): run after their twin, they
    are recalled from the cache instead of training the same layer at the same time."""
    first: dict[str, TrialJob] = {}
    twins = []
    for job in jobs:
        if job.key in first:
            twins.append(job)
        else:
            first[job.key] = job
    return [batch for batch in (list(first.values()), twins) if batch]


@dataclass
class _Context:
    config: PipelineConfig
    data: LoadedData
    objective: str
    fingerprint: str
    cache_dir: Path
    storage: str
    trials: int
    parallel: int
    runner: Runner
    hooks: Sequence[TuneHooks]


class _LayerInputs:
    """What ``run`` trains a layer on: the data, or the best layer below's codes after the trial's code_scaling
    (a searchable field), fitted once per kind."""

    def __init__(self, data: LoadedData, below: list[LayerResult]) -> None:
        self.data, self.below, self.scaled = data, below, {}

    def __call__(self, settings: ResolvedLayer) -> Splits:
        if settings.code_scaling not in self.scaled:
            self.scaled[settings.code_scaling] = inputs_for(settings, self.data, self.below)
        return self.scaled[settings.code_scaling]


def _ask_batch(ctx: _Context, study: optuna.Study, config: PipelineConfig, index: int, size: int,
               parent_key: str | None, inputs: _LayerInputs) -> tuple[list[optuna.Trial], list[TrialJob],
                                                                     dict[int, TrialOutcome]]:
    """Ask ``size`` trials; each becomes a job, or at once a failed outcome when the config rejects its values."""
    assert config.search is not None
    space = config.search.space(index)
    labels = (ctx.data.y_train, ctx.data.y_val) if ctx.objective == "probe" else None
    asked, jobs, rejected = [], [], {}
    for _ in range(size):
        trial = study.ask()
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        params = suggest(trial, space)
        asked.append(trial)
        try:
            settings = with_layer_params(config, index, params).layer_settings(index)
        except ValueError as error:  # a combination the config rejects (pydantic errors are ValueErrors)
            rejected[trial.number] = TrialOutcome(trial.number, params, "", FAILED, error=str(error))
            continue
        jobs.append(TrialJob(trial.number, params, settings, inputs(settings), labels, layer_seed(config, settings),
                             ctx.fingerprint, parent_key, ctx.cache_dir, ctx.objective, trial,
                             fit_rows=ctx.data.pretrain_rows))
        trial.set_user_attr("key", jobs[-1].key)  # before training: a kill leaves a partial layer to find
    return asked, jobs, rejected


def _tell(ctx: _Context, study: optuna.Study, index: int, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Record ``outcome`` on its trial and tell the study; the hooks hear of it."""
    for key, value in (("key", outcome.key), ("recalled", outcome.recalled), ("seconds", outcome.seconds),
                       ("epochs", outcome.epochs), ("error", outcome.error)):
        trial.set_user_attr(key, value)
    study.tell(trial, outcome.value if outcome.state == COMPLETE else None, state=_TELL[outcome.state])
    for h in ctx.hooks:
        h.on_trial_end(index, outcome)


def _run_trials(ctx: _Context, study: optuna.Study, config: PipelineConfig, index: int, parent_key: str | None,
                inputs: _LayerInputs) -> list[TrialOutcome]:
    """Trials in batches of ``parallel`` until the budget (or the timeout) is spent; the outcomes run now."""
    assert config.search is not None
    deadline = None if config.search.timeout is None else time.monotonic() + config.search.timeout
    ran: list[TrialOutcome] = []
    while (left := ctx.trials - finished_count(study)) > 0 and (deadline is None or time.monotonic() < deadline):
        asked, jobs, outcomes = _ask_batch(ctx, study, config, index, min(ctx.parallel, left), parent_key, inputs)
        for batch in _twins_after(jobs):
            outcomes |= {o.number: o for o in ctx.runner(batch)}
        for trial in asked:
            _tell(ctx, study, index, trial, outcomes[trial.number])
            ran.append(outcomes[trial.number])
    return ran


def _check_completed(study: optuna.Study, index: int) -> None:
    """Raise, naming the states and errors, when no trial of the layer completed."""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return
    states = [STATES.get(t.state, str(t.state)) for t in study.trials]
    errors = {t.user_attrs.get("error") for t in study.trials if t.user_attrs.get("error")}
    raise RuntimeError(f"layer {index + 1}: no trial completed ({', '.join(states) or 'none ran'}); "
                       f"errors: {'; '.join(sorted(e.splitlines()[0] for e in errors)) or 'none'}")


def _best_layer(ctx: _Context, config: PipelineConfig, index: int, best: optuna.trial.FrozenTrial,
                parent_key: str | None, inputs: _LayerInputs) -> tuple[PipelineConfig, LayerResult, str]:
    """The config with the best trial's values, its layer from the store (trained again if the cache was
    cleared since) and the layer's key."""
    config = with_layer_params(config, index, best.params)
    settings = config.layer_settings(index)
    seed = layer_seed(config, settings)
    key = layer_store.layer_cache_key(ctx.fingerprint, settings, seed, parent_key)
    directory = layer_store.layer_dir(ctx.cache_dir, key)
    if not layer_store.is_complete(directory):
        train = layer_trainer(settings, inputs(settings), seed=seed, fit_rows=ctx.data.pretrain_rows)
        layer_store.train_into(directory, train, seed=seed, key=key, parent_key=parent_key)
    return config, layer_store.load_layer(directory, settings, reused=True), key


def _search_layer(ctx: _Context, best_config: PipelineConfig, index: int, below: list[LayerResult],
                  parent_key: str | None) -> tuple[LayerSearch, PipelineConfig, LayerResult, str]:
    """Layer ``index``'s study on the best layers below: its trials, then its best layer."""
    name = study_name(best_config, index, ctx.fingerprint, parent_key)
    for h in ctx.hooks:
        h.on_layer_start(index, name)
    study = open_study(best_config, index, name, storage=ctx.storage, objective=ctx.objective,
                       cache_dir=ctx.cache_dir, trials=ctx.trials)
    inputs = _LayerInputs(ctx.data, below)
    ran = _run_trials(ctx, study, best_config, index, parent_key, inputs)
    _check_completed(study, index)
    best = study.best_trial
    best_config, layer, key = _best_layer(ctx, best_config, index, best, parent_key, inputs)
    result = LayerSearch(index, name, direction(ctx.objective), study.get_trials(), best, ran, key)
    for h in ctx.hooks:
        h.on_layer_end(result, study)
    return result, best_config, layer, key


def tune_stack(
    config: PipelineConfig,
    storage: str,
    *,
    trials: int | None = None,
    parallel: int = 1,
    hooks: Sequence[TuneHooks] = (),
    runner: Runner | None = None,
    finish: Callable[[PipelineConfig], Any] | None = None,
    data: LoadedData | None = None,
) -> TuneResult:
    """Search every layer greedily, bottom first; then ``finish(best_config)`` (e.g. the pretrain flow)."""
    if config.search is None:
        raise InputError("the config has no search section; add one (see the README's Tuning section)")
    if trials is not None and trials < 1:
        raise InputError(f"trials={trials}: must be at least 1")
    if parallel < 1:
        raise InputError(f"parallel={parallel}: must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    try:
        data = data or load_data(config.data, config.seed)
        objective = config.search.objective or ("probe" if data.y_train is not None else "reconstruction")
        if objective == "probe" and data.y_train is None:
            raise InputError(f"search.objective=probe: data {config.data.source} has no labels; "
                             "use objective: reconstruction or give data.labels")
        ctx = _Context(config, data, objective, layer_store.input_fingerprint(data),
                       Path(config.cache_dir).expanduser().resolve(), storage, trials or config.search.trials,
                       parallel, runner or plain_runner(parallel), hooks)
        asked = config.model_copy(update={"search": config.search.model_copy(update={"trials": ctx.trials})})
        for h in hooks:  # the trials asked (--trials wins over search.trials), as the hooks record them
            h.on_search_start(asked, data, objective)
        parent_key, best_config, layers, below = None, config, [], []
        for index in range(len(config.layers)):
            layer_search, best_config, layer, parent_key = _search_layer(ctx, best_config, index, below, parent_key)
            layers.append(layer_search)
            below.append(layer)
        best_config = best_config.model_copy(update={"search": None, "cache_dir": str(ctx.cache_dir)})
        result = TuneResult(config, best_config, objective, storage, layers, 0.0)
        if finish is not None:
            result.best_stack = finish(best_config)
        result.seconds = time.perf_counter() - started
        for h in hooks:
            h.on_search_end(result)
        return result
    except BaseException as error:
        for h in hooks:
            h.on_search_failed(error)
        raise
