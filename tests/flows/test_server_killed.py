"""The temporary Prefect server killed mid-run: the run stops at once, registers nothing and says why in one line."""

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import psutil
import pytest

import flows.server_guard as guard
from pipeline.process import interrupts
from tests import ROOT


def test_a_dead_temporary_server_interrupts_the_main_thread_with_its_reason(monkeypatch):
    # interrupt_main does nothing while SIGINT is not Python's (an earlier test may leave SIG_DFL or a reason):
    interrupts.uninstall()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(interrupts, "_reasons", [])
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    monkeypatch.setattr(guard, "_servers", [server])
    monkeypatch.setattr(guard, "_lost", [])
    threading.Timer(0.5, server.kill).start()
    try:
        with pytest.raises(KeyboardInterrupt), guard.stop_run_if_server_dies():
            for _ in range(300):  # the run's work (Python code between blocking calls: interrupt_main lands there)
                time.sleep(0.1)
        assert guard.server_lost() == f"Prefect's temporary server (pid {server.pid}) stopped during the run " \
                                      "(killed by SIGKILL)"
        assert interrupts.reason() == guard.server_lost()
    finally:
        interrupts.uninstall()
        signal.signal(signal.SIGINT, previous)
        server.kill()


def test_a_server_started_twice_is_lost_only_when_both_have_ended(monkeypatch):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    failed = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])  # found the port taken
    failed.wait()
    monkeypatch.setattr(guard, "_servers", [alive, failed])
    monkeypatch.setattr(guard, "_lost", [])
    try:
        with guard.stop_run_if_server_dies():
            time.sleep(4 * guard.WATCH_SECONDS)
        assert guard.server_lost() is None
    finally:
        alive.kill()


@pytest.mark.slow
def test_killing_the_temporary_server_mid_run_fails_the_run_in_one_line_and_registers_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
    for name in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    # Layer 1 trains long enough that the kill lands in it even on a busy machine: a layer whose record was
    # written before the stop is closed FINISHED (the signal waits for the tracking store's writes).
    argv = [sys.executable, "-m", "flows.cli", "run", "--set", "defaults.epochs=400", "--set", "finetune.epochs=0",
            "--set", "trainer.accelerator=cpu", "--set", "data.max_samples=600"]
    child = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in child.stderr:
            lines.append(line)
            if "layer 1/2 epoch 1/" in line:  # training under way: kill the server (its own session)
                for process in psutil.Process(child.pid).children(recursive=True):
                    if "uvicorn" in " ".join(_cmdline(process)):
                        os.killpg(process.pid, signal.SIGKILL)
        child.wait(timeout=300)
    finally:
        child.kill()
    assert child.returncode == 1, "".join(lines[-30:])
    failed = [line for line in lines if line.startswith("failed: ")]
    assert failed == [lines[-1]] and "Prefect's temporary server" in failed[0] and "killed by SIGKILL" in failed[0]
    store = sqlite3.connect(tmp_path / "mlflow.db")
    assert store.execute("select count(*) from model_versions").fetchone() == (0,)
    assert store.execute("select count(*) from registered_model_aliases").fetchone() == (0,)
    assert {status for (status,) in store.execute("select status from runs")} == {"FAILED"}, "".join(lines[-30:])


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # a zombie or gone
        return []
