"""Encode arrays in bounded-memory chunks; large outputs go to memory-mapped .npy files."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sae.batches import release_pages, row_chunks

CHUNK_ROWS = 8192
MEMMAP_BYTES = 256 * 2**20  # outputs above this go to disk rather than RAM


def encode_in_chunks(
    encode: Callable[[torch.Tensor], torch.Tensor],
    X: np.ndarray,
    d_out: int,
    *,
    out_path: Path | None = None,
    chunk_rows: int = CHUNK_ROWS,
    scratch_dir: Path | None = None,
) -> np.ndarray:
    """(n, d_in) -> (n, d_out) float32 through ``encode``, CHUNK_ROWS rows at a time.

    Writes a memory-mapped ``.npy`` at ``out_path``, or in ``scratch_dir`` (a temporary file) when the
    output exceeds MEMMAP_BYTES; otherwise returns an in-memory array.
    """
    n = int(X.shape[0])
    if out_path is None and n * d_out * 4 > MEMMAP_BYTES:
        scratch = Path(scratch_dir or tempfile.gettempdir())
        scratch.mkdir(parents=True, exist_ok=True)
        out_path = Path(tempfile.mkstemp(suffix=".npy", dir=scratch)[1])
    if out_path is not None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out: np.ndarray = np.lib.format.open_memmap(out_path, mode="w+", dtype=np.float32, shape=(n, d_out))
    else:
        out = np.empty((n, d_out), dtype=np.float32)
    with torch.no_grad():
        for start, chunk in row_chunks(X, chunk_rows):
            out[start : start + chunk_rows] = encode(torch.from_numpy(chunk)).numpy()
            release_pages(out, start, start + chunk_rows)
    if isinstance(out, np.memmap):
        out.flush()
        return np.load(out_path, mmap_mode="r")
    return out
