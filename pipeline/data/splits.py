"""Seeded train/test splits in numpy, drawing exactly what scikit-learn's ``train_test_split`` draws.

The data loader used ``sklearn.model_selection.train_test_split``; importing scikit-learn (and the SciPy it
pulls in) cost a run 1.5 s before it trained anything. These functions make the same draws from the same
``RandomState(seed)`` in the same order (``ShuffleSplit`` and ``StratifiedShuffleSplit``, scikit-learn 1.5-1.9),
so every split, data fingerprint and layer-cache key stays what it was; a test compares them with
scikit-learn's on many sizes, seeds and label sets.
"""

from __future__ import annotations

import numpy as np

Indices = tuple[np.ndarray, np.ndarray]  # (train rows, test rows)


def shuffle_split(n: int, n_test: int, seed: int) -> Indices:
    """(train, test) row indices of a shuffled split of ``n`` rows, ``n_test`` of them held out."""
    permutation = np.random.RandomState(seed).permutation(n)
    return permutation[n_test:], permutation[:n_test]


def stratified_split(y: np.ndarray, n_test: int, seed: int) -> Indices:
    """(train, test) row indices keeping each class's share of ``y`` on both sides (every class needs 2 rows)."""
    n_train = y.shape[0] - n_test
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    # Each class's rows in their original order (np.unique sorted the classes).
    class_rows = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(classes.shape[0]):
        rows = class_rows[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(rows[: n_i[i]])
        test.extend(rows[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Rows to draw per class: the floor of each class's share, the rest to the largest remainders (ties drawn
    at random), as scikit-learn's ``_approximate_mode``."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
