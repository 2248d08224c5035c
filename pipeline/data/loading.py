"""Load a configured data set: read it and its unlabeled rows, split train/validation/test (seeded, test and
validation from labeled rows), fit the scaling on train."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.data.builtin import BUILTIN_DATASETS, BUILTIN_FEATURES, BUILTIN_LABELS, load_builtin
from pipeline.data.labels import check_labeled, labeled_mask, unlabeled_like
from pipeline.data.loaded import LoadedData, Splits, labels_fingerprint
from pipeline.data.paths import source_path
from pipeline.data.readers import CHUNK_ROWS, Labels, read_array_file
from pipeline.data.scaling import column_range, fit_scaling
from pipeline.data.shapes import LARGE_FILE_BYTES
from pipeline.data.splits import shuffle_split, stratified_split
from pipeline.data.unlabeled import drop_classes, read_unlabeled, stack_rows
from pipeline.errors import InputError
from sae.chunks import row_chunks
from sae.scaling import Scaling

if TYPE_CHECKING:
    from pipeline.config import DataConfig

Reader = Callable[[Path, Any, Any], tuple[np.ndarray, Labels, list[str]]]  # read_array_file's signature
MAX_SCALED = 1e18  # float32 squares of scaled values must stay finite (max ~3.4e38)
__all__ = ["LoadedData", "Splits", "fingerprint", "load_data"]


def _read_source(data: DataConfig, source: str, field_name: str, seed: int, read: Reader = read_array_file
                 ) -> tuple[np.ndarray, Labels, list[str]]:
    """A built-in or a file, capped at data.max_samples rows; small files are read into memory."""
    if source in BUILTIN_DATASETS:
        labeled = BUILTIN_DATASETS[source].has_labels
        # A built-in's arrays carry the mnist-5k layout's names, so one config serves both (examples/self-taught).
        if data.features not in (None, BUILTIN_FEATURES) or data.labels not in (None, *[BUILTIN_LABELS] * labeled):
            names = f"{BUILTIN_FEATURES!r}" + (f" and {BUILTIN_LABELS!r}" if labeled else "")
            raise InputError(f"{field_name}={source!r} is a built-in data set: data.features and data.labels apply "
                             f"to files (a built-in's arrays are {names}, as in an .npz); remove them or use those")
        X, y = load_builtin(source, seed)
        names = [f"pixel_{i // 8}_{i % 8}" for i in range(X.shape[1])]
    else:
        path = source_path(source, field_name)
        assert path is not None
        X, y, names = read(path, data.features, data.labels)
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
           ) -> tuple[np.ndarray | slice, np.ndarray | slice]:
    """(kept rows, split-off rows) of X: index arrays of a seeded, stratified split, or for a memmap (too large to
    shuffle in memory) the slices of its last rows (taking them gives views)."""
    n_keep, n_out = _split_sizes(where, X.shape[0], fraction, name)
    if isinstance(X, np.memmap):
        return slice(0, n_keep), slice(n_keep, None)
    strata = _stratify(y, n_keep, n_out)
    return shuffle_split(X.shape[0], n_out, seed) if strata is None else stratified_split(strata, n_out, seed)


def _take(X: np.ndarray, y: Labels, rows: np.ndarray | slice) -> tuple[np.ndarray, Labels]:
    return X[rows], None if y is None else y[rows]


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


def load_data(data: DataConfig, seed: int = 0, read: Reader = read_array_file) -> LoadedData:
    """Read (with ``read``: the preflight passes what it already read), validate, split and fit the scaling on the
    train split: every problem is an InputError up front.

    Validation and test rows are drawn (stratified) from the labeled rows only; the training split is the
    other labeled rows, then the source's unlabeled rows, then every ``data.unlabeled_source`` file's rows.
    """
    X, y, names = _read_source(data, data.source, "data.source", seed, read)
    lo, hi = column_range(X)
    if np.all(lo == hi):
        raise InputError(f"{data.source}: every feature is constant ({X.shape[1]} columns, one value each); "
                         "there is nothing to learn: check the file and data.features")
    y = drop_classes(data, y)
    pool = read_unlabeled(data, lambda section, source, field_name: _read_source(section, source, field_name, seed,
                                                                                 read), names)
    unlabeled: list[np.ndarray] = []
    if y is not None:
        labeled = check_labeled(data.source, y)
        if not labeled.all():
            unlabeled, (X, y) = [X[~labeled]], _take(X, y, labeled)
    if data.test_source is not None:
        X_test, y_test = _read_test_source(data, X, y, seed, read)
    else:
        keep, out = _split(data.source, X, y, data.test_fraction, "test_fraction", seed)
        (X_test, y_test), (X, y) = _take(X, y, out), _take(X, y, keep)
    # Validation comes out of the training part: nothing that chooses ever sees the test rows.
    keep, val = _split(data.source, X, y, data.validation_fraction, "validation_fraction", seed)
    (X_train, y_train), (X_val, y_val) = _take(X, y, keep), _take(X, y, val)
    dev_positions = None if isinstance(keep, slice) else np.concatenate([keep, val])
    extra = sum(part.shape[0] for part in (*unlabeled, *pool))
    X_train = stack_rows([X_train, *unlabeled, *pool], LARGE_FILE_BYTES)
    if y_train is not None and extra:
        y_train = np.concatenate([y_train, unlabeled_like(y_train, extra)])
    _check_classes(data, y_train, y_val, y_test)
    scaling = fit_scaling(X_train, data.scale)
    _check_scaled_range(data, scaling, [X_train, X_val, X_test], names)
    features = fingerprint(X_train, X_val, X_test)
    return LoadedData(
        X_train=X_train,
        y_train=y_train,
        X_val=X_val,
        y_val=y_val,
        X_test=X_test,
        y_test=y_test,
        feature_names=names,
        source=data.source,
        fingerprint=labels_fingerprint(features, y_train, y_val, y_test),
        scaling=scaling,
        features_fingerprint=features,
        dev_positions=dev_positions,
        n_pool=sum(part.shape[0] for part in pool),
        pretrain_rows=_pretrain_rows(data, y_train, int(X_train.shape[0])),
    )


def _pretrain_rows(data: DataConfig, y_train: np.ndarray | None, n_train: int) -> np.ndarray | None:
    """The training rows the layers fit on: None for all of them, else the unlabeled ones (data.pretrain_on)."""
    if data.pretrain_on == "all":
        return None
    rows = np.arange(n_train) if y_train is None else np.flatnonzero(~labeled_mask(y_train))
    if rows.size == 0:
        raise InputError(f"data.pretrain_on=unlabeled: {data.source} has no unlabeled training rows; mark some "
                         "(-1 labels, data.unlabeled_classes or data.unlabeled_source) or set pretrain_on: all")
    return rows.astype(np.int64)


def _read_test_source(data: DataConfig, X: np.ndarray, y: Labels, seed: int, read: Reader = read_array_file
                      ) -> tuple[np.ndarray, Labels]:
    assert data.test_source is not None
    X_test, y_test, _ = _read_source(data, data.test_source, "data.test_source", seed, read)
    if X_test.shape[1] != X.shape[1]:
        raise InputError(f"data.test_source={data.test_source!r} has {X_test.shape[1]} features but "
                         f"data.source={data.source!r} has {X.shape[1]}; they need the same columns")
    if (y is None) != (y_test is None):
        raise InputError(f"data.source and data.test_source disagree about labels ({data.source!r}: "
                         f"{'yes' if y is not None else 'no'}); give both files the labels, or neither")
    if X_test.shape[0] < 2:
        raise InputError(f"{data.test_source}: {X_test.shape[0]} sample(s); need at least 2 for testing")
    if y_test is not None and not labeled_mask(y_test).all():
        raise InputError(f"{data.test_source}: {int((~labeled_mask(y_test)).sum())} test rows have no label; a "
                         "test file needs every label (put unlabeled rows in data.unlabeled_source)")
    return X_test, y_test


def _check_classes(data: DataConfig, y_train: Labels, y_val: Labels, y_test: Labels) -> None:
    """InputError naming a class that validation or test holds but no labeled training row has."""
    if y_train is None:
        return
    seen = set(np.unique(y_train[labeled_mask(y_train)]).tolist())
    for split, y in (("test", y_test), ("validation", y_val)):
        missing = sorted(set(np.unique(np.asarray(y)).tolist()) - seen, key=str)
        if missing:
            where = data.test_source if split == "test" and data.test_source else data.source
            raise InputError(f"{where}: class {missing[0]!r} has labeled rows in the {split} split but none in "
                             "training, so nothing could learn it; label more rows of that class (3 or more), "
                             "or drop its rows")


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
