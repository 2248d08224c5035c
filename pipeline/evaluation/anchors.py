"""Classical few-label anchors for the label-efficiency curve, computed on the same draws as the stack.

Features are min-max scaled to [0, 1] over every row pretraining sees (clipped elsewhere), as in
../shared/data/README.md. With a budget's labeled rows (training and validation rows that kept a label):

- logistic regression on the raw features (labeled rows; C = 1, scikit-learn's default);
- SVC with an RBF kernel (labeled rows; C in {1, 10} by stratified 3-fold cross-validation on them);
- ``LabelSpreading(kernel="knn", n_neighbors=10)`` over every pretraining row, the unlabeled ones included;
- ``BernoulliRBM(200)`` fitted once on every pretraining row, then logistic regression (C = 10) on the labeled
  rows' hidden probabilities.

Nothing here looks at the test split but to score it. Unsupervised fits (the RBM, the spreading graph) use at
most ``MAX_ROWS`` pretraining rows (a seeded sample, every labeled row kept).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neural_network import BernoulliRBM
from sklearn.semi_supervised import LabelSpreading
from sklearn.svm import SVC
from threadpoolctl import threadpool_limits

from pipeline.data.budgets import draw_budget
from pipeline.data.loaded import LoadedData

MAX_ROWS = 20_000  # rows the RBM and the label-spreading graph are built on, at most
RBM = {"n_components": 200, "learning_rate": 0.05, "n_iter": 20}  # the README's BernoulliRBM(200)
ANCHORS = ("logistic regression (raw)", "SVC-RBF", "LabelSpreading(knn)", "BernoulliRBM + logistic regression")


@dataclass
class AnchorFeatures:
    """What every budget shares: the [0, 1] features of the pretraining rows and the test rows, the RBM's codes."""

    X: np.ndarray  # (n, d) every pretraining row: the training rows, then the validation rows
    X_test: np.ndarray
    rbm: np.ndarray  # (n, 200) the RBM's hidden probabilities of X
    rbm_test: np.ndarray
    y_test: np.ndarray
    seconds: float  # fitting the RBM and scaling


def _unit(X: np.ndarray, lo: np.ndarray, span: np.ndarray) -> np.ndarray:
    return np.clip((np.asarray(X, np.float64) - lo) / span, 0.0, 1.0).astype(np.float32)


def fit_anchor_features(data: LoadedData, seed: int) -> AnchorFeatures:
    """Scale the rows to [0, 1] and fit the RBM on (at most MAX_ROWS of) every pretraining row."""
    started = time.perf_counter()
    X = np.concatenate([np.asarray(data.X_train, np.float32), np.asarray(data.X_val, np.float32)])
    lo, hi = X.min(axis=0).astype(np.float64), X.max(axis=0).astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    X, X_test = _unit(X, lo, span), _unit(data.X_test, lo, span)
    # The RBM's mini-batches follow the row order: fitted in the development order (the README's), then the rest.
    dev = draw_budget(data, None, seed).rows
    order = np.concatenate([dev, np.setdiff1d(np.arange(X.shape[0]), dev)])
    with threadpool_limits(1):  # see anchor_accuracies
        rbm = BernoulliRBM(**RBM, random_state=seed).fit(X[order[np.sort(_sample(X.shape[0], seed))]])
        codes, codes_test = rbm.transform(X), rbm.transform(X_test)
    assert data.y_test is not None
    return AnchorFeatures(X, X_test, codes, codes_test, np.asarray(data.y_test), time.perf_counter() - started)


def _sample(n: int, seed: int, keep: np.ndarray | None = None) -> np.ndarray:
    """All of ``range(n)``, or MAX_ROWS of them (seeded, sorted) always including ``keep``."""
    if n <= MAX_ROWS:
        return np.arange(n)
    rest = np.setdiff1d(np.arange(n), keep if keep is not None else [])
    extra = np.random.default_rng(seed).choice(rest, max(MAX_ROWS - (0 if keep is None else keep.size), 0),
                                               replace=False)
    return np.sort(np.concatenate([extra, keep if keep is not None else []]).astype(np.int64))


def anchor_accuracies(features: AnchorFeatures, labeled: np.ndarray, y: np.ndarray, seed: int) -> dict[str, float]:
    """Test accuracy of every anchor fitted on the ``labeled`` rows (positions in ``features.X``, in the order
    given: cross-validation folds follow it) with labels ``y``."""
    X = features.X[labeled]
    folds = max(2, min(3, int(np.unique(y, return_counts=True)[1].min())))
    # One BLAS/OpenMP thread: these small fits are latency-bound, and threads spinning against a busy core made
    # one logistic regression on 1,437 digits take 20 s instead of 0.1 s on the shared 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        out = {ANCHORS[0]: LogisticRegression(C=1.0, max_iter=1000).fit(X, y).score(features.X_test, features.y_test)}
        svc = GridSearchCV(SVC(gamma="scale"), {"C": [1, 10]}, cv=StratifiedKFold(folds)).fit(X, y)
        out[ANCHORS[1]] = svc.score(features.X_test, features.y_test)
        rows = _sample(features.X.shape[0], seed, np.sort(labeled))
        spread = np.full(rows.size, -1, dtype=np.int64)
        classes, codes = np.unique(y, return_inverse=True)
        spread[np.searchsorted(rows, labeled)] = codes
        model = LabelSpreading(kernel="knn", n_neighbors=10).fit(features.X[rows], spread)
        out[ANCHORS[2]] = float(np.mean(classes[model.predict(features.X_test)] == features.y_test))
        rbm_lr = LogisticRegression(C=10.0, max_iter=1000).fit(features.rbm[labeled], y)
        out[ANCHORS[3]] = rbm_lr.score(features.rbm_test, features.y_test)
    return {name: float(value) for name, value in out.items()}
