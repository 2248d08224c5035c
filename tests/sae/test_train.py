"""train_autoencoder: learning, determinism, early stopping, input checks, nothing left behind."""

import os

import numpy as np
import pytest
import torch
from pytorch_lightning.loggers import Logger

from sae import SAEConfig, train_autoencoder
from sae.batches import ShuffledBatches


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(0)
    basis = rng.uniform(0, 1, (6, 32))
    mix = rng.dirichlet(np.ones(6) * 0.3, size=1200)
    return (0.1 + 0.8 * mix @ basis / basis.max()).astype(np.float32)


def _train(data, config=None, **kw):
    config = config or SAEConfig(d_in=32, d_hidden=16)
    args = {"epochs": 4, "batch_size": 64, "lr": 0.01, "seed": 3} | kw
    return train_autoencoder(data, config, **args)


def test_training_lowers_the_loss_and_records_every_metric_per_epoch(data):
    model = _train(data, epochs=6)
    assert len(model.history) == 6
    first, last = model.history[0], model.history[-1]
    assert last["loss"] < 0.5 * first["loss"]
    expected = {"loss", "reconstruction", "sparsity", "weight_decay", "mse", "fvu", "rho_hat_mean",
                "rho_hat_std", "l0", "dead_fraction"}
    assert expected <= set(last)
    assert last["rho_hat_mean"] == pytest.approx(0.1, abs=0.05)  # the kl penalty pulls rho_hat to the target
    assert model.rho_hat is not None and model.rho_hat.shape == (16,)


def test_same_seed_gives_bit_identical_weights_and_another_seed_does_not(data):
    a, b, c = _train(data), _train(data), _train(data, seed=4)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name
    assert not torch.equal(a.encoder.weight, c.encoder.weight)


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.5), ("lbfgs", 1.0)])
def test_sgd_and_full_batch_lbfgs_both_learn(data, optimizer, lr):
    model = _train(data, optimizer=optimizer, lr=lr, epochs=5)
    assert model.history[-1]["loss"] < 0.7 * model.history[0]["loss"]


def stop_epoch(val_losses: list[float], patience: int) -> int:
    """Epochs run when training stops after ``patience`` epochs without a new best validation loss."""
    best, stale = float("inf"), 0
    for epoch, loss in enumerate(val_losses, start=1):
        best, stale = (loss, 0) if loss < best else (best, stale + 1)
        if stale >= patience:
            return epoch
    return len(val_losses)


@pytest.mark.parametrize("patience", [1, 3])
def test_early_stopping_stops_patience_epochs_after_the_best_validation_loss(patience):
    # Train on rows near 0.2 and validate on rows near 0.8: every epoch moves the reconstruction further from
    # the validation rows, so the best validation loss is epoch 1's and training stops at epoch 1 + patience.
    rng = np.random.default_rng(0)
    train = (0.2 + 0.05 * rng.random((256, 16))).astype(np.float32)
    validation = (0.8 - 0.05 * rng.random((64, 16))).astype(np.float32)
    config = SAEConfig(d_in=16, d_hidden=8, sparsity="none", weight_decay=0.0)
    model = _train(train, config, validation=validation, epochs=30, patience=patience)
    val_losses = [epoch["val_loss"] for epoch in model.history]
    assert np.argmin(val_losses) == 0 and len(val_losses) == 1 + patience


def test_early_stopping_follows_the_patience_rule_on_the_recorded_history(data):
    model = _train(data, validation=data[:200] * 0.5 + 0.3, epochs=60, lr=0.05, patience=2)
    val_losses = [epoch["val_loss"] for epoch in model.history]
    assert len(val_losses) == stop_epoch(val_losses, 2) < 60


def test_denoising_topk_and_l1_layers_train(data):
    for config in (
        SAEConfig(d_in=32, d_hidden=16, noise=0.2),
        SAEConfig(d_in=32, d_hidden=16, sparsity="topk", k=4, encoder_activation="relu", decoder_activation="linear"),
        SAEConfig(d_in=32, d_hidden=16, sparsity="l1", beta=0.01, encoder_activation="relu"),
    ):
        model = _train(data, config)
        assert model.history[-1]["loss"] < model.history[0]["loss"]
    assert model.history[-1]["l0"] < 16


def test_topk_keeps_at_most_k_active_units_per_sample(data):
    config = SAEConfig(d_in=32, d_hidden=16, sparsity="topk", k=4, encoder_activation="relu",
                       decoder_activation="linear")
    model = _train(data, config)
    with torch.no_grad():
        active = (model.encode(torch.from_numpy(data)) > 0).sum(dim=1)
    assert int(active.max()) <= 4 and float(active.float().mean()) > 1.0  # k caps L0; it is not all zeros
    assert all(epoch["l0"] <= 4 for epoch in model.history)


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.zeros(32, np.float32), "2-D"),
        (np.zeros((0, 32), np.float32), "empty"),
        (np.zeros((10, 31), np.float32), "31 features"),
        (np.full((10, 32), np.nan, np.float32), "320 NaN"),
        (np.full((10, 32), 3.0, np.float32), "scale the inputs"),
    ],
)
def test_bad_inputs_fail_before_training_with_a_fix(x, fragment):
    with pytest.raises(ValueError, match=None) as info:
        _train(x)
    assert fragment in str(info.value)


def test_training_leaves_no_logs_or_checkpoints(data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _train(data, epochs=1)
    assert os.listdir(tmp_path) == []


def test_batches_cover_every_row_once_per_epoch_in_a_new_order():
    x = torch.arange(100, dtype=torch.float32).reshape(50, 2)
    batches = ShuffledBatches(x, 8, seed=0)
    assert len(batches) == 7
    first = torch.cat(list(batches))[:, 0]
    second = torch.cat(list(batches))[:, 0]
    assert sorted(first.tolist()) == sorted(x[:, 0].tolist())
    assert not torch.equal(first, second)


def test_memmapped_batches_block_shuffle_and_cover_every_row(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.arange(1000, dtype=np.float32).reshape(500, 2))
    mm = np.load(path, mmap_mode="r")
    batches = ShuffledBatches(mm, 32, seed=0, block_rows=100)
    rows = torch.cat(list(batches))[:, 0] / 2
    assert sorted(rows.tolist()) == list(range(500))
    assert rows[:100].tolist() != list(range(100))
    assert all(b.shape[0] == 32 for b in list(batches)[:-1])


class _Recorder(Logger):
    """A Lightning logger that keeps what it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[dict[str, float], int]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.rows.append((dict(metrics), step))


def test_loggers_get_each_epochs_metrics_once_with_its_epoch_and_step(data):
    recorder = _Recorder()
    model = _train(data, epochs=3, logger=recorder)  # 1200 rows / 64 = 19 steps, 3 Lightning batches an epoch
    assert [row["epoch"] for row, _ in recorder.rows] == [0, 1, 2]
    assert [step for _, step in recorder.rows] == [2, 5, 8]  # log_dict's step: Lightning batches so far - 1
    for (row, _), epoch in zip(recorder.rows, model.history, strict=True):
        assert {k: v for k, v in row.items() if k != "epoch"} == {k: v for k, v in epoch.items() if k != "epoch"}
