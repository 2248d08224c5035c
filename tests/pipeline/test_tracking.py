"""MLflow tracking of a pipeline run, checked through MlflowClient on a temporary sqlite store."""

import dataclasses
import os
import signal
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from pytorch_lightning.callbacks import Callback
from safetensors.numpy import load_file

from pipeline.config import PipelineConfig
from pipeline.data.loading import load_data
from pipeline.errors import InputError
from pipeline.export import export_encoder, load_exported
from pipeline.greedy import pretrain_stack, stack_and_evaluate, train_layer
from pipeline.hooks import CompositeHooks, PipelineHooks
from pipeline.tracking.encoders import resolve_encoder
from pipeline.tracking.runs import MlflowTracking
from pipeline.tracking.store import artifact_location, project_root, resolve_tracking_uri

EPOCHS = 2
TINY = {
    "name": "tracked",
    "defaults": {"epochs": EPOCHS, "batch_size": 128, "lr": 0.01},
    "trainer": {"accelerator": "cpu"},
    "layers": [{"hidden": 16}, {"hidden": 8, "target": 0.2}],
    "finetune": {"epochs": 2, "lr": 0.01},
}


def config(uri, **changes):
    return PipelineConfig.from_dict({**TINY, "tracking_uri": uri, **changes})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite tracking store in a temp dir; MLflow's global URI and env are restored afterwards."""
    root = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_TELEMETRY", "false")
        mp.chdir(root)  # nothing may fall back to a ./mlflow.db in the checkout
        yield f"sqlite:///{root}/mlflow.db", root
        mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def run(store):
    uri, _ = store
    result = pretrain_stack(config(uri), MlflowTracking())
    client = MlflowClient(uri)
    return result, client, client.get_run(result.tracked.run_id)


def children(client, parent):
    found = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in found}


def test_parent_run_is_named_after_the_config_and_has_layer_and_finetune_children(run):
    _, client, parent = run
    assert parent.info.run_name.startswith("tracked-") and parent.info.status == "FINISHED"
    kids = children(client, parent)
    assert set(kids) == {"layer-1", "layer-2", "finetune"}
    assert all(k.info.status == "FINISHED" for k in kids.values())


def test_artifacts_go_beside_the_sqlite_database(run, store):
    _, _, parent = run
    _, root = store
    assert parent.info.artifact_uri.startswith((root / "mlruns" / "tracked").as_uri())


def test_params_hold_the_flat_config_versions_commit_and_each_layers_own_settings(run):
    result, client, parent = run
    params = parent.data.params
    assert params["layers.1.hidden"] == "8" and params["layers.1.target"] == "0.2"
    assert params["defaults.epochs"] == str(EPOCHS) and params["data.source"] == "digits"
    assert {"version.torch", "version.pytorch-lightning", "version.mlflow", "version.sae-pipeline"} <= set(params)
    if "git_commit" in params:
        assert len(params["git_commit"]) == 40
    layer2 = children(client, parent)["layer-2"].data.params
    assert layer2["hidden"] == "8" and layer2["target"] == "0.2" and layer2["d_in"] == "16"
    assert layer2["trainer.accelerator"] == "cpu"


def test_children_log_one_point_per_epoch_for_every_objective_term(run):
    result, client, parent = run
    layer1 = children(client, parent)["layer-1"]
    for key in ("loss", "reconstruction", "sparsity", "weight_decay", "mse", "fvu", "rho_hat_mean", "l0",
                "dead_fraction", "val_loss"):
        history = client.get_metric_history(layer1.info.run_id, key)
        assert len(history) == EPOCHS, key
    last = client.get_metric_history(layer1.info.run_id, "loss")[-1].value
    assert last == pytest.approx(result.layers[0].history[-1]["loss"], rel=1e-6)
    assert "test_mse" in layer1.data.metrics
    finetune = children(client, parent)["finetune"]
    assert len(client.get_metric_history(finetune.info.run_id, "loss")) == 2
    assert finetune.data.metrics["test_accuracy_after"] == result.finetuned.test_accuracy_after
    assert finetune.data.metrics["val_accuracy_after"] == result.finetuned.val_accuracy_after


def test_parent_metrics_hold_probe_and_finetune_accuracies_and_wall_time(run):
    result, _, parent = run
    metrics = parent.data.metrics
    for key in ("probe_accuracy.raw", "probe_accuracy.layer_1", "probe_accuracy.layer_2",
                "finetune.test_accuracy_before", "finetune.test_accuracy_after", "finetune.val_accuracy_after",
                "encoder.test_accuracy", "layer_1.val_loss", "layer_1.test_loss", "seconds"):
        assert metrics[key] == pytest.approx(result.metrics()[key]), key


def test_parent_artifacts_hold_config_plots_and_results_table(run, tmp_path):
    result, client, parent = run
    run_id = parent.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "results.txt", "results.md", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/filter_grid.png", "plots/loss_curves.png", "plots/rho_hat_histogram.png"}
    config_path = client.download_artifacts(run_id, "config.yaml", str(tmp_path))
    assert PipelineConfig.from_yaml(config_path) == result.config
    assert "| layer |" in Path(client.download_artifacts(run_id, "results.md", str(tmp_path))).read_text()


def test_each_layer_run_holds_its_encoder_and_decoder_weights_as_safetensors(run, tmp_path):
    result, client, parent = run
    layer2 = children(client, parent)["layer-2"]
    path = client.download_artifacts(layer2.info.run_id, "weights/layer-2.safetensors", str(tmp_path))
    tensors = load_file(path)
    assert tensors["encoder.weight"].shape == (8, 16) and tensors["decoder.weight"].shape == (16, 8)
    np.testing.assert_array_equal(tensors["encoder.weight"], result.layers[1].model.encoder.weight.detach().numpy())


def test_the_data_set_is_a_dataset_input_with_digest_and_schema(run):
    result, _, parent = run
    inputs = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset
              for d in parent.inputs.dataset_inputs}
    assert set(inputs) == {"train", "validation", "test"}
    train = inputs["train"]
    assert train.name == "digits" and "64" in train.schema and "builtin" in train.source
    assert inputs["validation"].name == "digits:validation" and inputs["test"].name == "digits:test"
    assert len({d.digest for d in inputs.values()}) == 3  # each split carries its own digest


def test_the_chosen_encoder_is_registered_as_champion_with_metric_run_and_reason_tags(run):
    result, client, parent = run
    reg = result.tracked.registration
    assert reg.alias == "champion" and result.tracked.model_uri == "models:/tracked-encoder@champion"
    version = client.get_model_version_by_alias("tracked-encoder", "champion")
    assert str(version.version) == reg.model_version
    kind, why = result.encoder_choice  # register.encoder=best, decided on validation accuracy
    assert version.tags["run_id"] == parent.info.run_id
    assert version.tags["kind"] == ("encoder-finetuned" if kind == "finetuned" else "encoder")
    assert version.tags["encoder_choice"] == why and "register.encoder=best" in why
    assert parent.data.tags["sae.registered_encoder"].endswith(why)
    assert float(version.tags["metric.finetune.test_accuracy_after"]) == result.finetuned.test_accuracy_after
    assert float(version.tags["headline.value"]) == result.headline()[1]


def test_the_registered_model_loads_three_ways_and_agrees_with_the_encoder(run, store, tmp_path):
    result, _, _ = run
    uri, _ = store
    X = result.data.X_test[:50]
    expected = result.registered_encoder.transform(X)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/tracked-encoder@champion")
    np.testing.assert_allclose(model.predict(np.asarray(X, np.float64)), expected, atol=1e-6)
    frame = pd.DataFrame(X, columns=result.data.feature_names)
    np.testing.assert_allclose(model.predict(frame), expected, atol=1e-6)
    encoder = resolve_encoder("models:/tracked-encoder@champion", uri)
    np.testing.assert_allclose(encoder.transform(X), expected, atol=1e-6)
    onnx = export_encoder(encoder, "onnx", tmp_path / "encoder.onnx")
    np.testing.assert_allclose(load_exported(onnx)(X), expected, atol=1e-5)


def test_the_pretrained_stack_is_logged_too_and_resolves_by_run_uri(run, store):
    result, _, parent = run
    uri, _ = store
    encoder = resolve_encoder(f"runs:/{parent.info.run_id}/encoder", uri)
    X = result.data.X_test[:20]
    np.testing.assert_allclose(encoder.transform(X), result.encoder.transform(X), atol=1e-6)


def test_a_worse_run_gets_the_challenger_alias_and_says_why(run, store):
    uri, _ = store
    # One code unit and no real fine-tuning: ~0.15 accuracy against ~0.3 for the fixture's run.
    worse = pretrain_stack(config(uri, layers=[{"hidden": 1}], finetune={"epochs": 1, "lr": 1e-6}), MlflowTracking())
    assert worse.tracked.registration.alias == "challenger"
    assert "does not beat" in worse.tracked.registration.reason
    client = MlflowClient(uri)
    assert str(client.get_model_version_by_alias("tracked-encoder", "champion").version) == run[0].tracked.registration.model_version
    assert str(client.get_model_version_by_alias("tracked-encoder", "challenger").version) == worse.tracked.registration.model_version
    assert "does not beat" in client.get_run(worse.tracked.run_id).data.tags["sae.registration"]


class Interrupt(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        raise KeyboardInterrupt


class InterruptLayer2(PipelineHooks):
    def layer_callbacks(self, index, settings):
        return [Interrupt()] if index == 1 else []


def versions(client):
    return len(client.search_model_versions("name = 'tracked-encoder'"))


@pytest.mark.parametrize(
    ("changes", "hooks", "error", "failed_child"),
    [
        ({"defaults": {"epochs": 2, "lr": 1e6, "optimizer": "sgd"}}, [], FloatingPointError, "layer-1"),
        ({}, [InterruptLayer2()], SystemExit, "layer-2"),  # Lightning turns Ctrl-C into sys.exit(1)
    ],
    ids=["nan-loss", "interrupted"],
)
def test_a_failed_run_ends_failed_with_the_error_and_registers_nothing(run, store, changes, hooks, error,
                                                                         failed_child):
    uri, _ = store
    client = MlflowClient(uri)
    before = versions(client)
    tracking = MlflowTracking()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(error):
            pretrain_stack(config(uri, **changes), CompositeHooks([tracking, *hooks]))
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT after an interrupt
    parent = client.get_run(tracking.run_id)
    assert parent.info.status == "FAILED" and parent.data.tags["error"]
    assert "error.txt" in {a.path for a in client.list_artifacts(tracking.run_id)}
    kids = children(client, parent)
    assert kids[failed_child].info.status == "FAILED"
    assert versions(client) == before


def test_tracking_leaves_mlflows_global_uri_as_it_found_it(store):
    uri, _ = store
    mlflow.set_tracking_uri(None)
    pretrain_stack(config(uri, layers=[{"hidden": 4}], finetune={"epochs": 0}), MlflowTracking(register=False))
    assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ


def test_a_layer_reused_from_a_cache_is_tagged_and_replays_its_epoch_history(store):
    uri, _ = store
    cfg = config(uri, layers=[{"hidden": 4}], finetune={"epochs": 0})
    data = load_data(cfg.data, cfg.seed)
    (settings,) = cfg.resolved_layers()
    cached = dataclasses.replace(train_layer(settings, data.scaled(), seed=0), reused=True)
    tracking = MlflowTracking(register=False)
    tracking.on_run_start(cfg, data)
    tracking.on_layer_end(cached)  # what a cached flow does: no Lightning logger for this layer
    stack_and_evaluate(cfg, data, [cached], hooks=tracking)
    client = MlflowClient(uri)
    layer1 = children(client, client.get_run(tracking.run_id))["layer-1"]
    assert layer1.data.tags["sae.reused"] == "true" and layer1.data.params["hidden"] == "4"
    assert [m.step for m in client.get_metric_history(layer1.info.run_id, "loss")] == list(range(EPOCHS))


def test_the_tracking_uri_comes_from_config_then_environment_then_the_project_store(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri(None) == f"sqlite:///{project_root() / 'mlflow.db'}"


@pytest.mark.parametrize("uri", ["./mlruns", "mlruns", "file:///tmp/mlruns"])
def test_the_legacy_file_store_is_refused_with_a_sqlite_suggestion(uri):
    with pytest.raises(InputError, match="sqlite:///"):
        resolve_tracking_uri(uri)


def test_experiments_in_a_sqlite_store_keep_artifacts_beside_the_database(tmp_path):
    assert artifact_location(f"sqlite:///{tmp_path}/x.db", "my exp") == (tmp_path / "mlruns" / "my-exp").as_uri()
    assert artifact_location("http://127.0.0.1:5000", "e") is None


def test_a_retried_run_start_reuses_the_open_parent_run(store):
    uri, _ = store
    cfg = config(uri, name="retried")
    data = load_data(cfg.data, cfg.seed)
    tracking = MlflowTracking(register=False)
    tracking.on_run_start(cfg, data)
    first = tracking.run_id
    tracking.on_run_start(cfg, data)  # what a Prefect retry of the start-tracking task does
    assert tracking.run_id == first
    tracking.on_run_failed(RuntimeError("stop"))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("retried").experiment_id
    assert [r.info.run_id for r in client.search_runs([experiment])] == [first]
    assert client.get_run(first).info.status == "FAILED"
