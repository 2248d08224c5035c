"""What a search returns: each layer's study, the best config, and the best stack's tracked run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import optuna
from optuna.trial import TrialState

from pipeline.tune.trial import COMPLETE, FAILED, PRUNED, TrialOutcome

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig
    from pipeline.run.results import TrackedRun

STATES = {TrialState.COMPLETE: COMPLETE, TrialState.PRUNED: PRUNED, TrialState.FAIL: FAILED,
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}


class FinishedStack(Protocol):
    """The best stack after the finish step: a PretrainResult trained now, or a run an identical search
    already made (``pipeline.tracking.tune_recall.RecalledStack``, ``recalled`` true)."""

    tracked: TrackedRun | None
    recalled: bool

    def headline(self) -> tuple[str, float, bool]:
        """(metric name, value, greater is better)."""
        ...


@dataclass
class LayerSearch:
    """One layer's study: every trial in it (earlier runs included), the best one, and those run now."""

    index: int
    study_name: str
    direction: str
    trials: list[optuna.trial.FrozenTrial]
    best: optuna.trial.FrozenTrial
    ran: list[TrialOutcome] = field(default_factory=list)
    best_key: str = ""


@dataclass
class TuneResult:
    """The search: per-layer studies, the best config (what best.yaml holds) and the best stack."""

    config: PipelineConfig
    best_config: PipelineConfig
    objective: str
    storage: str
    layers: list[LayerSearch]
    seconds: float
    best_stack: FinishedStack | None = None  # what the finish step returned, when one ran

    def best_yaml(self) -> str:
        """The best config as YAML (no search section): ``sae-pipeline run`` on it reuses the cached layers."""
        return self.best_config.to_yaml()
