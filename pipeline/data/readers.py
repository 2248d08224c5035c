"""Reading user files (.npy, .npz, .csv, .parquet) into a validated feature array: one InputError per problem."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.headers import NPZ_FEATURE_KEYS, check_columns, check_npz_keys
from pipeline.data.labels import UNLABELED, UNLABELED_NAME
from pipeline.data.paths import SUPPORTED_SUFFIXES
from pipeline.errors import InputError
from sae.chunks import row_chunks  # numpy only: reading a file imports no torch

CHUNK_ROWS = 65_536
Labels = np.ndarray | None


def read_array_file(
    path: str | Path, features: str | list[str] | None = None, labels: str | None = None
) -> tuple[np.ndarray, Labels, list[str]]:
    """(X (n, d), labels or None, feature names) from .npy (memory-mapped), .npz, .csv or .parquet, validated."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a directory; give one {'/'.join(SUPPORTED_SUFFIXES)} file")
    if not path.is_file():
        raise InputError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        if features is not None or labels is not None:
            raise InputError(f"{path}: a .npy file holds one array, so features/labels do not apply; "
                             "remove them, or save an .npz with a labels key")
        try:
            X = np.load(path, mmap_mode="r", allow_pickle=False)
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
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile) as error:
        raise InputError(f"{path}: not a readable .npz archive ({error}); save it with np.savez") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: holds a single array, not an .npz archive; rename it to .npy")
    with archive:
        keys = list(archive.files)
        check_npz_keys(path, keys, features, labels)
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
    import pandas as pd  # here: .npy and .npz files need neither pandas nor pyarrow
    import pyarrow as pa

    try:
        frame = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_parquet(path)
    except (ValueError, OSError, pa.ArrowException, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise InputError(f"{path}: cannot be read as {path.suffix.lower()[1:]} ({error}); check the file") from None
    columns = [str(c) for c in frame.columns]
    frame.columns = columns
    check_columns(path, columns, features, labels)
    wanted = [features] if isinstance(features, str) else features
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
    """int64 class ids or str class names; a missing label (NaN, an empty cell, -1) becomes the unlabeled marker."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"{path}: labels {name!r} have shape {y.shape} but the features have {n} rows; "
                         f"need one label per row ({n},)")
    missing = _missing(y)
    if y.dtype.kind == "O" and all(isinstance(v, int | float | np.number) and not isinstance(v, bool)
                                   for v in y[~missing]):
        y = np.where(missing, np.nan, y).astype(np.float64)  # nullable integers (pandas Int64) and the like
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind == "f":
        if not np.all(np.mod(y[~missing], 1) == 0):
            raise InputError(f"{path}: labels {name!r} hold non-integer numbers; labels must be class ids or "
                             "names (NaN or -1 marks a row without a label)")
        return np.where(missing, UNLABELED, y).astype(np.int64)
    return np.where(missing, UNLABELED_NAME, y.astype(str))


def _missing(y: np.ndarray) -> np.ndarray:
    """(n,) bool: NaN among numbers; None, NaN and NaT among objects (pandas, imported only for those)."""
    if y.dtype.kind == "f":
        return np.isnan(y)
    if y.dtype.kind in "biu":
        return np.zeros(y.shape, dtype=bool)
    import pandas as pd

    return np.asarray(pd.isna(y), dtype=bool)


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
