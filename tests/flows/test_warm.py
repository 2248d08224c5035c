"""The warm runner takes a command only when its forked copy would run it as the command's own process would."""

import os
import sys

import pytest

from flows import warm, warm_runner

BASE = {"PREFECT_API_URL": "http://127.0.0.1:4200/api", "OMP_WAIT_POLICY": "PASSIVE", "HOME": "/root"}


@pytest.fixture
def runner_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith(warm_runner.LOAD_TIME):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setattr(warm_runner, "GPU_DEVICES", ())
    monkeypatch.setattr(warm_runner.threading, "active_count", lambda: 1)  # the runner forks single-threaded


def _request(**changes):
    request = {"argv": ["run", "c.yaml"], "cwd": "/", "env": dict(BASE), "executable": sys.executable,
               "code": warm.code_home(), "path": sys.path}
    env = request["env"]
    for name, value in changes.pop("env", {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return request | changes


def test_a_command_like_the_runners_own_is_taken(runner_env):
    assert warm_runner.refusal(_request(), warm_runner.fingerprint()) is None
    # read per call, or taken over by the copy: these may differ
    other = {"MLFLOW_TRACKING_URI": "http://elsewhere:5000", "PYTHONPATH": "/somewhere", "PREFECT_HOME": "/p"}
    assert warm_runner.refusal(_request(env=other), warm_runner.fingerprint()) is None


@pytest.mark.parametrize(("changes", "words"), [
    ({"env": {"OMP_NUM_THREADS": "1"}}, "OMP_NUM_THREADS is '1' here and None in the runner"),
    ({"env": {"OMP_WAIT_POLICY": None}}, "OMP_WAIT_POLICY is None here and 'PASSIVE'"),
    ({"env": {"CUDA_VISIBLE_DEVICES": "0"}}, "CUDA_VISIBLE_DEVICES"),
    ({"env": {"PYTHONHASHSEED": "0"}}, "PYTHONHASHSEED"),
    ({"env": {"PREFECT_API_URL": None}}, "no PREFECT_API_URL"),
    ({"executable": "/usr/bin/python3"}, "this command /usr/bin/python3"),
    ({"code": "/elsewhere"}, "this command /elsewhere"),
])
def test_a_command_the_copy_would_run_differently_is_refused_saying_why(runner_env, changes, words):
    assert words in warm_runner.refusal(_request(**changes), warm_runner.fingerprint())


def test_a_runner_with_threads_refuses_to_fork(runner_env, monkeypatch):
    monkeypatch.setattr(warm_runner.threading, "active_count", lambda: 2)
    assert "threads" in warm_runner.refusal(_request(), warm_runner.fingerprint())


def test_changed_code_is_refused_and_named_as_the_reason_to_restart(runner_env):
    count, newest, size = warm_runner.fingerprint()
    assert warm_runner.refusal(_request(), (count, newest - 1, size)).startswith("the code changed")


def test_the_fingerprint_moves_when_a_source_file_changes(tmp_path, monkeypatch):
    for package in ("flows", "pipeline", "sae"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(warm, "code_home", lambda: str(tmp_path))
    before = warm_runner.fingerprint()
    os.utime(tmp_path / "sae" / "a.py", ns=(before[1] + 10**9, before[1] + 10**9))
    assert warm_runner.fingerprint() != before
    (tmp_path / "pipeline" / "b.py").write_text("")
    assert warm_runner.fingerprint()[0] == 4


def test_on_a_gpu_machine_nothing_is_taken(runner_env, monkeypatch, tmp_path):
    (tmp_path / "nvidiactl").write_text("")
    monkeypatch.setattr(warm_runner, "GPU_DEVICES", (str(tmp_path / "nvidiactl"),))
    assert "without a GPU" in warm_runner.refusal(_request(), warm_runner.fingerprint())


@pytest.mark.parametrize("argv", [["export", "--help"], ["run", "--help"], ["config", "c.yaml"], []])
def test_only_run_tune_and_curve_are_handed_over(monkeypatch, argv, tmp_path):
    monkeypatch.setenv(warm.ENV_VAR, str(tmp_path / "nothing.sock"))
    assert warm.delegate(argv) is None


def test_without_a_runner_the_command_runs_here_after_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(warm.ENV_VAR, raising=False)
    assert warm.delegate(["run", "c.yaml"]) is None
    assert capsys.readouterr().err == ""  # no runner named: nothing said
    monkeypatch.setenv(warm.ENV_VAR, str(tmp_path / "gone.sock"))
    assert warm.delegate(["run", "c.yaml"]) is None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("note: the warm runner at ") and "running in this process" in err[0]


def test_a_copy_never_hands_its_command_over_again(monkeypatch, tmp_path):
    import socket

    listening = socket.socket(socket.AF_UNIX)
    listening.bind(str(tmp_path / "runner.sock"))
    listening.listen(1)
    monkeypatch.setenv(warm.ENV_VAR, str(tmp_path / "runner.sock"))
    monkeypatch.setattr(warm, "_copy", [True])  # as in a forked copy
    listening.setblocking(False)
    assert warm.delegate(["run", "c.yaml"]) is None
    with pytest.raises(BlockingIOError):  # nothing even connected
        listening.accept()
    listening.close()
