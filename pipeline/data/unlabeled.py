"""Rows without labels: the unlabeled pool (``data.unlabeled_source``), classes whose labels are dropped
(``data.unlabeled_classes``), and stacking them under the labeled training rows, out of core when large."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.data.builtin import BUILTIN_DATASETS
from pipeline.data.headers import npz_keys, table_columns
from pipeline.data.labels import labeled_mask, unlabeled_marker
from pipeline.data.paths import source_path, unlabeled_sources
from pipeline.data.readers import CHUNK_ROWS, Labels
from pipeline.data.scratch import scratch_array
from pipeline.errors import InputError
from sae.chunks import release_pages, row_chunks  # numpy only: the preflight reads these files

if TYPE_CHECKING:
    from pipeline.config import DataConfig

# (a data section, the source, the field naming it) -> (X, labels, feature names): loading's reader
Reader = Callable[["DataConfig", str, str], tuple[np.ndarray, Labels, list[str]]]
TABLES = (".csv", ".parquet")


def read_unlabeled(data: DataConfig, read: Reader, names: list[str]) -> list[np.ndarray]:
    """The rows of every unlabeled file (their labels, if any, ignored), checked to have the source's features.

    A csv/parquet file beside a csv/parquet source needs the source's feature columns by name (its labels
    column, if present, is ignored; any other column is an error); otherwise the widths must agree.
    """
    source_is_table = _suffix(data.source) in TABLES
    out = []
    for field_name, source in unlabeled_sources(data):
        where = f"{field_name}={source!r}"
        path = source_path(source, field_name)
        features, labels = None, None
        if path is not None and path.suffix.lower() in TABLES:
            columns = table_columns(path) or []
            labels = data.labels if data.labels in columns else None
            if source_is_table:
                other = [c for c in columns if c not in names and c != data.labels]
                if other:
                    raise InputError(f"{where}: column(s) {', '.join(map(repr, other[:5]))} are not features of "
                                     f"data.source; give it data.source's feature columns ({_few(names)})")
                features = list(names)
        elif path is not None and path.suffix.lower() == ".npz":
            features = data.features if isinstance(data.features, str) else None
            labels = data.labels if data.labels in (npz_keys(path) or []) else None  # an unlabeled archive may lack it
        X, _, _ = read(data.model_copy(update={"features": features, "labels": labels}), source, field_name)
        if X.shape[1] != len(names):
            raise InputError(f"{where}: {X.shape[1]} features but data.source={data.source!r} has {len(names)}; "
                             "unlabeled rows need the same features (columns) as the labeled ones")
        out.append(X)
    return out


def drop_classes(data: DataConfig, y: Labels) -> Labels:
    """``y`` with the labels of ``data.unlabeled_classes`` replaced by the unlabeled marker."""
    if not data.unlabeled_classes:
        return y
    if y is None:
        raise InputError(f"data.unlabeled_classes is set but {data.source} has no labels; set data.labels, or "
                         "remove data.unlabeled_classes")
    present = np.unique(y[labeled_mask(y)]).tolist()
    wanted = []
    for value in data.unlabeled_classes:
        matches = [c for c in present if str(c) == str(value)]
        if not matches:
            raise InputError(f"data.unlabeled_classes: class {value!r} is not among the labels of {data.source} "
                             f"({_few(present)}); list classes the data has")
        wanted += matches
    y = np.array(y, copy=True)
    y[np.isin(y, wanted)] = unlabeled_marker(y)
    return y


def stack_rows(parts: list[np.ndarray], large_bytes: int) -> np.ndarray:
    """The rows of ``parts`` one after another: as they are for one part, in memory (float32) when small,
    else copied chunk by chunk into an unnamed scratch memmap (a large unlabeled pool stays out of core)."""
    parts = [p for p in parts if p.shape[0]] or parts[:1]
    if len(parts) == 1:
        return parts[0]
    rows, d = sum(p.shape[0] for p in parts), parts[0].shape[1]
    if not any(isinstance(p, np.memmap) for p in parts) or rows * d * 4 <= large_bytes:
        return np.concatenate([np.asarray(p, np.float32) for p in parts])
    out, at = scratch_array((rows, d)), 0
    for part in parts:
        for start, chunk in row_chunks(part, CHUNK_ROWS):
            out[at + start : at + start + chunk.shape[0]] = chunk
            release_pages(out, at + start, at + start + chunk.shape[0])
        at += part.shape[0]
    out.flush()
    return out


def _suffix(source: str) -> str:
    return "" if source in BUILTIN_DATASETS else Path(source).suffix.lower()


def _few(values: list, show: int = 10) -> str:
    text = ", ".join(map(str, values[:show]))
    return text + (f", … ({len(values)} in all)" if len(values) > show else "")
