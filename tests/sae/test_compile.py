"""compile=True: the same losses as eager, compiled once per shape in a process, eager with one warning on failure."""

import warnings

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

import sae.module
from sae import SAEConfig, train_autoencoder

CONFIG = SAEConfig(d_in=12, d_hidden=6)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).uniform(0.1, 0.9, (96, 12)).astype(np.float32)


def _losses(data: np.ndarray, **kw: object) -> list[float]:
    model = train_autoencoder(data, CONFIG, epochs=2, batch_size=32, lr=0.01, seed=1, patience=None, **kw)
    return [row["loss"] for row in model.history]


@pytest.mark.slow
def test_compiled_steps_give_the_eager_losses_and_compile_once_per_shape(data: np.ndarray) -> None:
    eager = _losses(data)
    compiled = _losses(data, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    again = _losses(data, compile=True)  # a new layer, same config and shapes: no new graph
    assert compiled == pytest.approx(eager, abs=1e-5)
    assert again == pytest.approx(compiled, abs=1e-7)
    assert graphs > 0 and counters["stats"]["unique_graphs"] == graphs


def test_a_failed_compile_warns_once_and_trains_eagerly(data: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken(model: torch.nn.Module, x: torch.Tensor) -> None:
        calls.append(x.shape)
        raise RuntimeError("backend exploded")

    monkeypatch.setitem(sae.module._COMPILED, "objective", broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses = _losses(data, compile=True)
    failed = [w for w in caught if "compile=True failed" in str(w.message)]
    assert len(failed) == 1 and "backend exploded" in str(failed[0].message)
    assert len(calls) == 1  # never tried again after the first failure
    assert losses == pytest.approx(_losses(data), abs=1e-6)


def test_compile_with_lbfgs_warns_and_trains_eagerly(data: np.ndarray) -> None:
    with pytest.warns(UserWarning, match="compile=True ignored: optimizer='lbfgs'"):
        model = train_autoencoder(data, CONFIG, epochs=1, batch_size=32, lr=1.0, optimizer="lbfgs", compile=True)
    assert np.isfinite(model.history[0]["loss"])
