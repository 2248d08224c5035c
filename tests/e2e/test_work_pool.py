"""Team setup: Prefect server + process work pool + worker, MLflow server with its own artifact root."""

import re
import sys

import pytest
from _support import (
    api,
    background,
    cli,
    client_env,
    gone,
    running_servers,
    server_pids,
    tiny_config,
    wait_for_completed_run,
)
from mlflow import MlflowClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
POOL = "e2e-pool"


def test_a_worker_runs_the_deployed_flow_and_mlflow_stores_artifacts_on_the_server(tmp_path):
    servers_dir = tmp_path / "servers"
    with running_servers(servers_dir, runner=False) as server_env:
        pids = server_pids(servers_dir)
        env = client_env(tmp_path, server_env)
        config = tiny_config(tmp_path, "e2e-pool")
        out = cli("deploy", str(config), "--pool", POOL, "--cron", "0 3 * * *", "--name", "nightly", env=env)
        assert f"work pool {POOL!r}" in out
        assert api(env, f"/work_pools/{POOL}")["type"] == "process"
        (deployment,) = api(env, "/deployments/filter", {"deployments": {"name": {"any_": ["nightly"]}}})
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 3 * * *"]
        api(env, f"/deployments/{deployment['id']}/create_flow_run", {})  # like `prefect deployment run`

        log = tmp_path / "worker.log"
        worker_env = client_env(tmp_path, server_env, PREFECT_WORKER_QUERY_SECONDS="2")
        command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL, "--type", "process"]
        with background(command, worker_env, log, cwd=tmp_path) as worker:
            run = wait_for_completed_run(env, 150, log, worker)
        assert run["deployment_id"] == deployment["id"] and re.fullmatch(r"e2e-pool-\d{4}-\d{6}", run["name"])

        client = MlflowClient(server_env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("e2e-pool")
        (parent,) = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" not in r.data.tags]
        assert parent.info.status == "FINISHED"
        assert parent.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied through the server
        # Linked both ways under one name: the parent names the flow run and its deployment, the flow run links
        # to the parent on the MLflow server (no local-store hint).
        tags, prefect_ui = parent.data.tags, env["PREFECT_API_URL"].removesuffix("/api")
        assert parent.info.run_name == run["name"] and tags["sae.flow_run"] == run["id"]
        assert f"]({prefect_ui}/runs/flow-run/{run['id']})" in tags["mlflow.note.content"]
        assert tags["sae.deployment"] == "nightly"
        (link,) = api(env, "/artifacts/filter", {"artifacts": {"key": {"any_": ["e2e-pool-mlflow-run"]}}})
        page = (f"{server_env['MLFLOW_TRACKING_URI']}/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}"
                "?workflowType=machine_learning")  # the model-training view, not GenAI's
        assert link["flow_run_id"] == run["id"] and link["task_run_id"] is None
        assert link["data"] == f"[MLflow run {run['name']}]({page})"
        (version,) = client.search_model_versions("name='e2e-pool-encoder'")
        assert version.run_id == parent.info.run_id
    stored = {p.name for p in (servers_dir / "mlflow" / "artifacts").rglob("*") if p.is_file()}
    assert {"config.yaml", "results.md", "MLmodel"} <= stored  # the server's own artifact root holds them
    assert len(pids) == 2 and all(gone(pid) for pid in pids) and gone(worker.pid)  # both servers and the worker
