"""examples/self-taught.yaml: pretrain on digits 5-9 without their labels, learn 0-4; the same config on a file in
the mnist-5k layout (images, labels) by changing data.source alone."""

import numpy as np
from sklearn.datasets import load_digits

from pipeline.config import PipelineConfig
from pipeline.data.loading import load_data
from pipeline.run.greedy import pretrain_stack
from tests import ROOT

EXAMPLE = ROOT / "examples" / "self-taught.yaml"
QUICK = ["defaults.epochs=3", "finetune.epochs=2", "layers.0.hidden=32"]


def test_classes_5_to_9_only_pretrain_and_0_to_4_are_learned():
    config = PipelineConfig.from_yaml(EXAMPLE, QUICK)
    result = pretrain_stack(config)
    data = result.data
    for split in ("val", "test"):
        assert set(data.labels(split).tolist()) == {0, 1, 2, 3, 4}
    y = load_digits().target
    assert data.counts()["unlabeled"] == int((y >= 5).sum())  # every 5-9 row trains the layers, unlabeled
    assert result.finetuned.classes.tolist() == [0, 1, 2, 3, 4]
    assert set(result.probes) == {"raw", "layer_1"} and result.probes["raw"] > 0.9


def test_the_same_config_reads_a_file_in_the_mnist_5k_layout(tmp_path):
    X, y = load_digits(return_X_y=True)
    np.savez(tmp_path / "digits.npz", images=(X * 16).astype(np.uint8), labels=y.astype(np.uint8))
    config = PipelineConfig.from_yaml(EXAMPLE, [f"data.source={tmp_path / 'digits.npz'}"])
    data = load_data(config.data, config.seed)
    assert set(data.labels("test").tolist()) == {0, 1, 2, 3, 4} and data.X_train.shape[1] == 64
