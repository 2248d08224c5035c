"""The greedy search without Prefect or MLflow: order, recall from the layer cache, failures, resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from pipeline.config import PipelineConfig
from pipeline.data.loading import load_data
from pipeline.run import layer_store
from pipeline.run.greedy import layer_inputs, layer_seed, layer_trainer, stack_encoder
from pipeline.tune.search import TuneHooks, plain_runner, tune_stack
from pipeline.tune.space import with_layer_params
from pipeline.tune.study import interrupted
from pipeline.tune.trial import TrialJob
from tests import ROOT


def tiny(tmp: Path, search: dict, **layer_defaults) -> PipelineConfig:
    """Two small layers on 400 digits, three epochs each; cache and study storage in ``tmp``."""
    return PipelineConfig.from_dict({
        "name": "tiny-tune", "seed": 2, "cache_dir": str(tmp / "cache"),
        "data": {"source": "digits", "max_samples": 400},
        "defaults": {"epochs": 3, "lr": 0.01, **layer_defaults}, "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 12}, {"hidden": 6}], "finetune": {"epochs": 0},
        "search": {"pruner": "none", **search},
    })


class Recorder(TuneHooks):
    def __init__(self):
        self.trials = []

    def on_trial_end(self, index, outcome):
        self.trials.append((index, outcome))


def test_layer_two_trials_train_on_the_best_layer_one_codes(tmp_path):
    config = tiny(tmp_path, {"trials": 3, "defaults": {"hidden": [4, 8, 12]}})
    seen = []

    def runner(jobs):
        seen.extend(jobs)
        return plain_runner()(jobs)

    result = tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", runner=runner)
    first, second = result.layers
    assert [job.settings.index for job in seen] == [0, 0, 0, 1, 1, 1]  # all of layer 1 before any of layer 2
    values = [t.value for t in first.trials]
    assert first.best.value == max(values)
    best = result.best_config
    data = load_data(best.data, best.seed)
    below = layer_store.load_layer(layer_store.layer_dir(config.cache_dir, first.best_key), best.layer_settings(0))
    expected = layer_inputs(best, data, [below])  # what `run best.yaml` feeds layer 2: standardised codes
    for job in seen[3:]:
        assert job.parent_key == first.best_key
        np.testing.assert_allclose(np.asarray(job.inputs.train), np.asarray(expected.train), atol=1e-6)
        np.testing.assert_allclose(np.asarray(job.inputs.train).mean(axis=0), 0.0, atol=1e-4)
        assert job.inputs.train.shape[1] == first.best.params["hidden"]
    assert best.layers[0].hidden == first.best.params["hidden"]
    assert best.layers[1].hidden == second.best.params["hidden"]
    # The stacked best layers compute the codes the search scored: the registered encoder is the searched one.
    top = layer_store.load_layer(layer_store.layer_dir(config.cache_dir, second.best_key), best.layer_settings(1))
    encoder = stack_encoder(best, data, [below, top])
    np.testing.assert_allclose(encoder.transform(np.asarray(data.X_val, np.float32)), np.asarray(top.codes.val),
                               atol=1e-5)


def test_parallel_runs_trials_of_a_layer_in_batches_and_keeps_the_budget(tmp_path):
    config = tiny(tmp_path, {"trials": 3, "defaults": {"target": {"low": 0.05, "high": 0.3}}})  # no twin proposals
    batches = []

    def runner(jobs):
        batches.append([(job.settings.index, job.number) for job in jobs])
        return plain_runner(2)(jobs)

    result = tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", parallel=2, runner=runner)
    assert batches == [[(0, 0), (0, 1)], [(0, 2)], [(1, 0), (1, 1)], [(1, 2)]]
    assert all(t.state.name == "COMPLETE" for layer in result.layers for t in layer.trials)


def test_a_second_identical_search_runs_no_trial_and_keeps_the_same_best(tmp_path):
    config = tiny(tmp_path, {"trials": 2, "defaults": {"target": {"low": 0.05, "high": 0.3}}})
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = tune_stack(config, storage)
    again = Recorder()
    second = tune_stack(config, storage, hooks=[again])
    assert again.trials == []
    assert [layer.best_key for layer in second.layers] == [layer.best_key for layer in first.layers]
    assert second.best_config == first.best_config


def test_twin_trials_of_a_parallel_batch_run_after_each_other_and_the_second_is_recalled(tmp_path):
    config = tiny(tmp_path, {"trials": 2, "defaults": {"hidden": [6]}})  # both trials of a layer: the same layer
    batches, recorder = [], Recorder()

    def runner(jobs):
        batches.append([(job.settings.index, job.number) for job in jobs])
        return plain_runner(2)(jobs)

    tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", parallel=2, runner=runner, hooks=[recorder])
    assert batches == [[(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)]]
    assert [(o.state, o.recalled) for _, o in recorder.trials] == [("complete", False), ("complete", True)] * 2


def test_proposed_settings_already_in_the_layer_cache_are_recalled_not_trained(tmp_path):
    config = tiny(tmp_path, {"trials": 3, "defaults": {"hidden": [6]}})  # one choice: every trial is the same layer
    recorder = Recorder()
    tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", hooks=[recorder])
    recalled = [(index, outcome.recalled) for index, outcome in recorder.trials]
    assert recalled == [(0, False), (0, True), (0, True), (1, False), (1, True), (1, True)]
    assert len({outcome.value for index, outcome in recorder.trials if index == 0}) == 1


def test_a_trial_whose_loss_diverges_is_recorded_failed_and_the_search_goes_on(tmp_path):
    config = tiny(tmp_path, {"trials": 4, "layers": {0: {"lr": [0.01, 1.0e8]}}}, optimizer="sgd")
    recorder = Recorder()
    result = tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", hooks=[recorder])
    layer_one = [outcome for index, outcome in recorder.trials if index == 0]
    failed = [o for o in layer_one if o.state == "failed"]
    assert failed and all(o.params["lr"] == 1.0e8 and "FloatingPointError" in o.error for o in failed)
    assert {t.state.name for t in result.layers[0].trials} >= {"FAIL", "COMPLETE"}
    assert result.best_config.layers[0].lr == 0.01
    assert len(result.layers[1].trials) == 4  # layer 2 searched after the failures


SCRIPT = """
import json, sys, time
from pathlib import Path
from pipeline.config import PipelineConfig
from pipeline.run.hooks import PipelineHooks
from pipeline.tune.search import TuneHooks, plain_runner, tune_stack
from pytorch_lightning.callbacks import Callback

config = PipelineConfig.model_validate_json(Path(sys.argv[1]).read_text())
log, hang = Path(sys.argv[2]), sys.argv[3] == "hang"

class Hang(Callback):  # the third trial of layer 2 stops mid-training, waiting for the SIGKILL
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 1:
            log.open("a").write(json.dumps({"hanging": True}) + "\\n")
            time.sleep(600)

class HangHooks(PipelineHooks):
    def layer_callbacks(self, index, settings):
        return [Hang()]

class Log(TuneHooks):
    def on_trial_end(self, index, o):
        log.open("a").write(json.dumps({"layer": index, "number": o.number, "state": o.state,
                                        "recalled": o.recalled, "key": o.key}) + "\\n")

def runner(jobs):
    for job in jobs:
        if hang and job.settings.index == 1 and job.number == 2:
            job.hooks = HangHooks()
    return plain_runner()(jobs)

tune_stack(config, sys.argv[4], hooks=[Log()], runner=runner)
log.open("a").write(json.dumps({"done": True}) + "\\n")
"""


def _events(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_a_search_killed_mid_trial_in_layer_two_resumes_without_rerunning_finished_trials(tmp_path):
    config = tiny(tmp_path, {"trials": 4, "defaults": {"hidden": [4, 6, 8, 10, 12], "target": {"low": 0.05, "high": 0.3}}})
    (tmp_path / "config.json").write_text(config.model_dump_json())
    (tmp_path / "run.py").write_text(SCRIPT)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(tmp_path / "run.py"), str(tmp_path / "config.json")]
    first_log, second_log = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    proc = subprocess.Popen([*args, str(first_log), "hang", storage], env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not any(e.get("hanging") for e in _events(first_log)):
            assert proc.poll() is None, "the search ended before reaching layer 2's third trial"
            assert time.monotonic() < deadline, "timed out waiting for the hanging trial"
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    before = [e for e in _events(first_log) if "layer" in e]
    assert [(e["layer"], e["number"]) for e in before] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1)]

    subprocess.run([*args, str(second_log), "run", storage], env=env, cwd=tmp_path, check=True, timeout=300)
    after = [e for e in _events(second_log) if "layer" in e]
    assert all(e["layer"] == 1 for e in after)  # layer 1 is not searched again
    assert [e["number"] for e in after] == [3, 4]  # trial 2 (killed) is failed and not counted: 2 more make 4
    finished_before = {e["key"] for e in before if e["layer"] == 1 and not e["recalled"]}
    assert not any(e["key"] in finished_before and not e["recalled"] for e in after)  # nothing trained twice

    import optuna
    summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    layer_two = next(name for name in summaries if "-layer2-" in name)
    study = optuna.load_study(study_name=layer_two, storage=storage)
    trials = study.trials
    assert trials[2].state.name == "FAIL" and interrupted(study) == [trials[2].number]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 4
    assert not list(Path(config.cache_dir, "layers").glob("*.partial-*"))  # the killed trial's partial is gone


def test_the_reconstruction_objective_is_minimised_and_reported_every_epoch(tmp_path):
    config = tiny(tmp_path, {"trials": 3, "objective": "reconstruction", "defaults": {"hidden": [2, 12]}})
    recorder = Recorder()
    result = tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", hooks=[recorder])
    assert result.objective == "reconstruction" and result.layers[0].direction == "minimize"
    first = [o for index, o in recorder.trials if index == 0 and not o.recalled]
    for outcome in first:
        assert outcome.value == outcome.history[-1]["val_mse"]
        assert [epoch for epoch, _ in outcome.reports] == [0, 1]  # epochs 1 and 2 reported; the last is the value
    assert result.layers[0].best.value == min(t.value for t in result.layers[0].trials)


def test_trials_trained_at_once_in_threads_get_the_weights_they_get_one_at_a_time(tmp_path):
    config = tiny(tmp_path, {"trials": 2}, noise=0.3, epochs=4)  # noise: a random mask every batch
    data = load_data(config.data, config.seed)
    inputs, fingerprint = data.scaled(), layer_store.input_fingerprint(data)

    def jobs(cache_dir: Path) -> list[TrialJob]:
        out = []
        for number, hidden in enumerate([6, 10, 14]):
            settings = with_layer_params(config, 0, {"hidden": hidden}).layer_settings(0)
            out.append(TrialJob(number, {"hidden": hidden}, settings, inputs, None, layer_seed(config, settings),
                                fingerprint, None, cache_dir, "reconstruction"))
        return out

    alone = plain_runner(1)(jobs(tmp_path / "alone"))
    together = plain_runner(3)(jobs(tmp_path / "together"))
    for one, other in zip(alone, together, strict=True):
        assert one.state == other.state == "complete" and one.key == other.key
        assert one.value == other.value
        weights = [load_file(str(layer_store.layer_dir(tmp_path / run, one.key) / "model.safetensors"))
                   for run in ("alone", "together")]
        assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_trial_one_is_the_config_layer_recalled_when_run_trained_it_and_the_best_is_never_worse(tmp_path):
    config = tiny(tmp_path, {"trials": 3, "defaults": {"hidden": [4, 12], "beta": {"low": 0.5, "high": 5.0}},
                             "layers": {1: {"target": {"low": 0.3, "high": 0.5}}}}, beta=2.0)
    data = load_data(config.data, config.seed)
    settings = config.layer_settings(0)  # layer 1 as `run` would train it
    key = layer_store.layer_cache_key(layer_store.input_fingerprint(data), settings, layer_seed(config, settings), None)
    seed = layer_seed(config, settings)
    layer_store.train_into(layer_store.layer_dir(config.cache_dir, key), layer_trainer(settings, data.scaled(), seed=seed),
                           seed=seed, key=key)
    recorder = Recorder()
    result = tune_stack(config, f"sqlite:///{tmp_path / 'optuna.db'}", hooks=[recorder], data=data)
    first, second = result.layers
    assert first.trials[0].params == {"hidden": 12, "beta": 2.0} and first.trials[0].user_attrs["config"] is True
    assert recorder.trials[0][1].recalled and recorder.trials[0][1].key == key  # the layer `run` trained
    assert first.best.value >= first.trials[0].value
    # Layer 2's hidden (6) and target (0.1) lie outside its space: trial 1 keeps beta, the sampler picks the rest.
    config_trial = second.trials[0]
    assert config_trial.user_attrs["config"] is True and config_trial.params["beta"] == 2.0
    assert config_trial.params["hidden"] in (4, 12) and 0.3 <= config_trial.params["target"] <= 0.5
