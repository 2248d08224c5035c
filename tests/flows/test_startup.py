"""What `run` and `tune` share before their flow: signal routing given back, heartbeats, the raw probe ahead."""

import json
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import yaml
from prefect.settings import get_current_settings, temporary_settings

import flows.tune
from flows import startup
from flows.cli import main as cli_main
from flows.server_guard import no_heartbeats_on_temporary_server
from flows.session import FlowSession, current_session
from pipeline.config import PipelineConfig
from pipeline.process import interrupts
from tests import ROOT


def _config(tmp_path) -> PipelineConfig:
    return PipelineConfig.from_dict({
        "name": "startup", "cache_dir": str(tmp_path / "cache"), "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "data": {"source": "digits", "max_samples": 300}, "layers": [{"hidden": 6}], "finetune": {"epochs": 0},
        "search": {"trials": 2, "defaults": {"hidden": [4, 6]}},
    })


def test_tune_routes_sigint_as_run_does_and_main_gives_the_handlers_back(tmp_path, monkeypatch, capsys):
    (tmp_path / "tune.yaml").write_text(_config(tmp_path).to_yaml())
    seen = []

    def interrupted_search(*args, **kwargs):
        seen.append(signal.getsignal(signal.SIGINT))
        signal.raise_signal(signal.SIGINT)  # Ctrl-C while the search runs
        raise AssertionError("SIGINT did not interrupt the search")

    monkeypatch.setattr(flows.tune, "tune_flow", interrupted_search)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli_main(["tune", str(tmp_path / "tune.yaml"), "--out", str(tmp_path / "best.yaml")]) == 130
    assert seen == [interrupts._interrupt]  # routed while the flow ran...
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # ...and given back
    assert interrupts.received() is None
    assert "interrupted (SIGINT)" in capsys.readouterr().err
    assert not (tmp_path / "best.yaml").exists()


def test_heartbeats_are_off_for_a_temporary_server_only():
    frequency = get_current_settings().flows.heartbeat_frequency
    assert get_current_settings().api.url  # this suite's Prefect server: a lasting one
    with no_heartbeats_on_temporary_server():
        assert get_current_settings().flows.heartbeat_frequency == frequency
    with temporary_settings(updates={"api.url": None}), no_heartbeats_on_temporary_server():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == frequency


def test_with_a_lasting_server_the_flow_end_does_not_wait_for_the_heartbeat_thread(monkeypatch):
    from prefect import flow, flow_engine

    joins = []
    real = flow_engine._send_heartbeats

    def spy(engine, join_on_exit=True):
        joins.append(join_on_exit)
        return real(engine, join_on_exit=join_on_exit)

    monkeypatch.setattr(flow_engine, "_send_heartbeats", spy)

    @flow
    def quick() -> int:
        return 1

    assert get_current_settings().flows.heartbeat_frequency  # on: this suite's server is a lasting one
    with no_heartbeats_on_temporary_server():
        assert quick() == 1
    assert quick() == 1
    assert joins == [False, True] and flow_engine._send_heartbeats is spy


@pytest.mark.parametrize("temporary", [True, False])
def test_the_raw_probe_is_fitted_ahead_only_while_a_temporary_server_starts(tmp_path, monkeypatch, temporary):
    monkeypatch.setattr("flows.server_guard.temporary_server_expected", lambda: temporary)
    with startup.flow_session(_config(tmp_path)) as session:
        assert current_session() is session and session.data_of(_config(tmp_path)) is session.data
        assert (session.raw_probe_of(_config(tmp_path)) is not None) is temporary
    assert current_session() == FlowSession()
    interrupts.uninstall()


@pytest.mark.slow
def test_run_on_a_fresh_machine_starts_one_temporary_server_ahead_and_finishes(tmp_path):
    config = yaml.safe_load(_config(tmp_path).to_yaml())
    config.pop("search")
    config["defaults"] = {"epochs": 2}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}  # a fresh clone
    env.update(PREFECT_HOME=str(tmp_path / "prefect"), PYTHONPATH=str(ROOT), DO_NOT_TRACK="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "flows.cli", "run", str(tmp_path / "run.yaml"),
                           "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["model_version"] == "1"
    log = [line for line in done.stderr.splitlines() if not line.startswith("import time:")]
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert sum("Starting temporary server" in line for line in log) == 1  # one server, started ahead,
    assert sum("Stopping temporary server" in line for line in log) == 1  # served the flow and ended with it
    assert "prefect.server.api.server" not in imported  # named as the API: Prefect's server module never loaded
    assert not any(" | View at " in line for line in log)  # no page on a server that ends with the run
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:  # the flow run, kept for `prefect server start`
        [(name, state)] = db.execute("select name, state_type from flow_run").fetchall()
    assert name.startswith("startup-") and state == "COMPLETED"
