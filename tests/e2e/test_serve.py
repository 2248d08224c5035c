"""``mlflow models serve`` of the champion answers /invocations with codes, in a process that cannot import the project."""

import json
import os
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient

from pipeline.tracking.pyfunc import log_encoder_model
from pipeline.tracking.registry import register_model
from pipeline.tracking.versions import Headline
from sae.config import SAEConfig
from sae.model import SparseAutoencoder
from sae.scaling import Scaling
from sae.stack import StackedEncoder
from tests.e2e._support import free_port, serving
from tests.refuse_project import REFUSE_PROJECT

pytestmark = pytest.mark.e2e
STARTUP_SECONDS = 180  # importing mlflow + torch in the server takes 10-60 s on two busy cores
NAMES = [f"pixel_{i}" for i in range(16)]
# sitecustomize on the server's PYTHONPATH refuses the project's packages: the served model can only be using
# the code it bundles.


@pytest.fixture(scope="module", params=["named", "unnamed"])
def champion(request, tmp_path_factory):
    """A 16 -> 8 -> 4 encoder registered as serve-encoder@champion in a temp sqlite store, trained on data with
    column names (``pixel_<i>``) or without (the readers' made-up ``x<i>``)."""
    root = tmp_path_factory.mktemp("serve-store")
    uri = f"sqlite:///{root}/mlflow.db"
    torch.manual_seed(0)
    layers = [SparseAutoencoder(SAEConfig(16, 8)), SparseAutoencoder(SAEConfig(8, 4))]
    names = NAMES if request.param == "named" else [f"x{i}" for i in range(16)]
    encoder = StackedEncoder.from_autoencoders(Scaling.identity(16), layers, meta={"feature_names": names})
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        client = MlflowClient(uri)
        run = client.create_run(client.create_experiment("serve"))
        info = log_encoder_model(encoder, run_id=run.info.run_id, tracking_uri=uri)
        register_model(client, name="serve-encoder", source=info.model_uri, run_id=run.info.run_id,
                       headline=Headline("acc", 0.5, True), model_id=info.model_id)
        mlflow.set_tracking_uri(None)
    return uri, encoder, root


@pytest.fixture(scope="module")
def served(champion):
    uri, _, root = champion
    refuse = root / "refuse"
    refuse.mkdir()
    (refuse / "sitecustomize.py").write_text(REFUSE_PROJECT)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/serve-encoder@champion",
           "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    bin_dir = str(Path(sys.executable).parent)  # serve execs `uvicorn` from PATH, as in an activated venv
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(refuse), "MLFLOW_ENABLE_TELEMETRY": "false",
           "DO_NOT_TRACK": "1", "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    with serving(cmd, ready_url=f"{url}/ping", log=root / "serve.log", env=env, cwd=elsewhere,
                 seconds=STARTUP_SECONDS, what="mlflow models serve"):
        yield url


def invoke(url: str, payload: dict) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def payloads(X: np.ndarray, names: list[str]) -> dict[str, dict]:
    """The request bodies downstream code sends: a DataFrame by the feature names (in and out of order) and
    without names, a numpy array as ``inputs`` (float32, as a client serialises it), a list of rows as ``instances``."""
    return {
        "dataframe_split": {"dataframe_split": {"columns": names, "data": X.tolist()}},
        "dataframe_split, columns reversed": {"dataframe_split": {"columns": names[::-1], "data": X[:, ::-1].tolist()}},
        "dataframe_split, no column names": {"dataframe_split": {"data": X.tolist()}},
        "dataframe_records": {"dataframe_records": [dict(zip(names, row, strict=True)) for row in X.tolist()]},
        "inputs, float32 array": {"inputs": X.astype(np.float32).tolist()},
        "instances, list of lists": {"instances": X.tolist()},
    }


def test_the_served_champion_answers_every_input_form_with_the_encoders_codes(champion, served):
    _, encoder, _ = champion
    X = np.random.default_rng(0).uniform(0, 1, size=(6, 16))
    for form, payload in payloads(X, encoder.meta["feature_names"]).items():
        status, body = invoke(served, payload)
        assert status == 200, (form, body)
        tolerance = 1e-5 if "float32" in form else 1e-6
        np.testing.assert_allclose(np.array(body["predictions"]), encoder.transform(X), atol=tolerance, err_msg=form)


def test_the_served_model_refuses_rows_with_too_few_columns_or_a_named_column_missing(champion, served):
    if champion[1].meta["feature_names"] != NAMES:
        pytest.skip("names matter only for data that had them")
    status, body = invoke(served, {"dataframe_split": {"columns": NAMES[:-1], "data": [[0.5] * 15]}})
    assert status == 400 and "16 inputs" in body["message"], body
    renamed = [*NAMES[:-1], "label"]
    status, body = invoke(served, {"dataframe_split": {"columns": renamed, "data": [[0.5] * 16]}})
    assert status == 400 and "lacks feature column(s) ['pixel_15']" in body["message"], body
