"""Disk-backed scratch arrays for out-of-core data: memory-mapped temporary files that never have a name."""

from __future__ import annotations

import errno
import os
import tempfile
from typing import IO

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
        reserve(file, max(size, 1), tempfile.gettempdir())
        return np.memmap(file, dtype=dtype, mode="r+", shape=shape)


def reserve(file: IO[bytes] | str | os.PathLike, nbytes: int, where: str | os.PathLike | None = None) -> None:
    """Allocate ``nbytes`` of disk for a file about to be memory-mapped and written: a mapped write into a hole
    of a full disk kills the process with SIGBUS, whereas this raises OSError (ENOSPC) naming the folder."""
    descriptor = file.fileno() if hasattr(file, "fileno") else os.open(file, os.O_RDWR)
    try:
        os.posix_fallocate(descriptor, 0, nbytes)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return  # a file system that cannot reserve space: written as before
        folder = where or os.path.dirname(os.path.abspath(os.fspath(file)))
        raise OSError(error.errno, f"cannot reserve {nbytes:,} bytes in {folder} ({error.strerror}); free space "
                      "there (or point $TMPDIR / cache_dir elsewhere)") from None
    finally:
        if not hasattr(file, "fileno"):
            os.close(descriptor)
