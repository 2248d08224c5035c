"""A run whose disk fills up while it stores a layer fails in one line (exit 1, not SIGBUS), leaves no partial cache
folder and closes its MLflow runs FAILED. The working directory is an 8 MB tmpfs in a private mount namespace."""

import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from tests import ROOT
from tests.pipeline.data.test_full_disk import unshare_works


@pytest.mark.slow
@pytest.mark.skipif(not unshare_works(), reason="needs unshare (a private mount namespace for a small tmpfs)")
def test_a_full_disk_fails_the_run_in_one_line_and_leaves_no_partial_layer(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((20_000, 64), dtype=np.float32))  # layer 1's codes: 11.5 MB
    work = tmp_path / "work"
    work.mkdir()
    cli = [sys.executable, "-m", "flows.cli", "run", "--set", f"data.source={data}", "--set", "layers.0.hidden=200",
           "--set", "layers.1.hidden=10", "--set", "defaults.epochs=1", "--set", "finetune.epochs=0",
           "--set", "trainer.accelerator=cpu"]
    script = f"mount -t tmpfs -o size=8m tmpfs {work} && cd {work} && exec {shlex.join(cli)}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("PREFECT_API_URL", None)
    # The tmpfs lives in the child's namespace only: it reports what it left there before it goes.
    report = f"; echo; ls -a {work}/.sae-cache/layers; {sys.executable} -c " + shlex.quote(
        f"import sqlite3; print(sorted(r[0] for r in sqlite3.connect('{work}/mlflow.db').execute("
        "'select status from runs')))")
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", script.replace("exec ", "") + report], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    lines = done.stdout.strip().splitlines()
    failed = [line for line in done.stderr.splitlines() if line.startswith("failed: ")]
    assert failed and failed[-1].startswith("failed: OSError: [Errno 28] cannot reserve"), done.stderr[-3000:]
    assert "Bus error" not in done.stderr
    # No layer folder, partial or whole; the parent run and layer 1's child run are FAILED, none RUNNING.
    assert lines[-3:] == [".", "..", "['FAILED', 'FAILED']"], lines

