"""Load a configured data set: read it, split train/validation/test (seeded), fit the scaling on train."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.data.builtin import BUILTIN_DATASETS, load_builtin
from pipeline.data.paths import source_path
from pipeline.data.readers import CHUNK_ROWS, Labels, read_array_file
from pipeline.data.scaling import column_range, fit_scaling, transform_in_chunks
from pipeline.errors import InputError
from sae.batches import row_chunks
from sae.scaling import Scaling

if TYPE_CHECKING:
    from pipeline.config import DataConfig

MAX_SCALED = 1e18  # float32 squares of scaled values must stay finite (max ~3.4e38)
LARGE_FILE_BYTES = 256 * 2**20  # a .npy file above this stays memory-mapped and is split contiguously


class Splits(NamedTuple):
    """One array per split, rows aligned with LoadedData's: (n_train, d), (n_val, d), (n_test, d)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


@dataclass
class LoadedData:
    """Raw (unscaled) train/validation/test splits, the scaling fitted on train, and their provenance.

    Train fits the layers, the probes and the fine-tuning; validation is all that choosing looks at (early
    stopping, the probes' regularisation, the best fine-tuning epoch); test is only reported. X_* are
    in-memory float32 arrays, except for a .npy file over ``LARGE_FILE_BYTES`` (and no max_samples): then
    they are contiguous row slices of the memory-mapped file in its own dtype (train | validation | test).
    Layers train on ``scaled()``; the StackedEncoder applies ``scaling`` itself, so it is fed raw features.
    """

    X_train: np.ndarray  # (n_train, d)
    y_train: Labels  # (n_train,) int64 class ids or str class names
    X_val: np.ndarray  # (n_val, d)
    y_val: Labels
    X_test: np.ndarray  # (n_test, d)
    y_test: Labels
    feature_names: list[str]
    source: str  # built-in name or the path as given
    fingerprint: str  # sha256 of every split's features and labels
    scaling: Scaling
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

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_scaled": {}}  # scaled copies (memory or scratch files) are recomputed

    def _scaled_split(self, which: str, X: np.ndarray) -> np.ndarray:
        if which not in self._scaled:  # memmapped data is scaled into a scratch memmap, freed with self
            self._scaled[which] = transform_in_chunks(self.scaling, X, on_disk=isinstance(X, np.memmap))
        return self._scaled[which]


def _read_source(data: DataConfig, source: str, field_name: str, seed: int) -> tuple[np.ndarray, Labels, list[str]]:
    """A built-in or a file, capped at data.max_samples rows; small files are read into memory."""
    if source in BUILTIN_DATASETS:
        if data.features is not None or data.labels is not None:
            raise InputError(f"{field_name}={source!r} is a built-in data set: data.features and data.labels "
                             "apply to files only; remove them")
        X, y = load_builtin(source, seed)
        names = [f"pixel_{i // 8}_{i % 8}" for i in range(X.shape[1])]
    else:
        path = source_path(source, field_name)
        assert path is not None
        X, y, names = read_array_file(path, data.features, data.labels)
        if isinstance(X, np.memmap) and path.stat().st_size <= LARGE_FILE_BYTES:
            X = np.asarray(X, dtype=np.float32)  # small enough to read; a cap below reads only the kept rows
    if data.max_samples is not None and X.shape[0] > data.max_samples:
        keep = np.sort(np.random.default_rng(seed).permutation(X.shape[0])[: data.max_samples])
        X, y = np.asarray(X[keep], dtype=np.float32), (None if y is None else y[keep])
    return X, y, names


def _split_sizes(where: str, n: int, fraction: float, name: str) -> tuple[int, int]:
    n_out = math.ceil(fraction * n)
    if n - n_out < 2 or n_out < 2:
        side = name.removesuffix("_fraction")
        raise InputError(f"{where}: {n} samples are too few to split with {name}={fraction} "
                         f"({n - n_out} train, {n_out} {side}); need at least 2 on each side: add rows "
                         f"or change data.{name}")
    return n - n_out, n_out


def _stratify(y: Labels, n_train: int, n_test: int) -> Labels:
    """The labels when a stratified split is possible (every class twice, every class fits each side)."""
    if y is None:
        return None
    counts = np.unique(y, return_counts=True)[1]
    return y if counts.min() >= 2 and min(n_train, n_test) >= len(counts) else None


def _split(where: str, X: np.ndarray, y: Labels, fraction: float, name: str, seed: int
           ) -> tuple[np.ndarray, Labels, np.ndarray, Labels]:
    """(kept X, kept y, split-off X, split-off y): seeded and stratified, or the last rows of a memmap."""
    n_keep, n_out = _split_sizes(where, X.shape[0], fraction, name)
    if isinstance(X, np.memmap):  # too large to shuffle in memory: contiguous views
        return X[:n_keep], None if y is None else y[:n_keep], X[n_keep:], None if y is None else y[n_keep:]
    parts = train_test_split(*(X,) if y is None else (X, y), test_size=n_out, random_state=seed,
                             stratify=_stratify(y, n_keep, n_out))
    return (parts[0], parts[2], parts[1], parts[3]) if y is not None else (parts[0], None, parts[1], None)


def fingerprint(*arrays: np.ndarray | None) -> str:
    """sha256 hex over arrays' dtype, shape and bytes, read in row chunks (memmaps are never loaded whole)."""
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"none;")
            continue
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        for _, chunk in row_chunks(array, CHUNK_ROWS, dtype=None):
            digest.update(np.ascontiguousarray(chunk).tobytes())
    return digest.hexdigest()


def load_data(data: DataConfig, seed: int = 0) -> LoadedData:
    """Read, validate, split and fit the scaling on the train split: every problem is an InputError up front."""
    X, y, names = _read_source(data, data.source, "data.source", seed)
    lo, hi = column_range(X)
    if np.all(lo == hi):
        raise InputError(f"{data.source}: every feature is constant ({X.shape[1]} columns, one value each); "
                         "there is nothing to learn: check the file and data.features")
    if data.test_source is not None:
        X_test, y_test, _ = _read_source(data, data.test_source, "data.test_source", seed)
        if X_test.shape[1] != X.shape[1]:
            raise InputError(f"data.test_source={data.test_source!r} has {X_test.shape[1]} features but "
                             f"data.source={data.source!r} has {X.shape[1]}; they need the same columns")
        if (y is None) != (y_test is None):
            raise InputError(f"data.source and data.test_source disagree about labels ({data.source!r}: "
                             f"{'yes' if y is not None else 'no'}); give both files the labels, or neither")
        if X_test.shape[0] < 2:
            raise InputError(f"{data.test_source}: {X_test.shape[0]} sample(s); need at least 2 for testing")
    else:
        X, y, X_test, y_test = _split(data.source, X, y, data.test_fraction, "test_fraction", seed)
    # Validation comes out of the training part: nothing that chooses ever sees the test rows.
    X_train, y_train, X_val, y_val = _split(data.source, X, y, data.validation_fraction, "validation_fraction", seed)
    scaling = fit_scaling(X_train, data.scale)
    _check_scaled_range(data, scaling, [X_train, X_val, X_test], names)
    return LoadedData(
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        feature_names=names,
        source=data.source,
        fingerprint=fingerprint(X_train, y_train, X_val, y_val, X_test, y_test),
        scaling=scaling,
    )


def _check_scaled_range(data: DataConfig, scaling: Scaling, splits: list[np.ndarray], names: list[str]) -> None:
    """InputError naming the first column whose scaled values overflow float32 arithmetic (their squares)."""
    shift, factor = scaling.shift.astype(np.float64), scaling.factor.astype(np.float64)
    for X in splits:
        lo, hi = column_range(X)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = np.maximum(np.abs((lo - shift) * factor), np.abs((hi - shift) * factor)) + scaling.offset
        bad = np.flatnonzero(~(scaled <= MAX_SCALED))
        if bad.size:
            j = int(bad[0])
            raise InputError(
                f"{data.source}: column {names[j]!r} reaches {max(abs(lo[j]), abs(hi[j])):.3g}, which is "
                f"{scaled[j]:.3g} after data.scale={data.scale} and overflows float32 in training; "
                "rescale or drop that column, or use data.scale: standard"
            )
