"""Prefect's temporary server starts before Prefect is imported, only when no server is configured, and a run
that stops early leaves it running nowhere."""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from flows import early_server
from tests import ROOT

SPAWN = """
import json, sys
from flows import early_server
server = early_server.spawn()
print(json.dumps({"prefect_imported": "prefect" in sys.modules, "args": server.process.args,
                  "port": server.port}), flush=True)
server.drop()
print(server.process.wait(timeout=30))
"""


FALLBACK = """
import json, os, signal, sys
from flows import early_server, server_guard
server = early_server.spawn()
os.killpg(server.process.pid, signal.SIGKILL)  # it never answers
server_guard.start_temporary_server_soon(server)
exported = dict(url=os.environ.get("PREFECT_API_URL"), expected=server_guard.temporary_server_expected())
server_guard.wait_for_temporary_server()
from prefect.client.orchestration import get_client
from prefect.settings import get_current_settings
with get_client(sync_client=True) as client:  # Prefect's own temporary server, started again
    answered = client.api_healthcheck() is None
print(json.dumps({"exported": exported, "after": os.environ.get("PREFECT_API_URL"), "answered": answered,
                  "url": get_current_settings().api.url, "modules": "prefect.server.api.server" in sys.modules}))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_TRACKING_URI"))}
    return env | {"PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect"), "DO_NOT_TRACK": "1",
                  "PREFECT_SERVER_ANALYTICS_ENABLED": "false"} | extra


@pytest.mark.parametrize(("environ", "files", "configured"), [
    ({}, {}, False),
    ({"PREFECT_API_URL": "http://127.0.0.1:4200/api"}, {}, True),
    ({"PREFECT_API_URL": ""}, {}, False),
    ({}, {"home/profiles.toml": 'active = "x"\n[profiles.x]\nPREFECT_API_URL = "http://h:1/api"\n'}, True),
    ({}, {"home/profiles.toml": 'active = "x"\n[profiles.x]\nPREFECT_LOGGING_LEVEL = "INFO"\n'}, False),
    ({}, {"cwd/.env": "PREFECT_API_URL=http://h:1/api\n"}, True),
    ({}, {"cwd/prefect.toml": '[api]\nurl = "http://h:1/api"\n'}, True),
    ({}, {"cwd/pyproject.toml": '[tool.prefect.api]\nurl = "http://h:1/api"\n'}, True),
    ({}, {"cwd/pyproject.toml": '[project]\nname = "x"\n'}, False),
])
def test_a_server_counts_as_configured_from_the_environment_or_any_settings_file(tmp_path, environ, files,
                                                                                 configured):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "cwd").mkdir(exist_ok=True)
    environ = {"PREFECT_HOME": str(tmp_path / "home"), **environ}
    assert early_server.server_configured(environ, tmp_path / "cwd") is configured


@pytest.mark.parametrize(("environ", "sent"), [({}, "false"), ({"PREFECT_SERVER_ANALYTICS_ENABLED": "true"}, "true")])
def test_the_temporary_server_sends_no_telemetry_unless_asked_to(monkeypatch, environ, sent):
    started = {}
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(early_server.subprocess, "Popen",
                        lambda command, env, **_: started.update(env) or SimpleNamespace(pid=0))
    monkeypatch.setattr("flows.watchdog.watch", lambda *pids: None)
    early_server.EarlyServer()
    assert started["PREFECT_SERVER_ANALYTICS_ENABLED"] == sent and started["PREFECT_UI_ENABLED"] == "0"


def test_nothing_starts_early_once_prefect_is_imported():
    import prefect  # noqa: F401 - its settings decide from here on

    assert early_server.spawn() is None


def test_the_early_server_runs_prefects_command_without_importing_prefect_and_drop_ends_it(tmp_path):
    done = subprocess.run([sys.executable, "-c", SPAWN], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    first, code = done.stdout.strip().splitlines()
    spawned = json.loads(first)
    site = Path(importlib.util.find_spec("prefect").origin).parents[1]  # Prefect's --app-dir
    assert spawned["prefect_imported"] is False
    assert spawned["args"][1:] == ["-m", "uvicorn", "--app-dir", str(site), "--factory",
                                   "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port",
                                   str(spawned["port"]), "--log-level", "error", "--lifespan", "on"]
    assert 8000 <= spawned["port"] < 9000 and int(code) != 0  # ended by the signal


def _servers_using(home: Path) -> list[int]:
    """Pids of live processes whose environment holds PREFECT_HOME=``home`` (the run's temporary server)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"PREFECT_HOME={home}".encode() in environ.read_bytes().split(b"\0"):
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_bad_data_found_after_the_early_start_exits_2_and_leaves_no_server(tmp_path):
    (tmp_path / "flat.csv").write_text("a,b\n" + "1,2\n" * 20)  # every feature constant: found while reading
    done = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--set", "data.source=flat.csv"],
                          cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines() == [line for line in done.stderr.strip().splitlines()
                                                if line.startswith("error: ")]
    assert "every feature is constant" in done.stderr
    deadline = time.monotonic() + 10
    while _servers_using(tmp_path / "prefect") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _servers_using(tmp_path / "prefect") == []


def test_an_early_server_that_never_answers_gives_the_start_back_to_prefect(tmp_path):
    done = subprocess.run([sys.executable, "-c", FALLBACK], cwd=tmp_path, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["exported"]["url"].startswith("http://127.0.0.1:") and seen["exported"]["expected"] is True
    assert seen["after"] is None and seen["url"] is None  # the variable and Prefect's settings both given back
    assert seen["answered"] and seen["modules"]  # Prefect started its own, and it answers
