"""Where a configured data source points, checked without reading it (no pandas, sklearn or torch needed)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.data.builtin import BUILTIN_DATASETS
from pipeline.data.links import check_no_loop
from pipeline.errors import InputError

if TYPE_CHECKING:
    from pipeline.config import DataConfig

SUPPORTED_SUFFIXES = (".npy", ".npz", ".csv", ".parquet")
OUTPUT_SUFFIXES = (".npy", ".parquet")  # what `encode` writes


def source_path(source: str, field_name: str) -> Path | None:
    """The file ``source`` names (None for a built-in); InputError when it is missing, a folder or unsupported."""
    if source in BUILTIN_DATASETS:
        return None
    path = Path(source).expanduser()
    check_no_loop(path, f"{field_name}=")
    if path.is_dir():
        raise InputError(f"{field_name}={source!r} is a directory ({path.resolve()}); give one "
                         f"{'/'.join(SUPPORTED_SUFFIXES)} file inside it")
    if not path.is_file():
        raise InputError(f"{field_name}={source!r}: no such file ({path.resolve()}); give a "
                         f"{'/'.join(SUPPORTED_SUFFIXES)} file or a built-in data set: {', '.join(BUILTIN_DATASETS)}")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise InputError(f"{field_name}={source!r}: unsupported file type {path.suffix or '(no extension)'!r}; "
                         f"use one of {', '.join(SUPPORTED_SUFFIXES)}")
    return path


def unlabeled_sources(data: DataConfig) -> list[tuple[str, str]]:
    """(field name, source) of every ``data.unlabeled_source`` file, in order."""
    pool = data.unlabeled_source
    if pool is None:
        return []
    if isinstance(pool, str):
        return [("data.unlabeled_source", pool)]
    return [(f"data.unlabeled_source.{i}", source) for i, source in enumerate(pool)]
