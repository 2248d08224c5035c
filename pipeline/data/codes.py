"""Encode arrays in bounded-memory chunks; large outputs go to memory-mapped files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pipeline.data.scratch import reserve, scratch_array
from pipeline.data.shapes import MEMMAP_BYTES
from sae.batches import release_pages, row_chunks

CHUNK_ROWS = 8192


def encode_in_chunks(
    encode: Callable[[torch.Tensor], torch.Tensor],
    X: np.ndarray,
    d_out: int,
    *,
    out_path: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> np.ndarray:
    """(n, d_in) -> (n, d_out) float32 through ``encode``, CHUNK_ROWS rows at a time.

    Writes a memory-mapped ``.npy`` at ``out_path`` (returned read-only); without one, an output over
    MEMMAP_BYTES goes to an unnamed scratch file (``scratch_array``: nothing is left on disk), a smaller
    one to memory.
    """
    n = int(X.shape[0])
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out: np.ndarray = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(n, d_out))
        reserve(out_path, out_path.stat().st_size)  # a full disk raises ENOSPC here, not SIGBUS mid-write
    elif n * d_out * 4 > MEMMAP_BYTES:
        out = scratch_array((n, d_out))
    else:
        out = np.empty((n, d_out), dtype=np.float32)
    with torch.no_grad():
        for start, chunk in row_chunks(X, chunk_rows):
            out[start : start + chunk_rows] = encode(torch.from_numpy(chunk)).numpy()
            release_pages(out, start, start + chunk_rows)
    if out_path is not None:
        out.flush()
        del out  # unmapped before the read-only view of the same file is opened
        return np.load(out_path, mmap_mode="r", allow_pickle=False)
    return out
