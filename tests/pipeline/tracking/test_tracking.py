"""MLflow tracking of a pipeline run, checked through MlflowClient on a temporary sqlite store."""

import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy
from mlflow import MlflowClient
from pytorch_lightning.callbacks import Callback
from safetensors.numpy import load_file

from pipeline.config import PipelineConfig
from pipeline.data.loading import load_data
from pipeline.errors import InputError
from pipeline.run.greedy import evaluate_run, pretrain_stack, stack_encoder, train_layer
from pipeline.run.hooks import CompositeHooks, PipelineHooks
from pipeline.serving.export import export_encoder, load_exported
from pipeline.tracking.encoders import resolve_encoder
from pipeline.tracking.markdown import external_links, mentions
from pipeline.tracking.runs import MlflowTracking
from pipeline.tracking.store import artifact_location, create_sqlite_store
from pipeline.tracking.uris import resolve_tracking_uri
from pipeline.tracking.versions import weights_digest

EPOCHS = 3
OVERRIDES = ["defaults.lr=0.01", "layers.1.target=0.2"]
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
    tracking = MlflowTracking(overrides=OVERRIDES, run_tags={"prefect.flow_run_id": "f-123"})
    result = pretrain_stack(config(uri), tracking)
    client = MlflowClient(uri)
    return result, client, client.get_run(result.tracked.run_id)


def children(client, parent):
    found = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in found}


def test_parent_run_is_named_after_the_config_and_has_layer_and_finetune_children(run):
    _, client, parent = run
    assert re.fullmatch(r"tracked-\d{4}-\d{6}", parent.info.run_name) and parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == "f-123"  # run_tags reach the parent
    kids = children(client, parent)
    assert set(kids) == {"layer-1", "layer-2", "finetune"}
    assert all(k.info.status == "FINISHED" for k in kids.values())


def test_artifacts_go_beside_the_sqlite_database(run, store):
    _, _, parent = run
    _, root = store
    assert parent.info.artifact_uri.startswith((root / "mlruns" / "tracked").as_uri())


def test_the_experiment_is_tagged_for_model_training_and_says_how_to_tell_its_runs_apart(run):
    _, client, parent = run
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "`sae.overrides`" in experiment.tags["mlflow.note.content"]


def test_the_description_holds_headline_overrides_registry_outcome_what_was_trained_and_results(run):
    result, _, parent = run
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"**encoder.test_accuracy = {result.headline()[1]:.4g}** (higher is better)\n\n"
                           "Overrides: `--set defaults.lr=0.01` `--set layers.1.target=0.2`")
    assert "Registry: `tracked-encoder` version 1 `@champion`: no version holds `@champion` yet" in note
    assert "Trained: 64 → 16 → 8 (kl, kl) on `digits`: " in note
    table = note.split("```\n")[1]  # fixed-width text: MLflow renders markdown tables without cell padding
    assert table.startswith("layer       shape       sparsity") and "\nfine-tuned  softmax 10  supervised: epoch " in table
    assert parent.data.tags["sae.overrides"] == "defaults.lr=0.01 layers.1.target=0.2"


def test_no_description_links_outside_the_users_servers_or_mentions_anyone(run):
    result, client, parent = run
    version = client.get_model_version("tracked-encoder", result.tracked.registration.model_version)
    kids = children(client, parent).values()
    texts = [parent.data.tags["mlflow.note.content"], version.description,
             *(k.data.tags["mlflow.note.content"] for k in kids)]
    texts += [client.get_logged_model(uri.removeprefix("models:/")).tags["mlflow.note.content"]
              for uri in result.tracked.logged_models.values()]
    assert "@champion" in version.description  # an alias is named, as a code span
    for text in texts:
        assert mentions(text) == [], text  # MLflow's markdown links a bare @word to github.com/word
        assert external_links(text, allowed=[]) == [], text  # a local store: links stay in the MLflow UI


def key_shown_whole(key: str, value: str, limit: int = 30) -> bool:
    """MLflow's KeyValueTag (3.17): a pair over ``limit`` characters cuts the longer side, or both when both
    are over half the limit."""
    return len(key) + len(value) <= limit or (len(key) <= limit // 2 and len(key) <= len(value))


def test_tag_keys_are_shown_whole_on_the_run_and_version_pages(run):
    result, client, parent = run
    tags = [t for r in [parent, *children(client, parent).values()] for t in r.data.tags.items()]
    tags += client.get_model_version("tracked-encoder", result.tracked.registration.model_version).tags.items()
    cut = [(k, v) for k, v in tags if not k.startswith("mlflow.") and not key_shown_whole(k, v)]
    assert cut == []


def test_params_hold_each_layers_resolved_settings_once_with_one_spelling_for_nulls(run):
    result, client, parent = run
    params = parent.data.params
    assert params["layers.1.hidden"] == "8" and params["layers.1.target"] == "0.2"
    assert params["layers.0.epochs"] == str(EPOCHS) and params["layers.0.trainer.accelerator"] == "cpu"
    assert params["data.source"] == "digits" and params["finetune.epochs"] == "2"
    assert not [k for k in params if k.startswith(("defaults.", "trainer."))]  # folded into layers.N.*
    assert params["register.model"] == "null" and params["layers.0.tied"] == "false"
    assert params["layers.0.early_stopping_patience"] == "null" and params["layers.0.k"] == "null"
    assert not [k for k, v in params.items() if v in ("None", "True", "False")]
    assert {"version.torch", "version.pytorch-lightning", "version.mlflow", "version.sae-pipeline"} <= set(params)
    if "git_commit" in params:
        assert len(params["git_commit"]) == 40
    # A layer run's settings: the parent's layers.N.* params and the layer's description, no params of its own
    # (MLflow 3.17 labels the loss image chart with every param of the run, covering the chart).
    layer2 = children(client, parent)["layer-2"].data
    assert layer2.params == {}
    note = layer2.tags["mlflow.note.content"]
    assert note.startswith("**layer 2: 16 → 8**") and "`target=0.2`" in note and "`trainer.accelerator=cpu`" in note
    assert "`k=null`" in note and "`index=" not in note
    finetune = children(client, parent)["finetune"].data.params
    assert finetune["epochs"] == "2" and not [v for v in finetune.values() if v in ("None", "True", "False")]


LAYER_CHARTS = {"loss", "val_loss", "val_fvu", "val_l0", "val_rho_hat_mean"}  # did the layer train well?


def steps(client, run_id, key):
    return [m.step for m in client.get_metric_history(run_id, key)]


def test_layer_runs_chart_five_series_from_epoch_one_plus_one_loss_image_and_describe_their_test_numbers(run):
    result, client, parent = run
    layer1 = children(client, parent)["layer-1"]
    run_id = layer1.info.run_id
    assert set(layer1.data.metrics) == LAYER_CHARTS  # one screen of charts, not 31
    for key in LAYER_CHARTS:  # epochs counted from 1, every one charted
        assert steps(client, run_id, key) == list(range(1, EPOCHS + 1)), key
    last = client.get_metric_history(run_id, "val_fvu")[-1].value
    assert last == float(f"{result.layers[0].history[-1]['val_fvu']:.6g}")  # six significant digits
    images = sorted(a.path for a in client.list_artifacts(run_id, "images"))
    assert len(images) == 2 and all(p.startswith(f"images/loss_and_val_loss+step+{EPOCHS}+timestamp+") for p in images)
    assert layer1.data.tags["mlflow.loggedImages"] == "true"
    note = layer1.data.tags["mlflow.note.content"]
    assert note.startswith("**layer 1: 64 → 16**, kl, target 0.1, β 3") and f"FVU {result.layers[0].test_metrics['fvu']:.4g}" in note


def test_the_finetune_run_charts_its_epochs_from_the_start_and_keeps_a_few_summaries(run):
    result, client, parent = run
    finetune = children(client, parent)["finetune"]
    run_id = finetune.info.run_id
    competed = {f"val_accuracy_{method}" for method in result.finetuned.candidates}  # methods that competed
    assert set(finetune.data.metrics) == {"loss", "accuracy", "val_accuracy", "test_accuracy_before",
                                          "test_accuracy_after", "best_epoch"} | competed
    assert steps(client, run_id, "loss") == [1, 2] and sorted(steps(client, run_id, "val_accuracy")) == [0, 1, 2]
    start = [m.value for m in client.get_metric_history(run_id, "val_accuracy") if m.step == 0]
    assert start == [result.finetuned.val_accuracy_before]  # step 0: the frozen-codes softmax, before fine-tuning
    assert finetune.data.metrics["test_accuracy_after"] == pytest.approx(result.finetuned.test_accuracy_after, abs=1e-4)
    best = result.finetuned.best_epoch
    assert finetune.data.metrics["best_epoch"] == (0 if best is None else best + 1)  # counted from 1, as printed
    assert f"epoch {best + 1} kept" in finetune.data.tags["mlflow.note.content"] if best is not None else True


def test_parent_metrics_are_the_headline_first_then_probes_and_wall_time_each_logged_once(run):
    result, client, parent = run
    metrics = parent.data.metrics
    assert set(metrics) == {"headline/encoder.test_accuracy", "probe_accuracy.raw", "probe_accuracy.layer_1",
                            "probe_accuracy.layer_2", "seconds"}
    assert metrics["headline/encoder.test_accuracy"] == round(result.finetuned.test_accuracy_after, 4)  # 4 digits
    assert metrics["probe_accuracy.layer_2"] == pytest.approx(result.probes["layer_2"], abs=1e-4)
    for key in metrics:
        assert steps(client, parent.info.run_id, key) == [0], key


def test_parent_artifacts_hold_config_and_results_table_and_layer_runs_hold_their_plots(run, tmp_path):
    result, client, parent = run
    run_id = parent.info.run_id
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.yaml", "results.txt", "results.md"} <= top and "plots" not in top
    kids = children(client, parent)
    layer1, layer2 = kids["layer-1"].info.run_id, kids["layer-2"].info.run_id
    assert {a.path for a in client.list_artifacts(layer1)} == {"history.json", "images", "plots", "weights"}
    assert {a.path for a in client.list_artifacts(layer1, "plots")} == {
        "plots/filter_grid.png", "plots/loss_curve.png", "plots/rho_hat_histogram.png"}
    assert {a.path for a in client.list_artifacts(layer2, "plots")} == {
        "plots/loss_curve.png", "plots/rho_hat_histogram.png"}  # layer 2's inputs are codes, not images
    history = json.loads(Path(client.download_artifacts(layer2, "history.json", str(tmp_path))).read_text())
    assert len(history) == EPOCHS and history[0]["loss"] == result.layers[1].history[0]["loss"]
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


def test_the_finetuned_encoder_is_registered_as_champion_with_a_few_tags_and_a_description(run):
    result, client, parent = run
    reg = result.tracked.registration
    assert reg.alias == "champion" and result.tracked.model_uri == "models:/tracked-encoder@champion"
    assert reg.new_version
    version = client.get_model_version_by_alias("tracked-encoder", "champion")
    assert str(version.version) == reg.model_version
    assert set(version.tags) == {"headline.metric", "headline.value", "headline.greater_is_better", "run_id",
                                 "weights_sha256", "kind", "reason"}  # a handful
    assert version.tags["run_id"] == parent.info.run_id and version.tags["kind"] == "encoder-finetuned"
    assert version.tags["headline.value"] == f"{result.finetuned.test_accuracy_after:.6g}"
    assert version.tags["weights_sha256"] == weights_digest(result.finetuned.encoder)
    link = f"#/experiments/{parent.info.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    head, alias, run_line, trained, overrides, inputs = version.description.split("\n\n")
    assert head == f"encoder.test_accuracy {result.headline()[1]:.4g} (higher is better)"  # lists show it raw
    assert alias == "`@champion`: no version holds `@champion` yet"
    assert run_line == f"Run: [{parent.info.run_name}]({link})"
    assert trained.startswith("Trained: 64 → 16 → 8 (kl, kl), fine-tuned (register.encoder=best") and \
        "on `digits`: " in trained
    assert overrides == "Overrides: `--set defaults.lr=0.01` `--set layers.1.target=0.2`"
    assert inputs.startswith("Input: 64 numeric columns in this order: `pixel_0_0` … `pixel_7_7`: a DataFrame")


def test_a_version_is_linked_to_its_logged_model_both_ways(run):
    result, client, parent = run
    version = client.get_model_version("tracked-encoder", result.tracked.registration.model_version)
    model_id = result.tracked.logged_models["encoder-finetuned"].removeprefix("models:/")
    assert version.source == f"models:/{model_id}"
    logged = client.get_logged_model(model_id)
    linked = json.loads(logged.tags["mlflow.modelVersions"])  # what the logged model's page lists
    assert [(v["name"], str(v["version"])) for v in linked] == [("tracked-encoder", str(version.version))]
    assert logged.source_run_id == parent.info.run_id


def test_both_logged_models_carry_the_parent_runs_summary_metrics(run):
    result, client, parent = run
    for uri in result.tracked.logged_models.values():  # logged while the probes ran, before the summary
        metrics = {m.key: m.value for m in client.get_logged_model(uri.removeprefix("models:/")).metrics}
        assert metrics["probe_accuracy.layer_1"] == pytest.approx(result.probes["layer_1"], abs=1e-4)
        assert set(metrics) == set(parent.data.metrics)  # the run page's Models column links each of them


def test_the_input_example_names_the_training_columns_and_the_signature_counts_them(run, store):
    result, _, _ = run
    uri, _ = store
    mlflow.set_tracking_uri(uri)
    info = mlflow.models.get_model_info("models:/tracked-encoder@champion")
    assert len(info.signature.inputs.inputs) == len(result.data.feature_names) == 64
    example = mlflow.pyfunc.load_model("models:/tracked-encoder@champion").input_example
    assert list(example.columns) == result.data.feature_names  # pixel_0_0, ...
    (codes,) = info.signature.outputs.inputs
    assert (codes.type, codes.shape) == (np.dtype(np.float32), (-1, 8))


def test_the_registered_model_loads_three_ways_and_agrees_with_the_encoder(run, store, tmp_path):
    result, _, _ = run
    uri, _ = store
    X = result.data.X_test[:50]
    expected = result.registered_encoder.transform(X)
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/tracked-encoder@champion")
    for array in (np.asarray(X, np.float32), np.asarray(X, np.float64), np.asarray(X).tolist()):
        np.testing.assert_allclose(model.predict(array), expected, atol=1e-6)  # columns in order
    frame = pd.DataFrame(X, columns=result.data.feature_names)
    np.testing.assert_allclose(model.predict(frame), expected, atol=1e-6)
    np.testing.assert_allclose(model.predict(frame[frame.columns[::-1]]), expected, atol=1e-6)  # matched by name
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
    worse_run = client.get_run(worse.tracked.run_id).data.tags
    assert worse_run["sae.registry"] == f"version {worse.tracked.registration.model_version} @challenger"
    assert "does not beat" in worse_run["mlflow.note.content"]


def test_a_rerun_with_identical_weights_adds_no_version_and_says_so(store):
    uri, _ = store
    cfg = config(uri, layers=[{"hidden": 4}], finetune={"epochs": 0}, register={"model": "repeat-encoder"})
    first = pretrain_stack(cfg, MlflowTracking())
    again = pretrain_stack(cfg, MlflowTracking())  # same data, seed and settings: the same weights on CPU
    client = MlflowClient(uri)
    assert [str(v.version) for v in client.search_model_versions("name = 'repeat-encoder'")] == ["1"]
    reg = again.tracked.registration
    assert (reg.new_version, reg.model_version, reg.alias) == (False, "1", "champion")
    assert reg.reason == "weights identical to version 1 (@champion): no new version added"
    tags = client.get_run(again.tracked.run_id).data.tags
    assert tags["sae.registry"] == "unchanged: version 1"
    assert ("Registry: `repeat-encoder` unchanged: weights identical to version 1 (`@champion`): no new version "
            "added.") in tags["mlflow.note.content"]
    assert first.tracked.registration.new_version


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
    assert f"**failed**: `{error.__name__}" in parent.data.tags["mlflow.note.content"]
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
    client = MlflowClient(uri)
    layer1 = children(client, client.get_run(tracking.run_id))["layer-1"]
    # The layer's plots are made when the layer is recorded, not at the end of the run.
    assert {a.path for a in client.list_artifacts(layer1.info.run_id, "plots")} == {
        "plots/filter_grid.png", "plots/loss_curve.png", "plots/rho_hat_histogram.png"}
    result = evaluate_run(cfg, data, [cached], stack_encoder(cfg, data, [cached]), None, hooks=tracking, started=0.0)
    tracking.on_register(result)
    layer1 = client.get_run(layer1.info.run_id)
    assert layer1.data.tags["sae.reused"] == "true" and "`hidden=4`" in layer1.data.tags["mlflow.note.content"]
    assert steps(client, layer1.info.run_id, "loss") == list(range(1, EPOCHS + 1))
    assert set(layer1.data.metrics) == LAYER_CHARTS  # the same charts as a layer trained in this run
    assert "reused from the layer cache" in layer1.data.tags["mlflow.note.content"]


def test_the_tracking_uri_comes_from_config_then_environment_then_the_working_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert resolve_tracking_uri(None) == "http://127.0.0.1:5999"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.chdir(tmp_path)  # like `mlflow ui`: the store follows the working directory, not the checkout
    assert resolve_tracking_uri(None) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert artifact_location(resolve_tracking_uri(None), "digits") == (tmp_path / "mlruns" / "digits").as_uri()


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


def test_a_given_run_name_and_tags_reach_the_parent_and_the_run_url_can_use_a_ui_address(store):
    uri, _ = store
    cfg = config(uri, name="named")
    tracking = MlflowTracking(register=False, run_name="named-digits-20261127-120000",
                              run_tags={"prefect.flow_run.id": "f-1", "prefect.deployment": "nightly",
                                        "prefect.flow_run.url": "http://127.0.0.1:4200/runs/flow-run/f-1"})
    assert tracking.run_url("http://127.0.0.1:5000") is None  # no run yet
    tracking.on_run_start(cfg, load_data(cfg.data, cfg.seed))
    parent = MlflowClient(uri).get_run(tracking.run_id)
    assert parent.info.run_name == tracking.run_name == "named-digits-20261127-120000"
    assert {k: parent.data.tags[k] for k in ("prefect.flow_run.id", "prefect.deployment", "prefect.flow_run.url")} \
        == {"prefect.flow_run.id": "f-1", "prefect.deployment": "nightly",
            "prefect.flow_run.url": "http://127.0.0.1:4200/runs/flow-run/f-1"}
    assert tracking.run_url() is None  # a sqlite store has no web address of its own
    experiment = parent.info.experiment_id  # the query opens the UI's model-training pages, not GenAI's
    assert tracking.run_url("http://127.0.0.1:5000/") == (
        f"http://127.0.0.1:5000/#/experiments/{experiment}/runs/{tracking.run_id}?workflowType=machine_learning")
    tracking.on_run_failed(RuntimeError("stop"))


def test_a_new_sqlite_store_gets_mlflows_full_schema_and_default_experiment_without_a_side_file(tmp_path):
    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    db = tmp_path / "fresh.db"
    create_sqlite_store(f"sqlite:///{db}")
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    assert _get_schema_version(engine) == _get_latest_schema_revision()  # MLflow opens it without migrating
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"  # one sync per commit
    engine.dispose()
    assert [p.name for p in tmp_path.iterdir()] == ["fresh.db"]
    default = MlflowClient(f"sqlite:///{db}").get_experiment("0")  # MLflow adds it on first open, as always
    assert default.name == "Default"


def test_an_existing_store_is_left_untouched(tmp_path):
    db = tmp_path / "old.db"
    db.write_bytes(b"")
    create_sqlite_store(f"sqlite:///{db}")
    create_sqlite_store(f"sqlite:///{tmp_path}/missing-dir/x.db")  # MLflow reports a missing folder itself
    assert db.read_bytes() == b"" and sorted(p.name for p in tmp_path.iterdir()) == ["old.db"]


def test_the_first_client_waits_for_a_store_being_created_on_a_thread_and_gets_its_error(tmp_path):
    import threading
    import time

    from pipeline.tracking import store as store_module

    started = threading.Event()

    def slow(uri):
        started.set()
        time.sleep(0.3)
        create_sqlite_store(uri)

    uri = f"sqlite:///{tmp_path}/soon.db"
    store_module.create_sqlite_store_soon(uri, slow)
    started.wait()
    assert not (tmp_path / "soon.db").exists()  # still being built
    assert store_module.client(uri).get_experiment("0").name == "Default"

    def broken(uri):
        raise PermissionError("cannot write the store")

    store_module.create_sqlite_store_soon(f"sqlite:///{tmp_path}/broken.db", broken)
    with pytest.raises(PermissionError, match="cannot write the store"):
        store_module.client(f"sqlite:///{tmp_path}/broken.db")


def test_warm_ups_run_after_the_store_is_made_and_their_failures_are_harmless(tmp_path):
    import threading

    from pipeline.tracking import store as store_module

    release, order = threading.Event(), []

    def slow_warm_up():
        release.wait(30)
        order.append("warm")

    def failing_warm_up():
        raise RuntimeError("a warm-up that fails only loses its head start")

    uri = f"sqlite:///{tmp_path}/warm.db"
    thread = store_module.create_sqlite_store_soon(uri, then=(failing_warm_up, slow_warm_up))
    assert store_module.client(uri).get_experiment("0").name == "Default"  # not held up by the warm-ups
    assert order == [] and thread.is_alive()
    release.set()
    thread.join(30)
    assert order == ["warm"]


def test_two_threads_building_the_same_new_store_leave_one_sound_database(tmp_path):
    import threading

    from mlflow.store.db.utils import _get_latest_schema_revision, _get_schema_version

    uri = f"sqlite:///{tmp_path}/raced.db"
    builders = [threading.Thread(target=create_sqlite_store, args=(uri,)) for _ in range(2)]
    for builder in builders:
        builder.start()
    for builder in builders:
        builder.join()
    assert [p.name for p in tmp_path.iterdir()] == ["raced.db"]  # the loser's side file is gone
    engine = sqlalchemy.create_engine(uri)
    assert _get_schema_version(engine) == _get_latest_schema_revision()
    engine.dispose()


def test_the_model_logging_warm_up_builds_the_package_map_mlflow_checks_requirements_with():
    from mlflow.utils import requirements_utils

    from pipeline.tracking.pyfunc import warm_requirement_checks

    warm_requirement_checks()  # a private MLflow function: this fails loudly if a new MLflow moves it
    assert requirements_utils._MODULES_TO_PACKAGES and "torch" in requirements_utils._MODULES_TO_PACKAGES
