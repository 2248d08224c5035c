"""Class labels as indices: the classes seen in training, and any split's labels as positions among them."""

from __future__ import annotations

import numpy as np


def class_indices(y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted classes of the training labels, each training label's index among them)."""
    classes, indices = np.unique(np.asarray(y_train), return_inverse=True)
    return classes, indices


def indices_of(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each label's index in ``classes``; -1 for a label training never saw (it can never be predicted)."""
    lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    return np.array([lookup.get(c, -1) for c in np.asarray(y).tolist()], dtype=np.int64)
