"""Greedy per-layer hyperparameter search (Optuna): layer 1's trials, its best layer's codes feed layer 2's, ..."""

from pipeline.tune.result import TuneResult
from pipeline.tune.search import TuneHooks, tune_stack
from pipeline.tune.trial import TrialJob, TrialOutcome, run_trial

__all__ = ["TrialJob", "TrialOutcome", "TuneHooks", "TuneResult", "run_trial", "tune_stack"]
