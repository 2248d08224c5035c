"""One trial: train (or recall from the layer cache) one layer with proposed settings, and score it."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from pytorch_lightning.callbacks import Callback

from pipeline.config import ResolvedLayer
from pipeline.data.loading import Splits
from pipeline.run import layer_store
from pipeline.run.greedy import layer_trainer
from pipeline.run.hooks import PipelineHooks
from pipeline.tune.objective import EpochReporter, final_value

COMPLETE, PRUNED, FAILED = "complete", "pruned", "failed"
REPORTS_PER_LAYER = 8  # probe objective: pruning checkpoints per layer (each costs a probe fit); reconstruction: every epoch


@dataclass
class TrialJob:
    """Everything one trial needs; ``trial`` (Optuna) receives the per-epoch reports, None = no pruning."""

    number: int
    params: dict[str, Any]
    settings: ResolvedLayer
    inputs: Splits
    labels: tuple[Any, Any] | None  # (y_train, y_val) for the probe objective
    seed: int
    fingerprint: str
    parent_key: str | None
    cache_dir: Path
    objective: str
    trial: optuna.trial.BaseTrial | None = None
    hooks: PipelineHooks | None = None
    fit_rows: np.ndarray | None = None  # the training rows the layer fits on (LoadedData.pretrain_rows)

    @property
    def key(self) -> str:
        """The layer-cache key of this trial's layer (the same key as ``run`` computes for these settings)."""
        return layer_store.layer_cache_key(self.fingerprint, self.settings, self.seed, self.parent_key)


@dataclass
class TrialOutcome:
    """How a trial ended: state, score, the layer's key, whether the cache supplied it, per-epoch metrics."""

    number: int
    params: dict[str, Any]
    key: str
    state: str  # complete | pruned | failed
    value: float | None = None
    recalled: bool = False  # the layer came from the cache: nothing was trained
    seconds: float = 0.0
    epochs: int = 0  # epochs trained (a pruned trial stops early)
    history: list[dict[str, float]] = field(default_factory=list)
    reports: list[tuple[int, float]] = field(default_factory=list)  # (epoch, objective) seen by the pruner
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (Prefect persists it as the trial task's result)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _TrialHooks(PipelineHooks):
    """Adds the epoch reporter (and the caller's callbacks) to the layer's Trainer."""

    def __init__(self, reporter: EpochReporter | None, inner: PipelineHooks | None) -> None:
        self.reporter, self.inner = reporter, inner

    def layer_callbacks(self, index: int, settings: ResolvedLayer) -> list[Callback]:
        extra = self.inner.layer_callbacks(index, settings) if self.inner is not None else []
        return [*extra, *([self.reporter] if self.reporter is not None else [])]


def _reporter(job: TrialJob) -> EpochReporter | None:
    if job.trial is None:
        return None
    trial = job.trial

    def report(epoch: int, value: float) -> None:
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1} (objective {value:.4g})")

    every = 1 if job.objective == "reconstruction" else max(1, job.settings.epochs // REPORTS_PER_LAYER)
    return EpochReporter(job.objective, job.inputs, job.labels, report, every=every, seed=job.seed)


def run_trial(job: TrialJob) -> TrialOutcome:
    """Train or recall the layer, score it; a pruned or failed trial is an outcome, not an exception."""
    started, key = time.perf_counter(), job.key
    outcome = TrialOutcome(job.number, job.params, key, FAILED)
    directory = layer_store.layer_dir(job.cache_dir, key)
    reporter = _reporter(job)
    try:
        outcome.recalled = layer_store.is_complete(directory)
        if not outcome.recalled:
            train = layer_trainer(job.settings, job.inputs, seed=job.seed, hooks=_TrialHooks(reporter, job.hooks),
                                  fit_rows=job.fit_rows)
            layer_store.train_into(directory, train, seed=job.seed, key=key, parent_key=job.parent_key)
        layer = layer_store.load_layer(directory, job.settings, reused=outcome.recalled)
        outcome.history, outcome.epochs = layer.history, len(layer.history)
        outcome.value = final_value(job.objective, layer.codes, layer.history, job.labels, job.seed)
        if outcome.value != outcome.value:  # NaN
            raise FloatingPointError(f"objective is NaN for settings {job.params}")
        outcome.state = COMPLETE
    except optuna.TrialPruned as pruned:
        outcome.state, outcome.error = PRUNED, str(pruned)
        outcome.history = reporter.history if reporter else []
        outcome.value = reporter.values[-1][1] if reporter and reporter.values else None
        outcome.epochs = reporter.values[-1][0] + 1 if reporter and reporter.values else 0
    except Exception as error:  # noqa: BLE001 - a failed trial is recorded and the search goes on
        outcome.error = f"{type(error).__name__}: {error}"
        outcome.history = outcome.history or (reporter.history if reporter else [])
        if not isinstance(error, ValueError | FloatingPointError):
            outcome.error += "\n" + traceback.format_exc(limit=3)
    outcome.reports = list(reporter.values) if reporter else []
    outcome.seconds = time.perf_counter() - started
    return outcome
