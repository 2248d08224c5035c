"""Row chunks of (maybe memory-mapped) arrays with their pages released after use: numpy only, so that reading
and checking a data file does not pay for importing torch."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np


def row_chunks(
    X: np.ndarray, rows: int, dtype: np.dtype | type | None = np.float32
) -> Iterator[tuple[int, np.ndarray]]:
    """(start, chunk) over the rows of X, each chunk a writable copy (in ``dtype``; None keeps X's).

    A memory-mapped X has each chunk's pages released right after the copy, so one pass over a file larger
    than RAM keeps resident memory at one chunk.
    """
    for start in range(0, X.shape[0], rows):
        chunk = np.array(X[start : start + rows], dtype=dtype)
        release_pages(X, start, start + rows)
        yield start, chunk


def release_pages(array: np.ndarray, start_row: int, stop_row: int) -> None:
    """Drop rows [start_row, stop_row) of a memory-mapped array from this process's resident memory.

    Pages of a file mapping count in RSS once touched and stay until unmapped; ``MADV_DONTNEED`` unmaps them
    (the data stays in the file and the page cache, dirty pages included), so one pass over a file larger
    than RAM keeps RSS flat. A no-op for in-memory arrays and where madvise is unavailable.
    """
    mm = _backing_mmap(array)
    if mm is None or not hasattr(mm, "madvise") or array.ndim == 0 or not array.flags.c_contiguous:
        return
    stop_row = min(stop_row, array.shape[0])
    if stop_row <= start_row:
        return
    row_bytes = array.strides[0]
    base = np.frombuffer(mm, dtype=np.uint8).ctypes.data  # the mapping's first byte (page-aligned)
    first = array.ctypes.data - base + start_row * row_bytes
    last = array.ctypes.data - base + stop_row * row_bytes
    first -= first % mmap.PAGESIZE
    last = min(len(mm), last + (-last) % mmap.PAGESIZE)
    if last > first:
        mm.madvise(mmap.MADV_DONTNEED, first, last - first)


def _backing_mmap(array: np.ndarray) -> mmap.mmap | None:
    """The ``mmap`` under a np.memmap or a view of one (walking ``.base``), else None."""
    while array is not None:
        mm = getattr(array, "_mmap", None)
        if isinstance(mm, mmap.mmap):
            return mm
        if isinstance(array, mmap.mmap):
            return array
        array = getattr(array, "base", None)
    return None
