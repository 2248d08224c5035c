"""How good are the features: linear probes on held-out data, reconstruction and sparsity per layer."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from sae import SparseAutoencoder
from sae.metrics import EpochStats

if TYPE_CHECKING:
    from pipeline.data import LoadedData
    from pipeline.stacking import LayerResult

PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0)  # inverse regularisation strengths tried by 3-fold CV on train
PROBE_MAX_ITER = 1000
PROBE_MAX_TRAIN = 20_000  # probes fit on at most this many (seeded) training rows to bound their cost


def probe_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, *, seed: int = 0
) -> float:
    """Test accuracy of a logistic-regression probe on standardised features, its C chosen by CV on train."""
    scaler = StandardScaler().fit(train)
    clf = LogisticRegressionCV(Cs=list(PROBE_CS), cv=3, max_iter=PROBE_MAX_ITER, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(train), y_train)
    return float(clf.score(scaler.transform(test), y_test))


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
        for start in range(0, inputs.shape[0], chunk_rows):
            x = torch.from_numpy(np.ascontiguousarray(inputs[start : start + chunk_rows], dtype=np.float32))
            stats.update(model.objective(x, corrupt=False), x)
    return stats.compute()
