"""MLflow's serving check runs once a run: on the encoder, not again on the fine-tuned encoder beside it."""

import threading

import mlflow
import pytest
from mlflow.models import utils as model_utils

from pipeline.tracking import serving_check
from pipeline.tracking.pyfunc import log_encoder_model
from pipeline.tracking.runs import MlflowTracking
from pipeline.tracking.store import client
from tests.pipeline.tracking.test_portable_encoder import sample, stacked


@pytest.fixture
def checks(monkeypatch):
    """The models MLflow's serving check loaded (it still runs for real)."""
    seen = []
    real = model_utils._validate_serving_input

    def counted(model_uri, serving_input):
        seen.append(str(model_uri))
        return real(model_uri, serving_input)

    monkeypatch.setattr(model_utils, "_validate_serving_input", counted)
    return seen


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/m.db"
    yield uri, client(uri).create_run(client(uri).create_experiment("e")).info.run_id
    mlflow.set_tracking_uri(None)


def test_the_check_is_skipped_in_the_block_on_this_thread_only(checks, run):
    uri, run_id = run
    with serving_check.skipped():
        log_encoder_model(stacked(), run_id=run_id, tracking_uri=uri, name="a", input_example=sample(5))
        other = threading.Thread(target=log_encoder_model, args=(stacked(),),
                                 kwargs={"run_id": run_id, "tracking_uri": uri, "name": "b",
                                         "input_example": sample(5)})
        other.start()
        other.join()
    assert len(checks) == 1  # the other thread's model only
    log_encoder_model(stacked(), run_id=run_id, tracking_uri=uri, name="c", input_example=sample(5))
    assert len(checks) == 2  # and every model again after the block


def test_a_run_checks_its_first_model_and_logs_both_with_their_examples(checks, run):
    uri, run_id = run
    tracking = MlflowTracking(uri)
    tracking.run_id, tracking.uri = run_id, uri

    class Finetuned:
        encoder = stacked()

    data = type("Data", (), {"X_train": sample(10)})()
    tracking.on_encoders(data, stacked(), Finetuned())
    assert len(checks) == 1
    files = {name: {f.path for f in client(uri).list_logged_model_artifacts(info.model_id)}
             for name, info in tracking._models[2].items()}
    assert set(files) == {"encoder", "encoder-finetuned"}
    assert all({"input_example.json", "serving_input_example.json", "MLmodel"} <= f for f in files.values())
