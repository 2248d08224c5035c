"""Choosing a probe's L2 strength without a validation split: stratified k-fold cross-validation over the labeled
training rows, then one refit on all of them.

This is how few labels choose: ten labels a class leave a 10% validation split of one row a class, which picks
C almost at random, while every labeled row serves k - 1 times for fitting and once for judging here. The
criterion is the validation probe's: mean held-out log-loss, ties to the stronger regularisation. The test
split is only scored, after the choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.data.labels import class_indices, indices_of
from pipeline.evaluation.probes import (
    PROBE_CS,
    PROBE_MAX_ITER,
    PathPoint,
    ProbeFit,
    one_cpu_thread,
    path_fits,
    scores,
    standardiser,
)

CV_FOLDS = 5  # k of k-fold; fewer when a class has fewer labeled rows
UNCHOSEN_C = 1.0  # scikit-learn's default, taken when some class has a single labeled row (no fold can judge it)


def cv_folds(y: np.ndarray, k: int = CV_FOLDS, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, held-out rows) of stratified k-fold over labels ``y``, shuffled with ``seed``;
    k = min(k, smallest class count); [] when that is below 2."""
    k = min(k, int(np.unique(y, return_counts=True)[1].min()))
    if k < 2:
        return []
    from sklearn.model_selection import StratifiedKFold  # here: only runs with few labels cross-validate

    return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def fit_probe_cv(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray | None = None, y_test: np.ndarray | None = None,
    *, scale_rows: np.ndarray | None = None, standardise: bool = True, cs: Sequence[float] = PROBE_CS,
    k: int = CV_FOLDS, seed: int = 0, device: torch.device | str = "cpu", max_iter: int = PROBE_MAX_ITER,
) -> ProbeFit:
    """A probe on the labeled rows ``train`` (n, d) whose C has the lowest mean held-out log-loss over
    stratified k-fold CV, refitted on all n rows.

    Features are standardised with the mean and deviation of ``scale_rows`` (every training row, labeled or
    not: labels are not needed for it; default ``train``), or not at all with ``standardise=False``.
    ``val_accuracy`` and the path's points are the held-out means over the folds; ``test`` is only scored.
    """
    if not cs:
        raise ValueError("cs is empty: pass at least one inverse regularisation strength, e.g. (0.1, 1.0, 10.0)")
    device = torch.device(device)
    with one_cpu_thread(device), torch.no_grad():
        classes, y_idx = class_indices(y_train)
        features = standardiser(train if scale_rows is None else scale_rows, device) if standardise else (
            lambda part: torch.as_tensor(np.asarray(part, dtype=np.float32), device=device))
        x, y = features(train), torch.as_tensor(y_idx, device=device)
        path = _cv_path(x, y, len(classes), cs, cv_folds(y_idx, k, seed), max_iter)
        chosen = min(path, key=lambda p: (p.val_log_loss, p.c)) if path else PathPoint(UNCHOSEN_C, float("nan"),
                                                                                         float("nan"), 0)
        refit = [fit for fit in path_fits(x, y, len(classes), [c for c in cs if c <= chosen.c] or [chosen.c],
                                          max_iter=max_iter)]
        _, w, b, _ = refit[-1]
        test_accuracy = float("nan")
        if test is not None and y_test is not None:
            test_accuracy = scores(w, b, features(test), torch.as_tensor(indices_of(classes, y_test), device=device))[0]
        iterations = sum(p.iterations for p in path) + sum(fit[3] for fit in refit)
        return ProbeFit(chosen.c, chosen.val_accuracy, test_accuracy, iterations, tuple(path))


def _cv_path(x: torch.Tensor, y: torch.Tensor, n_classes: int, cs: Sequence[float],
             folds: list[tuple[np.ndarray, np.ndarray]], max_iter: int) -> list[PathPoint]:
    """One point per C (sorted): held-out accuracy and log-loss averaged over ``folds``, iterations summed."""
    totals = {c: np.zeros(3) for c in cs}
    for fit_rows, held_out in folds:
        fit_rows, held_out = torch.as_tensor(fit_rows, device=x.device), torch.as_tensor(held_out, device=x.device)
        for c, w, b, steps in path_fits(x[fit_rows], y[fit_rows], n_classes, cs, max_iter=max_iter):
            totals[c] += (*scores(w, b, x[held_out], y[held_out]), steps)
    return [PathPoint(c, t[0] / len(folds), t[1] / len(folds), int(t[2])) for c, t in sorted(totals.items())
            if folds]
