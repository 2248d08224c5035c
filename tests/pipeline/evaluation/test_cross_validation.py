"""Few labels choose by k-fold cross-validation over the labeled training rows, never by the test split; the
rule says when validation chooses instead."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from pipeline.data.budgets import draw_per_class
from pipeline.evaluation.choosing import rows_for_choosing, validation_chooses
from pipeline.evaluation.cross_validation import UNCHOSEN_C, cv_folds, fit_probe_cv
from pipeline.evaluation.probes import PROBE_CS


@pytest.fixture(scope="module")
def few() -> tuple[np.ndarray, ...]:
    """Sigmoid codes (1,797 x 48) of the digits through a fixed random layer: 8 labeled rows a class of the
    first 1,400 rows (the rest unlabeled), then 397 test rows."""
    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    X, y = X[order] / 16.0, y[order]
    h = (1 / (1 + np.exp(-(X @ np.random.default_rng(1).normal(0, 0.3, (64, 48)) - 1.0)))).astype(np.float32)
    labeled = draw_per_class(y[:1400], 8, 0)
    return h[:1400], labeled, y[:1400][labeled], h[1400:], y[1400:]


def test_folds_are_stratified_and_k_shrinks_to_the_smallest_class():
    y = np.repeat(np.arange(4), 3)  # three rows a class: three folds at most
    folds = cv_folds(y, k=5, seed=0)
    assert len(folds) == 3
    for fit, held_out in folds:
        assert sorted(y[held_out].tolist()) == [0, 1, 2, 3] and len(fit) == 8
    assert cv_folds(np.array([0, 0, 1]), k=5) == []  # a class with one row: nothing can be held out


def test_the_c_with_the_lowest_mean_held_out_log_loss_is_chosen_then_refitted_on_every_labeled_row(few):
    train, labeled, y, test, y_test = few
    fit = fit_probe_cv(train[labeled], y, test, y_test, scale_rows=train)
    assert [p.c for p in fit.path] == sorted(PROBE_CS)
    assert fit.c == min(fit.path, key=lambda p: (p.val_log_loss, p.c)).c
    mean, std = train.mean(0), train.std(0)  # standardised over every training row, labeled or not
    z = (train[labeled] - mean) / std
    for point in fit.path[::3]:  # each point is the fold mean of scikit-learn's held-out log-loss at that C
        losses = [log_loss(y[va], LogisticRegression(C=point.c, max_iter=3000, tol=1e-8).fit(z[tr], y[tr])
                           .predict_proba(z[va]), labels=np.unique(y)) for tr, va in cv_folds(y, seed=0)]
        assert point.val_log_loss == pytest.approx(np.mean(losses), rel=0.02, abs=2e-3), point
    refit = LogisticRegression(C=fit.c, max_iter=3000, tol=1e-8).fit(z, y)
    assert fit.test_accuracy == pytest.approx(refit.score((test - mean) / std, y_test), abs=0.005)
    assert 0.6 < fit.test_accuracy < 1.0


def test_choosing_never_reads_the_test_split(few):
    train, labeled, y, test, y_test = few
    plain = fit_probe_cv(train[labeled], y, test, y_test, scale_rows=train)
    poisoned = fit_probe_cv(train[labeled], y, np.full_like(test, np.nan), np.roll(y_test, 7), scale_rows=train)
    untested = fit_probe_cv(train[labeled], y, scale_rows=train)
    assert plain.c == poisoned.c == untested.c and plain.path == poisoned.path == untested.path
    assert np.isnan(untested.test_accuracy) and poisoned.test_accuracy != plain.test_accuracy


def test_a_class_with_one_labeled_row_takes_the_default_c():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 5)).astype(np.float32), np.array([0, 0, 0, 1, 1, 1, 2])
    assert fit_probe_cv(x, y).c == UNCHOSEN_C


def test_validation_chooses_only_with_enough_labels_or_no_unlabeled_row():
    ten_a_class = np.repeat(np.arange(3), 10)
    with_pool = np.concatenate([ten_a_class, np.full(50, -1)])
    assert not validation_chooses(with_pool, np.arange(3), validate_from_per_class=200)
    assert validation_chooses(with_pool, np.arange(3), validate_from_per_class=11)  # 10 + 1 validation row
    assert validation_chooses(ten_a_class, np.arange(3), validate_from_per_class=200)  # nothing unlabeled
    assert not validation_chooses(ten_a_class, np.arange(0), validate_from_per_class=2)  # no validation split


def test_with_few_labels_the_validation_rows_join_training_labeled_or_not():
    train, y_train = np.arange(10.0).reshape(5, 2), np.array([0, -1, 1, -1, 0])
    val, y_val = np.arange(100.0, 106.0).reshape(3, 2), np.array([1, -1, 0])
    rows = rows_for_choosing(train, y_train, val, y_val, validate_from_per_class=200)
    assert not rows.validated and rows.val is None
    assert rows.train.shape == (8, 2) and rows.labeled.tolist() == [0, 2, 4, 5, 7] and rows.y.tolist() == [0, 1, 0, 1, 0]
    assert rows.n_unlabeled == 3
    kept = rows_for_choosing(train, y_train, val, y_val, validate_from_per_class=2)
    assert kept.validated and kept.train is train and kept.labeled.tolist() == [0, 2, 4]
    assert kept.val.tolist() == [[100.0, 101.0], [104.0, 105.0]] and kept.y_val.tolist() == [1, 0]
