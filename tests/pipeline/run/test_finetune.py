"""Fine-tuning keeps the best epoch by validation, never ends below its start, and runs where the trainer says."""

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.config import FinetuneConfig
from pipeline.data.loading import load_data
from pipeline.run import finetune
from pipeline.run.finetune import accuracy, choose_encoder, finetune_device, finetune_stack
from sae.classifier import StackClassifier
from sae.config import SAEConfig
from sae.stack import StackedEncoder


@pytest.fixture(scope="module")
def data():
    from pipeline.config import DataConfig

    return load_data(DataConfig(source="digits"), seed=0)


@pytest.fixture(scope="module")
def encoder(data):
    torch.manual_seed(0)
    return StackedEncoder(data.scaling, [(SAEConfig(d_in=64, d_hidden=24), nn.Linear(64, 24))])


def run(encoder, data, **settings):
    values = {"epochs": 6, "lr": 0.003, "batch_size": 64, "softmax_iterations": 100} | settings
    return finetune_stack(encoder, data, FinetuneConfig(**values), seed=0, trainer_options={"accelerator": "cpu"})


def val_labels(result, y):
    lookup = {c: i for i, c in enumerate(result.classes.tolist())}
    return np.array([lookup[c] for c in y.tolist()])


def test_the_kept_epoch_is_the_best_by_validation_accuracy_and_reproduces_it(encoder, data):
    result = run(encoder, data)
    val = [row["val_accuracy"] for row in result.history]
    assert len(val) == 6 and result.best_epoch == int(np.argmax(val))
    assert result.val_accuracy_after == max(val) > result.val_accuracy_before
    kept = StackClassifier(result.encoder, result.encoder.d_out, len(result.classes))
    kept.head = result.head
    assert accuracy(kept, data.X_val, val_labels(result, data.y_val)) == result.val_accuracy_after
    assert accuracy(kept, data.X_test, val_labels(result, data.y_test)) == result.test_accuracy_after
    assert not torch.equal(result.encoder.encoders[0].weight, encoder.encoders[0].weight)


def test_a_diverging_run_keeps_the_pretrained_encoder_and_its_frozen_codes_softmax(encoder, data):
    result = run(encoder, data, lr=50.0, epochs=3)
    assert max(row["val_accuracy"] for row in result.history) < result.val_accuracy_before  # it did diverge
    assert result.best_epoch is None
    assert result.val_accuracy_after == result.val_accuracy_before
    assert result.test_accuracy_after == result.test_accuracy_before
    for kept, start in zip(result.encoder.state_dict().values(), encoder.state_dict().values(), strict=True):
        assert torch.equal(kept, start)
    assert choose_encoder("best", result)[0] == "pretrained"


def test_register_encoder_choices_follow_the_policy_and_say_why(encoder, data):
    won = run(encoder, data, epochs=2)
    assert won.best_epoch is not None
    assert choose_encoder("best", won)[0] == "finetuned"
    assert choose_encoder("pretrained", won)[0] == "pretrained"
    kind, why = choose_encoder("finetuned", won)
    assert kind == "finetuned" and f"{won.val_accuracy_after:.4f}" in why and f"{won.val_accuracy_before:.4f}" in why
    assert choose_encoder("best", None)[0] == "pretrained"
    with pytest.raises(ValueError, match="register.encoder='newest'"):
        choose_encoder("newest", won)


def test_fine_tuning_runs_on_the_trainers_accelerator_in_batched_multi_step_form(encoder, data, monkeypatch):
    seen = {}
    real = finetune.quiet_trainer

    def spy(epochs, **options):
        seen.update(options)
        return real(epochs, **options)

    monkeypatch.setattr(finetune, "quiet_trainer", spy)
    result = finetune_stack(encoder, data, FinetuneConfig(epochs=1, batch_size=64, softmax_iterations=10), seed=0,
                            trainer_options={"accelerator": "cpu", "precision": "64-true"})
    assert seen["accelerator"] == "cpu" and seen["devices"] == 1 and seen["precision"] == "64-true"
    assert result.device == "cpu"
    # 8 optimizer steps per Lightning batch, as in layer training.
    assert seen["n_batches"] == int(np.ceil(np.ceil(data.X_train.shape[0] / 64) / 8))
    assert len(result.history) == 1


def test_the_fine_tuning_device_follows_the_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert finetune_device({"accelerator": "gpu"}).type == "cuda"
    assert finetune_device({"accelerator": "auto"}).type == "cuda"
    assert finetune_device({"accelerator": "cpu"}).type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert finetune_device({"accelerator": "auto"}).type == "cpu"


def test_the_layers_codes_start_fine_tuning_without_encoding_the_splits_again(encoder, data, monkeypatch):
    from pipeline.data.loading import Splits

    splits = Splits(*(encoder.transform(np.asarray(x, np.float32)) for x in (data.X_train, data.X_val, data.X_test)))
    plain = run(encoder, data, epochs=0)
    calls = []
    real = StackedEncoder.forward
    monkeypatch.setattr(StackedEncoder, "forward", lambda self, x: calls.append(x.shape[0]) or real(self, x))
    reused = finetune_stack(encoder, data, FinetuneConfig(epochs=0, softmax_iterations=100), seed=0,
                            trainer_options={"accelerator": "cpu"}, codes=splits)
    assert calls == []  # the softmax was fitted and scored on the given codes
    assert reused.val_accuracy_before == pytest.approx(plain.val_accuracy_before, abs=1 / len(data.y_val))
    assert reused.test_accuracy_before == pytest.approx(plain.test_accuracy_before, abs=1 / len(data.y_test))
    torch.testing.assert_close(reused.head.weight, plain.head.weight, atol=1e-3, rtol=1e-3)
