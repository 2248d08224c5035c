"""A real ``mlflow server`` on loopback: a pipeline run tracked over HTTP, registered, and encoded from its alias."""

import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.run.greedy import pretrain_stack
from pipeline.tracking.encoders import encode_file
from pipeline.tracking.runs import MlflowTracking
from tests.e2e._support import free_port, serving

pytestmark = pytest.mark.e2e
STARTUP_SECONDS = 90  # ~8 s on an idle machine; much more when the two cores are busy


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Start ``mlflow server`` with a sqlite backend and a local artifact root; always stop its process group."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = str(Path(sys.executable).with_name("mlflow"))
    cmd = [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
           "--default-artifact-root", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    env = {**os.environ, "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with serving(cmd, ready_url=f"{url}/health", log=root / "server.log", env=env, cwd=root,
                 seconds=STARTUP_SECONDS, what="mlflow server"):
        yield url, root


@pytest.fixture(scope="module")
def run(server, tmp_path_factory):
    url, _ = server
    config = PipelineConfig.from_dict({
        "name": "e2e", "tracking_uri": url, "trainer": {"accelerator": "cpu"},
        "defaults": {"epochs": 2, "batch_size": 128, "lr": 0.01},
        "layers": [{"hidden": 16}, {"hidden": 8}], "finetune": {"epochs": 1},
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("cwd"))  # nothing may fall back to a ./mlflow.db in the checkout
        result = pretrain_stack(config, MlflowTracking())
    client = MlflowClient(url)
    return result, client, client.get_run(result.tracked.run_id)


def test_parent_and_child_runs_with_epoch_metrics_are_on_the_server(run):
    result, client, parent = run
    assert parent.info.status == "FINISHED" and parent.info.run_name.startswith("e2e-")
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {k.info.run_name: k for k in kids}
    assert set(by_name) == {"layer-1", "layer-2", "finetune"}
    assert [m.step for m in client.get_metric_history(by_name["layer-2"].info.run_id, "loss")] == [2]
    headline = parent.data.metrics["headline/encoder.test_accuracy"]
    assert headline == pytest.approx(result.finetuned.test_accuracy_after)
    assert result.tracked.run_url.endswith(f"/runs/{parent.info.run_id}?workflowType=machine_learning")


def test_artifacts_and_the_dataset_input_are_on_the_server(run, server):
    _, client, parent = run
    _, root = server
    assert {"config.yaml", "results.md", "results.txt"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    layer1 = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}' "
                                "and tags.mlflow.runName = 'layer-1'")[0]
    assert "plots/loss_curve.png" in {a.path for a in client.list_artifacts(layer1.info.run_id, "plots")}
    assert (root / "artifacts").is_dir()
    assert {d.dataset.name for d in parent.inputs.dataset_inputs} == {"digits", "digits:validation", "digits:test"}


def test_the_model_version_holds_the_champion_alias(run):
    result, client, parent = run
    version = client.get_model_version_by_alias("e2e-encoder", "champion")
    assert str(version.version) == result.tracked.registration.model_version and version.run_id == parent.info.run_id
    assert result.tracked.run_url in version.description  # the server's run page, linked from the version


def test_encode_works_against_the_champion_alias_from_the_server(run, server, tmp_path):
    result, _, _ = run
    url, _ = server
    X = np.asarray(result.data.X_test[:40])
    np.save(tmp_path / "x.npy", X)
    out = encode_file("models:/e2e-encoder@champion", tmp_path / "x.npy", tmp_path / "codes.parquet", tracking_uri=url)
    np.testing.assert_allclose(pd.read_parquet(out).to_numpy(), result.registered_encoder.transform(X), atol=1e-6)
