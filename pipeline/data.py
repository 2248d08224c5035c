"""User data and built-ins: read, validate (one InputError per problem), split train/test, fit the scaling."""

from __future__ import annotations

import hashlib
import math
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.model_selection import train_test_split

from pipeline.datasets import BUILTIN_DATASETS, load_builtin
from pipeline.errors import InputError
from sae.batches import release_pages, row_chunks
from sae.scaling import ScaleKind, Scaling

if TYPE_CHECKING:
    from pipeline.config import DataConfig

SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
LARGE_FILE_BYTES = 256 * 2**20  # a .npy file above this stays memory-mapped and is split contiguously
CHUNK_ROWS = 65_536
NPZ_FEATURE_KEYS = ("X", "x", "data")
Labels = np.ndarray | None


@dataclass
class LoadedData:
    """Raw (unscaled) train/test splits, the scaling fitted on the train split, and their provenance.

    X_train/X_test are in-memory float32 arrays, except for a .npy file over ``LARGE_FILE_BYTES`` (and no
    max_samples): then they are row slices of the memory-mapped file in its own dtype, the test split being
    the last ``test_fraction`` of the rows. Layers train on ``scaled_train()``/``scaled_test()``; the
    StackedEncoder applies ``scaling`` itself, so it is fed raw features.
    """

    X_train: np.ndarray  # (n_train, d)
    y_train: Labels  # (n_train,) int64 class ids or str class names
    X_test: np.ndarray  # (n_test, d)
    y_test: Labels
    feature_names: list[str]
    source: str  # built-in name or the path as given
    fingerprint: str  # sha256 of both splits' features and labels
    scaling: Scaling
    _scaled: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def scaled_train(self) -> np.ndarray:
        """(n_train, d) float32 scaled train features, computed once (a temporary memmap for memmapped data)."""
        return self._scaled_split("train", self.X_train)

    def scaled_test(self) -> np.ndarray:
        """(n_test, d) float32 scaled test features, computed once."""
        return self._scaled_split("test", self.X_test)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_scaled": {}}  # scaled copies (and their temporary files) are recomputed

    def _scaled_split(self, which: str, X: np.ndarray) -> np.ndarray:
        if which not in self._scaled:
            if isinstance(X, np.memmap) and "tmp" not in self._scaled:
                self._scaled["tmp"] = tempfile.TemporaryDirectory(prefix="sae-scaled-")  # removed with self
            out_dir = Path(self._scaled["tmp"].name) if isinstance(X, np.memmap) else None
            self._scaled[which] = transform_in_chunks(self.scaling, X, out_dir and out_dir / f"{which}.npy")
        return self._scaled[which]


def transform_in_chunks(scaling: Scaling, X: np.ndarray, out: Path | None = None) -> np.ndarray:
    """scaling.transform over row chunks, into memory or (``out``) a new .npy memmap."""
    if out is None:
        return scaling.transform(X)
    if scaling.kind == "none" and X.dtype == np.float32:
        return X
    result = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=X.shape)
    for start, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        result[start : start + chunk.shape[0]] = scaling.transform(chunk)
        release_pages(result, start, start + chunk.shape[0])  # written pages stay in the file and page cache
    result.flush()
    return result


def column_range(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (min, max) in float64, over row chunks."""
    lo, hi = np.full(X.shape[1], np.inf), np.full(X.shape[1], -np.inf)
    for _, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        lo, hi = np.minimum(lo, chunk.min(axis=0)), np.maximum(hi, chunk.max(axis=0))
    return lo, hi


def column_mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std in float64, merging row chunks (Chan et al.)."""
    n, mean, m2 = 0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for _, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        c = chunk.astype(np.float64)
        k, c_mean = c.shape[0], c.mean(axis=0)
        delta = c_mean - mean
        m2 += ((c - c_mean) ** 2).sum(axis=0) + delta**2 * n * k / (n + k)
        mean, n = mean + delta * k / (n + k), n + k
    return mean, np.sqrt(m2 / max(n, 1))


def fit_scaling(X_train: np.ndarray, kind: ScaleKind) -> Scaling:
    """The Scaling of ``kind`` fitted on (n, d) training features; constant features get factor 0."""
    match kind:
        case "none":
            return Scaling.identity(X_train.shape[1])
        case "unit":
            lo, hi = column_range(X_train)
            span = hi - lo
            factor = np.divide(0.8, span, out=np.zeros_like(span), where=span > 0)
            return Scaling("unit", lo.astype(np.float32), factor.astype(np.float32), 0.1, True)
        case "standard":
            mean, std = column_mean_std(X_train)
            factor = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
            return Scaling("standard", mean.astype(np.float32), factor.astype(np.float32), 0.0, False)
        case _:
            raise InputError(f"data.scale={kind!r}: unknown scaling; choose unit, standard or none")


def read_array_file(
    path: str | Path, features: str | list[str] | None = None, labels: str | None = None
) -> tuple[np.ndarray, Labels, list[str]]:
    """(X (n, d), labels or None, feature names) from .npy (memory-mapped), .npz, .csv or .parquet, validated."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if features is not None or labels is not None:
            raise InputError(f"{path}: a .npy file holds one array, so features/labels do not apply; "
                             "remove them, or save an .npz with a labels key")
        try:
            X = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as error:
            raise InputError(f"{path}: not a readable numeric .npy file ({error}); save it with np.save") from None
        y, names = None, None
    elif suffix == ".npz":
        X, y = _read_npz(path, features, labels)
        names = None
    elif suffix in (".csv", ".parquet"):
        X, y, names = _read_table(path, features, labels)
    else:
        raise InputError(f"{path}: unsupported file type {suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    _check_array(path, X)
    names = names or [f"x{i}" for i in range(X.shape[1])]
    if y is not None:
        y = _clean_labels(path, y, X.shape[0], labels or "labels")
    if not isinstance(X, np.memmap):
        X = np.asarray(X, dtype=np.float32)
    _check_finite(path, X, names)
    return X, y, names


def _read_npz(path: Path, features: Any, labels: str | None) -> tuple[np.ndarray, Labels]:
    try:
        archive = np.load(path)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: not a readable .npz archive ({error}); save it with np.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: holds a single array, not an .npz archive; rename it to .npy")
    with archive:
        keys = list(archive.files)
        for role, key in (("labels", labels), ("features", features)):
            if key is not None and (not isinstance(key, str) or key not in keys):
                raise InputError(f"{path}: {role} key {key!r} not found; the archive's keys are: {', '.join(keys)}")
        if features is None:
            rest = [k for k in keys if k != labels]
            candidates = rest if len(rest) == 1 else [k for k in NPZ_FEATURE_KEYS if k in rest]
            if not candidates:
                raise InputError(f"{path}: cannot tell which array holds the features (keys: {', '.join(keys)}); "
                                 "set data.features to one of them")
            features = candidates[0]
        try:
            return archive[features], (archive[labels] if labels is not None else None)
        except ValueError as error:
            raise InputError(f"{path}: cannot read key {features!r} ({error}); store numeric arrays") from None


def _read_table(path: Path, features: Any, labels: str | None) -> tuple[np.ndarray, Labels, list[str]]:
    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path}: cannot be read as {path.suffix.lower()[1:]} ({error}); check the file") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    wanted = [features] if isinstance(features, str) else features
    missing = [c for c in [labels, *(wanted or [])] if c is not None and c not in columns]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(map(repr, missing))} not found; "
                         f"the columns are: {', '.join(columns)}")
    names = list(wanted) if wanted else [c for c in columns if c != labels]
    text = [c for c in names if not pd.api.types.is_numeric_dtype(frame[c])]
    if text:
        raise InputError(f"{path}: non-numeric feature column(s) {', '.join(map(repr, text))}; encode them as "
                         f"numbers or leave them out with data.features{' (or make one data.labels)' if not labels else ''}")
    X = frame[names].to_numpy(dtype=np.float64) if names else np.empty((len(frame), 0))
    return X, (frame[labels].to_numpy() if labels is not None else None), names


def _check_array(path: Path, X: np.ndarray) -> None:
    if X.dtype.kind not in "biuf":
        raise InputError(f"{path}: features have dtype {X.dtype}, which is not numeric; store numbers, "
                         "e.g. X.astype(np.float32)")
    if X.ndim != 2:
        fix = "X.reshape(-1, 1) for one feature" if X.ndim < 2 else "X.reshape(len(X), -1)"
        raise InputError(f"{path}: features have shape {X.shape}; need a 2-D array (samples, features): use {fix}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise InputError(f"{path}: features have shape {X.shape}; need at least one row and one feature column")


def _clean_labels(path: Path, y: np.ndarray, n: int, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{path}: labels {name!r} have shape {y.shape} but the features have {n} rows; "
                         f"need one label per row ({n},)")
    missing = int(pd.isna(y).sum())
    if missing:
        raise InputError(f"{path}: labels {name!r} have {missing} missing values; fill or drop those rows")
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.mod(y, 1) == 0):
            raise InputError(f"{path}: labels {name!r} hold non-integer numbers; labels must be class ids or names")
        return y.astype(np.int64)
    return y.astype(str)


def _check_finite(path: Path, X: np.ndarray, names: list[str], show: int = 5) -> None:
    """One chunked pass; names the count and the first few (row, column) positions of NaN/inf."""
    if X.dtype.kind != "f":
        return
    count, where = 0, []
    for start, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        bad = ~np.isfinite(chunk)
        if bad.any():
            count += int(bad.sum())
            where += [(start + r, names[c]) for r, c in np.argwhere(bad)[: show - len(where)]]
    if count:
        first = ", ".join(f"(row {r}, column {c!r})" for r, c in where)
        raise InputError(f"{path}: {count} NaN or infinite feature values, first at {first}; "
                         "drop or impute them before training")


def _read_source(data: DataConfig, source: str, field_name: str, seed: int) -> tuple[np.ndarray, Labels, list[str]]:
    """A built-in or a file, capped at data.max_samples rows; small files are read into memory."""
    if source in BUILTIN_DATASETS:
        if data.features is not None or data.labels is not None:
            raise InputError(f"{field_name}={source!r} is a built-in data set: data.features and data.labels "
                             "apply to files only; remove them")
        X, y = load_builtin(source, seed)
        names = [f"pixel_{i // 8}_{i % 8}" for i in range(X.shape[1])]
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise InputError(f"{field_name}={source!r}: no such file ({path.resolve()}); give a "
                             f"{'/'.join(SUPPORTED_SUFFIXES)} file or a built-in data set: {', '.join(BUILTIN_DATASETS)}")
        X, y, names = read_array_file(path, data.features, data.labels)
        if isinstance(X, np.memmap) and path.stat().st_size <= LARGE_FILE_BYTES:
            X = np.asarray(X, dtype=np.float32)  # small enough to read; a cap below reads only the kept rows
    if data.max_samples is not None and X.shape[0] > data.max_samples:
        keep = np.sort(np.random.default_rng(seed).permutation(X.shape[0])[: data.max_samples])
        X, y = np.asarray(X[keep], dtype=np.float32), (None if y is None else y[keep])
    return X, y, names


def _split_sizes(where: str, n: int, fraction: float) -> tuple[int, int]:
    n_test = math.ceil(fraction * n)
    if n - n_test < 2 or n_test < 2:
        raise InputError(f"{where}: {n} samples are too few to split with test_fraction={fraction} "
                         f"({n - n_test} train, {n_test} test); need at least 2 on each side: add rows "
                         "or change data.test_fraction")
    return n - n_test, n_test


def _stratify(y: Labels, n_train: int, n_test: int) -> Labels:
    """The labels when a stratified split is possible (every class twice, every class fits each side)."""
    if y is None:
        return None
    counts = np.unique(y, return_counts=True)[1]
    return y if counts.min() >= 2 and min(n_train, n_test) >= len(counts) else None


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
        for where, rows in ((data.source, X.shape[0]), (data.test_source, X_test.shape[0])):
            if rows < 2:
                raise InputError(f"{where}: {rows} sample(s); need at least 2 for training and for testing")
        X_train, y_train = X, y
    elif isinstance(X, np.memmap):
        # Too large to shuffle in memory: the last test_fraction of the rows is the test split (both views).
        n_train, _ = _split_sizes(data.source, X.shape[0], data.test_fraction)
        X_train, X_test, y_train, y_test = X[:n_train], X[n_train:], None, None
    else:
        n_train, n_test = _split_sizes(data.source, X.shape[0], data.test_fraction)
        parts = train_test_split(
            *(X,) if y is None else (X, y),
            test_size=n_test, random_state=seed, stratify=_stratify(y, n_train, n_test),
        )
        X_train, X_test = parts[:2]
        y_train, y_test = (parts[2], parts[3]) if y is not None else (None, None)
    return LoadedData(
        X_train=X_train,
        y_train=y_train,
        X_test=X_test,
        y_test=y_test,
        feature_names=names,
        source=data.source,
        fingerprint=fingerprint(X_train, y_train, X_test, y_test),
        scaling=fit_scaling(X_train, data.scale),
    )
