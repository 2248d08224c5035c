"""Class labels: which rows have one, the classes seen in training, and any split's labels as positions among them.

A row without a label carries a marker in the label array: ``-1`` for numeric labels (scikit-learn's
semi-supervised convention; files may also say NaN or leave the cell empty) and ``""`` for text labels. The
marker is the one fact of "unlabeled": ``labeled_mask`` reads it, and nothing makes a class of it.
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import InputError

UNLABELED = -1  # numeric labels
UNLABELED_NAME = ""  # text labels


def unlabeled_marker(y: np.ndarray) -> int | str:
    """The marker of an unlabeled row in labels like ``y``: -1 for numbers, "" for text."""
    return UNLABELED_NAME if np.asarray(y).dtype.kind in "US" else UNLABELED


def labeled_mask(y: np.ndarray) -> np.ndarray:
    """(n,) bool: True where the row has a label (not the ``unlabeled_marker``)."""
    y = np.asarray(y)
    return y != unlabeled_marker(y)


def check_labeled(source: str, y: np.ndarray) -> np.ndarray:
    """The labeled-row mask of ``source``'s labels ``y``; InputError when fewer than two classes have a labeled row."""
    labeled = labeled_mask(y)
    classes = np.unique(y[labeled]).tolist()
    if len(classes) < 2:
        what = "no row has a label" if not classes else f"only class {classes[0]!r} has labeled rows"
        raise InputError(f"{source}: {what} (-1, NaN and empty cells mark unlabeled rows); label rows of at "
                         "least two classes, or remove data.labels to pretrain without labels")
    return labeled


def unlabeled_like(y: np.ndarray, n: int) -> np.ndarray:
    """``n`` unlabeled markers in ``y``'s dtype (to append rows without labels to ``y``)."""
    y = np.asarray(y)
    return np.full(n, unlabeled_marker(y), dtype=y.dtype)


def class_indices(y_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted classes of the training labels, each training label's index among them); labeled rows only."""
    y_train = np.asarray(y_train)
    if not labeled_mask(y_train).all():
        raise ValueError(f"{int((~labeled_mask(y_train)).sum())} unlabeled rows (label "
                         f"{unlabeled_marker(y_train)!r}) reached a classifier; pass only the labeled rows "
                         "(LoadedData.labeled_rows)")
    classes, indices = np.unique(y_train, return_inverse=True)
    return classes, indices


def indices_of(classes: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each label's index in ``classes``; -1 for a label training never saw (it can never be predicted)."""
    lookup = {c: i for i, c in enumerate(np.asarray(classes).tolist())}
    return np.array([lookup.get(c, -1) for c in np.asarray(y).tolist()], dtype=np.int64)


def fewest_per_class(y: np.ndarray) -> int:
    """The smallest number of rows any class has among the labeled ``y`` (0 when none is labeled)."""
    y = np.asarray(y)[labeled_mask(y)]
    return int(np.unique(y, return_counts=True)[1].min()) if y.size else 0

