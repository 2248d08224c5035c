"""No choosing code path reaches the test split: perturbing only the test rows changes only the test numbers."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from pipeline.config import PipelineConfig
from pipeline.evaluation import layer_probes
from pipeline.run.greedy import pretrain_stack
from tests.pipeline.run.two_test_splits import write_test_splits


def _config(tmp_path, test_file):
    return PipelineConfig.from_dict({
        "name": "honest",
        "data": {"source": str(tmp_path / "train.npz"), "test_source": str(tmp_path / test_file),
                 "features": "X", "labels": "y"},
        "defaults": {"epochs": 8, "batch_size": 64, "lr": 0.3, "weight_decay": 1e-4, "early_stopping_patience": 1},
        "layers": [{"hidden": 24}, {"hidden": 12}],
        "finetune": {"epochs": 4, "lr": 0.01, "softmax_iterations": 60},
    })


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("honest")
    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    np.savez(tmp_path / "train.npz", X=X[:1300], y=y[:1300])
    write_test_splits(tmp_path, X, y)
    out = []
    real_fit = layer_probes.fit_probe
    for name in ("test_a.npz", "test_b.npz"):
        probes_on_test: list[tuple[int, float]] = []  # (input width, the C its probe chose), then scored on test

        def fit(*args, _seen=probes_on_test, **kwargs):
            chosen = real_fit(*args, **kwargs)
            _seen.append((args[0].shape[1], chosen.c))  # probes run on threads: in any order
            return chosen

        mp = pytest.MonkeyPatch()
        mp.setattr(layer_probes, "fit_probe", fit)
        try:
            out.append((pretrain_stack(_config(tmp_path, name)), probes_on_test))
        finally:
            mp.undo()
    return out


def test_layers_train_and_stop_identically_whatever_the_test_split_holds(runs):
    (a, _), (b, _) = runs
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert la.history == lb.history  # every epoch's train and val_* metrics, and where early stopping ended
        for ta, tb in zip(la.model.state_dict().values(), lb.model.state_dict().values(), strict=True):
            assert torch.equal(ta, tb)
    assert any(len(layer.history) < 8 for layer in a.layers)  # early stopping on validation did act
    assert a.layers[0].test_metrics != b.layers[0].test_metrics  # ...while the test numbers did change


def test_fine_tuning_and_the_registered_choice_do_not_depend_on_the_test_split(runs):
    (a, _), (b, _) = runs
    fa, fb = a.finetuned, b.finetuned
    assert fa.best_epoch == fb.best_epoch and fa.history == fb.history
    assert (fa.val_accuracy_before, fa.val_accuracy_after) == (fb.val_accuracy_before, fb.val_accuracy_after)
    for ta, tb in zip(fa.encoder.state_dict().values(), fb.encoder.state_dict().values(), strict=True):
        assert torch.equal(ta, tb)
    assert a.encoder_choice == b.encoder_choice
    assert fa.test_accuracy_after != fb.test_accuracy_after


def test_probes_choose_their_regularisation_without_the_test_split(runs):
    (a, seen_a), (b, seen_b) = runs
    assert len(seen_a) == len(a.probes) == 3  # raw, layer 1, layer 2: one probe each
    assert sorted(seen_a) == sorted(seen_b)
    assert a.probes != b.probes


def test_val_and_test_metrics_are_different_numbers(runs):
    (a, _), _ = runs
    metrics = a.metrics()
    for layer in ("layer_1", "layer_2"):
        assert metrics[f"{layer}.val_loss"] != metrics[f"{layer}.test_loss"]
        assert metrics[f"{layer}.val_fvu"] != metrics[f"{layer}.test_fvu"]
    assert metrics["finetune.val_accuracy_after"] != metrics["finetune.test_accuracy_after"]
