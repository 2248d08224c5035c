"""What chooses how, one rule for the probes and fine-tuning.

Validation chooses (the probes' C, the fine-tuning epoch or checkpoint, the fine-tuned run, the registered
encoder) when every class has at least ``validate_from_per_class`` labeled rows, training and validation
together, or when no training row is unlabeled (a fully labeled data set is chosen on as it always was).
Otherwise labels are few and precious: the validation rows join the labeled training rows, k-fold
cross-validation over them chooses the regularisation (``pipeline.evaluation.cross_validation``), and
fine-tuning keeps its last step. The test split is never read by either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config.finetune import FinetuneConfig
from pipeline.data.labels import fewest_per_class, labeled_mask

VALIDATE_FROM_PER_CLASS: int = FinetuneConfig.model_fields["validate_from_per_class"].default  # the config's


@dataclass(frozen=True)
class ChoosingRows:
    """The rows learning from labels sees, arranged by the rule."""

    train: np.ndarray  # (n, d) every training row, labeled or not (validation rows appended when they join)
    labeled: np.ndarray  # (m,) indices into ``train`` of the labeled rows
    y: np.ndarray  # (m,) their labels
    val: np.ndarray | None  # (v, d) the validation rows when validation chooses, else None
    y_val: np.ndarray | None

    @property
    def validated(self) -> bool:
        """Whether the validation split chooses."""
        return self.val is not None

    @property
    def n_unlabeled(self) -> int:
        return int(self.train.shape[0] - self.labeled.shape[0])


def validation_chooses(y_train: np.ndarray, y_val: np.ndarray, validate_from_per_class: int) -> bool:
    """The rule above, from the training labels (unlabeled rows marked) and the validation labels."""
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    if y_val.shape[0] == 0:
        return False
    known = labeled_mask(y_train)
    both = np.concatenate([y_train[known], y_val[labeled_mask(y_val)]])
    return bool(known.all()) or fewest_per_class(both) >= validate_from_per_class


def rows_for_choosing(train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray,
                      validate_from_per_class: int) -> ChoosingRows:
    """``train`` (n, d) with labels ``y_train`` (unlabeled rows marked) and the labeled ``val`` (v, d), as the
    rule arranges them: validation kept apart, or joined to the labeled training rows."""
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    keep_val = labeled_mask(y_val)
    if validation_chooses(y_train, y_val, validate_from_per_class):
        labeled = np.flatnonzero(labeled_mask(y_train))
        return ChoosingRows(train, labeled, y_train[labeled], val[keep_val], y_val[keep_val])
    joined = np.concatenate([np.asarray(train), np.asarray(val)])  # unlabeled validation rows join as such
    y_joined = np.concatenate([y_train, y_val])
    labeled = np.flatnonzero(labeled_mask(y_joined))
    return ChoosingRows(joined, labeled, y_joined[labeled], None, None)
