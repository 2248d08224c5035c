"""The search's objective plot: trials on whole-number ticks, a legend entry only for what happened."""

import optuna

from pipeline.tune.plots import objective_figure


def study(pruned: bool) -> optuna.Study:
    s = optuna.create_study(direction="maximize")
    for i, value in enumerate([0.5, 0.7, 0.6]):
        trial = s.ask()
        trial.report(value, 0)
        if pruned and i == 2:
            s.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            s.tell(trial, value)
    return s


def test_trials_are_whole_numbers_and_pruned_is_in_the_legend_only_when_a_trial_was_pruned():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for pruned in (False, True):
        ax = objective_figure(study(pruned), title="layer 1").axes[0]
        ax.figure.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks  # no 1.25, 1.5
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        assert ("pruned (last report)" in labels) is pruned, labels
