"""Disk-backed scratch arrays for out-of-core data: memory-mapped temporary files that never have a name."""

from __future__ import annotations

import tempfile

import numpy as np


def scratch_array(shape: tuple[int, ...], dtype: type = np.float32) -> np.memmap:
    """A writable zero-filled memmap on an unnamed temporary file (in ``tempfile.gettempdir()``, i.e. $TMPDIR).

    The file is unlinked from the start, so nothing is left behind, even when the process is killed; its
    disk space is freed when the last view of the array is garbage-collected. No descriptor stays open
    beyond the one the mapping holds.
    """
    with tempfile.TemporaryFile(prefix="sae-scratch-") as file:
        size = int(np.prod(shape)) * np.dtype(dtype).itemsize
        file.truncate(max(size, 1))  # mmap cannot map an empty file
        return np.memmap(file, dtype=dtype, mode="r+", shape=shape)
