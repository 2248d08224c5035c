"""Greedy pretraining end to end on digits: shapes, stacking, fine-tuning, evaluation, hooks."""

import threading

import numpy as np
import pytest
import torch

from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack
from pipeline.run.hooks import PipelineHooks
from sae.stack import StackedEncoder

TINY = {
    "name": "tiny",
    "data": {"source": "digits"},
    "defaults": {"epochs": 6, "batch_size": 64, "lr": 0.01, "weight_decay": 1e-4},
    "layers": [{"hidden": 32}, {"hidden": 16}],
    "finetune": {"epochs": 10, "lr": 0.01},
}


class Recorder(PipelineHooks):
    def __init__(self):
        self.events = []

    def on_run_start(self, config, data):
        self.events.append("start")

    def on_layer_end(self, result):
        self.events.append(f"layer-{result.index + 1}")

    def on_finetune_end(self, result):
        self.events.append("finetune")

    def on_encoders(self, data, encoder, finetuned):
        self.events.append("encoders")
        self.encoders = (encoder, finetuned)
        self.probing = [t.name for t in threading.enumerate() if t.name.startswith("sae-evaluate")]

    def on_run_end(self, result):
        self.events.append("end")

    def on_run_failed(self, error):
        self.events.append(f"failed:{type(error).__name__}")


@pytest.fixture(scope="module")
def run():
    hooks = Recorder()
    result = pretrain_stack(PipelineConfig.from_dict(TINY), hooks)
    return result, hooks


def test_layers_train_greedily_on_the_codes_below(run):
    result, _ = run
    first, second = result.layers
    assert first.model.config.d_in == 64 and first.model.config.d_hidden == 32
    assert second.model.config.d_in == first.model.config.d_hidden
    assert first.codes.train.shape == (result.data.X_train.shape[0], 32)
    below = result.encoder.code_scalings[0].transform(np.asarray(first.codes.train[:50]))  # standardised codes
    with torch.no_grad():
        expected = second.model.encode(torch.from_numpy(below))
    assert torch.allclose(torch.from_numpy(np.asarray(second.codes.train[:50])), expected, atol=1e-6)


def test_stacked_encoder_maps_raw_features_to_the_top_codes(run):
    result, _ = run
    codes = result.encoder.transform(result.data.X_test)
    assert codes.shape == (result.data.X_test.shape[0], 16)
    np.testing.assert_allclose(codes, np.asarray(result.layers[-1].codes.test), atol=1e-5)


def test_stack_survives_a_save_load_round_trip(run, tmp_path):
    result, _ = run
    result.encoder.save(tmp_path / "enc")
    loaded = StackedEncoder.load(tmp_path / "enc")
    x = torch.from_numpy(np.asarray(result.data.X_test[:100], np.float32))
    assert torch.equal(loaded(x), result.encoder(x))


def test_fine_tuning_improves_accuracy_and_keeps_the_pretrained_stack(run):
    result, _ = run
    ft = result.finetuned
    assert ft is not None
    assert ft.test_accuracy_after > ft.test_accuracy_before + 0.05  # a small, briefly pretrained stack gains a lot
    assert ft.test_accuracy_after > 0.85
    assert not torch.equal(ft.encoder.encoders[0].weight, result.encoder.encoders[0].weight)
    np.testing.assert_allclose(result.encoder.transform(result.data.X_test), np.asarray(result.layers[-1].codes.test),
                               atol=1e-5)


def test_evaluation_reports_probes_per_layer_and_a_table(run):
    result, _ = run
    assert set(result.probes) == {"raw", "layer_1", "layer_2"}
    assert all(0.5 < acc <= 1.0 for acc in result.probes.values())
    metrics = result.metrics()
    assert metrics["finetune.test_accuracy_after"] == result.finetuned.test_accuracy_after
    assert "layer_2.test_mse" in metrics and "layer_1.train_loss" in metrics
    table = result.table()
    assert "fine-tuned" in table and "64->32" in table and "32->16" in table
    assert result.encoder_choice[0] == "finetuned"  # it gained on validation, so register.encoder=best takes it
    assert result.headline() == ("encoder.test_accuracy", result.finetuned.test_accuracy_after, True)


def test_hooks_see_every_stage_in_order_and_the_plain_path_trains_every_layer(run):
    result, hooks = run
    assert hooks.events == ["start", "layer-1", "layer-2", "finetune", "encoders", "end"]
    assert [layer.reused for layer in result.layers] == [False, False]
    assert [len(layer.history) for layer in result.layers] == [6, 6]  # no cache: every epoch of every layer ran


def test_a_failing_run_reaches_the_failure_hook_and_re_raises():
    hooks = Recorder()
    bad = {**TINY, "data": {"source": "digits"}, "defaults": {"epochs": 2, "lr": 1e6, "optimizer": "sgd"},
           "finetune": {"epochs": 0}}
    with pytest.raises(FloatingPointError, match="lower lr"):
        pretrain_stack(PipelineConfig.from_dict(bad), hooks)
    assert hooks.events[0] == "start" and hooks.events[-1] == "failed:FloatingPointError"


def test_the_final_encoders_reach_the_hooks_while_the_probes_run(run):
    result, hooks = run
    assert hooks.events[-3:] == ["finetune", "encoders", "end"]
    assert hooks.encoders[0] is result.encoder and hooks.encoders[1] is result.finetuned
    assert hooks.probing  # the probes' thread was alive while the models could be logged
    assert set(result.probes) == {"raw", "layer_1", "layer_2"}
