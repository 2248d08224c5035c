"""The tuning flow: every trial an MLflow run with its state, pruned ones marked, and best.yaml reproducing the stack."""

from pathlib import Path

import optuna
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from flows import pretrain_flow, tune_flow
from pipeline import layer_store
from pipeline.config import PipelineConfig

STATE = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


def tiny(tmp: Path) -> PipelineConfig:
    """Two small layers on 500 digits; 6 trials a layer over width and target, median pruning."""
    return PipelineConfig.from_dict({
        "name": "tune-flow", "seed": 4, "cache_dir": str(tmp / "cache"), "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": "digits", "max_samples": 500},
        "defaults": {"epochs": 8, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 16}, {"hidden": 8}], "finetune": {"epochs": 0},
        "search": {"trials": 6, "pruner": "median",
                   "defaults": {"hidden": [2, 24], "target": {"low": 0.02, "high": 0.3, "log": True}}},
    })


def test_trials_are_mlflow_runs_pruned_ones_marked_and_best_yaml_reproduces_the_stack(tmp_path):
    config = tiny(tmp_path)
    result = tune_flow(config)
    assert (tmp_path / "optuna.db").is_file()  # the study lives beside mlflow.db

    client = MlflowClient(config.tracking_uri)
    experiment = client.get_experiment_by_name(config.name).experiment_id
    runs = client.search_runs([experiment], max_results=500)
    parent = next(r for r in runs if r.data.tags.get("sae.kind") == "tune")
    layer_runs = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert sorted(layer_runs) == ["tune-layer-1", "tune-layer-2"]
    for layer in result.layers:
        layer_run = layer_runs[f"tune-layer-{layer.index + 1}"]
        trial_runs = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == layer_run.info.run_id}
        assert len(trial_runs) == len(layer.trials) == 6
        for trial in layer.trials:
            run = trial_runs[f"trial-{layer.index + 1}.{trial.number + 1}"]
            state = STATE[trial.state.name]
            assert run.data.tags["sae.trial.state"] == state and run.info.status == STATUS[state]
            assert {k: float(v) for k, v in run.data.params.items()} == {k: float(v) for k, v in trial.params.items()}
            if state == "complete":
                assert run.data.metrics["objective"] == trial.value
    states = [t.state for layer in result.layers for t in layer.trials]
    assert optuna.trial.TrialState.PRUNED in states
    pruned = [r for r in runs if r.data.tags.get("sae.trial.state") == "pruned"]
    assert all(len(client.get_metric_history(r.info.run_id, "objective_epoch")) >= 1 for r in pruned)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"best.yaml", "trials.txt", "config.yaml", "plots"} <= artifacts
    assert {"plots/layer-1-objective.png", "plots/layer-2-objective.png", "plots/layer-1-importance.png"} <= plots
    assert result.pretrain.tracked.registration is not None  # the best stack was registered as `run` does

    best_yaml = tmp_path / "best.yaml"
    best_yaml.write_text(result.best_yaml())
    rerun = pretrain_flow(PipelineConfig.from_yaml(best_yaml))
    assert [layer.reused for layer in rerun.layers] == [True, True]
    for layer, search in zip(rerun.layers, result.layers, strict=True):
        stored = load_file(str(layer_store.layer_dir(config.cache_dir, search.best_key) / "model.safetensors"))
        weights = layer.model.state_dict()
        assert all(torch.equal(weights[k], stored[k]) for k in weights)
        assert layer.settings.hidden == search.best.params["hidden"]
