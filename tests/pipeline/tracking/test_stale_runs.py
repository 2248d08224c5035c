"""Runs are never left RUNNING: a dead owner's runs are closed at the next start, failures are recorded first."""

import os
import signal
import socket
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from pipeline.config import PipelineConfig
from pipeline.config.search import SearchConfig
from pipeline.data.loading import load_data
from pipeline.process import interrupts
from pipeline.tracking.runs import MlflowTracking
from pipeline.tracking.stale import HOST_TAG, PID_TAG, REASON, close_stale_runs, pid_alive

CONFIG = {"name": "stale", "data": {"source": "digits", "max_samples": 100}, "layers": [{"hidden": 4}],
          "trainer": {"accelerator": "cpu"}, "finetune": {"epochs": 0}}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One sqlite store for the module (creating its schema is the slow part); each test has its experiment."""
    return f"sqlite:///{tmp_path_factory.mktemp('stale') / 'mlflow.db'}"


@pytest.fixture
def client(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return MlflowClient(store)


def config_for(store: str, name: str) -> PipelineConfig:
    return PipelineConfig.from_dict(CONFIG | {"name": name, "tracking_uri": store})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_of_a_dead_process_on_this_host_are_failed_with_the_reason_and_others_are_left(client):
    experiment = client.create_experiment("stale")
    host, dead = socket.gethostname(), dead_pid()
    assert not pid_alive(dead)
    killed = client.create_run(experiment, tags={PID_TAG: str(dead), HOST_TAG: host})
    child = client.create_run(experiment, tags={"mlflow.parentRunId": killed.info.run_id})
    live = client.create_run(experiment, tags={PID_TAG: str(os.getppid()), HOST_TAG: host})
    elsewhere = client.create_run(experiment, tags={PID_TAG: str(dead), HOST_TAG: host + "-other"})
    untagged = client.create_run(experiment)
    assert close_stale_runs(client, experiment) == [killed.info.run_id]
    status = {r.info.run_id: r.info.status for r in client.search_runs([experiment])}
    assert status[killed.info.run_id] == status[child.info.run_id] == "FAILED"
    assert {status[r.info.run_id] for r in (live, elsewhere, untagged)} == {"RUNNING"}
    assert client.get_run(child.info.run_id).data.tags["error"] == REASON


def test_a_new_run_records_its_pid_and_host_and_closes_stale_runs(client, store):
    config = config_for(store, "stale-start")
    experiment = client.create_experiment("stale-start")
    killed = client.create_run(experiment, tags={PID_TAG: str(dead_pid()), HOST_TAG: socket.gethostname()})
    tracking = MlflowTracking(register=False)
    tracking.on_run_start(config, load_data(config.data, config.seed))
    tags = client.get_run(tracking.run_id).data.tags
    assert tags[PID_TAG] == str(os.getpid()) and tags[HOST_TAG] == socket.gethostname()
    assert client.get_run(killed.info.run_id).info.status == "FAILED"
    tracking.on_run_failed(ValueError("x"))


def test_a_failure_is_closed_even_when_its_artifact_cannot_be_written(client, store):
    config = config_for(store, "stale-unwritable")
    tracking = MlflowTracking(register=False)
    tracking.on_run_start(config, load_data(config.data, config.seed))

    def unwritable(*args, **kwargs):
        raise PermissionError("mlruns: read-only")

    tracking.client.log_text = unwritable
    tracking.on_run_failed(RuntimeError("boom"))
    run = client.get_run(tracking.run_id)
    assert run.info.status == "FAILED" and run.data.tags["error"] == "RuntimeError: boom"


def test_ctrl_c_closes_the_run_killed(client, store):
    config = config_for(store, "stale-ctrl-c")
    tracking = MlflowTracking(register=False)
    tracking.on_run_start(config, load_data(config.data, config.seed))
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        interrupts.install()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        tracking.on_run_failed(SystemExit(1))  # what Lightning raises after catching the KeyboardInterrupt
        assert interrupts.exit_status(interrupts.received()) == 130
    finally:
        interrupts.uninstall()  # a remembered SIGINT would mark every later failure in this process KILLED
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == old
    assert interrupts.received() is None
    run = client.get_run(tracking.run_id)
    assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted by SIGINT"


def test_ctrl_c_during_a_search_closes_its_runs_killed_as_a_run_is(client, store):
    from pipeline.tracking.tune_runs import TuneTracking

    config = config_for(store, "stale-tune-ctrl-c").model_copy(
        update={"search": SearchConfig.model_validate({"trials": 2, "defaults": {"hidden": [4, 8]}})})
    tracking = TuneTracking()
    tracking.on_search_start(config, load_data(config.data, config.seed), "probe")
    tracking.on_layer_start(0, "study-1")
    layer_run = tracking.layer_runs[0]
    try:
        interrupts.install()
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        search_run = tracking.run_id
        tracking.on_search_failed(KeyboardInterrupt("received SIGINT"))
    finally:
        interrupts.uninstall()
    for run_id in (search_run, layer_run):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and run.data.tags["error"] == "interrupted by SIGINT"
        assert run.data.tags["sae.interrupted"] == "true"
    tracking = TuneTracking()
    tracking.on_search_start(config, load_data(config.data, config.seed), "probe")
    failed = tracking.run_id
    tracking.on_search_failed(RuntimeError("boom"))
    assert client.get_run(failed).info.status == "FAILED"
    assert client.get_run(failed).data.tags["error"] == "RuntimeError: boom"
