"""A served deployment on an interval schedule runs the flow on a real Prefect server and registers a model."""

import re
import sys
from pathlib import Path

import pytest
from _support import (
    api,
    background,
    client_env,
    gone,
    running_servers,
    server_pids,
    tiny_config,
    wait_for_completed_run,
)
from mlflow import MlflowClient

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_scheduled_run_completes_tracks_and_registers(tmp_path):
    with running_servers(tmp_path / "servers", runner=False) as server_env:
        pids = server_pids(tmp_path / "servers")
        env = client_env(tmp_path, server_env)
        config = tiny_config(tmp_path, "e2e-schedule")
        log = tmp_path / "serve.log"
        command = [sys.executable, "-m", "flows.cli", "serve", str(config), "--interval", "10", "--name", "every-10s"]
        with background(command, env, log, cwd=tmp_path) as serve:
            run = wait_for_completed_run(env, 180, log, serve)
        # Stopped (SIGTERM, as Ctrl-C): the deployment paused and its schedule off, not "active" beside a paused
        # switch; its entrypoint absolute (the same wherever serve started) and its description says what it runs.
        (deployment,) = api(env, "/deployments/filter", {"deployments": {"name": {"any_": ["every-10s"]}}})
        assert deployment["paused"] and [s["active"] for s in deployment["schedules"]] == [False]
        assert Path(deployment["entrypoint"].split(":")[0]).is_absolute()
        assert "config `e2e-schedule` on data `digits`" in deployment["description"]
        assert re.fullmatch(r"e2e-schedule-\d{4}-\d{6}", run["name"])
        assert run["parameters"]["config"]["name"] == "e2e-schedule"
        assert run["auto_scheduled"] is True  # fired by the schedule, not triggered by hand

        client = MlflowClient(server_env["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name("e2e-schedule")
        finished = [r for r in client.search_runs([experiment.experiment_id])
                    if r.info.status == "FINISHED" and "mlflow.parentRunId" not in r.data.tags]
        versions = client.search_model_versions("name='e2e-schedule-encoder'")
        assert finished and versions
        assert {v.run_id for v in versions} & {r.info.run_id for r in finished}

    # Everything started here is stopped: both servers (no warm runner: serve runs flows in its own processes)
    # and the serve process (with its flow-run children).
    assert len(pids) == 2 and all(gone(pid) for pid in pids)
    assert not list((tmp_path / "servers").glob("*.pid"))
    assert serve.poll() is not None and gone(serve.pid)
