"""`sae-pipeline servers start` starts a warm runner: `run` hands its command to a forked copy that has the flow's
code imported, which runs it as the command's own process would (streams, exit status, Ctrl-C, records);
changed code makes it refuse, the command runs in its own process, and the runner starts again on the new code."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import ROOT
from tests.e2e._support import client_env, gone, running_servers, server_pids, tiny_config

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    directory = tmp_path_factory.mktemp("warm") / "servers"
    with running_servers(directory) as env:
        pids = server_pids(directory)
        yield directory, env
    assert len(pids) == 3 and all(gone(pid) for pid in pids)  # stopping the servers stops the runner too


def _log(directory: Path) -> str:
    return (directory / "runner.log").read_text()


def _wait_for(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _run(tmp: Path, env: dict[str, str], *args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *args], cwd=tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_run_is_handed_to_the_warm_runner_and_records_as_its_own(servers, tmp_path):
    directory, server_env = servers
    env = client_env(tmp_path, server_env)
    assert env["SAE_RUNNER"] == str(directory / "runner.sock")
    _wait_for(lambda: "ready on" in _log(directory), timeout=120)
    done = _run(tmp_path, env, str(tiny_config(tmp_path, "warm")), "--json")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])  # stdout is the caller's: one JSON line
    assert result["model_version"] == "1" and result["tracking_uri"] == server_env["MLFLOW_TRACKING_URI"]
    assert "note:" not in err and "layer 2/2 epoch 2/2" in err  # progress reached the caller's stderr
    log = _log(directory)
    assert log.count(f"runs: sae-pipeline run {tmp_path / 'warm.yaml'} --json (in {tmp_path})") == 1  # no chain
    assert "exit status 0;" in log
    # What the copy imported on first use, the runner imports meanwhile: a second run finds nearly all of it
    _wait_for(lambda: "imported" in _log(directory))
    second = _run(tmp_path, env, str(tmp_path / "warm.yaml"), "--json", "--fresh")
    assert second.wait(timeout=300) == 0
    learned = [int(line.split("it imported ")[1].split()[0]) for line in _log(directory).splitlines()
               if "it imported " in line]
    assert learned[0] > 300 and learned[1] < learned[0] / 10, learned
    again = _run(tmp_path, env, "--set", "data.source=nothing.csv", str(tmp_path / "warm.yaml"))
    _, err = again.communicate(timeout=120)
    assert again.returncode == 2 and err.strip().splitlines()[-1].startswith("error: ")  # bad input: as before


def test_ctrl_c_reaches_the_copy_and_a_killed_caller_ends_it(servers, tmp_path):
    directory, server_env = servers
    env = client_env(tmp_path, server_env)
    config = yaml.safe_load(tiny_config(tmp_path, "long").read_text())
    config["defaults"]["epochs"] = 400
    (tmp_path / "long.yaml").write_text(yaml.safe_dump(config))
    errs = []
    for sig, expected in ((signal.SIGINT, 130), (signal.SIGKILL, -9)):
        caller = _run(tmp_path, env, str(tmp_path / "long.yaml"), "--fresh")
        for line in caller.stderr:
            if "epoch 2/400" in line:
                break
        copies = [int(line.split("copy ")[1].split()[0]) for line in _log(directory).splitlines() if " runs: " in line]
        caller.send_signal(sig)
        _, err = caller.communicate(timeout=120)  # the copy wrote to the caller's stderr until it ended
        assert caller.returncode == expected
        _wait_for(lambda copy=copies[-1]: f"copy {copy} ended" in _log(directory))
        errs.append(err)
    ended = [line for line in _log(directory).splitlines() if " ended: " in line][-2:]
    assert "exit status 130;" in ended[0], errs[0][-3000:]
    # SIGTERM when the caller died: the copy stops (143; a CI run once saw 1, the run failing on the signal
    # elsewhere) instead of training its 400 epochs for nobody
    assert "exit status 143;" in ended[1] or "exit status 1;" in ended[1], errs[1][-3000:]


def test_changed_code_runs_in_the_callers_process_and_the_runner_starts_again_on_it(servers, tmp_path):
    directory, server_env = servers
    env = client_env(tmp_path, server_env)
    _wait_for(lambda: "ready on" in _log(directory), timeout=120)
    source = ROOT / "sae" / "__init__.py"
    now = time.time_ns()
    os.utime(source, ns=(now, now))  # an edit, as far as the runner can tell
    done = _run(tmp_path, env, str(tiny_config(tmp_path, "edited")), "--json")
    out, err = done.communicate(timeout=300)
    assert done.returncode == 0, err[-3000:]
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == ["note: the warm runner did not take this command: the code changed since it started (it "
                     "restarts on the new code); running in this process"]
    assert json.loads(out.strip().splitlines()[-1])["model_version"] == "1"
    _wait_for(lambda: _log(directory).count("ready on") == 2, timeout=120)  # started again, same pid (exec)
