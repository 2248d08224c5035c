"""A layer trained with ddp_spawn on two CPU processes is recorded once in MLflow, like a single-process run."""

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack
from pipeline.tracking.runs import MlflowTracking

EPOCHS = 3


def tiny(uri, **trainer):
    return PipelineConfig.from_dict({
        "name": "ddp-tracked", "tracking_uri": uri, "seed": 0,
        "defaults": {"epochs": EPOCHS, "batch_size": 128, "lr": 0.01},
        "trainer": {"accelerator": "cpu", **trainer},
        "layers": [{"hidden": 16}],
        "finetune": {"epochs": 0},
    })


@pytest.fixture
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ENABLE_TELEMETRY", "false")
    monkeypatch.chdir(tmp_path)  # nothing may fall back to a ./mlflow.db in the checkout
    yield f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(None)


@pytest.mark.slow
def test_ddp_spawn_layer_logs_one_child_run_whose_final_loss_matches_one_process(uri):
    ddp = pretrain_stack(tiny(uri, strategy="ddp_spawn", devices=2), MlflowTracking(register=False))
    single = pretrain_stack(tiny(uri, devices=1), MlflowTracking(register=False))
    client = MlflowClient(uri)
    parent = client.get_run(ddp.tracked.run_id)
    assert parent.info.status == "FINISHED"
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert [k.info.run_name for k in kids] == ["layer-1"]
    layer = kids[0]
    assert layer.info.status == "FINISHED"
    history = client.get_metric_history(layer.info.run_id, "loss")
    assert len(history) == len(ddp.layers[0].history) == EPOCHS  # every epoch charted, counted from 1
    final = max(history, key=lambda m: m.step).value
    assert final == pytest.approx(ddp.layers[0].history[-1]["loss"], rel=1e-5)  # six digits logged
    assert final == pytest.approx(single.layers[0].history[-1]["loss"], rel=1e-4)
    all_runs = client.search_runs([parent.info.experiment_id])
    assert sum(r.info.run_name == "layer-1" for r in all_runs) == 2  # one per pipeline run, none from rank 1
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # steps are epochs from 1, as in one process
