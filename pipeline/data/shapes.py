"""How big a data source says it is, read from its header alone (a few MB on disk can declare gigabytes).

``declared`` answers rows, columns and the bytes reading the features takes, for every source the readers
accept: a built-in's known shape, an .npy or .npz member's header, a parquet file's metadata, a csv file's
header line and its size (rows estimated from the first lines). Nothing here reads the data itself.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, NamedTuple

from pipeline.data.builtin import BUILTIN_DATASETS
from pipeline.data.headers import NPZ_FEATURE_KEYS

LARGE_FILE_BYTES = 256 * 2**20  # a .npy file above this stays memory-mapped and is split contiguously
MEMMAP_BYTES = 256 * 2**20  # codes between layers above this go to disk rather than RAM
FLOAT32 = 4
SAMPLE_BYTES = 1 << 16  # csv: rows are estimated from the line lengths in the file's first 64 KB


class Declared(NamedTuple):
    """A source's declared shape: rows and feature columns, bytes held while it is read, memory-mapped or not."""

    rows: int
    columns: int
    read_bytes: int  # the array (or table) as the reader holds it before the float32 copy
    mapped: bool  # a large .npy stays memory-mapped: its pages are the file's, not the process's memory


def declared(source: str, features: Any = None, labels: str | None = None,
             mapped_above: int | None = None) -> Declared | None:
    """The declared shape of ``source`` (a built-in name or a path), or None when its header cannot say."""
    if source in BUILTIN_DATASETS:
        d = BUILTIN_DATASETS[source]
        return Declared(d.n_samples, d.n_features, d.n_samples * d.n_features * FLOAT32, False)
    path = Path(source).expanduser()
    try:
        match path.suffix.lower():
            case ".npy":
                with path.open("rb") as handle:
                    shape, itemsize = _npy_header(handle)
                mapped = mapped_above is not None and path.stat().st_size > mapped_above
                return _shape(shape, itemsize, mapped)
            case ".npz":
                return _npz(path, features, labels)
            case ".parquet":
                import pyarrow.parquet as pq

                meta = pq.read_metadata(path)
                columns = len(features) if isinstance(features, list) else meta.num_columns - (labels is not None)
                return Declared(meta.num_rows, columns, meta.num_rows * meta.num_columns * 8, False)
            case ".csv":
                return _csv(path, features, labels)
    except (OSError, ValueError, zipfile.BadZipFile, ImportError):
        return None  # the reader names what is wrong with the file
    return None


def _npy_header(handle: Any) -> tuple[tuple[int, ...], int]:
    import numpy as np

    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle, max_header_size=10_000)
    return tuple(int(n) for n in shape), int(dtype.itemsize)


def _shape(shape: tuple[int, ...], itemsize: int, mapped: bool) -> Declared | None:
    if len(shape) != 2:
        return None  # the reader explains the shape it needs
    rows, columns = shape
    return Declared(rows, columns, rows * columns * itemsize, mapped)


def _npz(path: Path, features: Any, labels: str | None) -> Declared | None:
    with zipfile.ZipFile(path) as archive:
        keys = [name.removesuffix(".npy") for name in archive.namelist()]
        if not isinstance(features, str):
            rest = [k for k in keys if k != labels]
            candidates = rest if len(rest) == 1 else [k for k in NPZ_FEATURE_KEYS if k in rest]
            if not candidates:
                return None
            features = candidates[0]
        if features not in keys:
            return None
        with archive.open(f"{features}.npy") as handle:
            shape, itemsize = _npy_header(handle)
    return _shape(shape, itemsize, False)


def _csv(path: Path, features: Any, labels: str | None) -> Declared | None:
    size = path.stat().st_size
    with path.open("rb") as handle:
        sample = handle.read(SAMPLE_BYTES)
    lines = sample.splitlines()
    if len(lines) < 2:
        return None
    header = lines[0].decode("utf-8", errors="replace").split(",")
    body = lines[1:-1] if len(sample) == SAMPLE_BYTES and len(lines) > 2 else lines[1:]
    per_row = max(sum(len(line) + 1 for line in body) / len(body), 1.0)
    rows = int((size - len(lines[0]) - 1) / per_row)
    columns = len(features) if isinstance(features, list) else len(header) - (labels is not None)
    return Declared(rows, columns, rows * len(header) * 8 * 2, False)  # pandas' float64 frame and its copy
