"""The names inside a data file (npz keys, csv/parquet columns), read without loading it: the common mistakes
(a wrong data.features or data.labels) are answered before pandas, scikit-learn or torch are imported."""

from __future__ import annotations

import csv
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.errors import InputError

NPZ_FEATURE_KEYS = ("X", "x", "data")  # tried in order when data.features is not set and the archive has several


def check_npz_keys(path: Path, keys: Sequence[str], features: Any, labels: str | None) -> None:
    """InputError naming the archive's keys when ``features`` or ``labels`` is not one of them."""
    for role, key in (("labels", labels), ("features", features)):
        if key is not None and (not isinstance(key, str) or key not in keys):
            raise InputError(f"{path}: {role} key {key!r} not found; the archive's keys are: {', '.join(keys)}")


def check_columns(path: Path, columns: Sequence[str], features: Any, labels: str | None) -> None:
    """InputError naming the table's columns when ``labels`` or a ``features`` column is not among them."""
    wanted = [features] if isinstance(features, str) else list(features or [])
    missing = [c for c in [labels, *wanted] if c is not None and c not in columns]
    if missing:
        raise InputError(f"{path}: column(s) {', '.join(map(repr, missing))} not found; "
                         f"the columns are: {', '.join(columns)}")


def check_names(path: Path, features: str | list[str] | None, labels: str | None) -> None:
    """Raise the reader's InputError when ``features`` or ``labels`` name something ``path`` lacks.

    Reads the npz directory or the first csv line (parquet: its schema); files it cannot read this way are
    left to the full reader, which says what is wrong with them.
    """
    suffix = path.suffix.lower()
    if suffix == ".npz":
        names = npz_keys(path)
        check = check_npz_keys
    elif suffix in (".csv", ".parquet"):
        names = _csv_columns(path) if suffix == ".csv" else _parquet_columns(path)
        check = check_columns
    else:
        return
    if names is not None:
        check(path, names, features, labels)


def table_columns(path: Path) -> list[str] | None:
    """The column names of a csv (its first line) or parquet file (its schema); None when unreadable so."""
    return _csv_columns(path) if path.suffix.lower() == ".csv" else _parquet_columns(path)


def npz_keys(path: Path) -> list[str] | None:
    """The member names of an .npz archive (without .npy); None when it is not a readable zip."""
    try:
        with zipfile.ZipFile(path) as archive:
            return [name.removesuffix(".npy") for name in archive.namelist()]
    except (zipfile.BadZipFile, OSError):
        return None


def _csv_columns(path: Path) -> list[str] | None:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), None)
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def _parquet_columns(path: Path) -> list[str] | None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return [str(name) for name in pq.read_schema(path).names]
    except (OSError, pa.ArrowException):
        return None
