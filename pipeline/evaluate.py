"""How good are the features: linear probes on held-out data, reconstruction and sparsity per layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from pipeline.probes import fit_probe, probe_device
from sae import SparseAutoencoder
from sae.batches import row_chunks
from sae.metrics import EpochStats

if TYPE_CHECKING:
    from pipeline.data.loading import LoadedData, Splits
    from pipeline.results import LayerResult

PROBE_MAX_TRAIN = 20_000  # probes fit on at most this many (seeded) training rows to bound their cost


def probe_accuracies(
    data: LoadedData, layers: Sequence[LayerResult], *, seed: int = 0, accelerator: str = "cpu"
) -> dict[str, float]:
    """Probe test accuracy on the scaled inputs (``raw``) and on each layer's codes (``layer_1``, ...).

    Each probe is ``pipeline.probes.fit_probe`` (C chosen on the validation split) on the device of the
    Trainer ``accelerator`` setting; the codes are the layers' own (``LayerResult.codes``), never recomputed.
    """
    assert data.y_train is not None and data.y_val is not None and data.y_test is not None
    device = probe_device(accelerator)
    y_train = np.asarray(data.y_train)
    n = y_train.shape[0]
    rows = np.arange(n)
    if n > PROBE_MAX_TRAIN:
        rows = np.sort(np.random.default_rng(seed).choice(n, PROBE_MAX_TRAIN, replace=False))

    def probe(splits: Splits) -> float:
        return fit_probe(np.asarray(splits.train[rows], np.float32), y_train[rows], np.asarray(splits.val),
                         np.asarray(data.y_val), np.asarray(splits.test), np.asarray(data.y_test),
                         device=device).test_accuracy

    out = {"raw": probe(data.scaled())}
    for layer in layers:
        out[f"layer_{layer.index + 1}"] = probe(layer.codes)
    return out


def layer_test_metrics(
    model: SparseAutoencoder, inputs: np.ndarray, codes: np.ndarray | None = None, chunk_rows: int = 8192
) -> dict[str, float]:
    """A trained layer's objective terms, mse, fvu, rho_hat, L0 and dead fraction on held-out inputs.

    ``codes`` are the layer's codes of ``inputs`` when already computed: only the decoder then runs.
    """
    stats = EpochStats(model.config)
    model.eval()
    code_chunks = None if codes is None else row_chunks(codes, chunk_rows)
    with torch.no_grad():
        for _, chunk in row_chunks(inputs, chunk_rows):
            x = torch.from_numpy(chunk)
            h = None if code_chunks is None else torch.from_numpy(next(code_chunks)[1])
            stats.update(model.objective(x, corrupt=False, codes=h), x)
    return stats.compute()
