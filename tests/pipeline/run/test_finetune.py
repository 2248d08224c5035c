"""Fine-tuning keeps the best epoch by validation, never ends below its start, and runs where the trainer says;
with few labels it chooses nothing on validation and never reads the test split; with many, validation picks
between semi-supervised and supervised fine-tuning."""

import dataclasses

import numpy as np
import pytest
import torch

from pipeline.config import FinetuneConfig
from pipeline.data.budgets import draw_per_class
from pipeline.run import end_to_end
from pipeline.run.end_to_end import Candidate, Device, accuracy
from pipeline.run.finetune import choose_encoder, finetune_stack, pick
from sae.classifier import StackClassifier
from sae.stack import StackedEncoder


@pytest.fixture(scope="module")
def encoder(one_layer_stack):
    return one_layer_stack(24)


SEMI = {"steps": 60, "eval_every": 20, "batch_labeled": 32, "batch_unlabeled": 64}


def run(encoder, data, seed=0, **settings):
    values = {"method": "supervised", "epochs": 6, "lr": 0.003, "batch_size": 64, "softmax_iterations": 100,
              "semi": SEMI} | settings
    return finetune_stack(encoder, data, FinetuneConfig(**values), seed=seed, trainer_options={"accelerator": "cpu"})


def few_labels(data, per_class=4, seed=0, **changes):
    """``data`` with ``per_class`` labels a class in training, every other training row unlabeled (-1)."""
    keep = draw_per_class(data.y_train, per_class, seed)
    y = np.full_like(np.asarray(data.y_train), -1)
    y[keep] = np.asarray(data.y_train)[keep]
    val = {"X_val": data.X_val[:30], "y_val": np.asarray(data.y_val)[:30]}  # a few validation rows, which join training
    return dataclasses.replace(data, **({"y_train": y} | val | changes))


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
    real = end_to_end.quiet_trainer

    def spy(epochs, **options):
        seen.update(options)
        return real(epochs, **options)

    monkeypatch.setattr(end_to_end, "quiet_trainer", spy)
    result = finetune_stack(encoder, data, FinetuneConfig(method="supervised", epochs=1, batch_size=64,
                                                          softmax_iterations=10), seed=0,
                            trainer_options={"accelerator": "cpu", "precision": "64-true"})
    assert seen["accelerator"] == "cpu" and seen["devices"] == 1 and seen["precision"] == "64-true"
    assert result.device == "cpu"
    # 8 optimizer steps per Lightning batch, as in layer training.
    assert seen["n_batches"] == int(np.ceil(np.ceil(data.X_train.shape[0] / 64) / 8))
    assert len(result.history) == 1


def test_the_fine_tuning_device_follows_the_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Device.of({"accelerator": "gpu"}).torch.type == "cuda"
    assert Device.of({"accelerator": "auto"}).torch.type == "cuda"
    assert Device.of({"accelerator": "cpu"}).torch.type == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Device.of({"accelerator": "auto"}).torch.type == "cpu"


def test_the_layers_codes_start_fine_tuning_without_encoding_the_splits_again(encoder, data, monkeypatch):
    from pipeline.data.loading import Splits

    splits = Splits(*(encoder.transform(np.asarray(x, np.float32)) for x in (data.X_train, data.X_val, data.X_test)))
    plain = run(encoder, data, epochs=0)
    calls = []
    real = StackedEncoder.forward
    monkeypatch.setattr(StackedEncoder, "forward", lambda self, x: calls.append(x.shape[0]) or real(self, x))
    reused = finetune_stack(encoder, data, FinetuneConfig(method="supervised", epochs=0, softmax_iterations=100), seed=0,
                            trainer_options={"accelerator": "cpu"}, codes=splits)
    assert calls == []  # the softmax was fitted and scored on the given codes
    assert reused.val_accuracy_before == pytest.approx(plain.val_accuracy_before, abs=1 / len(data.y_val))
    assert reused.test_accuracy_before == pytest.approx(plain.test_accuracy_before, abs=1 / len(data.y_test))
    torch.testing.assert_close(reused.head.weight, plain.head.weight, atol=1e-3, rtol=1e-3)


def test_with_few_labels_semi_fine_tuning_learns_from_every_labeled_row_and_keeps_its_last_step(encoder, data):
    few = few_labels(data)
    result = run(encoder, few, method="semi")
    assert not result.validated and result.method == "semi" and result.kept == "semi: last step"
    assert result.n_labeled == 4 * 10 + 30 and result.n_unlabeled == len(data.y_train) - 40  # validation joined
    assert np.isnan(result.val_accuracy_before) and np.isnan(result.val_accuracy_after) and result.candidates == {}
    assert len(result.history) == 3 and result.best_epoch == 2  # 60 steps, 20 an epoch: the last one kept
    assert result.history[-1]["vat"] > 0 and result.history[-1]["consistency"] > 0
    kept = StackClassifier(result.encoder, result.encoder.d_out, len(result.classes))
    kept.head = result.head
    assert accuracy(kept, data.X_test, val_labels(result, data.y_test)) == result.test_accuracy_after
    kind, why = choose_encoder("best", result)
    assert kind == "finetuned" and "by rule" in why and "70 labeled rows" in why


def test_the_few_label_path_never_reads_the_test_split(encoder, data):
    few = few_labels(data)
    rng = np.random.default_rng(5)
    other = few_labels(data, X_test=rng.uniform(0, 16, data.X_test.shape).astype(np.float32),
                       y_test=rng.permutation(np.asarray(data.y_test)))
    a, b = run(encoder, few, method="semi"), run(encoder, other, method="semi")
    for ta, tb in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values(), strict=True):
        assert torch.equal(ta, tb)
    assert torch.equal(a.head.weight, b.head.weight) and a.history == b.history
    assert a.test_accuracy_after != b.test_accuracy_after


def test_semi_fine_tuning_is_reproducible_with_its_seed(encoder, data):
    few = few_labels(data)
    a, b, c = run(encoder, few, method="semi"), run(encoder, few, method="semi"), run(encoder, few, seed=1, method="semi")
    assert all(torch.equal(x, y) for x, y in zip(a.encoder.state_dict().values(), b.encoder.state_dict().values(),
                                                  strict=True))
    assert a.test_accuracy_after == b.test_accuracy_after
    assert not torch.equal(a.head.weight, c.head.weight)


def test_with_enough_labels_validation_picks_between_semi_and_supervised_fine_tuning(encoder, data):
    many = few_labels(data, per_class=60, X_val=data.X_val, y_val=data.y_val)  # 60 + ~14 validation rows a class
    result = run(encoder, many, method="semi", validate_from_per_class=60)
    assert result.validated and set(result.candidates) == {"supervised", "semi"}
    assert result.method == max(result.candidates, key=lambda m: (result.candidates[m], m == "supervised"))
    assert result.val_accuracy_after == max(result.candidates.values())
    assert result.n_labeled == 600 and result.n_unlabeled == len(data.y_train) - 600  # validation kept apart
    kept = StackClassifier(result.encoder, result.encoder.d_out, len(result.classes))
    kept.head = result.head
    assert accuracy(kept, data.X_val, val_labels(result, data.y_val)) == result.val_accuracy_after


def test_with_every_training_row_labeled_fine_tuning_is_supervised(encoder, data):
    result = run(encoder, data, method="semi")
    supervised = run(encoder, data, method="supervised")
    assert result.validated and result.method == "supervised" and set(result.candidates) == {"supervised"}
    assert result.history == supervised.history and result.test_accuracy_after == supervised.test_accuracy_after


def _candidate(method, val_after):
    return Candidate(method, None, 0.5, val_after, 0.5, 0, "best")


def test_ties_on_validation_go_to_supervised_fine_tuning_and_a_lone_run_is_kept():
    assert pick([_candidate("supervised", 0.9), _candidate("semi", 0.9)]).method == "supervised"
    assert pick([_candidate("supervised", 0.9), _candidate("semi", 0.91)]).method == "semi"
    assert pick([_candidate("supervised", 0.95), _candidate("semi", 0.91)]).method == "supervised"
    assert pick([_candidate("semi", float("nan"))]).method == "semi"
