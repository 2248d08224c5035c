"""A layer's Optuna study: created or resumed (trials of dead processes failed), its sampler and pruner, and
how many trials count against the budget."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from pipeline.config import PipelineConfig
from pipeline.config.search import Range
from pipeline.process.pids import pid_alive
from pipeline.run import entries, layer_store
from pipeline.tune.objective import direction
from pipeline.tune.space import config_point


def pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    match kind:
        case "median":
            return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 4))
        case "hyperband":
            return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(2, epochs), reduction_factor=3)
        case "none":
            return optuna.pruners.NopPruner()
    raise ValueError(f"pruner={kind!r}: use median, hyperband or none")


INTERRUPTED = "interrupted_trials"  # study attribute: numbers of the trials a kill interrupted


def fail_dead_trials(study: optuna.Study, cache_dir: Path) -> int:
    """Fail the RUNNING trials whose process (on this host) is gone, list them as interrupted, and delete the
    half-trained layer each left behind; returns how many."""
    dead = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, host, key = (trial.user_attrs.get(k) for k in ("pid", "host", "key"))
        if host == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid):
            if key:
                partial = entries.sibling(layer_store.layer_dir(cache_dir, key), entries.PARTIAL, host, pid)
                shutil.rmtree(partial, ignore_errors=True)
            dead.append(trial.number)
    if dead:  # listed before the state changes: a kill in between leaves them RUNNING, found again next time
        study.set_user_attr(INTERRUPTED, sorted({*interrupted(study), *dead}))
        for number in dead:
            study.tell(number, state=TrialState.FAIL)
    return len(dead)


def interrupted(study: optuna.Study) -> list[int]:
    """Numbers of the trials whose process was killed (failed, not counted against the budget)."""
    return list(study.user_attrs.get(INTERRUPTED, []))


def finished_count(study: optuna.Study) -> int:
    """Trials that count against the budget: complete, pruned and failed, but not ones a kill interrupted."""
    killed = set(interrupted(study))
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.number not in killed))


def open_study(config: PipelineConfig, index: int, name: str, *, storage: str, objective: str, cache_dir: Path,
               trials: int) -> optuna.Study:
    """Layer ``index``'s study (created, or resumed with dead trials failed), its sampler and pruner set."""
    assert config.search is not None
    space = config.search.space(index)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                direction=direction(objective))
    fail_dead_trials(study, cache_dir)
    if not study.trials and (written := config_point(config, index, space)):
        # Trial 1 is the layer as the config writes it (where its values lie in the space): the best trial is
        # then never worse on validation than the config, and a layer `run` already trained is recalled.
        study.enqueue_trial(written, user_attrs={"config": True})
    study.sampler = optuna.samplers.TPESampler(
        seed=(config.seed * 1000 + index) * 1000 + len(study.trials),  # a resumed search draws anew
        n_startup_trials=max(3, trials // 3))
    study.pruner = pruner(config.search.pruner, max_epochs(config, index, space.get("epochs")))
    return study


def max_epochs(config: PipelineConfig, index: int, epochs: Any) -> int:
    """The most epochs a trial of layer ``index`` can run (the pruner's horizon)."""
    if isinstance(epochs, list):
        return max(int(e) for e in epochs)
    return int(epochs.high) if isinstance(epochs, Range) else config.layer_settings(index).epochs
