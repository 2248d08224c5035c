"""The input scaling fitted on the training split, applied in row chunks (memory-mapped data stays on disk)."""

from __future__ import annotations

import numpy as np

from pipeline.data.scratch import scratch_array
from pipeline.errors import InputError
from sae.batches import release_pages, row_chunks
from sae.scaling import ScaleKind, Scaling

CHUNK_ROWS = 65_536


def transform_in_chunks(scaling: Scaling, X: np.ndarray, *, on_disk: bool = False) -> np.ndarray:
    """scaling.transform over row chunks, into memory or (``on_disk``) an unnamed scratch memmap."""
    if not on_disk:
        return scaling.transform(X)
    if scaling.kind == "none" and X.dtype == np.float32:
        return X
    result = scratch_array(X.shape)
    for start, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        result[start : start + chunk.shape[0]] = scaling.transform(chunk)
        release_pages(result, start, start + chunk.shape[0])  # written pages stay in the file and page cache
    result.flush()
    return result


def column_range(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature (min, max) in float64, over row chunks."""
    lo, hi = np.full(X.shape[1], np.inf), np.full(X.shape[1], -np.inf)
    for _, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        lo, hi = np.minimum(lo, chunk.min(axis=0)), np.maximum(hi, chunk.max(axis=0))
    return lo, hi


def column_mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and population std in float64, merging row chunks (Chan et al.)."""
    n, mean, m2 = 0, np.zeros(X.shape[1]), np.zeros(X.shape[1])
    for _, chunk in row_chunks(X, CHUNK_ROWS, dtype=None):
        c = chunk.astype(np.float64)
        k, c_mean = c.shape[0], c.mean(axis=0)
        delta = c_mean - mean
        m2 += ((c - c_mean) ** 2).sum(axis=0) + delta**2 * n * k / (n + k)
        mean, n = mean + delta * k / (n + k), n + k
    return mean, np.sqrt(m2 / max(n, 1))


def fit_scaling(X_train: np.ndarray, kind: ScaleKind) -> Scaling:
    """The Scaling of ``kind`` fitted on (n, d) training features; constant features get factor 0."""
    match kind:
        case "none":
            return Scaling.identity(X_train.shape[1])
        case "unit":
            lo, hi = column_range(X_train)
            span = hi - lo
            factor = np.divide(0.8, span, out=np.zeros_like(span), where=span > 0)
            return Scaling("unit", lo.astype(np.float32), factor.astype(np.float32), 0.1, True)
        case "standard":
            mean, std = column_mean_std(X_train)
            factor = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
            return Scaling("standard", mean.astype(np.float32), factor.astype(np.float32), 0.0, False)
        case _:
            raise InputError(f"data.scale={kind!r}: unknown scaling; choose unit, standard or none")
