"""A fine-tuning is stored once and reused by an identical re-run: the same weights, accuracies, history and
hooks as the run that trained it; anything that could change the result (labels, settings, seed, the stack's
weights) changes the key; a damaged entry, --fresh or a cache that cannot be written costs a fine-tuning,
never the run."""

import dataclasses
import json
import logging
import math

import numpy as np
import pytest
import torch

from pipeline.config import PipelineConfig
from pipeline.run import finetune_store
from pipeline.run.hooks import PipelineHooks

TOP = "top-layer-key"


class Seen(PipelineHooks):
    def __init__(self) -> None:
        self.loggers, self.ended = 0, []

    def finetune_logger(self):
        self.loggers += 1
        return None

    def on_finetune_end(self, result):
        self.ended.append(result)


def config_of(tmp_path, **finetune) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "ft", "seed": 0, "cache_dir": str(tmp_path / "cache"), "data": {"source": "digits"},
        "trainer": {"accelerator": "cpu"}, "layers": [{"hidden": 16}],
        "finetune": {"method": "supervised", "epochs": 3, "batch_size": 64, "softmax_iterations": 50} | finetune})


@pytest.fixture(scope="module")
def encoder(one_layer_stack):
    return one_layer_stack(16)


def entries_in(tmp_path):
    root = tmp_path / "cache" / "finetune"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_a_rerun_reuses_the_stored_fine_tuning_and_hands_the_hooks_the_same_result(tmp_path, data, encoder):
    config = config_of(tmp_path)
    first_hooks, again_hooks = Seen(), Seen()
    first = finetune_store.finetune_cached(config, data, encoder, first_hooks, None, top_key=TOP)
    again = finetune_store.finetune_cached(config, data, encoder, again_hooks, None, top_key=TOP)
    assert (first.reused, again.reused) == (False, True)
    assert len(entries_in(tmp_path)) == 1
    assert (first_hooks.loggers, again_hooks.loggers) == (1, 0)  # nothing trains: the epochs are replayed instead
    assert again_hooks.ended == [again] and first_hooks.ended == [first]
    for name in ("val_accuracy_before", "val_accuracy_after", "test_accuracy_before", "test_accuracy_after",
                 "best_epoch", "history", "logged_history", "method", "validated", "candidates", "n_labeled",
                 "n_unlabeled", "device"):
        assert getattr(again, name) == getattr(first, name), name
    assert len(again.history) == 3 and again.logged_history == first.history
    np.testing.assert_array_equal(again.classes, first.classes)
    for mine, theirs in ((again.encoder, first.encoder), (again.head, first.head)):
        for (k, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert torch.equal(a, b), k
    X = torch.from_numpy(np.asarray(data.X_test[:50], np.float32))
    with torch.no_grad():
        assert torch.equal(again.head(again.encoder(X)), first.head(first.encoder(X)))
    assert not any(torch.equal(a, b) for a, b in zip(again.encoder.parameters(), encoder.parameters(), strict=True))


def test_what_changes_the_result_changes_the_key(tmp_path, data, encoder):
    config = config_of(tmp_path)
    key = finetune_store.finetune_key(config, data, encoder, TOP)
    assert finetune_store.finetune_key(config_of(tmp_path), data, encoder, TOP) == key  # same inputs, same key
    y = np.asarray(data.y_train).copy()
    y[0] = (y[0] + 1) % 10
    other = copy_with_weight_nudged(encoder)
    changed = {
        "labels": finetune_store.finetune_key(config, dataclasses.replace(data, y_train=y), encoder, TOP),
        "unlabeled": finetune_store.finetune_key(config, dataclasses.replace(data, y_train=np.where(
            np.arange(len(y)) < 5, -1, np.asarray(data.y_train))), encoder, TOP),
        "setting": finetune_store.finetune_key(config_of(tmp_path, lr=0.002), data, encoder, TOP),
        "seed": finetune_store.finetune_key(config.model_copy(update={"seed": 1}), data, encoder, TOP),
        "stack key": finetune_store.finetune_key(config, data, encoder, "another"),
        "weights": finetune_store.finetune_key(config, data, other, TOP),
    }
    assert key not in changed.values() and len(set(changed.values())) == len(changed)


def copy_with_weight_nudged(encoder):
    import copy

    other = copy.deepcopy(encoder)
    with torch.no_grad():
        next(other.encoders.parameters())[0, 0] += 1e-6
    return other


def test_a_damaged_entry_or_fresh_fine_tunes_again_and_replaces_it(tmp_path, data, encoder, caplog):
    config = config_of(tmp_path)
    finetune_store.finetune_cached(config, data, encoder, Seen(), None, top_key=TOP)
    directory = finetune_store.finetune_dir(tmp_path / "cache", entries_in(tmp_path)[0])
    (directory / finetune_store.HEAD_FILE).write_bytes(b"not the stored head")
    with caplog.at_level(logging.WARNING):
        redone = finetune_store.finetune_cached(config, data, encoder, Seen(), None, top_key=TOP)
    assert not redone.reused and "is damaged (head.safetensors has" in caplog.text
    assert finetune_store.finetune_cached(config, data, encoder, Seen(), None, top_key=TOP).reused  # repaired
    hooks = Seen()
    fresh = finetune_store.finetune_cached(config, data, encoder, hooks, None, top_key=TOP, refresh=True)
    assert not fresh.reused and hooks.loggers == 1
    assert sorted(p.name for p in directory.parent.iterdir()) == [directory.name]  # no partial or replaced left


def test_a_cache_that_cannot_be_written_costs_only_the_reuse(tmp_path, data, encoder, caplog):
    config = config_of(tmp_path)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "finetune").write_text("a file where the store's folder goes")
    with caplog.at_level(logging.WARNING):
        result = finetune_store.finetune_cached(config, data, encoder, Seen(), None, top_key=TOP)
    assert result is not None and not result.reused and len(result.history) == 3
    assert "could not store the fine-tuning in the cache" in caplog.text


def test_few_labels_without_validation_and_class_names_come_back_as_stored(tmp_path, data, encoder):
    names = np.array([f"digit-{c}" for c in range(10)])
    y = names[np.asarray(data.y_train)]
    y[np.arange(len(y)) % 10 != 0] = ""  # most rows unlabeled: too few labels for validation to choose
    few = dataclasses.replace(data, y_train=y, y_val=names[np.asarray(data.y_val)][:20], X_val=data.X_val[:20],
                              y_test=names[np.asarray(data.y_test)])
    config = config_of(tmp_path, method="semi", semi={"steps": 20, "eval_every": 10, "batch_labeled": 16,
                                                      "batch_unlabeled": 32})
    first = finetune_store.finetune_cached(config, few, encoder, Seen(), None, top_key=TOP)
    again = finetune_store.finetune_cached(config, few, encoder, Seen(), None, top_key=TOP)
    assert again.reused and not again.validated and math.isnan(again.val_accuracy_after)
    assert again.classes.tolist() == first.classes.tolist() and again.classes.dtype.kind == "U"
    assert again.kept == first.kept == "semi: last step"
    stored = json.loads((finetune_store.finetune_dir(tmp_path / "cache", entries_in(tmp_path)[0])
                         / finetune_store.RESULT_FILE).read_text())
    assert stored["method"] == "semi" and stored["n_unlabeled"] == first.n_unlabeled > 0


def test_no_labels_or_no_epochs_fine_tune_nothing_and_store_nothing(tmp_path, data, encoder):
    unlabeled = dataclasses.replace(data, y_train=None, y_val=None, y_test=None)
    assert finetune_store.finetune_cached(config_of(tmp_path), unlabeled, encoder, Seen(), None, top_key=TOP) is None
    assert finetune_store.finetune_cached(config_of(tmp_path, epochs=0), data, encoder, Seen(), None,
                                          top_key=TOP) is None
    assert entries_in(tmp_path) == []
