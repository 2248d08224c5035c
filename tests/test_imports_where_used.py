"""Imports only where used: code that trains nothing loads neither Lightning nor scikit-learn (``-X importtime``
showed them at 2.0 s and 1.5 s of a run's 7 s of imports), and training still brings Lightning in."""

import os
import subprocess
import sys

from tests import ROOT

NOT_TRAINING = """
import sys
import flows.cli, flows.deploy, flows.pretrain, flows.startup
import pipeline.app.progress, pipeline.run.greedy, pipeline.tracking.runs, pipeline.tracking.encoders
from pipeline.app.progress import ProgressPrinter
from pipeline.config import DataConfig
from pipeline.data.loading import load_data
load_data(DataConfig(source="digits"), 0)
print(sorted(m for m in sys.modules if m.split(".")[0] in {"pytorch_lightning", "lightning_fabric", "sklearn"}))
print(type(ProgressPrinter().layer_callbacks(0, type("S", (), {"epochs": 3})())[0]).__mro__[1].__module__)
"""


def test_flows_and_pipeline_import_lightning_and_sklearn_only_when_a_layer_trains():
    done = subprocess.run([sys.executable, "-c", NOT_TRAINING], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_before_training, callback_base = done.stdout.strip().splitlines()[-2:]
    assert loaded_before_training == "[]"
    assert callback_base.startswith("pytorch_lightning.callbacks")  # asking for an epoch callback loads it
