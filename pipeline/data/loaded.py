"""What loading produces: the raw splits, which of their rows have labels, the scaling fitted on train."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

from pipeline.data.labels import labeled_mask, unlabeled_marker
from pipeline.data.scaling import transform_in_chunks
from sae.scaling import Scaling

Labels = np.ndarray | None
Split = Literal["train", "val", "test"]


def labels_fingerprint(features: str, *labels: Labels) -> str:
    """The data's fingerprint: the features' fingerprint (hex) and every split's labels (in memory, small)."""
    digest = hashlib.sha256(features.encode())
    for y in labels:
        y = None if y is None else np.ascontiguousarray(y)
        digest.update(b"none;" if y is None else f"{y.dtype.str}{y.shape};".encode() + y.tobytes())
    return digest.hexdigest()


class Splits(NamedTuple):
    """One array per split, rows aligned with LoadedData's: (n_train, d), (n_val, d), (n_test, d)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class LoadedData:
    """Raw (unscaled) train/validation/test splits, the scaling fitted on train, and their provenance.

    Every training row trains the layers, labeled or not; the labeled ones (``labeled_rows``) fit the probes
    and the fine-tuning. Validation is all that choosing looks at (early stopping, the probes' regularisation,
    the best fine-tuning epoch); test is only reported. Both are drawn from labeled rows. A row without a label
    holds the marker of ``pipeline.data.labels`` (-1, or "" for class names) in ``y_*``; ``y_*`` is None when
    the data has no labels at all. X_* are in-memory float32 arrays, except for a .npy file over
    ``LARGE_FILE_BYTES`` (and no max_samples), whose splits are contiguous row slices of the memory-mapped file
    in its own dtype, and a large unlabeled pool, stacked into a scratch memmap. Layers train on ``scaled()``;
    the StackedEncoder applies ``scaling`` itself, so it is fed raw features.
    """

    X_train: np.ndarray  # (n_train, d): labeled training rows, the source's unlabeled rows, the unlabeled pool
    y_train: Labels  # (n_train,) int64 class ids or str class names, the unlabeled marker where there is none
    X_val: np.ndarray  # (n_val, d)
    y_val: Labels
    X_test: np.ndarray  # (n_test, d)
    y_test: Labels
    feature_names: list[str]
    source: str  # built-in name or the path as given
    fingerprint: str  # sha256 of every split's features and labels
    scaling: Scaling
    features_fingerprint: str = ""  # sha256 of every split's features only: all that the layers see
    # The development order (labeled non-test rows as the test split left them; what label draws index):
    # the position in it of each labeled training row that came from the source (X_train's first rows), then
    # of each validation row. None when the splits are slices of a memory-mapped file.
    dev_positions: np.ndarray | None = None
    n_pool: int = 0  # training rows from data.unlabeled_source (X_train's last rows)
    pretrain_rows: np.ndarray | None = None  # positions in X_train the layers fit on (data.pretrain_on); None: all
    _scaled: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def scaled(self) -> Splits:
        """The three splits as float32 scaled features, computed once (temporary memmaps for memmapped data)."""
        return Splits(*(self._scaled_split(which, X) for which, X in self.raw()._asdict().items()))

    def raw(self) -> Splits:
        """The three splits' raw features."""
        return Splits(self.X_train, self.X_val, self.X_test)

    def labels(self, split: Split = "train") -> Labels:
        """The split's labels (unlabeled rows hold the marker), or None when the data has none."""
        return {"train": self.y_train, "val": self.y_val, "test": self.y_test}[split]

    def labeled_rows(self, split: Split = "train") -> np.ndarray:
        """Ascending positions (int64) of the split's rows that have a label; empty when the data has none."""
        y = self.labels(split)
        return np.empty(0, np.int64) if y is None else np.flatnonzero(labeled_mask(y)).astype(np.int64)

    def labeled_train(self) -> tuple[np.ndarray, np.ndarray]:
        """(X (n, d) float32 raw features, y (n,)) of the labeled training rows: what classifiers fit on."""
        assert self.y_train is not None, "the data has no labels"
        rows = self.labeled_rows("train")
        return np.asarray(self.X_train[rows], np.float32), np.asarray(self.y_train)[rows]

    def counts(self) -> dict[str, int]:
        """Row counts: pretrained (the training rows the layers fit on), labeled (training rows with a label),
        train, validation, test, unlabeled training rows and the pool's share of them."""
        n_train, n_val = int(self.X_train.shape[0]), int(self.X_val.shape[0])
        fit = n_train if self.pretrain_rows is None else int(self.pretrain_rows.size)
        labeled = int(self.labeled_rows("train").size)
        return {"pretrained": fit, "labeled": labeled, "train": n_train, "validation": n_val,
                "test": int(self.X_test.shape[0]),
                "unlabeled": n_train - labeled if self.y_train is not None else n_train, "pool": int(self.n_pool)}

    def counts_line(self) -> str:
        """``pretrained on 3,600 rows, 90 labeled; validation 400, test 1,000 rows``: what the results table
        says first (with ``data.pretrain_on: unlabeled`` the labeled rows are ``plus`` the pretrained ones)."""
        c = self.counts()
        pool = f" ({c['pool']:,} from the unlabeled pool)" if c["pool"] else ""
        besides = "plus " if self.pretrain_rows is not None and self.y_train is not None else ""
        labeled = f", {besides}{c['labeled']:,} labeled" if self.y_train is not None else ", no labels"
        return (f"pretrained on {c['pretrained']:,} rows{pool}{labeled}; "
                f"validation {c['validation']:,}, test {c['test']:,} rows")

    def keep_labels(self, train: np.ndarray, val: np.ndarray) -> LoadedData:
        """A copy in which only the training rows ``train`` and validation rows ``val`` (positions) keep their
        labels: the same features, splits, test labels and scaling, so the same layers serve it."""
        assert self.y_train is not None and self.y_val is not None, "the data has no labels"

        def masked(y: np.ndarray, keep: np.ndarray) -> np.ndarray:
            out = np.full_like(np.asarray(y), unlabeled_marker(y))
            out[keep] = np.asarray(y)[keep]
            return out

        y_train, y_val = masked(self.y_train, train), masked(self.y_val, val)
        return dataclasses.replace(self, y_train=y_train, y_val=y_val, fingerprint=labels_fingerprint(
            self.features_fingerprint, y_train, y_val, self.y_test))

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_scaled": {}}  # scaled copies (memory or scratch files) are recomputed

    def _scaled_split(self, which: str, X: np.ndarray) -> np.ndarray:
        if which not in self._scaled:  # memmapped data is scaled into a scratch memmap, freed with self
            self._scaled[which] = transform_in_chunks(self.scaling, X, on_disk=isinstance(X, np.memmap))
        return self._scaled[which]
