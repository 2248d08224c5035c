"""The tuning flow: every trial an MLflow run with its state, pruned ones marked, and best.yaml reproducing the stack."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from safetensors.torch import load_file

from flows import pretrain_flow, tune_flow
from flows.cli import main as cli_main
from flows.tune import tune_deployment
from pipeline.config import PipelineConfig
from pipeline.errors import InputError
from pipeline.run import layer_store
from tests import ROOT

STATE = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}
STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


def tiny(tmp: Path) -> PipelineConfig:
    """Two small layers on 500 digits; 6 trials a layer over width and target, median pruning (seed 7: two of
    layer 1's trials are pruned; with trial 1 the config's own values, seed 4 no longer proposed prunable ones)."""
    return PipelineConfig.from_dict({
        "name": "tune-flow", "seed": 7, "cache_dir": str(tmp / "cache"), "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
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
                assert run.data.metrics["objective"] == pytest.approx(trial.value, rel=1e-3)  # four digits
                # The layer runs' charts and numbering: epochs from 1, the pruner's reports at the same steps.
                assert {"loss", "val_loss", "val_fvu", "val_l0", "val_rho_hat_mean", "val_objective"} <= set(
                    run.data.metrics) and "epochs" not in run.data.metrics
                assert min(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == 1
            assert run.data.tags["mlflow.note.content"].startswith(f"**trial {layer.index + 1}.{trial.number + 1}: ")
    states = [t.state for layer in result.layers for t in layer.trials]
    assert optuna.trial.TrialState.PRUNED in states
    pruned = [r for r in runs if r.data.tags.get("sae.trial.state") == "pruned"]
    assert all(len(client.get_metric_history(r.info.run_id, "val_objective")) >= 1 for r in pruned)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"best.yaml", "trials.txt", "config.yaml", "plots"} <= artifacts
    assert {"plots/layer-1-objective.png", "plots/layer-2-objective.png", "plots/layer-1-importance.png"} <= plots
    assert result.best_stack.tracked.registration is not None  # the best stack was registered as `run` does

    best_yaml = tmp_path / "best.yaml"
    best_yaml.write_text(result.best_yaml())
    rerun = pretrain_flow(PipelineConfig.from_yaml(best_yaml))
    assert [layer.reused for layer in rerun.layers] == [True, True]
    for layer, search in zip(rerun.layers, result.layers, strict=True):
        stored = load_file(str(layer_store.layer_dir(config.cache_dir, search.best_key) / "model.safetensors"))
        weights = layer.model.state_dict()
        assert all(torch.equal(weights[k], stored[k]) for k in weights)
        assert layer.settings.hidden == search.best.params["hidden"]


def small(tmp: Path, name: str, layers: int = 2, trials: int = 3) -> PipelineConfig:
    """``layers`` 3-epoch layers on 300 digits, ``trials`` trials a layer over width, no pruning."""
    return PipelineConfig.from_dict({
        "name": name, "seed": 1, "cache_dir": str(tmp / "cache"), "tracking_uri": f"sqlite:///{tmp / 'mlflow.db'}",
        "data": {"source": "digits", "max_samples": 300},
        "defaults": {"epochs": 3, "lr": 0.01}, "trainer": {"accelerator": "cpu"},
        "layers": [{"hidden": 12}, {"hidden": 6}][:layers], "finetune": {"epochs": 0},
        "search": {"trials": trials, "pruner": "none", "defaults": {"hidden": [4, 6, 8, 12]}},
    })


def test_tune_json_prints_every_trial_per_layer_and_the_best_params_it_wrote(tmp_path, capsys):
    config = small(tmp_path, "tune-json")
    (tmp_path / "tune.yaml").write_text(config.to_yaml())
    capsys.readouterr()
    assert cli_main(["tune", str(tmp_path / "tune.yaml"), "--json", "--out", str(tmp_path / "best.yaml")]) == 0
    printed = json.loads(capsys.readouterr().out)  # stdout holds the JSON object and nothing else

    assert printed["objective"] == "probe" and printed["best_config"] == str(tmp_path / "best.yaml")
    rows = printed["trials"]
    assert [(r["layer"], r["trial"]) for r in rows] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert all(r["state"] == "complete" and set(r["params"]) == {"hidden"} for r in rows)
    assert [r["config"] for r in rows] == [True, False, False, True, False, False]  # trial 1: the config's values
    assert (rows[0]["params"], rows[3]["params"]) == ({"hidden": 12}, {"hidden": 6})
    best = PipelineConfig.from_yaml(tmp_path / "best.yaml")
    for layer in (1, 2):
        layer_rows = [r for r in rows if r["layer"] == layer]
        (chosen,) = [r for r in layer_rows if r["best"]]
        assert chosen["objective"] == max(r["objective"] for r in layer_rows)
        assert best.layers[layer - 1].hidden == chosen["params"]["hidden"]
    client = MlflowClient(config.tracking_uri)
    run = client.get_run(printed["run_id"])
    assert run.info.status == "FINISHED" and printed["model_version"] == "1" and printed["recalled"] is False
    assert run.data.tags["sae.tune_run"]  # the best stack's run points at the search's run

    # The same search again: no trial runs, and the best stack is recalled from its run, not fine-tuned again.
    assert cli_main(["tune", str(tmp_path / "tune.yaml"), "--json", "--out", str(tmp_path / "best.yaml")]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["recalled"] is True and (again["run_id"], again["model_version"]) == (printed["run_id"], "1")
    assert [(r["trial"], r["params"], r["objective"]) for r in again["trials"]] == [
        (r["trial"], r["params"], r["objective"]) for r in rows]
    runs = client.search_runs([run.info.experiment_id], "tags.`sae.data.source` = 'digits'")
    assert len([r for r in runs if r.data.tags.get("sae.kind") != "tune"]) == 1  # one best-stack run in all
    assert len(client.search_model_versions("name='tune-json-encoder'")) == 1
    assert client.get_run(printed["run_id"]).data.tags["sae.tune_run"] == run.data.tags["sae.tune_run"]
    tune_runs = [r for r in runs if r.data.tags.get("sae.kind") == "tune"]
    assert sorted(r.data.tags["sae.recalled"] for r in tune_runs) == ["false", "true"]
    assert {r.data.tags["sae.best_run"] for r in tune_runs} == {printed["run_id"]}

    # Its model version deleted from the registry: the stack is run (and registered) again.
    client.delete_model_version("tune-json-encoder", "1")
    assert cli_main(["tune", str(tmp_path / "tune.yaml"), "--json", "--out", str(tmp_path / "best.yaml")]) == 0
    third = json.loads(capsys.readouterr().out)
    assert third["recalled"] is False and third["run_id"] != printed["run_id"] and third["model_version"] == "2"


def test_the_search_shares_its_name_with_the_flow_run_links_both_ways_and_records_the_trials_asked(tmp_path):
    config = small(tmp_path, "tune-links", layers=1, trials=3)
    result = tune_flow(config, trials=2)  # --trials 2 wins over search.trials 3
    client = MlflowClient(config.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name(config.name).experiment_id])
    search = next(r for r in runs if r.data.tags.get("sae.kind") == "tune")
    best = client.get_run(result.best_stack.tracked.run_id)
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(search.data.tags["sae.flow_run"])
        artifacts = {a.key: a for a in prefect.read_artifacts() if a.flow_run_id == flow_run.id}
        tasks = {t.name for t in prefect.read_task_runs() if t.flow_run_id == flow_run.id}
    assert search.info.run_name == flow_run.name  # one name, made once
    assert search.data.params["search.trials"] == "2" and len(result.layers[0].ran) == 2
    note = search.data.tags["mlflow.note.content"]
    assert note.startswith("**Search of tune-links**: 2 trials per layer") and "Prefect flow run: [" in note
    assert f"Best stack: [{best.info.run_name}](" in note and "`@champion`" in note
    assert f"the best config of search [{search.info.run_name}](" in best.data.tags["mlflow.note.content"]
    assert best.data.tags["sae.tune_run"] == search.info.run_id
    assert {"tune-links-mlflow-search-run", "tune-links-search"} <= set(artifacts)
    assert search.info.run_id in artifacts["tune-links-mlflow-search-run"].description
    assert best.info.run_name in artifacts["tune-links-search"].data
    assert "recall-best-stack" not in tasks  # nothing to recall on a first search: no such task shown


def test_a_tuning_deployment_carries_its_schedule_parameters_and_limit_to_the_server(tmp_path):
    config = small(tmp_path, "tune-deploy")
    deployment = tune_deployment(config, cron="0 3 * * *", trials=4, parallel=2)
    assert deployment.name == "tune-tune-deploy" and "tune" in deployment.tags
    assert deployment.parameters == {"config": config.model_dump(mode="json"), "trials": 4, "parallel": 2}
    assert deployment.concurrency_limit == 1

    deployment_id = deployment.apply()  # to the test harness's server, which checks parameters against the schema
    with get_client(sync_client=True) as client:
        stored = client.read_deployment(deployment_id)
    assert [s.schedule.cron for s in stored.schedules] == ["0 3 * * *"]
    assert stored.parameters["config"]["search"]["defaults"] == {"hidden": [4, 6, 8, 12]}
    assert (stored.parameters["trials"], stored.parameters["parallel"]) == (4, 2)
    assert stored.enforce_parameter_schema and {"config", "trials", "parallel"} <= set(
        stored.parameter_openapi_schema["properties"])


def test_a_tuning_deployment_needs_a_search_section_and_one_schedule(tmp_path):
    config = small(tmp_path, "tune-bad")
    with pytest.raises(InputError, match="both cron='0 3 \\* \\* \\*' and interval=60"):
        tune_deployment(config, cron="0 3 * * *", interval=60)
    with pytest.raises(InputError, match="has no search section"):
        tune_deployment(config.model_copy(update={"search": None}), cron="0 3 * * *")


@pytest.mark.slow
def test_serve_tune_serves_the_deployment_runs_a_search_from_it_and_stops_on_sigterm(tmp_path):
    config = small(tmp_path, "tune-served", layers=1, trials=2)
    (tmp_path / "tune.yaml").write_text(config.to_yaml())
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), "PYTHONPATH": str(ROOT),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    command = [sys.executable, "-m", "flows.cli", "serve", str(tmp_path / "tune.yaml"), "--tune",
               "--cron", "0 0 1 1 *", "--name", "tune-served", "--trials", "2"]
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        with get_client(sync_client=True) as client:
            deployment = _wait(lambda: _deployment(client, "sae-tune/tune-served"), 120, serve, tmp_path)
            assert [s.schedule.cron for s in deployment.schedules] == ["0 0 1 1 *"]
            assert deployment.parameters["trials"] == 2 and deployment.parameters["config"]["name"] == "tune-served"
            run = client.create_flow_run_from_deployment(deployment.id)
            final = _wait(lambda: (r := client.read_flow_run(run.id)).state.is_final() and r, 240, serve, tmp_path)
        assert final.state.is_completed(), (final.state, (tmp_path / "serve.log").read_text()[-3000:])
        assert final.name.startswith("tune-tune-served-")
        trials = optuna.load_study(study_name=optuna.get_all_study_names(f"sqlite:///{tmp_path / 'optuna.db'}")[0],
                                   storage=f"sqlite:///{tmp_path / 'optuna.db'}").trials
        assert len(trials) == 2
        assert stored_description(deployment) and Path(deployment.entrypoint.split(":")[0]).is_absolute()
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=60)  # serving blocks until stopped, and SIGTERM stops it
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
        log.close()
    assert serve.returncode is not None
    with get_client(sync_client=True) as client:  # stopped: the switch and the schedule agree (both off)
        stopped = client.read_deployment_by_name("sae-tune/tune-served")
    assert stopped.paused and [s.active for s in stopped.schedules] == [False]


def stored_description(deployment) -> bool:
    """The deployment says what it runs: the config, its data, where the results go."""
    return "config `tune-served` on data `digits`" in deployment.description and "MLflow" in deployment.description


def _deployment(client, name: str):
    try:
        return client.read_deployment_by_name(name)
    except ObjectNotFound:
        return None


def _wait(probe, seconds: float, process: subprocess.Popen, tmp: Path):
    """``probe()``'s first truthy value within ``seconds``; fails early when ``process`` died."""
    deadline = time.monotonic() + seconds
    while not (value := probe()):
        log = (tmp / "serve.log").read_text()[-3000:]
        assert process.poll() is None, f"serve exited with {process.returncode}:\n{log}"
        assert time.monotonic() < deadline, f"timed out after {seconds} s:\n{log}"
        time.sleep(1)
    return value
