"""Process-wide settings are set by the entry points only: importing the library changes nothing global."""

import logging
import os
import re
import subprocess
import sys
import warnings

import numpy as np
from pytorch_lightning.callbacks import Callback

from sae import SAEConfig, train_autoencoder
from sae.quiet import LIGHTNING_LOGGERS, LIGHTNING_WARNINGS
from tests import ROOT

IMPORTS_CHANGE_NOTHING = """
import logging, os, warnings
import torch, pytorch_lightning, pydantic, sklearn, yaml  # third parties may set their own (sklearn: KMP_*)
names = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda", "lightning_fabric")
before = (list(warnings.filters), [logging.getLogger(n).level for n in names], dict(os.environ))
import sae.train, pipeline.config, pipeline.run.greedy, flows.cli
after = (list(warnings.filters), [logging.getLogger(n).level for n in names], dict(os.environ))
assert after == before, [a for a, b in zip(after, before) if a != b]
"""

CLI_SETS_THREADS_FIRST = """
import os, sys
from flows.cli import main
assert "OMP_WAIT_POLICY" not in os.environ
main(["config", "show"])
assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and "torch" not in sys.modules
"""


def python(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_importing_sae_pipeline_and_flows_changes_no_warning_filter_logger_level_or_environment():
    done = python(IMPORTS_CHANGE_NOTHING)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_cli_entry_sets_the_thread_policy_before_anything_imports_torch():
    done = python(CLI_SETS_THREADS_FIRST)
    assert done.returncode == 0, done.stderr[-2000:]


def test_train_autoencoder_silences_lightning_only_while_it_trains(monkeypatch):
    for name in LIGHTNING_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    during = []

    class LevelsDuringTraining(Callback):
        def on_train_start(self, trainer, module):
            during.extend(logging.getLogger(name).level for name in LIGHTNING_LOGGERS)

    x = np.random.default_rng(0).uniform(0.1, 0.9, (64, 8)).astype(np.float32)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        train_autoencoder(x, SAEConfig(d_in=8, d_hidden=4), epochs=1, batch_size=32, lr=0.01,
                          callbacks=[LevelsDuringTraining()])
        assert warnings.filters == filters
    assert during == [logging.WARNING] * 3
    assert [logging.getLogger(name).level for name in LIGHTNING_LOGGERS] == [logging.INFO] * 3
    noise = [str(w.message) for w in seen if any(re.match(p, str(w.message)) for p in LIGHTNING_WARNINGS)]
    assert noise == []
