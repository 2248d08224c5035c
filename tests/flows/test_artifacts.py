"""Prefect <-> MLflow link helpers: artifact keys per config, flow-run tags, link text for local and server stores."""

import pytest
from prefect.settings import PREFECT_UI_URL, temporary_settings

from flows.artifacts import artifact_key, current_origin, flow_run_tags, flow_run_url
from flows.cli import _next_line


def test_artifact_keys_are_namespaced_by_config_and_use_only_what_prefect_allows():
    assert artifact_key("digits", "results") != artifact_key("patches", "results")
    assert artifact_key("My_Digits.v2", "mlflow-run") == "my-digits-v2-mlflow-run"


def test_flow_run_tags_name_the_run_and_the_deployment_with_keys_the_mlflow_ui_shows_whole():
    tags = flow_run_tags("abc-123", "digits-nightly")
    assert tags == {"sae.flow_run": "abc-123", "sae.deployment": "digits-nightly"}
    assert all(len(key) <= 15 for key in tags)  # MLflow's tag chips cut longer keys beside long values
    assert flow_run_tags(None) == {}


def test_the_flow_run_page_is_linked_from_the_description_not_a_tag():
    with temporary_settings({PREFECT_UI_URL: "http://127.0.0.1:4321"}):
        assert flow_run_url("abc-123") == "http://127.0.0.1:4321/runs/flow-run/abc-123"
    origin = current_origin("digits-1205-120000", search="the best config of search [t](#/x)")  # outside a flow
    assert origin.flow_run is None and origin.lines() == ["Config: the best config of search [t](#/x)."]


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
