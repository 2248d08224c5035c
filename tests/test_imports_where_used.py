"""Imports only where used: code that trains nothing loads neither Lightning nor scikit-learn (``-X importtime``
showed them at 2.0 s and 1.5 s of a run's 7 s of imports), and training still brings Lightning in.

Paths that truly need them load them when they run: layer training and fine-tuning (Lightning), k-fold
cross-validation of a probe with few labels (scikit-learn's folds) and the label-efficiency curve, which trains
and scores scikit-learn's models as anchors (``flows.curve``, ``pipeline.evaluation.anchors``).
"""

import os
import subprocess
import sys

import numpy as np

from tests import ROOT

NOT_TRAINING = """
import sys
import flows.cli, flows.deploy, flows.pretrain, flows.startup
import pipeline.app.progress, pipeline.run.greedy, pipeline.tracking.runs, pipeline.tracking.encoders
import pipeline.config.finetune, pipeline.evaluation.choosing, pipeline.evaluation.layer_probes
from pipeline.app.progress import ProgressPrinter
from pipeline.config import DataConfig
from pipeline.data.loading import load_data
load_data(DataConfig(source="digits"), 0)
load_data(DataConfig(source="digits", unlabeled_classes=[5, 6, 7, 8, 9], pretrain_on="unlabeled"), 0)
load_data(DataConfig(source=sys.argv[1], labels="label", unlabeled_source=sys.argv[2]), 0)  # partial labels
print(sorted(m for m in sys.modules if m.split(".")[0] in {"pytorch_lightning", "lightning_fabric", "sklearn"}))
print(type(ProgressPrinter().layer_callbacks(0, type("S", (), {"epochs": 3})())[0]).__mro__[1].__module__)
"""


def _partial_labels(tmp_path):
    """A csv whose every fifth row has no label (-1), and a csv of unlabeled rows beside it."""
    rng = np.random.default_rng(0)
    X = rng.random((200, 4))
    labels = np.arange(200) % 2
    labels[::5] = -1
    header = "a,b,c,d"
    np.savetxt(tmp_path / "partial.csv", np.column_stack([X, labels]), delimiter=",", header=header + ",label",
               comments="", fmt=["%.5f"] * 4 + ["%d"])
    np.savetxt(tmp_path / "pool.csv", rng.random((50, 4)), delimiter=",", header=header, comments="", fmt="%.5f")
    return str(tmp_path / "partial.csv"), str(tmp_path / "pool.csv")


def test_flows_and_pipeline_import_lightning_and_sklearn_only_when_a_layer_trains(tmp_path):
    done = subprocess.run([sys.executable, "-c", NOT_TRAINING, *_partial_labels(tmp_path)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded_before_training, callback_base = done.stdout.strip().splitlines()[-2:]
    assert loaded_before_training == "[]"
    assert callback_base.startswith("pytorch_lightning.callbacks")  # asking for an epoch callback loads it
