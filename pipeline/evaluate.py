"""How good are the features: linear probes on held-out data, reconstruction and sparsity per layer."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sae import SparseAutoencoder
from sae.batches import row_chunks
from sae.metrics import EpochStats

if TYPE_CHECKING:
    from pipeline.data.loading import LoadedData, Splits
    from pipeline.results import LayerResult

PROBE_CS = (0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths, chosen on the validation split
PROBE_MAX_ITER = 300
PROBE_MAX_TRAIN = 20_000  # probes fit on at most this many (seeded) training rows to bound their cost


def probe_accuracy(
    train: np.ndarray, y_train: np.ndarray, val: np.ndarray, y_val: np.ndarray, test: np.ndarray, y_test: np.ndarray,
    *, seed: int = 0,
) -> float:
    """Test accuracy of a logistic-regression probe on standardised features, fitted on ``train``.

    C is the one scoring best on the validation split: the test split never influences the probe.
    """
    scaler = StandardScaler().fit(train)
    train, val, test = scaler.transform(train), scaler.transform(val), scaler.transform(test)

    def fit(c: float) -> LogisticRegression:
        clf = LogisticRegression(C=c, max_iter=PROBE_MAX_ITER, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return clf.fit(train, y_train)

    # One BLAS/OpenMP thread: these small fits are latency-bound, and spinning thread pools made them up to
    # 50x slower here whenever the other core was busy.
    with threadpool_limits(limits=1):
        best = max((fit(c) for c in PROBE_CS), key=lambda clf: clf.score(val, y_val))
        return float(best.score(test, y_test))


def probe_accuracies(data: LoadedData, layers: Sequence[LayerResult], *, seed: int = 0) -> dict[str, float]:
    """Probe test accuracy on the scaled inputs (``raw``) and on each layer's codes (``layer_1``, ...)."""
    assert data.y_train is not None and data.y_val is not None and data.y_test is not None
    y_train = np.asarray(data.y_train)
    n = y_train.shape[0]
    rows = np.arange(n)
    if n > PROBE_MAX_TRAIN:
        rows = np.sort(np.random.default_rng(seed).choice(n, PROBE_MAX_TRAIN, replace=False))

    def probe(splits: Splits) -> float:
        return probe_accuracy(np.asarray(splits.train[rows], np.float32), y_train[rows], np.asarray(splits.val),
                              np.asarray(data.y_val), np.asarray(splits.test), np.asarray(data.y_test), seed=seed)

    out = {"raw": probe(data.scaled())}
    for layer in layers:
        out[f"layer_{layer.index + 1}"] = probe(layer.codes)
    return out


def layer_test_metrics(model: SparseAutoencoder, inputs: np.ndarray, chunk_rows: int = 8192) -> dict[str, float]:
    """A trained layer's objective terms, mse, fvu, rho_hat, L0 and dead fraction on held-out inputs."""
    stats = EpochStats(model.config)
    model.eval()
    with torch.no_grad():
        for _, chunk in row_chunks(inputs, chunk_rows):
            x = torch.from_numpy(chunk)
            stats.update(model.objective(x, corrupt=False), x)
    return stats.compute()
