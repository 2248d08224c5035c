"""PNG figures of one layer's study: objective per trial, and which parameters mattered."""

from __future__ import annotations

from pathlib import Path

import optuna
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from optuna.trial import TrialState

DPI = 100


def objective_vs_trial(study: optuna.Study, out: Path, *, title: str) -> Path:
    """``objective_figure`` as a PNG at ``out``."""
    fig = objective_figure(study, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def objective_figure(study: optuna.Study, *, title: str) -> Figure:
    """Each trial's objective (pruned ones at their last report, hollow), and the best so far as a line; trials
    numbered from 1 on whole-number ticks."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    fig = Figure(figsize=(6, 3.5), dpi=DPI)
    ax = fig.add_subplot()
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    ax.scatter([t.number + 1 for t in done], [t.value for t in done], label="complete", color="tab:blue")
    if pruned:  # no legend entry for what did not happen
        ax.scatter([t.number + 1 for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   label="pruned (last report)", facecolors="none", edgecolors="tab:orange")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        assert t.value is not None
        best = t.value if best is None else (max if maximize else min)(best, t.value)
        xs.append(t.number + 1)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are whole numbers: no 1.25, 1.5
    ax.set_xlabel("trial")
    ax.set_ylabel("objective")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def param_importance(study: optuna.Study, out: Path, *, title: str) -> Path | None:
    """Optuna's fANOVA importance per parameter as bars; None when too few trials completed to tell."""
    try:
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):  # fewer than two completed trials, or no parameter varied
        return None
    if not importances:
        return None
    fig = Figure(figsize=(6, 0.5 + 0.45 * len(importances)), dpi=DPI)
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (fANOVA, sums to 1)")
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
