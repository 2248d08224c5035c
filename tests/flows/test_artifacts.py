"""Prefect <-> MLflow link helpers: artifact keys per config, flow-run tags, link text for local and server stores."""

import pytest
from prefect.settings import PREFECT_UI_URL, temporary_settings

from flows.artifacts import artifact_key, flow_run_tags
from flows.cli import _next_line


def test_artifact_keys_are_namespaced_by_config_and_use_only_what_prefect_allows():
    assert artifact_key("digits", "results") != artifact_key("patches", "results")
    assert artifact_key("My_Digits.v2", "mlflow-run") == "my-digits-v2-mlflow-run"


def test_flow_run_tags_name_the_run_its_page_and_the_deployment():
    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4321"}):
        tags = flow_run_tags("abc-123", "digits-nightly")
    assert tags == {"sae.prefect.flow_run_id": "abc-123",
                    "sae.prefect.flow_run_url": "http://127.0.0.1:4321/runs/flow-run/abc-123",
                    "sae.prefect.deployment": "digits-nightly"}
    assert flow_run_tags(None) == {}


@pytest.mark.parametrize(("uri", "expected"), [
    ("http://mlflow.internal:5000", "MLflow run: http://mlflow.internal:5000/#/experiments/3/runs/r1?workflowType=machine_learning"),
    ("sqlite:///{cwd}/mlflow.db", "Next: `sae-pipeline ui` (or `make ui` in the checkout), then open the MLflow run: "
                                  "http://127.0.0.1:5000/#/experiments/3/runs/r1?workflowType=machine_learning"),
    ("sqlite:////elsewhere/runs.db", "Next: `MLFLOW_TRACKING_URI=sqlite:////elsewhere/runs.db sae-pipeline ui`, then "
                                     "open the MLflow run: http://127.0.0.1:5000/#/experiments/3/runs/r1?workflowType=machine_learning"),
])
def test_the_cli_next_line_points_at_the_run_on_a_server_and_says_how_to_serve_a_local_store(
        uri, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert _next_line(uri.format(cwd=tmp_path), "3", "r1") == expected
