"""How good are the features: linear probes on held-out data, reconstruction and sparsity per layer."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sae import SparseAutoencoder
from sae.batches import row_chunks
from sae.metrics import EpochStats

if TYPE_CHECKING:
    from pipeline.data import LoadedData
    from pipeline.stacking import LayerResult

PROBE_CS = (0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths, chosen on a validation split of train
PROBE_MAX_ITER = 300
PROBE_MAX_TRAIN = 20_000  # probes fit on at most this many (seeded) training rows to bound their cost


def probe_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, *, seed: int = 0
) -> float:
    """Test accuracy of a logistic-regression probe on standardised features.

    C is chosen on a stratified 20% validation split of the training rows, then refit on all of them:
    the test split never influences the probe.
    """
    scaler = StandardScaler().fit(train)
    train, test = scaler.transform(train), scaler.transform(test)
    fit_rows, val_rows = train_test_split(
        np.arange(len(y_train)), test_size=0.2, random_state=seed, stratify=_stratify(y_train)
    )

    def fit(rows: np.ndarray, c: float) -> LogisticRegression:
        clf = LogisticRegression(C=c, max_iter=PROBE_MAX_ITER, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return clf.fit(train[rows], y_train[rows])

    # One BLAS/OpenMP thread: these small fits are latency-bound, and spinning thread pools made them up to
    # 50x slower here whenever the other core was busy.
    with threadpool_limits(limits=1):
        best = max(PROBE_CS, key=lambda c: fit(fit_rows, c).score(train[val_rows], y_train[val_rows]))
        return float(fit(np.arange(len(y_train)), best).score(test, y_test))


def _stratify(y: np.ndarray) -> np.ndarray | None:
    _, counts = np.unique(y, return_counts=True)
    return y if counts.min() >= 2 else None


def probe_accuracies(data: LoadedData, layers: Sequence[LayerResult], *, seed: int = 0) -> dict[str, float]:
    """Probe accuracy on the scaled inputs (``raw``) and on each layer's codes (``layer_1``, ...)."""
    assert data.y_train is not None and data.y_test is not None
    y_train, y_test = np.asarray(data.y_train), np.asarray(data.y_test)
    n = y_train.shape[0]
    rows = np.arange(n)
    if n > PROBE_MAX_TRAIN:
        rows = np.sort(np.random.default_rng(seed).choice(n, PROBE_MAX_TRAIN, replace=False))

    def probe(train: np.ndarray, test: np.ndarray) -> float:
        return probe_accuracy(np.asarray(train[rows], np.float32), y_train[rows], np.asarray(test), y_test, seed=seed)

    out = {"raw": probe(data.scaled_train(), data.scaled_test())}
    for layer in layers:
        out[f"layer_{layer.index + 1}"] = probe(layer.train_codes, layer.test_codes)
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
