"""The greedy search: layer 1's trials, then layer 2's on the best layer 1's codes, and so on.

Each layer has its own Optuna study in persistent storage, named from the config, the layer and the layer
below (``space.study_name``), so a killed search resumes: finished trials stay finished and only the
missing ones run. Trials train into the layer cache (``pipeline.run.layer_store``), so the best layer is
loaded, never retrained, and a trial proposing settings already trained is recalled. How a batch of
trials runs is pluggable (``Runner``): plain calls or threads here, Prefect tasks in ``flows.tune``.
"""

from __future__ import annotations

import os
import shutil
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
from pipeline.config.search import Range
from pipeline.data.loading import LoadedData, Splits, load_data
from pipeline.errors import InputError
from pipeline.process.pids import pid_alive
from pipeline.run import layer_store
from pipeline.run.greedy import inputs_for, layer_seed, layer_trainer
from pipeline.run.results import LayerResult
from pipeline.tune.objective import direction
from pipeline.tune.result import STATES, LayerSearch, TuneResult
from pipeline.tune.space import config_point, study_name, suggest, with_layer_params
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


def _pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    match kind:
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))
        case "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs), reduction_factor=3)
        case "none":
            return optuna.pruners.NopPruner()
    raise ValueError(f"pruner={kind!r}: use median, hyperband or none")


def fail_dead_trials(study: optuna.Study, cache_dir: Path) -> int:
    """Mark RUNNING trials whose process (on this host) is gone as failed + interrupted, and delete the
    half-trained layer each left behind; returns how many."""
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host, key = (trial.user_attrs.get(k) for k in ("pid", "host", "key"))
        if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            if key:
                partial = layer_store.sibling(layer_store.layer_dir(cache_dir, key), layer_store.PARTIAL, host, pid)
                shutil.rmtree(partial, ignore_errors=True)
            study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            count += 1
    return count


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


def _finished(study: optuna.Study) -> int:
    """Trials that count against the budget: complete, pruned and failed, but not ones a kill interrupted."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("interrupted")))


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


def _search_layer(ctx: _Context, best_config: PipelineConfig, index: int, below: list[LayerResult],
                  parent_key: str | None) -> tuple[LayerSearch, PipelineConfig, LayerResult, str]:
    assert best_config.search is not None
    search, space = best_config.search, best_config.search.space(index)
    name = study_name(best_config, index, ctx.fingerprint, parent_key)
    for h in ctx.hooks:
        h.on_layer_start(index, name)
    study = optuna.create_study(study_name=name, storage=ctx.storage, load_if_exists=True,
                                direction=direction(ctx.objective))
    fail_dead_trials(study, ctx.cache_dir)
    if not study.trials and (written := config_point(best_config, index, space)):
        # Trial 1 is the layer as the config writes it (where its values lie in the space): the best trial is
        # then never worse on validation than the config, and a layer `run` already trained is recalled.
        study.enqueue_trial(written, user_attrs={"config": True})
    study.sampler = optuna.samplers.TPESampler(
        seed=(best_config.seed * 1000 + index) * 1000 + len(study.trials),  # a resumed search draws anew
        n_startup_trials=max(3, ctx.trials // 3))
    epochs = space.get("epochs")
    max_epochs = (max(int(e) for e in epochs) if isinstance(epochs, list) else int(epochs.high)
                  if isinstance(epochs, Range) else best_config.layer_settings(index).epochs)
    study.pruner = _pruner(search.pruner, max_epochs)
    labels = (ctx.data.y_train, ctx.data.y_val) if ctx.objective == "probe" else None
    deadline = None if search.timeout is None else time.monotonic() + search.timeout
    ran: list[TrialOutcome] = []
    scaled: dict[str, Splits] = {}  # the inputs per code_scaling (a searchable field): fitted once each

    def inputs(settings: ResolvedLayer) -> Splits:
        """What ``run`` trains this layer on: the data, or the best layer below's codes after code_scaling."""
        if settings.code_scaling not in scaled:
            scaled[settings.code_scaling] = inputs_for(settings, ctx.data, below)
        return scaled[settings.code_scaling]

    while (left := ctx.trials - _finished(study)) > 0 and (deadline is None or time.monotonic() < deadline):
        asked, jobs, outcomes = [], [], {}
        for _ in range(min(ctx.parallel, left)):
            trial = study.ask()
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("host", socket.gethostname())
            params = suggest(trial, space)
            asked.append(trial)
            try:
                settings = with_layer_params(best_config, index, params).layer_settings(index)
            except ValueError as error:  # a combination the config rejects (pydantic errors are ValueErrors)
                outcomes[trial.number] = TrialOutcome(trial.number, params, "", FAILED, error=str(error))
                continue
            jobs.append(TrialJob(trial.number, params, settings, inputs(settings), labels,
                                 layer_seed(best_config, settings),
                                 ctx.fingerprint, parent_key, ctx.cache_dir, ctx.objective, trial))
            trial.set_user_attr("key", jobs[-1].key)  # before training: a kill leaves a partial layer to find
        for batch in _twins_after(jobs):
            outcomes |= {o.number: o for o in ctx.runner(batch)}
        for trial in asked:
            outcome = outcomes[trial.number]
            for key, value in (("key", outcome.key), ("recalled", outcome.recalled), ("seconds", outcome.seconds),
                               ("epochs", outcome.epochs), ("error", outcome.error)):
                trial.set_user_attr(key, value)
            values = outcome.value if outcome.state == COMPLETE else None
            study.tell(trial, values, state=_TELL[outcome.state])
            ran.append(outcome)
            for h in ctx.hooks:
                h.on_trial_end(index, outcome)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        states = [STATES.get(t.state, str(t.state)) for t in study.trials]
        errors = {t.user_attrs.get("error") for t in study.trials if t.user_attrs.get("error")}
        raise RuntimeError(f"layer {index + 1}: no trial completed ({', '.join(states) or 'none ran'}); "
                           f"errors: {'; '.join(sorted(e.splitlines()[0] for e in errors)) or 'none'}")
    best = study.best_trial
    best_config = with_layer_params(best_config, index, best.params)
    settings = best_config.layer_settings(index)
    key = layer_store.layer_cache_key(ctx.fingerprint, settings, layer_seed(best_config, settings), parent_key)
    directory = layer_store.layer_dir(ctx.cache_dir, key)
    if not layer_store.is_complete(directory):  # the cache was cleared since the trial ran
        seed = layer_seed(best_config, settings)
        layer_store.train_into(directory, layer_trainer(settings, inputs(settings), seed=seed), seed=seed, key=key,
                               parent_key=parent_key)
    layer = layer_store.load_layer(directory, settings, reused=True)
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
        for h in hooks:
            h.on_search_start(config, data, objective)
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
